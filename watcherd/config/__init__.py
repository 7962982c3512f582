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
from dataclasses import dataclass
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
from watcherd.exceptions import ConfigError
from watcherd.rates.config import RatesConfig

__all__ = [
    "ApiConfig",
    "ChainConfig",
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
    chains = _chains(root.table("chains"))
    root.finish()
    if greenfield is not None and greenfield.api_key and greenfield.api_key == api.token:
        ctx.problem("greenfield.api_key", "must differ from [api] token: a plugin's key must not open the native API")
    if ctx.problems:
        raise ConfigError(ctx.problems)
    return Config(path=path, store=store, api=api, webhook=webhook, log=log, chains=chains, metrics=metrics, mqtt=mqtt,
                  rates=rates, greenfield=greenfield, warnings=tuple(ctx.warnings))


_CHAIN_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")


def _chains(t: Table) -> dict[str, ChainConfig]:
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
    t.finish()
    return chains
