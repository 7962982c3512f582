"""Configuration: one TOML file -> frozen dataclasses.

Every problem in the file is reported at once, each as (file, dotted key, message), so an operator fixes a
config in one round trip. Unknown keys are errors: a typo must not silently leave a default in force.
watcherd is watch-only, so anything that looks like private key material is refused wherever it appears.

The table reader (reader.py), the private material scan (private.py) and the core tables (tables.py) are
this package's; each chain kind parses its own `[chains.NAME]` table (watcherd/chains/<kind>/config.py),
reached through the chain registry, so that config imports no chain kind.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Protocol

from watcherd.chains import registry
from watcherd.config.private import refuse_private_material
from watcherd.config.reader import Context, Table
from watcherd.config.tables import (
    ApiConfig,
    GreenfieldConfig,
    LogConfig,
    MetricsConfig,
    MqttConfig,
    StoreConfig,
    WebhookConfig,
    parse_api,
    parse_greenfield,
    parse_log,
    parse_metrics,
    parse_mqtt,
    parse_rates,
    parse_store,
    parse_webhook,
)
from watcherd.config.testvectors import is_test_network
from watcherd.exceptions import ConfigError
from watcherd.rates.config import RatesConfig

__all__ = [
    "ApiConfig",
    "ChainConfig",
    "ChainLabel",
    "Config",
    "GreenfieldConfig",
    "LogConfig",
    "MetricsConfig",
    "MqttConfig",
    "RatesConfig",
    "StoreConfig",
    "WebhookConfig",
    "load",
]


class _AddressDeriver(Protocol):
    def derive(self, index: int) -> tuple[str, bytes]:
        """(address, its chain-specific raw form) of invoice `index`."""
        ...


class _Network(Protocol):
    @property
    def name(self) -> str: ...


class ChainConfig(Protocol):
    """What every chain kind's frozen config dataclass has; the kind's adapter reads the rest."""

    # Read-only properties, not attributes: a protocol attribute would demand a setter, and the configs are frozen.
    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def coin(self) -> str: ...
    @property
    def network(self) -> _Network: ...
    @property
    def asset(self) -> str: ...
    @property
    def decimals(self) -> int: ...
    @property
    def confirmations(self) -> int: ...
    @property
    def underpaid_tolerance_percent(self) -> Decimal: ...
    @property
    def invoice_expiry_seconds(self) -> int: ...
    @property
    def start_height(self) -> int | None: ...

    def address_deriver(self) -> _AddressDeriver: ...


@dataclass(frozen=True)
class Config:
    path: Path
    store: StoreConfig
    api: ApiConfig
    webhook: WebhookConfig | None
    log: LogConfig
    chains: dict[str, ChainConfig]
    metrics: MetricsConfig | None = None  # Prometheus listener; absent table: no listener
    mqtt: MqttConfig | None = None  # absent table: no MQTT publishing
    rates: RatesConfig | None = None  # absent table: no rates fetched; a fiat invoice must bring its own rates
    greenfield: GreenfieldConfig | None = None  # absent table: no BTCPay Greenfield / BitPay-compatible API
    # (file, dotted key, message) of what works but should not stay so (a secret file others can read, TLS that
    # verifies nothing): `check-config` prints them, `run` logs them at start
    warnings: tuple[tuple[str, str, str], ...] = ()
    labels: dict[str, ChainLabel] = field(default_factory=dict)  # chain name -> how the payment page shows it


@dataclass(frozen=True)
class ChainLabel:
    """How the payment page names a chain to the customer (never by the operator's key for it)."""

    display_name: str  # "Ethereum": the table's display_name, else a name from its coin or chain id
    test_network: bool  # regtest, testnet, signet, stagenet, a test EVM chain: the page says so


def load(path: str | Path) -> Config:
    """Read and validate `path`; ConfigError lists every problem found."""
    path = Path(path).absolute()
    try:
        with path.open("rb") as f:
            document = tomllib.load(f)
    except OSError as e:
        raise ConfigError([(str(path), "(file)", f"cannot read: {e.strerror}")]) from None
    except UnicodeDecodeError:
        raise ConfigError([(str(path), "(file)", "is not UTF-8 text")]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([(str(path), "(syntax)", f"invalid TOML: {e}")]) from None

    ctx = Context(path)
    refuse_private_material(ctx, document, "")
    root = Table(ctx, "", document)
    store = parse_store(root.table("store"))
    api = parse_api(root.table("api"))
    webhook = parse_webhook(root.table("webhook")) if root.present("webhook") else None
    log = parse_log(root.table("log"))
    metrics = parse_metrics(root.table("metrics")) if root.present("metrics") else None
    mqtt = parse_mqtt(root.table("mqtt")) if root.present("mqtt") else None
    rates = parse_rates(root.table("rates")) if root.present("rates") else None
    greenfield = parse_greenfield(root.table("greenfield")) if root.present("greenfield") else None
    labels: dict[str, ChainLabel] = {}
    chains = _chains(root.table("chains"), labels)
    root.finish()
    if greenfield is not None and greenfield.api_key and greenfield.api_key == api.token:
        ctx.problem("greenfield.api_key", "must differ from [api] token: a plugin's key must not open the native API")
    if ctx.problems:
        raise ConfigError(ctx.problems)
    return Config(path=path, store=store, api=api, webhook=webhook, log=log, chains=chains, metrics=metrics, mqtt=mqtt,
                  rates=rates, greenfield=greenfield, warnings=tuple(ctx.warnings), labels=labels)


_CHAIN_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")


# The names a chain gets on the payment page when its table sets no display_name.
_COIN_NAMES = {"bitcoin": "Bitcoin", "litecoin": "Litecoin", "monero": "Monero"}
_EVM_NAMES = {1: "Ethereum", 10: "OP Mainnet", 56: "BNB Smart Chain", 100: "Gnosis", 137: "Polygon", 8453: "Base",
              42161: "Arbitrum One", 43114: "Avalanche C-Chain", 11155111: "Sepolia", 17000: "Holesky",
              560048: "Hoodi"}


def _label(chain: ChainConfig, display_name: str | None) -> ChainLabel:
    network = chain.network.name
    if display_name is None:
        chain_id = int(network.removeprefix("chain-id-")) if network.startswith("chain-id-") else None
        display_name = _COIN_NAMES.get(chain.coin) if chain_id is None else \
            _EVM_NAMES.get(chain_id, f"EVM chain {chain_id}")
    return ChainLabel(display_name or chain.coin.capitalize(), is_test_network(network))


def _display_name(t: Table) -> str | None:
    name = t.optional_text("display_name")
    if name is not None and (len(name) > 40 or not name.isprintable() or name != name.strip()):
        t.problem("display_name", "must be at most 40 printable characters, without leading or trailing spaces "
                                  "(the payment page shows it: \"USDC on Ethereum\")")
        return None
    return name


def _chains(t: Table, labels: dict[str, ChainLabel]) -> dict[str, ChainConfig]:
    chains: dict[str, ChainConfig] = {}
    first_address: dict[tuple[str, str, str], str] = {}
    for name in list(t.data):
        if not _CHAIN_NAME.fullmatch(name):
            t.present(name)
            t.problem(name, f"chain name must match ^{_CHAIN_NAME.pattern}$")
            continue
        table = t.table(name)
        kind = table.choice("kind", tuple(registry.KINDS))
        if not kind:
            continue  # without a kind the other keys cannot be judged
        display_name = _display_name(table)  # every kind's key, read before the kind's parser finishes the table
        chain: ChainConfig | None = registry.kind(kind).parse_config(table, name)
        if chain is None:
            continue
        # Two chains on one key would hand the same address to two invoices.
        first = (chain.coin, chain.network.name, chain.address_deriver().derive(0)[0])
        if first in first_address:
            table.problem(
                table.secret_key("xpub"),
                f"derives the same addresses as chains.{first_address[first]}; "
                "each chain needs its own account key",
            )
            continue
        first_address[first] = name
        chains[name] = chain
        labels[name] = _label(chain, display_name)
    t.finish()
    return chains
