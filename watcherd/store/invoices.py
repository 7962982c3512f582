"""Invoices: creation, status updates, and the lookups the API and the ledger need."""

from __future__ import annotations

import json

from watcherd.core.invoices import Status
from watcherd.store.db import Database
from watcherd.store.rows import InvoiceRow, invoice_from_row


class InvoiceQueries(Database):
    async def insert_invoice(self, inv: InvoiceRow) -> None:
        await self._write(
            """INSERT INTO invoices (id, chain, asset, address, watch_key, derivation_index, amount,
                   confirmations_required, tolerance_percent, status, exception, order_id, metadata,
                   created_at, expires_at, cancelled_at, paid_at, updated_at, idempotency_key, request_digest)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (
                inv.id, inv.chain, inv.asset, inv.address, inv.watch_key, inv.derivation_index, str(inv.amount),
                inv.confirmations_required, str(inv.tolerance_percent), inv.status.value, inv.exception,
                inv.order_id, json.dumps(inv.metadata), inv.created_at, inv.expires_at, inv.cancelled_at,
                inv.paid_at, inv.updated_at, inv.idempotency_key, inv.request_digest,
            ),
        )

    async def update_invoice(
        self, invoice_id: str, *, status: Status, exception: str | None, paid_at: int | None,
        cancelled_at: int | None, digest: str, now: int,
    ) -> None:
        await self._write(
            """UPDATE invoices SET status = ?, exception = ?, paid_at = ?, cancelled_at = ?, digest = ?,
                   updated_at = ? WHERE id = ?""",
            (status.value, exception, paid_at, cancelled_at, digest, now, invoice_id),
        )

    async def invoice_by_idempotency_key(self, key: str) -> InvoiceRow | None:
        row = await self._one("SELECT * FROM invoices WHERE idempotency_key = ?", (key,))
        return invoice_from_row(row) if row else None

    async def invoice(self, invoice_id: str) -> InvoiceRow | None:
        row = await self._one("SELECT * FROM invoices WHERE id = ?", (invoice_id,))
        return invoice_from_row(row) if row else None

    async def invoices(
        self, *, status: str | None = None, chain: str | None = None, order_id: str | None = None,
        limit: int = 100, before: str | None = None,
    ) -> list[InvoiceRow]:
        where, params = [], []
        for column, value in (("status", status), ("chain", chain), ("order_id", order_id)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if before is not None:
            where.append("(created_at, id) < (SELECT created_at, id FROM invoices WHERE id = ?)")
            params.append(before)
        sql = "SELECT * FROM invoices"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
        return [invoice_from_row(r) for r in await self._all(sql, (*params, limit))]

    async def watch_keys(self, chain: str) -> list[bytes]:
        """Every address ever issued on the chain: late payments to old invoices must still be seen."""
        rows = await self._all("SELECT watch_key FROM invoices WHERE chain = ?", (chain,))
        return [bytes(r[0]) for r in rows]

    async def invoice_by_key(self, chain: str, watch_key: bytes) -> InvoiceRow | None:
        row = await self._one("SELECT * FROM invoices WHERE chain = ? AND watch_key = ?", (chain, watch_key))
        return invoice_from_row(row) if row else None

    async def open_invoices(self, chain: str, asset: str, expired_since: int) -> list[InvoiceRow]:
        """Invoices that may still receive money worth reconciling: unpaid, processing, or expired lately."""
        rows = await self._all(
            """SELECT * FROM invoices WHERE chain = :chain AND asset = :asset
               AND (status IN ('unpaid', 'processing') OR (status = 'expired' AND expires_at >= :since))""",
            {"chain": chain, "asset": asset, "since": expired_since},
        )
        return [invoice_from_row(r) for r in rows]

    async def expiring(self, now: int) -> list[tuple[str, str]]:
        """(invoice id, chain) of the unpaid invoices whose expiry has passed."""
        rows = await self._all(
            "SELECT id, chain FROM invoices WHERE status = ? AND expires_at <= ?", (Status.UNPAID.value, now)
        )
        return [(r[0], r[1]) for r in rows]

    async def invoice_counts(self) -> list[tuple[str, str, int]]:
        return [
            (r[0], r[1], r[2])
            for r in await self._all("SELECT chain, status, COUNT(*) FROM invoices GROUP BY chain, status")
        ]
