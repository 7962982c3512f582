"""The checkout on real regtest nodes: invoices priced in USD, offered in every configured coin, paid in the
coins the customer picks (one, or half in one and the rest in another), underpaid and topped up, paid late."""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.error
import urllib.request
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import scaled, wait_for
from harness import Daemon, chain_table, eth_table, monero_table, wait_delivered

from testkit.monero_node import new_keys, primary_address

RATES = {"BTC": "50000", "LTC": "80", "ETH": "2500", "USDC": "1", "DAI": "1", "XMR": "150"}


@pytest.fixture
def shop(bsv_node, ltc_node, eth_node, xmr_node, daemon_factory):
    spend, view = new_keys()
    chains = "\n".join([
        chain_table("btc", bsv_node, confirmations=1),
        chain_table("ltc", ltc_node, confirmations=1),
        eth_table("eth", eth_node, confirmations=1),
        monero_table("xmr", xmr_node, primary_address=primary_address(spend, view), view_key=view.hex(),
                     confirmations=2),
    ])
    daemon = daemon_factory(chains)
    deadline = time.monotonic() + scaled(30)
    while daemon.metric("watcherd_node_up", chain="xmr") != 1:
        assert time.monotonic() < deadline, daemon.log_tail()
        time.sleep(0.1)
    return daemon


def priced(daemon, amount: str, **extra):
    return daemon.api("POST", "/v1/invoices", {"currency": "USD", "amount": amount, "rates": RATES, **extra})


def pick(daemon, invoice: dict, method: str) -> dict:
    shown = daemon.api("POST", f"/v1/invoices/{invoice['id']}/payment-methods/{method}")
    return next(m for m in shown["payment_methods"] if m["method"] == method)


def method_of(daemon, invoice: dict, method: str) -> dict:
    return next(m for m in daemon.invoice(invoice["id"])["payment_methods"] if m["method"] == method)


def wait_in_pool(xmr_node, txid: str) -> None:
    deadline = time.monotonic() + scaled(20)  # the wallet relays asynchronously
    while txid not in xmr_node.pool():
        assert time.monotonic() < deadline, "the payment never reached monerod's pool"
        time.sleep(0.1)


def test_a_usd_invoice_paid_in_the_coin_the_customer_picks(shop, bsv_node, receiver):
    invoice = priced(shop, "49.00", order_id="ORD-1")
    assert [m["method"] for m in invoice["payment_methods"]] == ["btc", "ltc", "eth", "eth:USDC", "eth:DAI", "xmr"]
    assert not any(m["activated"] for m in invoice["payment_methods"])
    assert {m["method"]: m["amount"] for m in invoice["payment_methods"]} == {
        "btc": "0.00098", "ltc": "0.6125", "eth": "0.0196", "eth:USDC": "49", "eth:DAI": "49", "xmr": "0.326666666667"}
    btc = pick(shop, invoice, "btc")
    assert btc["payment_uri"] == f"bitcoin:{btc['address']}?amount=0.00098"
    txid = bsv_node.pay(btc["address"], btc["amount"])
    shop.wait_status(invoice["id"], "processing")
    bsv_node.mine(1)
    paid = shop.wait_status(invoice["id"], "paid", exception=None)
    assert [(p["txid"], p["method"], p["value"], p["rate"]) for p in paid["payments"]] == \
        [(txid, "btc", "49.00", "50000")]
    deliveries = wait_delivered(receiver, invoice["id"], ["unpaid", "unpaid", "processing", "paid"])
    assert deliveries[-1]["invoice"]["payments"][0]["value"] == "49.00"
    # one address burnt for six coins offered
    assert [m["activated"] for m in paid["payment_methods"]] == [True, False, False, False, False, False]


def test_half_in_ltc_and_the_rest_in_xmr(shop, ltc_node, xmr_node):
    invoice = priced(shop, "20.00", payment_methods=["ltc", "xmr"])
    ltc, xmr = pick(shop, invoice, "ltc"), pick(shop, invoice, "xmr")
    half = Decimal(ltc["amount"]) / 2  # 0.125 LTC = 10.00 USD
    ltc_node.pay(ltc["address"], str(half))
    deadline = time.monotonic() + scaled(20)
    while (shown := shop.invoice(invoice["id"]))["amount_received"] != "10.00":
        assert time.monotonic() < deadline, shown
        time.sleep(0.1)
    assert shown["exception"] == "underpaid"
    xmr = method_of(shop, invoice, "xmr")
    assert xmr["due"] == "0.066666666667"  # 10.00 USD at 150, rounded up to the piconero
    wait_in_pool(xmr_node, xmr_node.pay(xmr["address"], int(xmr["due_atomic"])))
    shop.wait_status(invoice["id"], "processing")
    ltc_node.mine(1)
    xmr_node.mine(1)
    time.sleep(1)
    assert shop.invoice(invoice["id"])["status"] == "processing"  # XMR has 1 of 2 confirmations
    xmr_node.mine(1)
    paid = shop.wait_status(invoice["id"], "paid", exception=None, timeout=30)
    assert sorted((p["method"], p["value"]) for p in paid["payments"]) == [("ltc", "10.00"), ("xmr", "10.00")]
    # the customer's page books each payment in the invoice currency, with the coin beside it
    with urllib.request.urlopen(paid["checkout_url"], timeout=10) as response:
        page = response.read().decode()
    assert "10.00 USD" in page and "0.125 LTC" in page and "Crypto Payments (XMR)" in page
    with urllib.request.urlopen(paid["checkout_url"] + "/status", timeout=10) as response:
        public = json.loads(response.read())
    assert sorted(p["value"] for p in public["payments"]) == ["10.00", "10.00"] and "metadata" not in public


