"""Monero adapter: monerod's ZMQ publications as wake-ups, its RPC as the truth, outputs scanned with the
view key only (no spend key, no monero-wallet-rpc).

Same shape as the Bitcoin adapter: a durable cursor (height + hash), catch-up block by block with a walk
back over reorgs, a mempool diff, and a periodic safety-net reconcile. monerod's ZMQ feed has no sequence
numbers, so a (re)connection of the socket is what triggers a full reconcile.

Watch key of an invoice: its subaddress public spend key D. An output pays D when P - Hs(8aR ‖ i)·G == D.
An output only counts when its decrypted amount opens its Pedersen commitment, its unlock time is zero,
and its one-time key P has not paid us before (the "burning bug": a second output with the same P is unspendable;
the core keeps P with the payment and refuses the second one).

The node's network is the `nettype` of its get_info (mainnet, stagenet, testnet; "fakechain" for --regtest,
whose genesis block is mainnet's): a node of another one is refused (ChainRefused).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from watcherd import metrics
from watcherd.chains.follow import follow_forever
from watcherd.chains.monero.crypto import MoneroKeyError
from watcherd.chains.monero.rpc import TOO_BIG_HEIGHT, MoneroRpc
from watcherd.chains.monero.scan import ParsedTx, Scanner, parse_tx_json
from watcherd.chains.rpc import RpcError
from watcherd.chains.zmqfeed import ZmqFollower
from watcherd.core.chain import ChainSink
from watcherd.core.money import to_decimal_string
from watcherd.core.types import ChainBlock, ChainTx, Cursor, Received
from watcherd.exceptions import ChainRefused, NodeProtocolError

if TYPE_CHECKING:
    from watcherd.chains.monero.config import MoneroChainConfig

log = logging.getLogger("watcherd.chains.monero")

ZMQ_TOPICS = (b"json-minimal-txpool_add", b"json-minimal-chain_main")

# What a transaction that monerod's JSON describes badly (or in a format we do not scan) raises in decode_tx.
UNDECODABLE = (MoneroKeyError, KeyError, TypeError, ValueError, IndexError, AttributeError)


def decode_tx(txid: str, as_json: str) -> ParsedTx:
    tx = json.loads(as_json)
    if not isinstance(tx, dict):
        raise ValueError(f"not a JSON object: {as_json[:40]!r}")
    return parse_tx_json(txid, tx)


class MoneroAdapter(ZmqFollower):
    decimals = 12
    node_label = "monerod RPC"
    config: MoneroChainConfig

    def __init__(self, config: MoneroChainConfig):
        super().__init__(config)
        self._deriver = config.address_deriver()
        self._scanner = Scanner(config.view_key)
        self._rpc = MoneroRpc(config.rpc_url, config.rpc_user, config.rpc_password,
                              give_up_after=config.node_down_after_seconds)

    def derive(self, index: int) -> tuple[str, bytes]:
        return self._deriver.derive(index)

    async def address(self, index: int) -> tuple[str, bytes]:
        return self._deriver.derive(index)

    def payment_uri(self, address: str, amount: int, asset: str) -> str:
        """The monero: URI scheme of the reference wallets (tx_amount in XMR)."""
        return f"monero:{address}?tx_amount={to_decimal_string(amount, self.decimals)}"

    # --- matching ------------------------------------------------------------------------------------

    def _chain_tx(self, tx: ParsedTx) -> ChainTx | None:
        received = []
        for out in ([] if tx.coinbase else self._scanner.scan(tx, self.watchlist.keys)):
            where = f"{tx.txid}:{out.index}"
            if not out.commitment_ok:
                metrics.MALFORMED.labels(self.name, "commitment").inc()
                log.warning("ignored output %s: its amount does not open its commitment (forged amount)", where,
                            extra={"chain": self.name, "txid": tx.txid})
                continue
            if tx.unlock_time != 0:
                metrics.MALFORMED.labels(self.name, "unlock_time").inc()
                log.warning("ignored output %s: unlock_time %d (funds locked; pays no invoice)", where,
                            tx.unlock_time, extra={"chain": self.name, "txid": tx.txid})
                continue
            received.append(Received(out.spend_key, out.index, out.amount, output_key=out.key))
        if not received and not self.watchlist.conflicts(tx.txid, tx.key_images):
            return None
        return ChainTx(tx.txid, tuple(received), tx.key_images)

    def _decode_and_match(self, txid: str, as_json: str, where: str) -> ChainTx | None:
        """One transaction: None when it does not concern us, or when it cannot be decoded (logged and counted,
        then skipped: a transaction monerod accepted but we cannot read must not hold its block up forever)."""
        try:
            return self._chain_tx(decode_tx(txid, as_json))
        except UNDECODABLE as exc:
            metrics.MALFORMED.labels(self.name, "rpc").inc()
            log.warning("%s tx %s undecodable, skipped: %s: %s", where, txid, type(exc).__name__, exc,
                        extra={"chain": self.name, "txid": txid})
            return None

    def _scan_all(self, decoded: dict[str, str], txids: list[str], where: str = "block") -> dict[str, ChainTx | None]:
        """Decode and match `txids` in order (runs in a worker thread): txid -> its match or None."""
        return {txid: self._decode_and_match(txid, decoded[txid], where) for txid in txids}

    # --- the supervisor-facing loop -----------------------------------------------------------------

    async def run(self, sink: ChainSink) -> None:
        zmq_pub = self.config.zmq_pub
        if zmq_pub:
            # no sequence numbers on monerod's feed: whatever it published while we were away is found over RPC
            await follow_forever(self, lambda: self._follow_zmq_feed(sink, {zmq_pub}, ZMQ_TOPICS))
        else:
            await follow_forever(self, lambda: self._follow_polling(sink))

    async def close(self) -> None:
        await self._rpc.close()

    def pool_every_check(self) -> bool:
        # Always diff the pool (one cheap call): monerod publishes txpool_add only for transactions it relays
        # publicly, so one still in its Dandelion++ stem phase (or on an --offline node) arrives unannounced.
        return True

    def _malformed_zmq(self, why: str) -> None:
        metrics.MALFORMED.labels(self.name, "zmq").inc()
        log.warning("ignored a malformed ZMQ message: %s", why, extra={"chain": self.name})
        self._pool_stale = True
        self._resync.set()

    async def on_message(self, sink: ChainSink, frames: list[bytes]) -> None:
        received_at = time.monotonic()
        message = b"".join(frames)
        topic, sep, body = message.partition(b":")
        if not sep or topic not in ZMQ_TOPICS:
            self._malformed_zmq(f"topic {topic[:40]!r}")
            return
        if topic == b"json-minimal-chain_main":
            self._resync.set()
            return
        try:
            txids = [str(entry["id"]) for entry in json.loads(body)]
            if not all(len(t) == 64 and bytes.fromhex(t) for t in txids):
                raise ValueError("not a tx hash")
        except (ValueError, TypeError, KeyError) as exc:
            self._malformed_zmq(f"txpool_add body: {exc}")
            return
        await self.seen_in_pool(sink, txids)
        metrics.DETECTION_LATENCY.labels(self.name).observe(time.monotonic() - received_at)

    # --- the node reads the shared follower needs ---------------------------------------------------

    async def check_network(self) -> None:
        nettype = (await self._rpc.call("get_info")).get("nettype")
        if not isinstance(nettype, str):
            raise NodeProtocolError(f"get_info: no nettype in the answer (monerod older than 0.12?): {nettype!r}")
        network = self.config.network
        if nettype != network.nettype:
            served = {"mainnet": "mainnet", "stagenet": "stagenet", "testnet": "testnet",
                      "fakechain": "regtest (nettype fakechain)"}.get(nettype, f"nettype {nettype[:40]!r}")
            raise ChainRefused(
                f"chains.{self.name}: the node at {self.describe_node()} serves Monero {served}, the config says "
                f"network = {network.configured!r}; refusing to follow it (wrong node, or wrong config?)"
            )

    async def _last_header(self) -> dict[str, Any]:
        header: dict[str, Any] = (await self._rpc.call("get_last_block_header"))["block_header"]
        return header

    async def best_hash(self) -> str:
        return str((await self._last_header())["hash"])

    async def tip_height(self) -> int:
        return int((await self._last_header())["height"])

    async def hash_at(self, height: int) -> str | None:
        try:
            header = (await self._rpc.call("get_block_header_by_height", height=height))["block_header"]
        except RpcError as exc:
            if exc.code == TOO_BIG_HEIGHT:
                return None  # above the node's tip (it moved down since we asked)
            raise
        return str(header["hash"])

    async def parent_hash(self, block: Cursor) -> str:
        # below what we ever connected (our first cursor, or a node that lost its last blocks in a crash):
        # nothing of ours to undo there, follow the node's own chain
        parent = await self.hash_at(block.height - 1)
        if parent is None:
            raise NodeProtocolError(f"block {block.height - 1}: header unavailable")
        return parent

    async def next_block(self, sink: ChainSink, cursor: Cursor) -> ChainBlock | None:
        height = cursor.height + 1
        block = await self._rpc.call("get_block", height=height)
        header = block.get("block_header") or {}
        block_hash, prev_hash = str(header.get("hash")), str(header.get("prev_hash"))
        if int(header.get("height", -1)) != height:
            raise NodeProtocolError(f"get_block {height}: node sent height {header.get('height')}")
        if prev_hash != cursor.hash:
            return None
        txids = [str(t) for t in block.get("tx_hashes") or []]
        decoded = await self._rpc.transactions(txids)
        missing = [t for t in txids if t not in decoded]
        if missing:
            raise NodeProtocolError(f"block {height}: node does not know its txs {missing[:3]}")
        matched = await asyncio.to_thread(self._scan_all, decoded, txids)
        metrics.TXS.labels(self.name, "block").inc(len(txids))
        txs = tuple(tx for tx in matched.values() if tx is not None)
        timestamp = header.get("timestamp")
        return ChainBlock(height, block_hash, prev_hash, txs, timestamp if isinstance(timestamp, int) else None)

    async def pool_txids(self) -> set[str]:
        answer = await self._rpc.other("get_transaction_pool_hashes")
        return {str(t) for t in answer.get("tx_hashes") or []}

    async def pool_txs(self, txids: list[str]) -> dict[str, ChainTx | None]:
        decoded = await self._rpc.transactions(txids)
        known = [t for t in txids if t in decoded]
        metrics.TXS.labels(self.name, "mempool").inc(len(known))
        return await asyncio.to_thread(self._scan_all, decoded, known, "pool")
