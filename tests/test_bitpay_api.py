"""The BitPay-style invoice API: Basic auth with the key, {"data": ...} answers, posData exactly as sent, the
status table, and an IPN queued to the notification URL on each status change."""

import base64
import json
from decimal import Decimal

import pytest
from aiohttp.test_utils import TestClient, TestServer

from testkit.fake import FakeChain
from tests import whmcs_v3
from tests.test_greenfield_api import KEY, TOKEN, Rates, pay
from watcherd.compat import bitpay as bp
from watcherd.compat.bitpay import BitPayNotifications
from watcherd.config import GreenfieldConfig
from watcherd.core.types import ChainBlock, Cursor
from watcherd.exceptions import InvoiceError
from watcherd.http import bitpay
from watcherd.http.api import make_app
from watcherd.ledger import Processor
from watcherd.store import Store

BASIC = {"Authorization": "Basic " + base64.b64encode(KEY.encode()).decode()}


@pytest.fixture(params=[KEY])
async def env(store_location, request):
    store = await Store.open(store_location)
    chain = FakeChain("btc", confirmations=1)
    processor = Processor(store, {"btc": chain}, [])
    await processor.start()
    await processor.set_cursor("btc", Cursor(1, "h1"))
    processor.event_listeners.append(BitPayNotifications(processor.clock))
    config = GreenfieldConfig(store_id="s", store_name="s", api_key=request.param)

    async def readiness():
        return {"ready": True}

    sub = bitpay.make_app(processor, config, Rates)
    async with TestClient(TestServer(make_app(processor, TOKEN, readiness, Rates, [("/invoices", sub)]))) as client:
        yield client, processor, chain
    await store.close()


@pytest.mark.parametrize("header", [None, "Bearer " + KEY, "Basic !!!", "Basic " + base64.b64encode(b"nope").decode()])
async def test_wrong_credentials_refused(env, header):
    client, _, _ = env
    response = await client.post("/invoices", json={"price": 1, "currency": "USD"},
                                 headers={"Authorization": header} if header else {})
    assert response.status == 401 and "error" in await response.json()


async def test_create_fetch_and_ipns(env):
    client, processor, chain = env
    pos = {"a": [1, 2], "note": "x"}  # an object, as some plugins send it, comes back as the same object
    response = await client.post("/invoices", headers=BASIC, json={
        "price": 9.999, "currency": "USD", "orderId": "42", "posData": pos, "itemDesc": "thing",
        "notificationURL": "https://shop.example/ipn", "transactionSpeed": "high", "token": "ignored"})
    assert response.status == 200
    data = (await response.json())["data"]
    assert (data["status"], data["price"], data["posData"], data["exceptionStatus"]) == ("new", 10.0, pos, False)
    other = base64.b64encode(f"{KEY}:".encode()).decode()  # an HTTP client's basic auth, empty password
    fetched = await client.get(f"/invoices/{data['id']}", headers={"Authorization": f"Basic {other}"})
    assert (await fetched.json())["data"]["posData"] == pos
    assert (await client.get("/invoices/nope", headers=BASIC)).status == 404
    await processor.activate_method(data["id"], "btc")
    key = next(iter(chain.watchlist.keys))
    await pay(processor, chain, key, 20000, "cc" * 32)
    await pay(processor, chain, key, 20000, "cc" * 32, height=2)
    ipns = [(d["type"], json.loads(d["body"])) for d in reversed(await processor.store.hook_deliveries_for_url(
        "https://shop.example/ipn"))]
    assert [t for t, _ in ipns] == ["paid", "confirmed"]
    assert all(body["posData"] == pos and body["id"] == data["id"] for _, body in ipns)


def test_bitpay_status_table():
    def native(status, confirmations=1, required=1):
        return {"status": status, "payment_methods": [{"method": "btc", "confirmations_required": required}],
                "payments": [{"method": "btc", "status": "confirmed", "confirmations": confirmations}]}

    assert [bp.status(native(s)) for s in ("unpaid", "processing", "expired", "cancelled", "invalid")] == [
        "new", "paid", "expired", "invalid", "invalid"]
    assert bp.status(native("paid", 1)) == "confirmed"
    assert bp.status(native("paid", 6)) == "complete"
    assert bp.status(native("paid", 6, required=8)) == "confirmed"


