"""`watcherd store copy`: a stopped instance's SQLite store into an empty PostgreSQL database, in one
transaction (all of it or nothing), verified by counting each table on both sides.

Rows keep their ids (event and delivery sequence numbers are what webhooks and the outbox refer to); the
target's identity sequences are then moved past the copied ids, so the next event is numbered after them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from watcherd.exceptions import StoreError
from watcherd.store.db import Database
from watcherd.store.schema_postgres import IDENTITY_COLUMNS

# parents before children (foreign keys). Not `leases`: who works what is the running instances' business, and
# the stopped instance holds nothing
TABLES = ("chains", "blocks", "assets", "invoices", "methods", "payments", "spends", "events", "deliveries",
          "hooks", "hook_deliveries")
_CHUNK_PARAMETERS = 20_000  # per INSERT; PostgreSQL takes at most 65535
_READ_ROWS = 2000


async def count(store: Database, table: str) -> int:
    row = await store._one(f"SELECT COUNT(*) FROM {table}")
    return int(row[0]) if row is not None else 0


async def copy_store(source: Database, target: Database,
                     progress: Callable[[str, int], None] | None = None) -> dict[str, int]:
    """Copy every table of `source` (SQLite) into `target` (PostgreSQL, migrated, empty); the rows per table."""
    if source.dialect != "sqlite" or target.dialect != "postgres":
        raise StoreError("store copy goes from a SQLite store to a PostgreSQL database")
    versions = (await source.schema_version(), await target.schema_version())
    if versions[0] != versions[1]:
        raise StoreError(f"schema versions differ (source {versions[0]}, target {versions[1]}): migrate both first")
    filled = [t for t in TABLES if await count(target, t)]
    if filled:
        raise StoreError(f"the target database is not empty ({', '.join(filled)} hold rows): copy only into an "
                         "empty database")
    copied: dict[str, int] = {}
    async with target.transaction():
        for table in TABLES:
            copied[table] = await _copy_table(source, target, table)
            if progress is not None:
                progress(table, copied[table])
        for table, column in IDENTITY_COLUMNS.items():
            await target._returning(
                f"""SELECT setval(pg_get_serial_sequence('{table}', '{column}'), COALESCE(MAX({column}), 1),
                                  MAX({column}) IS NOT NULL) FROM {table}""")
    for table in TABLES:
        found = await count(target, table)
        if found != copied[table] or found != await count(source, table):
            raise StoreError(f"{table}: {copied[table]} row(s) copied but the target holds {found}")
    return copied


async def _copy_table(source: Database, target: Database, table: str) -> int:
    types = {r[0]: r[1] for r in await target._all(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = ?", (table,))}
    copied, last = 0, None
    while True:
        rows = await source._all(
            f"SELECT rowid AS copy_rowid, * FROM {table} WHERE rowid > ? ORDER BY rowid LIMIT ?",
            (-1 if last is None else last, _READ_ROWS))
        if not rows:
            return copied
        columns = [c for c in rows[0].keys() if c != "copy_rowid"]
        missing = set(columns) ^ set(types)
        if missing:
            raise StoreError(f"{table}: the two schemas differ in column(s) {', '.join(sorted(missing))}")
        converters = [_converter(types[c]) for c in columns]
        per_insert = max(1, _CHUNK_PARAMETERS // len(columns))
        for start in range(0, len(rows), per_insert):
            chunk = rows[start:start + per_insert]
            values = ", ".join(["(" + ", ".join("?" * len(columns)) + ")"] * len(chunk))
            params = [convert(row[c]) for row in chunk for c, convert in zip(columns, converters, strict=True)]
            await target._write(f"INSERT INTO {table} ({', '.join(columns)}) VALUES {values}", params)
        copied += len(rows)
        last = rows[-1]["copy_rowid"]


def _converter(data_type: str) -> Callable[[Any], Any]:
    """SQLite keeps what it was given (a REAL in an INTEGER column, say); PostgreSQL takes only its own type."""
    def convert(value: Any, to: Callable[[Any], Any]) -> Any:
        return None if value is None else to(value)

    to: Callable[[Any], Any] = {"bigint": int, "double precision": float, "bytea": bytes, "text": str}.get(
        data_type, lambda v: v)
    return lambda value: convert(value, to)
