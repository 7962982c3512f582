"""What `Database` needs from a database: one writer connection with explicit transactions and savepoints, and
reads of the committed state. `sqlite.py` and `postgres.py` implement it; the query families never see either.

The families write one SQL text for both, with `?` placeholders (or `:name` with a dict): a backend that numbers
its placeholders translates them itself. Rows are whatever the driver hands out (`sqlite3.Row`,
`asyncpg.Record`): both answer `row["column"]`, `row[0]`, unpacking and `dict(row)`, which is all the families use.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

Params = Sequence[Any] | dict[str, Any]


class Row(Protocol):
    def __getitem__(self, key: Any, /) -> Any: ...
    def __iter__(self) -> Iterator[Any]: ...
    def __len__(self) -> int: ...
    def keys(self) -> Any: ...


class Backend(Protocol):
    dialect: str  # "sqlite" | "postgres": only for what no portable SQL can say (JSON fields)
    # what its operations raise when the database cannot do the work: a failed unit or commit is undone on these
    errors: tuple[type[Exception], ...]

    async def migrate(self) -> int:
        """Bring the schema to the version this code knows and return it; refuse a newer one (StoreError)."""
        ...

    async def schema_version(self) -> int: ...

    async def begin(self) -> None: ...
    async def commit(self) -> None: ...
    async def rollback(self) -> None:
        """Roll back the open transaction; nothing (no error) when none is open."""
        ...

    def in_transaction(self) -> bool: ...
    async def savepoint(self, name: str) -> None: ...
    async def rollback_to(self, name: str) -> None: ...
    async def release(self, name: str) -> None: ...

    def now_sql(self) -> str:
        """SQL for the database's clock, in unix seconds (a float): what leases expire by."""
        ...

    async def execute(self, sql: str, params: Params = ()) -> int:
        """A statement on the writer, inside the open transaction; how many rows it changed."""
        ...

    async def fetch(self, sql: str, params: Params = (), *, writer: bool) -> list[Row]:
        """All rows of a statement: on the writer (it sees its own transaction) or from the committed state."""
        ...

    async def probe_write(self) -> None:
        """A real, harmless write inside the open transaction: does the database take writes right now?"""
        ...

    async def close(self) -> None: ...
