"""The two narrow interfaces between a chain kind and the core.

A `ChainAdapter` follows one node and reports what it sees to a `ChainSink`, bound to its chain by the ledger;
the core never knows which chain it talks to, and an adapter never reaches into the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from watcherd.core.types import ChainBlock, ChainTx, Cursor, Watchlist


@dataclass(frozen=True, slots=True)
class OpenInvoice:
    """An invoice that may still receive money worth reconciling (Ethereum's balance check reads these)."""

    id: str
    address: str
    watch_key: bytes


class ChainSink(Protocol):
    """What an adapter may tell the core, and the few reads its follow loop needs. Each write is one atomic
    store transaction holding the facts and their consequences (status changes, outbox events)."""

    async def cursor(self) -> Cursor | None: ...

    async def block_hash(self, height: int) -> str | None:
        """The hash we connected at `height`, if we still remember it (the reorg walk-back compares it)."""

    async def set_cursor(self, cursor: Cursor) -> None:
        """Where the chain starts on its very first run."""

    async def tx_seen(self, tx: ChainTx) -> None: ...

    async def block_connected(self, block: ChainBlock) -> None: ...

    async def block_disconnected(self, height: int, block_hash: str, parent: Cursor) -> None: ...

    async def mempool_synced(self, known: set[str]) -> None:
        """The node's pool, read at our cursor: an unconfirmed payment not in `known` was dropped."""

    async def unconfirmed_txids(self) -> list[str]: ...

    async def refresh_watchlist(self) -> None:
        """Watch the addresses handed out since (by any instance on the store): before matching a block or a
        pool diff, so that nothing paid to them is missed."""

    def set_final_height(self, height: int) -> None:
        """Chains with finality: payments at or below `height` are confirmed (applied at the next block)."""

    async def open_invoices(self, asset: str, expired_since: int) -> list[OpenInvoice]: ...

    async def mined_totals(self, asset: str, invoice_ids: list[str], height: int) -> dict[str, int]:
        """Per invoice, the `asset` payments that still count and were mined at or below `height`."""


class ChainAdapter(Protocol):
    name: str
    asset: str  # the native asset
    decimals: int
    assets: dict[str, int]  # every asset an invoice may ask for -> its decimals (the native one included)
    confirmations: int  # FINALITY (0) on a chain that confirms at the node's finalized height
    underpaid_tolerance_percent: Decimal
    invoice_expiry_seconds: int
    watchlist: Watchlist
    connected: bool  # the node answered on the last attempt
    stopped: str | None  # why the chain no longer follows its node (another network, a reorg too deep)
    node_tip: int | None  # the node's best height, once known

    async def address(self, index: int) -> tuple[str, bytes]:
        """The address for derivation index `index` and the watch key it is matched on."""

    def payment_uri(self, address: str, amount: int, asset: str) -> str: ...

    async def run(self, sink: ChainSink) -> None:
        """Follow the node forever: catch up from the cursor, then react to its feed; reconnect on loss."""

    async def close(self) -> None: ...

    def retry_now(self) -> None:
        """Cut a failed follower's backoff short (the store takes writes again)."""
