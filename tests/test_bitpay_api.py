"""The BitPay-style invoice API: Basic auth with the key, {"data": ...} answers, posData exactly as sent, the
status table, and an IPN queued to the notification URL on each status change."""

import base64
import json
from decimal import Decimal

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
                            "posdata": 12.5, "transactionSpeed": "HIGH", "unknownThing": {"x": 1}})
    assert (bound["orderId"], bound["price"], bound["fullNotifications"], bound["physical"]) == (
        "1042", "25.00", True, False)
    assert (bound["buyerName"], bound["buyerEmail"], bound["buyerCity"]) == ("Flat", "b@x.example", "Paris")
    assert bound["posData"] == "12.5" and bound["transactionSpeed"] == "HIGH"
    assert bp.bind_create({"posData": {"a": [1, 2.5]}})["posData"] == {"a": [1, 2.5]}
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


HOSTILE_PRICES = ["1e30", "Infinity", "NaN", "-5", "0x10", "٣", "²", "1_000", "9" * 60000, "0." + "0" * 60000 + "1",
                  "", "   ", True, None, [], {"amount": 1}]


@pytest.mark.parametrize("price", HOSTILE_PRICES, ids=lambda p: repr(p)[:12])
async def test_hostile_prices_answer_400_in_bitpay_shape(env, price):
    """Every price that is not a bounded plain decimal (exponents, Infinity, signs, non-ASCII digits, 60,000
    digits, a non-number) answers 400 {"error": ...} naming the field, never 500, never echoing it at length."""
    client, _, _ = env
    response = await client.post("/invoices", headers=BASIC, json={"price": price, "currency": "USD"})
    assert response.status == 400
    body = await response.json()
    assert list(body) == ["error"] and body["error"].startswith("price: ") and len(body["error"]) < 300


@pytest.mark.parametrize("literal", [b"1e400", b"NaN", b"-Infinity", b"1" * 5000, b"1e-400"])
async def test_hostile_json_numbers_answer_400(env, literal):
    """JSON number literals Python reads as inf, NaN or an int past its digit limit answer 400, never 500."""
    client, _, _ = env
    response = await client.post("/invoices", headers={**BASIC, "Content-Type": "application/json"},
                                 data=b'{"currency": "USD", "orderID": 1, "price": ' + literal + b"}")
    assert response.status == 400 and "error" in await response.json()


async def test_prices_round_as_btcpay_rounds_them(env):
    """A price with more decimals than its currency (a float converted by the billing system, or 8 places as
    BTCPay's PHP client writes them) is rounded half away from zero to the currency's minor units, as BTCPay
    does; one that would move by 1% or more is refused, since watcherd counts in cents."""
    client, _, _ = env
    for sent, shown in (("33.33333333", 33.33), ("25.00000000", 25.0), (9.995, 10.0), ("12.125", 12.13)):
        response = await client.post("/invoices", headers=BASIC, json={"price": sent, "currency": "USD"})
        assert (response.status, (await response.json())["data"]["price"]) == (200, shown)
    response = await client.post("/invoices", headers=BASIC, json={"price": "0.004", "currency": "USD"})
    assert response.status == 400 and "decimals" in (await response.json())["error"]


async def test_hostile_fields_answer_400_without_echo(env):
    """A currency, order id or URL past its bound, a body nested deeper than the reader takes, and query strings
    on the invoice route answer 4xx with a short message."""
    client, _, _ = env
    nested: list = [1]
    for _ in range(40):
        nested = [nested]
    for body in ({"price": 1, "currency": "X" * 3000}, {"price": 1, "currency": "USD", "orderId": "7" * 3000},
                 {"price": 1, "currency": "USD", "notificationURL": "https://x/" + "a" * 3000},
                 {"price": 1, "currency": "USD", "posData": nested}):
        response = await client.post("/invoices", headers=BASIC, json=body)
        assert response.status == 400 and len((await response.json())["error"]) < 300
    for query in ("skip=Infinity", "limit=1e1000000", "offset=-1&take=%F0%9F%92%A3"):
        response = await client.get(f"/invoices/nope?{query}", headers=BASIC)
        assert response.status == 404
        response = await client.get(f"/invoices?{query}", headers=BASIC)
        assert 400 <= response.status < 500 and "error" in await response.json()


FIELDS = ["price", "PRICE", "currency", "orderId", "orderID", "posData", "buyer", "buyerName", "notificationURL",
          "redirectURL", "transactionSpeed", "fullNotifications", "physical", "itemDesc", "extendedNotifications"]
NUMBERS = st.one_of(st.integers(), st.floats(), st.from_regex(r"\A[-+]?[0-9\u0660-\u0669\u00b2.eE_x ]{0,40}\Z"),
                    st.sampled_from(["1e30", "Infinity", "-0", "1" * 5000, "0." + "9" * 200, "25.00"]))
JSON = st.recursive(st.none() | st.booleans() | NUMBERS | st.text(max_size=30),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=12)
BODIES = st.one_of(
    st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=8).map(lambda d: json.dumps(d).encode()),
    JSON.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
)
QUERIES = st.lists(st.tuples(st.text(max_size=10), st.text(max_size=20)), max_size=4)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=BODIES, query=QUERIES, path=st.sampled_from(["", "/", "/nope", "/x%00y", "/%F0%9F%92%A3"]))
async def test_no_bitpay_request_answers_5xx(env, body, query, path):
    """Arbitrary JSON bodies (the create fields in any case, every kind of number, nesting, non-JSON bytes) and
    query strings on every BitPay route answer below 500, errors in BitPay's shape and short."""
    client, _, _ = env
    for method in ("POST", "GET"):
        response = await client.request(method, f"/invoices{path}", params=query, data=body,
                                        headers={**BASIC, "Content-Type": "application/json"})
        assert response.status < 500, (method, path, body[:200], await response.text())
        if response.status >= 400:
            error = await response.json()
            assert list(error) == ["error"] and len(error["error"]) < 600
