"""The one parser every number of a request goes through: exact, bounded, ASCII, refusing what it cannot hold."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from watcherd.core.money import (
    MAX_ATOMIC,
    TooPrecise,
    number_text,
    parse_decimal,
    parse_whole,
    quoted,
    to_atomic,
    to_decimal_string,
)


@pytest.mark.parametrize(("text", "decimals", "atomic"), [
    ("0.015", 8, 1_500_000),
    ("1", 0, 1),
    ("0.0150", 3, 15),  # trailing zeros past the unit are no precision
    (" 2.5 ", 1, 25),
    (".5", 1, 5),
    ("5.", 2, 500),
    ("007", 2, 700),
    # 29 and 31 significant digits: Decimal's 28-digit context rounded these
    ("12345678901234567890123456789", 0, 12345678901234567890123456789),
    ("1.000000000000000000000000000001", 30, 10**30 + 1),
    ("123456789012345678901234567.890123456789012345", 18, 123456789012345678901234567890123456789012345),
    (str(MAX_ATOMIC), 0, MAX_ATOMIC),
])
def test_amounts_are_exact(text, decimals, atomic):
    """A decimal string is the integer of atomic units it says, however many digits: nothing is rounded."""
    assert to_atomic(text, decimals) == atomic


@pytest.mark.parametrize(("text", "decimals"), [
    ("0.123456789", 8), ("1.000000000000000000000000000001", 18), ("0.5", 0), ("49.001", 2),
])
def test_more_decimals_than_the_unit_has_are_refused(text, decimals):
    """An amount finer than the asset's atomic unit is refused (TooPrecise), never rounded to a neighbour."""
    with pytest.raises(TooPrecise, match=f"more than {decimals} decimal places"):
        to_atomic(text, decimals)


HOSTILE = ["1e900000000", "1E5", "Infinity", "inf", "NaN", "-1", "+1", "-0", "²", "١٢", "1_000", "0x10", "1.2.3",
           "", ".", " ", "1 000", "1,5", "\u00a05", "5\x00"]


@pytest.mark.parametrize("text", HOSTILE)
def test_anything_but_plain_ascii_decimals_is_refused(text):
    """Exponents, specials, signs, non-ASCII digits (str.isdigit accepts "²"), separators: ValueError, and the
    whole-number parser refuses them too."""
    with pytest.raises(ValueError) as refused:
        to_atomic(text, 8)
    assert not isinstance(refused.value, TooPrecise)
    with pytest.raises(ValueError):
        parse_decimal(text)
    with pytest.raises(ValueError):
        parse_whole(text, max_digits=20)


def test_long_input_is_refused_by_its_length_and_never_quoted_whole():
    """A megabyte of digits is refused by its length, and no error message carries more than a hundred or so
    characters of what was sent (the quote is cut at 64)."""
    for text in ("1" * 1_000_000, "1" * 101, "0." + "0" * 99 + "1", "x" * 1_000_000, "²" * 50):
        for parse in (lambda t: to_atomic(t, 8), parse_decimal, lambda t: parse_whole(t, max_digits=9)):
            with pytest.raises(ValueError) as refused:
                parse(text)
            assert len(str(refused.value)) < 200, str(refused.value)
    with pytest.raises(ValueError, match="more than any chain can carry"):
        to_atomic("9" * 78, 0)
    assert quoted("x" * 1000) == repr("x" * 64) + "…" and quoted("abc") == "'abc'"


def test_whole_numbers_have_a_digit_cap():
    """A whole number is ASCII digits only, no more than the cap allows."""
    assert parse_whole("0042", max_digits=4) == 42
    for text in ("10000", "4.0", "", " 4"):
        with pytest.raises(ValueError, match="at most 4 digits"):
            parse_whole(text, max_digits=4)


@pytest.mark.parametrize(("value", "text"), [
    ("1.50", "1.50"), (10, "10"), (49.9, "49.9"), (5e-05, "0.00005"), (1e21, "1000000000000000000000"), (0.1, "0.1"),
])
def test_json_numbers_become_their_shortest_decimal(value, text):
    """A JSON float is read as the decimal it was written as (49.9, not 49.89999...), with no exponent."""
    assert number_text(value) == text


@pytest.mark.parametrize("value", [True, None, [], {}, float("inf"), float("nan")])
def test_json_values_that_are_no_number_are_refused(value):
    """true, null, containers and the non-finite floats are no number."""
    with pytest.raises(ValueError):
        number_text(value)


def test_a_float_too_large_for_the_caps_is_refused_after_it_is_written_out():
    """1e300 as a JSON number is 301 digits: bounded text, refused by the cap."""
    assert len(number_text(1e300)) == 301
    with pytest.raises(ValueError, match="more than 100 digits"):
        parse_decimal(number_text(1e300))


@given(st.integers(min_value=0, max_value=MAX_ATOMIC), st.integers(min_value=0, max_value=30))
def test_formatting_and_parsing_round_trip(atomic, decimals):
    """What watcherd writes it reads back as the same integer, however large."""
    assert to_atomic(to_decimal_string(atomic, decimals), decimals) == atomic
    assert to_atomic(to_decimal_string(atomic, decimals, fixed=True), decimals) == atomic


@given(st.decimals(min_value=0, max_value=10**20, allow_nan=False, allow_infinity=False, places=8))
def test_parse_decimal_is_exact(value):
    """The Decimal is the one written, digit for digit."""
    assert parse_decimal(format(value, "f")) == value
