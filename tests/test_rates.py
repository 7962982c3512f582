"""Exchange rates (watcherd.rates): each source's real JSON shape served from a local HTTP server, the median of
the answering sources, outliers, failures, staleness, the spread, fixed pairs, and the [rates] config table.

No internet: `Exchanges` plays Kraken, Coinbase, Bitstamp, Binance and CoinGecko under one local port, each
under its own path prefix (/kraken/0/public/Ticker, ...), as a proxy in front of them would.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest
from aiohttp import web
from conftest import async_wait_for, example_operator_zpubs
from prometheus_client import REGISTRY

from watcherd.config import load
from watcherd.exceptions import ConfigError, RatesUnavailable
from watcherd.rates import SOURCE_URLS, RateBook, RatesConfig
from watcherd.rates.sources import COINGECKO_IDS, SOURCES

Pair = tuple[str, str]
API_KEY = "CG-test-key-0123456789"
KRAKEN_LEGACY = {"XBT", "ETH", "LTC", "XMR", "XDG"}  # answered under X/Z-prefixed names (XXBTZUSD)


class Clock:
    """The book's clock, moved by hand; the fake Bitstamp and CoinGecko date their answers by it too."""

    def __init__(self) -> None:
        self.now = 1_750_000_000.0

    def __call__(self) -> float:
        return self.now


