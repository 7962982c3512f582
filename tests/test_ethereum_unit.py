"""The Ethereum adapter's pure parts: EIP-55, EIP-681, block/log/pending matching, finality, the contracts'
committed bytecode. No node needed (the compiler check needs node + the pinned npm solc)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from decimal import Decimal
from pathlib import Path

import pytest

from testkit.process import nodes_dir
from watcherd.chains.ethereum.adapter import TOKEN_VOUT_BASE, EthereumAdapter
from watcherd.chains.ethereum.address import TRANSFER_TOPIC, parse_address, payment_uri, to_checksum
from watcherd.chains.ethereum.config import EthereumChainConfig, EthToken

ROOT = Path(__file__).resolve().parent.parent
XPUB = "xpub6Bk2fe7f3b5M8UALtNmyLzmiB28KVyhXpN6DM3F2LbkCVJMi1p8FiwCFbTCtGKvameqXB89DapR8N9zEwfUwGKMaXhZh4rfGHPsch3tf3hM"
TOKEN = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
DAI = "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512"
WORD = "0x" + "00" * 12  # an address topic's zero padding


def adapter() -> EthereumAdapter:
    config = EthereumChainConfig(
        name="eth", ws_url="ws://127.0.0.1:1", chain_id=1, xpub=XPUB, confirmations=12, finality=None,
        tokens=(EthToken("USDC", TOKEN, 6), EthToken("DAI", DAI, 18)), asset="ETH",
        underpaid_tolerance_percent=Decimal(0),
        invoice_expiry_seconds=900, start_height=None,
    )
    return EthereumAdapter(config, rpc=object())  # type: ignore[arg-type]


@pytest.mark.parametrize("address", [  # the EIP-55 specification's own test vectors
    "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed", "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
    "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB", "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
])
def test_eip55_vectors(address):
    assert to_checksum(parse_address(address)) == address
    with pytest.raises(ValueError, match="checksum"):
        parse_address(address[:-1] + (address[-1].swapcase() if address[-1].isalpha() else "F"))


def test_derivation_is_the_wallets_m_44_60_0_0_i():
    """Same addresses as a BIP44 wallet from the seed (MetaMask, Ledger Live's default account 0)."""
    from bip_utils import Bip44, Bip44Changes, Bip44Coins

    seed = bytes(range(32))
    account = Bip44.FromSeed(seed, Bip44Coins.ETHEREUM).Purpose().Coin().Account(0)
    config = adapter().config
    a = EthereumAdapter(EthereumChainConfig(**{**config.__dict__, "xpub": account.PublicKey().ToExtended()}),
                        rpc=object())  # type: ignore[arg-type]
    for i in (0, 1, 17):
        expected = account.Change(Bip44Changes.CHAIN_EXT).AddressIndex(i).PublicKey().ToAddress()
        assert a.derive(i) == (expected, bytes.fromhex(expected[2:]))


def test_payment_uris_are_eip681_integers():
    to = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
    assert payment_uri(to, 2_014 * 10**15, 1) == f"ethereum:{to}@1?value=2014000000000000000"
    assert adapter().payment_uri(to, 12_500_000, "USDC") == (
        f"ethereum:{TOKEN}@1/transfer?address={to}&uint256=12500000")


def _tx(txid: str, to: str | None, value: int, data: str = "0x", sender: str = "0x" + "aa" * 20, nonce: int = 7):
    return {"hash": txid, "from": sender, "to": to, "value": hex(value), "nonce": hex(nonce), "input": data}


def test_scan_block_matches_native_tokens_and_conflicts():
    """Native value -> vout 0; the n-th transfer (token, recipient) of a configured token in a tx -> vout 1+n;
    unknown tokens, other events and removed logs are ignored; a tx re-using a pending payment's (sender, nonce)
    replaces it."""
    a = adapter()
    address, key = a.derive(0)
    other, other_key = a.derive(1)
    a.watchlist.keys.update({key, other_key})
    a.watchlist.spends[bytes.fromhex("bb" * 20) + (3).to_bytes(8, "big")] = "0xpending"
    word = "0x" + "00" * 12
    log = {"address": TOKEN.lower(), "topics": [TRANSFER_TOPIC, word + "cc" * 20, word + other[2:].lower()],
           "data": hex(5 * 10**6), "transactionHash": "0x02", "logIndex": "0x4"}
    block = {"number": "0x10", "hash": "0xb1", "parentHash": "0xb0", "transactions": [
        _tx("0x01", address.lower(), 10**18),
        _tx("0x02", TOKEN.lower(), 0),
        _tx("0x03", "0x" + "dd" * 20, 1),
        _tx("0x04", None, 0),  # contract creation
        _tx("0x05", "0x" + "dd" * 20, 1, sender="0x" + "bb" * 20, nonce=3),
    ]}
    logs = [
        # an earlier transfer in the same tx, to someone else: it makes the watched one the tx's second
        {**log, "logIndex": "0x2", "data": hex(1), "topics": [TRANSFER_TOPIC, word + "cc" * 20, word + "dd" * 20]},
        log,
        {**log, "address": "0x" + "ee" * 20, "logIndex": "0x5"},  # not a configured token
        {**log, "topics": log["topics"][:1], "logIndex": "0x6"},  # not a Transfer(address,address,uint256)
        {**log, "removed": True, "logIndex": "0x7"},
    ]
    scanned = a.scan_block(block, logs)
    assert (scanned.height, scanned.hash, scanned.prev_hash) == (16, "0xb1", "0xb0")
    by_id = {tx.txid: tx for tx in scanned.txs}
    assert set(by_id) == {"0x01", "0x02", "0x05"}
    assert [(r.key, r.vout, r.amount, r.asset) for r in by_id["0x01"].received] == [(key, 0, 10**18, None)]
    assert [(r.key, r.vout, r.amount, r.asset) for r in by_id["0x02"].received] == [
        (other_key, TOKEN_VOUT_BASE + 1, 5 * 10**6, "USDC")]
    assert by_id["0x05"].received == () and a.watchlist.conflicts("0x05", by_id["0x05"].spent) == {"0xpending"}


def test_pending_direct_transfer_has_the_identity_it_gets_when_mined():
    a = adapter()
    address, key = a.derive(0)
    a.watchlist.keys.add(key)
    data = "0xa9059cbb" + "00" * 12 + address[2:].lower() + hex(7 * 10**6)[2:].rjust(64, "0")
    pending = a._pending_tx(_tx("0x09", TOKEN.lower(), 0, data))
    assert pending is not None
    assert [(r.key, r.vout, r.amount, r.asset) for r in pending.received] == [(key, TOKEN_VOUT_BASE, 7 * 10**6,
                                                                              "USDC")]
    assert a._pending_tx(_tx("0x0a", "0x" + "dd" * 20, 10**18)) is None
    assert a._pending_tx(_tx("0x0b", address, 0)) is None  # a zero-value call is no payment


def _transfer_data(recipient: str, amount: int) -> str:
    return "0xa9059cbb" + "00" * 12 + recipient[2:].lower() + hex(amount)[2:].rjust(64, "0")


def _transfer_log(txid: str, index: int, recipient: str, amount: int, token: str = TOKEN,
                  sender: str = "0x" + "aa" * 20) -> dict:
    topics = [TRANSFER_TOPIC, WORD + sender[2:].lower(), WORD + recipient[2:].lower()]
    return {"address": token.lower(), "topics": topics, "data": hex(amount), "transactionHash": txid,
            "logIndex": hex(index)}


def _block(*txs: dict) -> dict:
    return {"number": "0x10", "hash": "0xb1", "parentHash": "0xb0", "transactions": list(txs)}


def test_one_transfer_is_one_payment_with_its_pending_identity_and_the_amount_that_arrived():
    """A fee-on-transfer token's direct transfer() logs its fee first and the recipient's share twice: the
    mined payment is one, with the id its pending sighting had (so the two are one payment), and the amount
    of the recipient's first log (what arrived, not the calldata's); a zero log takes no id."""
    a = adapter()
    address, key = a.derive(0)
    other, other_key = a.derive(1)
    a.watchlist.keys.update({key, other_key})
    call = _tx("0x01", TOKEN.lower(), 0, _transfer_data(address, 10 * 10**6))
    pending = a._pending_tx(call)
    assert pending is not None and [(r.vout, r.amount) for r in pending.received] == [(TOKEN_VOUT_BASE, 10 * 10**6)]
    logs = [
        _transfer_log("0x01", 0, other, 0),  # a zero-value "transfer" to another watched address
        _transfer_log("0x01", 1, "0x" + "fe" * 20, 10**5),  # the fee, to the token's collector
        _transfer_log("0x01", 2, address, 99 * 10**5),
        _transfer_log("0x01", 3, address, 99 * 10**5),  # the same transfer logged again
        _transfer_log("0x01", 4, other, 2 * 10**6),  # a second transfer in the same tx, to another invoice
    ]
    (mined,) = a.scan_block(_block(call), logs).txs
    assert [(r.key, r.vout, r.amount, r.asset) for r in mined.received] == [
        (key, TOKEN_VOUT_BASE, 99 * 10**5, "USDC"), (other_key, TOKEN_VOUT_BASE + 2, 2 * 10**6, "USDC")]


def test_a_mined_transaction_carrying_a_pending_payment_is_reported_even_when_it_pays_nothing():
    """A pending transfer() that reverts when mined leaves no Transfer log: the block still reports its
    transaction (by the pending payment's sender and nonce), with nothing received, and says its transactions
    are the truth about what they pay, so the ledger takes the pending payment back."""
    a = adapter()
    address, key = a.derive(0)
    a.watchlist.keys.add(key)
    call = _tx("0x01", TOKEN.lower(), 0, _transfer_data(address, 10 * 10**6))
    pending = a._pending_tx(call)
    assert pending is not None
    a.watchlist.spends[pending.spent[0]] = "0x01"  # what the ledger does with a pending payment
    unrelated = _tx("0x02", TOKEN.lower(), 0, _transfer_data("0x" + "dd" * 20, 1), nonce=8)
    scanned = a.scan_block(_block(call, unrelated), [])
    assert scanned.authoritative
    assert [(tx.txid, tx.received, tx.spent) for tx in scanned.txs] == [("0x01", (), pending.spent)]
    a.watchlist.spends.clear()
    assert a.scan_block(_block(call), []).txs == ()  # not ours: nothing to report


def test_zero_value_transfers_are_no_payments():
    """transfer(invoice, 0) of the invoice's token or of another configured token, pending or mined, and a
    zero-value ETH transaction, pay nothing: nothing is reported (so no wrong_asset either)."""
    a = adapter()
    address, key = a.derive(0)
    a.watchlist.keys.add(key)
    txs = [_tx("0x01", TOKEN.lower(), 0, _transfer_data(address, 0)),
           _tx("0x02", DAI.lower(), 0, _transfer_data(address, 0), nonce=8),
           _tx("0x03", address, 0, nonce=9)]
    assert [a._pending_tx(tx) for tx in txs] == [None, None, None]
    logs = [_transfer_log("0x01", 0, address, 0), _transfer_log("0x02", 1, address, 0, token=DAI)]
    assert a.scan_block(_block(*txs), logs).txs == ()


def test_wei_amounts_beyond_64_bits_survive():
    a = adapter()
    address, key = a.derive(0)
    a.watchlist.keys.add(key)
    huge = 2**64 * 10**6 + 1
    block = {"number": "0x1", "hash": "0xb1", "parentHash": "0xb0", "transactions": [_tx("0x01", address, huge)]}
    assert a.scan_block(block, []).txs[0].received[0].amount == huge


def test_committed_bytecode_matches_the_solidity_sources():
    """contracts/artifacts.json is what the pinned solc makes of contracts/*.sol, byte for byte."""
    solc = nodes_dir() / "npm" / "node_modules" / "solc"
    if not solc.exists():
        pytest.skip("npm solc missing: run scripts/install-deps")
    done = subprocess.run(["node", str(ROOT / "contracts" / "build.js"), "--check"], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "NODE_PATH": str(solc.parent)}, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0.8.26" in done.stdout


class BatchLimitedNode:
    """A websocket JSON-RPC server that answers eth_getBalance batches of at most `limit` calls (the balance
    is the call's first parameter as a number) and refuses larger ones like geth: one id-less error."""

    def __init__(self, limit: int):
        self.limit, self.batch_sizes = limit, []

    async def __aenter__(self) -> str:
        from aiohttp import web

        async def handle(request):
            ws = web.WebSocketResponse(max_msg_size=0)
            await ws.prepare(request)
            async for message in ws:
                calls = json.loads(message.data)
                self.batch_sizes.append(len(calls))
                if len(calls) > self.limit:
                    await ws.send_str(json.dumps([{"jsonrpc": "2.0", "id": None,
                                                   "error": {"code": -32600, "message": "batch too large"}}]))
                else:
                    await ws.send_str(json.dumps([{"jsonrpc": "2.0", "id": c["id"], "result": hex(c["params"][0])}
                                                  for c in reversed(calls)]))
            return ws

        app = web.Application()
        app.router.add_get("/", handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return f"ws://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/"

    async def __aexit__(self, *exc) -> None:
        await self.runner.cleanup()


async def test_large_batches_are_split_below_the_nodes_limit():
    """1,234 balance checks (thousands of open invoices) come back complete and in order from a node that
    takes batches of at most 1,000, as geth does by default."""
    from watcherd.chains.ethereum.rpc import MAX_BATCH, WsRpc

    node = BatchLimitedNode(limit=1000)
    async with node as url:
        rpc = WsRpc(url, timeout=5)
        await rpc.connect()
        try:
            answers = await rpc.batch("eth_getBalance", [(n,) for n in range(1234)])
        finally:
            await rpc.close()
    assert answers == [hex(n) for n in range(1234)]
    assert max(node.batch_sizes) == MAX_BATCH and sum(node.batch_sizes) == 1234


async def test_a_batch_the_node_refuses_fails_at_once_with_its_reason():
    """A node with a smaller limit answers with one id-less error: the call fails with the node's words, not
    after the 5 s timeout."""
    from watcherd.chains.ethereum.rpc import WsRpc
    from watcherd.exceptions import NodeProtocolError

    async with BatchLimitedNode(limit=10) as url:
        rpc = WsRpc(url, timeout=5)
        await rpc.connect()
        try:
            started = time.monotonic()
            with pytest.raises(NodeProtocolError, match="batch too large"):
                await rpc.batch("eth_getBalance", [(n,) for n in range(50)])
            assert time.monotonic() - started < 2
            assert await rpc.batch("eth_getBalance", [(7,)]) == ["0x7"]  # the connection still works
        finally:
            await rpc.close()


class BatchRecorder:
    """eth_getTransactionByHash answers from a dict, one batch per call recorded."""

    def __init__(self, txs):
        self.txs, self.batches, self.calls = txs, [], 0

    async def batch(self, method, param_lists):
        assert method == "eth_getTransactionByHash"
        self.batches.append([p[0] for p in param_lists])
        return [self.txs.get(p[0]) for p in param_lists]


class SeenRecorder:
    def __init__(self):
        self.seen = []

    async def tx_seen(self, tx):
        self.seen.append(tx)


async def test_pending_hashes_that_arrive_together_cost_one_call():
    """A burst of newPendingTransactions hashes is fetched in one batched call, not one call per hash; mined or
    unknown ones are skipped, the one paying us is reported."""
    a = adapter()
    address, key = a.derive(0)
    a.watchlist.keys.add(key)
    a._subscriptions = {"sub-p": "pending"}
    rpc = BatchRecorder({"0xa1": _tx("0xa1", address, 10**18), "0xa2": {**_tx("0xa2", address, 1), "blockHash": "0x1"}})
    a._rpc = rpc
    sink = SeenRecorder()
    await a._on_notifications(sink, [("sub-p", "0xa1"), ("sub-p", "0xa2"), ("sub-p", "0xa3")])
    assert rpc.batches == [["0xa1", "0xa2", "0xa3"]]
    assert [tx.txid for tx in sink.seen] == ["0xa1"]


def test_a_flood_of_pending_notifications_is_bounded_but_blocks_never_drop():
    """Pending transactions beyond the queue's bound are dropped (each is found again in its block) and counted;
    block notifications are always queued."""
    from watcherd.chains.ethereum.rpc import MAX_QUEUED, WsRpc

    rpc = WsRpc("ws://127.0.0.1:1")
    rpc.droppable = {"sub-p"}
    for i in range(MAX_QUEUED + 5):
        rpc._dispatch({"method": "eth_subscription", "params": {"subscription": "sub-p", "result": f"0x{i:x}"}})
    rpc._dispatch({"method": "eth_subscription", "params": {"subscription": "sub-h", "result": {"number": "0x1"}}})
    assert rpc.dropped == 5
    assert rpc._notifications.qsize() == MAX_QUEUED + 1
