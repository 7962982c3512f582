"""Bitcoin-family adapter (Bitcoin Core, Litecoin Core and compatible nodes): ZMQ wake-ups, RPC truth.

The ZMQ feed only says "something happened"; the durable cursor and RPC are the source of truth. On start,
on every (re)connection of the feed and on every sequence gap, the adapter catches up block by block from the
cursor (walking back over a reorg first) and re-reads the mempool. Without ZMQ, the same catch-up runs on a
short polling interval. Transactions are decoded here and matched in memory; no RPC per transaction.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from .. import metrics
from ..exceptions import DecodeError, NodeProtocolError
from ..money import to_decimal_string
from ..store import Cursor
from .base import AdapterBase, ChainBlock, ChainTx, Received, follow_forever, walk_back
from .btc_address import AddressDeriver
from .btc_codec import ScannedTx, scan_block, scan_tx
from .rpc import JsonRpc, RpcError
from .zmqfeed import ZmqFollowing

if TYPE_CHECKING:
    from ..config import BitcoinChainConfig
    from ..processor import Processor

log = logging.getLogger(__name__)

MEMPOOL_BATCH = 500
NULL_OUTPOINT = bytes(32) + b"\xff\xff\xff\xff"  # what every coinbase "spends": never a conflict


class BitcoinAdapter(AdapterBase, ZmqFollowing):
    decimals = 8

    def __init__(self, config: BitcoinChainConfig):
        super().__init__(config)
        self._deriver = AddressDeriver(config.xpub, config.address_type, config.network)
        self._rpc = JsonRpc(config.rpc_url, config.rpc_user, config.rpc_password, config.rpc_cookie_file)
        self._mempool_seen: set[str] = set()
        self._mempool_stale = True  # read the mempool (what we have not seen of it) at the next reconcile
        self._sequences: dict[bytes, int] = {}
        self._init_feed()

    def derive(self, index: int) -> tuple[str, bytes]:
        return self._deriver.derive(index)

    def payment_uri(self, address: str, amount: int, asset: str) -> str:
        """BIP21 (`litecoin:` for Litecoin, same form)."""
        return f"{self.config.network.uri_scheme}:{address}?amount={to_decimal_string(amount, self.decimals)}"

    def _chain_tx(self, scanned: ScannedTx) -> ChainTx | None:
        conflicts = self.watchlist.conflicts(scanned.txid, scanned.spent)
        if not scanned.matches and not conflicts:
            return None
        received = tuple(Received(script, vout, value) for vout, value, script in scanned.matches)
        return ChainTx(scanned.txid, received, tuple(o for o in scanned.spent if o != NULL_OUTPOINT))

    # --- the supervisor-facing loop -----------------------------------------------------------------

    async def run(self, processor: Processor) -> None:
        follow = self._follow_zmq if self.config.zmq else self._follow_polling
        await follow_forever(self, lambda: follow(processor))

    async def close(self) -> None:
        await self._rpc.close()

    async def _follow_zmq(self, processor: Processor) -> None:
        endpoints = {self.config.zmq_rawtx, self.config.zmq_hashblock}
        await self._follow_zmq_feed(processor, endpoints, (b"rawtx", b"hashblock"))  # type: ignore[arg-type]

    def _on_zmq_connected(self) -> None:
        self._sequences.clear()  # each connection starts its own sequence

    async def _on_message(self, processor: Processor, frames: list[bytes]) -> None:
        received_at = time.monotonic()
        if len(frames) != 3 or len(frames[2]) != 4 or frames[0] not in (b"rawtx", b"hashblock"):
            metrics.MALFORMED.labels(self.name, "zmq").inc()
            log.warning("ignored a malformed ZMQ message (%d frames, topic %r)", len(frames), frames[0][:20],
                        extra={"chain": self.name})
            self._mempool_stale = True  # the real message it stood for may be lost: reconcile over RPC
            self._resync.set()
            return
        topic, body, sequence = frames[0], frames[1], int.from_bytes(frames[2], "little")
        last = self._sequences.get(topic)
        self._sequences[topic] = sequence
        if last is not None and sequence != (last + 1) % 2**32:
            metrics.SEQUENCE_GAPS.labels(self.name).inc()
            log.warning("ZMQ %s sequence gap (%d after %d): reconciling over RPC", topic.decode(), sequence, last,
                        extra={"chain": self.name})
            self._mempool_stale = True
            self._resync.set()
        if topic == b"hashblock":
            self._resync.set()
            return
        try:
            scanned = scan_tx(body, self.watchlist.keys)
        except DecodeError as exc:
            metrics.MALFORMED.labels(self.name, "zmq").inc()
            log.warning("ignored an undecodable rawtx: %s", exc, extra={"chain": self.name})
            self._mempool_stale = True
            self._resync.set()
            return
        metrics.TXS.labels(self.name, "mempool").inc()
        self._mempool_seen.add(scanned.txid)
        tx = self._chain_tx(scanned)
        if tx is not None:
            await processor.tx_seen(self.name, tx)
            metrics.DETECTION_LATENCY.labels(self.name).observe(time.monotonic() - received_at)

    # --- catch-up over RPC --------------------------------------------------------------------------

    async def reconcile(self, processor: Processor, full: bool = True) -> None:
        """Bring the store up to the node's tip from the cursor, then sync the mempool.

        `full=False` is the cheap periodic check: it only does work when the tip moved or the mempool needs
        a re-read (after a gap or reconnection)."""
        best = await self._rpc.call("getbestblockhash")
        self._mark_up()
        cursor = await processor.store.cursor(self.name)
        if cursor is None or best != cursor.hash:
            await self.catch_up(processor)
        if full or self._mempool_stale or not self.config.zmq:
            await self.sync_mempool(processor)

    def _mark_up(self) -> None:
        if not self.connected:
            log.info("node RPC %s answers", self._rpc.url, extra={"chain": self.name})
        self.connected = True
        metrics.NODE_UP.labels(self.name).set(1)

    async def _node_tip(self) -> int:
        self.node_tip = int(await self._rpc.call("getblockcount"))
        metrics.NODE_TIP.labels(self.name).set(self.node_tip)
        return self.node_tip

    async def catch_up(self, processor: Processor) -> None:
        tip_height = await self._node_tip()
        cursor = await processor.store.cursor(self.name)
        if cursor is None:
            start = tip_height if self.config.start_height is None else min(self.config.start_height, tip_height)
            cursor = Cursor(start, await self._rpc.call("getblockhash", start))
            await processor.set_cursor(self.name, cursor)
            log.info("first run: scanning from block %d", start, extra={"chain": self.name})
        cursor = await self._walk_back_reorg(processor, cursor, tip_height)
        while cursor.height < tip_height:
            connected = await self._connect_next(processor, cursor)
            if connected is None:  # the chain changed under us: back to the common ancestor
                tip_height = await self._node_tip()
                cursor = await self._walk_back_reorg(processor, cursor, tip_height)
                continue
            cursor = connected
            metrics.PROCESSED_HEIGHT.labels(self.name).set(cursor.height)
            if cursor.height >= tip_height:
                tip_height = await self._node_tip()  # blocks found while we were catching up
        metrics.PROCESSED_HEIGHT.labels(self.name).set(cursor.height)
        metrics.LAG.labels(self.name).set(max(0, tip_height - cursor.height))

    async def _hash_at(self, height: int, tip_height: int) -> str | None:
        if height > tip_height:
            return None
        try:
            return str(await self._rpc.call("getblockhash", height))
        except RpcError:
            return None  # the node's tip moved down since getblockcount

    async def _walk_back_reorg(self, processor: Processor, cursor: Cursor, tip_height: int) -> Cursor:
        async def parent_of(block: Cursor) -> str:
            return str((await self._rpc.call("getblockheader", block.hash))["previousblockhash"])

        cursor, depth = await walk_back(self, processor, cursor, lambda h: self._hash_at(h, tip_height), parent_of)
        if depth:
            self._mempool_stale = True  # disconnected transactions went back to the mempool
        return cursor

    async def _connect_next(self, processor: Processor, cursor: Cursor) -> Cursor | None:
        """Connect the block after `cursor`; None when it does not build on the cursor (a reorg under us)."""
        height = cursor.height + 1
        block_hash = await self._rpc.call("getblockhash", height)
        raw_hex = await self._rpc.call("getblock", block_hash, 0)
        started = time.monotonic()
        try:
            block = await asyncio.to_thread(scan_block, bytes.fromhex(raw_hex), self.watchlist.keys)
        except (DecodeError, ValueError, TypeError) as exc:
            metrics.MALFORMED.labels(self.name, "rpc").inc()
            raise NodeProtocolError(f"block {height} {block_hash}: cannot decode: {exc}") from exc
        if block.hash != block_hash:
            raise NodeProtocolError(f"block {height}: node sent {block.hash} for {block_hash}")
        if block.prev_hash != cursor.hash:
            return None
        txs = tuple(tx for scanned in block.txs if (tx := self._chain_tx(scanned)) is not None)
        await processor.block_connected(self.name, ChainBlock(height, block.hash, block.prev_hash, txs))
        metrics.BLOCKS.labels(self.name).inc()
        metrics.TXS.labels(self.name, "block").inc(len(block.txs))
        if txs:
            metrics.DETECTION_LATENCY.labels(self.name).observe(time.monotonic() - started)
        return Cursor(height, block.hash)

    async def sync_mempool(self, processor: Processor) -> None:
        """Fetch and match the mempool transactions not seen yet (a diff: cheap even on a busy node)."""
        mempool = {str(t) for t in await self._rpc.call("getrawmempool")}
        new = [t for t in mempool if t not in self._mempool_seen]
        for start in range(0, len(new), MEMPOOL_BATCH):
            chunk = new[start:start + MEMPOOL_BATCH]
            results = await self._rpc.batch("getrawtransaction", [(t,) for t in chunk])
            for txid, raw_hex in zip(chunk, results, strict=True):
                try:
                    scanned = scan_tx(bytes.fromhex(raw_hex), self.watchlist.keys)
                except (DecodeError, ValueError, TypeError) as exc:
                    metrics.MALFORMED.labels(self.name, "rpc").inc()
                    log.warning("mempool tx %s undecodable: %s", txid, exc, extra={"chain": self.name})
                    continue
                metrics.TXS.labels(self.name, "mempool").inc()
                tx = self._chain_tx(scanned)
                if tx is not None:
                    await processor.tx_seen(self.name, tx)
        # judge "dropped" only against a mempool read at the tip we have processed, or a payment mined in
        # a block we haven't connected yet would look dropped
        cursor = await processor.store.cursor(self.name)
        if cursor is not None and await self._rpc.call("getbestblockhash") == cursor.hash:
            await processor.mempool_synced(self.name, mempool)
            self._mempool_seen = mempool
            self._mempool_stale = False
        else:
            self._resync.set()
