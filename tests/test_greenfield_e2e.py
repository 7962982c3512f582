"""An unmodified third-party Greenfield client (boltobs-greenfield, generated from BTCPay's spec) drives the
compatible API of a real daemon on real regtest nodes: key, stores, a webhook registered without a secret, USD
invoices paid in BTC and in Monero, underpaid, paid after expiry, and a redelivery; every webhook body arrives
signed with BTCPay-Sig and valid against BTCPay's schemas."""

from __future__ import annotations

import hashlib
import hmac
import json
import sys
import threading
import time
import types
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from conftest import scaled
from greenfield_spec import validate, validate_webhook
from harness import chain_table, monero_table

from testkit.monero_node import new_keys, primary_address

KEY = "gf-e2e-key-0123456789abcdef"
STORE = "shop-e2e"
GREENFIELD = f"""[greenfield]
store_id = "{STORE}"
store_name = "E2E shop"
api_key = "{KEY}"
speed_policy = "MediumSpeed"
hook_allow_networks = ["127.0.0.0/8"]  # the test's webhook receivers listen on loopback
[rates]
sources = []
currencies = ["USD"]
[rates.fixed]
BTC_USD = "50000"
XMR_USD = "150"
"""


def import_client() -> Any:
    """The client as published. Its package imports every generated model, and one of them
    (GenerateOnChainWalletRequest, a wallet call watcherd never serves) refers to an enum the generator never
    emitted, so `import swagger_client` fails on any Python; that one module is stood in for before the import.
    Nothing of the client that this test uses is replaced."""
    name = "swagger_client.models.generate_on_chain_wallet_request"
    if name not in sys.modules:
        stub = types.ModuleType(name)
        stub.GenerateOnChainWalletRequest = type("GenerateOnChainWalletRequest", (), {})  # type: ignore[attr-defined]
        sys.modules[name] = stub
    import swagger_client

    return swagger_client


class Receiver:
    """The billing system's webhook endpoint: records each body and its BTCPay-Sig."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, str]] = []
        self.answer = 200  # a 503 while the billing system is down: nothing it answers so is recorded
        self.refused = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                answer = outer.answer
                if answer == 200:
                    outer.received.append((body, self.headers.get("BTCPay-Sig", "")))
                else:
                    outer.refused += 1
                self.send_response(answer)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/btcpay"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self, secret: str, invoice_id: str) -> list[dict[str, Any]]:
        """The verified bodies for the invoice, in arrival order; a bad signature fails the test."""
        shown = []
        for body, sig in list(self.received):
            expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
            assert hmac.compare_digest(sig, expected), (sig, body)
            event = json.loads(body)
            validate_webhook(event)
            if event["invoiceId"] == invoice_id:
                shown.append(event)
        return shown

    def wait(self, secret: str, invoice_id: str, wanted: list[str], timeout: float = 40) -> list[dict[str, Any]]:
        deadline = time.monotonic() + scaled(timeout)
        while True:
            events = self.events(secret, invoice_id)
            got = [e["type"] for e in events]
            if all(w in got for w in wanted):
                return events
            assert time.monotonic() < deadline, f"wanted {wanted}, got {got}"
            time.sleep(0.1)


@pytest.fixture
def gf_shop(bsv_node, xmr_node, tmp_path):
    from harness import Daemon

    spend, view = new_keys()
    chains = "\n".join([
        chain_table("btc", bsv_node, confirmations=1),
        monero_table("xmr", xmr_node, primary_address=primary_address(spend, view), view_key=view.hex(),
                     confirmations=1),
    ])
    daemon = Daemon(tmp_path / "gf", chains, None, extra=GREENFIELD).start()
    try:
        deadline = time.monotonic() + scaled(30)
        while daemon.metric("watcherd_node_up", chain="xmr") != 1:
            assert time.monotonic() < deadline, daemon.log_tail()
            time.sleep(0.1)
        swagger_client = import_client()

        class Configuration(swagger_client.Configuration):
            # the generated client applies every auth scheme of an operation in turn, and its (empty) Basic
            # credentials would replace the API key: a user of the client configures only the key it has
            def get_basic_auth_token(self) -> None:
                return None

        config = Configuration()
        config.host = f"http://127.0.0.1:{daemon.port}"
        config.api_key["Authorization"] = KEY
        config.api_key_prefix["Authorization"] = "token"
        client = swagger_client.ApiClient(config)
        receiver = Receiver()
        yield daemon, swagger_client, client, receiver
        receiver.server.shutdown()
        receiver.server.server_close()
        client.rest_client.pool_manager.clear()
        if client.pool is not None:  # the client's own thread pool, made on first use
            client.pool.close()
            client.pool.join()
    finally:
        daemon.stop()


def field(value: Any, name: str) -> Any:
    """A field of what the client returned: a generated model, or the plain dict it gives for schemas it has no
    model for."""
    return value[name] if isinstance(value, dict) else getattr(value, name)


def raw(client: Any, method: str, path: str, body: Any = None) -> Any:
    """The JSON the client received (the generated models keep only the fields they know): read through the
    client's own transport, the same request it sends."""
    response = client.call_api(path, method, header_params={"Accept": "application/json",
                                                            "Content-Type": "application/json"},
                               body=body, auth_settings=["API_Key"], _preload_content=False)
    return json.loads(response[0].data)