def test_underpaid_then_topped_up_and_paid_after_expiry(shop, bsv_node):
    short = priced(shop, "10.00", payment_methods=["btc"])
    btc = pick(shop, short, "btc")
    bsv_node.pay(btc["address"], "0.0001")  # 5.00 USD
    shop.wait_status(short["id"], "unpaid", exception="underpaid")
    due = method_of(shop, short, "btc")
    assert (due["due"], due["payment_uri"]) == ("0.0001", f"bitcoin:{btc['address']}?amount=0.0001")
    bsv_node.pay(btc["address"], due["due"])
    shop.wait_status(short["id"], "processing", exception=None)

    late = priced(shop, "10.00", payment_methods=["btc"], expires_in=3)
    late_btc = pick(shop, late, "btc")
    shop.wait_status(late["id"], "expired", timeout=15)
    bsv_node.pay(late_btc["address"], late_btc["amount"])
    bsv_node.mine(1)
    shop.wait_status(short["id"], "paid", exception=None)
    shop.wait_status(late["id"], "paid", exception="paid_late")
    with pytest.raises(urllib.error.HTTPError) as refused:
        shop.api("POST", f"/v1/invoices/{late['id']}/payment-methods/ltc")
    assert refused.value.code == 422 and b"not payable with 'ltc'" in refused.value.read()


class Bitstamp:
    """Bitstamp's ticker endpoint on loopback, answering fresh prices, prices dated long ago, or errors."""

    def __init__(self) -> None:
        self.mode = "fresh"
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        exchange = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 -- the http.server API
                if exchange.mode == "down" or self.path != "/api/v2/ticker/btcusd/":
                    self.send_response(500)
                    self.end_headers()
                    return
                stamp = int(time.time()) - (0 if exchange.mode == "fresh" else 86400)
                body = json.dumps({"last": "50000", "timestamp": str(stamp)}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        return Handler


def test_no_fresh_rate_refuses_the_invoice_and_creates_nothing(tmp_path, bsv_node):
    exchange = Bitstamp()
    rates = f"""
[rates]
sources = ["bitstamp"]
currencies = ["USD"]
refresh_seconds = 10
max_age_seconds = 11
[rates.urls]
bitstamp = "{exchange.url}"
"""
    daemon = Daemon(tmp_path / "d", chain_table("btc", bsv_node, confirmations=1), extra=rates).start()
    try:
        invoice = wait_for(lambda: _created(daemon), 10, "a priced invoice once the first rates landed")
        assert invoice["payment_methods"][0]["rate"] == "50000"
        exchange.mode = "stale"  # the exchange is stuck on yesterday's ticker: at the next round there is no rate
        refused = wait_for(lambda: _refused(daemon), 25, "refusal once the rate is stale")
        assert refused["error"]["code"] == "rates_unavailable" and "BTC in USD" in refused["error"]["message"]
        listed = daemon.api("GET", "/v1/invoices?limit=1000")["invoices"]
        assert daemon.metric("watcherd_rate_age_seconds", pair="BTC_USD") > 11
        assert daemon.api("GET", "/readyz")["rates_stale"] == ["BTC_USD"]
        exchange.mode = "down"
        assert _refused(daemon) and _refused(daemon)
        assert daemon.api("GET", "/v1/invoices?limit=1000")["invoices"] == listed  # refused: nothing created
    finally:
        assert daemon.stop() == 0
        exchange.server.shutdown()
        exchange.server.server_close()


def _created(daemon) -> dict | None:
    try:
        return daemon.api("POST", "/v1/invoices", {"currency": "USD", "amount": "10.00"})
    except urllib.error.HTTPError as exc:
        exc.close()
        return None


def _refused(daemon) -> dict | None:
    try:
        daemon.api("POST", "/v1/invoices", {"currency": "USD", "amount": "10.00"})
        return None
    except urllib.error.HTTPError as exc:
        assert exc.code == 503
        return json.loads(exc.read())


def test_a_reload_applies_new_fixed_rates(tmp_path, bsv_node):
    """An operator who sets a price by hand ([rates.fixed]) changes it with SIGHUP, no restart."""
    rates = '\n[rates]\nsources = []\ncurrencies = ["USD"]\n[rates.fixed]\nBTC_USD = "50000"\n'
    daemon = Daemon(tmp_path / "d", chain_table("btc", bsv_node, confirmations=1), extra=rates).start()
    try:
        first = daemon.api("POST", "/v1/invoices", {"currency": "USD", "amount": "10.00"})
        assert first["payment_methods"][0]["rate"] == "50000"
        daemon.config_path.write_text(daemon.config_path.read_text().replace('"50000"', '"40000"'))
        daemon.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "exchange rates reconfigured" in daemon.log_tail(200), 10, "the reload in the log")
        second = daemon.api("POST", "/v1/invoices", {"currency": "USD", "amount": "10.00"})
        assert (second["payment_methods"][0]["rate"], second["payment_methods"][0]["amount"]) == ("40000", "0.00025")
        assert daemon.invoice(first["id"])["payment_methods"][0]["rate"] == "50000"  # locked at creation
    finally:
        assert daemon.stop() == 0
