"""The store knows which API created each invoice (the compatible APIs' key reaches only theirs), upgraded stores
included, and an invoice list reads an index in its order instead of sorting the whole table."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest

from watcherd.store import SCHEMA, Store
from watcherd.store.schema_postgres import POSTGRES_SCHEMA

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
