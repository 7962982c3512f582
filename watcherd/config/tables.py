"""The core tables: [store], [api], [metrics], [mqtt], [webhook], [log], [greenfield] and [rates], each a frozen
dataclass ([rates]' own, RatesConfig, lives in watcherd/rates/config.py so that the rates package imports no config
code)."""

from __future__ import annotations

import json
import math
import re
import socket
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from decimal import Decimal
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from watcherd.config.reader import Table, host_port, is_http_url, is_loopback
from watcherd.core.currencies import MINOR_UNITS
from watcherd.live import MAX_SECONDS
from watcherd.rates.config import DEFAULT_CURRENCIES, DEFAULT_SOURCES, SOURCE_URLS, RatesConfig

STORE_SSL_MODES = ("disable", "prefer", "require", "verify-full")


@dataclass(frozen=True)
class StoreConfig:
    path: Path | None = None  # the SQLite file; or
    url: str | None = None  # postgresql://user@host:port/database (never with the password in it)
    retention_days: int = 90  # events (and their deliveries) of settled invoices older than this are pruned; 0: never
    max_batch: int = 64  # concurrent transactions committed together at most (1: one commit each)
    password: str | None = field(default=None, repr=False)  # PostgreSQL's, from password_file
    ssl: str = "prefer"  # one of STORE_SSL_MODES
    ssl_root_cert: Path | None = None
    pool_size: int = 10  # PostgreSQL connections for reads (plus one for writes)
    timeout_seconds: float = 10.0  # a PostgreSQL connect or statement taking longer fails
    instance: str = "watcherd"  # this instance's name in the leases (default: the host name); unique per store
    lease_seconds: float = 6.0  # a lease not renewed for this long is taken over by another instance

    @property
    def location(self) -> str | Path:
        """What `Store.open` takes: the file or the URL."""
        return self.url if self.url is not None else self.path or Path()

    @property
    def shown(self) -> str:
        """For logs and messages (the URL never holds a password: refused when read)."""
        return str(self.location)

    def postgres_options(self) -> dict[str, Any]:
        """The keyword options of `Store.open` for a PostgreSQL URL (none for SQLite)."""
        if self.url is None:
            return {}
        return {"password": self.password, "ssl": self.ssl,
                "ssl_root_cert": None if self.ssl_root_cert is None else str(self.ssl_root_cert),
                "pool_size": self.pool_size, "timeout_seconds": self.timeout_seconds}


@dataclass(frozen=True)
class ApiConfig:
    host: str
    port: int
    token: str = field(repr=False)
    public_url: str = ""  # where customers reach the payment pages (/i/<id>); default http://<listen>
    embed_origins: tuple[str, ...] = ("*",)  # who may frame the payment page in modal mode (?view=modal)
    live_stream_seconds: float = MAX_SECONDS  # a payment page's live stream then ends; the browser reconnects

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


# Greenfield's speedPolicy names and the confirmations each asks for (never fewer than the chain's own).
SPEED_POLICIES = {"HighSpeed": 0, "MediumSpeed": 1, "LowMediumSpeed": 2, "LowSpeed": 6}
_STORE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_INSTANCE = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclass(frozen=True)
class GreenfieldConfig:
    """[greenfield]: the BTCPay Greenfield and BitPay-compatible APIs for existing billing plugins."""

    store_id: str  # the one store a plugin is configured with
    store_name: str
    api_key: str = field(repr=False)
    default_currency: str = "USD"
    speed_policy: str = "MediumSpeed"  # a key of SPEED_POLICIES
    scope: str = "compat"  # the invoices the key reaches: "compat" (those the compatible APIs created) or "all"
    # the internal networks API-registered hooks (webhooks, notificationURL) may reach; none by default
    hook_allow_networks: tuple[IPv4Network | IPv6Network, ...] = ()


@dataclass(frozen=True)
class LogConfig:
    level: str  # debug | info | warning | error
    format: str  # plain | json


