"""The invoice state machine: pure functions of (invoice, payments, chain tip, now), no I/O.

Status is never stored as a decision taken once: it is recomputed from the payments every time something
changes (a transaction is seen, a block connects or disconnects, a payment is replaced, the clock passes the
expiry). That makes reorgs and replacements ordinary: the same function that made an invoice `paid` takes it
back when the facts change.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

# `confirmations_required` of an invoice on a chain with finality (Ethereum's `finalized` tag): a payment is
# confirmed once the chain's final height covers its block, however many blocks that takes.
FINALITY = 0


class Status(enum.StrEnum):
    UNPAID = "unpaid"
    PROCESSING = "processing"  # the full amount is seen, not yet with the required confirmations
    PAID = "paid"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    INVALID = "invalid"  # cancelled, yet money arrived: needs a human


class InvoiceException(enum.StrEnum):
    UNDERPAID = "underpaid"
    OVERPAID = "overpaid"
    PAID_LATE = "paid_late"
    DOUBLE_SPENT = "double_spent"
    WRONG_ASSET = "wrong_asset"  # another asset than the invoice's reached its address: handle by hand


class PaymentStatus(enum.StrEnum):
    PENDING = "pending"  # seen, fewer than the required confirmations
    CONFIRMED = "confirmed"  # has the chain's required confirmations
    REPLACED = "replaced"  # double-spent, RBF-replaced or dropped: no longer counts
    WRONG_ASSET = "wrong_asset"  # recorded, never counted: not the asset the invoice asks for


@dataclass(frozen=True, slots=True)
class Payment:
    txid: str
    vout: int
    amount: int  # atomic units
    first_seen_at: int  # unix seconds
    block_height: int | None = None
    replaced: bool = False
    wrong_asset: bool = False
    # What one atomic unit is worth in the invoice's currency (its minor units), locked when the invoice was
    # created: 1 for an invoice priced in the coin itself; 50000 USD/BTC is Fraction(5000000, 10**8) cents/sat.
    rate: Fraction = Fraction(1)
    # Whether it has its own chain's required confirmations, for invoices payable on several chains (each
    # payment counts against its chain's tip); None: count against assess()'s tip and the terms.
    confirmed: bool | None = None

    @property
    def counts(self) -> bool:
        return not self.replaced and not self.wrong_asset

    @property
    def value(self) -> Fraction:
        """What the payment is worth in the invoice's currency (minor units, exact)."""
        return self.amount * self.rate

    def is_confirmed(self, tip_height: int, required: int) -> bool:
        if self.confirmed is not None:
            return self.confirmed and not self.replaced
        return self.confirmations(tip_height) >= required

    def confirmations(self, tip_height: int) -> int:
        if self.block_height is None or self.replaced:
            return 0
        return max(0, tip_height - self.block_height + 1)

    def status(self, tip_height: int, required: int) -> PaymentStatus:
        if self.wrong_asset:
            return PaymentStatus.WRONG_ASSET
        if self.replaced:
            return PaymentStatus.REPLACED
        if self.is_confirmed(tip_height, required):
            return PaymentStatus.CONFIRMED
        return PaymentStatus.PENDING


@dataclass(frozen=True, slots=True)
class Terms:
    """What the invoice asks for; fixed when it is created."""

    amount: int  # in the invoice's currency: minor units (cents), or atomic units for an invoice priced in a coin
    expires_at: int
    confirmations_required: int
    underpaid_tolerance_percent: Decimal = Decimal(0)
    cancelled: bool = False
    # Marked by hand (the Greenfield API's "mark status": paid or invalid): the status whatever the payments say;
    # they are still recorded and still give the exception.
    manual: Status | None = None


@dataclass(frozen=True, slots=True)
class Assessment:
    status: Status
    exception: InvoiceException | None
    received: Fraction  # what every payment that still counts is worth, confirmed or not (invoice currency)
    confirmed: Fraction  # what the payments with their required confirmations are worth


def _covers(received: Fraction, terms: Terms) -> bool:
    """True when `received` pays the invoice, allowing the configured underpayment tolerance; never with nothing
    received, whatever the tolerance (a stored 100% would settle at creation)."""
    if received <= 0:
        return False
    if received >= terms.amount:
        return True
    tolerance = Fraction(terms.underpaid_tolerance_percent) / 100
    return received >= terms.amount * (1 - tolerance)


def _covered_after_expiry(live: Sequence[Payment], terms: Terms) -> bool:
    """True when the money that made the invoice whole arrived after it expired."""
    total = Fraction(0)
    for payment in sorted(live, key=lambda p: (p.first_seen_at, p.txid, p.vout)):
        total += payment.value
        if _covers(total, terms):
            return payment.first_seen_at >= terms.expires_at
    return False


def _rounding(live: Sequence[Payment]) -> Fraction:
    """How far a customer who paid exactly what was asked can be above the price: each coin's amount is rounded
    up to its atomic unit, so less than one unit of each coin paid with. Overpaid starts at that much more."""
    return max(sum({p.rate for p in live}, Fraction(0)), Fraction(1, 10**9))


def assess(terms: Terms, payments: Sequence[Payment], tip_height: int, now: float) -> Assessment:
    live = [p for p in payments if p.counts]
    received = sum((p.value for p in live), Fraction(0))
    confirmed = sum((p.value for p in live if p.is_confirmed(tip_height, terms.confirmations_required)), Fraction(0))

    if terms.manual is not None:
        status = terms.manual
    elif terms.cancelled:
        status = Status.INVALID if received else Status.CANCELLED
    elif _covers(confirmed, terms):
        status = Status.PAID
    elif _covers(received, terms):
        status = Status.PROCESSING
    elif now >= terms.expires_at:
        status = Status.EXPIRED
    else:
        status = Status.UNPAID

    exception: InvoiceException | None = None
    paying = status in (Status.PAID, Status.PROCESSING)
    if (status is Status.INVALID and terms.manual is None) or (paying and _covered_after_expiry(live, terms)):
        exception = InvoiceException.PAID_LATE
    elif any(p.replaced for p in payments) and not paying:
        exception = InvoiceException.DOUBLE_SPENT
    elif any(p.wrong_asset and not p.replaced for p in payments):
        exception = InvoiceException.WRONG_ASSET
    elif received - terms.amount >= _rounding(live):
        exception = InvoiceException.OVERPAID
    elif 0 < received < terms.amount:
        exception = InvoiceException.UNDERPAID
    return Assessment(status, exception, received, confirmed)


def event_type(before: Status | None, after: Status) -> str:
    """`invoice.<status>` when the status moves, else `invoice.updated` (new payment, exception...)."""
    if before is None:
        return "invoice.created"
    return f"invoice.{after}" if before != after else "invoice.updated"