class Exchanges:
    """The five sources' public endpoints with their real shapes, prices as the exchanges print them (strings;
    CoinGecko bare JSON numbers). Per source: `prices` (what it lists), `mode` ("ok", "http500", "garbage"
    (HTML), "shape" (JSON of another shape), "slow" (answers only once `release` is set)), and `requests` seen."""

    def __init__(self, clock: Clock):
        self.clock = clock
        self.prices: dict[str, dict[Pair, str]] = {name: {} for name in SOURCE_URLS}
        self.mode: dict[str, str] = {name: "ok" for name in SOURCE_URLS}
        self.as_of: dict[str, float | None] = {name: None for name in SOURCE_URLS}  # None: the clock's now
        self.requests: list[tuple[str, str]] = []
        self.release = asyncio.Event()
        self.url = ""

    def set(self, pair: Pair, **by_source: str) -> None:
        for source, value in by_source.items():
            self.prices[source][pair] = value

    async def __aenter__(self) -> Exchanges:
        app = web.Application()
        app.router.add_get("/kraken/0/public/Ticker", self.kraken)
        app.router.add_get("/coinbase/v2/exchange-rates", self.coinbase)
        app.router.add_get("/bitstamp/api/v2/ticker/{pair}/", self.bitstamp)
        app.router.add_get("/binance/api/v3/ticker/price", self.binance)
        app.router.add_get("/coingecko/api/v3/simple/price", self.coingecko)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        await self.runner.cleanup()

    async def _misbehave(self, source: str, request: web.Request) -> web.Response | None:
        self.requests.append((source, request.path_qs))
        mode = self.mode[source]
        if mode == "slow":
            await self.release.wait()
        elif mode == "http500":
            return web.Response(status=500, text="Internal Server Error")
        elif mode == "garbage":
            return web.Response(text="<html><body>Checking your browser...</body></html>", content_type="text/html")
        elif mode == "shape":
            return web.json_response({"message": "this is not a ticker", "items": [1, 2, 3]})
        return None

    def _timestamp(self, source: str) -> int:
        return int(self.as_of[source] if self.as_of[source] is not None else self.clock())

    # Kraken: {"error": [], "result": {"XXBTZUSD": {"a": [...], "b": [...], "c": ["last", "lot"], ...}}}
    async def kraken(self, request: web.Request) -> web.Response:
        if (bad := await self._misbehave("kraken", request)) is not None:
            return bad
        listed: dict[str, tuple[str, str]] = {}  # altname -> (result key, last)
        for (asset, currency), last in self.prices["kraken"].items():
            code = {"BTC": "XBT", "DOGE": "XDG"}.get(asset, asset)
            key = f"X{code}Z{currency}" if code in KRAKEN_LEGACY else f"{code}{currency}"
            listed[f"{code}{currency}"] = (key, last)
        asked = request.query["pair"].split(",") if "pair" in request.query else list(listed)
        if any(name not in listed for name in asked):
            return web.json_response({"error": ["EQuery:Unknown asset pair"]})
        result = {
            listed[name][0]: {
                "a": [listed[name][1], "1", "1.000"], "b": [listed[name][1], "2", "2.000"],
                "c": [listed[name][1], "0.00010000"], "v": ["100.1", "2000.2"], "p": ["1.0", "1.0"],
                "t": [1000, 20000], "l": ["1.0", "1.0"], "h": ["2.0", "2.0"], "o": "1.5",
            }
            for name in asked
        }
        return web.json_response({"error": [], "result": result})

    # Coinbase: {"data": {"currency": "BTC", "rates": {"USD": "50000.12", ...}}}; 400 for a currency it lacks
    async def coinbase(self, request: web.Request) -> web.Response:
        if (bad := await self._misbehave("coinbase", request)) is not None:
            return bad
        asset = request.query["currency"]
        rates = {c: v for (a, c), v in self.prices["coinbase"].items() if a == asset}
        if not rates:
            return web.json_response({"errors": [{"id": "invalid_request", "message": "Invalid currency"}]},
                                     status=400)
        return web.json_response({"data": {"currency": asset, "rates": {"AED": "3.67", **rates, "ZWL": "322"}}})

    # Bitstamp: {"timestamp": "1750000000", "last": "50000", ...}; 404 for a pair it lacks
    async def bitstamp(self, request: web.Request) -> web.Response:
        if (bad := await self._misbehave("bitstamp", request)) is not None:
            return bad
        wanted = request.match_info["pair"]
        for (asset, currency), last in self.prices["bitstamp"].items():
            if f"{asset}{currency}".lower() == wanted:
                return web.json_response({
                    "timestamp": str(self._timestamp("bitstamp")), "open": last, "high": last, "low": last,
                    "last": last, "volume": "12.3", "vwap": last, "bid": last, "ask": last, "side": "0",
                    "open_24": last, "percent_change_24": "0.00", "pair": f"{asset}/{currency}",
                })
        return web.Response(status=404, text="Not Found")

    # Binance: [{"symbol": "BTCEUR", "price": "46000.01000000"}]; one unknown symbol refuses the whole request
    async def binance(self, request: web.Request) -> web.Response:
        if (bad := await self._misbehave("binance", request)) is not None:
            return bad
        listed = {f"{a}{c}": v for (a, c), v in self.prices["binance"].items()}
        asked = json.loads(request.query["symbols"]) if "symbols" in request.query else sorted(listed)
        if any(symbol not in listed for symbol in asked):
            return web.json_response({"code": -1121, "msg": "Invalid symbol."}, status=400)
        return web.json_response([{"symbol": s, "price": listed[s]} for s in asked])

    # CoinGecko: {"bitcoin": {"usd": 50000.12, "eur": 46000.5, "last_updated_at": 1750000000}}, numbers bare
    async def coingecko(self, request: web.Request) -> web.Response:
        if (bad := await self._misbehave("coingecko", request)) is not None:
            return bad
        if request.headers.get("x-cg-demo-api-key") != API_KEY:
            return web.json_response({"status": {"error_code": 10002, "error_message": "API Key Missing"}},
                                     status=401)
        ids = request.query["ids"].split(",")
        currencies = request.query["vs_currencies"].split(",")
        coins = []
        for asset, coin in COINGECKO_IDS.items():
            if coin not in ids:
                continue
            values = [f'"{c.lower()}":{v}' for (a, c), v in self.prices["coingecko"].items()
                      if a == asset and c.lower() in currencies]
            if values:
                coins.append(f'"{coin}":{{{",".join(values)},"last_updated_at":{self._timestamp("coingecko")}}}')
        return web.Response(text="{" + ",".join(coins) + "}", content_type="application/json")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def exchanges(clock: Clock) -> AsyncIterator[Exchanges]:
    async with Exchanges(clock) as server:
        yield server


def make_book(exchanges: Exchanges, clock: Clock, sources: tuple[str, ...] = ("kraken", "coinbase", "bitstamp"),
              assets: tuple[str, ...] = ("BTC", "ETH"), **settings: object) -> RateBook:
    urls = {name: f"{exchanges.url}/{name}" for name in SOURCE_URLS}
    config = RatesConfig(sources=sources, urls=urls, coingecko_api_key=API_KEY, **settings)
    return RateBook(config, assets=set(assets), clock=clock)


def failures(source: str) -> float:
    return REGISTRY.get_sample_value("watcherd_rate_source_failures_total", {"source": source}) or 0.0


def rate_logs(caplog: pytest.LogCaptureFixture, *words: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "watcherd.rates" and all(w in r.getMessage() for w in words)]


