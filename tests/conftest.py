"""Shared test fixtures: timing helpers and real regtest nodes.

Sections, each self-contained so more can be added (the daemon fixture goes in its own section):

* timing: TIMEOUT_FACTOR, `scaled`, `wait_for`, `async_wait_for`
* the example config: `EXAMPLE`, and `example_config`, a copy with its placeholders filled in
* store: `store_location`, a fresh store for each backend (a SQLite file; an empty database on a session-scoped
  real PostgreSQL, `postgres_server`, its params marked `nodes`)
* nodes: session-scoped real nodes (`bsv_node`, `ltc_node`) on free loopback ports in temp dirs, started once,
  stopped by pid at session end even when tests fail. Tests may mine and pay freely on them, so never assert
  absolute heights or balances: compare before/after.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import re
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from testkit.bitcoin_node import Node
from testkit.process import START_TIMEOUT

T = TypeVar("T")

# ---- timing ------------------------------------------------------------------------------------------

# One knob for slow machines: every timeout in the tests is multiplied by it.
TIMEOUT_FACTOR = float(os.environ.get("WATCHERD_TEST_TIMEOUT_FACTOR") or 1)
POLL_INTERVAL = 0.05


def scaled(seconds: float) -> float:
    return seconds * TIMEOUT_FACTOR


def wait_for(predicate: Callable[[], T], timeout: float, what: str) -> T:
    """Poll `predicate` until it returns something truthy and return that; AssertionError naming `what` after
    `timeout` seconds (scaled by TIMEOUT_FACTOR)."""
    limit = scaled(timeout)
    deadline = time.monotonic() + limit
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {limit:.1f}s waiting for {what}")
        time.sleep(POLL_INTERVAL)


# The same signature as wait_for on purpose (and the timeout is scaled), hence not asyncio.timeout.
async def async_wait_for(
    predicate: Callable[[], T | Awaitable[T]],
    timeout: float,  # noqa: ASYNC109
    what: str,
) -> T:
    """`wait_for` for async tests: does not block the event loop; `predicate` may be sync or async."""
    limit = scaled(timeout)
    deadline = time.monotonic() + limit
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {limit:.1f}s waiting for {what}")
        await asyncio.sleep(POLL_INTERVAL)


def pytest_configure(config: pytest.Config) -> None:
    # A CI job killed on timeout gets SIGTERM: turn it into KeyboardInterrupt so fixture finalizers still run
    # and stop every node by pid, instead of leaving them running on the machine.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)


NODE_FIXTURES = {"bsv_node", "ltc_node", "eth_node", "xmr_node", "daemon_factory", "postgres_server"}
# modules that start nodes, build wheels or run whole programs without going through those fixtures
NODE_MODULES = {"test_devnet", "test_packaging", "test_bench_runs"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`nodes`: the test runs real nodes or programs (seconds to a minute each); `-m "not nodes"` leaves the
    unit tests, which run in seconds."""
    for item in items:
        if NODE_FIXTURES & set(getattr(item, "fixturenames", ())) or item.module.__name__ in NODE_MODULES:
            item.add_marker(pytest.mark.nodes)


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# ---- the shipped example config -----------------------------------------------------------------------

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "watcherd.example.toml"


# The example operator's own wallet (not a published test vector): the seed of the keys `example_config` sets.
EXAMPLE_OPERATOR_SEED = bytes.fromhex("5eed" * 16)


def example_operator_zpubs() -> dict[str, str]:
    """chain -> the example operator's account key (m/84'/0'/0' for btc, m/84'/2'/0' for ltc)."""
    from bip_utils import Bip84, Bip84Coins

    return {chain: Bip84.FromSeed(EXAMPLE_OPERATOR_SEED, coin).Purpose().Coin().Account(0).PublicKey().ToExtended()
            for chain, coin in (("btc", Bip84Coins.BITCOIN), ("ltc", Bip84Coins.LITECOIN))}


