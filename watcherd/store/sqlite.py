"""The SQLite backend, the default: one file, two connections.

The writer is used only by the task inside `Database.transaction()`; a read-only connection (aiosqlite, on its own
thread) serves everybody else. In WAL mode the reader sees the last committed state, never the rows of a
transaction still open: the outbox and the API can never act on an event that a rollback then takes back. The
schema version is SQLite's `user_version`.

The writer is a plain sqlite3 connection shared by the event loop and one worker thread. What can wait leaves
the loop: BEGIN IMMEDIATE (it may wait for another process's write lock), COMMIT and ROLLBACK (the fsync, a WAL
checkpoint), migrations. The statements of an open transaction run on the loop itself: the write lock is ours
by then, so they only touch the page cache, in microseconds, where a round trip to a thread and back cost more
than the statement (a created invoice is a dozen of them, and units of a batch run one after another). A long
transaction (a block paying hundreds of invoices) lets the loop run every `BREATHE_SECONDS`."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Self, TypeVar

import aiosqlite

from watcherd.exceptions import StoreError
from watcherd.store.backend import Params, Row
from watcherd.store.schema import SCHEMA

T = TypeVar("T")
BREATHE_SECONDS = 0.001  # the longest run of a transaction's statements on the loop without letting others run


def _writer(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA busy_timeout=5000")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")  # an acknowledged commit survives power loss
    db.execute("PRAGMA foreign_keys=ON")
    return db


async def _reader(path: str) -> aiosqlite.Connection:
    db = await aiosqlite.connect(path, isolation_level=None)
    db.row_factory = sqlite3.Row
    await db.execute("PRAGMA busy_timeout=5000")
    await db.execute("PRAGMA query_only=ON")
    return db


def _params(params: Params) -> Any:
    return params if isinstance(params, dict) else tuple(params)


class SqliteBackend:
    dialect = "sqlite"
    errors: tuple[type[Exception], ...] = (sqlite3.Error,)

    def __init__(self, path: str):
        self._path = path
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="watcherd-sqlite")
        self._db: sqlite3.Connection | None = None
        self._reader: aiosqlite.Connection | None = None  # ":memory:" has no second connection: reads the writer
        self._breathed = 0.0  # when the loop last ran something else during the open transaction

    @classmethod
    async def open(cls, path: str | Path, *, migrate: bool = True) -> Self:
        """Both connections, the schema brought up to date first (`migrate`)."""
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        backend = cls(str(path))
        try:
            backend._db = await backend._off(_writer, str(path))
            if migrate:
                await backend.migrate()
            if backend._path != ":memory:":
                backend._reader = await _reader(backend._path)
        except BaseException as exc:
            await backend.close()  # its worker threads would keep the process alive
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"cannot open store {path}: {exc}") from exc
            raise
        return backend

    async def _off(self, work: Callable[..., T], *args: Any) -> T:
        """`work` on the writer's thread, in the order asked."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, work, *args)

    @property
    def _conn(self) -> sqlite3.Connection:
        assert self._db is not None, "the store is not open"
        return self._db

    async def close(self) -> None:
        if self._reader is not None:
            await self._reader.close()
        if self._db is not None:
            await self._off(self._db.close)
        self._thread.shutdown()

    async def schema_version(self) -> int:
        return int(await self._off(lambda: self._conn.execute("PRAGMA user_version").fetchone()[0]))

    async def migrate(self) -> int:
        return await self._off(self._migrate)

    def _migrate(self) -> int:
        db = self._conn
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version > len(SCHEMA):
            raise StoreError(f"the store's schema is version {version}, newer than this watcherd knows "
                             f"({len(SCHEMA)}): a newer watcherd wrote it; run that version (or restore a backup)")
        # a migration may rebuild a table others refer to (SQLite's documented procedure): references are
        # checked once it is done, not while the old table is dropped
        db.execute("PRAGMA foreign_keys=OFF")
        for number, script in enumerate(SCHEMA[version:], start=version + 1):
            db.executescript(f"BEGIN; {script}; PRAGMA user_version={number};")
            if db.execute("PRAGMA foreign_key_check").fetchall():
                db.execute("ROLLBACK")
                raise StoreError(f"migration to schema version {number} would leave dangling references")
            db.execute("COMMIT")
        db.execute("PRAGMA foreign_keys=ON")
        return len(SCHEMA)

    async def begin(self) -> None:
        await self._off(self._conn.execute, "BEGIN IMMEDIATE")
        self._breathed = time.perf_counter()

    async def _breathe(self) -> None:
        """After a statement on the loop: every few milliseconds, let the loop's other tasks run (none of them
        can use the writer meanwhile: the transaction's lock is held)."""
        if time.perf_counter() - self._breathed >= BREATHE_SECONDS:
            await asyncio.sleep(0)
            self._breathed = time.perf_counter()

    async def commit(self) -> None:
        await self._off(self._conn.execute, "COMMIT")

    async def rollback(self) -> None:
        def rollback() -> None:
            with contextlib.suppress(sqlite3.Error):  # "no transaction is active" when the BEGIN had failed
                self._conn.execute("ROLLBACK")

        await self._off(rollback)

    def in_transaction(self) -> bool:
        return self._conn.in_transaction

    async def savepoint(self, name: str) -> None:
        self._conn.execute(f"SAVEPOINT {name}")

    async def rollback_to(self, name: str) -> None:
        self._conn.execute(f"ROLLBACK TO {name}")

    async def release(self, name: str) -> None:
        self._conn.execute(f"RELEASE {name}")

    def now_sql(self) -> str:
        return "((julianday('now') - 2440587.5) * 86400.0)"  # unix seconds, to the millisecond

    async def execute(self, sql: str, params: Params = ()) -> int:
        if self._conn.in_transaction:
            count = self._conn.execute(sql, _params(params)).rowcount
            await self._breathe()
            return count
        return await self._off(lambda: self._conn.execute(sql, _params(params)).rowcount)

    async def fetch(self, sql: str, params: Params = (), *, writer: bool) -> list[Row]:
        if self._reader is not None and not writer:
            # execute and fetch in one call on the reader's thread: a task cancelled while waiting (a reload
            # stopping a follower) can then never leave a statement open, which would pin the reader to an old
            # snapshot of the database
            return list(await self._reader.execute_fetchall(sql, _params(params)))
        if self._conn.in_transaction:
            rows = self._conn.execute(sql, _params(params)).fetchall()
            await self._breathe()
            return rows
        return await self._off(lambda: self._conn.execute(sql, _params(params)).fetchall())

    async def probe_write(self) -> None:
        # a real write to the database file (its header): a temp table would not meet a full disk
        self._conn.execute(f"PRAGMA user_version = {len(SCHEMA)}")
