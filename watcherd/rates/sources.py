"""One class per exchange-rate source, each reading that source's real public endpoint and JSON shape.

A source answers `fetch(session, pairs)` with the prices it found, exact (JSON numbers parsed as Decimal,
strings read as decimals, kept as Fraction; never a float). A pair the source does not list is simply absent;
a pair it answers garbage for (zero, negative, not a number) is absent and named in `problems`; a source that
gives nothing usable at all (unreachable, HTTP error, not JSON, wrong shape) raises. Third-party exceptions
(aiohttp, timeouts) leave this module as they are and are described by `describe()` for the log.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from types import MappingProxyType
from typing import ClassVar, TypeVar
from urllib.parse import urlsplit

import aiohttp

Pair = tuple[str, str]  # (asset, currency): the price of one whole `asset` in `currency`

PRICE_EXPONENT = 30  # a price is between 1e-30 and 1e30 currency units per coin
MAX_BODY = 8 * 1024 * 1024  # an all-tickers answer is well under 1 MB; more is a misbehaving server
_DECIMAL = re.compile(r"-?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")  # a sign, so -5 is "not positive"
# Asset codes an exchange can have: letters and digits (a token symbol such as "USDC.e" is no exchange code).
_PLAIN = re.compile(r"[A-Za-z0-9]{1,16}")

_K = TypeVar("_K")
_V = TypeVar("_V")


def pair_name(pair: Pair) -> str:
    return f"{pair[0]}_{pair[1]}"


@dataclass(frozen=True)
class NotJson:
    """An answer body that is not JSON (an HTML error page, a captive portal): its start, for the log."""

    start: bytes


class SourceError(Exception):
    """The source gave nothing usable (for one request, or at all); the message says why, for the log."""


class HttpStatusError(SourceError):
    def __init__(self, status: int):
        self.status = status
        super().__init__(f"answered HTTP {status}")


@dataclass(frozen=True)
class Price:
    rate: Fraction  # currency per one whole asset, > 0
    as_of: float | None = None  # the source's own timestamp of the value (Unix seconds), when it gives one


@dataclass
class Fetched:
    prices: dict[Pair, Price] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # what failed without failing the whole source


def describe(error: BaseException, timeout: float) -> str:
    """A log-friendly reason for a failed request."""
    if isinstance(error, SourceError):
        return str(error)
    if isinstance(error, TimeoutError):  # aiohttp's timeouts are TimeoutError subclasses
        return f"timed out after {timeout:g} s"
    if isinstance(error, aiohttp.ClientConnectionError):
        return f"cannot connect: {error}" if str(error) else "cannot connect"
    return f"{type(error).__name__}: {error}"


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not a price")


def parse_json(body: bytes) -> object:
    """JSON with exact numbers: 1.5 becomes Decimal('1.5'), never a float; NaN and Infinity are refused."""
    return json.loads(body, parse_float=Decimal, parse_constant=_refuse_constant)


def price(value: object) -> Fraction:
    """A positive exact price from a JSON string, integer or Decimal; ValueError naming the bad value."""
    if isinstance(value, str) and _DECIMAL.fullmatch(value):
        number = Decimal(value)
    elif isinstance(value, Decimal) and value.is_finite():
        number = value
    elif isinstance(value, int) and not isinstance(value, bool) and len(str(value)) <= 40:
        number = Decimal(value)
    else:
        raise ValueError(f"price {_short(value)} is not a number")
    if number <= 0:
        raise ValueError(f"price {_short(value)} is not positive")
    # Checked before the Fraction is built: "1e999999999" would otherwise be a billion-digit integer.
    if not -PRICE_EXPONENT <= number.adjusted() <= PRICE_EXPONENT:
        raise ValueError(f"price {_short(value)} is out of range")
    return Fraction(number)


def timestamp(value: object) -> float | None:
    """A Unix timestamp (seconds) from a JSON integer or digit string; None for anything else."""
    if isinstance(value, str) and value.isdigit() and value.isascii():
        return float(value)
    if isinstance(value, int | Decimal) and not isinstance(value, bool):
        seconds = float(value)
        return seconds if math.isfinite(seconds) else None
    return None


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class Source:
    """Base of the sources: the base URL, the request timeout, one GET returning (status, JSON)."""

    name: ClassVar[str]

    def __init__(self, base_url: str, timeout: float, api_key: str | None = None):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.api_key = api_key

    async def fetch(self, session: aiohttp.ClientSession, pairs: Collection[Pair]) -> Fetched:
        raise NotImplementedError

    def may_list(self, pair: Pair) -> bool:
        """Whether this source could list `pair` at all, before it has answered (min_sources counts on it)."""
        return bool(_PLAIN.fullmatch(pair[0]) and _PLAIN.fullmatch(pair[1]))

    async def get(
        self, session: aiohttp.ClientSession, path: str, params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, object]:
        """GET base_url + path: (HTTP status, the body as exact JSON, or NotJson); see ok()."""
        async with session.get(f"{self.base_url}{path}", params=params, headers=headers, allow_redirects=False,
                               timeout=aiohttp.ClientTimeout(total=self.timeout)) as response:
            body = bytearray()
            async for chunk in response.content.iter_chunked(65536):
                body += chunk
                if len(body) > MAX_BODY:
                    raise SourceError(f"answered more than {MAX_BODY // 1024 // 1024} MB")
            status = response.status
        try:
            return status, parse_json(bytes(body))
        except ValueError:
            return status, NotJson(bytes(body[:40]))

    @staticmethod
    def ok(status: int, document: object) -> None:
        """Raise unless the answer is a 200 with a JSON body."""
        if status != 200:
            raise HttpStatusError(status)
        if isinstance(document, NotJson):
            raise SourceError(f"answered something that is not JSON: {_short(document.start)}")

    async def each(
        self, items: Iterable[_K], one: Callable[[_K], Awaitable[_V | None]], label: Callable[[_K], str] = str,
    ) -> tuple[dict[_K, _V], list[str]]:
        """Run `one` for every item concurrently (a source with one request per asset or pair): the answers,
        and the failures as problems. `one` returns None for an item the source does not list. Raises when
        nothing at all was answered, so a source that is down counts as failing, not as listing nothing."""
        items = list(items)
        results = await asyncio.gather(*(one(item) for item in items), return_exceptions=True)
        answered: dict[_K, _V] = {}
        problems: list[str] = []
        for item, result in zip(items, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, Exception):
                    raise result  # a cancellation is not a source problem
                problems.append(f"{label(item)}: {describe(result, self.timeout)}")
            elif result is not None:
                answered[item] = result
        if items and not answered:
            if problems:
                more = f" (and {len(problems) - 2} more)" if len(problems) > 2 else ""
                raise SourceError("; ".join(problems[:2]) + more)
            raise SourceError(f"lists none of {', '.join(map(label, items))}; is its URL right?")
        return answered, problems


def plain(pairs: Iterable[Pair]) -> list[Pair]:
    """The pairs an exchange could list, in a stable order."""
    return sorted(p for p in pairs if _PLAIN.fullmatch(p[0]) and _PLAIN.fullmatch(p[1]))


class _LearnsUnlisted(Source):
    """A source asked for many pairs in one request that refuses the whole request when one pair is unknown
    (Kraken, Binance): on that refusal it reads every ticker once, remembers for an hour which of ours it does
    not list, and asks only for the others meanwhile."""

    RELEARN_SECONDS = 3600.0

    def __init__(self, base_url: str, timeout: float, api_key: str | None = None):
        super().__init__(base_url, timeout, api_key)
        self._unlisted: set[Pair] = set()
        self._learned_at = -math.inf

    def to_ask(self, pairs: Iterable[Pair]) -> list[Pair]:
        if time.monotonic() - self._learned_at > self.RELEARN_SECONDS:
            self._unlisted.clear()
        return [p for p in plain(pairs) if p not in self._unlisted]

    def learn(self, asked: Iterable[Pair], listed: Collection[Pair]) -> None:
        self._unlisted = {p for p in asked if p not in listed}
        self._learned_at = time.monotonic()


# ---- Kraken: GET /0/public/Ticker?pair=XBTUSD,ETHEUR -> {"error": [], "result": {"XXBTZUSD": {"c": [last, lot]}}}

KRAKEN_CODES: Mapping[str, str] = MappingProxyType({"BTC": "XBT", "DOGE": "XDG"})


class Kraken(_LearnsUnlisted):
    name = "kraken"

    @staticmethod
    def code(asset: str) -> str:
        return KRAKEN_CODES.get(asset.upper(), asset.upper())

    def result_keys(self, pair: Pair) -> tuple[str, ...]:
        # Older pairs answer under their X/Z-prefixed name (XBTUSD -> XXBTZUSD), newer ones as asked (USDCUSD).
        asset, currency = self.code(pair[0]), pair[1].upper()
        return f"{asset}{currency}", f"X{asset}Z{currency}"

    async def fetch(self, session: aiohttp.ClientSession, pairs: Collection[Pair]) -> Fetched:
        asked = self.to_ask(pairs)
        if not asked:
            return Fetched()
        result = await self._ticker(session, ",".join(self.code(a) + c.upper() for a, c in asked))
        if result is None:  # Kraken does not list one of them
            result = await self._ticker(session, None)
            if result is None:
                raise SourceError("refused to list every ticker")
            self.learn(asked, [p for p in asked if any(k in result for k in self.result_keys(p))])
        fetched = Fetched()
        for pair in asked:
            entry = next((result[k] for k in self.result_keys(pair) if k in result), None)
            if entry is None:
                continue
            try:
                last = entry["c"][0] if isinstance(entry, dict) and isinstance(entry.get("c"), list) else None
                fetched.prices[pair] = Price(price(last))
            except (ValueError, IndexError) as e:
                fetched.problems.append(f"{pair_name(pair)}: {e}")
        return fetched

    async def _ticker(self, session: aiohttp.ClientSession, pairs: str | None) -> dict[str, object] | None:
        """The `result` object; None when Kraken refuses the request for an unknown pair."""
        status, document = await self.get(session, "/0/public/Ticker", {"pair": pairs} if pairs else None)
        errors = document.get("error") if isinstance(document, dict) else None
        if not isinstance(errors, list):
            self.ok(status, document)
            raise SourceError("answered without its error list: not Kraken's Ticker shape")
        # Kraken's messages starting with E are errors, with W warnings.
        failed = [str(e) for e in errors if not (isinstance(e, str) and e.startswith("W"))]
        if pairs is not None and "EQuery:Unknown asset pair" in failed:
            return None
        if failed:
            raise SourceError(f"answered error {', '.join(failed)}")
        self.ok(status, document)
        result = document.get("result") if isinstance(document, dict) else None
        if not isinstance(result, dict):
            raise SourceError("answered without a result object: not Kraken's Ticker shape")
        return result


# ---- Coinbase: GET /v2/exchange-rates?currency=BTC -> {"data": {"currency": "BTC", "rates": {"USD": "50000.1"}}}


class Coinbase(Source):
    name = "coinbase"

    async def fetch(self, session: aiohttp.ClientSession, pairs: Collection[Pair]) -> Fetched:
        asked = plain(pairs)
        assets = sorted({a.upper() for a, _ in asked})
        rates, problems = await self.each(assets, lambda asset: self._rates(session, asset))
        fetched = Fetched(problems=problems)
        for pair in asked:
            value = rates.get(pair[0].upper(), {}).get(pair[1].upper())
            if value is None:
                continue
            try:
                fetched.prices[pair] = Price(price(value))
            except ValueError as e:
                fetched.problems.append(f"{pair_name(pair)}: {e}")
        return fetched

    async def _rates(self, session: aiohttp.ClientSession, asset: str) -> dict[str, object] | None:
        status, document = await self.get(session, "/v2/exchange-rates", {"currency": asset})
        if status in (400, 404):  # "Invalid currency": Coinbase does not list it
            return None
        self.ok(status, document)
        data = document.get("data") if isinstance(document, dict) else None
        rates = data.get("rates") if isinstance(data, dict) else None
        if not isinstance(data, dict) or not isinstance(rates, dict) or data.get("currency") != asset:
            raise SourceError("answered without data.rates for the asset asked: not Coinbase's exchange-rates shape")
        return rates


# ---- Bitstamp: GET /api/v2/ticker/btcusd/ -> {"timestamp": "1700000000", "last": "50000", ...}


class Bitstamp(Source):
    name = "bitstamp"

    async def fetch(self, session: aiohttp.ClientSession, pairs: Collection[Pair]) -> Fetched:
        prices, problems = await self.each(plain(pairs), lambda pair: self._ticker(session, pair), pair_name)
        return Fetched(prices, problems)

    async def _ticker(self, session: aiohttp.ClientSession, pair: Pair) -> Price | None:
        status, document = await self.get(session, f"/api/v2/ticker/{pair[0].lower()}{pair[1].lower()}/")
        if status == 404:  # Bitstamp does not list the pair
            return None
        self.ok(status, document)
        if not isinstance(document, dict) or "last" not in document:
            raise SourceError("answered without `last`: not Bitstamp's ticker shape")
        try:
            return Price(price(document["last"]), timestamp(document.get("timestamp")))
        except ValueError as e:
            raise SourceError(str(e)) from None


# ---- Binance: GET /api/v3/ticker/price?symbols=["BTCEUR"] -> [{"symbol": "BTCEUR", "price": "46000.01"}]
# Only the pairs Binance lists natively: BTCEUR is a EUR price; BTCUSDT is not a USD one (USDT is not USD), so
# on api.binance.com USD comes from the other sources. api.binance.us lists real USD pairs (urls.binance).


class Binance(_LearnsUnlisted):
    name = "binance"

    async def fetch(self, session: aiohttp.ClientSession, pairs: Collection[Pair]) -> Fetched:
        asked = self.to_ask(pairs)
        if not asked:
            return Fetched()
        symbols = {f"{a.upper()}{c.upper()}": (a, c) for a, c in asked}
        status, document = await self.get(
            session, "/api/v3/ticker/price", {"symbols": json.dumps(sorted(symbols), separators=(",", ":"))}
        )
        if status == 400 and isinstance(document, dict) and document.get("code") == -1121:  # "Invalid symbol."
            status, document = await self.get(session, "/api/v3/ticker/price")
            full = True
        else:
            full = False
        self.ok(status, document)
        if not isinstance(document, list):
            raise SourceError("answered something other than a list: not Binance's ticker/price shape")
        fetched = Fetched()
        for entry in document:
            symbol = entry.get("symbol") if isinstance(entry, dict) else None
            if not isinstance(entry, dict) or not isinstance(symbol, str) or symbol not in symbols:
                continue
            pair = symbols[symbol]
            try:
                fetched.prices[pair] = Price(price(entry.get("price")))
            except ValueError as e:
                fetched.problems.append(f"{pair_name(pair)}: {e}")
        if full:
            self.learn(asked, fetched.prices)
        return fetched


# ---- CoinGecko: GET /api/v3/simple/price?ids=bitcoin&vs_currencies=usd -> {"bitcoin": {"usd": 50000.12, ...}}

# CoinGecko names coins by id, not symbol: the assets watcherd's chains and usual tokens have. One line to add.
COINGECKO_IDS: Mapping[str, str] = MappingProxyType({
    "BTC": "bitcoin", "LTC": "litecoin", "ETH": "ethereum", "XMR": "monero", "USDC": "usd-coin",
    "USDT": "tether", "DAI": "dai", "EURC": "euro-coin", "PYUSD": "paypal-usd", "WBTC": "wrapped-bitcoin",
    "DOGE": "dogecoin", "BCH": "bitcoin-cash", "POL": "polygon-ecosystem-token", "BNB": "binancecoin",
    "AVAX": "avalanche-2",
})


class CoinGecko(Source):
    name = "coingecko"

    def may_list(self, pair: Pair) -> bool:
        return super().may_list(pair) and pair[0].upper() in COINGECKO_IDS

    async def fetch(self, session: aiohttp.ClientSession, pairs: Collection[Pair]) -> Fetched:
        asked = [p for p in plain(pairs) if p[0].upper() in COINGECKO_IDS]
        if not asked:
            return Fetched()
        ids = sorted({COINGECKO_IDS[a.upper()] for a, _ in asked})
        currencies = sorted({c.lower() for _, c in asked})
        # A demo key goes to api.coingecko.com, a paid one to pro-api.coingecko.com, each with its own header.
        header = "x-cg-pro-api-key" if (urlsplit(self.base_url).hostname or "").startswith("pro-api.") \
            else "x-cg-demo-api-key"
        status, document = await self.get(
            session, "/api/v3/simple/price",
            {"ids": ",".join(ids), "vs_currencies": ",".join(currencies), "include_last_updated_at": "true",
             "precision": "full"},
            {header: self.api_key or ""},
        )
        self.ok(status, document)
        if not isinstance(document, dict):
            raise SourceError("answered something other than an object: not CoinGecko's simple/price shape")
        fetched = Fetched()
        for pair in asked:
            coin = document.get(COINGECKO_IDS[pair[0].upper()])
            if not isinstance(coin, dict) or coin.get(pair[1].lower()) is None:
                continue
            value = coin[pair[1].lower()]
            try:
                fetched.prices[pair] = Price(price(value), timestamp(coin.get("last_updated_at")))
            except ValueError as e:
                fetched.problems.append(f"{pair_name(pair)}: {e}")
        return fetched


SOURCES: Mapping[str, type[Source]] = MappingProxyType(
    {cls.name: cls for cls in (Kraken, Coinbase, Bitstamp, Binance, CoinGecko)}
)