# ---- each source's shape ------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", sorted(SOURCE_URLS))
async def test_each_source_is_read_in_its_real_shape_exactly(exchanges, clock, source):
    """Every source's real endpoint and JSON shape gives exact prices (no float on the way: 50000.12 stays
    5000012/100), a pair it does not list (XMR here) is absent without counting as a failure, and Kraken and
    Binance, which refuse a whole request over one unknown pair, learn which pairs to leave out."""
    exchanges.set(("BTC", "USD"), **{source: "50000.12"})
    exchanges.set(("BTC", "EUR"), **{source: "46000.123456789012345678"})
    exchanges.set(("ETH", "EUR"), **{source: "3000.5"})
    exchanges.set(("USDC", "USD"), **{source: "0.9998"})
    book = make_book(exchanges, clock, sources=(source,), assets=("BTC", "ETH", "XMR", "USDC"))
    before = failures(source)

    await book.refresh()

    assert book.quote("USD", "BTC") == Fraction(5000012, 100)
    assert book.quote("EUR", "BTC") == Fraction(Decimal("46000.123456789012345678"))
    assert book.quote("EUR", "ETH") == Fraction(30005, 10)
    assert book.quote("USD", "USDC") == Fraction(9998, 10000)
    with pytest.raises(RatesUnavailable, match="no fresh exchange rate for XMR in USD: no source has answered"):
        book.quote("USD", "XMR")
    status = book.status()
    assert status["sources"][source]["failing"] is False and status["sources"][source]["last_error"] is None
    assert status["sources"][source]["last_success"] == clock.now
    assert failures(source) == before

    asked_first = len(exchanges.requests)
    await book.refresh()
    asked_again = len(exchanges.requests) - asked_first
    if source in ("kraken", "binance"):
        assert asked_first == 2 and asked_again == 1  # refused, read every ticker; then only the listed ones
        assert "XMR" not in exchanges.requests[-1][1]


async def test_kraken_answers_bitcoin_as_xbt_under_its_legacy_name(exchanges, clock):
    """BTC is XBT at Kraken (asked as XBTUSD, answered as XXBTZUSD), DOGE is XDG; newer pairs answer under the
    name asked (USDCEUR)."""
    exchanges.set(("BTC", "USD"), kraken="61000.1")
    exchanges.set(("DOGE", "USD"), kraken="0.12345")
    exchanges.set(("USDC", "EUR"), kraken="0.93")
    book = make_book(exchanges, clock, sources=("kraken",), assets=("BTC", "DOGE", "USDC"))
    await book.refresh()
    assert (book.quote("USD", "BTC"), book.quote("USD", "DOGE"), book.quote("EUR", "USDC")) == (
        Fraction("61000.1"), Fraction("0.12345"), Fraction("0.93"))
    first = exchanges.requests[0][1]
    assert "XBTUSD" in first and "XDGUSD" in first and "BTC" not in first


async def test_coingecko_sends_its_key_and_a_refused_key_is_a_failure(exchanges, clock, caplog):
    """CoinGecko gets the key in x-cg-demo-api-key; a wrong one (HTTP 401) is a logged, counted failure."""
    exchanges.set(("BTC", "USD"), coingecko="50000.5")
    book = make_book(exchanges, clock, sources=("coingecko",))
    await book.refresh()
    assert book.quote("USD", "BTC") == Fraction("50000.5")

    config = RatesConfig(sources=("coingecko",), urls={"coingecko": f"{exchanges.url}/coingecko"},
                         coingecko_api_key="wrong")
    refused = RateBook(config, assets={"BTC"}, clock=clock)
    await refused.refresh()
    assert refused.status()["sources"]["coingecko"]["last_error"] == "answered HTTP 401"
    assert rate_logs(caplog, "coingecko failed", "HTTP 401")


# ---- median, outliers, failures -----------------------------------------------------------------------------


async def test_the_rate_is_the_median_of_the_sources_that_answer(exchanges, clock):
    """Three sources: the middle one; one down: the mean of the other two, exactly."""
    exchanges.set(("BTC", "USD"), kraken="50000", coinbase="50010", bitstamp="50030")
    book = make_book(exchanges, clock)
    await book.refresh()
    assert book.quote("USD", "BTC") == 50010
    assert book.status()["pairs"]["BTC_USD"]["sources"] == ["bitstamp", "coinbase", "kraken"]

    exchanges.set(("BTC", "USD"), kraken="50001", coinbase="50010", bitstamp="50030")
    exchanges.mode["bitstamp"] = "http500"
    clock.now += 301  # bitstamp's last value is now too old to count
    await book.refresh()
    assert book.quote("USD", "BTC") == Fraction(50001 + 50010, 2)
    assert book.status()["pairs"]["BTC_USD"]["sources"] == ["coinbase", "kraken"]


