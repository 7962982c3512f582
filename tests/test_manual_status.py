"""Marking an invoice paid or invalid by hand (Greenfield's "mark status"): the state machine stays pure, the
mark overrides what the payments say, and the ledger emits the status change as an event."""

from decimal import Decimal

from watcherd.core.invoices import InvoiceException, Payment, Status, Terms, assess


def terms(**kw) -> Terms:
    return Terms(amount=1000, expires_at=100, confirmations_required=1, **kw)


def test_manual_paid_overrides_missing_money():
    assert assess(terms(manual=Status.PAID), [], 0, 50).status is Status.PAID


def test_manual_invalid_overrides_paid_and_keeps_exception_rules():
    paid = [Payment("t", 0, 1500, 10, block_height=1)]
    result = assess(terms(manual=Status.INVALID), paid, 5, 50)
    assert result.status is Status.INVALID
    assert result.exception is InvoiceException.OVERPAID  # not "paid_late": nobody cancelled it


def test_manual_paid_on_underpaid_keeps_underpaid():
    partial = [Payment("t", 0, 400, 10, block_height=1)]
    result = assess(terms(manual=Status.PAID, underpaid_tolerance_percent=Decimal(0)), partial, 5, 200)
    assert (result.status, result.exception) == (Status.PAID, InvoiceException.UNDERPAID)


def test_without_mark_unchanged():
    assert assess(terms(), [], 0, 50).status is Status.UNPAID
    assert assess(terms(), [], 0, 150).status is Status.EXPIRED
