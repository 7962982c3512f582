"""The Greenfield API as BTCPay's plugins call it: every response validated against BTCPay's published schemas,
HTTP 200 on success, Greenfield's error shapes, and the webhook bodies queued for each event."""

import asyncio
import hashlib
import hmac
import json
from decimal import Decimal
from fractions import Fraction
from ipaddress import IPv4Network

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from testkit.fake import FakeChain
from tests.greenfield_spec import validate, validate_webhook
from watcherd.compat.greenfield import GreenfieldHooks
from watcherd.config import GreenfieldConfig
from watcherd.core.types import ChainBlock, ChainTx, Cursor, Received
from watcherd.delivery.hooks import HookSender
from watcherd.exceptions import InvoiceError
from watcherd.http import greenfield
from watcherd.http.api import make_app
from watcherd.ledger import Processor
from watcherd.store import Store

TOKEN = "api-token-0123456789abcdef"
KEY = "gf-key-0123456789abcdef"
STORE = "shop-1"
GF = {"Authorization": f"token {KEY}"}
BASE = f"/api/v1/stores/{STORE}"


class Rates:
    def quote(self, currency: str, asset: str) -> Fraction:
        return {"FAKE": Fraction(50000), "TOKEN": Fraction(1)}[asset]


@pytest.fixture
async def env(store_location):
    store = await Store.open(store_location)
    chain = FakeChain("btc", confirmations=1)
    processor = Processor(store, {"btc": chain}, [])
    await processor.start()
    await processor.set_cursor("btc", Cursor(1, "h1"))
    processor.event_listeners.append(GreenfieldHooks(STORE))
    config = GreenfieldConfig(store_id=STORE, store_name="My shop", api_key=KEY)

    async def readiness():
        return {"ready": True, "chains": {"btc": {"ready": True, "node_tip": 1, "processed_height": 1}}}

    sub = greenfield.make_app(processor, config, readiness, Rates)
    async with TestClient(TestServer(make_app(processor, TOKEN, readiness, Rates, [("/api/v1", sub)]))) as client:
        yield client, processor, chain
    await store.close()


async def ok(response, schema=None, *, path=None, method="get"):
    assert response.status == 200, await response.text()
    body = await response.json()
    if schema or path:
        validate(body, schema, path=path, method=method)
    return body


async def pay(processor, chain, address_key, amount, txid, height=None):
    tx = ChainTx(txid, (Received(address_key, 0, amount),))
    if height is None:
        await processor.tx_seen("btc", tx)
    else:
        await processor.block_connected("btc", ChainBlock(height, f"h{height}", f"h{height - 1}", (tx,)))


async def test_auth_and_error_shapes(env):
    """Only `token <key>`; the native bearer token opens nothing here, and the Greenfield key not the native API."""
    client, _, _ = env
    for headers in ({}, {"Authorization": f"Bearer {TOKEN}"}, {"Authorization": "token wrong-key-0123456789"}):
        response = await client.get("/api/v1/api-keys/current", headers=headers)
        assert response.status == 401
        validate(await response.json(), "ProblemDetails")
    assert (await client.get("/v1/invoices", headers={"Authorization": f"Bearer {KEY}"})).status == 401
    response = await client.get("/api/v1/stores/other-store", headers=GF)
    assert response.status == 403 and (await response.json())["code"] == "missing-permission"
    response = await client.get(f"{BASE}/invoices/nope", headers=GF)
    assert response.status == 404
    validate(await response.json(), "ProblemDetails")
    response = await client.post(f"{BASE}/invoices", json={"amount": "-1"}, headers=GF)
    assert response.status == 422
    body = await response.json()
    validate(body, "ValidationProblemDetails")
    assert body[0]["path"] == "amount"


