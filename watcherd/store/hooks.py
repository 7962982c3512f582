"""Webhooks registered through an API (BTCPay Greenfield's), and the deliveries to them and to invoices' own
notification URLs (BitPay's IPN): each delivery row holds the exact body it POSTs and its own retry state.

Deliveries are written by the event listeners in the same transaction as the event they report, for the hooks
registered at that moment: a hook registered later never receives older events."""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any

from watcherd.store.db import Database
from watcherd.store.rows import HookDelivery

_DELIVERY = "seq, id, hook_id, url, invoice_id, type, body, created_at, attempts"
_COMPAT = (" AND EXISTS (SELECT 1 FROM invoices i WHERE i.id = hook_deliveries.invoice_id"
           " AND i.api <> 'native')")
MAX_HOOKS = 50  # webhooks registered at once (the API answers 422 beyond); each has its own delivery slots


class HookQueries(Database):
    async def add_hook(self, hook_id: str, url: str, secret: str, *, enabled: bool, automatic_redelivery: bool,
                       events: list[str] | None, now: int) -> None:
        await self._write(
            """INSERT INTO hooks (id, url, secret, enabled, automatic_redelivery, events, created_at)
               VALUES (?, ?, ?, ?, ?, ?, ?)""",
            (hook_id, url, secret, int(enabled), int(automatic_redelivery),
             None if events is None else json.dumps(events), now),
        )

    async def update_hook(self, hook_id: str, url: str, secret: str, *, enabled: bool, automatic_redelivery: bool,
                          events: list[str] | None) -> None:
        await self._write(
            """UPDATE hooks SET url = ?, secret = ?, enabled = ?, automatic_redelivery = ?, events = ?
               WHERE id = ? AND deleted_at IS NULL""",
            (url, secret, int(enabled), int(automatic_redelivery), None if events is None else json.dumps(events),
             hook_id),
        )

    async def delete_hook(self, hook_id: str, now: int) -> None:
        await self._write("UPDATE hooks SET deleted_at = ? WHERE id = ? AND deleted_at IS NULL", (now, hook_id))
        # what was still to send to it is dropped with it
        await self._write(
            """UPDATE hook_deliveries SET failed_at = ?, last_error = 'webhook deleted'
               WHERE hook_id = ? AND delivered_at IS NULL AND failed_at IS NULL""",
            (now, hook_id),
        )

    async def hook(self, hook_id: str) -> dict[str, Any] | None:
        row = await self._one("SELECT * FROM hooks WHERE id = ? AND deleted_at IS NULL", (hook_id,))
        return _hook(row) if row else None

    async def hook_count(self) -> int:
        row = await self._one("SELECT COUNT(*) FROM hooks WHERE deleted_at IS NULL")
        return int(row[0]) if row else 0

    async def hooks(self, *, enabled_only: bool = False) -> list[dict[str, Any]]:
        sql = "SELECT * FROM hooks WHERE deleted_at IS NULL"
        if enabled_only:
            sql += " AND enabled = 1"
        return [_hook(r) for r in await self._all(sql + " ORDER BY created_at, id")]

    async def add_hook_delivery(self, delivery_id: str, hook_id: str | None, url: str, invoice_id: str, type_: str,
                                body: str, now: int, original_id: str | None = None) -> None:
        await self._write(
            """INSERT INTO hook_deliveries (id, hook_id, url, invoice_id, type, body, created_at, original_id,
                   next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (delivery_id, hook_id, url, invoice_id, type_, body, now, original_id, now),
        )

    async def due_hook_deliveries(self, now: float, limit: int = 100, *, skip_hooks: Collection[str] = (),
                                  skip_urls: Collection[str] = (), urls: bool = True) -> list[HookDelivery]:
        """Undelivered, due, and each the oldest undelivered one of its invoice for its hook (or URL); none to the
        hooks in `skip_hooks`, to the notification URLs in `skip_urls`, or to any notification URL unless `urls`
        (the sender's slots for them are taken)."""
        skip, params = "", [now, *skip_hooks]  # in the order of their placeholders
        if skip_hooks:
            skip += f" AND (d.hook_id IS NULL OR d.hook_id NOT IN ({', '.join('?' * len(skip_hooks))}))"
        if not urls:
            skip += " AND d.hook_id IS NOT NULL"
        elif skip_urls:
            skip += f" AND (d.hook_id IS NOT NULL OR d.url NOT IN ({', '.join('?' * len(skip_urls))}))"
            params.extend(skip_urls)
        rows = await self._all(
            f"""SELECT {_DELIVERY} FROM hook_deliveries d
                WHERE d.delivered_at IS NULL AND d.failed_at IS NULL AND d.next_attempt_at <= ?{skip}
                  AND d.seq = (SELECT MIN(o.seq) FROM hook_deliveries o WHERE o.invoice_id = d.invoice_id
                      AND COALESCE(o.hook_id, o.url) = COALESCE(d.hook_id, d.url)
                      AND o.delivered_at IS NULL AND o.failed_at IS NULL)
                ORDER BY d.seq LIMIT ?""",
            (*params, limit),
        )
        return [HookDelivery(*r) for r in rows]

    async def mark_hook_delivered(self, seq: int, http_code: int, now: int) -> None:
        await self._write(
            """UPDATE hook_deliveries SET delivered_at = ?, last_attempt_at = ?, attempts = attempts + 1,
                   last_error = NULL, http_code = ? WHERE seq = ?""",
            (now, now, http_code, seq),
        )

    async def mark_hook_attempt_failed(self, seq: int, error: str, http_code: int | None, next_attempt_at: float,
                                       give_up_at: int | None, now: int) -> None:
        await self._write(
            """UPDATE hook_deliveries SET attempts = attempts + 1, last_error = ?, http_code = ?, next_attempt_at = ?,
                   failed_at = ?, last_attempt_at = ? WHERE seq = ?""",
            (error[:500], http_code, next_attempt_at, give_up_at, now, seq),
        )

    async def hook_deliveries(self, hook_id: str, limit: int = 100, *, compat_only: bool = False
                              ) -> list[dict[str, Any]]:
        """Newest first; `compat_only`: of invoices a compatible API created (a store whose hooks once received
        every invoice's events keeps those deliveries)."""
        scoped = _COMPAT if compat_only else ""
        rows = await self._all(
            f"SELECT * FROM hook_deliveries WHERE hook_id = ?{scoped} ORDER BY seq DESC LIMIT ?", (hook_id, limit)
        )
        return [dict(r) for r in rows]

    async def hook_deliveries_for_url(self, url: str, limit: int = 100) -> list[dict[str, Any]]:
        """Deliveries to an invoice's own notification URL (no registered hook), newest first."""
        rows = await self._all(
            "SELECT * FROM hook_deliveries WHERE hook_id IS NULL AND url = ? ORDER BY seq DESC LIMIT ?", (url, limit)
        )
        return [dict(r) for r in rows]

    async def hook_delivery(self, hook_id: str, delivery_id: str, *, compat_only: bool = False
                            ) -> dict[str, Any] | None:
        scoped = _COMPAT if compat_only else ""
        row = await self._one(f"SELECT * FROM hook_deliveries WHERE hook_id = ? AND id = ?{scoped}",
                              (hook_id, delivery_id))
        return dict(row) if row else None

    async def invoices_awaiting_delivery(self, status: str, api: str, type_: str) -> list[str]:
        """Invoices in `status` made through the compatible `api` that have no delivery of `type_` yet."""
        rows = await self._all(
            f"""SELECT i.id FROM invoices i WHERE i.status = ? AND {self._json_text("i.compat", "api")} = ?
                 AND {self._json_text("i.compat", "notificationURL")} IS NOT NULL
                 AND NOT EXISTS (SELECT 1 FROM hook_deliveries h WHERE h.invoice_id = i.id AND h.type = ?)
               ORDER BY i.id""",
            (status, api, type_),
        )
        return [r[0] for r in rows]

    async def pending_hook_deliveries(self) -> int:
        row = await self._one(
            "SELECT COUNT(*) FROM hook_deliveries WHERE delivered_at IS NULL AND failed_at IS NULL"
        )
        return int(row[0]) if row else 0


def _hook(row: Any) -> dict[str, Any]:
    hook = dict(row)
    hook["enabled"] = bool(hook["enabled"])
    hook["automatic_redelivery"] = bool(hook["automatic_redelivery"])
    hook["events"] = None if hook["events"] is None else json.loads(hook["events"])
    return hook
