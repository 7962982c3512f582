"""Monero adapter: monerod's ZMQ publications as wake-ups, its RPC as the truth, outputs scanned with the
view key only (no spend key, no monero-wallet-rpc).

Same shape as the Bitcoin adapter: a durable cursor (height + hash), catch-up block by block with a walk
back over reorgs, a mempool diff, and a periodic safety-net reconcile. monerod's ZMQ feed has no sequence
numbers, so a (re)connection of the socket is what triggers a full reconcile.

Watch key of an invoice: its subaddress public spend key D. An output pays D when P - Hs(8aR ‖ i)·G == D.
An output only counts when its decrypted amount opens its Pedersen commitment, its unlock time is zero,
and its one-time key P has not paid us before (the "burning bug": a second output with the same P is unspendable;
the core keeps P with the payment and refuses the second one).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING, Any

import aiohttp

from .. import metrics
from ..exceptions import NodeProtocolError
from ..money import to_decimal_string
from ..store import Cursor
from .base import AdapterBase, ChainBlock, ChainTx, Received, follow_forever, walk_back
from .rpc import post_json
from .xmr_crypto import MoneroKeyError, ParsedTx, Scanner, parse_tx_json
from .zmqfeed import ZmqFollowing

if TYPE_CHECKING:
    from ..config import MoneroChainConfig
    from ..processor import Processor

log = logging.getLogger(__name__)

TX_BATCH = 100
ZMQ_TOPICS = (b"json-minimal-txpool_add", b"json-minimal-chain_main")


class MoneroRpc:
    """monerod's JSON-RPC (/json_rpc) and its plain JSON endpoints (/get_transactions ...)."""

    def __init__(self, url: str, user: str | None, password: str | None, timeout: float = 60.0):
        self.url = url.rstrip("/")
        self._auth = (user, password) if user is not None and password is not None else None
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _post(self, path: str, payload: dict[str, Any], what: str) -> Any:
        if self._session is None:
            middlewares = ()
            if self._auth is not None:  # monerod --rpc-login uses HTTP digest authentication
                middlewares = (aiohttp.DigestAuthMiddleware(*self._auth),)  # type: ignore[assignment]
            self._session = aiohttp.ClientSession(timeout=self._timeout, middlewares=middlewares)
        answer = await post_json(self._session, f"{self.url}/{path}", payload, what)
        if not isinstance(answer, dict):
            raise NodeProtocolError(f"{what}: malformed answer: {str(answer)[:80]!r}")
        return answer

    async def call(self, method: str, **params: Any) -> Any:
        answer = await self._post("json_rpc", {"jsonrpc": "2.0", "id": "0", "method": method, "params": params},
                                  method)
        if answer.get("error"):
            error = answer["error"]
            raise NodeProtocolError(f"{method}: RPC error {error.get('code')}: {error.get('message')}")
        result = answer.get("result")
        if not isinstance(result, dict):
            raise NodeProtocolError(f"{method}: malformed JSON-RPC answer: {str(answer)[:80]!r}")
        return result

    async def other(self, path: str, **params: Any) -> Any:
        answer = await self._post(path, params, path)
        if answer.get("status") != "OK":
            raise NodeProtocolError(f"{path}: status {str(answer.get('status'))[:80]!r}")
        return answer

    async def transactions(self, txids: list[str]) -> dict[str, str]:
        """txid -> the transaction's JSON text (decode_as_json), for those monerod knows (pool or chain), in
        batches. The text is parsed per transaction later (decode_tx), so that one bad tx fails alone. Pruned:
        scanning never reads the signatures, which are ~3/4 of a transaction."""
        found: dict[str, str] = {}
        for start in range(0, len(txids), TX_BATCH):
            chunk = txids[start:start + TX_BATCH]
            answer = await self.other("get_transactions", txs_hashes=chunk, decode_as_json=True, prune=True)
            for entry in answer.get("txs") or []:
                try:
                    found[str(entry["tx_hash"])] = str(entry["as_json"])
                except (KeyError, TypeError) as exc:
                    raise NodeProtocolError(f"get_transactions: malformed entry: {exc!r}") from exc
        return found