async def test_a_deviating_source_is_left_out_and_logged_once_per_episode(exchanges, clock, caplog):
    """A source more than max_deviation_percent from the median is left out of it, logged once however many
    rounds it lasts (counted every round), and its return is logged."""
    caplog.set_level(logging.INFO, "watcherd.rates")
    exchanges.set(("BTC", "USD"), kraken="50000", coinbase="50010", bitstamp="60000")
    book = make_book(exchanges, clock, max_deviation_percent=Decimal(3))
    labels = {"source": "bitstamp", "pair": "BTC_USD"}
    before = REGISTRY.get_sample_value("watcherd_rate_source_outliers_total", labels) or 0.0

    await book.refresh()
    await book.refresh()

    assert book.quote("USD", "BTC") == 50005
    assert book.status()["pairs"]["BTC_USD"]["outliers"] == ["bitstamp"]
    warned = rate_logs(caplog, "bitstamp", "BTC_USD", "60000", "left out")
    assert len(warned) == 1, warned
    assert REGISTRY.get_sample_value("watcherd_rate_source_outliers_total", labels) == before + 2

    exchanges.set(("BTC", "USD"), bitstamp="50020")
    await book.refresh()
    assert book.quote("USD", "BTC") == 50010
    assert rate_logs(caplog, "bitstamp", "agrees", "BTC_USD")


async def test_two_sources_that_disagree_give_no_rate(exchanges, clock):
    """With two sources 10% apart neither can be told right: no quote rather than a guess."""
    exchanges.set(("BTC", "USD"), kraken="50000", coinbase="55000")
    book = make_book(exchanges, clock, sources=("kraken", "coinbase"))
    await book.refresh()
    with pytest.raises(RatesUnavailable, match=r"disagree by more than 3%.*coinbase 55000.*kraken 50000"):
        book.quote("USD", "BTC")


async def test_one_fresh_source_of_two_that_list_a_pair_gives_no_rate(exchanges, clock):
    """min_sources' default: Kraken and Coinbase both list BTC_USD, so Kraken alone (Coinbase failing) prices
    nothing, and says why; a pair only Kraken lists (ETH_USD: Coinbase answers 400 for it) is priced by Kraken
    alone. Coinbase back: the median of both again."""
    exchanges.set(("BTC", "USD"), kraken="50000", coinbase="50010")
    exchanges.set(("ETH", "USD"), kraken="2500")
    book = make_book(exchanges, clock, sources=("kraken", "coinbase"), currencies=("USD",))
    await book.refresh()
    assert book.quote("USD", "BTC") == 50005
    assert book.quote("USD", "ETH") == 2500
    assert book.min_sources(("BTC", "USD")) == 2 and book.min_sources(("ETH", "USD")) == 1

    exchanges.mode["coinbase"] = "http500"
    clock.now += 301  # coinbase's value is too old to count; kraken answers afresh
    await book.refresh()
    with pytest.raises(RatesUnavailable, match=r"no fresh exchange rate for BTC in USD: only 1 fresh source agrees "
                                               r"\(kraken\), 2 must \(min_sources, by default 2 as coinbase and "
                                               r"kraken list the pair\)"):
        book.quote("USD", "BTC")
    assert book.quote("USD", "ETH") == 2500
    status = book.status()
    assert status["stale"] == ["BTC_USD"]
    assert status["pairs"]["BTC_USD"]["min_sources"] == 2 and "kraken" in status["pairs"]["BTC_USD"]["reason"]

    exchanges.mode["coinbase"] = "ok"
    await book.refresh()
    assert book.quote("USD", "BTC") == 50005 and book.status()["stale"] == []


async def test_a_source_down_from_the_start_still_counts_as_listing(exchanges, clock):
    """A source that has never answered may list the pair: the other alone does not price it (failing closed),
    until the first answers, cleanly, without the pair."""
    exchanges.set(("BTC", "USD"), kraken="50000")
    exchanges.set(("ETH", "USD"), kraken="2500", coinbase="2502")
    exchanges.mode["coinbase"] = "http500"
    book = make_book(exchanges, clock, sources=("kraken", "coinbase"), currencies=("USD",))
    await book.refresh()
    with pytest.raises(RatesUnavailable, match="2 must"):
        book.quote("USD", "BTC")
    exchanges.mode["coinbase"] = "ok"  # it answers now: ETH, and a 400 (Invalid currency) for BTC
    await book.refresh()
    assert book.quote("USD", "BTC") == 50000 and book.listing[("BTC", "USD")] == {"kraken"}
    assert book.quote("USD", "ETH") == 2501 and book.min_sources(("ETH", "USD")) == 2


