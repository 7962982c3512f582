"""Ethereum (and any EVM chain) follower: websocket subscriptions, ERC-20 Transfer logs, balance reconciliation.

`newHeads` drives block processing; for each block exactly two calls: the block with its transactions
(`eth_getBlockByHash(h, true)`) and the configured tokens' Transfer logs of that block (`eth_getLogs` by block
hash), matched in memory against the watched addresses. Plus one batched `eth_getBalance` at the block for
the open native-asset invoices (money that arrives through a contract's internal call shows in no
transaction's `to`). `newPendingTransactions` gives early `processing`.

Payment identifiers, (txid, vout) unique per chain:

* vout 0 (NATIVE_VOUT): the transaction's own ETH value to a watched address;
* vout 1 + n (TOKEN_VOUT_BASE + n): the n-th transfer of a configured token in that transaction. One transfer
  is one (token, recipient) pair: its amount is the pair's first non-zero Transfer log, and further logs of the
  same pair in the transaction add nothing (a token that logs a transfer twice pays once). The pairs are
  numbered in log order, except that a direct `transfer(recipient, amount)` call's own pair is n = 0 whatever
  its token logs first: the identity its pending sighting (read from the calldata) was given;
* txid `internal:<block hash>:<address>`, vout 0: ETH found by balance reconciliation at that block.

A pending payment is a guess from the calldata; the mined block is the truth (`ChainBlock.authoritative`): its
amount is the block's log (fee-on-transfer and rebasing tokens pay what arrives), and a mined transaction that
pays nothing (reverted, or its token moved less or elsewhere) takes the pending payment back. Zero-value
transfers are no payments. `spent` of a transaction is its (sender, nonce): a mined or pending transaction with
the same sender and nonce as a pending payment replaces it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

from watcherd import metrics
from watcherd.chains.ethereum.address import TRANSFER_SELECTOR, TRANSFER_TOPIC, payment_uri
from watcherd.chains.ethereum.rpc import WsRpc
from watcherd.chains.follow import Follower, follow_forever
from watcherd.chains.rpc import RpcError
from watcherd.core.chain import ChainSink
from watcherd.core.invoices import FINALITY
from watcherd.core.types import ChainBlock, ChainTx, Cursor, Received
from watcherd.exceptions import ChainRefused, NodeProtocolError
from watcherd.logs import redact_url

if TYPE_CHECKING:
    from watcherd.chains.ethereum.config import EthereumChainConfig

log = logging.getLogger("watcherd.chains.ethereum")

NATIVE_VOUT = 0
TOKEN_VOUT_BASE = 1
INTERNAL_PREFIX = "internal:"
PENDING_BATCH = 200  # pending transactions already queued are fetched together, this many per call
QUIET_SECONDS = 5.0  # no head for this long: ask the node for its tip anyway (a silent feed hides nothing)
POOL_CHECK_SECONDS = 30.0  # re-check that pending payments are still known to the node this often
RECONCILE_EXPIRED_SECONDS = 86_400  # keep reconciling balances of invoices expired less than a day ago


class ChainMismatch(ChainRefused):
    """The node at ws_url serves another chain id than the config's chain_id."""


class Rpc(Protocol):
    calls: int

    async def call(self, method: str, *params: Any) -> Any: ...
    async def batch(self, method: str, param_lists: list[tuple[Any, ...]]) -> list[Any]: ...




def _int(value: Any) -> int:
    if not isinstance(value, str) or not value.startswith("0x"):
        raise ValueError(f"not a hex quantity: {str(value)[:40]!r}")
    return int(value, 16)


def _key(hex_address: Any) -> bytes | None:
    if not isinstance(hex_address, str) or len(hex_address) != 42:
        return None
    try:
        return bytes.fromhex(hex_address[2:])
    except ValueError:
        return None


def _spent(tx: dict[str, Any]) -> bytes:
    return bytes.fromhex(tx["from"][2:]) + _int(tx["nonce"]).to_bytes(8, "big")


