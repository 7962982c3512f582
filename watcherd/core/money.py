"""Money is integers (satoshi, wei, piconero); decimal strings exist only at the edges."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

MAX_ATOMIC = 2**256 - 1  # no supported chain carries more in one amount (an EVM uint256)


def to_atomic(text: str, decimals: int) -> int:
    """Parse a decimal string ("0.015") into atomic units; ValueError names what is wrong."""
    if not isinstance(text, str):
        raise ValueError("must be a decimal string, e.g. \"0.015\"")
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise ValueError(f"{text!r} is not a decimal number") from None
    if not value.is_finite():
        raise ValueError(f"{text!r} is not a finite number")
    try:
        atomic = value.scaleb(decimals)
        whole = atomic == atomic.to_integral_value()
    except ArithmeticError:  # decimal.Overflow and friends: an exponent far out of range
        raise ValueError(f"{text!r} is out of range") from None
    if not whole:
        raise ValueError(f"{text!r} has more than {decimals} decimal places")
    if abs(atomic) > MAX_ATOMIC:
        raise ValueError(f"{text!r} is more than any chain can carry")
    return int(atomic)


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