async def test_min_sources_set_in_the_config_applies_to_every_pair(exchanges, clock):
    """min_sources = 1 lets one source price a pair others list too; min_sources = 3 needs all three fresh and
    agreeing, and an outlier does not count."""
    exchanges.set(("BTC", "USD"), kraken="50000", coinbase="50010", bitstamp="50020")
    one = make_book(exchanges, clock, min_sources=1, currencies=("USD",), assets=("BTC",))
    three = make_book(exchanges, clock, min_sources=3, currencies=("USD",), assets=("BTC",))
    await one.refresh()
    await three.refresh()
    assert one.quote("USD", "BTC") == three.quote("USD", "BTC") == 50010

    exchanges.set(("BTC", "USD"), bitstamp="60000")  # an outlier now
    await three.refresh()
    with pytest.raises(RatesUnavailable, match=r"only 2 fresh sources agree \(coinbase, kraken\), 3 must "
                                               r"\(min_sources\)"):
        three.quote("USD", "BTC")
    exchanges.mode["coinbase"] = exchanges.mode["bitstamp"] = "http500"
    clock.now += 301
    await one.refresh()
    assert one.quote("USD", "BTC") == 50000


@pytest.mark.parametrize(("mode", "reason"), [
    ("http500", "answered HTTP 500"),
    ("garbage", "not JSON"),
    ("shape", "not Bitstamp's ticker shape"),
    ("slow", "timed out after 0.3 s"),
    ("zero", "price '0' is not positive"),
    ("negative", "price '-50000' is not positive"),
    ("nan", "price 'NaN' is not a number"),
    ("huge", "price '1e999999999' is out of range"),
    ("unreachable", "cannot connect"),
])
async def test_a_failing_source_is_logged_once_counted_and_the_others_go_on(exchanges, clock, caplog, mode,
                                                                            reason):
    """Bitstamp down, answering HTML, another shape, too slow, or a zero/negative/NaN/absurd price: the rate is the
    others' median, the failure is counted each round but logged once per outage naming the source and why, and
    its recovery is logged."""
    caplog.set_level(logging.INFO, "watcherd.rates")
    exchanges.set(("BTC", "USD"), kraken="50000", coinbase="50010", bitstamp="50020")
    exchanges.set(("ETH", "USD"), kraken="3000", coinbase="3001", bitstamp="3002")
    book = make_book(exchanges, clock, timeout_seconds=0.3)
    if mode in ("http500", "garbage", "shape", "slow"):
        exchanges.mode["bitstamp"] = mode
    elif mode == "unreachable":
        book.sources["bitstamp"].base_url = "http://127.0.0.1:1"
    else:
        bad = {"zero": "0", "negative": "-50000", "nan": "NaN", "huge": "1e999999999"}[mode]
        exchanges.set(("BTC", "USD"), bitstamp=bad)
        exchanges.set(("ETH", "USD"), bitstamp=bad)
    before = failures("bitstamp")

    started = time.monotonic()
    await book.refresh()
    await book.refresh()
    assert time.monotonic() - started < 5

    assert book.quote("USD", "BTC") == 50005
    assert failures("bitstamp") == before + 2
    warned = rate_logs(caplog, "bitstamp failed")
    assert len(warned) == 1 and reason in warned[0], warned
    status = book.status()["sources"]["bitstamp"]
    assert status["failing"] is True and reason in status["last_error"] and status["last_success"] is None

    exchanges.mode["bitstamp"] = "ok"
    book.sources["bitstamp"].base_url = f"{exchanges.url}/bitstamp"
    exchanges.set(("BTC", "USD"), bitstamp="50020")
    exchanges.set(("ETH", "USD"), bitstamp="3002")
    await book.refresh()
    assert book.quote("USD", "BTC") == 50010
    assert rate_logs(caplog, "bitstamp answers again")
    assert book.status()["sources"]["bitstamp"]["failing"] is False


async def test_garbage_for_one_pair_keeps_the_sources_other_prices(exchanges, clock, caplog):
    """Kraken answering 0 for ETH still gives its BTC price; the ETH garbage is logged and counted."""
    exchanges.set(("BTC", "USD"), kraken="50000")
    exchanges.set(("ETH", "USD"), kraken="0")
    book = make_book(exchanges, clock, sources=("kraken",))
    before = failures("kraken")
    await book.refresh()
    assert book.quote("USD", "BTC") == 50000
    with pytest.raises(RatesUnavailable):
        book.quote("USD", "ETH")
    assert failures("kraken") == before + 1
    assert rate_logs(caplog, "kraken failed", "ETH_USD", "not positive")


