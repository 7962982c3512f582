"""What the payment page may know of an invoice, and which state it shows.

The page is public (anyone with the link), so it gets a whitelist of the invoice: never `metadata` (the billing
system's own data) nor anything else the page does not need. Every field may be missing: the invoice model
grows underneath (fiat-priced invoices with several methods), and the page must render whatever it is given.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any
from urllib.parse import urlsplit

INVOICE_KEYS = ("id", "status", "exception", "currency", "amount", "due", "order_id", "expires_at", "paid_at")
OPTIONAL_INVOICE_KEYS = frozenset({"due"})  # only when the invoice has it
METHOD_KEYS = ("method", "chain", "asset", "activated", "address", "amount", "due", "payment_uri",
               "confirmations_required", "rate")
PAYMENT_KEYS = ("txid", "method", "asset", "amount", "value", "confirmations", "status", "first_seen_at")
# where the live stream ends. Not `expired`: a payment sent just before the expiry and seen just after it still
# completes the invoice (paid_late), and the customer who sent it must see that without reloading.
FINAL_STATUSES = frozenset({"paid", "cancelled", "invalid"})
MAX_URL_LENGTH = 2000


def safe_http_url(value: Any) -> str | None:
    """`value` if it is an absolute http(s) URL that can only be a link (no javascript:, no spaces or control
    characters, no credentials), else None."""
    if not isinstance(value, str) or not value or len(value) > MAX_URL_LENGTH:
        return None
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return None
    try:
        parts = urlsplit(value)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname or parts.username is not None:
        return None
    return value


def redirect_url(invoice: dict[str, Any]) -> str | None:
    """Where "back to the shop" goes: the invoice's `redirect_url`, else `metadata.redirect_url`, only http(s)."""
    if invoice.get("redirect_url") is not None:
        return safe_http_url(invoice["redirect_url"])
    metadata = invoice.get("metadata")
    return safe_http_url(metadata.get("redirect_url")) if isinstance(metadata, dict) else None


def description(invoice: dict[str, Any]) -> str | None:
    """`metadata.description`, the one piece of metadata the page shows (as text), when the billing system set
    it as a string."""
    metadata = invoice.get("metadata")
    text = metadata.get("description") if isinstance(metadata, dict) else None
    return text[:500] if isinstance(text, str) and text.strip() else None


def _pick(source: Any, keys: tuple[str, ...]) -> dict[str, Any]:
    return {key: source.get(key) for key in keys} if isinstance(source, dict) else {}


def public_invoice(invoice: dict[str, Any]) -> dict[str, Any]:
    shown = {key: invoice.get(key) for key in INVOICE_KEYS if key not in OPTIONAL_INVOICE_KEYS or key in invoice}
    shown["redirect_url"] = redirect_url(invoice)
    shown["payment_methods"] = [_pick(m, METHOD_KEYS) for m in methods(invoice)]
    shown["payments"] = [_pick(p, PAYMENT_KEYS) for p in payments(invoice)]
    return shown


def version(public: dict[str, Any]) -> str:
    """A short fingerprint of the public JSON: the page carries it, the live stream and the status endpoint
    compare against it, so a page is refreshed only when what it shows changed."""
    canonical = json.dumps(public, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def methods(invoice: dict[str, Any]) -> list[dict[str, Any]]:
    found = invoice.get("payment_methods")
    return [m for m in found if isinstance(m, dict) and isinstance(m.get("method"), str)] \
        if isinstance(found, list) else []


def payments(invoice: dict[str, Any]) -> list[dict[str, Any]]:
    found = invoice.get("payments")
    return [p for p in found if isinstance(p, dict)] if isinstance(found, list) else []


def is_final(invoice: dict[str, Any]) -> bool:
    return invoice.get("status") in FINAL_STATUSES


def chosen_method(invoice: dict[str, Any], asked: str | None) -> dict[str, Any] | None:
    """The method the page details: the one asked for (?method=), else the only one, else the activated one
    (the first activated one when several are)."""
    offered = methods(invoice)
    for method in offered:
        if method["method"] == asked:
            return method
    if len(offered) == 1:
        return offered[0]
    return next((m for m in offered if m.get("activated")), None)


def method_of(payment: dict[str, Any], invoice: dict[str, Any]) -> dict[str, Any] | None:
    """The method a payment arrived on: its `method` when the invoice names it, else the activated method of
    its asset."""
    offered = methods(invoice)
    if payment.get("method") is not None:
        return next((m for m in offered if m["method"] == payment["method"]), None)
    same_asset = [m for m in offered if m.get("asset") == payment.get("asset")]
    return next((m for m in same_asset if m.get("activated")), same_asset[0] if same_asset else None)


def state(invoice: dict[str, Any]) -> str:
    """The headline: one of unpaid, underpaid, processing, paid, overpaid, paid_late, expired, cancelled,
    invalid (or the raw status, for one this page does not know yet)."""
    status, exception = invoice.get("status"), invoice.get("exception")
    if status == "unpaid":
        return "underpaid" if exception == "underpaid" else "unpaid"
    if status == "paid" and exception in ("overpaid", "paid_late"):
        return str(exception)
    return str(status)