async def test_key_server_and_store(env):
    client, _, _ = env
    key = await ok(await client.get("/api/v1/api-keys/current", headers=GF), "ApiKeyData")
    assert key["permissions"] == [
        f"btcpay.store.canviewinvoices:{STORE}", f"btcpay.store.cancreateinvoice:{STORE}",
        f"btcpay.store.canviewstoresettings:{STORE}", f"btcpay.store.canmodifyinvoices:{STORE}",
        f"btcpay.store.webhooks.canmodifywebhooks:{STORE}"]
    info = await ok(await client.get("/api/v1/server/info", headers=GF))
    assert info["version"].startswith("2.") and info["fullySynched"] is True
    assert info["supportedPaymentMethods"] == ["FAKE-CHAIN", "TOKEN-CHAIN"]
    stores = await ok(await client.get("/api/v1/stores", headers=GF), path="/api/v1/stores")
    assert [(s["id"], s["name"]) for s in stores] == [(STORE, "My shop")]
    await ok(await client.get(BASE, headers=GF), path="/api/v1/stores/{storeId}")
    methods = await ok(await client.get(f"{BASE}/payment-methods", headers=GF))
    assert methods == [{"paymentMethodId": "FAKE-CHAIN", "enabled": True},
                       {"paymentMethodId": "TOKEN-CHAIN", "enabled": True}]


async def test_invoice_flow_and_webhook_bodies(env):
    """Create (200, with null checkout fields), activate, pay, confirm: each response and each queued webhook
    body valid; a hook registered after the invoice's first events gets only the later ones."""
    client, processor, chain = env
    early = await ok(await client.post(f"{BASE}/webhooks", json={"url": "https://billing.example/early"},
                                       headers=GF), path="/api/v1/stores/{storeId}/webhooks", method="post")
    assert len(early["secret"]) >= 16
    created = await ok(await client.post(f"{BASE}/invoices", headers=GF, json={
        "amount": "49.00", "currency": "USD", "metadata": {"orderId": "A-1", "itemDesc": "tea", "buyerEmail": None},
        "checkout": {"speedPolicy": None, "paymentMethods": ["FAKE_CHAIN", "fake"], "expirationMinutes": None,
                     "paymentTolerance": None, "redirectURL": None, "redirectAutomatically": None,
                     "defaultLanguage": None, "lazyPaymentMethods": None}, "someFutureField": 1,
    }), "InvoiceData")
    invoice_id = created["id"]
    assert (created["status"], created["additionalStatus"], created["amount"], created["currency"]) == (
        "New", "None", "49.00", "USD")
    assert created["metadata"]["orderId"] == "A-1" and created["checkoutLink"].endswith(f"/i/{invoice_id}")
    assert isinstance(created["createdTime"], int)
    for path in (f"{BASE}/invoices/{invoice_id}", f"/api/v1/invoices/{invoice_id}"):
        assert await ok(await client.get(path, headers=GF), "InvoiceData") == created
    methods = await ok(await client.get(f"{BASE}/invoices/{invoice_id}/payment-methods", headers=GF),
                       path="/api/v1/invoices/{invoiceId}/payment-methods")
    assert [(m["paymentMethodId"], m["activated"], m["destination"]) for m in methods] == [("FAKE-CHAIN", False, "")]
    assert methods[0]["amount"] == "0.00098" and methods[0]["rate"] == "50000"
    late = await ok(await client.post(f"{BASE}/webhooks", json={"url": "https://billing.example/late",
                                                                "secret": "my-own-secret-0123"}, headers=GF))
    assert late["secret"] == "my-own-secret-0123"
    await ok(await client.post(f"{BASE}/invoices/{invoice_id}/payment-methods/FAKE/activate", headers=GF))
    methods = await ok(await client.get(f"/api/v1/invoices/{invoice_id}/payment-methods", headers=GF))
    assert methods[0]["activated"] and methods[0]["destination"].startswith("fake1")
    assert methods[0]["due"] == "0.00098" and methods[0]["paymentLink"].startswith("fake:")
    key = chain.watchlist.keys and next(iter(chain.watchlist.keys))
    await pay(processor, chain, key, 98000, "aa" * 32)
    shown = await ok(await client.get(f"/api/v1/invoices/{invoice_id}", headers=GF), "InvoiceData")
    assert shown["status"] == "Processing" and shown["paidAmount"] == "49.00"
    methods = await ok(await client.get(f"/api/v1/invoices/{invoice_id}/payment-methods", headers=GF),
                       path="/api/v1/invoices/{invoiceId}/payment-methods")
    assert methods[0]["payments"][0]["status"] == "Processing" and methods[0]["due"] == "0"
    assert methods[0]["payments"][0]["id"] == f"{'aa' * 32}-0" and methods[0]["payments"][0]["fee"] == "0"
    await pay(processor, chain, key, 98000, "aa" * 32, height=2)
    shown = await ok(await client.get(f"/api/v1/invoices/{invoice_id}", headers=GF), "InvoiceData")
    assert shown["status"] == "Settled"

    listed = await ok(await client.get(f"{BASE}/invoices/?orderId=A-1&status=Settled", headers=GF),
                      path="/api/v1/stores/{storeId}/invoices")
    assert [i["id"] for i in listed] == [invoice_id]
    assert await ok(await client.get(f"{BASE}/invoices?status=New", headers=GF)) == []
    assert await ok(await client.get(f"{BASE}/invoices?textSearch=tea&take=1", headers=GF)) != []
    assert await ok(await client.get(f"{BASE}/invoices?skip=1", headers=GF)) == []

    def types(hook_id):
        return [json.loads(d["body"])["type"] for d in reversed(deliveries[hook_id])]

    deliveries = {h: await processor.store.hook_deliveries(h) for h in (early["id"], late["id"])}
    assert types(early["id"]) == ["InvoiceCreated", "InvoiceReceivedPayment", "InvoiceProcessing",
                                  "InvoicePaymentSettled", "InvoiceSettled"]
    assert types(late["id"]) == ["InvoiceReceivedPayment", "InvoiceProcessing", "InvoicePaymentSettled",
                                 "InvoiceSettled"]
    for d in deliveries[early["id"]]:
        body = json.loads(d["body"])
        validate_webhook(body)
        assert body["invoiceId"] == invoice_id and body["storeId"] == STORE and body["metadata"]["orderId"] == "A-1"
        assert body["isRedelivery"] is False and body["originalDeliveryId"] == body["deliveryId"] == d["id"]