# ---- freshness, spread, fixed pairs -------------------------------------------------------------------------


async def test_a_rate_older_than_max_age_is_never_quoted(exchanges, clock):
    """Once the clock passes max_age_seconds without a fresh answer (every source down), quoting refuses with a
    message saying how old the rate is; the next good round makes it quotable again."""
    exchanges.set(("BTC", "USD"), kraken="50000", coinbase="50010")
    book = make_book(exchanges, clock, sources=("kraken", "coinbase"), max_age_seconds=300)
    await book.refresh()
    for name in ("kraken", "coinbase"):
        exchanges.mode[name] = "http500"
    clock.now += 200
    await book.refresh()
    assert book.quote("USD", "BTC") == 50005  # still fresh: 200 s old
    assert REGISTRY.get_sample_value("watcherd_rate_age_seconds", {"pair": "BTC_USD"}) == 200

    clock.now += 101
    with pytest.raises(RatesUnavailable, match=r"no fresh exchange rate for BTC in USD: the newest is 301 s old "
                                               r"\(max_age_seconds = 300\)"):
        book.quote("USD", "BTC")
    status = book.status()
    assert "BTC_USD" in status["stale"] and status["pairs"]["BTC_USD"]["fresh"] is False
    assert status["pairs"]["BTC_USD"]["age_seconds"] == 301

    exchanges.mode["kraken"] = exchanges.mode["coinbase"] = "ok"
    await book.refresh()
    assert book.quote("USD", "BTC") == 50005
    assert "BTC_USD" not in book.status()["stale"]


async def test_a_source_serving_an_old_price_counts_by_its_own_timestamp(exchanges, clock):
    """A Bitstamp (or mirror) answering a ticker dated 10 minutes ago is stale at once: only Kraken and Coinbase
    count."""
    exchanges.set(("BTC", "USD"), kraken="50000", coinbase="50010", bitstamp="40000")
    exchanges.as_of["bitstamp"] = clock.now - 600
    book = make_book(exchanges, clock)
    await book.refresh()
    assert book.quote("USD", "BTC") == 50005
    assert book.status()["pairs"]["BTC_USD"]["sources"] == ["coinbase", "kraken"]


async def test_the_spread_makes_the_customer_pay_more_coin(exchanges, clock):
    """spread_percent 2: the quoted rate is the median * 0.98, so 49.00 USD costs 1/0.98 times more coin."""
    exchanges.set(("BTC", "USD"), kraken="50000", coinbase="50000")
    book = make_book(exchanges, clock, sources=("kraken", "coinbase"), spread_percent=Decimal(2))
    await book.refresh()
    rate = book.quote("USD", "BTC")
    assert rate == 49000
    assert Fraction(4900, 100) / rate == Fraction(4900, 100) / 50000 / Fraction(98, 100)
    assert book.status()["pairs"]["BTC_USD"]["rate"] == "50000"  # status shows the market rate


async def test_fixed_pairs_identity_and_untracked_pairs(exchanges, clock):
    """A [rates.fixed] pair is always fresh and never fetched; an asset in its own currency is 1; an untracked
    currency or asset is refused with a message saying so."""
    book = make_book(exchanges, clock, assets=("BTC", "USDC"), fixed={"USDC_USD": Decimal(1)})
    clock.now += 10**6
    assert book.quote("USD", "USDC") == 1
    assert book.quote("USD", "USD") == 1 and book.quote("BTC", "BTC") == 1
    assert ("USDC", "USD") not in book.pairs and ("USDC", "EUR") in book.pairs
    assert book.status()["pairs"]["USDC_USD"] == {"rate": "1", "age_seconds": 0.0, "fresh": True, "fixed": True,
                                                  "sources": [], "outliers": []}
    with pytest.raises(RatesUnavailable, match="JPY is not a tracked currency"):
        book.quote("JPY", "BTC")
    with pytest.raises(RatesUnavailable, match="DOGE is not a tracked asset"):
        book.quote("USD", "DOGE")

    unconfigured = RateBook(None, assets={"BTC"}, clock=clock)
    with pytest.raises(RatesUnavailable, match=r"no \[rates\] table"):
        unconfigured.quote("USD", "BTC")
    assert unconfigured.quote("BTC", "BTC") == 1
    await unconfigured.refresh()  # nothing to fetch, nothing fails


