"""The PostgreSQL backend (asyncpg): one writer connection for `Database.transaction()`, and a pool of
connections for everything else, each its own session, so reads see only committed rows (READ COMMITTED).

asyncpg's and the socket's errors are translated here into `StoreUnavailable` (a `StoreError`), so the daemon's
"store down" handling (retry, /readyz not ready) is the same on both backends. A writer connection that died (the
server restarted, failed over) is replaced at the next transaction; the pool replaces its own. The password never
appears in an error: the URL is shown with it masked (`redact`)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl as ssl_module
from collections.abc import AsyncIterator, Sequence
from functools import lru_cache
from typing import Any, Self
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from watcherd.exceptions import StoreError, StoreUnavailable
from watcherd.store.backend import Params, Row
from watcherd.store.schema import SCHEMA
from watcherd.store.schema_postgres import POSTGRES_SCHEMA

# the server cannot be reached, dropped the connection, is shutting down or starting, or cancelled the statement
# (timeout_seconds): what the daemon treats as "the store is down for now"
_UNAVAILABLE: tuple[type[Exception], ...] = (
    OSError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError, asyncpg.exceptions.OperatorInterventionError)
# held while migrating: two instances starting together must not both apply a migration
_MIGRATION_LOCK = 0x77617463  # "watc"
# a translated SQL text per family query: a handful of distinct texts, so the cache never evicts in practice
_TOKEN = re.compile(r"'(?:[^']|'')*'|::|\?|:([A-Za-z_]\w*)")


def redact(url: str) -> str:
    """The URL with any password in it masked: what logs and errors show."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{netloc[-1]}"))


@lru_cache(maxsize=1024)
def translate(sql: str) -> tuple[str, tuple[str, ...]]:
    """The families' `?` (or `:name`) placeholders as PostgreSQL's `$1, $2 ...`; with `:name`, the names in
    the order of their numbers. String literals and `::` casts are left alone."""
    count = 0
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        nonlocal count
        token = match.group(0)
        if token == "?":
            count += 1
            return f"${count}"
        name = match.group(1)
        if name is None:  # a literal or a cast
            return token
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    return _TOKEN.sub(number, sql), tuple(names)


def _arguments(sql: str, params: Params) -> tuple[str, list[Any]]:
    text, names = translate(sql)
    if isinstance(params, dict):
        return text, [params[name] for name in names]
    return text, list(params)


def _ssl(mode: str, root_cert: str | None) -> str | ssl_module.SSLContext:
    if mode == "verify-full":
        return ssl_module.create_default_context(cafile=root_cert)  # checks the chain and the host name
    if mode == "require" and root_cert is not None:
        context = ssl_module.create_default_context(cafile=root_cert)
        context.check_hostname = False  # libpq's verify-ca: the chain, not the name
        return context
    return mode


