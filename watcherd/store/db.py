"""What every query family shares: opening a store (SQLite file or PostgreSQL URL, migrated), serialized
transactions with group commit, and the primitives the families build on (`_one`, `_all`, `_all_in`, `_write`,
`_changed`, `_returning`).

Inside our own transaction a family reads the writer (it sees what it wrote); anywhere else it reads the committed
state: the outbox and the API can never act on an event that a rollback then takes back."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Self

from watcherd.exceptions import StoreError
from watcherd.store.backend import Backend, Params, Row

# the store whose transaction the current task is in (contextvars follow the task, not the object)
_WRITING: ContextVar[object | None] = ContextVar("watcherd_store_writing", default=None)


def is_postgres_url(location: str | Path) -> bool:
    return str(location).startswith(("postgresql://", "postgres://"))


async def _to_the_end(work: Awaitable[None]) -> None:
    """Await `work` to its end even when the caller is cancelled meanwhile (the cancellation is raised after).
    `asyncio.shield` alone would return at once and let the caller release the lock while the connection is
    still busy with it: the next unit's BEGIN would then run before (or, on PostgreSQL, beside) this COMMIT."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while True:
        try:
            await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.done():
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError


class _Batch:
    """Units of work sharing one database transaction (see `Database.transaction`)."""

    def __init__(self) -> None:
        self.units = 0  # completed so far
        self.committed: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class Database:
    max_batch = 64  # units committed together at most (the [store] max_batch key)

    def __init__(self, backend: Backend):
        self._backend = backend
        self._errors: tuple[type[Exception], ...] = (*backend.errors, StoreError)
        self._lock = asyncio.Lock()
        self._batch: _Batch | None = None  # the open database transaction and its units
        self._queued = 0  # units waiting for the lock: they will join the open batch
        self._flushes: set[asyncio.Future[None]] = set()  # commits of a batch left open by a cancelled waiter

    @property
    def dialect(self) -> str:
        return self._backend.dialect

    @classmethod
    async def open(cls, location: str | Path, *, migrate: bool = True, **postgres: Any) -> Self:
        """A SQLite file (a path) or a PostgreSQL database (a postgresql:// URL; `postgres` are the keyword
        options of `PostgresBackend.open`), its schema brought up to date (`migrate`), a newer one refused."""
        if is_postgres_url(location):
            from watcherd.store.postgres import PostgresBackend

            return cls(await PostgresBackend.open(str(location), migrate=migrate, **postgres))
        from watcherd.store.sqlite import SqliteBackend

        return cls(await SqliteBackend.open(location, migrate=migrate))

    async def close(self) -> None:
        await self._backend.close()

    async def schema_version(self) -> int:
        return await self._backend.schema_version()

    async def migrate(self) -> tuple[int, int]:
        """Apply what migrations are missing (a store opened with `migrate=False`); the versions before and
        after. A store newer than this code is refused (StoreError)."""
        before = await self._backend.schema_version()
        return before, await self._backend.migrate()

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
                # the last unit of the open batch left it open for us, and we gave up waiting (cancelled): its
                # units wait for a commit that only a unit holding the lock makes, so make one
                flush = asyncio.ensure_future(self._flush())
                self._flushes.add(flush)
                flush.add_done_callback(self._flushes.discard)
            raise
        self._queued -= 1
        try:
            batch = self._batch
            if batch is None:
                await self._begin()
                batch = self._batch = _Batch()
            first = batch.units == 0
            if not first:
                await self._backend.savepoint("unit")
            token = _WRITING.set(self)
            try:
                yield self
            except BaseException:
                await _to_the_end(self._undo_unit(batch, first))
                raise
            else:
                if not first:
                    await self._backend.release("unit")
                batch.units += 1
            finally:
                _WRITING.reset(token)
        finally:
            try:
                if self._batch is not None and (self._queued == 0 or self._batch.units >= self.max_batch):
                    # to the end: a shutdown cancelling the caller must not leave a commit half-acknowledged
                    await _to_the_end(self._commit())
            finally:
                self._lock.release()
        await asyncio.shield(batch.committed)

    async def _flush(self) -> None:
        async with self._lock:
            if self._batch is not None:
                await _to_the_end(self._commit())

    async def _begin(self) -> None:
        try:
            await self._backend.begin()
        except asyncio.CancelledError:
            # the BEGIN may already be on its way and run anyway: undo it behind it, or the next transaction
            # would find one still open
            await _to_the_end(self._backend.rollback())
            raise

    async def _undo_unit(self, batch: _Batch, first: bool) -> None:
        """A unit raised: take back its writes, and only its own. The first unit of a batch has no savepoint
        (nobody else is in it yet): the whole transaction goes. So does a batch whose transaction the database
        already ended by itself (SQLite rolls back on a full disk or an I/O error, a PostgreSQL connection
        dies): its units learn it from their commit."""
        if not first:
            with contextlib.suppress(*self._errors):
                await self._backend.rollback_to("unit")
                await self._backend.release("unit")
                if self._backend.in_transaction():
                    return
        self._batch = None
        await self._backend.rollback()
        if not batch.committed.done():
            batch.committed.set_exception(StoreError("the transaction was rolled back with a failed unit of it"))
            batch.committed.exception()  # retrieved: a batch with no other unit has nobody waiting on it

    async def _commit(self) -> None:
        batch, self._batch = self._batch, None
        assert batch is not None
        try:
            await self._backend.commit()
        except self._errors as exc:
            await self._backend.rollback()  # a failed COMMIT (disk full) can leave it open
            batch.committed.set_exception(exc)
            batch.committed.exception()
        else:
            batch.committed.set_result(None)

    async def _one(self, sql: str, params: Params = ()) -> Row | None:
        rows = await self._all(sql, params)
        return rows[0] if rows else None

    async def _all(self, sql: str, params: Params = ()) -> list[Row]:
        """Inside our own transaction: from the writer (we read what we wrote); anywhere else: the committed
        state."""
        return await self._backend.fetch(sql, params, writer=_WRITING.get() is self)

    async def _all_in(self, sql: str, keys: Sequence[Any], chunk: int = 500) -> list[Row]:
        """`sql` with `{keys}` standing for a list of placeholders, run over `keys` in chunks (one round trip per
        chunk instead of one per key)."""
        rows: list[Row] = []
        for start in range(0, len(keys), chunk):
            part = keys[start:start + chunk]
            rows.extend(await self._all(sql.format(keys=", ".join("?" * len(part))), part))
        return rows

    def _writing(self) -> None:
        if _WRITING.get() is not self:
            raise StoreError("write outside a transaction")

    async def _write(self, sql: str, params: Params = ()) -> None:
        self._writing()
        await self._backend.execute(sql, params)

    async def _changed(self, sql: str, params: Params = ()) -> int:
        """Like `_write`, and how many rows the statement changed."""
        self._writing()
        return await self._backend.execute(sql, params)

    @property
    def _now(self) -> str:
        """SQL for the store's own clock in unix seconds: instances on hosts whose clocks differ agree on it."""
        return self._backend.now_sql()

    async def _returning(self, sql: str, params: Params = ()) -> Row | None:
        """A write whose RETURNING clause answers one row (or none)."""
        self._writing()
        rows = await self._backend.fetch(sql, params, writer=True)
        return rows[0] if rows else None

    def _json_text(self, column: str, key: str) -> str:
        """SQL for the text of `key` in the JSON object held (as TEXT) in `column`: the one thing the two
        dialects spell differently. `key` is ours, never input."""
        assert key.isidentifier()
        if self._backend.dialect == "postgres":
            return f"({column}::jsonb ->> '{key}')"
        return f"json_extract({column}, '$.{key}')"

    async def writable(self) -> bool:
        try:
            async with self.transaction():
                await self._backend.probe_write()
            return True
        except self._errors:
            return False
