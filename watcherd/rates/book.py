"""The rate book: fetches every source concurrently, keeps each source's last value per pair, and quotes the
median of the fresh ones, with the spread applied in the merchant's favour.

Rates are exact Fractions: "price of one whole coin in whole units of the currency" (50000.12 USD per BTC is
Fraction(5000012, 100)). A value is fresh while it is at most max_age_seconds old (by the source's own
timestamp when it gives one, else by when we received it); a quote with no fresh value, or fewer agreeing fresh
values than min_sources, raises RatesUnavailable rather than price on a guess (or on one source that may be
wrong while another that lists the pair is down). Failures are logged once per outage, outliers once per
episode; both are counted in metrics on every round.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal, localcontext
from fractions import Fraction
from functools import partial

import aiohttp

from watcherd import metrics
from watcherd.exceptions import RatesUnavailable
from watcherd.rates.config import RatesConfig
from watcherd.rates.sources import SOURCES, Pair, Source, SourceError, describe, pair_name

log = logging.getLogger("watcherd.rates")

USER_AGENT = "watcherd (exchange rates)"


@dataclass
class SourceState:
    last_success: float | None = None  # clock time of the last answer with at least one usable value
    last_error: str | None = None
    last_error_at: float | None = None
    failing: bool = False  # in an outage (logged once, when it began)


@dataclass(frozen=True)
class Median:
    """A pair's rate as the sources give it now, before the spread."""

    rate: Fraction | None  # None: no fresh value, or the fresh ones disagree; `reason` says which
    used: tuple[str, ...]  # the sources in the median
    outliers: tuple[str, ...]  # fresh sources left out for deviating more than max_deviation_percent
    newest: float | None  # when the newest value (fresh or not) was taken
    reason: str = ""


def median(values: Iterable[Fraction]) -> Fraction:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def decimal_text(value: Fraction) -> str:
    """A rate as a decimal string for status and logs (exact when it terminates, else 30 significant digits)."""
    with localcontext() as context:
        context.prec = 30
        return format((Decimal(value.numerator) / Decimal(value.denominator)).normalize(), "f")


