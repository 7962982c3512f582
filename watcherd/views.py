"""An invoice as the API, webhooks and MQTT show it: one JSON shape, decimal strings and ISO times at the edge."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from watcherd.core.invoices import FINALITY, Terms, assess
from watcherd.core.money import to_decimal_string
from watcherd.store import InvoiceRow, PaymentRow


def iso(ts: int | float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def invoice_json(
    invoice: InvoiceRow, payments: list[PaymentRow], *, terms: Terms, counting_tip: int, tip: int, now: float,
    assets: dict[str, int], payment_uri: str | None, method: str, checkout_url: str,
) -> dict[str, Any]:
    """`terms` and `counting_tip` are what confirmations count against (on a chain with finality: one
    "confirmation" at or below the final height); `tip` is the chain tip shown as payments' confirmations."""
    decimals = assets.get(invoice.asset, 0)
    required = terms.confirmations_required
    assessment = assess(terms, [p.payment for p in payments], counting_tip, now)
    # shown in the invoice currency's smallest unit: what arrived rounded down, what is still due rounded up
    received, confirmed = math.floor(assessment.received), math.floor(assessment.confirmed)
    due = max(0, math.ceil(invoice.amount - assessment.received))
    return {
        "id": invoice.id,
        "chain": invoice.chain,
        "asset": invoice.asset,
        "address": invoice.address,
        "amount": to_decimal_string(invoice.amount, decimals),
        "amount_atomic": str(invoice.amount),
        "amount_received": to_decimal_string(received, decimals),
        "amount_received_atomic": str(received),
        "amount_confirmed": to_decimal_string(confirmed, decimals),
        "amount_confirmed_atomic": str(confirmed),
        "status": invoice.status.value,
        "exception": invoice.exception,
        "payment_uri": payment_uri,
        "confirmations_required": invoice.confirmations_required or None,
        "finality": "finalized" if invoice.confirmations_required == FINALITY else None,
        "order_id": invoice.order_id,
        "metadata": invoice.metadata,
        "created_at": iso(invoice.created_at),
        "expires_at": iso(invoice.expires_at),
        "paid_at": iso(invoice.paid_at),
        "cancelled_at": iso(invoice.cancelled_at),
        "currency": invoice.asset,
        "checkout_url": checkout_url,
        # priced in the coin itself: one method, activated at creation, at a rate of 1
        "payment_methods": [{
            "method": method, "chain": invoice.chain, "asset": invoice.asset, "activated": True,
            "address": invoice.address, "rate": "1",
            "amount": to_decimal_string(invoice.amount, decimals), "amount_atomic": str(invoice.amount),
            "due": to_decimal_string(due, decimals), "due_atomic": str(due),
            "payment_uri": payment_uri,
            "confirmations_required": invoice.confirmations_required or None,
        }],
        "payments": [
            {
                "txid": p.payment.txid,
                "vout": p.payment.vout,
                "asset": p.asset,
                "amount": to_decimal_string(p.payment.amount, assets.get(p.asset, 0)),
                "amount_atomic": str(p.payment.amount),
                "confirmations": p.payment.confirmations(tip),
                "block_height": p.payment.block_height,
                "block_hash": p.block_hash,
                "first_seen_at": iso(p.payment.first_seen_at),
                "confirmed_at": iso(p.confirmed_at),
                "status": p.payment.status(counting_tip, required).value,
            }
            for p in payments
        ],
    }
