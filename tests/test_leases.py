"""Leases (store/leases.py, leases.py): one holder per lease, taken over once it expires, and a fencing token that
refuses what a stale holder still tries to commit."""

import asyncio

import pytest

from testkit.fake import FakeChain
from watcherd.core.types import ChainBlock, ChainTx, Cursor, Received
from watcherd.leases import Leaseholder
from watcherd.ledger import Processor
from watcherd.store import LeaseLost, Store

SHORT = 0.2  # seconds a lease lasts in these tests


@pytest.fixture
async def store(store_location):
    store = await Store.open(store_location)
    yield store
    await store.close()


async def take(store, name, holder, seconds=SHORT):
    async with store.transaction():
        return await store.take_lease(name, holder, seconds)


async def renew(store, name, holder, token, seconds=SHORT):
    async with store.transaction():
        return await store.renew_lease(name, holder, token, seconds)


async def test_one_holder_until_it_expires_then_the_next_takes_it_with_a_new_token(store):
    assert await take(store, "chain:btc", "a") == 1
    assert await take(store, "chain:btc", "b") is None  # a holds it
    assert await renew(store, "chain:btc", "a", 1) is True
    assert await take(store, "outbox", "b") == 1  # leases are independent
    await asyncio.sleep(SHORT * 1.5)
    assert await take(store, "chain:btc", "b") == 2  # expired: b takes over
    assert await renew(store, "chain:btc", "a", 1) is False  # a learns it lost it
    assert await take(store, "chain:btc", "b") == 3  # b restarted under its own name: back at once, token moves
    assert [(r.name, r.holder, r.token) for r in await store.leases()] == [("chain:btc", "b", 3), ("outbox", "b", 1)]


async def test_a_stale_holder_cannot_commit(store):
    assert await take(store, "chain:btc", "a") == 1
    await asyncio.sleep(SHORT * 1.5)
    assert await take(store, "chain:btc", "b") == 2
    with pytest.raises(LeaseLost, match="taken over"):
        async with store.transaction():
            await store.ensure_chain("written-by-a")
            await store.fence("chain:btc", "a", 1)
    assert await store._one("SELECT 1 FROM chains WHERE name = 'written-by-a'") is None
    async with store.transaction():
        await store.fence("chain:btc", "b", 2)  # the holder's own transactions go through


async def test_a_stale_follower_block_is_refused_whole(store):
    """The ledger fences a chain's transactions with the chain's lease: a block a stalled ex-leader connects
    after the takeover records no payment, moves no cursor, and queues no event."""
    chain = FakeChain(confirmations=1)
    processor = Processor(store, {"fake": chain}, ["webhook"])
    await processor.start()
    processor.fences["chain:fake"] = ("a", await take(store, "chain:fake", "a"))
    await processor.set_cursor("fake", Cursor(100, "h100"))
    invoice = await processor.create_invoice("fake", 1_000)
    await asyncio.sleep(SHORT * 1.5)
    assert await take(store, "chain:fake", "b") == 2
    key = chain.derive(0)[1]
    with pytest.raises(LeaseLost):
        await processor.block_connected("fake", ChainBlock(101, "h101", "h100",
                                                           (ChainTx("t1", (Received(key, 0, 1_000),)),)))
    assert await store.cursor("fake") == Cursor(100, "h100") and processor.tips["fake"] == 100
    shown = await processor.invoice_json(invoice["id"])
    assert shown["status"] == "unpaid" and shown["payments"] == []
    assert [e["type"] for e in await store.events_for(invoice["id"])] == ["invoice.created"]


async def test_leaseholders_hand_over_when_one_stops_renewing(store):
    happened: list[tuple[str, str, int | None]] = []

    def holder(name):
        async def gained(lease, token):
            happened.append((name, lease, token))

        async def lost(lease):
            happened.append((name, lease, None))
        return Leaseholder(store, name, SHORT, gained, lost)

    a, b = holder("a"), holder("b")
    await a.tick(["chain:btc", "outbox"])
    await b.tick(["chain:btc", "outbox"])
    assert happened == [("a", "chain:btc", 1), ("a", "outbox", 1)] and not b.held
    assert a.holder("chain:btc") == b.holder("chain:btc") == "a"
    await asyncio.sleep(SHORT * 1.5)  # a stalls: no renewal
    await b.tick(["chain:btc", "outbox"])
    await a.tick(["chain:btc", "outbox"])
    assert happened[2:] == [("b", "chain:btc", 2), ("b", "outbox", 2), ("a", "chain:btc", None), ("a", "outbox", None)]
    assert b.held == {"chain:btc": 2, "outbox": 2} and a.held == {}
    await b.release_all()  # a clean stop: a need not wait for the expiry
    await a.tick(["chain:btc"])
    assert a.held == {"chain:btc": 3}


async def test_two_instances_judging_one_invoice_at_once_say_it_once(store_location):
    """Two instances on one store expire the same invoices at the same moment (an ex-holder of the outbox lease
    and its successor, say): each judges an invoice only after the other's judgement is committed (its row is
    locked on PostgreSQL; SQLite's transactions take turns), so each invoice expires once, with one event."""
    now = [1_700_000_000.0]
    stores = [await Store.open(store_location) for _ in range(2)]
    try:
        ledgers = [Processor(store, {"fake": FakeChain(confirmations=1)}, ["webhook"], clock=lambda: now[0])
                   for store in stores]
        for ledger in ledgers:
            await ledger.start()
        invoices = [await ledgers[0].create_invoice("fake", 1_000, expires_in=60) for _ in range(20)]
        now[0] += 61
        for _ in range(3):
            await asyncio.gather(*(ledger.expire_due() for ledger in ledgers))
        for invoice in invoices:
            types = [e["type"] for e in await stores[0].events_for(invoice["id"])]
            assert types == ["invoice.created", "invoice.expired"], types
    finally:
        for store in stores:
            await store.close()
