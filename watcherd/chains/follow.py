"""Following a node, once for every chain kind: reconnect with backoff, check the node's network, catch up
from the durable cursor, walk back over reorgs (no deeper than `max_reorg_depth`), and diff the node's pool
against what we have seen.

A chain kind subclasses `Follower` and supplies the node-specific reads (`check_network`, `tip_height`,
`hash_at`, `parent_hash`, `next_block`, and for a pool diff `pool_txids` / `pool_txs` / `best_hash`);
everything it learns goes to the `ChainSink` the ledger gave it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

from watcherd import metrics
from watcherd.chains.rpc import STALLED
from watcherd.core.chain import ChainSink
from watcherd.core.types import ChainBlock, ChainTx, Cursor, Watchlist
from watcherd.exceptions import ChainRefused, NodeError, NodeProtocolError, ReorgTooDeep, StoreError
from watcherd.logs import redact_url
from watcherd.retry import backoff

log = logging.getLogger("watcherd.chains.base")


class Follower:
    """The chain-agnostic half of an adapter, configured from its chain's table."""

    decimals: int  # of the native asset
    node_label: str = "node RPC"  # how the log names the node when it starts answering

    def __init__(self, config: Any, tokens: dict[str, int] | None = None):
        self.config = config
        self.name: str = config.name
        self.asset: str = config.asset
        self.assets = {config.asset: self.decimals, **(tokens or {})}
        self.confirmations: int = config.confirmations
        self.underpaid_tolerance_percent = Decimal(config.underpaid_tolerance_percent)
        self.invoice_expiry_seconds: int = config.invoice_expiry_seconds
        self.max_reorg_depth: int = config.max_reorg_depth
        self.watchlist = Watchlist()
        self.connected = False
        self.stopped: str | None = None  # why this chain no longer follows its node (see stay_stopped)
        self.network_checked = False  # the node answering now was checked to serve the configured network
        self.node_tip: int | None = None
        self._pool_seen: set[str] = set()
        self._pool_stale = True  # read the pool (what we have not seen of it) at the next reconcile
        self._resync = asyncio.Event()  # set: reconcile over RPC as soon as possible
        self._retry = asyncio.Event()  # set: a failed chain retries now rather than at the end of its backoff
        self.progressed = False  # this session committed a block or caught up: its failure backs off from scratch

    def retry_now(self) -> None:
        """What kept this chain failing is gone (the store takes writes again): do not wait out the backoff."""
        self._retry.set()

    # --- what a chain kind supplies -----------------------------------------------------------------

    async def check_network(self) -> None:
        """ChainRefused unless the node serves the configured network (its genesis block, its nettype)."""
        raise NotImplementedError

    async def tip_height(self) -> int:
        """The node's best height."""
        raise NotImplementedError

    async def hash_at(self, height: int) -> str | None:
        """The node's main-chain hash at `height`; None only when it has no block there."""
        raise NotImplementedError

    async def parent_hash(self, block: Cursor) -> str:
        """The parent of one of our blocks that the store no longer remembers."""
        raise NotImplementedError

    async def next_block(self, sink: ChainSink, cursor: Cursor) -> ChainBlock | None:
        """The block after `cursor`, matched; None when the node's block there does not build on the cursor."""
        raise NotImplementedError

    async def pool_txids(self) -> set[str]:
        raise NotImplementedError

    async def pool_txs(self, txids: list[str]) -> dict[str, ChainTx | None]:
        """Fetch and match pool transactions: each one the node could give (an undecodable one included) ->
        its match, None when it does not concern us."""
        raise NotImplementedError

    async def best_hash(self) -> str:
        raise NotImplementedError

    def describe_node(self) -> str:
        return redact_url(self.config.rpc_url) if hasattr(self.config, "rpc_url") else self.name

    # --- shared -------------------------------------------------------------------------------------

    def mark_up(self) -> None:
        if not self.connected:
            log.info("%s %s answers", self.node_label, self.describe_node(), extra={"chain": self.name})
        self.connected = True
        metrics.NODE_UP.labels(self.name).set(1)

    async def _tip(self) -> int:
        tip = await self.tip_height()
        self.node_tip = tip
        metrics.NODE_TIP.labels(self.name).set(tip)
        return tip

    async def _start_cursor(self, sink: ChainSink, tip: int) -> Cursor:
        """The very first run: start at the node's tip (or the configured start height), nothing before it."""
        start = tip if self.config.start_height is None else min(self.config.start_height, tip)
        block_hash = await self.hash_at(start)
        if block_hash is None:
            raise NodeProtocolError(f"block {start}: the node has no block there")
        cursor = Cursor(start, block_hash)
        await sink.set_cursor(cursor)
        log.info("first run: following from block %d", start, extra={"chain": self.name})
        return cursor

    async def catch_up(self, sink: ChainSink) -> None:
        """Bring the store to the node's tip from the durable cursor, walking back over reorgs first."""
        while True:
            tip = await self._tip()
            cursor = await sink.cursor() or await self._start_cursor(sink, tip)
            cursor = await self.walk_back(sink, cursor, tip)
            if cursor.height >= tip:
                break
            while cursor.height < tip:
                connected = await self.connect_next(sink, cursor)
                if connected is None:  # the chain changed under us: back to the common ancestor
                    break
                cursor = connected
                metrics.PROCESSED_HEIGHT.labels(self.name).set(cursor.height)
        metrics.PROCESSED_HEIGHT.labels(self.name).set(cursor.height)
        metrics.LAG.labels(self.name).set(max(0, tip - cursor.height))
        self.progressed = True

    async def connect_next(self, sink: ChainSink, cursor: Cursor) -> Cursor | None:
        started = time.monotonic()
        await sink.refresh_watchlist()
        block = await self.next_block(sink, cursor)
        if block is None:
            return None
        await sink.block_connected(block)
        self.progressed = True
        metrics.BLOCKS.labels(self.name).inc()
        if block.txs:
            metrics.DETECTION_LATENCY.labels(self.name).observe(time.monotonic() - started)
        return Cursor(block.height, block.hash)

    async def walk_back(self, sink: ChainSink, cursor: Cursor, tip: int) -> Cursor:
        """Disconnect our blocks until the cursor is on the node's main chain again (the common ancestor).

        The ancestor is found first, reading only: one more than `max_reorg_depth` blocks to undo and nothing
        is disconnected (ReorgTooDeep). Only "no block there" counts against a block; a node error propagates."""
        ours = [cursor]  # from the cursor down, until one of them is on the node's main chain
        while (await self.hash_at(ours[-1].height) if ours[-1].height <= tip else None) != ours[-1].hash:
            if len(ours) > self.max_reorg_depth:
                raise ReorgTooDeep(
                    f"chains.{self.name}: the node's chain leaves ours more than max_reorg_depth = "
                    f"{self.max_reorg_depth} blocks below our block {cursor.height} {cursor.hash} (its tip is "
                    f"{tip}); nothing was disconnected: a reorg that deep is more likely a wrong node than a "
                    "real one (check the node; raise max_reorg_depth to follow it)")
            block = ours[-1]
            ours.append(Cursor(block.height - 1, await sink.block_hash(block.height - 1)
                               or await self.parent_hash(block)))
        for block, parent in itertools.pairwise(ours):
            await sink.block_disconnected(block.height, block.hash, parent)
        cursor, depth = ours[-1], len(ours) - 1
        if depth:
            self._pool_stale = True  # disconnected transactions went back to the pool
            metrics.REORGS.labels(self.name).inc()
            metrics.REORG_DEPTH.labels(self.name).observe(depth)
            log.warning("reorg: %d block(s) disconnected, common ancestor %d %s", depth, cursor.height,
                        cursor.hash, extra={"chain": self.name})
        return cursor

    async def seen_in_pool(self, sink: ChainSink, txids: list[str]) -> None:
        """Pool transactions announced by the feed or found by the diff: match them, report what pays us."""
        new = [t for t in txids if t not in self._pool_seen]
        if not new:
            return
        await sink.refresh_watchlist()
        read = await self.pool_txs(new)
        for tx in read.values():
            if tx is not None:
                await sink.tx_seen(tx)
        self._pool_seen.update(read)  # an undecodable one too: read again, it would only be counted again

    async def sync_pool(self, sink: ChainSink) -> None:
        """Fetch and match the pool transactions not seen yet (a diff: cheap even on a busy node), then, if
        the pool was read at our cursor, tell the core which unconfirmed payments it still holds."""
        pool = await self.pool_txids()
        await self.seen_in_pool(sink, list(pool))
        # judge "dropped" only against a pool read at the tip we have processed, or a payment mined in a block
        # we haven't connected yet would look dropped
        cursor = await sink.cursor()
        if cursor is not None and await self.best_hash() == cursor.hash:
            await sink.mempool_synced(pool)
            self._pool_seen = pool
            self._pool_stale = False
        else:
            self._resync.set()

    async def reconcile(self, sink: ChainSink, full: bool = True) -> None:
        """Bring the store up to the node's tip from the cursor, then diff the pool.

        `full=False` is the cheap periodic check: it reads the pool only when it needs a re-read (after a
        gap or reconnection), unless `pool_every_check` says the node's feed may miss pool transactions.

        The node's network is checked first on a new connection, and whenever its best block is not our
        cursor: a node swapped for another network's between two calls shows there, before anything of it is
        matched."""
        best = await self.best_hash()
        cursor = await sink.cursor()
        behind = cursor is None or best != cursor.hash
        if behind or not self.network_checked:
            await self.check_network()
            self.network_checked = True
        # the node's tip is known before the chain counts as up: Processor.caught_up (expiry) reads "connected,
        # processed up to node_tip", which must not hold with a missing or stale tip while blocks wait
        if behind:
            await self._tip()
        elif self.node_tip is None and cursor is not None:
            self.node_tip = cursor.height  # the node's best block is our cursor
            metrics.NODE_TIP.labels(self.name).set(cursor.height)
        self.mark_up()
        if behind:
            await self.catch_up(sink)
        if full or self._pool_stale or self.pool_every_check():
            await self.sync_pool(sink)

    def pool_every_check(self) -> bool:
        return False


