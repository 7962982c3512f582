"""Structured logs: plain text for a terminal, JSON lines for a log pipeline.

Context travels in `extra` (chain, invoice_id, txid, event_id, lease) so it is a field in JSON, not prose to parse.
Secrets are never passed to a logger in the first place; a node's URL only through `redact_url` (and an error
that may quote it through `scrub`).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from urllib.parse import urlsplit

CONTEXT_FIELDS = ("chain", "invoice_id", "txid", "event_id", "lease")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for field in CONTEXT_FIELDS:
            if (value := getattr(record, field, None)) is not None:
                entry[field] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class PlainFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s%(context)s")

    def format(self, record: logging.LogRecord) -> str:
        # a value the message already shows (a payment's txid, an invoice id) is not repeated: a line a reader
        # takes in at once (JSON lines keep every field)
        message = record.getMessage()
        fields = [f"{f}={v}" for f in CONTEXT_FIELDS if (v := getattr(record, f, None)) is not None
                  and not re.search(rf"(?<![\w-]){re.escape(str(v))}(?![\w-])", message)]
        record.context = (" [" + " ".join(fields) + "]") if fields else ""
        return super().format(record)


def setup(level: str = "info", fmt: str = "plain") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else PlainFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # two lines per SQL statement at debug: they would drown watcherd's own debug lines
    logging.getLogger("aiosqlite").setLevel(logging.INFO)


def redact_url(url: str) -> str:
    """A URL as logs, errors and status show it: scheme, host and port, nothing else. Providers put their API key
    in the path (wss://mainnet.infura.io/ws/v3/<key>) or the query, and a URL may carry user:password@; "/..."
    says a path or query was left out."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "(an invalid URL)"
    host = parts.hostname
    if not parts.scheme or not host:
        return "(an invalid URL)"
    shown = f"{parts.scheme}://{f'[{host}]' if ':' in host else host}{'' if port is None else f':{port}'}"
    return shown + ("/..." if parts.path.strip("/") or parts.query or parts.fragment else "")


def scrub(text: str, url: str) -> str:
    """`text` (a library's error message, which may quote the URL it was given, as aiohttp's do) with `url` and
    each secret part of it replaced by what redact_url shows."""
    shown = redact_url(url)
    text = text.replace(url, shown)
    try:
        parts = urlsplit(url)
    except ValueError:
        return text
    secrets = [parts.netloc.rpartition("@")[0], parts.password, parts.username, parts.path.rstrip("/"),
               parts.query, parts.fragment]
    # shorter pieces would match ordinary words of the message (and such short secrets are no secrets)
    for secret in sorted((s for s in secrets if s and len(s) >= 4), key=len, reverse=True):
        text = text.replace(secret, "/..." if secret.startswith("/") else "***")
    return text
