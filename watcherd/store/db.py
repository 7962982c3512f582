"""The connections every query family shares: opening (PRAGMAs, migrations), serialized transactions, and the
the primitives the families build on (`_one`, `_all`, `_write`, `_changed`).

Two connections: the writer, used only by the task inside `transaction()`, and a read-only one for everybody
else. In WAL mode the reader sees the last committed state, never the rows of a transaction still open: the
outbox and the API can never act on an event that a rollback then takes back."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Self

import aiosqlite

from watcherd.exceptions import StoreError
from watcherd.store.schema import SCHEMA

# the store whose transaction the current task is in (contextvars follow the task, not the object)
_WRITING: ContextVar[object | None] = ContextVar("watcherd_store_writing", default=None)


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


class _Batch:
    """Units of work sharing one database transaction (see `Database.transaction`)."""

    def __init__(self) -> None:
        self.units = 0  # completed so far
        self.committed: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class Database:
    max_batch = 64  # units committed together at most (the [store] max_batch key)

    def __init__(self, db: aiosqlite.Connection, reader: aiosqlite.Connection | None = None):
        self._db = db
        self._reader = reader or db  # ":memory:" has no second connection to the same database
        self._lock = asyncio.Lock()
        self._batch: _Batch | None = None  # the open database transaction and its units
        self._queued = 0  # units waiting for the lock: they will join the open batch
        self._orphan: asyncio.Future[None] | None = None  # a commit nobody was left to make (see transaction)

    @classmethod
    async def open(cls, path: str | Path) -> Self:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            db = await _connect(str(path), read_only=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {path}: {exc}") from exc
        store = cls(db)
        try:
            await store._migrate()
            if str(path) != ":memory:":
                store._reader = await _connect(str(path), read_only=True)
        except BaseException as exc:
            await store.close()  # its worker thread would keep the process alive
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"cannot open store {path}: {exc}") from exc
            raise
        return store

    async def close(self) -> None:
        if self._reader is not self._db:
            await self._reader.close()
        await self._db.close()

    async def _migrate(self) -> None:
        async with self._db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        version = row[0] if row is not None else 0  # a PRAGMA always answers one row; the guard is for the type checker
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

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Self]:
        """One atomic unit of work, never interleaved with another.

        Group commit: units that queue up while one runs join its database transaction, each in a savepoint,
        and are committed together, so a burst of API requests or delivery records costs one fsync, not one
        each. A unit that raises rolls back only itself; a unit returns only once its batch is committed (and
        raises if that commit failed), so nothing is acknowledged before it is durable. `max_batch` caps a
        batch (1: one transaction per unit)."""
        self._queued += 1
        try:
            await self._lock.acquire()
        except BaseException:
            self._queued -= 1
            if self._queued == 0 and self._batch is not None and not self._lock.locked():
                # a unit that ended left the commit to us: do it, or it would wait for ever
                self._orphan = asyncio.ensure_future(self._commit_left())
            raise
        self._queued -= 1
        try:
            batch = self._batch
            if batch is None:
                await self._begin()
                batch = self._batch = _Batch()
            first = batch.units == 0
            if not first:
                await self._db.execute("SAVEPOINT unit")
            token = _WRITING.set(self)
            try:
                yield self
            except BaseException:
                await asyncio.shield(self._undo_unit(batch, first))
                raise
            else:
                if not first:
                    await self._db.execute("RELEASE unit")
                batch.units += 1
            finally:
                _WRITING.reset(token)
        finally:
            if self._batch is not None and (self._queued == 0 or self._batch.units >= self.max_batch):
                # shielded: a shutdown cancelling the caller must not leave a commit half-acknowledged
                await asyncio.shield(self._commit())
            self._lock.release()
        await asyncio.shield(batch.committed)

    async def _commit_left(self) -> None:
        """Commit the open batch whose last queued unit was cancelled before it ran (unless a unit that ran
        meanwhile committed it)."""
        async with self._lock:
            if self._batch is not None:
                await self._commit()

    async def _begin(self) -> None:
        try:
            await self._db.execute("BEGIN IMMEDIATE")
        except asyncio.CancelledError:
            # the BEGIN was already queued on the connection's thread and runs anyway: undo it behind it,
            # or the next transaction would find one still open
            await asyncio.shield(self._rollback())
            raise

    async def _undo_unit(self, batch: _Batch, first: bool) -> None:
        """A unit raised: take back its writes, and only its own. The first unit of a batch has no savepoint
        (nobody else is in it yet): the whole transaction goes. So does a batch whose transaction the database
        already ended by itself (SQLite rolls back on a full disk or an I/O error): its units learn it from
        their commit."""
        if not first:
            with contextlib.suppress(sqlite3.Error):
                await self._db.execute("ROLLBACK TO unit")
                await self._db.execute("RELEASE unit")
                if self._db.in_transaction:
                    return
        self._batch = None
        await self._rollback()
        if not batch.committed.done():
            batch.committed.set_exception(StoreError("the transaction was rolled back with a failed unit of it"))
            batch.committed.exception()  # retrieved: a batch with no other unit has nobody waiting on it

    async def _commit(self) -> None:
        batch, self._batch = self._batch, None
        assert batch is not None
        try:
            await self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            await self._rollback()  # a failed COMMIT (disk full) can leave it open
            batch.committed.set_exception(exc)
            batch.committed.exception()
        else:
            batch.committed.set_result(None)

    async def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):  # "no transaction is active" when the BEGIN had failed
            await self._db.execute("ROLLBACK")

    def _connection(self) -> aiosqlite.Connection:
        """Inside our own transaction: the writer (we read what we wrote); anywhere else: the committed state."""
        return self._db if _WRITING.get() is self else self._reader

    async def _one(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Row | None:
        rows = await self._all(sql, params)
        return rows[0] if rows else None

    async def _all(self, sql: str, params: Iterable[Any] | dict[str, Any] = ()) -> list[sqlite3.Row]:
        # execute and fetch in one call on the connection's thread: a task cancelled while waiting (a reload
        # stopping a follower) can then never leave a statement open, which would pin the reader to an old
        # snapshot of the database
        rows = await self._connection().execute_fetchall(sql, params if isinstance(params, dict) else tuple(params))
        return list(rows)

    async def _all_in(self, sql: str, keys: Sequence[Any], chunk: int = 500) -> list[sqlite3.Row]:
        """`sql` with `{keys}` standing for a list of placeholders, run over `keys` in chunks (one round trip per
        chunk instead of one per key)."""
        rows: list[sqlite3.Row] = []
        for start in range(0, len(keys), chunk):
            part = keys[start:start + chunk]
            rows.extend(await self._all(sql.format(keys=", ".join("?" * len(part))), part))
        return rows

    async def _write(self, sql: str, params: Iterable[Any] = ()) -> int:
        if _WRITING.get() is not self:
            raise StoreError("write outside a transaction")
        async with self._db.execute(sql, tuple(params)) as cur:
            return cur.lastrowid or 0

    async def _changed(self, sql: str, params: Iterable[Any] = ()) -> int:
        """Like `_write`, and how many rows the statement changed."""
        if _WRITING.get() is not self:
            raise StoreError("write outside a transaction")
        async with self._db.execute(sql, tuple(params)) as cur:
            return cur.rowcount

    async def writable(self) -> bool:
        try:
            async with self.transaction():
                # a real write to the database file (its header): a temp table would not meet a full disk
                await self._write(f"PRAGMA user_version = {len(SCHEMA)}")
            return True
        except (sqlite3.Error, StoreError):
            return False
