"""The compatible APIs' key ([greenfield] api_key, used by Greenfield and BitPay plugins, stored in a shop's
database) reaches by default only the invoices those APIs created: another invoice is answered exactly as an
unknown one, never listed or found, never sent to their webhooks. A manual mark shows as `manually_marked`, and
every state-changing call leaves one audit line."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from testkit.fake import FakeChain
from tests.test_bitpay_api import BASIC
from tests.test_greenfield_api import BASE, GF, KEY, STORE, TOKEN, Rates, pay
from watcherd.compat.bitpay import BitPayNotifications
from watcherd.compat.greenfield import GreenfieldHooks
from watcherd.config import GreenfieldConfig
from watcherd.core.types import Cursor
from watcherd.http import bitpay, greenfield
from watcherd.http.api import make_app
from watcherd.ledger import Processor
from watcherd.store import SCHEMA, Store
from watcherd.store.schema_postgres import POSTGRES_SCHEMA

NATIVE = {"Authorization": f"Bearer {TOKEN}"}
UNKNOWN = "inv_" + "0" * 24


@dataclass
class Env:
    client: TestClient
    processor: Processor
    chain: FakeChain


async def readiness() -> dict[str, Any]:
    return {"ready": True, "chains": {}}


@asynccontextmanager
async def client_for(processor: Processor, scope: str) -> AsyncIterator[TestClient]:
    """The daemon's HTTP side as it wires it: the native API with Greenfield and BitPay mounted, the key's scope."""
    config = GreenfieldConfig(store_id=STORE, store_name="Shop", api_key=KEY, scope=scope)
    compat = [("/api/v1", greenfield.make_app(processor, config, readiness, Rates)),
              ("/invoices", bitpay.make_app(processor, config, Rates))]
    async with TestClient(TestServer(make_app(processor, TOKEN, readiness, Rates, compat))) as client:
        yield client


@asynccontextmanager
async def env_for(store_location: Any, scope: str) -> AsyncIterator[Env]:
    store = await Store.open(store_location)
    chain = FakeChain("btc", confirmations=1)
    processor = Processor(store, {"btc": chain}, ["webhook"])
    await processor.start()
    await processor.set_cursor("btc", Cursor(1, "h1"))
    processor.event_listeners += [GreenfieldHooks(STORE, scope), BitPayNotifications(processor.clock)]
    try:
        async with client_for(processor, scope) as client:
            yield Env(client, processor, chain)
    finally:
        await store.close()


async def answer(response: Any) -> tuple[int, Any]:
    return response.status, await response.json()


async def create_native(env: Env, **extra: Any) -> dict[str, Any]:
    response = await env.client.post("/v1/invoices", headers=NATIVE,
                                     json={"chain": "btc", "amount_atomic": "98000", **extra})
    assert response.status == 201, await response.text()
    return await response.json()


async def create_greenfield(env: Env, **extra: Any) -> dict[str, Any]:
    response = await env.client.post(f"{BASE}/invoices", headers=GF, json={"amount": "10", **extra})
    assert response.status == 200, await response.text()
    return await response.json()


async def create_bitpay(env: Env) -> dict[str, Any]:
    response = await env.client.post("/invoices", headers=BASIC, json={"price": 10, "currency": "USD"})
    assert response.status == 200, await response.text()
    return (await response.json())["data"]


def as_unknown(body: Any, invoice_id: str) -> Any:
    """The answer with the invoice's id replaced by the unknown one: an out-of-scope answer must equal it."""
    return json.loads(json.dumps(body).replace(invoice_id, UNKNOWN))


async def greenfield_listed(env: Env, query: str = "") -> list[str]:
    response = await env.client.get(f"{BASE}/invoices?{query}", headers=GF)
    assert response.status == 200, await response.text()
    return [i["id"] for i in await response.json()]


GREENFIELD_READS = ["{base}/invoices/{id}", "/api/v1/invoices/{id}", "{base}/invoices/{id}/payment-methods"]


