"""What the store hands out: frozen dataclasses for invoices, payments and due deliveries, and the mappers from
database rows to them (amounts come back from TEXT as ints, statuses as `Status`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Any

from watcherd.core.invoices import Payment, Status, Terms
from watcherd.store.backend import Row


@dataclass(frozen=True, slots=True)
class MethodRow:
    """One way to pay an invoice: a coin or token on a chain, its locked rate, and once picked its address."""

    invoice_id: str
    chain: str
    asset: str
    rate: Fraction  # invoice currency minor units per atomic unit
    amount: int  # the whole price in atomic units, rounded up
    confirmations_required: int
    activated_at: int | None = None
    address: str | None = None
    watch_key: bytes | None = None
    derivation_index: int | None = None


@dataclass(frozen=True, slots=True)
class InvoiceRow:
    id: str
    currency: str
    amount: int  # in the currency's smallest unit
    tolerance_percent: Decimal
    status: Status
    exception: str | None
    order_id: str | None
    metadata: dict[str, Any]
    created_at: int
    expires_at: int
    cancelled_at: int | None
    paid_at: int | None
    updated_at: int
    digest: str = ""
    idempotency_key: str | None = None
    request_digest: str | None = None
    redirect_url: str | None = None
    decimals: int | None = None  # the currency's; None on invoices from before version 4 (the coin's, then)
    manual_status: Status | None = None  # marked paid or invalid by hand
    compat: dict[str, Any] = field(default_factory=dict)  # what a compatible API was asked (notification URL...)
    api: str = "native"  # the API that created it: "native", "greenfield" or "bitpay"

    @property
    def terms(self) -> Terms:
        """Confirmations count per payment on its own chain (Payment.confirmed), so the terms' count is unused."""
        return Terms(
            amount=self.amount,
            expires_at=self.expires_at,
            confirmations_required=1,
            underpaid_tolerance_percent=self.tolerance_percent,
            cancelled=self.cancelled_at is not None,
            manual=self.manual_status,
        )


@dataclass(frozen=True, slots=True)
class PaymentRow:
    invoice_id: str
    payment: Payment  # its `rate` is its method's; `confirmed` is left for the ledger, which knows the tips
    block_hash: str | None
    confirmed_at: int | None
    asset: str
    chain: str = ""
    method_asset: str = ""  # the asset of the method whose address it paid
    confirmations_required: int = 1  # its method's (0: the chain's finality)


@dataclass(frozen=True, slots=True)
class HookDelivery:
    """A registered webhook's (or an invoice's notification URL's) delivery: its exact body, its own retries."""

    seq: int
    id: str
    hook_id: str | None
    url: str
    invoice_id: str
    type: str
    body: str
    created_at: int
    attempts: int


@dataclass(frozen=True, slots=True)
class Delivery:
    event_seq: int
    event_id: str
    invoice_id: str
    type: str
    payload: str
    attempts: int
    created_at: int


def invoice_from_row(row: Row) -> InvoiceRow:
    return InvoiceRow(
        id=row["id"],
        currency=row["currency"],
        amount=int(row["amount"]),
        tolerance_percent=Decimal(row["tolerance_percent"]),
        status=Status(row["status"]),
        exception=row["exception"],
        order_id=row["order_id"],
        metadata=json.loads(row["metadata"]),
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        cancelled_at=row["cancelled_at"],
        paid_at=row["paid_at"],
        updated_at=row["updated_at"],
        digest=row["digest"],
        idempotency_key=row["idempotency_key"],
        request_digest=row["request_digest"],
        redirect_url=row["redirect_url"],
        decimals=row["decimals"],
        manual_status=Status(row["manual_status"]) if row["manual_status"] else None,
        compat=json.loads(row["compat"]),
        api=row["api"],
    )


def method_from_row(row: Row) -> MethodRow:
    return MethodRow(
        invoice_id=row["invoice_id"],
        chain=row["chain"],
        asset=row["asset"],
        rate=Fraction(row["rate"]),
        amount=int(row["amount"]),
        confirmations_required=row["confirmations_required"],
        activated_at=row["activated_at"],
        address=row["address"],
        watch_key=None if row["watch_key"] is None else bytes(row["watch_key"]),
        derivation_index=row["derivation_index"],
    )


def payment_from_row(row: Row) -> PaymentRow:
    return PaymentRow(
        invoice_id=row["invoice_id"],
        payment=Payment(
            txid=row["txid"],
            vout=row["vout"],
            amount=int(row["amount"]),
            first_seen_at=row["first_seen_at"],
            block_height=row["block_height"],
            replaced=bool(row["replaced"]),
            wrong_asset=row["asset"] != row["method_asset"],
            rate=Fraction(row["method_rate"]),
        ),
        asset=row["asset"],
        block_hash=row["block_hash"],
        confirmed_at=row["confirmed_at"],
        chain=row["chain"],
        method_asset=row["method_asset"],
        confirmations_required=row["method_required"],
    )
