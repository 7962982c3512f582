"""watcherd's invoices as BTCPay's Greenfield API shows them: camelCase, decimal strings, unix seconds.

The mapping tables (README, "Using an existing BTCPay or BitPay plugin") are the dicts below; everything is a
pure function of the native invoice JSON (watcherd/views.py) and the stored invoice row, so the API and the
webhook bodies can never disagree.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal, localcontext
from typing import Any

from watcherd.core.currencies import minor_units
from watcherd.core.money import MAX_DIGITS, number_text, parse_decimal, to_decimal_string
from watcherd.ledger import EventRecord, Processor
from watcherd.store import InvoiceRow, Store

# watcherd status -> Greenfield InvoiceStatus
STATUS = {"unpaid": "New", "processing": "Processing", "paid": "Settled", "expired": "Expired",
          "cancelled": "Invalid", "invalid": "Invalid"}
# watcherd exception -> Greenfield InvoiceAdditionalStatus (a manual mark shows "Marked" first)
ADDITIONAL_STATUS = {"underpaid": "PaidPartial", "overpaid": "PaidOver", "paid_late": "PaidLate"}
# watcherd payment status -> Greenfield PaymentStatus
PAYMENT_STATUS = {"pending": "Processing", "confirmed": "Settled", "replaced": "Invalid", "wrong_asset": "Invalid"}
MONITORING_SECONDS = 86400  # payments after expiry are watched for ever; Greenfield wants a number: a day
# The names BTCPay binds in a create request: CreateInvoiceRequest, its checkout options, the metadata it knows
CREATE_FIELDS = ("amount", "currency", "metadata", "checkout", "receipt", "additionalSearchTerms", "type")
CHECKOUT_FIELDS = ("speedPolicy", "paymentMethods", "defaultPaymentMethod", "lazyPaymentMethods", "expirationMinutes",
                   "monitoringMinutes", "paymentTolerance", "redirectURL", "redirectAutomatically",
                   "requiresRefundEmail", "checkoutType", "defaultLanguage")
METADATA_FIELDS = ("orderId", "orderUrl", "posData", "taxIncluded", "itemCode", "itemDesc", "physical", "buyerName",
                   "buyerEmail", "buyerCountry", "buyerZip", "buyerState", "buyerCity", "buyerAddress1",
                   "buyerAddress2", "buyerPhone", "paymentRequestId", "receiptData")


def unix(iso: str | None) -> int | None:
    return None if iso is None else int(datetime.strptime(iso, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp())


def bind_names(body: dict[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """The object with these field names bound as BTCPay's JSON binder (Newtonsoft) binds them: case-insensitively,
    the last of two spellings winning (`orderID` is `orderId`); other fields kept as sent."""
    canonical = {name.lower(): name for name in names}
    return {canonical.get(key.lower(), key): value for key, value in body.items()}


def bind_create(body: dict[str, Any]) -> dict[str, Any]:
    """A create request with its names bound as BTCPay binds them: case-insensitively at the top, in `checkout`
    and for the metadata fields BTCPay knows (other metadata keys, `posData` text and `orderUrl` kept as sent)."""
    bound = bind_names(body, CREATE_FIELDS)
    for name, names in (("checkout", CHECKOUT_FIELDS), ("metadata", METADATA_FIELDS)):
        if isinstance(bound.get(name), dict):
            bound[name] = bind_names(bound[name], names)
    return bound


def tax_included(value: Any, price: Decimal, decimals: int | None) -> float:
    """metadata.taxIncluded as BTCPay keeps it: a number or numeric string, rounded as the price is, at least 0
    and at most the price. ValueError when it is not a bounded plain decimal."""
    text = number_text(value).strip()
    tax = parse_decimal(text.removeprefix("-"))
    tax = Decimal(0) if text.startswith("-") else min(round_price(tax, decimals) or tax, price)
    return float(tax)


def price_decimals(processor: Processor, currency: str) -> int | None:
    """The decimals a price in `currency` is counted in: the fiat currency's minor units, or the coin's when every
    chain that has it agrees (None otherwise: the native parser says why)."""
    places = minor_units(currency)
    if places is None:
        found = {chain.assets[currency] for chain in processor.chains.values() if currency in chain.assets}
        places = found.pop() if len(found) == 1 else None
    return places


def round_price(amount: Decimal, decimals: int | None) -> Decimal | None:
    """A price rounded to its currency's decimals as BTCPay rounds one (half away from zero: "33.33333333" USD is
    33.33), or None when that would move it by 1% or more (BTCPay keeps more decimals then, which watcherd, counting
    in the currency's smallest unit, cannot). `amount` comes from the bounded parser: at most MAX_DIGITS digits."""
    if decimals is None or amount == 0:
        return amount
    with localcontext(prec=2 * MAX_DIGITS):
        rounded = amount.quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP)
        return rounded if abs(rounded - amount) * 100 < abs(amount) else None