# What a transaction that monerod's JSON describes badly (or in a format we do not scan) raises in decode_tx.
UNDECODABLE = (MoneroKeyError, KeyError, TypeError, ValueError, IndexError, AttributeError)


def decode_tx(txid: str, as_json: str) -> ParsedTx:
    tx = json.loads(as_json)
    if not isinstance(tx, dict):
        raise ValueError(f"not a JSON object: {as_json[:40]!r}")
    return parse_tx_json(txid, tx)


class MoneroAdapter(AdapterBase, ZmqFollowing):
    decimals = 12

    def __init__(self, config: MoneroChainConfig):
        super().__init__(config)
        self._deriver = config.address_deriver()
        self._scanner = Scanner(config.view_key)
        self._rpc = MoneroRpc(config.rpc_url, config.rpc_user, config.rpc_password)
        self._mempool_seen: set[str] = set()
        self._mempool_stale = True
        self._init_feed()

    def derive(self, index: int) -> tuple[str, bytes]:
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

    def _scan_all(self, decoded: dict[str, str], txids: list[str], where: str = "block") -> list[ChainTx]:
        """Decode and match `txids` in order (runs in a worker thread for blocks)."""
        found = []
        for txid in txids:
            chain_tx = self._decode_and_match(txid, decoded[txid], where)
            if chain_tx is not None:
                found.append(chain_tx)
        return found

    # --- the supervisor-facing loop -----------------------------------------------------------------

    async def run(self, processor: Processor) -> None:
        follow = self._follow_zmq if self.config.zmq_pub else self._follow_polling
        await follow_forever(self, lambda: follow(processor))

    async def close(self) -> None:
        await self._rpc.close()

    async def _follow_zmq(self, processor: Processor) -> None:
        assert self.config.zmq_pub is not None
        # no sequence numbers on monerod's feed: whatever it published while we were away is found over RPC
        await self._follow_zmq_feed(processor, {self.config.zmq_pub}, ZMQ_TOPICS)

    def _malformed_zmq(self, why: str) -> None:
        metrics.MALFORMED.labels(self.name, "zmq").inc()
        log.warning("ignored a malformed ZMQ message: %s", why, extra={"chain": self.name})
        self._mempool_stale = True
        self._resync.set()

    async def _on_message(self, processor: Processor, frames: list[bytes]) -> None:
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
        new = [t for t in txids if t not in self._mempool_seen]
        if not new:
            return
        decoded = await self._rpc.transactions(new)
        await self._seen_in_pool(processor, [t for t in new if t in decoded], decoded)
        metrics.DETECTION_LATENCY.labels(self.name).observe(time.monotonic() - received_at)

    async def _seen_in_pool(self, processor: Processor, txids: list[str], decoded: dict[str, str]) -> None:
        for txid in txids:
            tx = self._decode_and_match(txid, decoded[txid], "pool")
            metrics.TXS.labels(self.name, "mempool").inc()
            self._mempool_seen.add(txid)  # an undecodable one too: read again, it would only be counted again
            if tx is not None:
                await processor.tx_seen(self.name, tx)

    # --- catch-up over RPC --------------------------------------------------------------------------

    async def _tip(self) -> tuple[int, str]:
        header = (await self._rpc.call("get_last_block_header"))["block_header"]
        return int(header["height"]), str(header["hash"])

    async def reconcile(self, processor: Processor, full: bool = True) -> None:
        _, tip_hash = await self._tip()
        self._mark_up()
        cursor = await processor.store.cursor(self.name)
        if cursor is None or tip_hash != cursor.hash:
            await self.catch_up(processor)
        # Always diff the pool (one cheap call): monerod publishes txpool_add only for transactions it relays
        # publicly, so one still in its Dandelion++ stem phase (or on an --offline node) arrives unannounced.
        await self.sync_mempool(processor)

    def _mark_up(self) -> None:
        if not self.connected:
            log.info("monerod RPC %s answers", self._rpc.url, extra={"chain": self.name})
        self.connected = True
        metrics.NODE_UP.labels(self.name).set(1)

    async def _header(self, height: int) -> dict[str, Any] | None:
        try:
            return (await self._rpc.call("get_block_header_by_height", height=height))["block_header"]
        except NodeProtocolError:
            return None  # above the node's tip (it moved down since we asked)

    async def catch_up(self, processor: Processor) -> None:
        while True:
            tip_height, _ = await self._tip()
            self.node_tip = tip_height
            metrics.NODE_TIP.labels(self.name).set(tip_height)
            cursor = await processor.store.cursor(self.name)
            if cursor is None:
                start = tip_height if self.config.start_height is None else min(self.config.start_height, tip_height)
                header = await self._header(start)
                if header is None:
                    continue
                cursor = Cursor(start, str(header["hash"]))
                await processor.set_cursor(self.name, cursor)
                log.info("first run: scanning from block %d", start, extra={"chain": self.name})
            cursor = await self._walk_back_reorg(processor, cursor)
            if cursor.height >= tip_height:
                break
            if not await self._connect_next(processor, cursor):
                continue
        metrics.PROCESSED_HEIGHT.labels(self.name).set(cursor.height)
        metrics.LAG.labels(self.name).set(max(0, tip_height - cursor.height))

    async def _walk_back_reorg(self, processor: Processor, cursor: Cursor) -> Cursor:
        async def main_chain_hash(height: int) -> str | None:
            header = await self._header(height)
            return None if header is None else str(header["hash"])

        async def parent_of(block: Cursor) -> str:
            # below what we ever connected (our first cursor, or a node that lost its last blocks in a crash):
            # nothing of ours to undo there, follow the node's own chain
            parent = await main_chain_hash(block.height - 1)
            if parent is None:
                raise NodeProtocolError(f"block {block.height - 1}: header unavailable")
            return parent

        cursor, depth = await walk_back(self, processor, cursor, main_chain_hash, parent_of)
        if depth:
            self._mempool_stale = True
        return cursor
    async def _connect_next(self, processor: Processor, cursor: Cursor) -> bool:
        height = cursor.height + 1
        started = time.monotonic()
        block = await self._rpc.call("get_block", height=height)
        header = block.get("block_header") or {}
        block_hash, prev_hash = str(header.get("hash")), str(header.get("prev_hash"))
        if int(header.get("height", -1)) != height:
            raise NodeProtocolError(f"get_block {height}: node sent height {header.get('height')}")
        if prev_hash != cursor.hash:
            return False
        txids = [str(t) for t in block.get("tx_hashes") or []]
        decoded = await self._rpc.transactions(txids)
        missing = [t for t in txids if t not in decoded]
        if missing:
            raise NodeProtocolError(f"block {height}: node does not know its txs {missing[:3]}")
        txs = await asyncio.to_thread(self._scan_all, decoded, txids)
        await processor.block_connected(self.name, ChainBlock(height, block_hash, prev_hash, tuple(txs)))
        metrics.BLOCKS.labels(self.name).inc()
        metrics.TXS.labels(self.name, "block").inc(len(txids))
        if txs:
            metrics.DETECTION_LATENCY.labels(self.name).observe(time.monotonic() - started)
        return True

    async def sync_mempool(self, processor: Processor) -> None:
        answer = await self._rpc.other("get_transaction_pool_hashes")
        mempool = {str(t) for t in answer.get("tx_hashes") or []}
        new = [t for t in mempool if t not in self._mempool_seen]
        if new:
            decoded = await self._rpc.transactions(new)
            await self._seen_in_pool(processor, [t for t in new if t in decoded], decoded)
        cursor = await processor.store.cursor(self.name)
        _, tip_hash = await self._tip()
        if cursor is not None and tip_hash == cursor.hash:
            await processor.mempool_synced(self.name, mempool)
            self._mempool_seen = mempool
            self._mempool_stale = False
        else:
            self._resync.set()