def parse_store(t: Table) -> StoreConfig:
    instance = t.text("instance", default=socket.gethostname() or "watcherd")
    if not _INSTANCE.fullmatch(instance):
        t.problem("instance", "must be 1 to 64 letters, digits, '.', '-' or '_'")
    path = t.optional_path("path")
    url = t.optional_text("url")
    if path is not None and url is not None:
        t.problem("url", "set path (SQLite) or url (PostgreSQL), not both")
    elif path is None and url is None and not t.present("path") and not t.present("url"):
        t.problem("path", 'is required (or url = "postgresql://user@host:5432/database" for PostgreSQL)')
    if url is not None:
        url = _store_url(t, url)
    postgres_only = ("password", "password_file", "ssl", "ssl_root_cert", "pool_size", "timeout_seconds")
    if url is None and path is not None:
        for key in postgres_only:
            if t.present(key):
                t.problem(key, "is for PostgreSQL (url), not a SQLite path")
    password = t.secret("password", required=False)
    ssl = t.choice("ssl", STORE_SSL_MODES, default="prefer")
    if url is not None and ssl == "prefer" and not is_loopback(urlsplit(url).hostname or ""):
        t.warn("ssl", f'is "prefer" for {urlsplit(url).hostname}: TLS only if the server offers it, and it checks '
                      'neither the certificate nor the host name, so anyone on the path can read or change the '
                      'traffic; set ssl = "verify-full" (with ssl_root_cert for a private CA)')
    root_cert = t.optional_path("ssl_root_cert")
    if root_cert is not None:
        if ssl not in ("require", "verify-full"):
            t.problem("ssl_root_cert", 'is used only with ssl = "require" or "verify-full"')
        elif not root_cert.is_file():
            t.problem("ssl_root_cert", f"{root_cert} is not a readable file")
    store = StoreConfig(path=path, url=url, password=password, ssl=ssl, ssl_root_cert=root_cert,
                        pool_size=t.integer("pool_size", 10, lambda x: 1 <= x <= 1000, "an integer from 1 to 1000"),
                        timeout_seconds=t.number("timeout_seconds", 10.0, lambda x: 0 < x <= 600,
                                                 "a number of seconds above 0, at most 600"),
                        retention_days=t.integer("retention_days", 90, lambda x: x >= 0, "an integer ≥ 0 (0: keep)"),
                        max_batch=t.integer("max_batch", 64, lambda x: 1 <= x <= 10_000, "an integer from 1 to 10000"),
                        instance=instance,
                        lease_seconds=t.number("lease_seconds", 6.0, lambda x: 1 <= x <= 600,
                                               "a number of seconds from 1 to 600"))
    t.finish()
    return store


def _store_url(t: Table, url: str) -> str | None:
    """A postgresql:// URL naming a host and a database; the password goes in password_file, never here (it
    would show wherever the URL is shown), and options in their own keys."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises on a port that is not a number
    except ValueError:
        t.problem("url", "is not a valid URL")
        return None
    if parts.scheme not in ("postgresql", "postgres"):
        t.problem("url", 'must be a PostgreSQL URL, e.g. "postgresql://watcherd@127.0.0.1:5432/watcherd"')
    elif parts.password is not None:
        t.problem("url", "must not hold the password: put it in password_file")
    elif not parts.hostname or not parts.username or parts.path.strip("/") == "":
        t.problem("url", "must name a user, a host and a database: postgresql://user@host:5432/database")
    elif parts.query or parts.fragment:
        t.problem("url", "must not carry options: use the ssl, ssl_root_cert, pool_size and timeout_seconds keys")
    else:
        return url
    return None


def parse_api(t: Table) -> ApiConfig:
    listen = t.text("listen", default="127.0.0.1:8420")
    host, port = host_port(listen) or ("", 0)
    if not host:
        t.problem("listen", "must be host:port, e.g. 127.0.0.1:8420 or [::1]:8420")
    token = t.secret("token", min_length=16) or ""
    if any(c.isspace() or not c.isprintable() for c in token):
        t.problem(t.secret_key("token"), "must not contain whitespace or control characters")
    public_url = t.text("public_url", default="")
    if public_url and not is_http_url(public_url):
        t.problem("public_url", "must be an http(s) URL, e.g. https://pay.example.com")
    embed = t.raw("embed_origins")
    origins: tuple[str, ...] = ("*",)
    if embed is not None:
        if not isinstance(embed, list) or not all(
                isinstance(o, str) and (o == "*" or (is_http_url(o) and urlsplit(o).path in ("", "/")
                                                     and not any(c in o for c in ";,'?#")))
                for o in embed):
            t.problem("embed_origins", 'must be a list of origins such as ["https://shop.example.com"], or ["*"]')
        else:
            origins = tuple(o.rstrip("/") for o in embed) or ("'none'",)
    live_seconds = t.number("live_stream_seconds", MAX_SECONDS, lambda x: 1 <= x <= 86400, "1 to 86400 seconds")
    t.finish()
    api = ApiConfig(host=host, port=port, token=token, embed_origins=origins, live_stream_seconds=live_seconds)
    return replace(api, public_url=(public_url or f"http://{api.listen}").rstrip("/"))


def parse_metrics(t: Table) -> MetricsConfig:
    listen = t.text("listen", default="127.0.0.1:9420")
    host, port = host_port(listen) or ("", 0)
    if not host:
        t.problem("listen", "must be host:port, e.g. 127.0.0.1:9420")
    t.finish()
    return MetricsConfig(host=host, port=port)


_TOPIC_PREFIX = re.compile(r"[A-Za-z0-9_\-/.]{1,100}")


def parse_mqtt(t: Table) -> MqttConfig:
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


def parse_webhook(t: Table) -> WebhookConfig:
    url = t.text("url")
    if url and not is_http_url(url):
        t.problem("url", "must be an http:// or https:// URL")
    elif url and _is_example_host(urlsplit(url).hostname or ""):
        t.problem("url", "is the example's placeholder (a reserved example host that never answers): set your "
                         "billing system's webhook URL")
    webhook = WebhookConfig(
        url=url,
        secret=t.secret("secret", min_length=16) or "",
        timeout_seconds=t.number("timeout_seconds", 10, lambda x: x > 0, "a number > 0"),
        max_retry_hours=t.number("max_retry_hours", 72, lambda x: x > 0, "a number > 0"),
    )
    t.finish()
    return webhook


def _is_example_host(host: str) -> bool:
    """RFC 2606's names for documentation: example, example.com/.net/.org and their subdomains."""
    host = host.lower().rstrip(".")
    return any(host == name or host.endswith("." + name) for name in ("example", "example.com", "example.net",
                                                                       "example.org"))


