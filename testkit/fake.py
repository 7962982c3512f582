"""An in-memory chain adapter for driving the core in tests: addresses derived from a hash, no node."""

from __future__ import annotations

import asyncio
import hashlib
from decimal import Decimal

from watcherd.core.chain import ChainSink
from watcherd.core.types import Watchlist


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