async def test_the_greenfield_key_cannot_reach_a_native_invoice_by_default(store_location):
    """By default the key reads, lists, searches, activates and marks only the compatible APIs' invoices: a
    native one answers exactly as an unknown one (404, Greenfield's shape), and no call changes it."""
    async with env_for(store_location, "compat") as env:
        native = await create_native(env, order_id="N-1", metadata={"note": "native-only-note"})
        ours = await create_greenfield(env, metadata={"orderId": "G-1", "note": "greenfield-note"})
        client = env.client
        for template in GREENFIELD_READS:
            refused = await answer(await client.get(template.format(base=BASE, id=native["id"]), headers=GF))
            unknown = await answer(await client.get(template.format(base=BASE, id=UNKNOWN), headers=GF))
            assert refused[0] == unknown[0] == 404
            assert as_unknown(refused[1], native["id"]) == unknown[1]
            assert (await client.get(template.format(base=BASE, id=ours["id"]), headers=GF)).status == 200
        for path, body in ((f"{BASE}/invoices/{{id}}/status", {"status": "Settled"}),
                           ("/api/v1/invoices/{id}/status", {"status": "Invalid"}),
                           (f"{BASE}/invoices/{{id}}/payment-methods/FAKE-CHAIN/activate", None)):
            refused = await answer(await client.post(path.format(id=native["id"]), json=body, headers=GF))
            unknown = await answer(await client.post(path.format(id=UNKNOWN), json=body, headers=GF))
            assert refused[0] == unknown[0] == 404 and as_unknown(refused[1], native["id"]) == unknown[1]
        row = await env.processor.store.invoice(native["id"])
        assert row is not None and row.manual_status is None
        shown = await env.processor.invoice_json(native["id"])
        assert shown is not None and shown["status"] == "unpaid" and shown["manually_marked"] is False

        assert await greenfield_listed(env) == [ours["id"]]
        for query in ("orderId=N-1", "textSearch=native-only-note", f"textSearch={native['id']}",
                      "status=New", "take=1000&skip=0"):
            assert native["id"] not in await greenfield_listed(env, query), query
        assert await greenfield_listed(env, "textSearch=greenfield-note") == [ours["id"]]


async def test_with_scope_all_the_greenfield_key_reaches_every_invoice(store_location):
    """`scope = "all"` is the old behaviour: a native invoice is read, listed, found and marked."""
    async with env_for(store_location, "all") as env:
        native = await create_native(env, order_id="N-1")
        ours = await create_greenfield(env)
        client = env.client
        for template in GREENFIELD_READS:
            assert (await client.get(template.format(base=BASE, id=native["id"]), headers=GF)).status == 200
        assert sorted(await greenfield_listed(env)) == sorted([ours["id"], native["id"]])
        assert await greenfield_listed(env, "orderId=N-1") == [native["id"]]
        marked = await client.post(f"{BASE}/invoices/{native['id']}/status", json={"status": "Settled"}, headers=GF)
        assert marked.status == 200 and (await marked.json())["status"] == "Settled"
        shown = await env.processor.invoice_json(native["id"])
        assert shown is not None and (shown["status"], shown["manually_marked"]) == ("paid", True)


@pytest.mark.parametrize("scope", ["compat", "all"])
async def test_a_bitpay_read_of_a_native_invoice_is_refused_by_default(store_location, scope):
    """BitPay's GET /invoices/{id} answers a native invoice as an unknown one unless scope = "all"; the
    compatible APIs' invoices (BitPay's and Greenfield's, one key) are read either way."""
    async with env_for(store_location, scope) as env:
        native = await create_native(env)
        theirs = [(await create_bitpay(env))["id"], (await create_greenfield(env))["id"]]
        for invoice_id in theirs:
            status, body = await answer(await env.client.get(f"/invoices/{invoice_id}", headers=BASIC))
            assert status == 200 and body["data"]["id"] == invoice_id
        refused = await answer(await env.client.get(f"/invoices/{native['id']}", headers=BASIC))
        unknown = await answer(await env.client.get(f"/invoices/{UNKNOWN}", headers=BASIC))
        assert unknown == (404, {"error": "Object not found"})
        if scope == "compat":
            assert refused == unknown
        else:
            assert refused[0] == 200 and refused[1]["data"]["id"] == native["id"]


async def test_a_bitpay_invoice_marked_settled_says_marked_not_paid_with_money(store_location):
    """BitPay's view of an invoice marked Settled through Greenfield: `exceptionStatus` "marked" (as BTCPay shows a
    manual mark), so a BitPay-era plugin can tell it from money; unmarked, no exception."""
    async with env_for(store_location, "compat") as env:
        invoice_id = (await create_bitpay(env))["id"]
        status, body = await answer(await env.client.get(f"/invoices/{invoice_id}", headers=BASIC))
        assert status == 200 and body["data"]["exceptionStatus"] is False
        marked = await env.client.post(f"{BASE}/invoices/{invoice_id}/status", json={"status": "Settled"}, headers=GF)
        assert marked.status == 200
        status, body = await answer(await env.client.get(f"/invoices/{invoice_id}", headers=BASIC))
        assert status == 200 and (body["data"]["status"], body["data"]["exceptionStatus"]) == ("complete", "marked")


