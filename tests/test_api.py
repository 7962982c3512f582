"""The HTTP API as a billing system sees it: auth, validation naming the field, invoice JSON shape."""

import re

import pytest
from aiohttp.test_utils import TestClient, TestServer

from testkit.fake import FakeChain
from watcherd.core.types import Cursor
from watcherd.http.api import PROCESSOR, make_app
from watcherd.ledger import Processor
from watcherd.store import Store

TOKEN = "api-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def client(store_location):
    store = await Store.open(store_location)
    processor = Processor(store, {"btc": FakeChain("btc")}, ["webhook"])
    await processor.start()
    await processor.set_cursor("btc", Cursor(1, "h1"))

    async def readiness():
        return {"ready": True}

    async with TestClient(TestServer(make_app(processor, TOKEN, readiness))) as client:
        yield client
    await store.close()


async def test_create_show_list_cancel(client):
    response = await client.post("/v1/invoices", json={"chain": "btc", "amount": "0.015", "order_id": "A-1",
                                                       "metadata": {"customer": 7}}, headers=AUTH)
    assert response.status == 201
    invoice = await response.json()
    assert invoice["amount"] == "0.015" and invoice["amount_atomic"] == "1500000"
    assert invoice["status"] == "unpaid" and invoice["exception"] is None and invoice["payments"] == []
    assert invoice["payment_uri"].startswith("fake:") and invoice["expires_at"].endswith("Z")
    assert response.headers["Location"] == f"/v1/invoices/{invoice['id']}"
    assert set(invoice) >= {"id", "chain", "asset", "address", "amount", "amount_atomic", "status", "exception",
                            "payment_uri", "expires_at", "payments", "order_id", "metadata"}

    shown = await (await client.get(f"/v1/invoices/{invoice['id']}", headers=AUTH)).json()
    assert shown == invoice
    listed = await (await client.get("/v1/invoices?status=unpaid", headers=AUTH)).json()
    assert [i["id"] for i in listed["invoices"]] == [invoice["id"]]
    assert (await (await client.get("/v1/invoices?status=paid", headers=AUTH)).json())["invoices"] == []
    assert (await (await client.get("/v1/invoices?limit=1", headers=AUTH)).json())["next"] == invoice["id"]
    for bad in ("0", "1001", "-5", "ten", "9" * 5000, "1.5", "²", "١٢", "1e3", "Infinity"):
        response = await client.get(f"/v1/invoices?limit={bad}", headers=AUTH)
        assert response.status == 400 and (await response.json())["error"]["field"] == "limit", bad

    cancelled = await client.post(f"/v1/invoices/{invoice['id']}/cancel", headers=AUTH)
    assert cancelled.status == 200 and (await cancelled.json())["status"] == "cancelled"
    events = await (await client.get(f"/v1/invoices/{invoice['id']}/events", headers=AUTH)).json()
    assert [e["type"] for e in events["events"]] == ["invoice.created", "invoice.cancelled"]


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"chain": "btc", "amount": 0.015}, 400, "amount"),  # a JSON number loses precision
        ({"chain": "btc", "amount": "abc"}, 400, "amount"),
        ({"chain": "btc", "amount": "-1"}, 400, "amount"),
        ({"chain": "btc", "amount": "0"}, 400, "amount"),
        ({"chain": "btc", "amount": "0.000000001"}, 422, "amount"),  # below one satoshi: never rounded
        ({"chain": "btc", "amount": "12345678901234567890123.123456789"}, 422, "amount"),  # 28 digits rounded it whole
        ({"chain": "btc", "amount": "NaN"}, 400, "amount"),
        ({"chain": "btc"}, 400, "amount"),
        ({"amount": "1"}, 400, "chain"),
        ({"chain": "doge", "amount": "1"}, 422, "chain"),
        ({"chain": "btc", "amount": "1", "expires_in": 0}, 400, "expires_in"),
        ({"chain": "btc", "amount": "1", "metadata": []}, 400, "metadata"),
        ({"chain": "btc", "amount": "1", "amout": "1"}, 400, "amout"),
        ({"chain": "btc", "amount_atomic": "1.5"}, 400, "amount_atomic"),
        ({"chain": "btc", "amount": "1", "asset": "DOGE"}, 422, "asset"),
        ({"chain": "btc", "amount": "1.0000001", "asset": "TOKEN"}, 422, "amount"),  # 6 decimals
        ({"chain": "btc", "amount": "1e999999"}, 400, "amount"),  # Decimal overflows
        ({"chain": "btc", "amount": "1e900000000"}, 400, "amount"),  # 900 MB once written out
        ({"chain": "btc", "amount": "Infinity"}, 400, "amount"),
        ({"chain": "btc", "amount": "1" * 5000}, 400, "amount"),
        ({"chain": "btc", "amount_atomic": "²"}, 400, "amount_atomic"),  # str.isdigit() says yes, int() no
        ({"chain": "btc", "amount_atomic": "١٢"}, 400, "amount_atomic"),  # int() reads it as 12
        ({"chain": "btc", "amount_atomic": True}, 400, "amount_atomic"),
        ({"chain": "btc", "amount_atomic": -5}, 400, "amount_atomic"),
        ({"chain": "btc", "amount_atomic": 1.5}, 400, "amount_atomic"),
        ({"chain": "btc", "amount": "1e70"}, 400, "amount"),  # more than any chain can carry
        ({"chain": "btc", "amount_atomic": "9" * 5000}, 400, "amount_atomic"),  # past int()'s digit limit
        ({"chain": "btc", "amount_atomic": 2**256}, 400, "amount_atomic"),
    ],
)
async def test_bad_input_names_the_field(client, body, status, field):
    """Each bad field answers 4xx naming it (422 for more decimals than the asset has), nothing created."""
    response = await client.post("/v1/invoices", json=body, headers=AUTH)
    assert response.status == status
    error = (await response.json())["error"]
    assert error["field"] == field
    assert error["code"] == ("too_many_decimals" if status == 422 and field == "amount" else error["code"])
    assert len(error["message"]) < 300  # nothing long is echoed
    listed = await (await client.get("/v1/invoices", headers=AUTH)).json()
    assert listed["invoices"] == []  # nothing half-created


