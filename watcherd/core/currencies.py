"""Fiat currencies an invoice may be priced in, with their ISO 4217 minor units (USD 2: cents; JPY 0; BHD 3).

An invoice's price is an integer of the currency's minor unit, as coin amounts are integers of the coin's
atomic unit. A currency missing here is one line to add."""

from __future__ import annotations

MINOR_UNITS: dict[str, int] = {
    # ISO 4217, the currencies shops price in and exchanges quote against
    "USD": 2, "EUR": 2, "GBP": 2, "CHF": 2, "CAD": 2, "AUD": 2, "NZD": 2, "JPY": 0, "CNY": 2, "HKD": 2,
    "SGD": 2, "KRW": 0, "INR": 2, "BRL": 2, "MXN": 2, "ARS": 2, "CLP": 0, "COP": 2, "ZAR": 2, "NGN": 2,
    "TRY": 2, "RUB": 2, "UAH": 2, "PLN": 2, "CZK": 2, "HUF": 2, "SEK": 2, "NOK": 2, "DKK": 2, "ISK": 0,
    "ILS": 2, "AED": 2, "SAR": 2, "QAR": 2, "KWD": 3, "BHD": 3, "OMR": 3, "JOD": 3, "TND": 3, "EGP": 2,
    "THB": 2, "IDR": 2, "MYR": 2, "PHP": 2, "VND": 0, "TWD": 2, "PKR": 2, "BDT": 2, "KES": 2, "RON": 2,
    "BGN": 2, "RSD": 2, "GEL": 2, "KZT": 2,
}


def minor_units(currency: str) -> int | None:
    """The currency's minor units, None for a code that is not a known fiat currency."""
    return MINOR_UNITS.get(currency)