def parse_greenfield(t: Table) -> GreenfieldConfig:
    store_id = t.text("store_id")
    if store_id and not _STORE_ID.fullmatch(store_id):
        t.problem("store_id", "must be 1 to 64 letters, digits, '-' or '_' (it appears in URL paths)")
    store_name = t.text("store_name", default="watcherd")
    api_key = t.secret("api_key", min_length=16) or ""
    if any(c.isspace() or not c.isprintable() for c in api_key):
        t.problem(t.secret_key("api_key"), "must not contain whitespace or control characters")
    currency = t.text("default_currency", default="USD")
    if currency not in MINOR_UNITS:
        t.problem("default_currency", f"{currency!r} is not an ISO 4217 currency code watcherd knows")
    speed = t.choice("speed_policy", tuple(SPEED_POLICIES), default="MediumSpeed")
    scope = t.choice("scope", ("compat", "all"), default="compat")
    greenfield = GreenfieldConfig(store_id=store_id, store_name=store_name, api_key=api_key,
                                  default_currency=currency, speed_policy=speed, scope=scope,
                                  hook_allow_networks=_networks(t, "hook_allow_networks"))
    t.finish()
    return greenfield


def _networks(t: Table, name: str) -> tuple[IPv4Network | IPv6Network, ...]:
    """A list of CIDRs; one with host bits set ("10.0.0.1/8") is refused rather than read as its network."""
    value = t.raw(name)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        t.problem(name, 'must be a list of networks in CIDR form, e.g. ["10.0.0.0/8", "fd00::/8"]')
        return ()
    networks = []
    for cidr in value:
        try:
            networks.append(ip_network(cidr, strict=True))
        except ValueError:
            try:
                meant = f": did you mean {str(ip_network(cidr, strict=False))!r}?"
            except ValueError:
                t.problem(name, f"{cidr!r} is not a network in CIDR form such as 10.0.0.0/8 or fd00::/8")
            else:
                t.problem(name, f"{cidr!r} has host bits set{meant}")
    return tuple(networks)


def parse_log(t: Table) -> LogConfig:
    log = LogConfig(
        level=t.choice("level", ("debug", "info", "warning", "error"), default="info"),
        format=t.choice("format", ("plain", "json"), default="plain"),
    )
    t.finish()
    return log


_FIXED_PAIR = re.compile(r"([A-Za-z0-9.]{1,16})_([A-Za-z0-9.]{1,16})")
_DECIMAL_TEXT = re.compile(r"[0-9]+(\.[0-9]+)?|\.[0-9]+")


