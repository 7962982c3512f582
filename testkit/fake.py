"""In memory, for tests: a chain adapter driving the core (addresses derived from a hash, no node), and a node
that the shared follower follows (blocks a test mines, reorganises or serves from another network)."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from decimal import Decimal

from watcherd.chains.follow import Follower
from watcherd.core.chain import ChainSink
from watcherd.core.types import ChainBlock, ChainTx, Cursor, Watchlist
from watcherd.exceptions import ChainRefused, NodeUnavailable


class FakeChain:
    asset = "FAKE"
    decimals = 8

    def __init__(self, name: str = "fake", confirmations: int = 2, tolerance: Decimal = Decimal(0),
                 expiry: int = 900):
        self.name = name
        self.confirmations = confirmations
        self.underpaid_tolerance_percent = tolerance
        self.invoice_expiry_seconds = expiry
        self.watchlist = Watchlist()
        self.assets = {"FAKE": 8, "TOKEN": 6}
        self.connected = True
        self.stopped: str | None = None
        self.node_tip: int | None = None

    def derive(self, index: int) -> tuple[str, bytes]:
        key = hashlib.sha256(f"{self.name}/{index}".encode()).digest()[:20]
        return f"fake1{key.hex()}", key

    async def address(self, index: int) -> tuple[str, bytes]:
        return self.derive(index)

    def payment_uri(self, address: str, amount: int, asset: str) -> str:
        return f"fake:{address}?amount={amount}"

    async def run(self, sink: ChainSink) -> None:
        await asyncio.Event().wait()

    async def close(self) -> None:
        pass

    def retry_now(self) -> None:
        pass


@dataclass(frozen=True)
class FakeNodeConfig:
    """The chain keys the shared follower reads."""

    name: str = "fake"
    asset: str = "FAKE"
    network: str = "fakenet"
    confirmations: int = 1
    underpaid_tolerance_percent: Decimal = Decimal(0)
    invoice_expiry_seconds: int = 900
    start_height: int | None = None
    max_reorg_depth: int = 100


class FakeNode(Follower):
    """The shared follower (chains/follow.py) over an in-memory node whose main chain is blocks "h0" ... "h<base>"
    (the cursor `open_core` sets is h100), then what the test mines. `reorg` replaces the top blocks,
    `serves` is the network the node answers for, `failing` makes its block reads fail like a node gone away."""

    decimals = 8

    def __init__(self, config: FakeNodeConfig, base: int = 100):
        super().__init__(config)
        self.hashes = [f"h{n}" for n in range(base + 1)]
        self.blocks: dict[str, ChainBlock] = {}  # every block ever mined, by hash (reorganised ones too)
        self.serves = config.network
        self.failing = False
        self.network_checks = 0
        self._forks = 0

    def mine(self, *txs: ChainTx) -> ChainBlock:
        height = len(self.hashes)
        block = ChainBlock(height, f"h{height}" + "'" * self._forks, self.hashes[-1], txs)
        self.blocks[block.hash] = block
        self.hashes.append(block.hash)
        return block

    def reorg(self, depth: int, *blocks: tuple[ChainTx, ...]) -> list[ChainBlock]:
        """Replace the top `depth` blocks by a longer branch: one new block per tuple of transactions given,
        then empty ones up to depth + 1."""
        del self.hashes[-depth:]
        self._forks += 1
        contents = list(blocks) + [()] * (depth + 1 - len(blocks))
        return [self.mine(*txs) for txs in contents]

    async def check_network(self) -> None:
        self.network_checks += 1
        if self.serves != self.config.network:
            raise ChainRefused(f"chains.{self.name}: the node serves {self.serves}, the config says "
                               f"network = {self.config.network!r}")

    async def tip_height(self) -> int:
        return len(self.hashes) - 1

    async def best_hash(self) -> str:
        return self.hashes[-1]

    async def hash_at(self, height: int) -> str | None:
        if self.failing:
            raise NodeUnavailable("getblockhash: connection refused")
        return self.hashes[height] if height < len(self.hashes) else None

    async def parent_hash(self, block: Cursor) -> str:
        return self.blocks[block.hash].prev_hash

    async def next_block(self, sink: ChainSink, cursor: Cursor) -> ChainBlock | None:
        block = self.blocks.get(await self.hash_at(cursor.height + 1) or "")
        return block if block is not None and block.prev_hash == cursor.hash else None

    async def pool_txids(self) -> set[str]:
        return set()

    async def pool_txs(self, txids: list[str]) -> dict[str, ChainTx | None]:
        return {}
