"""What the store hands out: frozen dataclasses for invoices, payments and due deliveries, and the mappers from
SQLite rows to them (amounts come back from TEXT as ints, statuses as `Status`)."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from watcherd.core.invoices import Payment, Status, Terms


@dataclass(frozen=True, slots=True)
class InvoiceRow:
    id: str
    chain: str
    asset: str
    address: str
    watch_key: bytes
    derivation_index: int
    amount: int
    confirmations_required: int
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

    @property
    def terms(self) -> Terms:
        return Terms(
            amount=self.amount,
            expires_at=self.expires_at,
            confirmations_required=self.confirmations_required,
            underpaid_tolerance_percent=self.tolerance_percent,
            cancelled=self.cancelled_at is not None,
        )


@dataclass(frozen=True, slots=True)
class PaymentRow:
    invoice_id: str
    payment: Payment
    block_hash: str | None
    confirmed_at: int | None
    asset: str


@dataclass(frozen=True, slots=True)
class Delivery:
    event_seq: int
    event_id: str
    invoice_id: str
    type: str
    payload: str
    attempts: int
    created_at: int


def invoice_from_row(row: sqlite3.Row) -> InvoiceRow:
    return InvoiceRow(
        id=row["id"],
        chain=row["chain"],
        asset=row["asset"],
        address=row["address"],
        watch_key=bytes(row["watch_key"]),
        derivation_index=row["derivation_index"],
        amount=int(row["amount"]),
        confirmations_required=row["confirmations_required"],
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
    )


def payment_from_row(row: sqlite3.Row) -> PaymentRow:
    return PaymentRow(
        invoice_id=row["invoice_id"],
        payment=Payment(
            txid=row["txid"],
            vout=row["vout"],
            amount=int(row["amount"]),
            first_seen_at=row["first_seen_at"],
            block_height=row["block_height"],
            replaced=bool(row["replaced"]),
            wrong_asset=row["asset"] != row["invoice_asset"],
        ),
        asset=row["asset"],
        block_hash=row["block_hash"],
        confirmed_at=row["confirmed_at"],
    )
