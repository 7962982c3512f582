"""The SQLite backend (aiosqlite), the default: one file, two connections.

The writer is used only by the task inside `Database.transaction()`; a read-only connection serves everybody
else. In WAL mode the reader sees the last committed state, never the rows of a transaction still open: the
outbox and the API can never act on an event that a rollback then takes back. The schema version is SQLite's
`user_version`."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Self

import aiosqlite

from watcherd.exceptions import StoreError
from watcherd.store.backend import Params, Row
from watcherd.store.schema import SCHEMA


async def _connect(path: str, *, read_only: bool) -> aiosqlite.Connection:
    db = await aiosqlite.connect(path, isolation_level=None)
    db.row_factory = sqlite3.Row
    await db.execute("PRAGMA busy_timeout=5000")
    if read_only:
        await db.execute("PRAGMA query_only=ON")
    else:
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=FULL")  # an acknowledged commit survives power loss
        await db.execute("PRAGMA foreign_keys=ON")
    return db


class SqliteBackend:
    dialect = "sqlite"
    errors: tuple[type[Exception], ...] = (sqlite3.Error,)

    def __init__(self, db: aiosqlite.Connection, path: str):
        self._db = db
        self._reader = db  # ":memory:" has no second connection to the same database
        self._path = path

    @classmethod
    async def open(cls, path: str | Path, *, migrate: bool = True) -> Self:
        """Both connections, the schema brought up to date first (`migrate`)."""
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            backend = cls(await _connect(str(path), read_only=False), str(path))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {path}: {exc}") from exc
        try:
            if migrate:
                await backend.migrate()
            if backend._path != ":memory:":
                backend._reader = await _connect(backend._path, read_only=True)
        except BaseException as exc:
            await backend.close()  # its worker thread would keep the process alive
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"cannot open store {path}: {exc}") from exc
            raise
        return backend

    async def close(self) -> None:
        if self._reader is not self._db:
            await self._reader.close()
        await self._db.close()

    async def schema_version(self) -> int:
        async with self._db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row is not None else 0  # a PRAGMA always answers one row: the guard is for mypy

    async def migrate(self) -> int:
        version = await self.schema_version()
        if version > len(SCHEMA):
            raise StoreError(f"the store's schema is version {version}, newer than this watcherd knows "
                             f"({len(SCHEMA)}): a newer watcherd wrote it; run that version (or restore a backup)")
        # a migration may rebuild a table others refer to (SQLite's documented procedure): references are
        # checked once it is done, not while the old table is dropped
        await self._db.execute("PRAGMA foreign_keys=OFF")
        for number, script in enumerate(SCHEMA[version:], start=version + 1):
            await self._db.executescript(f"BEGIN; {script}; PRAGMA user_version={number};")
            if await self._db.execute_fetchall("PRAGMA foreign_key_check"):
                await self._db.execute("ROLLBACK")
                raise StoreError(f"migration to schema version {number} would leave dangling references")
            await self._db.execute("COMMIT")
        await self._db.execute("PRAGMA foreign_keys=ON")
        return len(SCHEMA)

    async def begin(self) -> None:
        await self._db.execute("BEGIN IMMEDIATE")

    async def commit(self) -> None:
        await self._db.execute("COMMIT")

    async def rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):  # "no transaction is active" when the BEGIN had failed
            await self._db.execute("ROLLBACK")

    def in_transaction(self) -> bool:
        return self._db.in_transaction

    async def savepoint(self, name: str) -> None:
        await self._db.execute(f"SAVEPOINT {name}")

    async def rollback_to(self, name: str) -> None:
        await self._db.execute(f"ROLLBACK TO {name}")

    async def release(self, name: str) -> None:
        await self._db.execute(f"RELEASE {name}")

    def now_sql(self) -> str:
        return "((julianday('now') - 2440587.5) * 86400.0)"  # unix seconds, to the millisecond

    async def execute(self, sql: str, params: Params = ()) -> int:
        async with self._db.execute(sql, params if isinstance(params, dict) else tuple(params)) as cursor:
            return cursor.rowcount

    async def fetch(self, sql: str, params: Params = (), *, writer: bool) -> list[Row]:
        # execute and fetch in one call on the connection's thread: a task cancelled while waiting (a reload
        # stopping a follower) can then never leave a statement open, which would pin the reader to an old
        # snapshot of the database
        rows = await (self._db if writer else self._reader).execute_fetchall(
            sql, params if isinstance(params, dict) else tuple(params))
        return list(rows)

    async def probe_write(self) -> None:
        # a real write to the database file (its header): a temp table would not meet a full disk
        await self._db.execute(f"PRAGMA user_version = {len(SCHEMA)}")
