"""A chain follows only the network its config names, and never walks back deeper than its max_reorg_depth:
either refusal stops that chain alone, with one CRITICAL line and a metric, and undoes nothing (unit level, with
the shared follower over testkit's in-memory node and recorded node answers; the real-node versions are in
tests/test_bitcoin_e2e.py, tests/test_monero_e2e.py and tests/test_ethereum_e2e.py)."""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal
from typing import Any

import pytest
from harness import account_tpub
from test_config import EXAMPLE, MINIMAL, ZPUB, problems, write
from test_processor import events, open_core, tx

from testkit.fake import FakeNode, FakeNodeConfig
from watcherd import metrics
from watcherd.chains.bitcoin.adapter import BitcoinAdapter
from watcherd.chains.bitcoin.address import network
from watcherd.chains.bitcoin.config import BitcoinChainConfig
from watcherd.chains.follow import follow_forever
from watcherd.chains.monero.adapter import MoneroAdapter
from watcherd.chains.monero.config import MoneroChainConfig, MoneroNetwork
from watcherd.chains.rpc import RpcError
from watcherd.config import load
from watcherd.core.types import Cursor
from watcherd.exceptions import ChainRefused, NodeUnavailable, ReorgTooDeep

# monerod 0.18 --regtest --offline, get_info as it answered (the fields the check reads, and a few around them)
REGTEST_GET_INFO = {"height": 1, "mainnet": False, "nettype": "fakechain", "offline": True, "stagenet": False,
                    "status": "OK", "testnet": False, "top_block_hash": "418015bb9ae982a1975da7d79277c2705727a56894"
                    "ba0fb246adaabb1f4632e3", "version": "0.18.0.0-unknown"}


@pytest.fixture
async def core(store_location):
    processor, chain, clock = await open_core(store_location, confirmations=1)
    yield processor, chain, clock
    await processor.store.close()


def stopped_gauge(chain: str, reason: str) -> float:
    return metrics.CHAIN_STOPPED.labels(chain, reason)._value.get()


# --- max_reorg_depth ----------------------------------------------------------------------------------------


def test_max_reorg_depth_is_a_chain_key_with_a_default_per_kind(tmp_path, example_config):
    """Every kind has it: 100 by default for Bitcoin-family chains, an integer of at least 1 when given."""
    assert load(write(tmp_path, MINIMAL)).chains["btc"].max_reorg_depth == 100
    assert load(write(tmp_path, MINIMAL + "max_reorg_depth = 6\n")).chains["btc"].max_reorg_depth == 6
    for bad in ("0", "-1", "true", '"100"', "1.5"):
        found = problems(write(tmp_path, MINIMAL + f"max_reorg_depth = {bad}\n"))
        assert found == {"chains.btc.max_reorg_depth": "must be an integer ≥ 1"}, bad
    assert {c.max_reorg_depth for c in load(example_config).chains.values()} == {100}


def test_a_stopped_chain_pages():
    """The alert the README promises on watcherd_chain_stopped (promtool validity and the metric's existence:
    test_operator's alert rules test)."""
    rules = (EXAMPLE.parent / "prometheus-alerts.yml").read_text()
    block = rules.split("- alert: WatcherdChainStopped", 1)[1].split("- alert:", 1)[0]
    assert "expr: watcherd_chain_stopped == 1" in block and "severity: page" in block


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


# --- the node's network -------------------------------------------------------------------------------------


async def test_the_network_is_checked_per_connection_and_when_the_node_moves(core):
    """Checked on the first reconcile of a connection and whenever the node's best block is not our cursor (a
    node swapped between two polls shows there), not on every idle poll; a node now serving another network
    is refused before anything of it is connected."""
    processor, chain, _ = core
    node = FakeNode(FakeNodeConfig())
    sink = processor.sink("fake")
    await node.reconcile(sink)
    await node.reconcile(sink)
    assert node.network_checks == 1  # connected, then idle at our cursor
    node.mine()
    await node.reconcile(sink)
    assert node.network_checks == 2
    invoice = await processor.create_invoice("fake", 1000)
    node.serves = "othernet"  # restarted on another network between two polls, with a payment of its own
    node.mine(tx("t-other", chain.derive(0)[1], 1000))
    with pytest.raises(ChainRefused, match="the node serves othernet"):
        await node.reconcile(sink)
    assert await processor.store.cursor("fake") == Cursor(101, "h101")
    assert (await processor.invoice_json(invoice["id"]))["status"] == "unpaid"


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


class RecordedRpc:
    """Answers a node gave (method -> answer, or (method, first param) -> answer); asked anything else, fails."""

    def __init__(self, answers: dict[Any, Any]):
        self.answers = answers
        self.asked: list[tuple[Any, ...]] = []

    async def call(self, method: str, *params: Any, **named: Any) -> Any:
        self.asked.append((method, *params))
        answer = self.answers[(method, params[0]) if params else method]
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def close(self) -> None:
        pass


