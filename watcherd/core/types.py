"""The frozen values chain adapters emit and the core consumes; no I/O, nothing chain-specific."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a chain's processing stands: the last block whose effects are committed."""

    height: int
    hash: str


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
    # the block's own timestamp (unix seconds), if the chain gives one: a payment we first meet in a block (we
    # were down, or the node was) counts as seen then, not when we caught up
    time: int | None = None
    # Each of `txs` reports all it pays watched keys, and its mined amounts: a payment recorded for one of these
    # transactions that its `received` does not name stops counting (an EVM chain, where a pending payment was
    # read from calldata and the block's logs tell what was paid; on UTXO chains a txid fixes its outputs)
    authoritative: bool = False


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