async def test_auth_and_non_json(client):
    assert (await client.get("/v1/invoices")).status == 401
    wrong = await client.get("/v1/invoices", headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401 and (await wrong.json())["error"]["code"] == "unauthorized"
    garbage = await client.post("/v1/invoices", data=b"{not json", headers=AUTH)
    assert garbage.status == 400 and (await garbage.json())["error"]["code"] == "invalid_json"
    missing = await client.get("/v1/invoices/inv_nope", headers=AUTH)
    assert missing.status == 404 and (await missing.json())["error"]["field"] == "id"
    unknown = await client.get("/v2/whatever", headers=AUTH)
    assert unknown.status == 404 and "error" in await unknown.json()
    assert (await client.get("/healthz")).status == 200


async def test_amounts_are_exact_past_28_digits(client):
    """A 31-digit amount is the invoice's amount to the last atomic unit (Decimal's context rounded at 28), and
    trailing zeros past the asset's decimals are no precision."""
    for amount, atomic in (("12345678901234567890123.12345678", "1234567890123456789012312345678"),
                           ("0.12345678000", "12345678")):
        response = await client.post("/v1/invoices", json={"chain": "btc", "amount": amount}, headers=AUTH)
        assert response.status == 201, await response.text()
        assert (await response.json())["amount_atomic"] == atomic
    response = await client.post("/v1/invoices", json={"chain": "btc", "amount_atomic": "9" * 31}, headers=AUTH)
    assert (await response.json())["amount_atomic"] == "9" * 31


@pytest.mark.parametrize(("body", "status"), [
    (b"[" * 30_000 + b"]" * 30_000, 400),  # within the size limit, deeper than Python's stack
    (b"[" * 100_000, 413),  # beyond the size limit: never read
    (b'{"chain": "btc", "amount": "1", "metadata": ' + b'{"a": ' * 32 + b"1" + b"}" * 32 + b"}", 400),
    (b'{"chain": "btc", "amount": NaN}', 400),
    (b'{"chain": "btc", "amount": "1", "metadata": {"x": 1e400}}', 400),  # would go out as Infinity
    (b'{"chain": "btc", "amount": "1", "order_id": "\\ud800"}', 400),  # a lone surrogate no store can encode
    (b'{"chain": "btc", "amount": "1", "order_id": "a\\u0000b"}', 400),  # a NUL, which PostgreSQL refuses
    (b'{"chain": "btc", "amount": "1", "metadata": {"\\udfff": 1}}', 400),
    (b"\xff\xfe{", 400),
    (b'{"chain": "btc", "amount": "1", "order_id": "\xed\xa0\x80"}', 400),  # a surrogate, UTF-8 encoded
])
async def test_hostile_bodies_answer_4xx(client, body, status):
    """Nesting past the stack, past the depth limit or past the size limit, NaN and text no store can keep are
    refused with 4xx in the API's error shape; nothing is created."""
    response = await client.post("/v1/invoices", data=body, headers={**AUTH, "Content-Type": "application/json"})
    assert response.status == status
    assert (await response.json())["error"]["code"] in ("invalid_json", "request_entity_too_large")
    assert (await (await client.get("/v1/invoices", headers=AUTH)).json())["invoices"] == []


@pytest.mark.parametrize("path", ["/v1/invoices/inv%00x", "/v1/invoices?order_id=a%00b", "/invoices/x%00y",
                                  "/api/v1/stores/s/invoices/x%00y", "/i/x%00y/status"])
async def test_a_nul_in_the_url_is_a_400_on_every_route(client, path):
    """PostgreSQL keeps no NUL character: a URL holding one is refused at the door (400), never sent to the store
    as a lookup that fails (which answered 503, the store's outage, on PostgreSQL)."""
    response = await client.get(path, headers=AUTH)
    assert response.status == 400
    assert (await response.json())["error"]["code"] == "invalid_request"


async def test_nesting_to_the_limit_is_accepted(client):
    """32 levels of arrays and objects, the body's own included, is what a body may have."""
    metadata = {"a": 1}
    for _ in range(30):
        metadata = {"a": metadata}
    response = await client.post("/v1/invoices", json={"chain": "btc", "amount": "1", "metadata": metadata},
                                 headers=AUTH)
    assert response.status == 201, await response.text()


async def test_error_messages_quote_only_the_start_of_what_was_sent(client):
    """A 60 KB chain name, field name, currency or rate is quoted cut short, never echoed whole."""
    long = "x" * 60_000
    for body in ({"chain": long, "amount": "1"}, {"chain": "btc", "amount": "1", long: 1},
                 {"currency": long, "amount": "1"}, {"currency": "USD", "amount": "1", long: 1},
                 {"currency": "USD", "amount": "1", "rates": {long: "0"}, "payment_methods": ["btc"]}):
        response = await client.post("/v1/invoices", json=body, headers=AUTH)
        assert 400 <= response.status < 500
        error = (await response.json())["error"]
        assert len(error["message"]) < 600 and len(error.get("field", "")) <= 64, error
    response = await client.get(f"/v1/invoices/{'i' * 8000}", headers=AUTH)
    assert response.status == 404 and len((await response.json())["error"]["message"]) < 100


@pytest.mark.parametrize("ready", [True, False])
async def test_readyz_tells_anyone_whether_it_is_ready_and_only_the_token_why(store_location, ready):
    """/readyz without the token (or with a wrong one) answers 200/503 and {"ready": ...} alone: no host names,
    heights or lease tokens for whoever reaches the port; with the token, the whole report as before."""
    store = await Store.open(store_location)
    processor = Processor(store, {"btc": FakeChain("btc")}, ["webhook"])
    report = {"ready": ready, "store_writable": True, "instance": "pay-1.internal",
              "chains": {"btc": {"connected": ready, "node_tip": 870123, "processed_height": 870120}},
              "leases": {"chain:btc": {"holder": "pay-2.internal", "token": 7, "expires_in": 4.0, "mine": False}}}

    async def readiness():
        return report

    try:
        async with TestClient(TestServer(make_app(processor, TOKEN, readiness))) as client:
            for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": TOKEN}):
                response = await client.get("/readyz", headers=headers)
                assert response.status == (200 if ready else 503)
                text = await response.text()
                assert await response.json() == {"ready": ready}
                assert "pay-" not in text and "870" not in text and "token" not in text
            full = await client.get("/readyz", headers=AUTH)
            assert full.status == (200 if ready else 503) and await full.json() == report
    finally:
        await store.close()


async def test_amount_atomic_and_cancel_conflict(client):
    created = await (await client.post("/v1/invoices", json={"chain": "btc", "amount_atomic": "123456789012345"},
                                       headers=AUTH)).json()
    assert created["amount"] == "1234567.89012345"
    await client.post(f"/v1/invoices/{created['id']}/cancel", headers=AUTH)
    again = await client.post(f"/v1/invoices/{created['id']}/cancel", headers=AUTH)
    assert again.status == 200  # idempotent


async def test_idempotency_key_replays_instead_of_burning_an_address(client):
    """A billing system retrying a create after a timeout must get the same invoice, not a second address."""
    body = {"chain": "btc", "amount": "0.5", "order_id": "A-9"}
    headers = {**AUTH, "Idempotency-Key": "order-A-9-attempt"}
    first = await client.post("/v1/invoices", json=body, headers=headers)
    again = await client.post("/v1/invoices", json=body, headers=headers)
    assert (first.status, again.status) == (201, 200)
    assert (await first.json())["id"] == (await again.json())["id"]
    different = await client.post("/v1/invoices", json={**body, "amount": "0.6"}, headers=headers)
    assert different.status == 409 and (await different.json())["error"]["field"] == "Idempotency-Key"
    listed = await (await client.get("/v1/invoices", headers=AUTH)).json()
    assert len(listed["invoices"]) == 1


async def test_delivery_rows_show_iso_times_and_null_for_what_does_not_apply(client):
    """GET /v1/webhooks speaks as the invoices do: ISO 8601 times (never a float unix time), null for what does
    not apply: a failed or delivered row has no next attempt, an event of a priced invoice nobody picked a coin
    for has no chain (never the string "none")."""
    iso = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
    one_coin = await (await client.post("/v1/invoices", json={"chain": "btc", "amount": "0.01"},
                                        headers=AUTH)).json()
    priced = await (await client.post("/v1/invoices", json={
        "currency": "USD", "amount": "5.00", "payment_methods": ["btc"], "rates": {"FAKE": "50000"}},
        headers=AUTH)).json()
    store = client.server.app[PROCESSOR].store
    async with store.transaction():
        first = await store.due_deliveries("webhook", 2e9)
        by_invoice = {d.invoice_id: d for d in first}
        await store.mark_attempt_failed("webhook", by_invoice[one_coin["id"]].event_seq, "HTTP 500", 1.7e9 + 0.25,
                                        1_700_000_000)
        await store.mark_delivered("webhook", by_invoice[priced["id"]].event_seq, 1_700_000_001)
    rows = {r["invoice_id"]: r for r in (await (await client.get("/v1/webhooks", headers=AUTH)).json())["deliveries"]}
    failed, delivered = rows[one_coin["id"]], rows[priced["id"]]
    assert (failed["chain"], failed["next_attempt_at"], failed["delivered_at"]) == ("btc", None, None)
    assert failed["failed_at"] == "2023-11-14T22:13:20Z" and failed["last_error"] == "HTTP 500"
    assert (delivered["chain"], delivered["next_attempt_at"], delivered["failed_at"]) == (None, None, None)
    assert delivered["delivered_at"] == "2023-11-14T22:13:21Z"
    for row in rows.values():
        assert re.fullmatch(iso, row["created_at"]) and row["attempts"] == 1
        assert not [v for v in row.values() if isinstance(v, float)]
    async with store.transaction():
        await store.redeliver(failed["id"], 1.7e9 + 5.5)
    again = (await (await client.get("/v1/webhooks?state=pending", headers=AUTH)).json())["deliveries"]
    assert [(r["id"], r["next_attempt_at"]) for r in again] == [(failed["id"], "2023-11-14T22:13:25Z")]