def bitcoin_adapter(coin: str, network_name: str, answers: dict[Any, Any]) -> BitcoinAdapter:
    adapter = BitcoinAdapter(BitcoinChainConfig(
        name="btc", coin=coin, network=network(coin, network_name), asset="BTC", rpc_url="http://127.0.0.1:18443",
        rpc_user="u", rpc_password="p", rpc_cookie_file=None, zmq_rawtx=None, zmq_hashblock=None,
        poll_interval_seconds=1.0, xpub=ZPUB if network_name == "mainnet" else account_tpub(84), address_type="p2wpkh",
        confirmations=1, underpaid_tolerance_percent=Decimal(0), invoice_expiry_seconds=900, start_height=None))
    adapter._rpc = RecordedRpc(answers)  # type: ignore[assignment]
    return adapter


BTC_GENESIS = "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f"
LTC_REGTEST_GENESIS = "530827f38f93b43ed12af0b3ad25a288dc02ed74d6d7857862df51fc56c416f9"
BCH_478559 = "000000000000000000651ef99cb9fcbe0dadde1d424bd9f15ff20136191a5eec"
BTC_478559 = "00000000000000000019f112ec0a9982926f1258cdcc558dd7c3b7e5dc7fa148"
OUT_OF_RANGE = RpcError("getblockhash", -8, "Block height out of range")


@pytest.mark.parametrize(("coin", "network_name", "answers", "served"), [
    ("bitcoin", "regtest", {("getblockhash", 0): LTC_REGTEST_GENESIS},
     f"litecoin regtest (genesis block {LTC_REGTEST_GENESIS})"),
    ("litecoin", "mainnet", {("getblockhash", 0): BTC_GENESIS}, f"bitcoin mainnet (genesis block {BTC_GENESIS})"),
    ("bitcoin", "testnet", {("getblockhash", 0): "00" * 32},
     f"a chain watcherd does not know (genesis block {'00' * 32})"),
    ("bitcoin", "mainnet", {("getblockhash", 0): BTC_GENESIS, ("getblockhash", 478_559): BCH_478559},
     f"a fork of Bitcoin (Bitcoin Cash, Bitcoin SV: block 478559 is {BCH_478559})"),
])
async def test_a_bitcoin_family_node_of_another_network_is_refused(coin, network_name, answers, served):
    """Its genesis block names what the node serves; on Bitcoin mainnet, the block where Bitcoin Cash left
    (Bitcoin SV came from it) tells those apart, though they share Bitcoin's genesis."""
    adapter = bitcoin_adapter(coin, network_name, answers)
    with pytest.raises(ChainRefused) as refused:
        await adapter.check_network()
    assert str(refused.value) == (
        f"chains.btc: the node at http://127.0.0.1:18443 serves {served}, the config says coin = {coin!r}, "
        f"network = {network_name!r}; refusing to follow it (wrong node, or wrong config?)")


@pytest.mark.parametrize(("network_name", "answers"), [
    ("mainnet", {("getblockhash", 0): BTC_GENESIS, ("getblockhash", 478_559): BTC_478559}),
    ("mainnet", {("getblockhash", 0): BTC_GENESIS, ("getblockhash", 478_559): OUT_OF_RANGE}),  # still syncing
    ("testnet4", {("getblockhash", 0): "00000000da84f2bafbbc53dee25a72ae507ff4914b867c565be350b0da8bf043"}),
])
async def test_a_bitcoin_node_of_the_configured_network_is_followed(network_name, answers):
    """The same check passes the right node, including a mainnet node not yet past the fork block (checked
    again at its next block); it asks exactly what it needs."""
    adapter = bitcoin_adapter("bitcoin", network_name, answers)
    await adapter.check_network()
    assert adapter._rpc.asked == list(answers)  # type: ignore[attr-defined]


def monero_adapter(network_name: str, get_info: dict[str, Any]) -> MoneroAdapter:
    from testkit.monero_node import new_keys, primary_address

    spend, view = new_keys()
    net = MoneroNetwork("mainnet", regtest=True) if network_name == "regtest" else MoneroNetwork(network_name)
    adapter = MoneroAdapter(MoneroChainConfig(
        name="xmr", network=net, rpc_url="http://127.0.0.1:18081", rpc_user=None, rpc_password=None, zmq_pub=None,
        primary_address=primary_address(spend, view, net.name), view_key=view))
    adapter._rpc = RecordedRpc({"get_info": get_info})  # type: ignore[assignment]
    return adapter


@pytest.mark.parametrize(("network_name", "nettype", "served"), [
    ("mainnet", "fakechain", "regtest (nettype fakechain)"),  # regtest shares mainnet's genesis and addresses
    ("mainnet", "stagenet", "stagenet"),
    ("regtest", "mainnet", "mainnet"),
    ("stagenet", "<script>", "nettype '<script>'"),
])
async def test_a_monerod_of_another_network_is_refused(network_name, nettype, served):
    """monerod's get_info nettype against the config's network (regtest is "fakechain")."""
    adapter = monero_adapter(network_name, {**REGTEST_GET_INFO, "nettype": nettype})
    with pytest.raises(ChainRefused) as refused:
        await adapter.check_network()
    assert str(refused.value) == (
        f"chains.xmr: the node at http://127.0.0.1:18081 serves Monero {served}, the config says "
        f"network = {network_name!r}; refusing to follow it (wrong node, or wrong config?)")


async def test_a_monerod_of_the_configured_network_is_followed():
    """The recorded regtest answer passes a regtest config."""
    await monero_adapter("regtest", REGTEST_GET_INFO).check_network()