def create_usd(sc: Any, client: Any, amount: str, **checkout: Any) -> dict[str, Any]:
    invoices = sc.InvoicesApi(client)
    request = sc.CreateInvoiceRequest(amount=amount, currency="USD",
                                      metadata={"orderId": f"ORD-{time.monotonic_ns()}"},
                                      checkout=sc.CheckoutOptions(**checkout) if checkout else None)
    model = invoices.invoices_create_invoice(request, STORE)
    created = raw(client, "GET", f"/api/v1/stores/{STORE}/invoices/{field(model, 'id')}")
    validate(created, "InvoiceData")
    assert created["status"] == "New" and created["amount"] == amount
    return created


def activate(sc: Any, client: Any, invoice_id: str, method: str) -> dict[str, Any]:
    invoices = sc.InvoicesApi(client)
    invoices.invoices_activate_payment_method(STORE, invoice_id, method)
    methods = raw(client, "GET", f"/api/v1/stores/{STORE}/invoices/{invoice_id}/payment-methods")
    validate(methods, path="/api/v1/invoices/{invoiceId}/payment-methods")
    chosen = next(m for m in methods if m["paymentMethodId"] == method)
    assert chosen["activated"] and chosen["destination"]
    return chosen


def test_greenfield_client_btc_flow_and_redelivery(gf_shop, bsv_node):
    daemon, sc, client, receiver = gf_shop
    key = sc.APIKeysApi(client).api_v1_api_keys_current_get()
    assert f"btcpay.store.cancreateinvoice:{STORE}" in field(key, "permissions")
    stores = sc.StoresApi(client).stores_get_stores()
    assert [(field(s, "id"), field(s, "name")) for s in stores] == [(STORE, "E2E shop")]
    hooks = sc.WebhooksApi(client)
    hook = hooks.api_v1_stores_store_id_webhooks_post(sc.WebhookDataCreate(url=receiver.url), STORE)
    # the generated WebhookDataCreate model keeps only `secret` of the answer: the id comes from the list
    listed = hooks.webhokks_get_webhooks(STORE)
    hook_id = field(listed[0], "id")
    assert len(listed) == 1 and field(listed[0], "url") == receiver.url
    assert "secret" not in raw(client, "GET", f"/api/v1/stores/{STORE}/webhooks")[0]
    secret = field(hook, "secret")
    assert secret and len(secret) >= 16

    invoice = create_usd(sc, client, "49.00")
    btc = activate(sc, client, invoice["id"], "BTC-CHAIN")
    assert (btc["amount"], btc["due"], btc["rate"]) == ("0.00098", "0.00098", "50000")
    txid = bsv_node.pay(btc["destination"], btc["due"])
    receiver.wait(secret, invoice["id"], ["InvoiceReceivedPayment", "InvoiceProcessing"])
    bsv_node.mine(1)
    events = receiver.wait(secret, invoice["id"], ["InvoiceCreated", "InvoiceReceivedPayment", "InvoiceProcessing",
                                                   "InvoicePaymentSettled", "InvoiceSettled"])
    assert [e["type"] for e in events] == ["InvoiceCreated", "InvoiceReceivedPayment", "InvoiceProcessing",
                                          "InvoicePaymentSettled", "InvoiceSettled"]
    received = next(e for e in events if e["type"] == "InvoiceReceivedPayment")
    assert received["payment"]["id"] == f"{txid}-0" or received["payment"]["id"].startswith(txid)
    assert received["paymentMethodId"] == "BTC-CHAIN" and received["afterExpiration"] is False
    settled = next(e for e in events if e["type"] == "InvoiceSettled")
    assert settled["manuallyMarked"] is False and settled["overPaid"] is False
    shown = sc.InvoicesApi(client).invoices_get_invoice(STORE, invoice["id"])
    assert field(shown, "status") == "Settled"

    # redelivery through the API: a new delivery, marked as a redelivery of the original
    deliveries = hooks.api_v1_stores_store_id_webhooks_webhook_id_deliveries_get(STORE, hook_id)
    original = settled["deliveryId"]
    assert original in [field(d, "id") for d in deliveries]
    again = hooks.api_v1_stores_store_id_webhooks_webhook_id_deliveries_delivery_id_redeliver_post(
        STORE, hook_id, original)
    deadline = time.monotonic() + scaled(20)
    while not (repeat := [e for e in receiver.events(secret, invoice["id"]) if e["isRedelivery"]]):
        assert time.monotonic() < deadline, "the redelivery never arrived"
        time.sleep(0.1)
    assert (repeat[0]["deliveryId"], repeat[0]["originalDeliveryId"], repeat[0]["type"]) == (
        again, original, "InvoiceSettled")
    status = hooks.api_v1_stores_store_id_webhooks_webhook_id_deliveries_delivery_id_get(STORE, hook_id, again)
    assert field(status, "status") == "HttpSuccess"


