"""Group commit (store/db.py `Database.transaction`): units of work that queue up while one runs share its
database transaction, each in its own savepoint; each returns only once that transaction is committed."""

import asyncio
import sqlite3

import pytest

from watcherd.exceptions import StoreError
from watcherd.store import Store


@pytest.fixture
async def store(tmp_path):
    store = await Store.open(tmp_path / "w.sqlite3")
    statements: list[str] = []
    await store._db._execute(store._db._conn.set_trace_callback, statements.append)
    store.statements = statements  # type: ignore[attr-defined]
    yield store
    await store.close()


async def add_chain(store: Store, name: str, fail: bool = False, seen: list[str] | None = None) -> None:
    async with store.transaction():
        await store._write("INSERT INTO chains (name) VALUES (?)", (name,))
        await asyncio.sleep(0)  # let the others queue up behind this one
        if fail:
            raise ValueError(f"{name} changed its mind")
    if seen is not None:  # returned: committed, so any reader sees it
        seen.append(name if await store._one("SELECT 1 FROM chains WHERE name = ?", (name,)) else f"{name}?")


async def chains(store: Store) -> list[str]:
    return sorted(r[0] for r in await store._all("SELECT name FROM chains"))


async def test_units_queued_together_commit_once_and_a_failing_one_takes_back_only_itself(store):
    seen: list[str] = []
    results = await asyncio.gather(*(add_chain(store, f"c{i}", fail=i == 3, seen=seen) for i in range(8)),
                                   return_exceptions=True)
    assert [type(r) for r in results] == [type(None)] * 3 + [ValueError] + [type(None)] * 4
    assert await chains(store) == ["c0", "c1", "c2", "c4", "c5", "c6", "c7"]
    assert sorted(seen) == ["c0", "c1", "c2", "c4", "c5", "c6", "c7"], "a unit returned before its commit"
    assert store.statements.count("BEGIN IMMEDIATE") == 1 and store.statements.count("COMMIT") == 1
    assert store.statements.count("ROLLBACK TO unit") == 1


async def test_a_failing_first_unit_rolls_back_alone_and_the_queue_goes_on(store):
    results = await asyncio.gather(add_chain(store, "first", fail=True), add_chain(store, "second"),
                                   return_exceptions=True)
    assert isinstance(results[0], ValueError) and results[1] is None
    assert await chains(store) == ["second"]


async def test_max_batch_1_is_one_transaction_per_unit(store):
    store.max_batch = 1
    await asyncio.gather(*(add_chain(store, f"c{i}") for i in range(5)))
    assert await chains(store) == [f"c{i}" for i in range(5)]
    assert store.statements.count("BEGIN IMMEDIATE") == 5 and "SAVEPOINT unit" not in store.statements


async def test_a_failed_commit_fails_every_unit_of_the_batch_and_nothing_is_kept(store, monkeypatch):
    execute = store._db.execute

    def failing_commit(sql, *args):
        if sql == "COMMIT":
            raise sqlite3.OperationalError("database or disk is full")
        return execute(sql, *args)

    monkeypatch.setattr(store._db, "execute", failing_commit)
    results = await asyncio.gather(*(add_chain(store, f"c{i}") for i in range(4)), return_exceptions=True)
    assert all(isinstance(r, sqlite3.OperationalError) for r in results), results
    monkeypatch.setattr(store._db, "execute", execute)
    assert await chains(store) == []
    await add_chain(store, "after")  # the connection is usable again: no transaction left open
    assert await chains(store) == ["after"]


async def test_a_unit_whose_transaction_the_database_ended_fails_with_the_batch(store):
    """SQLite rolls the whole transaction back by itself on some errors (a full disk): a later unit failing
    that way must not let the earlier units of its batch believe they were committed."""

    async def breaks_everything() -> None:
        async with store.transaction():
            await store._write("INSERT INTO chains (name) VALUES (?)", ("broken",))
            await store._db.execute("ROLLBACK")  # as SQLite does after SQLITE_FULL
            raise sqlite3.OperationalError("database or disk is full")

    results = await asyncio.gather(add_chain(store, "c0"), breaks_everything(), return_exceptions=True)
    assert isinstance(results[0], StoreError) and isinstance(results[1], sqlite3.OperationalError), results
    assert await chains(store) == []


async def test_a_unit_cancelled_while_queued_does_not_leave_the_batch_uncommitted(store):
    """A finished unit leaves the commit to the one queued behind it; if that one is cancelled before it runs
    (a shutdown cancels every task at once), the batch is still committed and the first unit returns."""
    inside = asyncio.Event()
    go_on = asyncio.Event()

    async def first() -> None:
        async with store.transaction():
            await store._write("INSERT INTO chains (name) VALUES ('first')")
            inside.set()
            await go_on.wait()

    a = asyncio.create_task(first())
    await inside.wait()
    b = asyncio.create_task(add_chain(store, "queued"))
    await asyncio.sleep(0)  # b waits for the lock
    go_on.set()
    await asyncio.sleep(0)  # a's unit ends, hands the lock (and the commit) to b
    b.cancel()
    await asyncio.wait_for(a, 2)
    assert await chains(store) == ["first"]
    with pytest.raises(asyncio.CancelledError):
        await b