class EthereumAdapter(Follower):
    decimals = 18
    node_label = "node websocket"
    config: EthereumChainConfig

    def __init__(self, config: EthereumChainConfig, rpc: Rpc | None = None):
        super().__init__(config, {t.symbol: t.decimals for t in config.tokens})
        if config.finality == "finalized":
            self.confirmations = FINALITY
        self._deriver = config.address_deriver()
        self._rpc: Rpc = rpc if rpc is not None else WsRpc(config.ws_url, timeout=config.node_down_after_seconds)
        # contract (lower-case hex, as nodes send it) -> (symbol, checksummed address)
        self._tokens = {t.contract.lower(): (t.symbol, t.contract) for t in config.tokens}
        self._token_of_symbol = {t.symbol: t.contract for t in config.tokens}
        self._subscriptions: dict[str, str] = {}

    def derive(self, index: int) -> tuple[str, bytes]:
        return self._deriver.derive(index)

    async def address(self, index: int) -> tuple[str, bytes]:
        return self._deriver.derive(index)

    def describe_node(self) -> str:
        return f"{redact_url(self.config.ws_url)} (chain id {self.config.chain_id})"

    def payment_uri(self, address: str, amount: int, asset: str) -> str:
        token = self._token_of_symbol.get(asset)
        return payment_uri(address, amount, self.config.chain_id, token)

    # --- matching (pure, in memory) -----------------------------------------------------------------

    def _transfer_call(self, tx: dict[str, Any]) -> tuple[tuple[str, bytes], int] | None:
        """A direct `transfer(recipient, amount)` call of a configured token: ((token, recipient), amount)."""
        data = tx.get("input") or tx.get("data") or ""
        to = tx.get("to")
        if len(data) != 138 or not isinstance(to, str) or (contract := to.lower()) not in self._tokens:
            return None
        if bytes.fromhex(data[2:10]) != TRANSFER_SELECTOR:
            return None
        return (contract, bytes.fromhex(data[34:74])), int(data[74:138], 16)

    def _pending_tx(self, tx: dict[str, Any]) -> ChainTx | None:
        """A mempool transaction: native value to a watched address, or a direct ERC-20 transfer() call."""
        received: list[Received] = []
        key = _key(tx.get("to"))
        if key is not None and key in self.watchlist.keys and (value := _int(tx["value"])) > 0:
            received.append(Received(key, NATIVE_VOUT, value))
        call = self._transfer_call(tx)
        if call is not None and call[1] > 0 and (recipient := call[0][1]) in self.watchlist.keys:
            received.append(Received(recipient, TOKEN_VOUT_BASE, call[1], self._tokens[call[0][0]][0]))
        spent = (_spent(tx),)
        if not received and not self.watchlist.conflicts(tx["hash"], spent):
            return None
        return ChainTx(tx["hash"], tuple(received), spent)

    def scan_block(self, block: dict[str, Any], logs: list[dict[str, Any]]) -> ChainBlock:
        """The block's transactions and the configured tokens' Transfer logs, matched against the watchlist.

        Reported: each transaction that pays a watched address, or that carries the (sender, nonce) of a payment
        still counting: its own (mined, so its pending outputs are judged by what it paid) or a conflict."""
        keys = self.watchlist.keys
        spends = self.watchlist.spends
        by_tx: dict[str, list[Received]] = {}
        pairs: dict[str, dict[tuple[str, bytes], int]] = {}  # txid -> (token, recipient) -> n
        for tx in block["transactions"]:
            to = tx.get("to")
            if to is not None and (key := bytes.fromhex(to[2:])) in keys:
                value = _int(tx["value"])
                if value > 0:
                    by_tx.setdefault(tx["hash"], []).append(Received(key, NATIVE_VOUT, value))
            if (call := self._transfer_call(tx)) is not None:
                pairs[tx["hash"]] = {call[0]: 0}
        credited: set[tuple[str, tuple[str, bytes]]] = set()
        for entry in sorted(logs, key=lambda e: _int(e["logIndex"])):
            topics = entry.get("topics") or []
            contract = str(entry.get("address", "")).lower()
            if contract not in self._tokens or len(topics) != 3 or topics[0] != TRANSFER_TOPIC or entry.get("removed"):
                continue
            amount = _int(entry["data"])
            if amount == 0:
                continue  # a zero-value transfer pays nothing and takes no identity
            txid = entry["transactionHash"]
            pair = (contract, bytes.fromhex(topics[2][-40:]))
            numbered = pairs.setdefault(txid, {})
            n = numbered.setdefault(pair, len(numbered))
            if pair[1] in keys and (txid, pair) not in credited:
                credited.add((txid, pair))
                by_tx.setdefault(txid, []).append(Received(pair[1], TOKEN_VOUT_BASE + n, amount,
                                                           self._tokens[contract][0]))
        txs = []
        for tx in block["transactions"]:
            received = by_tx.get(tx["hash"])
            if received is None and not spends:
                continue
            spent = (_spent(tx),)
            if received is not None or spent[0] in spends:
                txs.append(ChainTx(tx["hash"], tuple(received or ()), spent))
        timestamp = _int(block["timestamp"]) if "timestamp" in block else None
        return ChainBlock(_int(block["number"]), block["hash"], block["parentHash"], tuple(txs), timestamp,
                          authoritative=True)

    # --- the supervisor-facing loop -----------------------------------------------------------------

    async def run(self, sink: ChainSink) -> None:
        await follow_forever(self, lambda: self._follow(sink))

    async def close(self) -> None:
        close = getattr(self._rpc, "close", None)
        if close is not None:
            await close()

    async def check_chain_id(self) -> None:
        node_chain_id = _int(await self._rpc.call("eth_chainId"))
        if node_chain_id != self.config.chain_id:
            raise ChainMismatch(
                f"chains.{self.name}: the node at ws_url serves chain id {node_chain_id}, the config says "
                f"chain_id = {self.config.chain_id}; refusing to follow it (wrong node, or wrong config?)"
            )

    async def _follow(self, sink: ChainSink) -> None:
        rpc = self._rpc
        assert isinstance(rpc, WsRpc)
        await rpc.connect()
        try:
            await self.check_chain_id()
            heads = await rpc.call("eth_subscribe", "newHeads")
            pending = await rpc.call("eth_subscribe", "newPendingTransactions")
            self._subscriptions = {heads: "head", pending: "pending"}
            rpc.droppable = {pending}
            metrics.RECONNECTS.labels(self.name).inc()
            await self._tip()  # known before the chain counts as up (see Follower.reconcile)
            self.mark_up()
            self._pool_stale = True
            await self.catch_up(sink)
            next_pool_check = time.monotonic() + POOL_CHECK_SECONDS
            while True:
                item = await rpc.notification(QUIET_SECONDS)
                malformed_before, dropped_before = rpc.malformed, rpc.dropped
                if item is None:
                    await self.catch_up(sink)
                else:
                    await self._on_notifications(sink, [item, *rpc.queued(PENDING_BATCH - 1)])
                if rpc.malformed != malformed_before:
                    metrics.MALFORMED.labels(self.name, "ws").inc(rpc.malformed - malformed_before)
                if rpc.dropped != dropped_before:
                    metrics.TXS.labels(self.name, "mempool_dropped").inc(rpc.dropped - dropped_before)
                if time.monotonic() >= next_pool_check:
                    self._pool_stale = True
                    next_pool_check = time.monotonic() + POOL_CHECK_SECONDS
                if self._pool_stale:
                    await self.check_pool(sink)
        finally:
            self.connected = False
            await rpc.close()

    async def _on_notifications(self, sink: ChainSink, items: list[Any]) -> None:
        """Notifications in arrival order; a run of pending transactions costs one batched call."""
        pending: list[Any] = []
        for item in items:
            kind = self._subscriptions.get(item[0]) if isinstance(item, tuple) and len(item) == 2 else None
            if kind == "pending":
                pending.append(item[1])
                continue
            await self._guarded(sink, self._on_pending, pending)
            pending = []
            if kind == "head":
                await self._guarded(sink, self.on_head, item[1])
            else:
                await self._guarded(sink, self._malformed, item)
        await self._guarded(sink, self._on_pending, pending)

    async def _guarded(self, sink: ChainSink, handler: Any, payload: Any) -> None:
        try:
            await handler(sink, payload)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            metrics.MALFORMED.labels(self.name, "ws").inc()
            log.warning("ignored a malformed notification: %s", exc, extra={"chain": self.name})
            await self.catch_up(sink)  # whatever it stood for, the cursor finds it

    async def _malformed(self, sink: ChainSink, item: Any) -> None:
        raise ValueError("not a notification of our subscriptions")

    async def on_head(self, sink: ChainSink, head: dict[str, Any]) -> None:
        """A new head: connect it directly when it extends our cursor (2 calls), else catch up."""
        received_at = time.monotonic()
        number, block_hash, parent = _int(head["number"]), head["hash"], head["parentHash"]
        self.node_tip = number
        metrics.NODE_TIP.labels(self.name).set(number)
        cursor = await sink.cursor()
        if cursor is None or number != cursor.height + 1 or parent != cursor.hash:
            await self.catch_up(sink)
            return
        block = await self._rpc.call("eth_getBlockByHash", block_hash, True)
        matched = None if block is None else await self._matched(sink, block, cursor)
        if matched is None:
            await self.catch_up(sink)  # reorged away already
            return
        await sink.block_connected(matched)
        metrics.BLOCKS.labels(self.name).inc()
        metrics.PROCESSED_HEIGHT.labels(self.name).set(number)
        metrics.LAG.labels(self.name).set(0)
        metrics.DETECTION_LATENCY.labels(self.name).observe(time.monotonic() - received_at)

    async def _on_pending(self, sink: ChainSink, items: list[Any]) -> None:
        """Pending transactions: full objects (some nodes send them) or hashes, fetched in one batch."""
        if not items:
            return
        hashes = [item for item in items if isinstance(item, str)]
        fetched = iter(await self._rpc.batch("eth_getTransactionByHash", [(h,) for h in hashes]) if hashes else [])
        for item in items:
            tx = next(fetched) if isinstance(item, str) else item
            if not isinstance(tx, dict) or tx.get("blockHash"):
                continue  # mined or dropped already: the block path has (or will have) it
            metrics.TXS.labels(self.name, "mempool").inc()
            chain_tx = self._pending_tx(tx)
            if chain_tx is not None:
                await sink.tx_seen(chain_tx)

    # --- the node reads the shared follower needs ---------------------------------------------------

    async def catch_up(self, sink: ChainSink) -> None:
        if self.config.finality == "finalized":
            await self._refresh_finality(sink)
        await super().catch_up(sink)

    async def tip_height(self) -> int:
        return _int(await self._rpc.call("eth_blockNumber"))

    async def hash_at(self, height: int) -> str | None:
        header = await self._rpc.call("eth_getBlockByNumber", hex(height), False)
        if header is None:
            return None  # no block at that height (the node's tip moved down)
        if not isinstance(header, dict) or not isinstance(header.get("hash"), str):
            raise NodeProtocolError(f"eth_getBlockByNumber {height}: malformed header")
        return str(header["hash"])

    async def parent_hash(self, block: Cursor) -> str:
        ours = await self._rpc.call("eth_getBlockByHash", block.hash, False)
        if not isinstance(ours, dict):
            raise NodeProtocolError(f"reorg deeper than the blocks kept: {block.height} {block.hash}")
        return str(ours["parentHash"])

    async def next_block(self, sink: ChainSink, cursor: Cursor) -> ChainBlock | None:
        block = await self._rpc.call("eth_getBlockByNumber", hex(cursor.height + 1), True)
        if block is None:
            return None  # the node's tip moved down: walk back again
        if not isinstance(block, dict) or "hash" not in block:
            raise NodeProtocolError(f"eth_getBlockByNumber {cursor.height + 1}: malformed block")
        return await self._matched(sink, block, cursor)

    async def _matched(self, sink: ChainSink, block: dict[str, Any], cursor: Cursor) -> ChainBlock | None:
        """One block (+ its token logs) matched, with the balances reconciled at it; None when it is not on
        top of our cursor (the caller walks back)."""
        if block.get("parentHash") != cursor.hash:
            return None
        logs: list[dict[str, Any]] = []
        if self._tokens:
            logs = await self._rpc.call("eth_getLogs", {
                "blockHash": block["hash"], "address": [c for _, c in self._tokens.values()],
                "topics": [TRANSFER_TOPIC],
            })
        try:
            scanned = self.scan_block(block, logs)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            metrics.MALFORMED.labels(self.name, "rpc").inc()
            raise NodeProtocolError(f"block {block.get('number')} {block.get('hash')}: unusable: {exc}") from exc
        if scanned.prev_hash != cursor.hash or scanned.height != cursor.height + 1:
            return None
        internal = await self.reconcile_balances(sink, scanned)
        metrics.TXS.labels(self.name, "block").inc(len(block["transactions"]))
        if internal:
            scanned = replace(scanned, txs=scanned.txs + internal)
        return scanned

    # --- balance reconciliation ---------------------------------------------------------------------

    async def reconcile_balances(self, sink: ChainSink, block: ChainBlock) -> tuple[ChainTx, ...]:
        """ETH that reached an open native invoice's address without a transaction `to` it (a contract's
        internal call): the balance at the block minus what recorded payments mined at or before it explain.

        Idempotent: the payment is recorded with this block, in the same store transaction that advances the
        cursor past it, so a restart never reconciles the same block twice and a reorg that disconnects the
        block takes the payment back (it is then marked replaced, as no node knows its txid)."""
        open_invoices = await sink.open_invoices(self.asset, int(time.time()) - RECONCILE_EXPIRED_SECONDS)
        if not open_invoices:
            return ()
        balances = await self._rpc.batch(
            "eth_getBalance", [(inv.address, {"blockHash": block.hash}) for inv in open_invoices]
        )
        in_block: dict[bytes, int] = {}
        for tx in block.txs:
            for r in tx.received:
                if r.asset is None:
                    in_block[r.key] = in_block.get(r.key, 0) + r.amount
        recorded = await sink.mined_totals(self.asset, [inv.id for inv in open_invoices], block.height)
        found = []
        for invoice, balance_hex in zip(open_invoices, balances, strict=True):
            explained = in_block.get(invoice.watch_key, 0) + recorded.get(invoice.id, 0)
            unexplained = _int(balance_hex) - explained
            if unexplained > 0:
                log.info("balance of %s exceeds its recorded payments by %d wei at block %d: internal transfer",
                         invoice.address, unexplained, block.height,
                         extra={"chain": self.name, "invoice_id": invoice.id})
                txid = f"{INTERNAL_PREFIX}{block.hash}:{invoice.address.lower()}"
                found.append(ChainTx(txid, (Received(invoice.watch_key, NATIVE_VOUT, unexplained),)))
        return tuple(found)

    # --- pending payments still known? --------------------------------------------------------------

    async def check_pool(self, sink: ChainSink) -> None:
        """Unconfirmed payments the node no longer knows (dropped, or internal ones whose block a reorg
        took) stop counting. Judged only at our cursor = the node's tip, like Bitcoin's mempool diff."""
        unconfirmed = await sink.unconfirmed_txids()
        onchain = [t for t in unconfirmed if not t.startswith(INTERNAL_PREFIX)]
        answers = await self._rpc.batch("eth_getTransactionByHash", [(t,) for t in onchain])
        cursor = await sink.cursor()
        tip = _int(await self._rpc.call("eth_blockNumber"))
        if cursor is None or cursor.height != tip:
            return  # judge at the tip only; the next round does
        known = {t for t, a in zip(onchain, answers, strict=True) if a is not None}
        await sink.mempool_synced(known)
        self._pool_stale = False

    async def _refresh_finality(self, sink: ChainSink) -> None:
        """Finality mode: payments at or below the node's `finalized` block are confirmed (applied when the
        next block commits)."""
        try:
            finalized = await self._rpc.call("eth_getBlockByNumber", "finalized", False)
        except RpcError:
            return
        if isinstance(finalized, dict):
            sink.set_final_height(_int(finalized["number"]))
