"""The connection every query family shares: opening (PRAGMAs, migrations), serialized transactions, and the
three primitives the families build on (`_one`, `_all`, `_write`)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Self

import aiosqlite

from watcherd.exceptions import StoreError
from watcherd.store.schema import SCHEMA


class Database:
    def __init__(self, db: aiosqlite.Connection):
        self._db = db
        self._lock = asyncio.Lock()
        self._in_transaction = False

    @classmethod
    async def open(cls, path: str | Path) -> Self:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            db = await aiosqlite.connect(str(path), isolation_level=None)
            db.row_factory = sqlite3.Row
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=FULL")  # an acknowledged commit survives power loss
            await db.execute("PRAGMA foreign_keys=ON")
            await db.execute("PRAGMA busy_timeout=5000")
            store = cls(db)
            await store._migrate()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {path}: {exc}") from exc
        return store

    async def close(self) -> None:
        await self._db.close()

    async def _migrate(self) -> None:
        row = await self._one("PRAGMA user_version")
        version = row[0] if row is not None else 0  # a PRAGMA always answers one row; the guard is for the type checker
        for number, script in enumerate(SCHEMA[version:], start=version + 1):
            await self._db.executescript(f"BEGIN; {script}; PRAGMA user_version={number}; COMMIT;")

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Self]:
        """One atomic unit of work; transactions are serialized, never interleaved."""
        async with self._lock:
            await self._db.execute("BEGIN IMMEDIATE")
            self._in_transaction = True
            try:
                yield self
            except BaseException:
                await asyncio.shield(self._db.execute("ROLLBACK"))
                raise
            else:
                # shielded: a shutdown cancelling the caller must not leave a commit half-acknowledged
                await asyncio.shield(self._db.execute("COMMIT"))
            finally:
                self._in_transaction = False

    async def _one(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Row | None:
        async with self._db.execute(sql, tuple(params)) as cur:
            return await cur.fetchone()

    async def _all(self, sql: str, params: Iterable[Any] | dict[str, Any] = ()) -> list[sqlite3.Row]:
        async with self._db.execute(sql, params if isinstance(params, dict) else tuple(params)) as cur:
            return list(await cur.fetchall())

    async def _write(self, sql: str, params: Iterable[Any] = ()) -> int:
        if not self._in_transaction:
            raise StoreError("write outside a transaction")
        async with self._db.execute(sql, tuple(params)) as cur:
            return cur.lastrowid or 0

    async def writable(self) -> bool:
        try:
            async with self.transaction():
                await self._write("CREATE TEMP TABLE IF NOT EXISTS probe (x)")
            return True
        except (sqlite3.Error, StoreError):
            return False