@pytest.mark.parametrize("scope", ["compat", "all"])
async def test_greenfield_webhooks_get_only_the_events_of_invoices_in_scope(store_location, scope):
    """A webhook registered through the API gets no delivery for a native invoice's events (created, paid) by
    default, and every one with scope = "all"; a compatible invoice's events reach it either way."""
    async with env_for(store_location, scope) as env:
        response = await env.client.post(f"{BASE}/webhooks", json={"url": "https://billing.example/h"}, headers=GF)
        hook = await response.json()
        native = await create_native(env)
        ours = await create_greenfield(env)
        await pay(env.processor, env.chain, env.chain.derive(0)[1], 98000, "aa" * 32, height=2)
        shown = await env.processor.invoice_json(native["id"])
        assert shown is not None and shown["status"] == "paid"
        delivered = [(d["invoice_id"], d["type"]) for d in reversed(await env.processor.store.hook_deliveries(
            hook["id"]))]
        native_types = ["InvoiceCreated", "InvoiceReceivedPayment", "InvoicePaymentSettled", "InvoiceSettled"]
        assert [t for i, t in delivered if i == ours["id"]] == ["InvoiceCreated"]
        assert [t for i, t in delivered if i == native["id"]] == ([] if scope == "compat" else native_types)


async def test_deliveries_queued_while_the_scope_was_all_are_not_shown_or_redelivered_after(store_location):
    """A store whose hooks received every invoice's events (scope "all", or before scopes existed) keeps those
    deliveries; once the scope is "compat" the key neither sees a native invoice's nor has it sent again."""
    async with env_for(store_location, "all") as env:
        hook = await (await env.client.post(f"{BASE}/webhooks", json={"url": "https://b.example/h"},
                                            headers=GF)).json()
        native = await create_native(env)
        ours = await create_greenfield(env)
        by_invoice = {d["invoice_id"]: d["id"] for d in await env.processor.store.hook_deliveries(hook["id"])}
        async with client_for(env.processor, "compat") as client:
            path = f"{BASE}/webhooks/{hook['id']}/deliveries"
            listed = await (await client.get(path, headers=GF)).json()
            assert [d["id"] for d in listed] == [by_invoice[ours["id"]]]
            hidden = by_invoice[native["id"]]
            for method, suffix in (("GET", ""), ("GET", "/request"), ("POST", "/redeliver")):
                response = await client.request(method, f"{path}/{hidden}{suffix}", headers=GF)
                assert response.status == 404 and (await response.json())["code"] == "webhookdelivery-not-found"
            assert (await client.get(f"{path}/{by_invoice[ours['id']]}/request", headers=GF)).status == 200
        assert len(await env.processor.store.hook_deliveries(hook["id"])) == 2  # nothing was redelivered


async def test_a_manual_mark_shows_natively_in_events_and_agrees_with_greenfield(store_location):
    """`manually_marked`: false for an invoice paid with money, true once marked by hand, in the native JSON and
    in the invoice of every later event, and Greenfield's `manuallyMarked` says the same."""
    async with env_for(store_location, "compat") as env:
        hook = await (await env.client.post(f"{BASE}/webhooks", json={"url": "https://b.example/h"},
                                            headers=GF)).json()
        paid = await create_greenfield(env)
        marked = await create_greenfield(env)
        assert (await env.client.post(f"{BASE}/invoices/{paid['id']}/payment-methods/FAKE-CHAIN/activate",
                                      headers=GF)).status == 200
        await pay(env.processor, env.chain, next(iter(env.chain.watchlist.keys)), 20000, "bb" * 32, height=2)
        response = await env.client.post(f"/api/v1/invoices/{marked['id']}/status", json={"status": "Settled"},
                                         headers=GF)
        assert response.status == 200
        for invoice_id, manual in ((paid["id"], False), (marked["id"], True)):
            shown = await (await env.client.get(f"/v1/invoices/{invoice_id}", headers=NATIVE)).json()
            assert (shown["status"], shown["manually_marked"]) == ("paid", manual)
            events = [json.loads(e["payload"]) for e in await env.processor.store.events_for(invoice_id)]
            assert [(e["type"], e["invoice"]["manually_marked"]) for e in events][0] == ("invoice.created", False)
            assert (events[-1]["type"], events[-1]["invoice"]["manually_marked"]) == ("invoice.paid", manual)
            settled = [json.loads(d["body"]) for d in await env.processor.store.hook_deliveries(hook["id"])
                       if d["invoice_id"] == invoice_id and d["type"] == "InvoiceSettled"]
            assert [s["manuallyMarked"] for s in settled] == [manual]
            greenfield_view = await (await env.client.get(f"/api/v1/invoices/{invoice_id}", headers=GF)).json()
            assert (greenfield_view["additionalStatus"] == "Marked") is manual