async def test_list_filters_are_answered_by_the_store(env):
    """orderId and status take several values, the date range includes both ends, textSearch is a plain
    case-insensitive substring (a '%' or '_' in it is no wildcard), skip/take page newest first."""
    client, processor, _ = env
    made = {}
    for n, (order, note) in enumerate([("A", "Tea"), ("B", "50%_off"), ("C", "abc"), ("D", "5000off"),
                                       ("E", "a_c")]):
        processor.clock = lambda n=n: 1_700_000_000 + n
        made[order] = (await ok(await client.post(f"{BASE}/invoices", headers=GF, json={
            "amount": "10", "currency": "USD", "metadata": {"orderId": order, "note": note}})))["id"]
    await ok(await client.post(f"{BASE}/invoices/{made['C']}/status", json={"status": "Invalid"}, headers=GF))

    async def listed(query):
        return [i["metadata"]["orderId"] for i in await ok(await client.get(f"{BASE}/invoices?{query}", headers=GF))]

    assert await listed("") == ["E", "D", "C", "B", "A"]
    assert await listed("orderId=A&orderId=C") == ["C", "A"]
    assert await listed("status=Invalid") == ["C"]
    assert await listed("status=New&status=Invalid") == ["E", "D", "C", "B", "A"]
    assert await listed(f"startDate={1_700_000_001}&endDate={1_700_000_003}") == ["D", "C", "B"]
    assert await listed("textSearch=TEA") == ["A"]
    assert await listed("textSearch=50%25") == ["B"]  # not 5000off
    assert await listed("textSearch=a_c") == ["E"]  # not abc
    assert await listed(f"textSearch={made['D'][4:12]}") == ["D"]  # the invoice id
    assert await listed("skip=1&take=2") == ["D", "C"]
    assert await listed("skip=5") == []