class RateBook:
    """Exchange rates for `assets` (the configured chains' coins and tokens) in the configured currencies.

    `quote(currency, asset)` is what invoice creation calls; `run()` is the background refresh, `refresh()`
    one round now; `status()` feeds /readyz and logs. `config` None (no [rates] table): nothing is fetched and
    every quote but asset == currency raises RatesUnavailable.
    """

    def __init__(self, config: RatesConfig | None, assets: Iterable[str], clock: Callable[[], float] = time.time):
        self.configured = config is not None
        self.config = config if config is not None else RatesConfig(sources=(), currencies=())
        self.clock = clock
        self.assets = frozenset(assets)
        self._spread = 1 - Fraction(self.config.spread_percent) / 100
        self._max_deviation = Fraction(self.config.max_deviation_percent) / 100
        self.fixed: dict[Pair, Fraction] = {}
        for name, value in self.config.fixed.items():
            asset, currency = name.split("_", 1)
            self.fixed[(asset, currency)] = Fraction(value)
        # Tracked currencies: the configured ones, then those only a fixed pair names, in the order given.
        self.currencies = tuple(dict.fromkeys([*self.config.currencies, *(c for _, c in self.fixed)]))
        # What the sources are asked: every asset in every configured currency, except the fixed pairs.
        self.pairs = frozenset(
            (asset, currency) for asset in self.assets for currency in self.config.currencies
            if asset != currency and (asset, currency) not in self.fixed
        )
        self.sources: dict[str, Source] = {
            name: SOURCES[name](self.config.url(name), self.config.timeout_seconds,
                                self.config.coingecko_api_key if name == "coingecko" else None)
            for name in self.config.sources
        }
        self.state = {name: SourceState() for name in self.sources}
        # Which sources list each pair, for min_sources' default: at first every source that may, then as they
        # answer (a clean answer without the pair says the source does not list it). A source that has not
        # answered yet counts as listing, so a source down from the start lowers no pair to one source.
        self.listing: dict[Pair, set[str]] = {
            pair: {name for name, source in self.sources.items() if source.may_list(pair)} for pair in self.pairs
        }
        self._values: dict[Pair, dict[str, tuple[Fraction, float]]] = {}  # pair -> source -> (rate, taken at)
        self._outliers: set[tuple[str, Pair]] = set()
        self._session: aiohttp.ClientSession | None = None
        for pair in sorted(self.pairs | set(self.fixed)):
            # Computed at scrape time, so the age keeps growing while every source is down.
            metrics.RATE_AGE.labels(pair_name(pair)).set_function(partial(self._age, pair))
            metrics.RATE.labels(pair_name(pair)).set_function(partial(self._metric_rate, pair))

    # ---- quoting ----

    def quote(self, currency: str, asset: str) -> Fraction:
        """The price of one whole `asset` in whole units of `currency`, spread included: the median of the fresh
        sources times (1 - spread_percent/100), so that amount = price / rate is larger by the spread and the
        difference is the merchant's. Raises RatesUnavailable (its message fit for the operator and the API
        caller) when no fresh rate exists or the pair is not tracked."""
        if asset == currency:
            return Fraction(1)
        return self._rate(asset, currency, self.clock()) * self._spread

    def _rate(self, asset: str, currency: str, now: float) -> Fraction:
        direct = self._direct(asset, currency, now)
        if isinstance(direct, Fraction):
            return direct
        if (asset, currency) in self.pairs or (asset, currency) in self.fixed or not self.configured \
                or not self._is_asset(currency):
            raise RatesUnavailable(direct)
        # An invoice priced in a coin, paid in another: through the first tracked currency pricing both.
        reasons: list[str] = []
        for fiat in self.currencies:
            asset_rate = self._direct(asset, fiat, now)
            currency_rate = self._direct(currency, fiat, now)
            if isinstance(asset_rate, Fraction) and isinstance(currency_rate, Fraction):
                return asset_rate / currency_rate
            reasons.extend(r for r in (asset_rate, currency_rate) if isinstance(r, str))
        raise RatesUnavailable(
            f"no exchange rate for {asset} in {currency}: " + (reasons[0] if reasons else "no tracked currency")
        )

    def _is_asset(self, code: str) -> bool:
        return code in self.assets or any(asset == code for asset, _ in self.fixed)

    def _direct(self, asset: str, currency: str, now: float) -> Fraction | str:
        """The pair's rate before the spread, or why there is none."""
        pair = (asset, currency)
        if pair in self.fixed:
            return self.fixed[pair]
        if pair in self.pairs:
            found = self.median(pair, now)
            if found.rate is not None:
                return found.rate
            return f"no fresh exchange rate for {asset} in {currency}: {found.reason}"
        if not self.configured:
            return (f"no exchange rate for {asset} in {currency}: watcherd fetches none (its config has no "
                    "[rates] table)")
        if currency not in self.currencies:
            tracked = ", ".join(self.currencies) or "none"
            return f"no exchange rate for {asset} in {currency}: {currency} is not a tracked currency ({tracked})"
        return f"no exchange rate for {asset} in {currency}: {asset} is not a tracked asset"

    def min_sources(self, pair: Pair) -> int:
        """Fresh sources that must agree for `pair` to have a rate: [rates] min_sources, else 2 where two or more
        sources list the pair and 1 where only one does."""
        if self.config.min_sources is not None:
            return self.config.min_sources
        return 2 if len(self.listing.get(pair, ())) >= 2 else 1

    def median(self, pair: Pair, now: float) -> Median:
        """The pair's median over the sources' fresh values, without the outliers; none with fewer than
        min_sources of them."""
        values = self._values.get(pair, {})
        newest = max((taken for _, taken in values.values()), default=None)
        fresh = {s: rate for s, (rate, taken) in values.items() if now - taken <= self.config.max_age_seconds}
        if not fresh:
            if newest is None:
                reason = f"no source has answered for it yet (sources: {', '.join(self.sources) or 'none'})"
            else:
                reason = (f"the newest is {now - newest:.0f} s old (max_age_seconds = "
                          f"{self.config.max_age_seconds:g}); the sources are failing or stopped listing it")
            return Median(None, (), (), newest, reason)
        middle = median(fresh.values())
        outliers = tuple(s for s, rate in fresh.items() if abs(rate - middle) > middle * self._max_deviation)
        kept = {s: rate for s, rate in fresh.items() if s not in outliers}
        if not kept:
            quotes = ", ".join(f"{s} {decimal_text(rate)}" for s, rate in sorted(fresh.items()))
            return Median(None, (), outliers, newest,
                          f"the sources disagree by more than {self.config.max_deviation_percent}% ({quotes})")
        required = self.min_sources(pair)
        if len(kept) < required:
            why = ("min_sources" if self.config.min_sources is not None else
                   f"min_sources, by default 2 as {' and '.join(sorted(self.listing[pair]))} list the pair")
            return Median(None, (), outliers, newest,
                          f"only {len(kept)} fresh {'source agrees' if len(kept) == 1 else 'sources agree'} "
                          f"({', '.join(sorted(kept))}), {required} must ({why}); "
                          "the others are failing, stale or too far from the median")
        return Median(median(kept.values()), tuple(sorted(kept)), outliers, newest)

    # ---- fetching ----

    async def run(self) -> None:
        """Refresh every refresh_seconds, the first round at once, until cancelled; never raises otherwise."""
        async with self._new_session() as session:
            self._session = session
            try:
                while True:
                    started = time.monotonic()
                    try:
                        await self._round(session)
                    except Exception:  # a bug in a round must not end the rates for the daemon's life
                        log.exception("exchange rate refresh failed unexpectedly; trying again in %g s",
                                      self.config.refresh_seconds)
                    await asyncio.sleep(max(0.0, self.config.refresh_seconds - (time.monotonic() - started)))
            finally:
                self._session = None

    async def refresh(self) -> None:
        """One round now: every source asked concurrently, outliers judged, failures logged and counted."""
        if self._session is not None:
            await self._round(self._session)
            return
        async with self._new_session() as session:
            await self._round(session)

    def _new_session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(headers={"User-Agent": USER_AGENT})

    async def _round(self, session: aiohttp.ClientSession) -> None:
        if not self.pairs:
            return
        await asyncio.gather(*(self._fetch(name, session) for name in self.sources))
        self._judge(self.clock())

    async def _fetch(self, name: str, session: aiohttp.ClientSession) -> None:
        source, state = self.sources[name], self.state[name]
        timeout = self.config.timeout_seconds
        try:
            # Each request has its own timeout; this bounds a source that makes two in a row (Kraken, Binance).
            async with asyncio.timeout(3 * timeout):
                fetched = await source.fetch(session, self.pairs)
        except (SourceError, aiohttp.ClientError, TimeoutError) as e:
            self._failed(name, describe(e, timeout))
            return
        except Exception as e:  # a parser bug in one source must not stop the others
            self._failed(name, describe(e, timeout), unexpected=True)
            return
        now = self.clock()
        for pair, price in fetched.prices.items():
            if pair in self.pairs:
                # A source's own timestamp can only make a value older: a stuck mirror serves yesterday's price.
                taken = now if price.as_of is None else min(now, price.as_of)
                self._values.setdefault(pair, {})[name] = (price.rate, taken)
        for pair in self.pairs:
            if pair in fetched.prices:
                self.listing[pair].add(name)
            elif not fetched.problems:  # answered cleanly without it: this source does not list the pair
                self.listing[pair].discard(name)
        if fetched.prices:
            state.last_success = now
        if fetched.problems:
            shown = "; ".join(fetched.problems[:3]) + (f" (and {len(fetched.problems) - 3} more)"
                                                      if len(fetched.problems) > 3 else "")
            self._failed(name, f"answered garbage: {shown}")
        elif state.failing:
            state.failing = False
            log.info("exchange rate source %s answers again", name)

    def _failed(self, name: str, reason: str, unexpected: bool = False) -> None:
        state = self.state[name]
        metrics.RATE_SOURCE_FAILURES.labels(name).inc()
        state.last_error, state.last_error_at = reason, self.clock()
        if not state.failing:
            state.failing = True
            log.warning("exchange rate source %s failed: %s (logged once until it answers again)", name, reason,
                        exc_info=unexpected)

    def _judge(self, now: float) -> None:
        """Log each source that deviates from a pair's median once per episode, and count it every round."""
        outliers: set[tuple[str, Pair]] = set()
        for pair in sorted(self.pairs):
            found = self.median(pair, now)
            values = self._values.get(pair, {})
            for source in found.outliers:
                outliers.add((source, pair))
                metrics.RATE_SOURCE_OUTLIERS.labels(source, pair_name(pair)).inc()
                if (source, pair) not in self._outliers:
                    rate = values[source][0]
                    against = f"median {decimal_text(found.rate)}" if found.rate is not None else found.reason
                    log.warning("exchange rate source %s quotes %s at %s, more than %s%% from the %s: left out of "
                                "the median until it agrees again", source, pair_name(pair), decimal_text(rate),
                                self.config.max_deviation_percent, against)
        for source, pair in sorted(self._outliers - outliers):
            log.info("exchange rate source %s agrees with the median for %s again", source, pair_name(pair))
        self._outliers = outliers

    # ---- reporting ----

    def _age(self, pair: Pair) -> float:
        if pair in self.fixed:
            return 0.0
        newest = self.median(pair, self.clock()).newest
        return math.inf if newest is None else max(0.0, self.clock() - newest)

    def _metric_rate(self, pair: Pair) -> float:
        if pair in self.fixed:
            return float(self.fixed[pair])
        rate = self.median(pair, self.clock()).rate
        return math.nan if rate is None else float(rate)

    def status(self) -> dict[str, object]:
        """For /readyz and logs: per source its last success and last error, per pair its age and rate (before
        the spread), and `stale`, the pairs without a fresh rate now."""
        now = self.clock()
        pairs: dict[str, dict[str, object]] = {}
        stale: list[str] = []
        for pair in sorted(self.pairs | set(self.fixed)):
            if pair in self.fixed:
                pairs[pair_name(pair)] = {"rate": decimal_text(self.fixed[pair]), "age_seconds": 0.0, "fresh": True,
                                          "fixed": True, "sources": [], "outliers": []}
                continue
            found = self.median(pair, now)
            pairs[pair_name(pair)] = {
                "rate": decimal_text(found.rate) if found.rate is not None else None,
                "age_seconds": None if found.newest is None else max(0.0, now - found.newest),
                "fresh": found.rate is not None,
                "fixed": False,
                "sources": list(found.used),
                "outliers": list(found.outliers),
                "min_sources": self.min_sources(pair),
                "reason": found.reason or None,
            }
            if found.rate is None:
                stale.append(pair_name(pair))
        return {
            "configured": self.configured,
            "sources": {
                name: {"last_success": s.last_success, "last_error": s.last_error, "last_error_at": s.last_error_at,
                       "failing": s.failing}
                for name, s in self.state.items()
            },
            "pairs": pairs,
            "stale": stale,
        }