async def test_an_invoice_priced_in_one_coin_paid_in_another_goes_through_a_fiat_rate(exchanges, clock):
    """quote("BTC", "ETH"): ETH in BTC from both coins' USD medians, the spread applied once."""
    exchanges.set(("BTC", "USD"), kraken="50000")
    exchanges.set(("ETH", "USD"), kraken="2500")
    book = make_book(exchanges, clock, sources=("kraken",), spread_percent=Decimal(1))
    await book.refresh()
    assert book.quote("BTC", "ETH") == Fraction(1, 20) * Fraction(99, 100)


# ---- the background loop ------------------------------------------------------------------------------------


async def test_run_refreshes_at_once_then_periodically_survives_errors_and_stops_when_cancelled(
        exchanges, clock, caplog):
    """run(): the first round at once, then every refresh_seconds; an unexpected error in a round is logged and
    the loop goes on; cancellation ends it (and its HTTP session) and is the only way out."""
    exchanges.set(("BTC", "USD"), kraken="50000")
    book = make_book(exchanges, clock, sources=("kraken",), refresh_seconds=0.05)
    judge, broken = book._judge, [True]

    def judge_once_broken(now: float) -> None:
        if broken.pop() if broken else False:
            raise RuntimeError("a bug")
        judge(now)

    book._judge = judge_once_broken
    task = asyncio.create_task(book.run())
    try:
        await async_wait_for(lambda: len(exchanges.requests) >= 4, 5, "four refresh rounds")
        assert book.quote("USD", "BTC") == 50000
        assert book._session is not None
        session = book._session
        assert not task.done()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert book._session is None and session.closed
    assert [r for r in caplog.records if "refresh failed unexpectedly" in r.getMessage()]


# ---- configuration ------------------------------------------------------------------------------------------

ZPUB = example_operator_zpubs()["btc"]
MINIMAL = f"""
[store]
path = "watcherd.sqlite3"

[api]
token = "tok-0123456789abcdef"

[chains.btc]
kind = "bitcoin"
coin = "bitcoin"
network = "mainnet"
rpc_url = "http://127.0.0.1:8332"
rpc_cookie_file = "bitcoind/.cookie"
xpub = "{ZPUB}"
"""


def load_with(tmp_path: Path, rates: str):
    path = tmp_path / "watcherd.toml"
    path.write_text(MINIMAL + rates)
    return load(path)


def problems_with(tmp_path: Path, rates: str) -> dict[str, str]:
    with pytest.raises(ConfigError) as error:
        load_with(tmp_path, rates)
    return {key: message for _, key, message in error.value.problems}


def test_rates_table_defaults_and_values(tmp_path):
    """No [rates]: None. An empty one: the documented defaults. Every key read as written, the CoinGecko key from
    a file, numbers exact."""
    assert load_with(tmp_path, "").rates is None
    rates = load_with(tmp_path, "[rates]\n").rates
    assert rates == RatesConfig()
    assert (rates.sources, rates.currencies, rates.refresh_seconds, rates.max_age_seconds) == (
        ("kraken", "coinbase", "bitstamp"), ("USD", "EUR"), 60, 300)
    assert (rates.spread_percent, rates.max_deviation_percent, rates.timeout_seconds) == (0, 3, 10)
    assert rates.url("kraken") == "https://api.kraken.com"

    (tmp_path / "cg-key").write_text(API_KEY + "\n")
    rates = load_with(tmp_path, """
[rates]
sources = ["binance", "coingecko"]
currencies = ["EUR", "JPY", "CHF"]
refresh_seconds = 30
max_age_seconds = 120
spread_percent = 0.5
max_deviation_percent = 2
timeout_seconds = 5
coingecko_api_key_file = "cg-key"
[rates.urls]
binance = "https://api.binance.us/"
[rates.fixed]
USDC_USD = "1"
EURC_EUR = "0.9995"
USDT_USD = 1
""").rates
    assert rates is not None
    assert rates.sources == ("binance", "coingecko") and rates.currencies == ("EUR", "JPY", "CHF")
    assert (rates.refresh_seconds, rates.max_age_seconds, rates.timeout_seconds) == (30, 120, 5)
    assert rates.spread_percent == Decimal("0.5") and rates.max_deviation_percent == 2
    assert rates.coingecko_api_key == API_KEY and API_KEY not in repr(rates)
    assert rates.url("binance") == "https://api.binance.us" and rates.url("coingecko") == "https://api.coingecko.com"
    assert rates.fixed == {"USDC_USD": Decimal(1), "EURC_EUR": Decimal("0.9995"), "USDT_USD": Decimal(1)}


