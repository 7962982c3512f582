"""Configuration: one TOML file -> frozen dataclasses.

Every problem in the file is reported at once, each as (file, dotted key, message), so an operator fixes a
config in one round trip. Unknown keys are errors: a typo must not silently leave a default in force.
watcherd is watch-only, so anything that looks like private key material is refused wherever it appears.
"""

from __future__ import annotations

import difflib
import math
import re
import tomllib
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

from watcherd.chains.bitcoin import address as btc_address
from watcherd.chains.ethereum import address as eth_address
from watcherd.chains.monero import crypto as xmr_crypto
from watcherd.exceptions import ConfigError


@dataclass(frozen=True)
class StoreConfig:
    path: Path


@dataclass(frozen=True)
class ApiConfig:
    host: str
    port: int
    token: str = field(repr=False)

    @property
    def listen(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class MetricsConfig:
    host: str
    port: int

    @property
    def listen(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class MqttConfig:
    url: str = field(repr=False)  # mqtt://host:1883 or mqtts://host:8883
    topic_prefix: str
    username: str | None
    password: str | None = field(repr=False)
    client_id: str | None

    @property
    def url_without_credentials(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.hostname}:{parts.port or (8883 if parts.scheme == 'mqtts' else 1883)}"


@dataclass(frozen=True)
class WebhookConfig:
    url: str = field(repr=False)  # webhook URLs often carry a token in their path or query
    secret: str = field(repr=False)
    timeout_seconds: float
    max_retry_hours: float


@dataclass(frozen=True)
class LogConfig:
    level: str  # debug | info | warning | error
    format: str  # plain | json


@dataclass(frozen=True)
class BitcoinChainConfig:
    name: str
    coin: str  # bitcoin | litecoin
    network: btc_address.Network
    asset: str  # BTC | LTC
    rpc_url: str
    rpc_user: str | None
    rpc_password: str | None = field(repr=False)
    # Kept as a path, not read: bitcoind writes a new cookie on every restart, the adapter re-reads it.
    rpc_cookie_file: Path | None
    zmq_rawtx: str | None
    zmq_hashblock: str | None
    poll_interval_seconds: float
    xpub: str = field(repr=False)  # not secret, but it reveals every address of the account
    address_type: str
    confirmations: int
    underpaid_tolerance_percent: Decimal
    invoice_expiry_seconds: int
    start_height: int | None  # None: start at the node's tip on the very first run
    kind: str = "bitcoin"
    decimals: int = 8

    @property
    def zmq(self) -> bool:
        """True when the node pushes over ZMQ; otherwise the chain is polled."""
        return self.zmq_rawtx is not None and self.zmq_hashblock is not None

    def address_deriver(self) -> btc_address.AddressDeriver:
        return btc_address.AddressDeriver(self.xpub, self.address_type, self.network)


@dataclass(frozen=True)
class EthToken:
    symbol: str
    contract: str  # EIP-55 checksummed
    decimals: int


@dataclass(frozen=True)
class EvmNetwork:
    name: str  # "chain-id-<n>": two chains are the same network only when their chain ids match


@dataclass(frozen=True)
class EthereumChainConfig:
    name: str
    ws_url: str = field(repr=False)  # may carry a provider's API key in its path
    chain_id: int
    xpub: str = field(repr=False)  # account level m/44'/60'/0'; invoices get /0/i
    confirmations: int  # used when finality is None
    finality: str | None  # "finalized": a payment is confirmed once the node's `finalized` block covers it
    tokens: tuple[EthToken, ...]
    asset: str  # the native asset's symbol (ETH, or POL, ...)
    underpaid_tolerance_percent: Decimal
    invoice_expiry_seconds: int
    start_height: int | None  # None: start at the node's tip on the very first run
    kind: str = "ethereum"
    decimals: int = 18
    coin: str = "ethereum"

    @property
    def network(self) -> EvmNetwork:
        return EvmNetwork(f"chain-id-{self.chain_id}")

    def address_deriver(self) -> eth_address.EthDeriver:
        return eth_address.EthDeriver(self.xpub)


@dataclass(frozen=True)
class MoneroNetwork:
    name: str  # mainnet | stagenet | testnet (regtest uses mainnet's address prefixes)


@dataclass(frozen=True)
class MoneroChainConfig:
    name: str
    network: MoneroNetwork
    rpc_url: str
    rpc_user: str | None
    rpc_password: str | None = field(repr=False)
    zmq_pub: str | None  # monerod --zmq-pub endpoint; None: poll
    primary_address: str = field(repr=False)  # not secret, but it identifies the operator's wallet
    view_key: bytes = field(repr=False)  # the PRIVATE view key: reveals every incoming payment
    account: int = 0
    confirmations: int = 10
    underpaid_tolerance_percent: Decimal = Decimal(0)
    invoice_expiry_seconds: int = 900
    poll_interval_seconds: float = 2.0
    start_height: int | None = None  # None: start at the node's tip on the very first run
    asset: str = "XMR"
    kind: str = "monero"
    decimals: int = 12
    coin: str = "monero"

    def address_deriver(self) -> xmr_crypto.MoneroDeriver:
        spend_public = xmr_crypto.decode_address(self.primary_address).spend_public
        return xmr_crypto.MoneroDeriver(self.view_key, spend_public, self.network.name, self.account)


ChainConfig = BitcoinChainConfig | EthereumChainConfig | MoneroChainConfig  # grows as other chain kinds land


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

    ctx = _Context(path)
    _refuse_private_material(ctx, document, "")
    root = _Table(ctx, "", document)
    store = _store(root.table("store"))
    api = _api(root.table("api"))
    webhook = _webhook(root.table("webhook")) if root.present("webhook") else None
    log = _log(root.table("log"))
    metrics = _metrics(root.table("metrics")) if root.present("metrics") else None
    mqtt = _mqtt(root.table("mqtt")) if root.present("mqtt") else None
    chains = _chains(root.table("chains"))
    root.finish()
    if ctx.problems:
        raise ConfigError(ctx.problems)
    return Config(path=path, store=store, api=api, webhook=webhook, log=log, chains=chains, metrics=metrics, mqtt=mqtt)


class _Context:
    """What every table reader shares: the file, the problems found so far, the keys already refused."""

    def __init__(self, path: Path):
        self.path = path
        self.problems: list[tuple[str, str, str]] = []
        self.refused: set[str] = set()

    def problem(self, key: str, message: str) -> None:
        self.problems.append((str(self.path), key, message))

    def refuse(self, key: str, message: str) -> None:
        self.refused.add(key)
        self.problem(key, message)

    def resolve(self, value: str) -> Path:
        """Relative paths mean relative to the config file, not to wherever the daemon was started."""
        candidate = Path(value)
        return candidate if candidate.is_absolute() else self.path.parent / candidate


_ABSENT = object()
_REFUSED = object()


class _Table:
    """One TOML table being read.

    A getter that meets a bad value records the problem and returns a placeholder of the right type, so the
    parsers stay straight-line code; load() raises before any placeholder can escape. A key the private
    material scan refused reads as a placeholder without a second problem.
    """

    def __init__(self, ctx: _Context, key: str, data: dict[str, object]):
        self.ctx = ctx
        self.key = key
        self.data = data
        self.known: set[str] = set()
        self._problems_before = len(ctx.problems)

    def dotted(self, name: str) -> str:
        return f"{self.key}.{name}" if self.key else name

    def problem(self, name: str, message: str) -> None:
        self.ctx.problem(self.dotted(name), message)

    def present(self, name: str) -> bool:
        self.known.add(name)
        return name in self.data

    def _raw(self, name: str, required: bool = False) -> object:
        self.known.add(name)
        if self.dotted(name) in self.ctx.refused:
            return _REFUSED
        if name not in self.data:
            if required:
                self.problem(name, "is required")
            return _ABSENT
        return self.data[name]

    def text(self, name: str, default: str | None = None) -> str:
        """A string; required unless it has a default."""
        value = self.optional_text(name, required=default is None)
        return value if value is not None else (default or "")

    def optional_text(self, name: str, required: bool = False) -> str | None:
        value = self._raw(name, required)
        if value is _ABSENT or value is _REFUSED:
            return None
        if not isinstance(value, str) or not value:
            self.problem(name, "must be a non-empty string")
            return None
        return value

    def choice(self, name: str, options: tuple[str, ...], default: str | None = None) -> str:
        value = self._raw(name, required=default is None)
        if value is _ABSENT or value is _REFUSED:
            return default or ""
        if value not in options:
            self.problem(name, f"must be one of: {', '.join(options)}")
            return ""
        assert isinstance(value, str)
        return value

    def integer(self, name: str, default: int | None, valid: Callable[[int], bool], rule: str) -> int:
        value = self.optional_integer(name, valid, rule, required=default is None)
        return value if value is not None else (default or 0)

    def optional_integer(
        self, name: str, valid: Callable[[int], bool], rule: str, required: bool = False
    ) -> int | None:
        value = self._raw(name, required)
        if value is _ABSENT or value is _REFUSED:
            return None
        # bool is an int subclass in Python, but `confirmations = true` is a mistake, not a 1.
        if not isinstance(value, int) or isinstance(value, bool) or not valid(value):
            self.problem(name, f"must be {rule}")
            return None
        return value

    def number(self, name: str, default: float, valid: Callable[[float], bool], rule: str) -> float:
        value = self._raw(name)
        if value is _ABSENT or value is _REFUSED:
            return default
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not math.isfinite(value)
            or not valid(value)
        ):
            self.problem(name, f"must be {rule}")
            return default
        return value

    def path(self, name: str) -> Path:
        value = self.optional_path(name, required=True)
        return value if value is not None else Path()

    def optional_path(self, name: str, required: bool = False) -> Path | None:
        value = self.optional_text(name, required)
        return self.ctx.resolve(value) if value is not None else None

    def secret(self, name: str, required: bool = True, min_length: int = 1) -> str | None:
        """`name` inline, or `name_file` holding it (one trailing newline stripped); exactly one of them."""
        file_name = f"{name}_file"
        inline = self._raw(name)
        from_file = self._raw(file_name)
        if inline is _REFUSED or from_file is _REFUSED:
            return None
        if inline is not _ABSENT and from_file is not _ABSENT:
            self.problem(name, f"set {name} or {file_name}, not both")
            return None
        if inline is _ABSENT and from_file is _ABSENT:
            if required:
                self.problem(name, f"is required (or {file_name} naming a file that holds it)")
            return None
        if inline is not _ABSENT:
            source = name
            if not isinstance(inline, str):
                self.problem(name, "must be a string")
                return None
            value = inline
        else:
            source = file_name
            if not isinstance(from_file, str) or not from_file:
                self.problem(file_name, "must be a non-empty string (a file path)")
                return None
            read = self._read_secret_file(file_name, self.ctx.resolve(from_file))
            if read is None:
                return None
            value = read
        if len(value) < min_length:
            self.problem(source, f"must be at least {min_length} characters")
            return None
        return value

    def secret_key(self, name: str) -> str:
        """Which of `name` / `name_file` a secret came from, for problems found after reading it."""
        return name if name in self.data else f"{name}_file"

    def _read_secret_file(self, file_name: str, path: Path) -> str | None:
        try:
            value = path.read_text(encoding="utf-8")
        except OSError as e:
            self.problem(file_name, f"cannot read {path}: {e.strerror}")
            return None
        except UnicodeDecodeError:
            self.problem(file_name, f"{path} is not UTF-8 text")
            return None
        # Editors and `echo` add one trailing newline; anything else is part of the secret.
        value = value[:-2] if value.endswith("\r\n") else value.removesuffix("\n")
        if not value:
            self.problem(file_name, f"{path} is empty")
            return None
        why = _private_material(value)
        if why is not None:
            self.problem(file_name, f"refused: {path} holds {why.removeprefix('this is ')}; {_WATCH_ONLY}")
            return None
        return value

    def table(self, name: str) -> _Table:
        """A sub-table; an absent one reads as empty, so its required keys are reported by name."""
        value = self._raw(name)
        if value is _ABSENT or value is _REFUSED:
            return _Table(self.ctx, self.dotted(name), {})
        if not isinstance(value, dict):
            self.problem(name, "must be a table")
            return _Table(self.ctx, self.dotted(name), {})
        return _Table(self.ctx, self.dotted(name), value)

    def finish(self) -> bool:
        """Report the keys nobody asked for; True when this table (and what it read) had no problems."""
        for name in self.data:
            dotted = self.dotted(name)
            if name in self.known or dotted in self.ctx.refused:
                continue
            close = difflib.get_close_matches(name, sorted(self.known), n=1, cutoff=0.75)
            self.problem(name, "unknown key" + (f" (did you mean {close[0]}?)" if close else ""))
        return len(self.ctx.problems) == self._problems_before


def _store(t: _Table) -> StoreConfig:
    store = StoreConfig(path=t.path("path"))
    t.finish()
    return store


def _api(t: _Table) -> ApiConfig:
    listen = t.text("listen", default="127.0.0.1:8420")
    host, port = _host_port(listen) or ("", 0)
    if not host:
        t.problem("listen", "must be host:port, e.g. 127.0.0.1:8420 or [::1]:8420")
    token = t.secret("token", min_length=16) or ""
    if any(c.isspace() or not c.isprintable() for c in token):
        t.problem(t.secret_key("token"), "must not contain whitespace or control characters")
    t.finish()
    return ApiConfig(host=host, port=port, token=token)


def _metrics(t: _Table) -> MetricsConfig:
    listen = t.text("listen", default="127.0.0.1:9420")
    host, port = _host_port(listen) or ("", 0)
    if not host:
        t.problem("listen", "must be host:port, e.g. 127.0.0.1:9420")
    t.finish()
    return MetricsConfig(host=host, port=port)


_TOPIC_PREFIX = re.compile(r"[A-Za-z0-9_\-/.]{1,100}")


def _mqtt(t: _Table) -> MqttConfig:
    url = t.text("url", default="mqtt://127.0.0.1:1883")
    parts = urlsplit(url)
    try:
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:
        port_ok = False
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname or not port_ok:
        t.problem("url", "must be mqtt://host[:port] or mqtts://host[:port]")
    elif parts.username or parts.password:
        t.problem("url", "must not contain credentials; use username + password(_file)")
    prefix = t.text("topic_prefix", default="watcherd")
    if not _TOPIC_PREFIX.fullmatch(prefix) or prefix.startswith("/") or prefix.endswith("/") or "+" in prefix:
        t.problem("topic_prefix", "must be a plain MQTT topic prefix such as watcherd or billing/crypto")
    username = t.optional_text("username")
    password = t.secret("password", required=False)
    if password is not None and username is None:
        t.problem("username", "is required when a password is set")
    mqtt = MqttConfig(url=url, topic_prefix=prefix, username=username, password=password,
                      client_id=t.optional_text("client_id"))
    t.finish()
    return mqtt


def _webhook(t: _Table) -> WebhookConfig:
    url = t.text("url")
    if url and not _is_http_url(url):
        t.problem("url", "must be an http:// or https:// URL")
    webhook = WebhookConfig(
        url=url,
        secret=t.secret("secret", min_length=16) or "",
        timeout_seconds=t.number("timeout_seconds", 10, lambda x: x > 0, "a number > 0"),
        max_retry_hours=t.number("max_retry_hours", 72, lambda x: x > 0, "a number > 0"),
    )
    t.finish()
    return webhook


def _log(t: _Table) -> LogConfig:
    log = LogConfig(
        level=t.choice("level", ("debug", "info", "warning", "error"), default="info"),
        format=t.choice("format", ("plain", "json"), default="plain"),
    )
    t.finish()
    return log


_CHAIN_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")


def _chains(t: _Table) -> dict[str, ChainConfig]:
    chains: dict[str, ChainConfig] = {}
    first_address: dict[tuple[str, str, str], str] = {}
    for name in list(t.data):
        if not _CHAIN_NAME.fullmatch(name):
            t.present(name)
            t.problem(name, f"chain name must match ^{_CHAIN_NAME.pattern}$")
            continue
        table = t.table(name)
        kind = table.choice("kind", tuple(_CHAIN_KINDS))
        parser = _CHAIN_KINDS.get(kind)
        if parser is None:
            continue  # without a kind the other keys cannot be judged
        chain = parser(table, name)
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


def _bitcoin_chain(t: _Table, name: str) -> BitcoinChainConfig | None:
    coin = t.choice("coin", ("bitcoin", "litecoin"))
    network_name = t.choice("network", ("mainnet", "testnet", "signet", "regtest"))
    network = None
    if coin and network_name:
        try:
            network = btc_address.network(coin, network_name)
        except ValueError:
            t.problem("network", f"{coin} has no {network_name} network")

    rpc_url = t.text("rpc_url")
    if rpc_url and not _is_http_url(rpc_url):
        t.problem("rpc_url", "must be an http:// or https:// URL")
    elif rpc_url and (urlsplit(rpc_url).username or urlsplit(rpc_url).password):
        t.problem(
            "rpc_url", "must not contain credentials; use rpc_user + rpc_password(_file), or rpc_cookie_file"
        )
    rpc_user = t.optional_text("rpc_user")
    rpc_password = t.secret("rpc_password", required=False)
    rpc_cookie_file = t.optional_path("rpc_cookie_file")
    has_user, has_cookie = t.present("rpc_user"), t.present("rpc_cookie_file")
    has_password = t.present("rpc_password") or t.present("rpc_password_file")
    if has_cookie and (has_user or has_password):
        t.problem("rpc_cookie_file", "use either rpc_cookie_file or rpc_user with rpc_password, not both")
    elif has_user and not has_password:
        t.problem("rpc_password", "is required with rpc_user (or rpc_password_file)")
    elif has_password and not has_user:
        t.problem("rpc_user", "is required with rpc_password")
    elif not (has_cookie or has_user):
        t.problem(
            "rpc_cookie_file", "no RPC credentials: set rpc_cookie_file, or rpc_user + rpc_password(_file)"
        )

    zmq_rawtx = t.optional_text("zmq_rawtx")
    zmq_hashblock = t.optional_text("zmq_hashblock")
    for key, endpoint in (("zmq_rawtx", zmq_rawtx), ("zmq_hashblock", zmq_hashblock)):
        if endpoint is not None and not _ZMQ_ENDPOINT.fullmatch(endpoint):
            t.problem(key, "must be a ZMQ endpoint like tcp://127.0.0.1:28332 or ipc:///path")
    if t.present("zmq_rawtx") != t.present("zmq_hashblock"):
        missing = "zmq_hashblock" if t.present("zmq_rawtx") else "zmq_rawtx"
        t.problem(missing, "set both zmq_rawtx and zmq_hashblock, or neither to poll the node")

    address_type = t.choice("address_type", btc_address.ADDRESS_TYPES, default="p2wpkh")
    xpub = t.secret("xpub")
    if xpub is not None and network is not None and address_type:
        try:
            btc_address.AddressDeriver(xpub, address_type, network)
        except ValueError as e:
            t.problem(t.secret_key("xpub"), str(e))

    tolerance = t.number("underpaid_tolerance_percent", 0, lambda x: 0 <= x < 100, "a number 0 ≤ x < 100")
    chain = BitcoinChainConfig(
        name=name,
        coin=coin,
        network=network or btc_address.network("bitcoin", "mainnet"),
        asset={"bitcoin": "BTC", "litecoin": "LTC"}.get(coin, ""),
        rpc_url=rpc_url,
        rpc_user=rpc_user,
        rpc_password=rpc_password,
        rpc_cookie_file=rpc_cookie_file,
        zmq_rawtx=zmq_rawtx,
        zmq_hashblock=zmq_hashblock,
        poll_interval_seconds=t.number("poll_interval_seconds", 2.0, lambda x: x > 0, "a number > 0"),
        xpub=xpub or "",
        address_type=address_type,
        confirmations=t.integer("confirmations", 2, lambda x: x >= 1, "an integer ≥ 1"),
        # Through str so that 0.1 in the file is Decimal("0.1"), not the float's binary expansion.
        underpaid_tolerance_percent=Decimal(str(tolerance)),
        invoice_expiry_seconds=t.integer("invoice_expiry_seconds", 900, lambda x: x >= 60, "an integer ≥ 60"),
        start_height=t.optional_integer("start_height", lambda x: x >= 0, "an integer ≥ 0"),
    )
    # A refused or invalid key leaves placeholders behind; such a chain must not be used, even for checks.
    return chain if t.finish() and network is not None and xpub is not None else None


_WS_URL = re.compile(r"wss?://\S+")
_TOKEN_SYMBOL = re.compile(r"[A-Za-z0-9.]{1,16}")


def _ethereum_chain(t: _Table, name: str) -> EthereumChainConfig | None:
    ws_url = t.text("ws_url")
    if ws_url and not _WS_URL.fullmatch(ws_url):
        t.problem("ws_url", "must be a websocket URL, ws:// or wss:// (the node's websocket JSON-RPC)")
    chain_id = t.integer("chain_id", None, lambda x: x >= 1, "an integer ≥ 1 (1 = Ethereum mainnet)")
    xpub = t.secret("xpub")
    if xpub is not None:
        try:
            eth_address.EthDeriver(xpub)
        except ValueError as e:
            t.problem(t.secret_key("xpub"), str(e))
            xpub = None
    finality = t.choice("finality", ("finalized",), default="") or None
    if finality is not None and t.present("confirmations"):
        t.problem("finality", "set confirmations or finality = \"finalized\", not both")
    confirmations = t.integer("confirmations", 12, lambda x: x >= 1, "an integer ≥ 1")
    asset = t.text("asset", default="ETH")
    tokens: list[EthToken] = []
    raw_tokens = t._raw("tokens")
    if raw_tokens is not _ABSENT and raw_tokens is not _REFUSED:
        if not isinstance(raw_tokens, list):
            t.problem("tokens", "must be an array of tables: [[chains.NAME.tokens]] symbol, contract, decimals")
            raw_tokens = []
        for i, item in enumerate(raw_tokens):
            if not isinstance(item, dict):
                t.problem(f"tokens[{i}]", "must be a table with symbol, contract, decimals")
                continue
            tt = _Table(t.ctx, t.dotted(f"tokens[{i}]"), item)
            symbol = tt.text("symbol")
            if symbol and not _TOKEN_SYMBOL.fullmatch(symbol):
                tt.problem("symbol", "must be 1-16 letters, digits or dots")
            elif symbol and (symbol == asset or symbol in {tok.symbol for tok in tokens}):
                tt.problem("symbol", f"{symbol!r} is already an asset of this chain")
            contract = tt.text("contract")
            if contract:
                try:
                    contract = eth_address.to_checksum(eth_address.parse_address(contract))
                except ValueError as e:
                    tt.problem("contract", str(e))
                    contract = ""
            if contract and contract in {tok.contract for tok in tokens}:
                tt.problem("contract", "is listed twice")
            decimals = tt.integer("decimals", None, lambda x: 0 <= x <= 36, "an integer 0 ≤ x ≤ 36")
            if tt.finish() and symbol and contract:
                tokens.append(EthToken(symbol=symbol, contract=contract, decimals=decimals))
    tolerance = t.number("underpaid_tolerance_percent", 0, lambda x: 0 <= x < 100, "a number 0 ≤ x < 100")
    chain = EthereumChainConfig(
        name=name,
        ws_url=ws_url,
        chain_id=chain_id,
        xpub=xpub or "",
        confirmations=confirmations,
        finality=finality,
        tokens=tuple(tokens),
        asset=asset,
        underpaid_tolerance_percent=Decimal(str(tolerance)),
        invoice_expiry_seconds=t.integer("invoice_expiry_seconds", 900, lambda x: x >= 60, "an integer ≥ 60"),
        start_height=t.optional_integer("start_height", lambda x: x >= 0, "an integer ≥ 0"),
    )
    return chain if t.finish() and xpub is not None and chain_id else None


def _monero_chain(t: _Table, name: str) -> MoneroChainConfig | None:
    network_name = t.choice("network", ("mainnet", "stagenet", "testnet", "regtest"))
    network = MoneroNetwork("mainnet" if network_name == "regtest" else network_name)
    rpc_url = t.text("rpc_url")
    if rpc_url and not _is_http_url(rpc_url):
        t.problem("rpc_url", "must be an http:// or https:// URL (monerod's RPC, e.g. http://127.0.0.1:18081)")
    rpc_user = t.optional_text("rpc_user")
    rpc_password = t.secret("rpc_password", required=False)
    if (rpc_user is None) != (rpc_password is None):
        t.problem("rpc_user" if rpc_user is None else "rpc_password", "set rpc_user and rpc_password together "
                  "(monerod --rpc-login user:password), or neither")
    zmq_pub = t.optional_text("zmq_pub")
    if zmq_pub is not None and not _ZMQ_ENDPOINT.fullmatch(zmq_pub):
        t.problem("zmq_pub", "must be a ZMQ endpoint like tcp://127.0.0.1:18084 (monerod --zmq-pub)")
    address_text = t.text("primary_address")
    address = None
    if address_text:
        try:
            address = xmr_crypto.decode_address(address_text)
        except xmr_crypto.MoneroKeyError as e:
            t.problem("primary_address", f"not a valid Monero address: {e}")
        else:
            if address.kind != "standard":
                t.problem("primary_address", f"must be the wallet's primary address, not a {address.kind} address")
                address = None
            elif network_name and address.network != network.name:
                t.problem("primary_address", f"is a {address.network} address, but network = {network_name!r}")
                address = None
    view_key = None
    view_hex = t.secret("view_key")
    if view_hex is not None:
        source = t.secret_key("view_key")
        try:
            view_key = bytes.fromhex(view_hex.strip())
            public = xmr_crypto.public_key(view_key)
        except (ValueError, xmr_crypto.MoneroKeyError):
            t.problem(source, "must be the 64-hex-digit private view key (monero-wallet-cli: viewkey)")
            view_key = None
        else:
            if address is not None and public == address.spend_public:
                t.problem(source, "refused: this is the wallet's private SPEND key, which can move the funds; "
                          "watcherd is watch-only: give it the private VIEW key")
                view_key = None
            elif address is not None and public != address.view_public:
                t.problem(source, "is not the private view key of primary_address (its public key differs)")
                view_key = None
    tolerance = t.number("underpaid_tolerance_percent", 0, lambda x: 0 <= x < 100, "a number 0 ≤ x < 100")
    chain = MoneroChainConfig(
        name=name,
        network=network,
        rpc_url=rpc_url,
        rpc_user=rpc_user,
        rpc_password=rpc_password,
        zmq_pub=zmq_pub,
        primary_address=address_text,
        view_key=view_key or bytes(32),
        account=t.integer("account", 0, lambda x: 0 <= x < 2**32, "an integer 0 ≤ x < 2^32"),
        confirmations=t.integer("confirmations", 10, lambda x: x >= 1, "an integer ≥ 1"),
        underpaid_tolerance_percent=Decimal(str(tolerance)),
        invoice_expiry_seconds=t.integer("invoice_expiry_seconds", 900, lambda x: x >= 60, "an integer ≥ 60"),
        poll_interval_seconds=t.number("poll_interval_seconds", 2.0, lambda x: x > 0, "a number > 0"),
        start_height=t.optional_integer("start_height", lambda x: x >= 0, "an integer ≥ 0"),
    )
    return chain if t.finish() and address is not None and view_key is not None else None


# One parser per chain kind; "ethereum" and "monero" slot in here.
_CHAIN_KINDS: dict[str, Callable[[_Table, str], ChainConfig | None]] = {
    "bitcoin": _bitcoin_chain,
    "ethereum": _ethereum_chain,
    "monero": _monero_chain,
}

_ZMQ_ENDPOINT = re.compile(r"tcp://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):\d{1,5}|ipc://\S+")


def _host_port(value: str) -> tuple[str, int] | None:
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([A-Za-z0-9.-]+):(\d{1,5})", value)
    if match is None:
        return None
    host, port = match[1] or match[3], int(match[2] or match[4])
    return (host, port) if 1 <= port <= 65535 else None


def _is_http_url(value: str) -> bool:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 -- raises ValueError on a malformed port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and not any(c.isspace() for c in value)


# Private material refusal: the whole parsed document is scanned before any table is read.

_WATCH_ONLY = ("watcherd is watch-only: configure the account's xpub/zpub (Monero: the private view key and the "
               "primary address) instead")
_PRIVATE_KEY_NAME = re.compile(r"seed|mnemonic|private|privkey|prv|wif|spend_?key|entropy", re.IGNORECASE)
_BASE58_RUN = re.compile(r"[1-9A-HJ-NP-Za-km-z]{50,}")
# A damaged xprv (a typo breaks its checksum) is still private material.
_PRIVATE_PREFIX = re.compile(
    r"(?<![1-9A-HJ-NP-Za-km-z])(?:[xyztuvYZUV]prv|Ltpv|Mtpv|ttpv)[1-9A-HJ-NP-Za-km-z]{60,}"
)


def _refuse_private_material(ctx: _Context, table: dict[str, object], prefix: str) -> None:
    for name, value in table.items():
        key = f"{prefix}.{name}" if prefix else name
        # Chain names are the operator's labels, not settings.
        if prefix != "chains" and _PRIVATE_KEY_NAME.search(name):
            ctx.refuse(
                key,
                "refused: the key name suggests private key material (seed, mnemonic, private key); "
                "watcherd is watch-only and never needs it",
            )
            continue
        _refuse_in_value(ctx, key, value)


def _refuse_in_value(ctx: _Context, key: str, value: object) -> None:
    if isinstance(value, dict):
        _refuse_private_material(ctx, value, key)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _refuse_in_value(ctx, f"{key}[{i}]", item)
    elif isinstance(value, str):
        why = _private_material(value)
        if why is not None:
            ctx.refuse(key, f"refused: {why}; {_WATCH_ONLY}")


def _private_material(value: str) -> str | None:
    """Why `value` looks like private key material ("this is a WIF private key"), or None."""
    for run in _BASE58_RUN.findall(value):
        kind = btc_address.private_key_kind(run)
        if kind is not None:
            return f"this is {kind}"
    match = _PRIVATE_PREFIX.search(value)
    if match is not None:
        return f"this is an extended PRIVATE key ({match[0][:4]})"
    words = [unicodedata.normalize("NFKD", w).lower() for w in re.split(r"[\s,;]+", value) if w]
    # 12 is the shortest BIP39 mnemonic; more words (a typo'd or padded seed) are refused all the same.
    if len(words) >= 12 and all(w in _bip39_words() for w in words):
        return f"this is a BIP39 mnemonic ({len(words)} words)"
    # Monero seeds: 25 words (24 + checksum word), 13 for MyMonero; legacy Electrum-style lists alike.
    if len(words) >= 12 and all(w in _monero_words() for w in words):
        return f"this is a Monero mnemonic seed ({len(words)} words)"
    return None


@cache
def _monero_words() -> frozenset[str]:
    """Every word of every Monero seed wordlist the `monero` package ships, NFKD-normalised."""
    from monero.wordlists import get_wordlist, list_wordlists

    return frozenset(
        unicodedata.normalize("NFKD", w).lower() for name in list_wordlists() for w in get_wordlist(name).word_list
    )


@cache
def _bip39_words() -> frozenset[str]:
    """Every word of every BIP39 wordlist bip_utils ships, NFKD-normalised (some have accents)."""
    from bip_utils import Bip39Languages
    from bip_utils.bip.bip39.bip39_mnemonic_utils import Bip39WordsListGetter

    words: set[str] = set()
    for language in Bip39Languages:
        wordlist = Bip39WordsListGetter().GetByLanguage(language)
        for i in range(wordlist.Length()):
            words.add(unicodedata.normalize("NFKD", wordlist.GetWordAtIdx(i)))
    return frozenset(words)
