"""A small webhook receiver that verifies signatures: what a billing endpoint does, for the demo and tests.

It runs in a thread (stdlib http.server) so synchronous tests and scripts can use it. `fail_with` makes it
answer an error status, to exercise the daemon's retries.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from watcherd.delivery.signing import verify


class WebhookReceiver:
    def __init__(self, secret: str, host: str = "127.0.0.1", port: int = 0):
        self.secret = secret
        self.events: list[dict[str, Any]] = []  # every delivery that verified, duplicates included
        self.rejected = 0
        self.fail_with: int | None = None
        self.redirect_to: str | None = None  # answer POSTs with a 301 to this URL
        self.gets = 0  # GET requests seen: a client that followed a redirect by turning the POST into a GET
        self.on_event: Any = None  # optional callback(event) for live printing
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if receiver.fail_with is not None or receiver.redirect_to is not None:
                    self.send_response(receiver.fail_with or 301)
                    if receiver.redirect_to is not None:
                        self.send_header("Location", receiver.redirect_to)
                    self.end_headers()
                    return
                signature = self.headers.get("Watcherd-Signature", "")
                if not verify(receiver.secret, signature, body):
                    with receiver._lock:
                        receiver.rejected += 1
                    self.send_response(400)
                    self.end_headers()
                    return
                event = json.loads(body)
                event["_header_event_id"] = self.headers.get("Watcherd-Event-Id")
                with receiver._lock:
                    receiver.events.append(event)
                if receiver.on_event:
                    receiver.on_event(event)
                self.send_response(200)
                self.end_headers()

            def do_GET(self) -> None:  # noqa: N802
                with receiver._lock:
                    receiver.gets += 1
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self.url = f"http://{host}:{self._server.server_address[1]}/hooks/crypto"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def for_invoice(self, invoice_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.events if e["invoice"]["id"] == invoice_id]

    def statuses(self, invoice_id: str) -> list[str]:
        """The invoice's statuses in delivery order, duplicate deliveries of one event collapsed."""
        seen, statuses = set(), []
        for event in self.for_invoice(invoice_id):
            if event["id"] not in seen:
                seen.add(event["id"])
                statuses.append(event["invoice"]["status"])
        return statuses