@pytest.fixture
def example_config(tmp_path: Path) -> Path:
    """The shipped example as an operator leaves it once edited: what check-config refuses (its CHANGE-ME
    placeholders, the example webhook host, the public test-vector keys) replaced by values of their own,
    everything else as shipped."""
    text = re.sub(r'"CHANGE-ME-([^"]*)"', r'"set-\1"', EXAMPLE.read_text())
    text = text.replace("https://billing.example/", "https://billing.internal/")
    keys = iter(example_operator_zpubs().values())  # the example's uncommented chains: btc, then ltc
    text = re.sub(r'(?m)^xpub = "[^"]*"', lambda _: f'xpub = "{next(keys)}"', text)
    edited = tmp_path / "watcherd.example.toml"
    edited.write_text(text)
    return edited


# ---- store backends ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    """A real PostgreSQL 15 on a free loopback port, stopped by pid at session end. Its directory is made
    outside pytest's (private to root) temp tree: the server runs as the postgres user."""
    import shutil
    import tempfile

    from testkit.postgres import PostgresServer

    root = Path(tempfile.mkdtemp(prefix="watcherd-pg-"))
    server = PostgresServer(root)
    try:
        server.start(timeout=scaled(START_TIMEOUT))
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


# the store-level tests run on both: "postgres" needs the real server, hence `nodes`
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.nodes)]


@pytest.fixture(params=BACKENDS)
def store_location(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    """Where `Store.open` finds a fresh, empty store: a SQLite file, or a new database on `postgres_server`."""
    if request.param == "sqlite":
        return tmp_path / "w.sqlite3"
    return str(request.getfixturevalue("postgres_server").new_database())


# ---- nodes -------------------------------------------------------------------------------------------


@contextmanager
def running_node(name: str, datadir: Path) -> Iterator[Node]:
    """A started node ("btc": SV bitcoind, "ltc": litecoind) in `datadir`, stopped by pid on the way out."""
    node = Node.create(name, datadir, die_with_parent=True)
    try:
        node.start(timeout=scaled(START_TIMEOUT))
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="session")
def bsv_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """The Bitcoin SV code base bitcoind: ZMQ rawtx + hashblock, legacy addresses, funded wallet."""
    with running_node("btc", tmp_path_factory.mktemp("bsv-node")) as node:
        yield node


@pytest.fixture(scope="session")
def ltc_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """litecoind: no ZMQ (polled), bech32, BIP125 + bumpfee, MWEB active, funded wallet "w"."""
    with running_node("ltc", tmp_path_factory.mktemp("ltc-node")) as node:
        yield node


@pytest.fixture(scope="session")
def xmr_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """monerod --regtest --offline with ZMQ pub, plus a funded customer monero-wallet-rpc (the payer)."""
    from testkit.monero_node import START_TIMEOUT as XMR_START_TIMEOUT
    from testkit.monero_node import MoneroNode

    node = MoneroNode("xmr", tmp_path_factory.mktemp("xmr-node"), die_with_parent=True)
    try:
        node.start(timeout=scaled(XMR_START_TIMEOUT))
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="session")
def eth_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """anvil --no-mining (payments wait in the pool until mined), with the test USDC/DAI tokens and the
    Forwarder deployed from account 0; accounts 1-3 hold ETH and tokens."""
    from testkit.eth_node import EthNode

    node = EthNode("eth", tmp_path_factory.mktemp("eth-node"), die_with_parent=True)
    try:
        node.start(timeout=scaled(START_TIMEOUT))
        node.deploy_contracts()
        yield node
    finally:
        node.stop()


# ---- the daemon under test -------------------------------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[Any]:
    """A webhook endpoint that verifies signatures, like a billing system's."""
    from harness import WEBHOOK_SECRET

    from testkit.receiver import WebhookReceiver

    with WebhookReceiver(WEBHOOK_SECRET) as receiver:
        yield receiver


@pytest.fixture
def daemon_factory(tmp_path: Path, receiver: Any) -> Iterator[Callable[..., Any]]:
    """Start real `watcherd run` processes (webhooks to `receiver`); each is stopped after the test."""
    from harness import Daemon

    started: list[Daemon] = []

    def make(chains: str, name: str = "d", **options: Any) -> Daemon:
        daemon = Daemon(tmp_path / name, chains, receiver.url, **options)
        started.append(daemon)
        return daemon.start()

    yield make
    for daemon in started:
        daemon.stop()
