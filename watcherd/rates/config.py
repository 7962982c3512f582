"""The `[rates]` table as a frozen dataclass, and the sources watcherd knows.

Defined here, not in watcherd/config, so that the rates package imports no config code: the config reader
(watcherd/config/tables.py, parse_rates) builds this dataclass, and tests build it directly."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType

# Each source's real public API, as its base URL; `[rates.urls]` may point one at a mirror, a proxy or a test
# server (a path prefix is kept: "https://proxy.example/kraken" asks "https://proxy.example/kraken/0/public/...").
SOURCE_URLS: Mapping[str, str] = MappingProxyType({
    "kraken": "https://api.kraken.com",
    "coinbase": "https://api.coinbase.com",
    "bitstamp": "https://www.bitstamp.net",
    "binance": "https://api.binance.com",
    "coingecko": "https://api.coingecko.com",
})

DEFAULT_SOURCES = ("kraken", "coinbase", "bitstamp")
DEFAULT_CURRENCIES = ("USD", "EUR")


@dataclass(frozen=True)
class RatesConfig:
    sources: tuple[str, ...] = DEFAULT_SOURCES  # names in SOURCE_URLS; the median of those that answer
    currencies: tuple[str, ...] = DEFAULT_CURRENCIES  # fiat codes (core/currencies.py) fetched for every asset
    refresh_seconds: float = 60
    max_age_seconds: float = 300  # a source value older than this is not used; no fresh value: RatesUnavailable
    spread_percent: Decimal = Decimal(0)  # the quoted rate is the median * (1 - spread/100): the customer pays more
    max_deviation_percent: Decimal = Decimal(3)  # a source this far from the median is left out of it
    timeout_seconds: float = 10  # per HTTP request
    urls: Mapping[str, str] = field(default_factory=dict)  # source -> base URL, overriding SOURCE_URLS
    # "USDC_USD" -> Decimal("1"): the operator's own rate, never fetched, always fresh
    fixed: Mapping[str, Decimal] = field(default_factory=dict)
    coingecko_api_key: str | None = field(default=None, repr=False)
    # Fresh sources that must agree for a pair to have a rate; None: 2 where two or more sources list the pair,
    # else 1 (so one source alone never prices a pair another one lists too)
    min_sources: int | None = None

    def url(self, source: str) -> str:
        return (self.urls.get(source) or SOURCE_URLS[source]).rstrip("/")