async def test_mark_status_and_partial(env):
    """Marked by hand: Settled with `Marked` and an InvoiceSettled event saying manuallyMarked."""
    client, processor, chain = env
    hook = await ok(await client.post(f"{BASE}/webhooks", json={"url": "https://b.example/h"}, headers=GF))
    created = await ok(await client.post(f"{BASE}/invoices", headers=GF, json={"amount": 10}))
    await ok(await client.post(f"/api/v1/invoices/{created['id']}/payment-methods/FAKE-CHAIN/activate", headers=GF))
    key = next(iter(chain.watchlist.keys))
    await pay(processor, chain, key, 5000, "bb" * 32)
    shown = await ok(await client.get(f"/api/v1/invoices/{created['id']}", headers=GF), "InvoiceData")
    assert (shown["status"], shown["additionalStatus"]) == ("New", "PaidPartial")
    response = await client.post(f"/api/v1/invoices/{created['id']}/status", json={"status": "Complete"}, headers=GF)
    assert response.status == 422
    marked = await ok(await client.post(f"{BASE}/invoices/{created['id']}/status", json={"status": "Settled"},
                                        headers=GF), "InvoiceData")
    assert (marked["status"], marked["additionalStatus"]) == ("Settled", "Marked")
    settled = [json.loads(d["body"]) for d in await processor.store.hook_deliveries(hook["id"])
               if d["type"] == "InvoiceSettled"]
    assert len(settled) == 1 and settled[0]["manuallyMarked"] is True
    validate_webhook(settled[0])


async def test_webhook_crud_and_redelivery(env):
    """Create without a secret (one is generated), update without secret keeps it, deliveries listed, a
    redelivery is a new delivery marked as such, delete."""
    client, processor, _ = env
    hook = await ok(await client.post(f"{BASE}/webhooks", json={
        "url": "https://b.example/h", "authorizedEvents": {"everything": False, "specificEvents": ["InvoiceCreated"]},
    }, headers=GF), path="/api/v1/stores/{storeId}/webhooks", method="post")
    path = f"{BASE}/webhooks/{hook['id']}"
    assert await ok(await client.get(path, headers=GF), path="/api/v1/webhooks/{webhookId}") == {
        k: v for k, v in hook.items() if k != "secret"}
    await ok(await client.put(path, json={"url": "https://b.example/h2", "enabled": True}, headers=GF),
             path="/api/v1/webhooks/{webhookId}", method="put")
    assert (await processor.store.hook(hook["id"]))["secret"] == hook["secret"]
    listed = await ok(await client.get(f"{BASE}/webhooks", headers=GF), path="/api/v1/stores/{storeId}/webhooks")
    assert [h["url"] for h in listed] == ["https://b.example/h2"]
    await ok(await client.post(f"{BASE}/invoices", headers=GF, json={"amount": "1.00"}))
    deliveries = await ok(await client.get(f"{path}/deliveries", headers=GF),
                          path="/api/v1/webhooks/{webhookId}/deliveries")
    assert len(deliveries) == 1  # only InvoiceCreated was asked for
    first = deliveries[0]["id"]
    await ok(await client.get(f"{path}/deliveries/{first}", headers=GF),
             path="/api/v1/webhooks/{webhookId}/deliveries/{deliveryId}")
    request = await ok(await client.get(f"/api/v1/webhooks/{hook['id']}/deliveries/{first}/request", headers=GF))
    validate_webhook(request)
    again = await ok(await client.post(f"{path}/deliveries/{first}/redeliver", headers=GF))
    assert isinstance(again, str) and again != first
    body = await ok(await client.get(f"{path}/deliveries/{again}/request", headers=GF))
    validate_webhook(body)
    assert (body["isRedelivery"], body["originalDeliveryId"], body["deliveryId"]) == (True, first, again)
    await ok(await client.delete(path, headers=GF))
    assert (await client.get(path, headers=GF)).status == 404


async def test_hook_sender_signs_and_retries(store_location):
    """BTCPay-Sig is the HMAC of the exact body with the hook's secret; a 500 is retried with the same body."""
    store = await Store.open(store_location)
    received: list[tuple[bytes, str]] = []
    answers = [500, 200]

    async def endpoint(request: web.Request) -> web.Response:
        received.append((await request.read(), request.headers.get("BTCPay-Sig", "")))
        return web.Response(status=answers.pop(0))

    app = web.Application()
    app.router.add_post("/hook", endpoint)
    async with TestServer(app) as server:
        async with store.transaction():
            await store.add_hook("h1", str(server.make_url("/hook")), "s3cret-0123456789", enabled=True,
                                 automatic_redelivery=True, events=None, now=1)
            await store.invoice("none")
            await store.add_hook_delivery("d1", "h1", "unused", "inv_1", "InvoiceCreated", '{"type":"InvoiceCreated"}',
                                          1)
        now = [10.0]
        sender = HookSender(store, asyncio.Event(), clock=lambda: now[0], allow_networks=(IPv4Network("127.0.0.0/8"),))
        assert await sender.deliver_due() == 1
        assert await store.pending_deliveries() == [("hooks", 1, 1)]  # /metrics: transport "hooks"
        now[0] += 5
        assert await sender.deliver_due() == 1
        assert await store.pending_deliveries() == []
    assert len(received) == 2 and received[0] == received[1]
    body, sig = received[0]
    assert sig == "sha256=" + hmac.new(b"s3cret-0123456789", body, hashlib.sha256).hexdigest()
    row = await store.hook_delivery("h1", "d1")
    assert row["delivered_at"] is not None and row["attempts"] == 2 and row["http_code"] == 200
    await store.close()


