"""BTCPay's official WHMCS plugin v3 against a real daemon on a real regtest node: its own requests replayed byte for
byte (tests/whmcs_v3.py), the IPNs the daemon delivers to its callback URL (a double-slash path, as the plugin
builds it) handled by its callback's logic, which fetches the invoice again and books on `confirmed`/`complete`."""

from __future__ import annotations

import http.client
import json
import threading
import time
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from conftest import scaled
from harness import Daemon, chain_table

from tests import whmcs_v3

CONFIG = f"""[greenfield]
store_id = "hosting"
store_name = "Hosting"
api_key = "{whmcs_v3.KEY}"
speed_policy = "MediumSpeed"
hook_allow_networks = ["127.0.0.0/8"]  # the WHMCS callback listens on loopback here
[rates]
sources = []
currencies = ["USD"]
[rates.fixed]
BTC_USD = "50000"
"""
EXPIRY = 60  # the chain's invoice_expiry_seconds (its least): the plugin sends no expiry of its own


class Whmcs:
    """The billing system: the plugin's HTTP requests to the daemon, and its callback URL, where each IPN is handled
    by the plugin's callback logic over WHMCS's ledger (one thread at a time, as PHP's row locks would have it)."""

    def __init__(self, port: int, balance: dict[int, Decimal]) -> None:
        self.port = port
        self.callback = whmcs_v3.Callback(self.fetch, balance)
        self.paths: list[str] = []
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with lock:
                    outer.paths.append(self.requestline.split()[1])  # self.path has "//" folded
                    answer = outer.callback.handle(body).encode()
                self.send_response(200)  # PHP's die() answers 200 whatever it says
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.system_url = f"http://127.0.0.1:{self.server.server_port}/"  # WHMCS's System URL ends with "/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def send(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        """One request as bpCurl() sends it: exactly its headers, in its order, and nothing else."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for name, value in whmcs_v3.headers(f"127.0.0.1:{self.port}", body):
                connection.putheader(name, value)
            connection.endheaders(body or None)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def create(self, invoice_id: int, total: str) -> dict[str, Any]:
        status, answer = self.send("POST", "/invoices", whmcs_v3.create_body(self.system_url, invoice_id, total))
        assert status == 200, answer
        return json.loads(answer)["data"]

    def fetch(self, invoice_id: str) -> bytes:
        status, answer = self.send("GET", f"/invoices/{invoice_id}")
        assert status == 200, answer
        return answer

    def wait(self, what: str, done: Any, timeout: float) -> None:
        deadline = time.monotonic() + scaled(timeout)
        while not done():
            assert time.monotonic() < deadline, f"{what}: {self.callback.outcomes}"
            time.sleep(0.1)


@pytest.fixture
def shop(bsv_node, tmp_path):
    chains = chain_table("btc", bsv_node, confirmations=1, invoice_expiry_seconds=EXPIRY)
    daemon = Daemon(tmp_path / "whmcs", chains, None, extra=CONFIG).start()
    whmcs = Whmcs(daemon.port, {1042: Decimal("25.00"), 1043: Decimal("25.00"), 1044: Decimal("25.00")})
    try:
        yield daemon, whmcs
    finally:
        whmcs.server.shutdown()
        whmcs.server.server_close()
        daemon.stop()


def test_whmcs_v3_books_a_paid_invoice_once_and_nothing_else(shop, bsv_node):
    """The plugin's own create requests make invoices whose orderId is the WHMCS invoice number; paid in full, one
    is booked exactly once (on `confirmed`; `complete` and every other IPN book nothing more); one left unpaid and
    one underpaid book nothing when they expire. Each IPN reaches the plugin's double-slash callback path."""
    daemon, whmcs = shop
    paid, unpaid, underpaid = (whmcs.create(n, "25.00") for n in (1042, 1043, 1044))
    assert [i["orderId"] for i in (paid, unpaid, underpaid)] == ["1042", "1043", "1044"]
    assert all(i["status"] == "new" and i["price"] == 25.0 for i in (paid, unpaid, underpaid))
    assert paid["posData"] == whmcs_v3.pos_data(1042) and paid["url"].endswith(f"/i/{paid['id']}")

    # each customer picks BTC on the payment page (its own endpoint, reached here through the native API)
    due = {}
    for invoice in (paid, unpaid, underpaid):
        picked = daemon.api("POST", f"/v1/invoices/{invoice['id']}/payment-methods/btc")
        due[invoice["id"]] = next(m for m in picked["payment_methods"] if m["method"] == "btc")
    assert due[paid["id"]]["due"] == "0.0005"  # 25.00 USD at 50,000
    bsv_node.pay(due[paid["id"]]["address"], due[paid["id"]]["due"])
    bsv_node.pay(due[underpaid["id"]]["address"], "0.0002")  # 10.00 of 25.00 USD
    whmcs.wait("the paid IPN", lambda: ("paid", "logged") in whmcs.callback.outcomes, 30)
    bsv_node.mine(1)
    whmcs.wait("the booking", lambda: whmcs.callback.accounts, 30)
    bsv_node.mine(5)
    whmcs.wait("the complete IPN", lambda: ("complete", "already booked") in whmcs.callback.outcomes, 30)

    # the others expire: their IPNs come, and book nothing
    whmcs.wait("the expired IPNs", lambda: [s for s, _ in whmcs.callback.outcomes].count("expired") >= 2,
               EXPIRY + 60)
    time.sleep(scaled(2))  # any IPN still on its way
    assert whmcs.callback.accounts == [(paid["id"], 1042, Decimal("25.00"))]
    assert whmcs.callback.balance == {1042: Decimal(0), 1043: Decimal("25.00"), 1044: Decimal("25.00")}
    assert "Invoice ID Not Found" not in [o for _, o in whmcs.callback.outcomes]
    shown = json.loads(whmcs.fetch(underpaid["id"]))["data"]
    assert (shown["status"], shown["exceptionStatus"]) == ("expired", "paidPartial")
    assert set(whmcs.paths) == {"//modules/gateways/callback/btcpay.php"}