def test_bind_create_as_btcpay_does():
    """Names bind case-insensitively (the last spelling wins), numbers and booleans bind to text as their JSON
    text, flags from "true"/"false" or numbers, flat buyer fields win over `buyer: {}`; what cannot be bound is
    refused naming the field."""
    bound = bp.bind_create({"ORDERID": 7, "orderID": 1042, "Price": "25.00", "fullnotifications": "TRUE",
                            "physical": 0, "buyerName": "Flat", "buyer": {"Name": "Nested", "email": "b@x.example",
                                                                           "locality": "Paris"},
                            "posdata": Decimal("12.50"), "transactionSpeed": "HIGH", "unknownThing": {"x": 1}})
    assert (bound["orderId"], bound["price"], bound["fullNotifications"], bound["physical"]) == (
        "1042", "25.00", True, False)
    assert (bound["buyerName"], bound["buyerEmail"], bound["buyerCity"]) == ("Flat", "b@x.example", "Paris")
    assert bound["posData"] == "12.50" and bound["transactionSpeed"] == "HIGH"
    assert bp.bind_create({"posData": {"a": [1, Decimal("2.5")]}})["posData"] == {"a": [1, 2.5]}
    assert bp.speed("HIGH", "medium") == "high" and bp.speed("warp", "low") == "low"
    for bad, field in (({"orderId": {"a": 1}}, "orderId"), ({"fullNotifications": "yes"}, "fullNotifications"),
                       ({"buyer": "Ada"}, "buyer"), ({"buyer": {"email": []}}, "buyer.email"),
                       ({"itemDesc": "x" * 2001}, "itemDesc")):
        with pytest.raises(InvoiceError) as caught:
            bp.bind_create(bad)
        assert caught.value.field == field


@pytest.mark.parametrize("env", [whmcs_v3.KEY], indirect=True)
async def test_whmcs_v3_requests_create_and_book_once(env):
    """The WHMCS v3 plugin's own create request (its exact bytes and headers: `orderID` a number, `price` the
    string "25.00", "true" flags, flat buyer fields, a double-slash IPN URL, a posData text with a hash) makes an
    invoice whose orderId is the WHMCS invoice number; its IPNs are flat with `id` and the exact posData, and its
    callback logic books the whole balance once, on `confirmed`, however often the IPNs come."""
    client, processor, chain = env
    body = whmcs_v3.create_body("https://billing.example/", 1042, "25.00")
    sent = dict(whmcs_v3.headers("billing.example", body)[1:])  # the test client sets its own Host
    response = await client.post("/invoices", data=body, headers=sent)
    assert response.status == 200, await response.text()
    data = (await response.json())["data"]
    assert (data["orderId"], data["price"], data["currency"], data["status"]) == ("1042", 25.0, "USD", "new")
    assert data["posData"] == whmcs_v3.pos_data(1042) and data["url"].endswith(f"/i/{data['id']}")
    assert data["buyer"]["name"] == whmcs_v3.BUYER["name"] and data["buyer"]["locality"] == "London"
    native = await processor.invoice_json(data["id"])
    assert native["metadata"]["physical"] is True and native["metadata"]["buyerPhone"] == "+44.2071234567"

    fetched: dict[str, bytes] = {}
    callback = whmcs_v3.Callback(lambda invoice_id: fetched[invoice_id], {1042: Decimal("25.00")})
    url = whmcs_v3.ipn_url("https://billing.example/")
    handled: list[str] = []

    async def deliver() -> list[str]:
        """The IPNs queued since the last call, each handled as they arrive: the callback fetches the invoice as
        it is now."""
        new = [d for d in reversed(await processor.store.hook_deliveries_for_url(url)) if d["id"] not in handled]
        got = await client.get(f"/invoices/{data['id']}", headers=dict(whmcs_v3.headers("billing.example", b"")[1:]))
        fetched[data["id"]] = await got.read()
        handled.extend(d["id"] for d in new)
        return [callback.handle(d["body"].encode()) for d in new]

    await processor.activate_method(data["id"], "btc")
    assert await deliver() == ["logged"]  # "new", with fullNotifications
    key = next(iter(chain.watchlist.keys))
    await pay(processor, chain, key, 50000, "dd" * 32)
    assert await deliver() == ["logged"]  # "paid": seen, not confirmed
    await pay(processor, chain, key, 50000, "dd" * 32, height=2)
    assert await deliver() == ["booked"]  # "confirmed"
    for depth in range(3, 8):  # BitPay's "complete": 6 deep
        await processor.block_connected("btc", bp_block(depth))
    assert await bp.notify_completed(processor) == 1
    assert await deliver() == ["already booked"]
    ipns = [d["body"] for d in reversed(await processor.store.hook_deliveries_for_url(url))]
    assert [json.loads(b)["status"] for b in ipns] == ["new", "paid", "confirmed", "complete"]  # every change
    assert all(json.loads(b)["id"] == data["id"] and json.loads(b)["posData"] == whmcs_v3.pos_data(1042)
               for b in ipns)
    assert [callback.handle(b.encode()) for b in ipns] == ["already booked"] * 4  # redelivered: nothing more
    assert callback.accounts == [(data["id"], 1042, Decimal("25.00"))]


def bp_block(height):
    return ChainBlock(height, f"h{height}", f"h{height - 1}", ())
