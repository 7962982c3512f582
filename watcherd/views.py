"""An invoice as the API, webhooks and MQTT show it: one JSON shape, decimal strings and ISO times at the edge."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from fractions import Fraction
from functools import lru_cache
from typing import Any

from watcherd.core.currencies import minor_units
from watcherd.core.invoices import FINALITY, Payment, assess
from watcherd.core.money import to_decimal_string
from watcherd.store import InvoiceRow, MethodRow, PaymentRow


def iso(ts: int | float | None) -> str | None:
    return None if ts is None else _iso(math.floor(ts))


@lru_cache(maxsize=4096)
def _iso(seconds: int) -> str:
    # an invoice shows the same few instants many times (created, updated, expires, a block's time): strftime
    # was a few percent of rendering one
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class ShownMethod:
    """A method with what the ledger knows about its chain: its id, its coin's decimals, its payment URI maker."""

    row: MethodRow
    method: str  # "btc", or "eth:USDC" for a token
    decimals: int
    tip: int  # the chain tip, shown as its payments' confirmations
    uri: str | None  # the payment URI for what is still due (None: the chain left the config, or nothing due)
    uri_full: str | None  # the payment URI for the whole amount


@dataclass(frozen=True, slots=True)
class ShownPayment:
    row: PaymentRow
    valued: Payment  # with its method's rate and its chain's confirmation judgement
    decimals: int  # of the asset it paid in (a wrong asset's own)


def rate_text(rate: Fraction, currency_decimals: int, coin_decimals: int, places: int = 8) -> str:
    """Invoice currency per whole coin, as a decimal string: the exact rate rounded to `places` places."""
    per_coin = rate * 10**coin_decimals / 10**currency_decimals
    scaled = round(per_coin * 10**places)
    return to_decimal_string(scaled, places)


def due_atomic(method: MethodRow, due: Fraction) -> int:
    """What is still due, in the method's coin: rounded up to its atomic unit."""
    return max(0, math.ceil(due / method.rate))


def invoice_json(
    invoice: InvoiceRow, methods: list[ShownMethod], payments: list[ShownPayment], *, now: float,
    currency_decimals: int, checkout_url: str,
) -> dict[str, Any]:
    assessment = assess(invoice.terms, [p.valued for p in payments], 0, now)
    # in the invoice currency's smallest unit: what arrived rounded down, what is still due rounded up
    received, confirmed = math.floor(assessment.received), math.floor(assessment.confirmed)
    due = max(Fraction(0), invoice.amount - assessment.received)
    activated = [m for m in methods if m.row.activated_at is not None]
    # the fields of the one-coin form (chain, address ...) show the first picked method
    first = activated[0] if activated else None
    by_method = {(m.row.chain, m.row.asset): m for m in methods}

    fiat = minor_units(invoice.currency) is not None

    def money(atomic: int) -> str:
        return to_decimal_string(atomic, currency_decimals, fixed=fiat)

    return {
        "id": invoice.id,
        "chain": first.row.chain if first else None,
        "asset": first.row.asset if first else None,
        "address": first.row.address if first else None,
        "currency": invoice.currency,
        "amount": money(invoice.amount),
        "amount_atomic": str(invoice.amount),
        "amount_received": money(received),
        "amount_received_atomic": str(received),
        "amount_confirmed": money(confirmed),
        "amount_confirmed_atomic": str(confirmed),
        "due": money(math.ceil(due)),
        "due_atomic": str(math.ceil(due)),
        "status": invoice.status.value,
        "exception": invoice.exception,
        # marked paid or invalid by hand (Greenfield's mark status): the status says so, not the money
        "manually_marked": invoice.manual_status is not None,
        "payment_uri": first.uri_full if first else None,
        "confirmations_required": (first.row.confirmations_required or None) if first else None,
        "finality": "finalized" if first and first.row.confirmations_required == FINALITY else None,
        "order_id": invoice.order_id,
        "metadata": invoice.metadata,
        "redirect_url": invoice.redirect_url,
        "checkout_url": checkout_url,
        "created_at": iso(invoice.created_at),
        "expires_at": iso(invoice.expires_at),
        "paid_at": iso(invoice.paid_at),
        "cancelled_at": iso(invoice.cancelled_at),
        "payment_methods": [_method_json(m, due, currency_decimals) for m in methods],
        "payments": [_payment_json(p, by_method.get((p.row.chain, p.row.method_asset)), money, currency_decimals)
                     for p in payments],
    }


def _method_json(m: ShownMethod, due: Fraction, currency_decimals: int) -> dict[str, Any]:
    shown: dict[str, Any] = {
        "method": m.method, "chain": m.row.chain, "asset": m.row.asset, "activated": m.row.activated_at is not None,
        "rate": rate_text(m.row.rate, currency_decimals, m.decimals),
        "amount": to_decimal_string(m.row.amount, m.decimals), "amount_atomic": str(m.row.amount),
        "confirmations_required": m.row.confirmations_required or None,
    }
    owed = due_atomic(m.row, due)  # at the locked rate: what a coin not picked yet would have to pay now
    shown.update(due=to_decimal_string(owed, m.decimals), due_atomic=str(owed))
    picked = m.row.activated_at is not None  # a method not picked yet has no address: null, as on the page's JSON
    shown.update(address=m.row.address if picked else None, payment_uri=m.uri if picked else None)
    return shown


def _payment_json(p: ShownPayment, method: ShownMethod | None, money: Callable[[int], str],
                  currency_decimals: int) -> dict[str, Any]:
    tip = method.tip if method else 0
    return {
        "txid": p.valued.txid,
        "vout": p.valued.vout,
        "chain": p.row.chain,
        "method": method.method if method else p.row.chain,
        "asset": p.row.asset,
        "amount": to_decimal_string(p.valued.amount, p.decimals),
        "amount_atomic": str(p.valued.amount),
        # what it counts for, in the invoice currency, at the rate locked for its method
        # another asset than its method's (ETH to a USDC address) is worth nothing to the invoice: not counted
        "value": money(0 if p.valued.wrong_asset else math.floor(p.valued.value)),
        "rate": None if p.valued.wrong_asset else rate_text(p.valued.rate, currency_decimals,
                                                            method.decimals if method else p.decimals),
        "confirmations": p.valued.confirmations(tip),
        "block_height": p.valued.block_height,
        "block_hash": p.row.block_hash,
        "first_seen_at": iso(p.valued.first_seen_at),
        "confirmed_at": iso(p.row.confirmed_at),
        "status": p.valued.status(0, 0).value,
    }


def delivery_json(row: dict[str, Any]) -> dict[str, Any]:
    """One delivery row (an event for one transport) as GET /v1/webhooks shows it: ISO times like the invoices,
    null for what does not apply (a delivered or failed row has no next attempt; an event of no chain)."""
    done = row["delivered_at"] is not None or row["failed_at"] is not None
    return {
        "id": row["id"], "type": row["type"], "invoice_id": row["invoice_id"],
        "chain": None if row["chain"] == "none" else row["chain"], "transport": row["transport"],
        "created_at": iso(row["created_at"]), "attempts": row["attempts"],
        "next_attempt_at": None if done else iso(row["next_attempt_at"]),
        "delivered_at": iso(row["delivered_at"]), "failed_at": iso(row["failed_at"]), "last_error": row["last_error"],
    }
