"""Acceptance, on the real daemon: the hostile numbers of issue 17 (exponents that expand to gigabytes, Infinity,
non-ASCII digits, bodies nested past the stack, a huge digit string) answer 4xx at once, through every door, and
the event loop never stalls meanwhile: a /healthz probe every 100 ms keeps answering within 0.5 s."""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import scaled
from harness import TOKEN, Daemon, chain_table

KEY = "gf-hostile-key-0123456789abcdef"
STORE = "shop-hostile"
GREENFIELD = f"""[greenfield]
store_id = "{STORE}"
api_key = "{KEY}"
[rates]
sources = []
currencies = ["USD"]
[rates.fixed]
BTC_USD = "50000"
"""
NATIVE = {"Authorization": f"Bearer {TOKEN}"}
GF = {"Authorization": f"token {KEY}"}
BITPAY = {"Authorization": "Basic " + base64.b64encode(KEY.encode()).decode()}


def body(value: Any) -> bytes:
    return json.dumps(value).encode()


HOSTILE = [
    # (method, path, headers, body)
    pytest.param("GET", f"/api/v1/stores/{STORE}/invoices?take=1e1000000", GF, None, id="gf-take-1e1000000"),
    pytest.param("GET", f"/api/v1/stores/{STORE}/invoices?skip=Infinity", GF, None, id="gf-skip-Infinity"),
    pytest.param("GET", f"/api/v1/stores/{STORE}/invoices?take={'9' * 8000}", GF, None, id="gf-take-8000-digits"),
    pytest.param("GET", f"/api/v1/stores/{STORE}/invoices?startDate=1e400", GF, None, id="gf-startDate-1e400"),
    pytest.param("POST", f"/api/v1/stores/{STORE}/invoices", GF, body({"amount": "1e900000000"}),
                 id="gf-amount-1e900000000"),
    pytest.param("POST", f"/api/v1/stores/{STORE}/invoices", GF, body({"amount": "1" * 60_000}),
                 id="gf-amount-60000-digits"),
    pytest.param("POST", f"/api/v1/stores/{STORE}/invoices", GF, body({"amount": 1e308}), id="gf-amount-1e308"),
    pytest.param("POST", f"/api/v1/stores/{STORE}/invoices", GF,
                 body({"amount": "5", "checkout": {"paymentTolerance": 100}}), id="gf-tolerance-100"),
    pytest.param("POST", f"/api/v1/stores/{STORE}/invoices", GF,
                 body({"amount": "5", "checkout": {"expirationMinutes": "1e900000000"}}), id="gf-minutes-1e900000000"),
    pytest.param("POST", f"/api/v1/stores/{STORE}/invoices", GF, b"[" * 30_000 + b"]" * 30_000, id="gf-30000-deep"),
    pytest.param("POST", "/v1/invoices", NATIVE, body({"chain": "btc", "amount_atomic": "²"}),
                 id="native-amount_atomic-superscript"),
    pytest.param("POST", "/v1/invoices", NATIVE, body({"chain": "btc", "amount": "1e900000000"}),
                 id="native-amount-1e900000000"),
    pytest.param("POST", "/v1/invoices", NATIVE, body({"chain": "btc", "amount": "9" * 60_000}),
                 id="native-amount-60000-digits"),
    pytest.param("POST", "/v1/invoices", NATIVE, body({"chain": "btc", "amount_atomic": "9" * 4000}),
                 id="native-amount_atomic-4000-digits"),
    pytest.param("POST", "/v1/invoices", NATIVE,
                 body({"currency": "USD", "amount": "5", "rates": {"BTC": "1e900000000"}}),
                 id="native-rate-1e900000000"),
    pytest.param("POST", "/v1/invoices", NATIVE, b"[" * 100_000 + b"]" * 100_000, id="native-100000-deep"),
    pytest.param("POST", "/v1/invoices", NATIVE, b"[" * 30_000 + b"]" * 30_000, id="native-30000-deep"),
    pytest.param("GET", "/v1/invoices?limit=1e1000000", NATIVE, None, id="native-limit-1e1000000"),
    pytest.param("POST", "/invoices", BITPAY, body({"price": "1e30", "currency": "USD"}), id="bitpay-price-1e30"),
    pytest.param("POST", "/invoices", BITPAY, body({"price": "1e900000000", "currency": "USD"}),
                 id="bitpay-price-1e900000000"),
    pytest.param("GET", "/invoices?skip=Infinity", BITPAY, None, id="bitpay-list-skip-Infinity"),
]


class Probe:
    """GET /healthz every 100 ms on its own thread; `worst` is the longest any one waited."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/healthz"
        self.waits: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=30) as response:
                    response.read()
            except OSError:
                pass  # counted by its wait: a timeout is as long as it took
            self.waits.append(time.monotonic() - started)
            self.stop.wait(max(0.0, 0.1 - (time.monotonic() - started)))

    def __enter__(self) -> Probe:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(60)

    @property
    def worst(self) -> float:
        return max(self.waits)


@pytest.fixture(scope="module")
def daemon(bsv_node, tmp_path_factory) -> Iterator[Daemon]:
    started = Daemon(tmp_path_factory.mktemp("hostile"), chain_table("btc", bsv_node, confirmations=1),
                     extra=GREENFIELD).start()
    try:
        yield started
    finally:
        assert started.stop() == 0


def send(daemon: Daemon, method: str, path: str, headers: dict[str, str], data: bytes | None) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{daemon.port}{path}", method=method, data=data,
                                     headers={**headers, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


@pytest.mark.parametrize(("method", "path", "headers", "data"), HOSTILE)
def test_hostile_number_answers_4xx_at_once_and_never_stalls_the_loop(daemon, method, path, headers, data):
    """Sent three times while /healthz is probed every 100 ms: each answer is a 4xx within 2 s, short (nothing
    long is echoed), the probe never waits more than 0.5 s, and nothing is created (bounds scaled by
    WATCHERD_TEST_TIMEOUT_FACTOR, as every timeout in the tests)."""
    before = len(daemon.api("GET", "/v1/invoices?limit=1000")["invoices"])
    with Probe(daemon.port) as probe:
        time.sleep(0.3)  # the probe's baseline
        for _ in range(3):
            started = time.monotonic()
            status, answer = send(daemon, method, path, headers, data)
            took = time.monotonic() - started
            assert 400 <= status < 500, (status, answer[:300])
            assert took <= scaled(2), f"answered after {took:.2f}s"
            assert len(answer) < 2000, answer[:300]
        time.sleep(0.3)
    assert probe.worst <= scaled(0.5), f"/healthz waited {probe.worst:.2f}s (of {len(probe.waits)} probes)"
    assert len(probe.waits) >= 5
    assert len(daemon.api("GET", "/v1/invoices?limit=1000")["invoices"]) == before
    assert daemon.alive()
