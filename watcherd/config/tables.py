"""The core tables: [store], [api], [metrics], [mqtt], [webhook] and [log], each a frozen dataclass."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

from watcherd.config.reader import Table, host_port, is_http_url


@dataclass(frozen=True)
class StoreConfig:
    path: Path
    retention_days: int = 90  # events (and their deliveries) of settled invoices older than this are pruned; 0: never


@dataclass(frozen=True)
class ApiConfig:
    host: str
    port: int
    token: str = field(repr=False)
    public_url: str = ""  # where customers reach the payment pages (/i/<id>); default http://<listen>

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


def parse_store(t: Table) -> StoreConfig:
    store = StoreConfig(path=t.path("path"),
                        retention_days=t.integer("retention_days", 90, lambda x: x >= 0, "an integer ≥ 0 (0: keep)"))
    t.finish()
    return store


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
    t.finish()
    api = ApiConfig(host=host, port=port, token=token)
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
    webhook = WebhookConfig(
        url=url,
        secret=t.secret("secret", min_length=16) or "",
        timeout_seconds=t.number("timeout_seconds", 10, lambda x: x > 0, "a number > 0"),
        max_retry_hours=t.number("max_retry_hours", 72, lambda x: x > 0, "a number > 0"),
    )
    t.finish()
    return webhook


def parse_log(t: Table) -> LogConfig:
    log = LogConfig(
        level=t.choice("level", ("debug", "info", "warning", "error"), default="info"),
        format=t.choice("format", ("plain", "json"), default="plain"),
    )
    t.finish()
    return log