async def test_modal_script_served_publicly():
    """Plugins in modal mode load /modal/btcpay.js without a key and call window.btcpay's functions."""
    from types import SimpleNamespace

    from watcherd.live import Live

    nobody = SimpleNamespace(live=Live(), invoice_jsons=None)  # no invoice is read or touched
    app = make_app(nobody, TOKEN, None, lambda: None, [("/modal", greenfield.make_modal_app())])  # type: ignore[arg-type]
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/modal/btcpay.js")
        assert response.status == 200 and response.content_type == "application/javascript"
        script = await response.text()
    for name in ("setApiUrlPrefix", "showInvoice", "onModalReceiveMessage", "hideFrame", "'close'", "'loaded'"):
        assert name.strip("'") in script, name
    assert "/i/" in script and "view=modal" in script and "http" not in script.replace("https?", "")


@pytest.mark.parametrize(("policy", "required"), [
    ("HighSpeed", 1), ("MediumSpeed", 1), ("LowMediumSpeed", 2), ("LowSpeed", 6), (None, 1)])
async def test_speed_policy_sets_confirmations_never_below_the_chain(env, policy, required):
    """speedPolicy asks for its confirmations, but never fewer than the chain's configured count (1 here):
    HighSpeed's 0 becomes 1; no policy takes the store's (MediumSpeed)."""
    client, processor, _ = env
    created = await ok(await client.post(f"{BASE}/invoices", headers=GF,
                                         json={"amount": "5", "checkout": {"speedPolicy": policy}}))
    methods = await processor.store.methods_for(created["id"])
    assert [m.confirmations_required for m in methods] == [required, required]  # the coin and the token
    assert created["checkout"]["speedPolicy"] == (policy or "MediumSpeed")


@pytest.mark.parametrize(("query", "path"), [
    ("take=1e1000000", "take"), ("skip=Infinity", "skip"), ("take=NaN", "take"), ("skip=-1", "skip"),
    ("take=²", "take"), ("skip=" + "9" * 5000, "skip"), ("startDate=1e30", "startDate"),
    ("endDate=99999999999999999999", "endDate"), ("take=1.5", "take"),
])
async def test_list_numbers_are_short_ascii_digits(env, query, path):
    """take, skip and the dates are whole numbers of a few ASCII digits: anything else is a 422 naming the
    parameter (int(Decimal("1e1000000")) stalled the event loop for 30 s), quoting nothing long."""
    client, _, _ = env
    response = await client.get(f"{BASE}/invoices?{query}", headers=GF)
    assert response.status == 422
    body = await response.json()
    validate(body, "ValidationProblemDetails")
    assert body[0]["path"] == path and len(body[0]["message"]) < 200


@pytest.mark.parametrize(("checkout", "path"), [
    ({"paymentTolerance": 100}, "checkout.paymentTolerance"),  # would settle at creation with nothing paid
    ({"paymentTolerance": 100.0}, "checkout.paymentTolerance"),
    ({"paymentTolerance": 250}, "checkout.paymentTolerance"),
    ({"paymentTolerance": -1}, "checkout.paymentTolerance"),
    ({"paymentTolerance": "1e2"}, "checkout.paymentTolerance"),
    ({"paymentTolerance": True}, "checkout.paymentTolerance"),
    ({"expirationMinutes": 1e300}, "checkout.expirationMinutes"),
    ({"expirationMinutes": "Infinity"}, "checkout.expirationMinutes"),
    ({"expirationMinutes": 0}, "checkout.expirationMinutes"),
])
async def test_checkout_numbers_are_bounded_and_tolerance_below_100(env, checkout, path):
    """paymentTolerance is 0 <= x < 100 and expirationMinutes a sane number, as the chain config has it: 422 naming
    the field, nothing created."""
    client, processor, _ = env
    response = await client.post(f"{BASE}/invoices", headers=GF, json={"amount": "5", "checkout": checkout})
    assert response.status == 422
    assert (await response.json())[0]["path"] == path
    assert await processor.store.invoices(limit=10) == []


