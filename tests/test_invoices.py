"""The invoice state machine, table-driven and by property: no I/O, no event loop."""

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from watcherd.core.invoices import InvoiceException, Payment, PaymentStatus, Status, Terms, assess, event_type

TERMS = Terms(amount=100_000, expires_at=1_000, confirmations_required=2)
TIP = 50  # a payment in block 49 has 2 confirmations, in block 50 one


def pay(amount, *, block=None, seen=10, replaced=False, txid="a"):
    return Payment(txid=txid, vout=0, amount=amount, first_seen_at=seen, block_height=block, replaced=replaced)


@pytest.mark.parametrize(
    ("payments", "now", "status", "exception"),
    [
        ([], 0, Status.UNPAID, None),
        ([], 1_000, Status.EXPIRED, None),
        ([pay(100_000)], 0, Status.PROCESSING, None),
        ([pay(100_000, block=50)], 0, Status.PROCESSING, None),  # one confirmation of two
        ([pay(100_000, block=49)], 0, Status.PAID, None),
        ([pay(60_000)], 0, Status.UNPAID, InvoiceException.UNDERPAID),
        ([pay(60_000)], 2_000, Status.EXPIRED, InvoiceException.UNDERPAID),
        ([pay(60_000, block=40), pay(40_000, txid="b")], 0, Status.PROCESSING, None),
        ([pay(60_000, block=40), pay(40_000, block=49, txid="b")], 0, Status.PAID, None),
        ([pay(150_000, block=40)], 0, Status.PAID, InvoiceException.OVERPAID),
        ([pay(100_000, block=40, seen=1_500)], 2_000, Status.PAID, InvoiceException.PAID_LATE),
        ([pay(100_000, seen=1_500)], 2_000, Status.PROCESSING, InvoiceException.PAID_LATE),
        # seen before expiry, confirmed after: not late
        ([pay(100_000, block=49, seen=900)], 2_000, Status.PAID, None),
        ([pay(100_000, replaced=True)], 0, Status.UNPAID, InvoiceException.DOUBLE_SPENT),
        ([pay(100_000, replaced=True), pay(100_000, txid="b")], 0, Status.PROCESSING, None),
        # unconfirmed money never counts for paid, confirmed money below the tolerance neither
        ([pay(50_000, block=40), pay(50_000, txid="b")], 0, Status.PROCESSING, None),
    ],
)
def test_status_table(payments, now, status, exception):
    """Each row is one rule of the README's state table."""
    result = assess(TERMS, payments, TIP, now)
    assert (result.status, result.exception) == (status, exception)


def test_underpaid_tolerance_counts_as_paid_but_stays_visible():
    terms = Terms(amount=100_000, expires_at=1_000, confirmations_required=1,
                  underpaid_tolerance_percent=Decimal("1.5"))
    assert assess(terms, [pay(98_500, block=50)], TIP, 0).status is Status.PAID
    assert assess(terms, [pay(98_500, block=50)], TIP, 0).exception is InvoiceException.UNDERPAID
    assert assess(terms, [pay(98_499, block=50)], TIP, 0).status is Status.UNPAID


@pytest.mark.parametrize(("tolerance", "payments", "status", "exception"), [
    ("100", [], Status.UNPAID, None),  # nothing received is never covered, whatever the tolerance
    ("100", [pay(100_000, replaced=True)], Status.UNPAID, InvoiceException.DOUBLE_SPENT),
    ("100", [pay(1)], Status.PROCESSING, InvoiceException.UNDERPAID),
    ("150", [], Status.UNPAID, None),
    ("99.999", [], Status.UNPAID, None),
    ("99.999", [pay(1)], Status.PROCESSING, InvoiceException.UNDERPAID),
    ("99.999", [pay(1, block=49)], Status.PAID, InvoiceException.UNDERPAID),
    ("50", [pay(49_999)], Status.UNPAID, InvoiceException.UNDERPAID),
    ("50", [pay(50_000)], Status.PROCESSING, InvoiceException.UNDERPAID),
    ("0", [pay(100_000, block=49)], Status.PAID, None),
])
def test_covered_needs_money_received(tolerance, payments, status, exception):
    """The tolerance lowers what covers the invoice, never to nothing: paid or processing needs a payment that
    counts, even under a tolerance of 100% or more (stored before the API capped it)."""
    terms = Terms(amount=100_000, expires_at=1_000, confirmations_required=2,
                  underpaid_tolerance_percent=Decimal(tolerance))
    result = assess(terms, payments, TIP, 0)
    assert (result.status, result.exception) == (status, exception)
    assert assess(terms, payments, TIP, 2_000).status is (Status.EXPIRED if status is Status.UNPAID else status)


def test_cancelled_invoice_that_receives_money_is_invalid_not_lost():
    terms = Terms(amount=100_000, expires_at=1_000, confirmations_required=1, cancelled=True)
    assert assess(terms, [], TIP, 0).status is Status.CANCELLED
    result = assess(terms, [pay(100_000, block=50)], TIP, 0)
    assert (result.status, result.exception, result.received) == (Status.INVALID, InvoiceException.PAID_LATE,
                                                                  100_000)


