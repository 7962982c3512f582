"""A chain never walks back deeper than its max_reorg_depth, and a node it refuses stops that chain alone, with
one CRITICAL line and a metric, undoing nothing (unit level, with the shared follower over testkit's in-memory
node; the real-node versions are in tests/test_bitcoin_e2e.py and tests/test_ethereum_e2e.py)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from test_config import EXAMPLE, MINIMAL, problems, write
from test_processor import events, open_core, tx

from testkit.fake import FakeNode, FakeNodeConfig
from watcherd import metrics
from watcherd.chains.follow import follow_forever
from watcherd.config import load
from watcherd.core.types import Cursor
from watcherd.exceptions import ChainRefused, NodeUnavailable, ReorgTooDeep


@pytest.fixture
async def core(store_location):
    processor, chain, clock = await open_core(store_location, confirmations=1)
    yield processor, chain, clock
    await processor.store.close()


def stopped_gauge(chain: str, reason: str) -> float:
    return metrics.CHAIN_STOPPED.labels(chain, reason)._value.get()


# --- max_reorg_depth ----------------------------------------------------------------------------------------


def test_max_reorg_depth_is_a_chain_key_with_a_default_per_kind(tmp_path):
    """Every kind has it: 100 by default for Bitcoin-family chains, an integer of at least 1 when given."""
    assert load(write(tmp_path, MINIMAL)).chains["btc"].max_reorg_depth == 100
    assert load(write(tmp_path, MINIMAL + "max_reorg_depth = 6\n")).chains["btc"].max_reorg_depth == 6
    for bad in ("0", "-1", "true", '"100"', "1.5"):
        found = problems(write(tmp_path, MINIMAL + f"max_reorg_depth = {bad}\n"))
        assert found == {"chains.btc.max_reorg_depth": "must be an integer ≥ 1"}, bad
    assert {c.max_reorg_depth for c in load(EXAMPLE).chains.values()} == {100}


async def test_a_reorg_deeper_than_max_reorg_depth_disconnects_nothing_and_stops_the_chain(core, caplog):
    """One block more than max_reorg_depth to undo: the payment stays paid, the cursor where it was, no event is
    written; the follower stays stopped (its task alive) with one CRITICAL line naming the depth, the chain not
    connected (so /readyz is not ready and nothing of it expires) and watcherd_chain_stopped at 1."""
    processor, chain, _ = core
    node = FakeNode(FakeNodeConfig(max_reorg_depth=3))
    sink = processor.sink("fake")
    invoice = await processor.create_invoice("fake", 1000)
    node.mine(tx("t1", chain.derive(0)[1], 1000))
    for _ in range(3):
        node.mine()
    await node.reconcile(sink)
    assert (await processor.invoice_json(invoice["id"]))["status"] == "paid"
    before = await events(processor, invoice["id"])
    reorgs = metrics.REORGS.labels("fake")._value.get()

    node.reorg(4)  # 101 (the payment) to 104 replaced: 4 blocks to undo, one more than allowed
    with pytest.raises(ReorgTooDeep, match=r"max_reorg_depth = 3 blocks below our block 104 h104"):
        await node.reconcile(sink)
    assert await processor.store.cursor("fake") == Cursor(104, "h104")
    shown = await processor.invoice_json(invoice["id"])
    assert shown["status"] == "paid" and shown["payments"][0]["block_hash"] == "h101"
    assert await events(processor, invoice["id"]) == before
    assert metrics.REORGS.labels("fake")._value.get() == reorgs

    with caplog.at_level(logging.INFO, logger="watcherd.chains.base"):
        task = asyncio.create_task(follow_forever(node, lambda: node.reconcile(sink)))
        await asyncio.sleep(0.1)
        assert not task.done(), "a stopped chain waits, it does not end its task (the watchdog would restart us)"
        assert node.stopped is not None and "max_reorg_depth = 3" in node.stopped
        assert not node.connected
        assert stopped_gauge("fake", "reorg_depth") == 1
        task.cancel()  # a reload that reconfigures the chain, or the daemon stopping
        with pytest.raises(asyncio.CancelledError):
            await task
    critical = [r.getMessage() for r in caplog.records if r.levelno == logging.CRITICAL]
    assert len(critical) == 1 and "this chain stops (the others go on)" in critical[0]
    assert "nothing was disconnected" in critical[0]
    assert stopped_gauge("fake", "reorg_depth") == 0
    assert await processor.store.cursor("fake") == Cursor(104, "h104")
    assert await events(processor, invoice["id"]) == before


async def test_a_reorg_as_deep_as_max_reorg_depth_is_followed(core):
    """Exactly max_reorg_depth blocks to undo is a reorg like any other: the payment's block goes, the
    payment comes back in the new branch, the invoice is paid again at the new block."""
    processor, chain, _ = core
    node = FakeNode(FakeNodeConfig(max_reorg_depth=3))
    sink = processor.sink("fake")
    invoice = await processor.create_invoice("fake", 1000)
    node.mine()
    paying = tx("t1", chain.derive(0)[1], 1000)
    node.mine(paying)
    node.mine()
    node.mine()
    await node.reconcile(sink)
    assert (await processor.invoice_json(invoice["id"]))["status"] == "paid"
    depths = metrics.REORG_DEPTH.labels("fake")._sum.get()

    new_branch = node.reorg(3, (), (paying,))  # 102 (the payment) to 104 replaced; it is mined again at 103'
    await node.reconcile(sink)
    assert await processor.store.cursor("fake") == Cursor(105, new_branch[-1].hash)
    shown = await processor.invoice_json(invoice["id"])
    assert shown["status"] == "paid" and shown["payments"][0]["block_hash"] == new_branch[1].hash
    assert [t for t, _ in await events(processor, invoice["id"])] == [
        "invoice.created", "invoice.paid", "invoice.processing", "invoice.paid"]
    assert metrics.REORG_DEPTH.labels("fake")._sum.get() - depths == 3
    assert node.stopped is None


async def test_a_node_error_during_the_walk_back_is_no_reorg(core):
    """The node fails while we look for the common ancestor: the error propagates (the chain backs off and
    retries), nothing is disconnected and nothing is counted as a reorg or a stop."""
    processor, chain, _ = core
    node = FakeNode(FakeNodeConfig(max_reorg_depth=3))
    sink = processor.sink("fake")
    invoice = await processor.create_invoice("fake", 1000)
    node.mine(tx("t1", chain.derive(0)[1], 1000))
    await node.reconcile(sink)
    node.reorg(1)
    node.failing = True
    with pytest.raises(NodeUnavailable):
        await node.reconcile(sink)
    assert await processor.store.cursor("fake") == Cursor(101, "h101")
    assert (await processor.invoice_json(invoice["id"]))["status"] == "paid" and node.stopped is None


# --- a refused node ----------------------------------------------------------------------------------------


async def test_a_node_of_another_network_stops_only_its_chain(caplog):
    """The refusal is the operator's to fix, but it stops this chain only: the follower waits (the other chains,
    the API and delivery go on), says why once, and shows why (for /readyz)."""

    class Refused:
        name = "wrongnet"
        connected = True
        stopped = None

        def __init__(self) -> None:
            self._retry = asyncio.Event()
            self.progressed = False

    follower = Refused()
    sessions = 0

    async def session() -> None:
        nonlocal sessions
        sessions += 1
        raise ChainRefused("chains.wrongnet: the node serves chain id 5, the config says chain_id = 1")

    with caplog.at_level(logging.WARNING, logger="watcherd.chains.base"):
        task = asyncio.create_task(follow_forever(follower, session))  # type: ignore[arg-type]
        await asyncio.sleep(0.1)
        assert not task.done() and sessions == 1
        assert follower.stopped == "chains.wrongnet: the node serves chain id 5, the config says chain_id = 1"
        assert not follower.connected and stopped_gauge("wrongnet", "network") == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert [r.levelno for r in caplog.records] == [logging.CRITICAL]