class PostgresBackend:
    dialect = "postgres"
    errors: tuple[type[Exception], ...] = (StoreError,)

    def __init__(self, url: str, connect: dict[str, Any], pool: asyncpg.Pool):
        self._url = url
        self._connect = connect
        self._pool = pool
        self._conn: asyncpg.Connection | None = None

    @classmethod
    async def open(cls, url: str, *, migrate: bool = True, password: str | None = None, ssl: str = "prefer",
                   ssl_root_cert: str | None = None, pool_size: int = 10, timeout_seconds: float = 10.0) -> Self:
        """`pool_size` connections for reads, plus the writer; `timeout_seconds` bounds each connect and each
        statement; the schema brought up to date first (`migrate`)."""
        connect: dict[str, Any] = {"dsn": url, "password": password, "ssl": _ssl(ssl, ssl_root_cert),
                                   "timeout": timeout_seconds, "command_timeout": timeout_seconds}
        try:
            # min_size 0: no background reconnect loop logging tracebacks while the server is away
            pool = await asyncpg.create_pool(min_size=0, max_size=pool_size, **connect)
        except (*_UNAVAILABLE, asyncpg.PostgresError) as exc:
            raise StoreUnavailable(f"cannot open store {redact(url)}: {_describe(exc)}") from exc
        backend = cls(url, connect, pool)
        try:
            await backend._writer()
            if migrate:
                await backend.migrate()
        except BaseException:
            await backend.close()
            raise
        return backend

    async def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close(timeout=5)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._pool.close(), 5)

    @contextlib.asynccontextmanager
    async def _translated(self) -> AsyncIterator[None]:
        try:
            yield
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"store {redact(self._url)}: {_describe(exc)}") from exc
        except asyncpg.PostgresError as exc:  # the server refused this statement (a constraint, say)
            raise StoreError(f"store {redact(self._url)}: {_describe(exc)}") from exc

    async def _writer(self) -> asyncpg.Connection:
        """The writer connection, opened anew if the last one died with its server."""
        if self._conn is None or self._conn.is_closed():
            self._conn = None
            async with self._translated():
                self._conn = await asyncpg.connect(**self._connect)
        return self._conn

    async def schema_version(self) -> int:
        async with self._translated():
            conn = await self._writer()
            if await conn.fetchval("SELECT to_regclass('schema_version')") is None:
                return 0
            return int(await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version"))

    async def migrate(self) -> int:
        latest = POSTGRES_SCHEMA[-1][0]
        assert latest == len(SCHEMA), "a migration was added to one backend only"
        async with self._translated():
            conn = await self._writer()
            async with conn.transaction():
                await conn.execute(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
                await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
                version = int(await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version"))
                if version > latest:
                    raise StoreError(
                        f"the store's schema is version {version}, newer than this watcherd knows ({latest}): "
                        "a newer watcherd wrote it; run that version (or restore a backup)")
                for number, script in POSTGRES_SCHEMA:
                    if number > version:
                        await conn.execute(script)
                        version = number
                await conn.execute("DELETE FROM schema_version")
                await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version)
        return latest

    async def begin(self) -> None:
        conn = await self._writer()
        async with self._translated():
            await conn.execute("BEGIN")

    async def commit(self) -> None:
        async with self._translated():
            await (await self._writer()).execute("COMMIT")

    async def rollback(self) -> None:
        conn = self._conn
        if conn is None or conn.is_closed() or not conn.is_in_transaction():
            return  # a dead connection took its transaction with it
        with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            await conn.execute("ROLLBACK")

    def in_transaction(self) -> bool:
        return self._conn is not None and not self._conn.is_closed() and self._conn.is_in_transaction()

    async def savepoint(self, name: str) -> None:
        await self.execute(f"SAVEPOINT {name}")

    async def rollback_to(self, name: str) -> None:
        await self.execute(f"ROLLBACK TO SAVEPOINT {name}")

    async def release(self, name: str) -> None:
        """Nothing, and one round trip per unit of a batch saved: a savepoint left in place costs nothing until the
        transaction ends (COMMIT keeps its work, ROLLBACK undoes it), the next SAVEPOINT of the same name nests in
        it, and ROLLBACK TO goes to the newest of that name: the unit's own."""

    def now_sql(self) -> str:
        return "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)"

    async def execute(self, sql: str, params: Params = ()) -> int:
        text, args = _arguments(sql, params)
        async with self._translated():
            status: str = await (await self._writer()).execute(text, *args)
        count = status.rsplit(" ", 1)[-1]  # "UPDATE 3", "INSERT 0 1", "SAVEPOINT"
        return int(count) if count.isdigit() else 0

    async def fetch(self, sql: str, params: Params = (), *, writer: bool) -> list[Row]:
        text, args = _arguments(sql, params)
        async with self._translated():
            if writer:
                rows: Sequence[Row] = await (await self._writer()).fetch(text, *args)
            else:
                async with self._pool.acquire() as conn:
                    rows = await conn.fetch(text, *args)
        return list(rows)

    async def probe_write(self) -> None:
        await self.execute("UPDATE schema_version SET version = version")


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