def test_payment_status():
    assert pay(1).status(TIP, 2) is PaymentStatus.PENDING
    assert pay(1, block=50).status(TIP, 2) is PaymentStatus.PENDING
    assert pay(1, block=49).status(TIP, 2) is PaymentStatus.CONFIRMED
    assert pay(1, block=49, replaced=True).status(TIP, 2) is PaymentStatus.REPLACED
    assert pay(1, block=60).confirmations(TIP) == 0  # a block above our tip (mid-reorg) is not a confirmation


def test_event_types():
    assert event_type(None, Status.UNPAID) == "invoice.created"
    assert event_type(Status.UNPAID, Status.PROCESSING) == "invoice.processing"
    assert event_type(Status.PROCESSING, Status.PROCESSING) == "invoice.updated"


amounts = st.integers(min_value=1, max_value=10**20)
payments_st = st.lists(
    st.builds(pay, amounts, block=st.none() | st.integers(0, 60), seen=st.integers(0, 2_000),
              replaced=st.booleans(), txid=st.text("abcdef", min_size=1, max_size=4)),
    max_size=6,
)


@given(payments_st, st.integers(0, 3_000))
def test_properties(payments, now):
    """Money is never lost or double counted, and status follows from the sums alone."""
    result = assess(TERMS, payments, TIP, now)
    live = [p for p in payments if not p.replaced]
    assert result.received == sum(p.amount for p in live)
    assert result.confirmed <= result.received
    if result.status is Status.PAID:
        assert result.confirmed >= TERMS.amount
    if result.received and result.status in (Status.UNPAID, Status.EXPIRED):
        assert result.exception in (InvoiceException.UNDERPAID, InvoiceException.DOUBLE_SPENT)
    if result.received > TERMS.amount and result.exception is None:
        pytest.fail("overpayment must be visible")
    # replacing every payment takes the invoice back, whatever it was
    gone = assess(TERMS, [Payment(p.txid, p.vout, p.amount, p.first_seen_at, p.block_height, True)
                          for p in payments], TIP, now)
    assert gone.status in (Status.UNPAID, Status.EXPIRED) and gone.received == 0


# A 49.00 USD invoice (4,900 cents) payable in BTC at 50,000 USD/BTC and XMR at 150 USD/XMR, rates locked at
# creation: one satoshi is worth 1/2000 cent, one piconero 1.5e-10 cents. Each payment is confirmed (or not)
# on its own chain, as the ledger computes it.
USD = Terms(amount=4_900, expires_at=1_000, confirmations_required=1)
SAT = Fraction(50_000 * 100, 10**8)
PICO = Fraction(150 * 100, 10**12)
BTC_DUE = 98_000  # ceil(4900 / SAT): exactly 0.00098 BTC
XMR_DUE = 326_666_666_667  # ceil(4900 / PICO): 0.326666666667 XMR, rounded up to the piconero


def coin(amount, rate, *, confirmed=False, seen=10, txid="a", replaced=False):
    return Payment(txid=txid, vout=0, amount=amount, first_seen_at=seen, rate=rate, confirmed=confirmed,
                   replaced=replaced)


@pytest.mark.parametrize(
    ("payments", "now", "status", "exception"),
    [
        ([coin(BTC_DUE, SAT, confirmed=True)], 0, Status.PAID, None),
        ([coin(XMR_DUE, PICO, confirmed=True)], 0, Status.PAID, None),  # rounded up, yet not "overpaid"
        ([coin(XMR_DUE + 1, PICO, confirmed=True)], 0, Status.PAID, InvoiceException.OVERPAID),
        ([coin(XMR_DUE - 1, PICO, confirmed=True)], 0, Status.UNPAID, InvoiceException.UNDERPAID),
        # half in BTC, the rest in XMR: paid once both are confirmed, each on its own chain
        ([coin(BTC_DUE // 2, SAT, confirmed=True), coin((XMR_DUE + 1) // 2, PICO, txid="x")], 0,
         Status.PROCESSING, None),
        ([coin(BTC_DUE // 2, SAT, confirmed=True), coin((XMR_DUE + 1) // 2, PICO, confirmed=True, txid="x")], 0,
         Status.PAID, None),
        ([coin(BTC_DUE // 2, SAT, confirmed=True), coin(XMR_DUE // 2, PICO, confirmed=True, txid="x",
                                                         replaced=True)], 0,
         Status.UNPAID, InvoiceException.DOUBLE_SPENT),  # the XMR half was double-spent away
        # the XMR half arrived after expiry: the invoice was made whole late
        ([coin(BTC_DUE // 2, SAT, confirmed=True), coin((XMR_DUE + 1) // 2, PICO, confirmed=True, seen=1_200,
                                                         txid="x")], 2_000,
         Status.PAID, InvoiceException.PAID_LATE),
    ],
)
def test_an_invoice_paid_across_coins_counts_each_at_its_locked_rate(payments, now, status, exception):
    result = assess(USD, payments, tip_height=0, now=now)
    assert (result.status, result.exception) == (status, exception)


def test_a_payment_is_worth_exactly_its_amount_at_the_rate():
    assert coin(BTC_DUE, SAT).value == 4_900
    assert 0 < coin(XMR_DUE, PICO).value - 4_900 < PICO  # the rounding up: less than one piconero's worth
    assert assess(USD, [coin(BTC_DUE // 2, SAT)], 0, 0).received == 2_450