def method_id(asset: str) -> str:
    """Greenfield's payment method id of a coin or token: BTC-CHAIN, XMR-CHAIN, USDC-CHAIN."""
    return f"{asset}-CHAIN"


def parse_method_id(text: str) -> str:
    """The asset a Greenfield payment method id names, in any of its forms: BTC-CHAIN, BTC_CHAIN, BTC, btc."""
    upper = text.strip().upper()
    for suffix in ("-CHAIN", "_CHAIN", "-ONCHAIN", "_ONCHAIN"):
        if upper.endswith(suffix):
            return upper[: -len(suffix)]
    return upper


def reachable(row: InvoiceRow, scope: str) -> bool:
    """Whether the compatible APIs' key reaches the invoice ([greenfield] scope): by default ("compat") only those
    the compatible APIs created; with "all", every one."""
    return scope == "all" or row.api != "native"


def additional_status(native: dict[str, Any]) -> str:
    if native["manually_marked"]:
        return "Marked"
    return ADDITIONAL_STATUS.get(native["exception"] or "", "None")


def invoice(native: dict[str, Any], row: InvoiceRow, store_id: str) -> dict[str, Any]:
    """Greenfield's InvoiceData."""
    status = STATUS[native["status"]]
    checkout = dict(row.compat.get("checkout") or {})
    metadata = dict(native["metadata"])
    if native["order_id"] is not None:
        metadata.setdefault("orderId", native["order_id"])
    expires = unix(native["expires_at"]) or 0
    created = unix(native["created_at"]) or 0
    return {
        "id": native["id"],
        "storeId": store_id,
        "amount": native["amount"],
        "paidAmount": native["amount_received"],
        "currency": native["currency"],
        "type": "Standard",
        "checkoutLink": native["checkout_url"],
        "createdTime": created,
        "expirationTime": expires,
        "monitoringExpiration": expires + MONITORING_SECONDS,
        "status": status,
        "additionalStatus": additional_status(native),
        "availableStatusesForManualMarking": [s for s in ("Settled", "Invalid") if s != status],
        "archived": False,
        "metadata": metadata,
        "checkout": {
            "speedPolicy": checkout.get("speedPolicy"),
            "paymentMethods": [method_id(m["asset"]) for m in native["payment_methods"]],
            "defaultPaymentMethod": None,
            "lazyPaymentMethods": True,  # a method gets its address when the customer picks it
            "expirationMinutes": max(1, (expires - created) // 60),
            "monitoringMinutes": MONITORING_SECONDS // 60,
            "paymentTolerance": float(row.tolerance_percent),
            "redirectURL": native["redirect_url"],
            "redirectAutomatically": checkout.get("redirectAutomatically"),
            "defaultLanguage": checkout.get("defaultLanguage"),
        },
        "receipt": {"enabled": None, "showQR": None, "showPayments": None},
    }


def _decimals(amount_text: str, atomic_text: str) -> int:
    """A coin's decimals, read back from a method's amount and its atomic amount ("0.00098", "98000" -> 8)."""
    whole = Decimal(amount_text)
    return 0 if whole == 0 else max(0, (Decimal(atomic_text) / whole).adjusted())


def _coin(atomic: int, decimals: int) -> str:
    """A coin amount as watcherd writes it ("0.00098"); negative when overpaid (Greenfield's `due`)."""
    return ("-" if atomic < 0 else "") + to_decimal_string(abs(atomic), decimals)


def payment_methods(native: dict[str, Any]) -> list[dict[str, Any]]:
    """Greenfield's InvoicePaymentMethodDataModel for each method the invoice offers."""
    shown = []
    for m in native["payment_methods"]:
        decimals = _decimals(m["amount"], m["amount_atomic"])
        rate = Decimal(m["rate"])
        counted = [p for p in native["payments"] if p["status"] not in ("replaced", "wrong_asset")]
        mine = [p for p in native["payments"] if p["method"] == m["method"] and p["status"] != "wrong_asset"]
        paid_here = sum((int(p["amount_atomic"]) for p in counted if p["method"] == m["method"]), 0)
        # what the other methods paid, in this coin at this method's rate, rounded up to its atomic unit
        others = sum((Decimal(p["value"]) for p in counted if p["method"] != m["method"]), Decimal(0))
        others_atomic = int((others / rate).scaleb(decimals).to_integral_value(ROUND_CEILING)) if rate else 0
        total_atomic = paid_here + others_atomic
        due_atomic = int(m["amount_atomic"]) - total_atomic
        shown.append({
            "paymentMethodId": method_id(m["asset"]),
            "currency": m["asset"],
            "destination": m.get("address") or "",
            "paymentLink": m.get("payment_uri"),
            "rate": m["rate"],
            "paymentMethodPaid": _coin(paid_here, decimals),
            "totalPaid": _coin(total_atomic, decimals),
            "due": _coin(due_atomic, decimals),
            "amount": m["amount"],
            "paymentMethodFee": "0",
            "payments": [payment(p, m.get("address") or "") for p in mine],
            "activated": m["activated"],
            "additionalData": {},
        })
    return shown


def payment(p: dict[str, Any], destination: str) -> dict[str, Any]:
    """Greenfield's Payment: `fee`, `destination` and `status` are never null."""
    return {
        "id": f"{p['txid']}-{p['vout']}",
        "receivedDate": unix(p["first_seen_at"]),
        "value": p["amount"],
        "fee": "0",
        "status": PAYMENT_STATUS.get(p["status"], "Invalid"),
        "destination": destination,
    }


def event_types(native: dict[str, Any], previous: dict[str, Any] | None) -> list[tuple[str, dict[str, Any]]]:
    """The Greenfield webhook events one watcherd event stands for, each with its type's own fields, in the
    order BTCPay sends them: a new payment before the status it causes."""
    events: list[tuple[str, dict[str, Any]]] = []
    before = previous["status"] if previous else None
    after = native["status"]
    if previous is None:
        events.append(("InvoiceCreated", {}))
    old = {(p["txid"], p["vout"]): p for p in (previous or {}).get("payments", [])}
    addresses = {m["method"]: m.get("address") or "" for m in native["payment_methods"]}
    assets = {m["method"]: m["asset"] for m in native["payment_methods"]}
    expires = unix(native["expires_at"]) or 0
    for p in native["payments"]:
        if p["status"] == "wrong_asset":
            continue
        seen = old.get((p["txid"], p["vout"]))
        fields = {"afterExpiration": (unix(p["first_seen_at"]) or 0) >= expires,
                  "paymentMethodId": method_id(assets.get(p["method"], p["asset"])),
                  "payment": payment(p, addresses.get(p["method"], ""))}
        if seen is None and p["status"] != "replaced":
            events.append(("InvoiceReceivedPayment", fields))
        if p["status"] == "confirmed" and (seen is None or seen["status"] != "confirmed"):
            events.append(("InvoicePaymentSettled", fields))
    if after != before:
        manual = native["manually_marked"]
        overpaid = native["exception"] == "overpaid"
        if after == "processing":
            events.append(("InvoiceProcessing", {"overPaid": overpaid}))
        elif after == "paid":
            events.append(("InvoiceSettled", {"manuallyMarked": manual, "overPaid": overpaid}))
        elif after == "expired":
            events.append(("InvoiceExpired", {"partiallyPaid": Decimal(native["amount_received"]) > 0}))
        elif after in ("invalid", "cancelled"):
            events.append(("InvoiceInvalid", {"manuallyMarked": manual}))
    return events


def event_body(type_: str, fields: dict[str, Any], *, delivery_id: str, webhook_id: str, timestamp: int,
               store_id: str, native: dict[str, Any], original_id: str | None = None) -> dict[str, Any]:
    metadata = dict(native["metadata"])
    if native["order_id"] is not None:
        metadata.setdefault("orderId", native["order_id"])
    return {
        "deliveryId": delivery_id,
        "webhookId": webhook_id,
        "originalDeliveryId": original_id or delivery_id,
        "isRedelivery": original_id is not None,
        "type": type_,
        "timestamp": timestamp,
        "storeId": store_id,
        "invoiceId": native["id"],
        "metadata": metadata,
        **fields,
    }


def new_delivery_id() -> str:
    return secrets.token_hex(11)


class GreenfieldHooks:
    """The event listener (ledger.EventListener) that queues, for every webhook registered at the moment of the
    event, one delivery per Greenfield event the watcherd event stands for, of the invoices in `scope`."""

    def __init__(self, store_id: str, scope: str = "compat"):
        self.store_id = store_id
        self.scope = scope

    async def __call__(self, store: Store, record: EventRecord) -> None:
        if not reachable(record.row, self.scope):
            return
        hooks = await store.hooks(enabled_only=True)
        if not hooks:
            return
        for type_, fields in event_types(record.invoice, record.previous):
            for hook in hooks:
                if hook["events"] is not None and type_ not in hook["events"]:
                    continue
                delivery_id = new_delivery_id()
                body = event_body(type_, fields, delivery_id=delivery_id, webhook_id=hook["id"],
                                  timestamp=record.created_at, store_id=self.store_id, native=record.invoice)
                await store.add_hook_delivery(delivery_id, hook["id"], hook["url"], record.invoice_id, type_,
                                              json.dumps(body, separators=(",", ":")), record.created_at)


def redelivery_body(original: str, delivery_id: str, original_id: str) -> str:
    """A redelivery: the original body with its own delivery id, marked as a redelivery of the original."""
    body = json.loads(original)
    body.update(deliveryId=delivery_id, isRedelivery=True, originalDeliveryId=original_id)
    return json.dumps(body, separators=(",", ":"))