def test_rates_table_problems_are_reported_at_once_by_key(tmp_path):
    """Unknown sources, currencies outside MINOR_UNITS, bad fixed pairs and values, a CoinGecko source without
    its key, a max age that cannot outlive a refresh, bad URLs: each named by its key, all in one go."""
    found = problems_with(tmp_path, """
[rates]
sources = ["kraken", "krakn", "coingecko", "kraken"]
currencies = ["USD", "XYZ"]
refresh_seconds = 120
max_age_seconds = 60
spread_percent = 100
timeout_seconds = 0
colour = "blue"
[rates.urls]
kraken = "ftp://mirror.example"
bitfinex = "https://api.bitfinex.com"
[rates.fixed]
USDC_USD = "one"
BTC = "1"
USDT_EUR = "-1"
DAI_USD = "0"
USD_USD = "1"
""")
    assert "'krakn' is not an exchange rate source; known: binance, bitstamp, coinbase, coingecko, kraken" in \
        found["rates.sources"] or "'kraken' is listed twice" in found["rates.sources"]
    assert "'XYZ' is not" in found["rates.currencies"] and "ISO 4217" in found["rates.currencies"]
    assert "must be more than refresh_seconds (120)" in found["rates.max_age_seconds"]
    assert "0 ≤ x < 100" in found["rates.spread_percent"]
    assert "0 < x ≤ 60" in found["rates.timeout_seconds"]
    assert found["rates.colour"] == "unknown key"
    assert "coingecko_api_key_file" in found["rates.coingecko_api_key"]
    assert "must be an https:// base URL" in found["rates.urls.kraken"]
    assert "not an exchange rate source" in found["rates.urls.bitfinex"]
    for key in ("USDC_USD", "USDT_EUR", "DAI_USD"):
        assert "must be a positive decimal" in found[f"rates.fixed.{key}"]
    for key in ("BTC", "USD_USD"):
        assert "must be ASSET_CURRENCY" in found[f"rates.fixed.{key}"]


def test_min_sources_and_source_urls_in_the_config(tmp_path):
    """min_sources is read as written and bounded by the number of sources; a source URL is https, or http only
    to this machine (a local test server or proxy): plain http elsewhere is refused by its key."""
    rates = load_with(tmp_path, '[rates]\nmin_sources = 3\n[rates.urls]\nkraken = "http://127.0.0.1:8080/k"\n'
                                'coinbase = "http://[::1]:8081"\nbitstamp = "http://localhost:8082"\n').rates
    assert rates is not None and rates.min_sources == 3 and load_with(tmp_path, "[rates]\n").rates.min_sources is None
    assert rates.url("kraken") == "http://127.0.0.1:8080/k" and rates.url("bitstamp") == "http://localhost:8082"
    found = problems_with(tmp_path, '[rates]\nsources = ["kraken", "coinbase"]\nmin_sources = 3\n[rates.urls]\n'
                                    'kraken = "http://mirror.example"\ncoinbase = "http://10.0.0.5:8080"\n')
    assert found["rates.min_sources"] == "must be an integer from 1 to the number of sources (2)"
    for key in ("rates.urls.kraken", "rates.urls.coinbase"):
        assert found[key].startswith("must be https:// (http:// only to a loopback address)")
    assert problems_with(tmp_path, "[rates]\nmin_sources = 0\n")["rates.min_sources"].startswith("must be")


def test_rates_table_reports_every_bad_source_name(tmp_path):
    """Both a misspelt and a repeated source are reported (not only the first)."""
    with pytest.raises(ConfigError) as error:
        load_with(tmp_path, '[rates]\nsources = ["krakn", "kraken", "kraken"]\n')
    messages = [m for _, key, m in error.value.problems if key == "rates.sources"]
    assert any("'krakn' is not an exchange rate source" in m for m in messages)
    assert any("'kraken' is listed twice" in m for m in messages)


def test_the_example_config_fetches_rates_from_the_default_sources(example_config):
    """The shipped example's [rates] table parses to the documented defaults plus USDC_USD fixed at 1."""
    rates = load(example_config).rates
    assert rates is not None and rates.sources == ("kraken", "coinbase", "bitstamp")
    assert rates.fixed == {"USDC_USD": Decimal(1)}


def test_every_configurable_source_has_a_fetcher():
    """The config's source names and the fetchers are the same set."""
    assert set(SOURCES) == set(SOURCE_URLS)
