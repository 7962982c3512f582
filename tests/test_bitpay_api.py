"""The BitPay-style invoice API: Basic auth with the key, {"data": ...} answers, posData exactly as sent, the
status table, and an IPN queued to the notification URL on each status change."""

import base64
import json

import pytest
from aiohttp.test_utils import TestClient, TestServer

from testkit.fake import FakeChain
from tests.test_greenfield_api import KEY, TOKEN, Rates, pay
from watcherd.compat import bitpay as bp
from watcherd.compat.bitpay import BitPayNotifications
from watcherd.config import GreenfieldConfig
from watcherd.core.types import Cursor
from watcherd.http import bitpay
from watcherd.http.api import make_app
from watcherd.ledger import Processor
from watcherd.store import Store

BASIC = {"Authorization": "Basic " + base64.b64encode(KEY.encode()).decode()}


@pytest.fixture
async def env(store_location):
    store = await Store.open(store_location)
    chain = FakeChain("btc", confirmations=1)
    processor = Processor(store, {"btc": chain}, [])
    await processor.start()
    await processor.set_cursor("btc", Cursor(1, "h1"))
    processor.event_listeners.append(BitPayNotifications(processor.clock))
    config = GreenfieldConfig(store_id="s", store_name="s", api_key=KEY)

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
