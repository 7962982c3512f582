"""Per-chain bookkeeping: the cursor (the last block processed), the recent blocks the reorg walk-back compares
against, and the derivation indexes handed out to invoices."""

from __future__ import annotations

from watcherd.core.types import Cursor
from watcherd.exceptions import StoreError
from watcherd.store.db import Database

# the blocks kept below the cursor: the deepest reorg the walk-back can follow
KEEP_BLOCKS = 1000


class ChainQueries(Database):
    async def ensure_chain(self, chain: str) -> None:
        await self._write("INSERT INTO chains (name) VALUES (?) ON CONFLICT DO NOTHING", (chain,))

    async def cursor(self, chain: str) -> Cursor | None:
        row = await self._one("SELECT cursor_height, cursor_hash FROM chains WHERE name = ?", (chain,))
        if row is None or row[0] is None:
            return None
        return Cursor(row[0], row[1])

    async def set_cursor(self, chain: str, cursor: Cursor, keep_blocks: int = KEEP_BLOCKS) -> None:
        await self._write(
            "UPDATE chains SET cursor_height = ?, cursor_hash = ? WHERE name = ?",
            (cursor.height, cursor.hash, chain),
        )
        await self._write(
            """INSERT INTO blocks (chain, height, hash) VALUES (?, ?, ?)
               ON CONFLICT (chain, height) DO UPDATE SET hash = excluded.hash""",
            (chain, cursor.height, cursor.hash),
        )
        await self._write(
            "DELETE FROM blocks WHERE chain = ? AND (height > ? OR height <= ?)",
            (chain, cursor.height, cursor.height - keep_blocks),
        )

    async def record_assets(self, chain: str, assets: dict[str, int], native: str) -> None:
        """The decimals of each asset the chain offers, as configured now, and which is the chain's own coin."""
        for asset, decimals in assets.items():
            await self._write(
                """INSERT INTO assets (chain, asset, decimals, native) VALUES (?, ?, ?, ?) ON CONFLICT (chain, asset)
                   DO UPDATE SET decimals = excluded.decimals, native = excluded.native""",
                (chain, asset, decimals, int(asset == native)))

    async def known_assets(self) -> tuple[dict[str, dict[str, int]], dict[str, str]]:
        """For every chain ever configured: asset -> decimals, and its own coin."""
        known: dict[str, dict[str, int]] = {}
        natives: dict[str, str] = {}
        for chain, asset, decimals, native in await self._all("SELECT chain, asset, decimals, native FROM assets"):
            known.setdefault(chain, {})[asset] = decimals
            if native:
                natives[chain] = asset
        return known, natives

    async def block_hash(self, chain: str, height: int) -> str | None:
        row = await self._one("SELECT hash FROM blocks WHERE chain = ? AND height = ?", (chain, height))
        return row[0] if row else None

    async def allocate_address_index(self, chain: str) -> tuple[int, int]:
        """The chain's next derivation index, taken; and how many of the newest issued addresses in a row,
        this one included, have never received anything, in one statement."""
        row = await self._returning(
            """UPDATE chains SET next_address_index = next_address_index + 1 WHERE name = ?
               RETURNING next_address_index - 1, next_address_index - 1 - last_used_index""", (chain,))
        if row is None:
            raise StoreError(f"unknown chain {chain!r}")
        return int(row[0]), int(row[1])

    async def mark_address_used(self, chain: str, derivation_index: int) -> None:
        await self._write(
            "UPDATE chains SET last_used_index = ? WHERE name = ? AND last_used_index < ?",
            (derivation_index, chain, derivation_index),
        )
