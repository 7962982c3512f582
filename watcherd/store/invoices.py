"""Invoices: creation, status updates, and the lookups the API and the ledger need."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from watcherd.core.invoices import Status
from watcherd.store.db import Database
from watcherd.store.rows import InvoiceRow, MethodRow, invoice_from_row, method_from_row


class InvoiceQueries(Database):
    async def insert_invoice(self, inv: InvoiceRow, methods: list[MethodRow]) -> None:
        await self._write(
            """INSERT INTO invoices (id, currency, decimals, amount, tolerance_percent, status, exception, order_id,
                   metadata, redirect_url, created_at, expires_at, cancelled_at, paid_at, updated_at, idempotency_key,
                   request_digest, compat, digest, api)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (
                inv.id, inv.currency, inv.decimals, str(inv.amount), str(inv.tolerance_percent), inv.status.value,
                inv.exception,
                inv.order_id, json.dumps(inv.metadata), inv.redirect_url, inv.created_at, inv.expires_at,
                inv.cancelled_at, inv.paid_at, inv.updated_at, inv.idempotency_key, inv.request_digest,
                json.dumps(inv.compat), inv.digest, inv.api,
            ),
        )
        for position, m in enumerate(methods):
            await self._write(
                """INSERT INTO methods (invoice_id, chain, asset, rate, amount, confirmations_required, activated_at,
                       address, watch_key, derivation_index, position) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (inv.id, m.chain, m.asset, str(m.rate), str(m.amount), m.confirmations_required, m.activated_at,
                 m.address, m.watch_key, m.derivation_index, position),
            )

    async def activate(self, method: MethodRow, address: str, watch_key: bytes, index: int, now: int) -> None:
        await self._write(
            """UPDATE methods SET activated_at = ?, address = ?, watch_key = ?, derivation_index = ?
               WHERE invoice_id = ? AND chain = ? AND asset = ? AND activated_at IS NULL""",
            (now, address, watch_key, index, method.invoice_id, method.chain, method.asset),
        )

    async def methods_for(self, invoice_id: str) -> list[MethodRow]:
        return (await self.methods_of([invoice_id])).get(invoice_id, [])

    async def methods_of(self, invoice_ids: Sequence[str]) -> dict[str, list[MethodRow]]:
        """Each invoice's methods, in the order they were offered."""
        found: dict[str, list[MethodRow]] = {}
        rows = await self._all_in("SELECT * FROM methods WHERE invoice_id IN ({keys}) ORDER BY invoice_id, position",
                                  invoice_ids)
        for r in rows:
            found.setdefault(r["invoice_id"], []).append(method_from_row(r))
        return found

    async def update_invoice(
        self, invoice_id: str, *, status: Status, exception: str | None, paid_at: int | None,
        cancelled_at: int | None, digest: str, now: int,
    ) -> None:
        await self._write(
            """UPDATE invoices SET status = ?, exception = ?, paid_at = ?, cancelled_at = ?, digest = ?,
                   updated_at = ? WHERE id = ?""",
            (status.value, exception, paid_at, cancelled_at, digest, now, invoice_id),
        )

    async def set_manual_status(self, invoice_id: str, status: Status | None) -> None:
        await self._write("UPDATE invoices SET manual_status = ? WHERE id = ?",
                          (status.value if status else None, invoice_id))

    async def invoice_by_idempotency_key(self, key: str) -> InvoiceRow | None:
        row = await self._one("SELECT * FROM invoices WHERE idempotency_key = ?", (key,))
        return invoice_from_row(row) if row else None

    async def invoice(self, invoice_id: str, *, for_update: bool = False) -> InvoiceRow | None:
        """`for_update`, inside a transaction: the row stays locked until it ends, so that two instances on one
        PostgreSQL judging the same invoice at once take turns, the second reading what the first committed
        (SQLite's transactions take turns already)."""
        lock = " FOR UPDATE" if for_update and self.dialect == "postgres" else ""
        row = await self._one(f"SELECT * FROM invoices WHERE id = ?{lock}", (invoice_id,))
        return invoice_from_row(row) if row else None

    async def invoices_by_id(self, invoice_ids: Sequence[str]) -> dict[str, InvoiceRow]:
        rows = await self._all_in("SELECT * FROM invoices WHERE id IN ({keys})", invoice_ids)
        return {r["id"]: invoice_from_row(r) for r in rows}

    async def invoices(
        self, *, status: str | None = None, chain: str | None = None, order_id: str | None = None,
        limit: int = 100, before: str | None = None, statuses: Sequence[str] = (), order_ids: Sequence[str] = (),
        created_from: int | None = None, created_to: int | None = None, text: str | None = None, offset: int = 0,
        compat_only: bool = False,
    ) -> list[InvoiceRow]:
        """Newest first. `statuses` / `order_ids`: any of them; `created_from` / `created_to`: unix seconds, both
        ends included; `text`: a case-insensitive substring of the id, the order id or the metadata JSON;
        `compat_only`: those a compatible API created."""
        # the order is an index's (invoices_created; invoices_compat, whose condition is spelled exactly so that
        # both planners see it applies): a page reads its rows, not the whole table sorted
        where: list[str] = ["api <> 'native'"] if compat_only else []
        params: list[Any] = []
        for column, value in (("status", status), ("order_id", order_id)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        for column, values in (("status", statuses), ("order_id", order_ids)):
            if values:
                where.append(f"{column} IN ({', '.join('?' * len(values))})")
                params.extend(values)
        for bound, time in ((">=", created_from), ("<=", created_to)):
            if time is not None:
                where.append(f"created_at {bound} ?")
                params.append(time)
        if text:
            escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            where.append("lower(id || ' ' || coalesce(order_id, '') || ' ' || metadata) LIKE ? ESCAPE '\\'")
            params.append(f"%{escaped}%")
        if chain is not None:
            where.append("EXISTS (SELECT 1 FROM methods m WHERE m.invoice_id = invoices.id AND m.chain = ?)")
            params.append(chain)
        if before is not None:
            where.append("(created_at, id) < (SELECT created_at, id FROM invoices WHERE id = ?)")
            params.append(before)
        sql = "SELECT * FROM invoices"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?"
        return [invoice_from_row(r) for r in await self._all(sql, (*params, limit, offset))]

    async def keys_from(self, chain: str, index: int) -> list[tuple[int, bytes]]:
        """(derivation index, watch key) of the chain's addresses issued at `index` or later."""
        rows = await self._all(
            """SELECT derivation_index, watch_key FROM methods
               WHERE chain = ? AND derivation_index >= ? AND watch_key IS NOT NULL""", (chain, index))
        return [(int(r[0]), bytes(r[1])) for r in rows]

    async def method_by_key(self, chain: str, watch_key: bytes) -> MethodRow | None:
        row = await self._one("SELECT * FROM methods WHERE chain = ? AND watch_key = ?", (chain, watch_key))
        return method_from_row(row) if row else None

    async def open_invoices(self, chain: str, asset: str, expired_since: int) -> list[tuple[str, str, bytes]]:
        """(invoice id, address, watch key) of the `asset` methods of invoices that may still receive money worth
        reconciling: unpaid, processing, or expired lately."""
        rows = await self._all(
            """SELECT i.id, m.address, m.watch_key FROM methods m JOIN invoices i ON i.id = m.invoice_id
               WHERE m.chain = :chain AND m.asset = :asset AND m.activated_at IS NOT NULL
               AND (i.status IN ('unpaid', 'processing') OR (i.status = 'expired' AND i.expires_at >= :since))
               ORDER BY i.id""",
            {"chain": chain, "asset": asset, "since": expired_since},
        )
        return [(r[0], r[1], bytes(r[2])) for r in rows]

    async def expiring(self, now: int) -> list[tuple[str, list[str]]]:
        """The unpaid invoices whose expiry has passed, each with the chains of its picked methods."""
        rows = await self._all(
            """SELECT i.id, m.chain FROM invoices i
               LEFT JOIN methods m ON m.invoice_id = i.id AND m.activated_at IS NOT NULL
               WHERE i.status = ? AND i.expires_at <= ? ORDER BY i.expires_at, i.id""",
            (Status.UNPAID.value, now),
        )
        due: dict[str, list[str]] = {}
        for invoice_id, chain in rows:
            due.setdefault(invoice_id, [])
            if chain is not None:
                due[invoice_id].append(chain)
        return list(due.items())

    async def invoice_counts(self) -> list[tuple[str, str, int]]:
        """(chain, status, count): by the chains of their picked methods ("" for none picked yet)."""
        rows = await self._all(
            """SELECT COALESCE(m.chain, ''), i.status, COUNT(DISTINCT i.id) FROM invoices i
               LEFT JOIN methods m ON m.invoice_id = i.id AND m.activated_at IS NOT NULL GROUP BY 1, 2"""
        )
        return [(r[0], r[1], r[2]) for r in rows]
