"""A busy or broken node, a restart after downtime: never a wrong status, never a stall (unit level; the
real-node versions are in tests/test_faults.py)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from test_processor import open_core

from watcherd import metrics
from watcherd.chains import follow
from watcherd.chains.follow import follow_forever
from watcherd.chains.rpc import NodeBusy, RpcError, retrying
from watcherd.core.types import ChainBlock, ChainTx, Cursor, Received
from watcherd.exceptions import NodeProtocolError, NodeUnavailable
from watcherd.ledger import Processor
from watcherd.store import KEEP_BLOCKS


@pytest.fixture
async def core(store_location):
    processor, chain, clock = await open_core(store_location, confirmations=1)
    yield processor, chain, clock
    await processor.store.close()


async def test_payment_found_on_catch_up_is_dated_by_its_block(core):
    """Downtime: the invoice expired while we were away, but the block that paid it was mined before the expiry.
    Found on catch-up, the payment counts as seen at the block's time: paid, not paid_late."""
    processor, chain, clock = core
    invoice = await processor.create_invoice("fake", 1000, expires_in=900)
    mined_at = int(clock.now) + 600  # ten minutes in, before the expiry
    clock.now += 3600  # we come back an hour later
    paying = ChainTx("t1", (Received(chain.derive(0)[1], 0, 1000),))
    await processor.block_connected("fake", ChainBlock(101, "h101", "h100", (paying,), time=mined_at))
    shown = await processor.invoice_json(invoice["id"])
    assert (shown["status"], shown["exception"]) == ("paid", None)
    assert shown["payments"][0]["first_seen_at"] == "2023-11-14T22:23:20Z"  # mined_at, not our clock


async def test_block_time_never_later_than_when_we_saw_it(core):
    """A miner's clock ahead of ours cannot push a payment past the expiry: seen_at is min(block time, now)."""
    processor, chain, clock = core
    invoice = await processor.create_invoice("fake", 1000, expires_in=900)
    clock.now += 300
    paying = ChainTx("t1", (Received(chain.derive(0)[1], 0, 1000),))
    await processor.block_connected("fake", ChainBlock(101, "h101", "h100", (paying,), time=int(clock.now) + 7200))
    shown = await processor.invoice_json(invoice["id"])
    assert (shown["status"], shown["exception"]) == ("paid", None)
    assert shown["payments"][0]["first_seen_at"] == "2023-11-14T22:18:20Z"  # our clock, 300 s in


async def test_invoices_of_a_chain_not_caught_up_do_not_expire(core):
    """While the node is unreachable or we are behind its tip, an unpaid invoice past its expiry stays unpaid:
    the payment may be in a block we have not read yet. Once caught up, it expires."""
    processor, chain, clock = core
    invoice = await processor.create_invoice("fake", 1000, expires_in=60)
    clock.now += 120
    chain.connected = False
    assert await processor.expire_due() == 0
    chain.connected, chain.node_tip = True, 105  # answering again, but we are at 100
    assert await processor.expire_due() == 0
    assert (await processor.invoice_json(invoice["id"]))["status"] == "unpaid"
    chain.node_tip = 100
    assert await processor.expire_due() == 1
    assert (await processor.invoice_json(invoice["id"]))["status"] == "expired"


async def test_transient_errors_are_retried_in_place():
    """503, warming up (-28), a reset connection: the same call again after a short pause, not a reconnect."""
    failures = [NodeBusy("HTTP 503"), RpcError("getblock", -28, "Loading block index"), NodeUnavailable("reset")]

    async def call() -> str:
        if failures:
            raise failures.pop(0)
        return "block"

    assert await retrying(call, "getblock", give_up_after=5) == "block"
    assert failures == []