@pytest.mark.parametrize("amount", ["1e900000000", "Infinity", "NaN", "-5", "²", "1" * 5000, 1e300, True, [1]])
async def test_create_amount_is_a_bounded_decimal(env, amount):
    """A create `amount` of "1e900000000" was expanded to a 900 MB string and echoed: now a short 422."""
    client, processor, _ = env
    response = await client.post(f"{BASE}/invoices", headers=GF, json={"amount": amount})
    assert response.status == 422
    body = await response.json()
    assert body[0]["path"] == "amount" and len(body[0]["message"]) < 300
    assert await processor.store.invoices(limit=10) == []


async def test_tolerance_below_100_is_kept_and_still_needs_money(env):
    """99.5% is accepted and shown; the invoice is not Settled (nor Processing) with nothing paid."""
    client, _, _ = env
    created = await ok(await client.post(f"{BASE}/invoices", headers=GF, json={
        "amount": 10, "checkout": {"paymentTolerance": 99.5, "expirationMinutes": "30"}}), "InvoiceData")
    assert created["checkout"]["paymentTolerance"] == 99.5 and created["status"] == "New"
    assert created["expirationTime"] - created["createdTime"] == 1800


@pytest.mark.parametrize(("body", "status"), [
    (b"[" * 30_000 + b"]" * 30_000, 422), (b"[" * 100_000, 413), (b'{"amount": NaN}', 422),
    (b'{"amount": "1", "metadata": {"a": "\\ud800"}}', 422),
])
async def test_hostile_bodies_answer_4xx_in_greenfield_shapes(env, body, status):
    """Greenfield's body reader is the native one: too deep, too large, NaN, lone surrogates are 4xx."""
    client, processor, _ = env
    response = await client.post(f"{BASE}/invoices", data=body, headers={**GF, "Content-Type": "application/json"})
    assert response.status == status
    validate(await response.json(), "ValidationProblemDetails" if status == 422 else "ProblemDetails")
    assert await processor.store.invoices(limit=10) == []


async def test_a_list_where_a_name_is_expected_is_a_422(env):
    """Found by fuzzing with BTCPay's spec: a JSON list as `status` or `speedPolicy` was looked up in a dict
    (TypeError, 500); it is a 422 naming the field, nothing marked or created."""
    client, processor, _ = env
    created = await ok(await client.post(f"{BASE}/invoices", headers=GF, json={"amount": "5"}))
    response = await client.post(f"/api/v1/invoices/{created['id']}/status", json={"status": [None]}, headers=GF)
    assert response.status == 422 and (await response.json())[0]["path"] == "status"
    assert (await processor.store.invoice(created["id"])).manual_status is None
    response = await client.post(f"{BASE}/invoices", headers=GF, json={"amount": "5", "checkout": {"speedPolicy": [1]}})
    assert response.status == 422 and (await response.json())[0]["path"] == "checkout.speedPolicy"
    assert len(await processor.store.invoices(limit=10)) == 1


@pytest.mark.parametrize("tolerance", ["100", "100.0", "-0.5", "1000"])
async def test_the_ledger_refuses_a_tolerance_of_100_from_any_caller(env, tolerance):
    """Below the API's own check, the ledger refuses a tolerance outside 0 <= x < 100 for every compatible API
    that passes one: nothing is created."""
    _, processor, _ = env
    with pytest.raises(InvoiceError) as refused:
        await processor.create_priced_invoice("USD", 500, {"btc": Fraction(1)}, tolerance=Decimal(tolerance))
    assert refused.value.field == "tolerance"
    assert await processor.store.invoices(limit=10) == []
