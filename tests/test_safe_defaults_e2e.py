"""The defaults that hold against someone trying, on the real daemon and a real regtest node: one exchange alone
never prices a pair another one lists, /readyz tells a stranger only whether it is ready, and a secret file
others can read is warned of at start."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from conftest import wait_for
from harness import TOKEN, Daemon, chain_table


class TwoExchanges:
    """Bitstamp's ticker and Coinbase's exchange rates on loopback, both listing BTC_USD; Bitstamp can be stuck
    on yesterday's ticker (stale at once), Coinbase can be down."""

    def __init__(self) -> None:
        self.bitstamp = "fresh"  # or "stale"
        self.coinbase = "up"  # or "down"
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        exchanges = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 -- the http.server API
                if self.path == "/bitstamp/api/v2/ticker/btcusd/":
                    stamp = int(time.time()) - (0 if exchanges.bitstamp == "fresh" else 86400)
                    self._json({"last": "50000", "timestamp": str(stamp)})
                elif self.path == "/coinbase/v2/exchange-rates?currency=BTC" and exchanges.coinbase == "up":
                    self._json({"data": {"currency": "BTC", "rates": {"USD": "50010"}}})
                else:
                    self.send_response(500)
                    self.end_headers()

            def _json(self, document: dict[str, Any]) -> None:
                body = json.dumps(document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        return Handler

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def create(daemon: Daemon) -> tuple[int, Any]:
    try:
        return 201, daemon.api("POST", "/v1/invoices", {"currency": "USD", "amount": "10.00"})
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def readyz_without_token(daemon: Daemon) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{daemon.port}/readyz", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode()


def test_one_fresh_exchange_of_two_prices_nothing_and_readyz_tells_only_the_operator(tmp_path, bsv_node):
    """Two sources list BTC_USD: with Bitstamp stuck on an old ticker, Coinbase alone does not price it (503,
    nothing created, the reason naming min_sources), the operator's /readyz names the pair, a stranger's shows
    only {"ready": ...}; Bitstamp fresh again, invoices are priced again. The sources are plain http on
    loopback, which the config accepts."""
    exchanges = TwoExchanges()
    rates = f"""
[rates]
sources = ["bitstamp", "coinbase"]
currencies = ["USD"]
refresh_seconds = 10
max_age_seconds = 11
[rates.urls]
bitstamp = "{exchanges.url}/bitstamp"
coinbase = "{exchanges.url}/coinbase"
"""
    daemon = Daemon(tmp_path / "d", chain_table("btc", bsv_node, confirmations=1), extra=rates)
    token_file = tmp_path / "api-token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o644)
    daemon.config_path.write_text(daemon.config_path.read_text().replace(f'token = "{TOKEN}"',
                                                                        f'token_file = "{token_file}"'))
    daemon.start()
    try:
        wait_for(lambda: daemon.readiness()[1].get("rates_stale") == [], 15, "the first rates")
        status, invoice = create(daemon)
        assert status == 201 and invoice["payment_methods"][0]["rate"] == "50005"  # the median of both
        log = daemon.log_path.read_text()
        assert f"api.token_file: {token_file} is open to its group or others (mode 0644): chmod 600" in log

        exchanges.bitstamp = "stale"  # at its next round (refresh_seconds) Bitstamp's value no longer counts
        status, report = wait_for(lambda: (r := daemon.readiness())[0] == 200 and r[1]["rates_stale"] and r, 25,
                                  "BTC_USD without a rate, the chain ready")
        assert report["rates_stale"] == ["BTC_USD"] and "btc" in report["chains"] and "leases" in report
        status, refused = create(daemon)
        assert status == 503 and refused["error"]["code"] == "rates_unavailable"
        assert "only 1 fresh source agrees (coinbase), 2 must (min_sources" in refused["error"]["message"]
        assert [i["id"] for i in daemon.api("GET", "/v1/invoices")["invoices"]] == [invoice["id"]]
        status, shown = readyz_without_token(daemon)
        assert (status, json.loads(shown)) == (200, {"ready": True})

        exchanges.bitstamp = "fresh"
        wait_for(lambda: daemon.readiness()[1]["rates_stale"] == [], 25, "BTC_USD priced again")
        status, again = create(daemon)
        assert status == 201 and again["payment_methods"][0]["rate"] == "50005"
    finally:
        assert daemon.stop() == 0
        exchanges.close()
