"""Money is integers (satoshi, wei, piconero); decimal strings exist only at the edges.

Every number a request brings is read here, before any arithmetic: plain ASCII digits with at most one point, of
bounded length (judged first, so a megabyte of digits is refused unread), parsed exactly. No sign, exponent,
Infinity, NaN, underscore or non-ASCII digit ("²", "١") is a number: `Decimal("1e900000000")` is cheap to build but
expands to 900 MB once formatted or scaled, and `str.isdigit()` is true for digits `int()` refuses.
"""

from __future__ import annotations

import math
from decimal import Decimal

MAX_ATOMIC = 2**256 - 1  # no supported chain carries more in one amount (an EVM uint256)
MAX_DIGITS = 100  # digits of one number from a request, before and after the point (MAX_ATOMIC has 78)
QUOTED = 64  # characters of a request's value an error message quotes (an invoice id has 28)


class TooPrecise(ValueError):
    """More decimal places than the unit has: an amount is exact, never rounded."""


def quoted(text: str, limit: int = QUOTED) -> str:
    """`text` as an error message may quote it: its repr, cut to `limit` characters."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "…"


def _parts(text: object, max_digits: int) -> tuple[str, str]:
    """The digits before and after the point of a plain decimal string ("12.50" -> ("12", "50"))."""
    if not isinstance(text, str):
        raise ValueError("must be a decimal string, e.g. \"0.015\"")
    if len(text) > max_digits + 3:  # the point and two spaces around
        raise ValueError(f"has more than {max_digits} digits")
    whole, _, frac = text.strip(" \t\r\n").partition(".")
    if not (whole or frac) or not all(part.isascii() and part.isdigit() for part in (whole, frac) if part):
        raise ValueError(f"{quoted(text)} is not a plain decimal number: ASCII digits and at most one point, "
                         "no sign or exponent")
    if len(whole) + len(frac) > max_digits:
        raise ValueError(f"has more than {max_digits} digits")
    return whole, frac


def parse_decimal(text: object, *, max_digits: int = MAX_DIGITS) -> Decimal:
    """A non-negative decimal string as an exact Decimal ("0.50" -> Decimal("0.50")); ValueError otherwise."""
    whole, frac = _parts(text, max_digits)
    return Decimal(f"{whole or '0'}.{frac or '0'}")  # a Decimal built from a string is exact at any precision


def parse_whole(text: object, *, max_digits: int) -> int:
    """A whole number of at most `max_digits` ASCII digits; ValueError otherwise."""
    if not isinstance(text, str) or not 0 < len(text) <= max_digits or not (text.isascii() and text.isdigit()):
        raise ValueError(f"must be a whole number of at most {max_digits} digits")
    return int(text)


def number_text(value: object) -> str:
    """A JSON value where a number is expected, as text for the parsers above: a string as it is, an integer's
    digits, a float in its shortest form without exponent (5e-05 -> "0.00005", 1e300 -> 301 digits, which the
    parsers' caps refuse); ValueError for anything else (true, null, a list, Infinity)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("must be a number")
    if isinstance(value, int):
        return str(value)  # a JSON integer has at most 4,300 digits (Python's own limit refuses the body beyond)
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return format(Decimal(repr(value)), "f")


def to_atomic(text: object, decimals: int) -> int:
    """Parse a decimal string ("0.015") into atomic units, exactly; ValueError names what is wrong, TooPrecise
    when it has more than `decimals` places (trailing zeros aside)."""
    whole, frac = _parts(text, MAX_DIGITS)
    if len(frac.rstrip("0")) > decimals:
        raise TooPrecise(f"has more than {decimals} decimal places")
    atomic = int((whole or "0") + frac[:decimals].ljust(decimals, "0"))
    if atomic > MAX_ATOMIC:
        raise ValueError("is more than any chain can carry")
    return atomic


def to_decimal_string(atomic: int, decimals: int, *, fixed: bool = False) -> str:
    """Format atomic units as a plain decimal string with no exponent and no trailing zeros (`fixed`: with all
    `decimals` places, as prices in a fiat currency are written: 49.00)."""
    sign = "-" if atomic < 0 else ""
    whole, frac = divmod(abs(atomic), 10**decimals)
    if fixed and decimals:
        return f"{sign}{whole}.{str(frac).rjust(decimals, '0')}"
    if not decimals or not frac:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{str(frac).rjust(decimals, '0').rstrip('0')}"