async def test_each_state_changing_call_logs_one_audit_line_without_secrets(store_location, caplog):
    """Mark, cancel, webhook create/update/delete and redeliver, from the native API and Greenfield: one INFO line
    each on watcherd.audit naming the API, the action and the id; a refused call logs none, and no line holds
    the key, the token, a webhook's secret or its URL."""
    async with env_for(store_location, "compat") as env:
        client = env.client
        native = await create_native(env)
        ours = await create_greenfield(env)
        with caplog.at_level("INFO", logger="watcherd.audit"):
            assert (await client.post(f"/v1/invoices/{native['id']}/cancel", headers=NATIVE)).status == 200
            event_id = (await env.processor.store.events_for(native["id"]))[0]["id"]
            assert (await client.post(f"/v1/webhooks/{event_id}/redeliver", headers=NATIVE)).status == 202
            assert (await client.post(f"{BASE}/invoices/{native['id']}/status", json={"status": "Settled"},
                                      headers=GF)).status == 404
            for status in ("Settled", "Invalid"):
                assert (await client.post(f"{BASE}/invoices/{ours['id']}/status", json={"status": status},
                                          headers=GF)).status == 200
            hook = await (await client.post(f"{BASE}/webhooks", headers=GF, json={
                "url": "https://billing.example/hooks?token=url-secret", "secret": "hook-secret-0123456789"})).json()
            path = f"{BASE}/webhooks/{hook['id']}"
            assert (await client.put(path, json={"secret": "other-secret-0123456789"}, headers=GF)).status == 200
            await create_greenfield(env)
            delivery = (await (await client.get(f"{path}/deliveries", headers=GF)).json())[0]["id"]
            again = await (await client.post(f"{path}/deliveries/{delivery}/redeliver", headers=GF)).json()
            assert (await client.delete(path, headers=GF)).status == 200
            assert (await client.delete(path, headers=GF)).status == 404
        records = [r for r in caplog.records if r.name == "watcherd.audit"]
        assert all(r.levelname == "INFO" for r in records)
        redelivered = (await env.processor.store.hook_delivery(hook["id"], again))["invoice_id"]
        assert [(r.getMessage(), getattr(r, "invoice_id", None), getattr(r, "event_id", None)) for r in records] == [
            ("api=native action=cancel", native["id"], None),
            ("api=native action=redeliver", None, event_id),
            ("api=greenfield action=mark_settled", ours["id"], None),
            ("api=greenfield action=mark_invalid", ours["id"], None),
            (f"api=greenfield action=webhook_create webhook_id={hook['id']}", None, None),
            (f"api=greenfield action=webhook_update webhook_id={hook['id']}", None, None),
            (f"api=greenfield action=redeliver webhook_id={hook['id']} delivery_id={again} "
             f"original_delivery_id={delivery}", redelivered, None),
            (f"api=greenfield action=webhook_delete webhook_id={hook['id']}", None, None),
        ]
        logged = "\n".join(r.getMessage() for r in caplog.records)
        for secret in (KEY, TOKEN, "hook-secret-0123456789", "other-secret-0123456789", "url-secret"):
            assert secret not in logged


# ---- the store: which API made each invoice, migrated; lists read from an index -----------------------------

V8_INVOICES = [  # (id, compat JSON as an older watcherd stored it, the API it is then known to be from)
    ("inv_native", "{}", "native"),
    ("inv_gf", '{"api": "greenfield", "checkout": {"speedPolicy": "MediumSpeed"}}', "greenfield"),
    ("inv_bp", '{"api": "bitpay", "posData": null, "notificationURL": null, "transactionSpeed": "medium", '
               '"fullNotifications": false}', "bitpay"),
    ("inv_odd", '{"checkout": {}}', "greenfield"),  # compat data without its API's name: a compatible one
]


def v8_inserts() -> str:
    return ";".join(
        f"""INSERT INTO invoices (id, currency, decimals, amount, tolerance_percent, status, metadata, created_at,
                expires_at, updated_at, compat) VALUES ('{i}', 'USD', 2, '1000', '0', 'unpaid', '{{}}', {n}, 9999,
                {n}, '{compat}')"""
        for n, (i, compat, _) in enumerate(V8_INVOICES))