def _codes(t: Table, name: str, default: tuple[str, ...], known: Collection[str], unknown: str) -> tuple[str, ...]:
    """A list of distinct names out of `known`; `unknown` ends the problem for one that is not."""
    value = t.raw(name)
    if value is None:
        return default
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        t.problem(name, f"must be a list of strings, e.g. {json.dumps(list(default))}")
        return default
    codes: list[str] = []
    for code in value:
        if code not in known:
            t.problem(name, f"{code!r} {unknown}")
        elif code in codes:
            t.problem(name, f"{code!r} is listed twice")
        else:
            codes.append(code)
    return tuple(codes)


def _fixed_rate(value: object) -> Decimal | None:
    if isinstance(value, str) and _DECIMAL_TEXT.fullmatch(value.strip()):
        rate = Decimal(value.strip())
    elif isinstance(value, int) and not isinstance(value, bool):
        rate = Decimal(value)
    elif isinstance(value, float) and math.isfinite(value):
        rate = Decimal(str(value))  # through str: 1.01 in the file is Decimal("1.01"), not the float's expansion
    else:
        return None
    return rate if rate > 0 else None


def parse_rates(t: Table) -> RatesConfig:
    sources = _codes(t, "sources", DEFAULT_SOURCES, SOURCE_URLS,
                     f"is not an exchange rate source; known: {', '.join(sorted(SOURCE_URLS))}")
    currencies = _codes(t, "currencies", DEFAULT_CURRENCIES, MINOR_UNITS,
                        "is not an ISO 4217 currency code watcherd knows (see watcherd/core/currencies.py)")
    refresh = t.number("refresh_seconds", 60, lambda x: 10 <= x <= 3600, "a number of seconds, 10 ≤ x ≤ 3600")
    max_age = t.number("max_age_seconds", 300, lambda x: 0 < x <= 86400, "a number of seconds, 0 < x ≤ 86400")
    if max_age <= refresh:
        t.problem("max_age_seconds", f"must be more than refresh_seconds ({refresh:g}), or every rate goes stale "
                                     "between two refreshes")
    spread = t.number("spread_percent", 0, lambda x: 0 <= x < 100, "a number 0 ≤ x < 100")
    deviation = t.number("max_deviation_percent", 3, lambda x: 0 < x <= 100, "a number 0 < x ≤ 100")
    timeout = t.number("timeout_seconds", 10, lambda x: 0 < x <= 60, "a number of seconds, 0 < x ≤ 60")
    api_key = t.secret("coingecko_api_key", required="coingecko" in sources)
    min_sources = t.optional_integer("min_sources", lambda x: 1 <= x <= max(1, len(sources)),
                                     f"an integer from 1 to the number of sources ({len(sources)})")

    urls: dict[str, str] = {}
    url_table = t.table("urls")
    for name in list(url_table.data):
        url = url_table.text(name)
        if name not in SOURCE_URLS:
            url_table.problem(name, f"is not an exchange rate source; known: {', '.join(sorted(SOURCE_URLS))}")
        elif url and not is_http_url(url):
            url_table.problem(name, "must be an https:// base URL, e.g. " + SOURCE_URLS[name])
        elif url and urlsplit(url).scheme != "https" and not is_loopback(urlsplit(url).hostname or ""):
            url_table.problem(name, "must be https:// (http:// only to a loopback address): a price fetched over "
                                    "plain http can be changed by anyone on the path")
        elif url:
            urls[name] = url.rstrip("/")
    url_table.finish()

    fixed: dict[str, Decimal] = {}
    fixed_table = t.table("fixed")
    for name in list(fixed_table.data):
        value = fixed_table.raw(name)
        match = _FIXED_PAIR.fullmatch(name)
        if match is None or match[1] == match[2]:
            fixed_table.problem(name, "must be ASSET_CURRENCY, two different codes, e.g. USDC_USD")
            continue
        rate = _fixed_rate(value)
        if rate is None:
            fixed_table.problem(name, 'must be a positive decimal, e.g. "1" or "0.9998" (currency per one whole '
                                      f"{match[1]})")
            continue
        fixed[name] = rate
    fixed_table.finish()

    rates = RatesConfig(
        sources=sources, currencies=currencies, refresh_seconds=refresh, max_age_seconds=max_age,
        spread_percent=Decimal(str(spread)), max_deviation_percent=Decimal(str(deviation)),
        timeout_seconds=timeout, urls=urls, fixed=fixed, coingecko_api_key=api_key, min_sources=min_sources,
    )
    t.finish()
    return rates
