"""The outbox: events written in the same transaction as the change they report, and one delivery row per
event and transport, retried until delivered or given up on."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from watcherd.store.db import Database
from watcherd.store.rows import Delivery


class OutboxQueries(Database):
    async def add_event(
        self, event_id: str, invoice_id: str, chain: str, type_: str, created_at: int, payload: str,
        transports: Iterable[str], now: float,
    ) -> int:
        row = await self._returning(
            """INSERT INTO events (id, invoice_id, chain, type, created_at, payload) VALUES (?, ?, ?, ?, ?, ?)
               RETURNING seq""",
            (event_id, invoice_id, chain, type_, created_at, payload),
        )
        assert row is not None  # an INSERT ... RETURNING answers its row
        seq = int(row[0])
        for transport in transports:
            await self._write(
                """INSERT INTO deliveries (event_seq, transport, invoice_id, next_attempt_at)
                   VALUES (?, ?, ?, ?)""",
                (seq, transport, invoice_id, now),
            )
        return seq

    async def due_deliveries(self, transport: str, now: float, limit: int = 100) -> list[Delivery]:
        """Undelivered events whose time has come, each the oldest undelivered one of its invoice."""
        rows = await self._all(
            """SELECT d.event_seq, e.id, d.invoice_id, e.type, e.payload, d.attempts, e.created_at
               FROM deliveries d JOIN events e ON e.seq = d.event_seq
               WHERE d.transport = ? AND d.delivered_at IS NULL AND d.failed_at IS NULL
                 AND d.next_attempt_at <= ?
                 AND d.event_seq = (SELECT MIN(o.event_seq) FROM deliveries o WHERE o.transport = d.transport
                     AND o.invoice_id = d.invoice_id AND o.delivered_at IS NULL AND o.failed_at IS NULL)
               ORDER BY d.event_seq LIMIT ?""",
            (transport, now, limit),
        )
        return [Delivery(r[0], r[1], r[2], r[3], r[4], r[5], r[6]) for r in rows]

    async def next_delivery_time(self, transport: str) -> float | None:
        """When the next delivery `due_deliveries` can answer is due: the earliest of the invoices' heads (an
        event queued behind one waiting out its backoff is not due, whatever its own time says)."""
        row = await self._one(
            """SELECT MIN(d.next_attempt_at) FROM deliveries d
               WHERE d.transport = ? AND d.delivered_at IS NULL AND d.failed_at IS NULL
                 AND d.event_seq = (SELECT MIN(o.event_seq) FROM deliveries o WHERE o.transport = d.transport
                     AND o.invoice_id = d.invoice_id AND o.delivered_at IS NULL AND o.failed_at IS NULL)""",
            (transport,),
        )
        return row[0] if row else None

    async def mark_delivered(self, transport: str, event_seq: int, now: int) -> None:
        await self._write(
            "UPDATE deliveries SET delivered_at = ?, attempts = attempts + 1, last_error = NULL "
            "WHERE event_seq = ? AND transport = ?",
            (now, event_seq, transport),
        )

    async def mark_attempt_failed(
        self, transport: str, event_seq: int, error: str, next_attempt_at: float, give_up_at: int | None,
    ) -> None:
        await self._write(
            """UPDATE deliveries SET attempts = attempts + 1, last_error = ?, next_attempt_at = ?, failed_at = ?
               WHERE event_seq = ? AND transport = ?""",
            (error[:500], next_attempt_at, give_up_at, event_seq, transport),
        )

    async def redeliver(self, event_id: str, now: float) -> bool:
        row = await self._one("SELECT seq FROM events WHERE id = ?", (event_id,))
        if row is None:
            return False
        await self._write(
            """UPDATE deliveries SET delivered_at = NULL, failed_at = NULL, next_attempt_at = ?
               WHERE event_seq = ?""",
            (now, row[0]),
        )
        return True

    async def deliveries(
        self, *, transport: str | None = None, state: str | None = None, invoice_id: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        where, params = [], []
        if transport:
            where.append("d.transport = ?")
            params.append(transport)
        if invoice_id:
            where.append("d.invoice_id = ?")
            params.append(invoice_id)
        if state == "pending":
            where.append("d.delivered_at IS NULL AND d.failed_at IS NULL")
        elif state == "delivered":
            where.append("d.delivered_at IS NOT NULL")
        elif state == "failed":
            where.append("d.failed_at IS NOT NULL")
        sql = """SELECT e.id, e.type, d.invoice_id, e.chain, d.transport, e.created_at, d.attempts,
                        d.next_attempt_at, d.delivered_at, d.failed_at, d.last_error
                 FROM deliveries d JOIN events e ON e.seq = d.event_seq"""
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY d.event_seq DESC LIMIT ?"
        return [dict(r) for r in await self._all(sql, (*params, limit))]

    async def pending_deliveries(self) -> list[tuple[str, int, int | None]]:
        """(transport, count, oldest created_at) of what is still to deliver; the Greenfield webhooks' and BitPay
        notifications' own deliveries count as transport "hooks"."""
        rows = await self._all(
            """SELECT d.transport, COUNT(*), MIN(e.created_at) FROM deliveries d
               JOIN events e ON e.seq = d.event_seq
               WHERE d.delivered_at IS NULL AND d.failed_at IS NULL GROUP BY d.transport
               UNION ALL
               SELECT 'hooks', COUNT(*), MIN(created_at) FROM hook_deliveries
               WHERE delivered_at IS NULL AND failed_at IS NULL HAVING COUNT(*) > 0"""
        )
        return [(r[0], r[1], r[2]) for r in rows]

    async def failed_deliveries(self) -> dict[str, int]:
        """Per transport, the deliveries given up on (kept for `webhooks redeliver`)."""
        rows = await self._all(
            """SELECT transport, COUNT(*) FROM deliveries WHERE failed_at IS NOT NULL GROUP BY transport
               UNION ALL
               SELECT 'hooks', COUNT(*) FROM hook_deliveries WHERE failed_at IS NOT NULL HAVING COUNT(*) > 0"""
        )
        return {r[0]: r[1] for r in rows}

    async def prune_events(self, before: int, limit: int = 2000) -> int:
        """Forget up to `limit` events created before `before`, with their deliveries, where the invoice is
        settled and every delivery of the event is done (delivered or given up on). Invoices and payments stay."""
        seqs = [r[0] for r in await self._all(
            """SELECT e.seq FROM events e JOIN invoices i ON i.id = e.invoice_id
               WHERE e.created_at < ? AND i.status IN ('paid', 'expired', 'cancelled', 'invalid')
                 AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_seq = e.seq
                                 AND d.delivered_at IS NULL AND d.failed_at IS NULL)
               ORDER BY e.seq LIMIT ?""",
            (before, limit),
        )]
        for seq in seqs:
            await self._write("DELETE FROM deliveries WHERE event_seq = ?", (seq,))
            await self._write("DELETE FROM events WHERE seq = ?", (seq,))
        # registered webhooks' deliveries (their own bodies) go by the same rule
        await self._write(
            """DELETE FROM hook_deliveries WHERE seq IN (SELECT h.seq FROM hook_deliveries h
                   JOIN invoices i ON i.id = h.invoice_id
                   WHERE h.created_at < ? AND i.status IN ('paid', 'expired', 'cancelled', 'invalid')
                     AND (h.delivered_at IS NOT NULL OR h.failed_at IS NOT NULL) LIMIT ?)""",
            (before, limit),
        )
        return len(seqs)

    async def events_after(self, seq: int | None, limit: int = 1000) -> tuple[int, list[str]]:
        """The invoices given an event after `seq` (None: none, only where the events are now), and the last
        event's seq."""
        if seq is None:
            row = await self._one("SELECT MAX(seq) FROM events")
            return (int(row[0]) if row is not None and row[0] is not None else 0), []
        rows = await self._all("SELECT seq, invoice_id FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit))
        return (int(rows[-1][0]) if rows else seq), [r[1] for r in rows]

    async def previous_event_payload(self, invoice_id: str, seq: int) -> str | None:
        """The payload of the invoice's event before `seq` (None for its first, or once pruned)."""
        row = await self._one(
            "SELECT payload FROM events WHERE invoice_id = ? AND seq < ? ORDER BY seq DESC LIMIT 1", (invoice_id, seq)
        )
        return row[0] if row else None

    async def events_for(self, invoice_id: str) -> list[dict[str, Any]]:
        rows = await self._all(
            "SELECT id, type, created_at, payload FROM events WHERE invoice_id = ? ORDER BY seq", (invoice_id,)
        )
        return [dict(r) for r in rows]