async def check_migrated(store: Store) -> None:
    assert {i: (await store.invoice(i)).api for i, _, _ in V8_INVOICES} == {i: api for i, _, api in V8_INVOICES}
    assert [r.id for r in await store.invoices()] == ["inv_odd", "inv_bp", "inv_gf", "inv_native"]
    assert [r.id for r in await store.invoices(compat_only=True)] == ["inv_odd", "inv_bp", "inv_gf"]


async def test_a_version_8_sqlite_store_learns_which_api_made_each_invoice(tmp_path):
    """Upgraded invoices keep everything; those with compat data are the compatible APIs' (in the key's scope),
    the rest native."""
    path = tmp_path / "v8.sqlite3"
    with sqlite3.connect(path) as db:
        for number, script in enumerate(SCHEMA[:8], start=1):
            db.executescript(f"BEGIN; {script}; PRAGMA user_version={number}; COMMIT;")
        db.executescript(f"BEGIN; {v8_inserts()}; COMMIT;")
    store = await Store.open(path)
    try:
        assert (await store._one("PRAGMA user_version"))[0] == len(SCHEMA) == 9
        await check_migrated(store)
    finally:
        await store.close()


async def test_a_version_8_postgres_store_learns_which_api_made_each_invoice(postgres_server):
    url = postgres_server.new_database()
    database = url.rsplit("/", 1)[1]
    scripts = [script for number, script in POSTGRES_SCHEMA if number <= 8]
    postgres_server.sql("; ".join([*scripts, "CREATE TABLE schema_version (version BIGINT NOT NULL)",
                                   "INSERT INTO schema_version VALUES (8)", v8_inserts()]), database=database)
    store = await Store.open(url)
    try:
        assert await store.schema_version() == 9
        await check_migrated(store)
    finally:
        await store.close()


ROWS = 20_000


async def fill(store: Store) -> None:
    """ROWS invoices, one in a hundred a compatible API's, in one statement. PostgreSQL's statistics then taken
    as autovacuum takes them after so many rows (without any, it guesses a text search matches a handful of rows
    and reads them all: true of any search, scoped or not); SQLite plans without statistics (none is ever run)."""
    columns = ("id, currency, decimals, amount, tolerance_percent, status, metadata, created_at, expires_at, "
               "updated_at, api")
    values = ("'inv_' || i, 'USD', 2, '1000', '0', 'unpaid', '{}', i, i + 900, i, "
              "CASE WHEN i % 100 = 0 THEN 'greenfield' ELSE 'native' END")
    if store.dialect == "postgres":
        sql = f"INSERT INTO invoices ({columns}) SELECT {values} FROM generate_series(1, {ROWS}) AS n(i)"
    else:
        sql = (f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {ROWS}) "
               f"INSERT INTO invoices ({columns}) SELECT {values} FROM n")
    async with store.transaction():
        await store._write(sql)
        if store.dialect == "postgres":
            await store._write("ANALYZE invoices")


async def plan(store: Store, **query: Any) -> str:
    """The plan of the SQL `store.invoices(**query)` runs, as each backend explains it."""
    seen: list[tuple[str, Any]] = []
    real = store._all

    async def recording(sql: str, params: Any = ()) -> Any:
        seen.append((sql, params))
        return await real(sql, params)

    store._all = recording  # type: ignore[method-assign]
    try:
        await store.invoices(**query)
    finally:
        del store._all
    sql, params = seen[-1]
    prefix = "EXPLAIN " if store.dialect == "postgres" else "EXPLAIN QUERY PLAN "
    return "\n".join(" ".join(str(c) for c in row) for row in await store._all(prefix + sql, params))


@pytest.mark.parametrize("query", [{}, {"compat_only": True}, {"compat_only": True, "before": "inv_19900"},
                                   {"compat_only": True, "text": "inv_1"}, {"compat_only": True, "offset": 500}])
async def test_invoice_lists_read_an_index_newest_first_not_the_whole_table(store_location, query):
    """A page of a list (the key's scope or not) walks an index in the list's order: no full scan, no sort of
    every row (a store of many native invoices and few compatible ones is the case the scope must not slow)."""
    store = await Store.open(store_location)
    try:
        await fill(store)
        shown = await plan(store, **query)
        index = "invoices_compat" if query else "invoices_created"
        assert index in shown, shown
        assert "TEMP B-TREE" not in shown and "Sort" not in shown and "Seq Scan" not in shown, shown
        assert "SCAN invoices\n" not in shown + "\n", shown
        rows = await store.invoices(**query, limit=3)
        assert all(r.api != "native" for r in rows) if query else len(rows) == 3
    finally:
        await store.close()
