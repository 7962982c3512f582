"""The small interface between chain adapters and the chain-agnostic core.

An adapter turns node traffic into a few frozen values (a transaction seen, a block connected or
disconnected) and hands them to the core; the core never knows which chain it talks to.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

from .. import metrics
from ..exceptions import NodeError, NodeProtocolError
from ..retry import backoff
from ..store import Cursor

if TYPE_CHECKING:
    from ..processor import Processor

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Received:
    """An output of a transaction that pays a watched key."""

    key: bytes
    vout: int  # the output's index (or a log index: whatever makes (txid, vout) unique on the chain)
    amount: int
    asset: str | None = None  # None: the chain's native asset; else a token symbol from `assets`
    # an id the chain's rules make one-spend-only across transactions (Monero's one-time output key): a second
    # output with the same one pays nothing, even after a restart (Monero's "burning bug")
    output_key: bytes | None = None


@dataclass(frozen=True, slots=True)
class ChainTx:
    txid: str
    received: tuple[Received, ...]
    spent: tuple[bytes, ...] = ()  # opaque identifiers of what the tx consumes (outpoints): conflicts share one


@dataclass(frozen=True, slots=True)
class ChainBlock:
    height: int
    hash: str
    prev_hash: str
    txs: tuple[ChainTx, ...]  # only the transactions that concern watched keys or watched spends


@dataclass
class Watchlist:
    """What the adapter matches in memory: watched keys, and the spends of payments that still count.

    `spends` maps a consumed outpoint to the paying txid that consumes it; another transaction consuming the
    same outpoint is a conflict (double spend, RBF replacement) that replaces the payment.
    """

    keys: set[bytes] = field(default_factory=set)
    spends: dict[bytes, str] = field(default_factory=dict)

    def conflicts(self, txid: str, spent: Iterable[bytes]) -> set[str]:
        return {other for o in spent if (other := self.spends.get(o)) is not None and other != txid}

    def concerns(self, txid: str, received: bool, spent: Iterable[bytes]) -> bool:
        return received or bool(self.conflicts(txid, spent))


class AdapterBase:
    """What every adapter exposes to the core, taken from its chain's config table."""

    decimals: int  # of the native asset

    def __init__(self, config: Any, tokens: dict[str, int] | None = None):
        self.config = config
        self.name: str = config.name
        self.asset: str = config.asset
        self.assets = {config.asset: self.decimals, **(tokens or {})}
        self.confirmations: int = config.confirmations
        self.underpaid_tolerance_percent = Decimal(config.underpaid_tolerance_percent)
        self.invoice_expiry_seconds: int = config.invoice_expiry_seconds
        self.watchlist = Watchlist()
        self.connected = False  # the node answered on the last attempt
        self.node_tip: int | None = None


class ChainAdapter(Protocol):
    name: str
    asset: str  # the native asset
    decimals: int
    assets: dict[str, int]  # every asset an invoice may ask for -> its decimals (the native one included)
    confirmations: int
    underpaid_tolerance_percent: Decimal
    invoice_expiry_seconds: int
    watchlist: Watchlist

    def derive(self, index: int) -> tuple[str, bytes]:
        """The address for derivation index `index` and the watch key it is matched on."""

    def payment_uri(self, address: str, amount: int, asset: str) -> str: ...

    async def run(self, processor: Processor) -> None:
        """Follow the node forever: catch up from the cursor, then react to its feed; reconnect on loss."""


async def follow_forever(adapter: ChainAdapter, session: Callable[[], Awaitable[None]]) -> None:
    """Run `session` (one connected stretch with the node) again and again. Node errors are logged, counted and
    retried with backoff: the next session catches up from the cursor, so nothing is lost meanwhile. Any other
    exception propagates and takes the daemon down (systemd restarts it)."""
    delays = backoff()
    while True:
        try:
            await session()
        except NodeError as exc:
            adapter.connected = False  # type: ignore[attr-defined]
            metrics.NODE_UP.labels(adapter.name).set(0)
            if isinstance(exc, NodeProtocolError):
                metrics.MALFORMED.labels(adapter.name, "rpc").inc()
            delay = next(delays)
            log.warning("%s; reconnecting in %.1f s", exc, delay, extra={"chain": adapter.name})
            await asyncio.sleep(delay)
        else:
            delays = backoff()


async def walk_back(
    adapter: ChainAdapter, processor: Processor, cursor: Cursor,
    main_chain_hash: Callable[[int], Awaitable[str | None]], parent_of: Callable[[Cursor], Awaitable[str]],
) -> tuple[Cursor, int]:
    """Disconnect our blocks until the cursor is on the node's main chain again (the common ancestor).

    `main_chain_hash(height)` is the node's main-chain hash there (None if it has none); `parent_of(cursor)`
    the parent hash of the cursor's block, asked only when the store no longer remembers it. Returns the
    new cursor and how many blocks were disconnected."""
    depth = 0
    while await main_chain_hash(cursor.height) != cursor.hash:
        parent_hash = await processor.store.block_hash(adapter.name, cursor.height - 1) or await parent_of(cursor)
        parent = Cursor(cursor.height - 1, parent_hash)
        await processor.block_disconnected(adapter.name, cursor.height, cursor.hash, parent)
        cursor = parent
        depth += 1
    if depth:
        metrics.REORGS.labels(adapter.name).inc()
        metrics.REORG_DEPTH.labels(adapter.name).observe(depth)
        log.warning("reorg: %d block(s) disconnected, common ancestor %d %s", depth, cursor.height, cursor.hash,
                    extra={"chain": adapter.name})
    return cursor, depth
