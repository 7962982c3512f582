"""watcherd's invoices as the BitPay-style invoice API shows them (BTCPay's official WHMCS plugin v3 and
BitPay-era plugins), and the IPN: the invoice JSON POSTed to the invoice's `notificationURL` on each status
change, from the durable delivery table (the plugin verifies by fetching the invoice again).

Statuses: unpaid -> new, processing -> paid (seen in full), paid -> confirmed (the invoice's required
confirmations: its transactionSpeed, never fewer than the chain's), then complete once every payment is
COMPLETE_DEPTH deep (BitPay's own "complete"), expired -> expired, cancelled / invalid -> invalid.
"""

from __future__ import annotations

import json
import logging
from decimal import Decimal
from typing import Any

from watcherd.compat.greenfield import new_delivery_id, unix
from watcherd.ledger import EventRecord, Processor
from watcherd.store import Store

log = logging.getLogger("watcherd.bitpay")

SPEEDS = {"high": 0, "medium": 1, "low": 6}
COMPLETE_DEPTH = 6
STATUS = {"unpaid": "new", "processing": "paid", "paid": "confirmed", "expired": "expired",
          "cancelled": "invalid", "invalid": "invalid"}
EXCEPTION = {"underpaid": "paidPartial", "overpaid": "paidOver", "paid_late": "paidLate"}


def is_complete(native: dict[str, Any]) -> bool:
    if native["status"] != "paid":
        return False
    required = {m["method"]: m["confirmations_required"] for m in native["payment_methods"]}
    for p in native["payments"]:
        if p["status"] in ("replaced", "wrong_asset"):
            continue
        need = required.get(p["method"])
        if need is not None and p["confirmations"] < max(COMPLETE_DEPTH, need):
            return False
    return True


def status(native: dict[str, Any]) -> str:
    return "complete" if is_complete(native) else STATUS[native["status"]]


def invoice(native: dict[str, Any], compat: dict[str, Any], now: float) -> dict[str, Any]:
    """The BitPay invoice object (what `data` holds, and what an IPN POSTs)."""
    metadata = native["metadata"]
    first = next((m for m in native["payment_methods"] if m["activated"]), None)
    shown: dict[str, Any] = {
        "id": native["id"],
        "url": native["checkout_url"],
        "status": status(native),
        "price": float(Decimal(native["amount"])),
        "currency": native["currency"],
        "orderId": native["order_id"],
        "itemDesc": metadata.get("itemDesc"),
        "posData": compat.get("posData"),
        "invoiceTime": (unix(native["created_at"]) or 0) * 1000,
        "expirationTime": (unix(native["expires_at"]) or 0) * 1000,
        "currentTime": int(now * 1000),
        "exceptionStatus": EXCEPTION.get(native["exception"] or "", False),
        "amountPaid": native["amount_received"],
        "transactionSpeed": compat.get("transactionSpeed", "medium"),
        "redirectURL": native["redirect_url"],
        "buyer": {"name": metadata.get("buyerName"), "email": metadata.get("buyerEmail")},
        "paymentCodes": {m["asset"]: {"BIP72b": m.get("payment_uri")} for m in native["payment_methods"]
                         if m["activated"]},
    }
    if first is not None:
        shown.update(rate=float(Decimal(first["rate"])), btcPrice=first["amount"], btcDue=first["due"],
                     btcPaid=str(Decimal(first["amount"]) - Decimal(first["due"])))
    return shown


class BitPayNotifications:
    """The event listener that queues an IPN to the invoice's notificationURL when its BitPay status changes
    (every event with `fullNotifications`), in the event's transaction."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock

    async def __call__(self, store: Store, record: EventRecord) -> None:
        compat = record.row.compat
        url = compat.get("notificationURL")
        if compat.get("api") != "bitpay" or not url or record.previous is None:
            return  # BitPay notifies changes, never the creation
        before = status(record.previous) if record.previous else None
        after = status(record.invoice)
        if after == before and not compat.get("fullNotifications"):
            return
        body = json.dumps(invoice(record.invoice, compat, self.clock()), separators=(",", ":"))
        await store.add_hook_delivery(new_delivery_id(), None, url, record.invoice_id, after, body, record.created_at)


async def notify_completed(processor: Processor) -> int:
    """Queue the `complete` IPN of paid BitPay invoices whose payments became deep enough since (no event marks
    that moment: called periodically by the daemon). Returns how many were queued."""
    queued = 0
    for invoice_id in await processor.store.invoices_awaiting_delivery("paid", "bitpay", "complete"):
        row = await processor.store.invoice(invoice_id)
        native = await processor.invoice_json(invoice_id)
        if row is None or native is None or not is_complete(native) or not row.compat.get("notificationURL"):
            continue
        body = json.dumps(invoice(native, row.compat, processor.clock()), separators=(",", ":"))
        async with processor.store.transaction():
            await processor.store.add_hook_delivery(new_delivery_id(), None, row.compat["notificationURL"],
                                                    invoice_id, "complete", body, int(processor.clock()))
        queued += 1
    if queued:
        processor.wake_outbox()
    return queued
