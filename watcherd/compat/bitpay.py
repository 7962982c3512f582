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

from watcherd.compat.greenfield import bind_names, new_delivery_id, unix
from watcherd.core.money import number_text
from watcherd.exceptions import InvoiceError
from watcherd.ledger import EventRecord, Processor
from watcherd.store import Store

log = logging.getLogger("watcherd.bitpay")

SPEEDS = {"high": 0, "medium": 1, "low-medium": 2, "low": 6}
COMPLETE_DEPTH = 6
STATUS = {"unpaid": "new", "processing": "paid", "paid": "confirmed", "expired": "expired",
          "cancelled": "invalid", "invalid": "invalid"}
EXCEPTION = {"underpaid": "paidPartial", "overpaid": "paidOver", "paid_late": "paidLate"}


# The create request's fields as BTCPay binds them (its BitpayCreateInvoiceRequest): text, flags, and the buyer
# object's names for the flat buyer fields (which win over it).
TEXT_FIELDS = ("currency", "orderId", "itemDesc", "itemCode", "notificationURL", "redirectURL", "transactionSpeed",
               "notificationEmail", "buyerName", "buyerAddress1", "buyerAddress2", "buyerCity", "buyerState",
               "buyerZip", "buyerCountry", "buyerEmail", "buyerPhone")
FLAG_FIELDS = ("fullNotifications", "extendedNotifications", "physical")
BUYER_FIELDS = {"name": "buyerName", "address1": "buyerAddress1", "address2": "buyerAddress2", "locality": "buyerCity",
                "region": "buyerState", "postalCode": "buyerZip", "country": "buyerCountry", "email": "buyerEmail",
                "phone": "buyerPhone"}
MAX_TEXT = 2000  # characters of one text field (metadata as a whole is capped natively)


def bind_create(body: dict[str, Any]) -> dict[str, Any]:
    """A create request's fields bound as BTCPay binds them: names case-insensitive (`orderID` is `orderId`), a
    JSON number or boolean where text is expected taken as its JSON text (`"orderID": 1042` is "1042"), a flag
    from a boolean, "true"/"false" or a number, the flat buyer fields first and `buyer: {...}` filling the rest.
    `price` is left as sent; `posData` text is kept exactly, an object or array as it is. Unknown fields are
    ignored. Raises InvoiceError naming a field that cannot be bound."""
    given = bind_names(body, ("price", "posData", "buyer", *TEXT_FIELDS, *FLAG_FIELDS))
    bound: dict[str, Any] = {name: _text(name, given.get(name)) for name in TEXT_FIELDS}
    bound.update({name: _flag(name, given.get(name)) for name in FLAG_FIELDS})
    buyer = given.get("buyer")
    if buyer is not None:
        if not isinstance(buyer, dict):
            raise InvoiceError("buyer", "must be a JSON object")
        buyer = bind_names(buyer, BUYER_FIELDS)
        for key, flat in BUYER_FIELDS.items():
            if bound[flat] is None:
                bound[flat] = _text(f"buyer.{key}", buyer.get(key))
    pos_data = given.get("posData")
    bound["posData"] = pos_data if isinstance(pos_data, (dict, list)) else _text("posData", pos_data, None)
    bound["price"] = given.get("price")
    return bound


def _text(name: str, value: Any, limit: int | None = MAX_TEXT) -> str | None:
    if value is None or isinstance(value, str):
        text = value
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (int, float)):
        try:
            text = number_text(value)
        except ValueError as exc:
            raise InvoiceError(name, str(exc)) from None
    else:
        raise InvoiceError(name, "must be a string")
    if text is not None and limit is not None and len(text) > limit:
        raise InvoiceError(name, f"must be at most {limit} characters")
    return text


def _flag(name: str, value: Any) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value != 0
    if isinstance(value, str) and value.strip().lower() in ("true", "false", ""):
        return {"true": True, "false": False}.get(value.strip().lower())
    raise InvoiceError(name, "must be true or false")


def speed(text: str | None, default: str) -> str:
    """transactionSpeed as BTCPay reads it: an unknown one is the store's default."""
    return text.strip().lower() if text is not None and text.strip().lower() in SPEEDS else default


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
        # BTCPay's "marked": a manual mark, never money (native JSON: manually_marked)
        "exceptionStatus": "marked" if native.get("manually_marked") else EXCEPTION.get(native["exception"] or "",
                                                                                          False),
        "amountPaid": native["amount_received"],
        "transactionSpeed": compat.get("transactionSpeed", "medium"),
        "redirectURL": native["redirect_url"],
        "buyer": {key: metadata.get(flat) for key, flat in BUYER_FIELDS.items()},
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
