"""Payments and the outpoints they spend: recording, replacement, reorgs, and which invoices a new tip confirms
or a lower one unconfirms."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from watcherd.exceptions import StoreError
from watcherd.store.db import Database
from watcherd.store.rows import PaymentRow, payment_from_row


class PaymentQueries(Database):
    async def payments_for(self, invoice_id: str) -> list[PaymentRow]:
        return (await self.payments_of([invoice_id])).get(invoice_id, [])

    async def payments_of(self, invoice_ids: Sequence[str]) -> dict[str, list[PaymentRow]]:
        """Each invoice's payments, oldest first, with the rate and confirmations of the method each pays."""
        rows = await self._all_in(
            """SELECT p.*, m.rate AS method_rate, m.confirmations_required AS method_required FROM payments p
               JOIN methods m ON m.invoice_id = p.invoice_id AND m.chain = p.chain AND m.asset = p.method_asset
               WHERE p.invoice_id IN ({keys}) ORDER BY p.first_seen_at, p.txid, p.vout""",
            invoice_ids,
        )
        found: dict[str, list[PaymentRow]] = {}
        for r in rows:
            found.setdefault(r["invoice_id"], []).append(payment_from_row(r))
        return found

    async def upsert_payment(
        self, chain: str, invoice_id: str, asset: str, txid: str, vout: int, amount: int, now: int,
        block_height: int | None = None, block_hash: str | None = None, output_key: bytes | None = None,
        method_asset: str | None = None,
    ) -> None:
        """Record a payment (seen again, it counts again); a block puts it in that block with the amount it
        says, while a mempool sighting (block_height None) never takes a mined payment out of its block nor
        changes its amount."""
        await self._write(
            """INSERT INTO payments (chain, txid, vout, invoice_id, asset, amount, first_seen_at, block_height,
                   block_hash, replaced, output_key, method_asset)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?)
               ON CONFLICT (chain, txid, vout) DO UPDATE SET replaced = 0,
                   amount = CASE WHEN excluded.block_hash IS NULL THEN payments.amount ELSE excluded.amount END,
                   block_height = COALESCE(excluded.block_height, payments.block_height),
                   block_hash = COALESCE(excluded.block_hash, payments.block_hash),
                   output_key = COALESCE(excluded.output_key, payments.output_key)""",
            (chain, txid, vout, invoice_id, asset, str(amount), now, block_height, block_hash, output_key,
             method_asset or asset),
        )

    async def counting_outputs(self, chain: str, txid: str) -> dict[int, tuple[str, int]]:
        """The outputs of `txid` recorded as payments that still count (not replaced): vout -> (invoice, amount)."""
        rows = await self._all(
            "SELECT vout, invoice_id, amount FROM payments WHERE chain = ? AND txid = ? AND replaced = 0",
            (chain, txid),
        )
        return {int(r[0]): (r[1], int(r[2])) for r in rows}

    async def payment_with_output_key(self, chain: str, output_key: bytes) -> tuple[str, int, int | None] | None:
        """(txid, vout, block height) of the payment still counting that holds this one-time output key."""
        row = await self._one(
            """SELECT txid, vout, block_height FROM payments
               WHERE chain = ? AND output_key = ? AND replaced = 0 LIMIT 1""",
            (chain, output_key),
        )
        return None if row is None else (row[0], row[1], row[2])

    async def replace_payment(self, chain: str, txid: str, vout: int) -> str:
        """Mark one output's payment replaced; returns its invoice."""
        row = await self._one("SELECT invoice_id FROM payments WHERE chain = ? AND txid = ? AND vout = ?",
                              (chain, txid, vout))
        if row is None:
            raise StoreError(f"no payment {txid}:{vout} on {chain!r}")
        await self._write(
            """UPDATE payments SET replaced = 1, block_height = NULL, block_hash = NULL
               WHERE chain = ? AND txid = ? AND vout = ?""",
            (chain, txid, vout),
        )
        return str(row[0])

    async def set_payment_confirmed_at(self, chain: str, txid: str, vout: int, when: int | None) -> None:
        await self._write(
            "UPDATE payments SET confirmed_at = ? WHERE chain = ? AND txid = ? AND vout = ?",
            (when, chain, txid, vout),
        )

    async def replace_tx(self, chain: str, txid: str) -> list[str]:
        """Mark every payment of `txid` replaced; returns the invoices concerned."""
        rows = await self._all(
            "SELECT DISTINCT invoice_id FROM payments WHERE chain = ? AND txid = ? AND replaced = 0 ORDER BY 1",
            (chain, txid),
        )
        await self._write(
            """UPDATE payments SET replaced = 1, block_height = NULL, block_hash = NULL
               WHERE chain = ? AND txid = ?""",
            (chain, txid),
        )
        return [r[0] for r in rows]

    async def unconfirm_block(self, chain: str, block_hash: str) -> list[str]:
        """A block left the main chain: its payments go back to unconfirmed."""
        rows = await self._all(
            "SELECT DISTINCT invoice_id FROM payments WHERE chain = ? AND block_hash = ? ORDER BY 1",
            (chain, block_hash),
        )
        await self._write(
            """UPDATE payments SET block_height = NULL, block_hash = NULL, confirmed_at = NULL
               WHERE chain = ? AND block_hash = ?""",
            (chain, block_hash),
        )
        return [r[0] for r in rows]

    async def unconfirmed_txids(self, chain: str) -> list[str]:
        rows = await self._all(
            "SELECT DISTINCT txid FROM payments WHERE chain = ? AND block_height IS NULL AND replaced = 0 ORDER BY 1",
            (chain,),
        )
        return [r[0] for r in rows]

    # A payment is confirmed at `tip` when its block is at or below the invoice's threshold height: the tip
    # less its required confirmations (plus one), or on a chain with finality (required 0) the final height.
    _THRESHOLD = ("CASE m.confirmations_required WHEN 0 THEN CAST(:final AS BIGINT)"
                  " ELSE CAST(:tip AS BIGINT) - m.confirmations_required + 1 END")
    _METHOD = "JOIN methods m ON m.invoice_id = p.invoice_id AND m.chain = p.chain AND m.asset = p.method_asset"

    async def invoices_gaining_confirmation(self, chain: str, tip: int, final: int) -> list[str]:
        """Invoices with a mined payment that the new tip (or final height) confirms."""
        rows = await self._all(
            f"""SELECT DISTINCT p.invoice_id FROM payments p {self._METHOD}
                WHERE p.chain = :chain AND p.confirmed_at IS NULL AND p.replaced = 0
                  AND p.block_height IS NOT NULL AND p.block_height <= {self._THRESHOLD} ORDER BY 1""",
            {"chain": chain, "tip": tip, "final": final},
        )
        return [r[0] for r in rows]

    async def invoices_losing_confirmation(self, chain: str, tip: int, final: int) -> list[str]:
        """Invoices with a confirmed payment that a lower tip (after a reorg) no longer confirms."""
        row = await self._one("SELECT MAX(confirmations_required) FROM methods WHERE chain = ?", (chain,))
        deepest = (row[0] if row is not None else None) or 0  # MAX() over no invoices is NULL
        rows = await self._all(
            f"""SELECT DISTINCT p.invoice_id FROM payments p {self._METHOD}
                WHERE p.chain = :chain AND p.block_height > :lowest AND p.confirmed_at IS NOT NULL
                  AND p.block_height > {self._THRESHOLD} ORDER BY 1""",
            {"chain": chain, "tip": tip, "final": final, "lowest": min(tip, final) - deepest - 1},
        )
        return [r[0] for r in rows]

    async def add_spends(self, chain: str, txid: str, outpoints: Iterable[bytes]) -> None:
        for outpoint in outpoints:
            await self._write(
                "INSERT INTO spends (chain, outpoint, txid) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                (chain, outpoint, txid),
            )

    async def spends(self, chain: str) -> list[tuple[bytes, str]]:
        """Outpoints spent by payments that still count: a conflicting spend replaces them."""
        rows = await self._all(
            """SELECT s.outpoint, s.txid FROM spends s WHERE s.chain = ? AND EXISTS (
                   SELECT 1 FROM payments p WHERE p.chain = s.chain AND p.txid = s.txid AND p.replaced = 0)""",
            (chain,),
        )
        return [(bytes(r[0]), r[1]) for r in rows]

    async def prune_spends(self, chain: str, buried_at: int, limit: int = 2000) -> list[tuple[bytes, str]]:
        """Forget up to `limit` spent outpoints that can no longer replace anything: every payment of their
        transaction was replaced, or mined at or below `buried_at` (deeper than any reorg we follow). Returns
        them, for the watch list in memory."""
        rows = await self._all(
            """SELECT s.outpoint, s.txid FROM spends s WHERE s.chain = ? AND NOT EXISTS (
                   SELECT 1 FROM payments p WHERE p.chain = s.chain AND p.txid = s.txid AND p.replaced = 0
                   AND (p.block_height IS NULL OR p.block_height > ?))
               LIMIT ?""",
            (chain, buried_at, limit),
        )
        for outpoint, txid in rows:
            await self._write("DELETE FROM spends WHERE chain = ? AND outpoint = ? AND txid = ?",
                              (chain, outpoint, txid))
        return [(bytes(r[0]), r[1]) for r in rows]

    async def mined_totals(self, chain: str, asset: str, invoice_ids: list[str], height: int) -> dict[str, int]:
        """Per invoice, the `asset` payments that still count and were mined at or below `height`."""
        totals: dict[str, int] = {}
        for start in range(0, len(invoice_ids), 500):  # SQLite's bound-parameter limit
            chunk = invoice_ids[start:start + 500]
            rows = await self._all(
                f"""SELECT invoice_id, amount FROM payments WHERE chain = ? AND asset = ? AND method_asset = asset
                    AND replaced = 0
                    AND block_height IS NOT NULL AND block_height <= ?
                    AND invoice_id IN ({", ".join("?" * len(chunk))})""",
                (chain, asset, height, *chunk),
            )
            for invoice_id, amount in rows:
                totals[invoice_id] = totals.get(invoice_id, 0) + int(amount)
        return totals