def test_greenfield_client_monero_partial_and_late(gf_shop, bsv_node, xmr_node):
    daemon, sc, client, receiver = gf_shop
    hook = sc.WebhooksApi(client).api_v1_stores_store_id_webhooks_post(sc.WebhookDataCreate(url=receiver.url), STORE)

    monero = create_usd(sc, client, "15.00")
    xmr = activate(sc, client, monero["id"], "XMR-CHAIN")
    assert xmr["amount"] == "0.1"
    txid = xmr_node.pay(xmr["destination"], int(Decimal(xmr["due"]) * 10**12))
    deadline = time.monotonic() + scaled(20)
    while txid not in xmr_node.pool():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    receiver.wait(field(hook, "secret"), monero["id"], ["InvoiceReceivedPayment", "InvoiceProcessing"])
    xmr_node.mine(1)
    receiver.wait(field(hook, "secret"), monero["id"], ["InvoiceSettled"])
    assert raw(client, "GET", f"/api/v1/invoices/{monero['id']}")["status"] == "Settled"

    partial = create_usd(sc, client, "10.00")
    btc = activate(sc, client, partial["id"], "BTC-CHAIN")
    bsv_node.pay(btc["destination"], "0.0001")  # 5.00 USD
    receiver.wait(field(hook, "secret"), partial["id"], ["InvoiceReceivedPayment"])
    shown = raw(client, "GET", f"/api/v1/stores/{STORE}/invoices/{partial['id']}")
    assert (shown["status"], shown["additionalStatus"], shown["paidAmount"]) == ("New", "PaidPartial", "5.00")

    late = create_usd(sc, client, "10.00", expiration_minutes=1)
    late_btc = activate(sc, client, late["id"], "BTC-CHAIN")
    expired = receiver.wait(field(hook, "secret"), late["id"], ["InvoiceExpired"], timeout=90)
    assert next(e for e in expired if e["type"] == "InvoiceExpired")["partiallyPaid"] is False
    bsv_node.pay(late_btc["destination"], late_btc["due"])
    bsv_node.mine(1)
    events = receiver.wait(field(hook, "secret"), late["id"], ["InvoiceReceivedPayment", "InvoiceSettled"])
    assert next(e for e in events if e["type"] == "InvoiceReceivedPayment")["afterExpiration"] is True
    shown = raw(client, "GET", f"/api/v1/invoices/{late['id']}")
    assert (shown["status"], shown["additionalStatus"]) == ("Settled", "PaidLate")


def test_webhook_deliveries_pending_at_a_kill_are_delivered_after_the_restart(gf_shop, bsv_node):
    """The billing system is down (503) while an invoice is paid and settled; the daemon is killed -9 with
    the Greenfield webhook deliveries still pending (shown in metrics as transport "hooks"). Restarted, it
    delivers every one once the endpoint is back: each event type once, each delivery id once, signed."""
    daemon, sc, client, receiver = gf_shop
    receiver.answer = 503
    hook = sc.WebhooksApi(client).api_v1_stores_store_id_webhooks_post(sc.WebhookDataCreate(url=receiver.url), STORE)
    secret = field(hook, "secret")
    invoice = create_usd(sc, client, "49.00")
    btc = activate(sc, client, invoice["id"], "BTC-CHAIN")
    bsv_node.pay(btc["destination"], btc["due"])
    bsv_node.mine(1)
    deadline = time.monotonic() + scaled(30)
    while raw(client, "GET", f"/api/v1/invoices/{invoice['id']}")["status"] != "Settled":
        assert time.monotonic() < deadline, daemon.log_tail()
        time.sleep(0.1)
    while daemon.metric("watcherd_notifications_pending", transport="hooks") < 5 or not receiver.refused:
        assert time.monotonic() < deadline, (receiver.refused, daemon.log_tail())
        time.sleep(0.1)
    assert receiver.received == []
    daemon.kill()

    receiver.answer = 200
    daemon.start()
    wanted = ["InvoiceCreated", "InvoiceReceivedPayment", "InvoiceProcessing", "InvoicePaymentSettled",
              "InvoiceSettled"]
    events = receiver.wait(secret, invoice["id"], wanted, timeout=60)
    assert sorted(e["type"] for e in events) == sorted(wanted), [e["type"] for e in events]
    assert len({e["deliveryId"] for e in events}) == len(events) and not any(e["isRedelivery"] for e in events)
    deadline = time.monotonic() + scaled(10)
    while daemon.metric("watcherd_notifications_pending", transport="hooks") != 0:
        assert time.monotonic() < deadline, daemon.log_tail()
        time.sleep(0.1)
    assert daemon.metric("watcherd_notifications_delivered_total", transport="hooks") == len(wanted)