async def test_non_transient_errors_and_long_outages_propagate():
    """An RPC error that is an answer (-8, -5...) is not retried; a node busy for longer than the limit counts as
    down (the error reaches the follower, which marks the node down)."""
    calls = 0

    async def refused() -> None:
        nonlocal calls
        calls += 1
        raise RpcError("getblockhash", -8, "Block height out of range")

    with pytest.raises(RpcError):
        await retrying(refused, "getblockhash", give_up_after=5)
    assert calls == 1

    async def always_busy() -> None:
        raise NodeBusy("HTTP 503")

    started = asyncio.get_running_loop().time()
    with pytest.raises(NodeBusy):
        await retrying(always_busy, "getblock", give_up_after=0.3)
    assert asyncio.get_running_loop().time() - started < 1.0


class Follower:
    name = "broken"
    connected = True

    def __init__(self) -> None:
        self._retry = asyncio.Event()
        self.progressed = False


@pytest.mark.parametrize("failure", [KeyError("hash"), ValueError("bad hex"), NodeProtocolError("garbage")])
async def test_a_broken_chain_backs_off_alone(monkeypatch, caplog, failure):
    """A node answering garbage (or a bug meeting an answer no rule foresaw) stops only its own chain: the
    follower backs off and tries again, it never ends the daemon; the outage is logged once, not per retry."""
    monkeypatch.setattr(follow, "backoff", lambda: iter([0.01] * 100))
    sessions = 0

    async def session() -> None:
        nonlocal sessions
        sessions += 1
        raise failure

    before = metrics.CHAIN_FAILURES.labels("broken", "node" if isinstance(failure, NodeProtocolError)
                                           else "unexpected")._value.get()
    with caplog.at_level(logging.DEBUG, logger="watcherd.chains.base"):
        task = asyncio.create_task(follow_forever(Follower(), session))  # type: ignore[arg-type]
        await asyncio.sleep(0.2)
        assert not task.done(), "the follower must keep going"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert sessions >= 5
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    kind = "node" if isinstance(failure, NodeProtocolError) else "unexpected"
    assert metrics.CHAIN_FAILURES.labels("broken", kind)._value.get() - before == sessions


async def test_a_chain_failing_on_the_store_goes_on_as_soon_as_the_store_is_back():
    """The backoff (up to 30 s) is cut short when the store probe sees it writable again."""
    sessions = 0

    async def session() -> None:
        nonlocal sessions
        sessions += 1
        if sessions == 1:
            raise __import__("sqlite3").OperationalError("database or disk is full")
        await asyncio.Event().wait()

    follower = Follower()
    task = asyncio.create_task(follow_forever(follower, session))  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    assert sessions == 1  # backing off (the first delay is longer than this)
    follower._retry.set()  # what Follower.retry_now does
    await asyncio.sleep(0.05)
    assert sessions == 2
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_block_whose_commit_fails_moves_nothing(core, monkeypatch, caplog):
    """The disk fills up mid-block: the transaction rolls back, and the in-memory tip moves back with it, so
    confirmations are not counted against a block that was never committed; nor is its payment logged."""
    caplog.set_level(logging.INFO, logger="watcherd.processor")
    processor, chain, clock = core
    invoice = await processor.create_invoice("fake", 1000)
    paying = ChainTx("t1", (Received(chain.derive(0)[1], 0, 1000),))
    original = processor.store.invoices_gaining_confirmation

    async def disk_full(*args, **kwargs):
        raise __import__("sqlite3").OperationalError("database or disk is full")

    monkeypatch.setattr(processor.store, "invoices_gaining_confirmation", disk_full)  # after the tip moved
    with pytest.raises(Exception, match="disk is full"):
        await processor.block_connected("fake", ChainBlock(101, "h101", "h100", (paying,)))
    assert processor.tips["fake"] == 100
    assert await processor.store.cursor("fake") == Cursor(100, "h100")
    assert (await processor.invoice_json(invoice["id"]))["status"] == "unpaid"
    assert not [r for r in caplog.records if "payment t1" in r.getMessage() or "-> paid" in r.getMessage()]
    monkeypatch.setattr(processor.store, "invoices_gaining_confirmation", original)
    await processor.block_connected("fake", ChainBlock(101, "h101", "h100", (paying,)))
    assert (await processor.invoice_json(invoice["id"]))["status"] == "paid"
    logged = [r.getMessage() for r in caplog.records]
    assert len([m for m in logged if "payment t1" in m]) == 1 and len([m for m in logged if "-> paid" in m]) == 1