HEALTHY_SESSION_SECONDS = 30.0  # a session that lasted this long was healthy: its failure backs off from scratch


async def follow_forever(follower: Follower, session: Callable[[], Awaitable[None]]) -> None:
    """Run `session` (one connected stretch with the node) again and again; the next session catches up from
    the cursor, so nothing is lost meanwhile.

    Transient node errors were already retried call by call (chains/rpc.py), so what reaches here means the
    node is down or answers what no rule foresaw; the store may be failing too. Either way only this chain
    stops and backs off (up to 30 s; from the start again once a session ran healthy, or committed a block
    before it failed, as a websocket cut now and then does): the other chains, the
    API and delivery go on. The outage is logged once, when it starts. A `ChainRefused` (the node serves
    another network than configured, a reorg deeper than max_reorg_depth) stops this chain for good: see
    `stay_stopped`."""
    delays = backoff()
    failing_since: float | None = None
    details: BaseException | None  # logged with its traceback: what failed unexpectedly
    stall_told = False

    def stalled(exc: NodeError | None, left: float) -> None:
        """A node call has been failing for a few seconds (exc), or answers again (None): said once, unless the
        outage was logged already."""
        nonlocal stall_told
        if exc is None and stall_told:
            stall_told = False
            log.info("%s %s answers again", follower.node_label, follower.describe_node(),
                     extra={"chain": follower.name})
        elif exc is not None and failing_since is None and not stall_told:
            stall_told = True
            log.warning("%s; retrying: the chain counts as down in %.0f s", exc, left, extra={"chain": follower.name})

    STALLED.set(stalled)  # in this task's context, which the session's calls (and its tasks) run in
    while True:
        started = time.monotonic()
        follower.progressed = False
        try:
            await session()
        except ChainRefused as refusal:
            await stay_stopped(follower, refusal)
            return
        except NodeError as exc:
            kind, problem, details = "node", f"{exc}", None
            if isinstance(exc, NodeProtocolError):
                metrics.MALFORMED.labels(follower.name, "rpc").inc()
        except Exception as exc:  # noqa: BLE001 -- isolate this chain, whatever failed
            store = isinstance(exc, StoreError) or type(exc).__module__.startswith(("sqlite3", "aiosqlite"))
            kind = "store" if store else "unexpected"
            problem, details = f"{type(exc).__name__}: {exc}", None if store else exc
        else:
            continue
        follower.connected = False
        metrics.NODE_UP.labels(follower.name).set(0)
        metrics.CHAIN_FAILURES.labels(follower.name, kind).inc()
        if time.monotonic() - started >= HEALTHY_SESSION_SECONDS:
            delays, failing_since = backoff(), None
        elif follower.progressed:  # a flaky node that still delivers: retry soon, but the outage goes on
            delays = backoff()
        delay = next(delays)
        stall_told = False  # the outage is told now, or was already
        if failing_since is None:
            failing_since = time.monotonic()
            log.warning("%s; this chain retries in %.1f s (other chains go on)", problem, delay,
                        exc_info=details, extra={"chain": follower.name})
        else:
            log.debug("still failing for %.0f s: %s; retry in %.1f s", time.monotonic() - failing_since, problem,
                      delay, extra={"chain": follower.name})
        follower._retry.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(follower._retry.wait(), delay)


async def stay_stopped(follower: Follower, refusal: ChainRefused) -> None:
    """Follow nothing more of this node, until cancelled (a reload that changes the chain's config, the daemon
    stopping): one CRITICAL line says why, `watcherd_chain_stopped` alerts, /readyz shows the chain not ready
    with the reason. The other chains, the API and delivery go on. Waiting here rather than returning keeps
    the follower's task alive, so the systemd watchdog does not restart the daemon into the same refusal."""
    follower.stopped = str(refusal)
    follower.connected = False
    stopped = metrics.CHAIN_STOPPED.labels(follower.name, refusal.reason)
    stopped.set(1)
    log.critical("%s; this chain stops (the others go on) until its config changes or watcherd restarts", refusal,
                 extra={"chain": follower.name})
    try:
        await asyncio.Event().wait()
    finally:
        stopped.set(0)
