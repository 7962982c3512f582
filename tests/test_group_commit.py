"""Group commit (store/db.py `Database.transaction`): units of work that queue up while one runs share its
database transaction, each in its own savepoint; each returns only once that transaction is committed. On both
backends."""

import asyncio
import sqlite3
import threading
import time
import urllib.error
from types import SimpleNamespace

import pytest
from harness import Daemon, account_tpub

from testkit.configs import bitcoin_table
from watcherd.exceptions import StoreError, StoreUnavailable
from watcherd.store import Store


@pytest.fixture
async def store(store_location, monkeypatch):
    store = await Store.open(store_location)
    calls: list[str] = []  # what the transaction logic asked of the backend
    for name in ("begin", "commit", "rollback", "savepoint", "rollback_to", "release"):
        method = getattr(store._backend, name)

        def recording(*args, _name=name, _method=method):
            calls.append(_name)
            return _method(*args)

        monkeypatch.setattr(store._backend, name, recording)
    store.calls = calls  # type: ignore[attr-defined]
    yield store
    monkeypatch.undo()
    await store.close()


def store_failure(store: Store) -> Exception:
    """What the backend raises when the database cannot commit: a full disk, a connection cut."""
    if store.dialect == "postgres":
        return StoreUnavailable("store postgresql://...: ConnectionResetError")
    return sqlite3.OperationalError("database or disk is full")


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
    assert store.calls.count("begin") == 1 and store.calls.count("commit") == 1
    assert store.calls.count("rollback_to") == 1


async def test_a_failing_first_unit_rolls_back_alone_and_the_queue_goes_on(store):
    results = await asyncio.gather(add_chain(store, "first", fail=True), add_chain(store, "second"),
                                   return_exceptions=True)
    assert isinstance(results[0], ValueError) and results[1] is None
    assert await chains(store) == ["second"]


async def test_max_batch_1_is_one_transaction_per_unit(store):
    store.max_batch = 1
    await asyncio.gather(*(add_chain(store, f"c{i}") for i in range(5)))
    assert await chains(store) == [f"c{i}" for i in range(5)]
    assert store.calls.count("begin") == 5 and "savepoint" not in store.calls


async def test_a_failed_commit_fails_every_unit_of_the_batch_and_nothing_is_kept(store, monkeypatch):
    commit = store._backend.commit
    failure = store_failure(store)

    async def failing_commit():
        raise failure

    monkeypatch.setattr(store._backend, "commit", failing_commit)
    results = await asyncio.gather(*(add_chain(store, f"c{i}") for i in range(4)), return_exceptions=True)
    assert all(r is failure for r in results), results
    monkeypatch.setattr(store._backend, "commit", commit)
    assert await chains(store) == []
    await add_chain(store, "after")  # the connection is usable again: no transaction left open
    assert await chains(store) == ["after"]


async def test_a_unit_whose_transaction_the_database_ended_fails_with_the_batch(store):
    """SQLite rolls the whole transaction back by itself on some errors (a full disk), a PostgreSQL transaction
    ends with its connection: a later unit failing that way must not let the earlier units of its batch believe
    they were committed."""

    async def breaks_everything() -> None:
        async with store.transaction():
            await store._write("INSERT INTO chains (name) VALUES (?)", ("broken",))
            await store._backend.rollback()  # as SQLite does after SQLITE_FULL
            raise store_failure(store)

    results = await asyncio.gather(add_chain(store, "c0"), breaks_everything(), return_exceptions=True)
    assert isinstance(results[0], StoreError) and isinstance(results[1], sqlite3.OperationalError | StoreError)
    assert await chains(store) == []


async def test_units_cancelled_anywhere_never_leave_the_store_stuck_or_a_returned_unit_uncommitted(store):
    """Shutdown and reloads cancel tasks at any await: while queued for the lock (the batch was left open for
    them), in their BEGIN, mid-write, or during the commit. Whatever the point, the next units still run and
    commit (nothing waits for ever on a batch nobody commits, no lock stays held), and every unit that returned
    is committed."""
    import random

    returned: set[str] = set()

    async def unit(name: str) -> None:
        async with store.transaction():
            await store._write("INSERT INTO chains (name) VALUES (?)", (name,))
            await store._write("UPDATE chains SET cursor_height = 1 WHERE name = ?", (name,))
        returned.add(name)

    rng = random.Random(12)
    for round_ in range(60):
        tasks = [asyncio.create_task(unit(f"r{round_}u{i}")) for i in range(5)]
        await asyncio.sleep(rng.random() * 0.003)
        tasks[rng.randrange(5)].cancel()
        done, stuck = await asyncio.wait(tasks, timeout=10)
        assert not stuck, f"round {round_}: units wait for ever"
        assert returned <= set(await chains(store)), "a unit returned but its write is not committed"
    assert await store.writable()


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


def test_every_invoice_answered_201_survives_a_kill_9_and_no_address_is_handed_out_twice(store_location, tmp_path):
    """The durability promise of group commit, on the real daemon: 16 clients create invoices as fast as they can,
    the daemon is killed (SIGKILL) in the middle; after the restart every invoice that got its 201 is there, unpaid,
    and the invoices created then get addresses none of the earlier ones had."""
    node = SimpleNamespace(kind="bsv", rpc_url="http://127.0.0.1:9", rpc_user="u", rpc_password="p",
                           zmq_endpoint=None)  # never there: creating an invoice needs no node
    chains = bitcoin_table("btc", node, xpub=account_tpub(84), address_type="p2wpkh", confirmations=1, zmq=False)
    key = "url" if isinstance(store_location, str) else "path"
    daemon = Daemon(tmp_path / "d", chains, store=f'{key} = "{store_location}"').start()
    answered: list[dict] = []
    killed = threading.Event()

    def client() -> None:
        while not killed.is_set():
            try:
                answered.append(daemon.create_invoice("btc", "0.001"))
            except (OSError, urllib.error.URLError):  # the kill cut this request: not acknowledged
                return

    try:
        clients = [threading.Thread(target=client) for _ in range(16)]
        for thread in clients:
            thread.start()
        deadline = time.monotonic() + 30
        while len(answered) < 300 and time.monotonic() < deadline:
            time.sleep(0.01)
        daemon.kill()
        killed.set()
        for thread in clients:
            thread.join(15)
        assert len(answered) >= 300, daemon.log_tail()
        daemon.start()
        after = [daemon.create_invoice("btc", "0.001") for _ in range(20)]
        def status(invoice_id: str) -> str:
            try:
                return daemon.invoice(invoice_id)["status"]
            except urllib.error.HTTPError as exc:
                return f"HTTP {exc.code}"

        lost = {i["id"]: status(i["id"]) for i in answered}
        assert {i: s for i, s in lost.items() if s != "unpaid"} == {}, f"{len(answered)} acknowledged"
        addresses = [m["address"] for i in answered + after for m in i["payment_methods"]]
        assert len(addresses) == len(answered) + 20 and len(set(addresses)) == len(addresses)
    finally:
        killed.set()
        daemon.stop()