async def test_pruning_forgets_settled_history_and_buried_spends_only(core):
    """After the retention, a paid invoice's delivered events go (the invoice and its payment stay, rendered the
    same); an undelivered event, an open invoice's events, and the spends of a payment a reorg could still take
    back stay."""
    from test_processor import block, tx

    processor, chain, clock = core
    paid = await processor.create_invoice("fake", 1000)
    await processor.create_invoice("fake", 1000)  # paid by t2, still pending
    open_ = await processor.create_invoice("fake", 1000)
    paid_key, pending_key = chain.derive(0)[1], chain.derive(1)[1]
    await processor.block_connected("fake", block(101, [tx("t1", paid_key, 1000, spent=(b"o1",))]))
    await processor.tx_seen("fake", tx("t2", pending_key, 1000, spent=(b"o2",)))
    assert (await processor.invoice_json(paid["id"]))["status"] == "paid"
    before = await processor.invoice_json(paid["id"])
    seqs = {r[0]: r[1] for r in await processor.store._all("SELECT seq, invoice_id FROM events")}
    last_paid_event = max(s for s, i in seqs.items() if i == paid["id"])
    async with processor.store.transaction():
        for seq in seqs:
            if seq != last_paid_event:  # the invoice.paid webhook has not gone out yet
                await processor.store.mark_delivered("webhook", seq, int(clock.now))

    assert await processor.prune(retention_seconds=86400) == (0, 0)  # nothing is old enough yet
    clock.now += 2 * 86400
    events, spends = await processor.prune(retention_seconds=86400)
    assert (events, spends) == (len([s for s, i in seqs.items() if i == paid["id"]]) - 1, 0)
    assert [e["type"] for e in await processor.store.events_for(paid["id"])] == ["invoice.paid"]
    assert len(await processor.store.events_for(open_["id"])) == 1
    assert (await processor.invoice_json(paid["id"]))["payments"] == before["payments"]

    async with processor.store.transaction():
        await processor.store.mark_delivered("webhook", last_paid_event, int(clock.now))
    assert await processor.prune(retention_seconds=86400) == (1, 0)
    assert await processor.prune(retention_seconds=None) == (0, 0)

    # t1's outpoint can replace it only while a reorg could take block 101 back
    assert set(chain.watchlist.spends) == {b"o1", b"o2"}
    processor.tips["fake"] = 101 + KEEP_BLOCKS - 1
    assert await processor.prune(retention_seconds=None) == (0, 0)
    processor.tips["fake"] = 101 + KEEP_BLOCKS
    assert await processor.prune(retention_seconds=None) == (0, 1)
    assert set(chain.watchlist.spends) == {b"o2"}
    assert await processor.store.spends("fake") == [(b"o2", "t2")]


async def test_an_invoice_of_a_chain_removed_from_the_config_keeps_its_decimals(core, tmp_path):
    """The chain left the config (or a token its list): its invoices still show 0.00001, not 1000."""
    processor, chain, clock = core
    invoice = await processor.create_invoice("fake", 1000)
    assert invoice["amount"] == "0.00001"
    later = Processor(processor.store, {}, ["webhook"], clock=clock)
    await later.start()
    shown = await later.invoice_json(invoice["id"])
    assert (shown["amount"], shown["amount_received"]) == ("0.00001", "0")


async def test_a_session_that_committed_blocks_before_failing_backs_off_from_scratch(monkeypatch):
    """A websocket cut every few blocks must not grow the delay to 30 s: the node still delivers."""
    handed: list[int] = []

    def backoff():
        handed.append(0)
        return iter([0.01] * 100)

    monkeypatch.setattr(follow, "backoff", backoff)
    follower = Follower()

    async def session() -> None:
        follower.progressed = True  # as connect_next does after a committed block
        raise NodeUnavailable("websocket closed")

    task = asyncio.create_task(follow_forever(follower, session))  # type: ignore[arg-type]
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(handed) > 3  # a fresh backoff after each session that progressed
