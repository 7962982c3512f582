"""Command line: thin wrappers that parse, call and print.

`run`, `check-config`, `migrate` and `store copy` read the whole configuration. The commands that talk to the
running daemon's API (`status`, `invoice …`, `webhooks …`) read only its `[api]` table, so that they work on the
host even when the service's other secrets (webhook secret, RPC passwords) are files only the service can read;
`--token-file` (or WATCHERD_TOKEN_FILE) names the host's copy of the API token when the config's token_file is a
systemd credential under /run/credentials.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from watcherd import cli_view as view
from watcherd.config import ApiConfig, Config, load
from watcherd.config.reader import Context, Table
from watcherd.config.tables import parse_api
from watcherd.exceptions import STORE_ERRORS, ConfigError

DEFAULT_CONFIG = "/etc/watcherd/watcherd.toml"
TOKEN_KEYS = ("api.token", "api.token_file")

_Command = TypeVar("_Command", bound=Callable[..., Any])


@dataclass(frozen=True)
class Options:
    """What the group's options say; the same options given after a command replace them for that command."""

    config_path: str
    token_file: str | None = None


def _fail(problems: Sequence[tuple[str, str, str]]) -> NoReturn:
    for file, key, message in problems:
        click.echo(f"{file}: {key}: {message}", err=True)
    sys.exit(2)


def _load(path: str) -> Config:
    try:
        return load(path)
    except ConfigError as exc:
        _fail(exc.problems)


def _replace(field: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def callback(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
        if value is not None:
            # this command's context only: pass_obj below reads it, the parent keeps its own
            ctx.obj = replace(ctx.obj, **{field: value})
    return callback


def config_option(command: _Command) -> _Command:
    """`--config PATH` after the command (`watcherd run --config PATH`), as operators type it.

    The group's own `--config` (before the command, or WATCHERD_CONFIG, or the default) is in the context object
    every command receives; this one, when given, replaces it for the command it follows, so the later, more
    specific one wins.
    """
    return click.option(
        "--config", "config_path", default=None, expose_value=False, callback=_replace("config_path"),
        metavar="PATH", help="Path of the TOML configuration; overrides one given before the command.",
    )(command)


def api_options(command: _Command) -> _Command:
    """`--config` and `--token-file` after a command that talks to the daemon's API."""
    return config_option(click.option(
        "--token-file", default=None, expose_value=False, callback=_replace("token_file"), metavar="PATH",
        help="File holding the API token (instead of the config's [api] token); overrides one given before the "
             "command.",
    )(command))


@click.group()
@click.option("--config", "config_path", default=DEFAULT_CONFIG, show_default=True, envvar="WATCHERD_CONFIG",
              show_envvar=True, metavar="PATH",
              help="Path of the TOML configuration (also accepted after the command).")
@click.option("--token-file", metavar="PATH", envvar="WATCHERD_TOKEN_FILE", show_envvar=True,
              help="File holding the API token, for the commands that talk to the daemon: the host's copy when the "
                   "config's token_file is the service's /run/credentials/… (also accepted after the command).")
@click.version_option(package_name="watcherd")
@click.pass_context
def main(ctx: click.Context, config_path: str, token_file: str | None) -> None:
    """watcherd: watch-only blockchain watcher for invoices."""
    ctx.obj = Options(config_path, token_file)


@main.command()
@config_option
@click.pass_obj
def run(options: Options) -> None:
    """Run the daemon in the foreground."""
    from watcherd import logs
    from watcherd.daemon import Daemon

    config = _load(options.config_path)
    logs.setup(config.log.level, config.log.format)
    for file, key, message in config.warnings:
        logging.getLogger("watcherd.config").warning("%s: %s: %s", file, key, message)
    asyncio.run(Daemon(config).run())


@main.command("check-config")
@config_option
@click.pass_obj
def check_config(options: Options) -> None:
    """Validate the configuration; exit non-zero naming the file and key of every error."""
    config = _load(options.config_path)
    for file, key, message in config.warnings:
        click.echo(f"{file}: {key}: warning: {message}", err=True)
    click.echo(f"{options.config_path}: OK ({len(config.chains)} chain(s): {', '.join(config.chains) or 'none'})")


@main.command()
@config_option
@click.pass_obj
def migrate(options: Options) -> None:
    """Bring the store's schema up to date (`run` does it too) and print its version."""
    from watcherd.store import Store

    config = _load(options.config_path)

    async def migrated() -> tuple[int, int]:
        store = await Store.open(config.store.location, migrate=False, **config.store.postgres_options())
        try:
            return await store.migrate()
        finally:
            await store.close()

    try:
        before, after = asyncio.run(migrated())
    except STORE_ERRORS as exc:  # unreachable, refused, locked by a running instance
        raise click.ClickException(str(exc)) from None
    done = f"migrated from version {before}" if before != after else "already up to date"
    click.echo(f"store {config.store.shown}: schema version {after} ({done})")


@main.group("store")
def store_group() -> None:
    """Moving the store between backends."""


@store_group.command("copy")
@click.option("--from", "source", required=True, metavar="PATH",
              type=click.Path(exists=True, dir_okay=False, readable=True), help="The SQLite store of a stopped "
              "instance")
@click.option("--to", "target", required=True, metavar="URL", help="An empty PostgreSQL database: "
              "postgresql://user@host:5432/database (the schema is applied first)")
@click.option("--password-file", type=click.Path(exists=True, dir_okay=False), help="Holds the database password")
@click.option("--ssl", type=click.Choice(["disable", "prefer", "require", "verify-full"]), default="prefer",
              show_default=True)
@click.option("--ssl-root-cert", type=click.Path(exists=True, dir_okay=False))
def store_copy(source: str, target: str, password_file: str | None, ssl: str, ssl_root_cert: str | None) -> None:
    """Copy a stopped instance's SQLite store into an empty PostgreSQL database; verified by per-table counts."""
    from pathlib import Path

    from watcherd.store import Store
    from watcherd.store.copy import copy_store
    from watcherd.store.db import is_postgres_url
    from watcherd.store.postgres import redact

    if not is_postgres_url(target):
        raise click.BadParameter("must be a postgresql:// URL", param_hint="--to")
    password = None
    if password_file is not None:
        password = Path(password_file).read_text(encoding="utf-8").removesuffix("\n")

    async def copied() -> dict[str, int]:
        sqlite = await Store.open(source)
        try:
            postgres = await Store.open(target, password=password, ssl=ssl, ssl_root_cert=ssl_root_cert)
            try:
                # the source's write lock, held throughout: nothing changes it while it is read
                async with sqlite.transaction():
                    return await copy_store(sqlite, postgres)
            finally:
                await postgres.close()
        finally:
            await sqlite.close()

    try:
        counts = asyncio.run(copied())
    except STORE_ERRORS as exc:  # unreachable, refused, locked by a running instance
        raise click.ClickException(str(exc)) from None
    click.echo(f"copied {source} into {redact(target)}:")
    for table, rows in counts.items():
        click.echo(f"  {table:<16} {rows:>9} row(s), counted on both sides")


# ---- the running daemon's API ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DaemonApi:
    """The running daemon's API as the config's [api] table names it; `tables`: the config's other tables, which
    are never read, only seen to exist."""

    api: ApiConfig
    tables: frozenset[str]

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        request = urllib.request.Request(
            f"http://{self.api.listen}{path}", method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {self.api.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            with exc:
                detail = _json_or_empty(exc.read()).get("error", {})
            field = f" ({detail['field']})" if detail.get("field") else ""
            raise click.ClickException(f"{exc.code}: {detail.get('message', exc.reason)}{field}") from None
        except urllib.error.URLError as exc:
            raise click.ClickException(f"cannot reach the daemon's API at {self.api.listen}: {exc.reason}") from None

    def readiness(self) -> dict[str, Any]:
        """/readyz: its report, a 503 one included (it says why it is not ready); whole with the token, else
        only whether the daemon is ready."""
        headers = {"Authorization": f"Bearer {self.api.token}"} if self.api.token else {}
        request = urllib.request.Request(f"http://{self.api.listen}/readyz", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return _json_or_empty(response.read())
        except urllib.error.HTTPError as exc:
            with exc:
                return _json_or_empty(exc.read())
        except urllib.error.URLError as exc:
            raise click.ClickException(f"cannot reach the daemon's API at {self.api.listen}: {exc.reason}") from None


def _json_or_empty(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:  # a proxy's HTML error page, say
        return {}
    return value if isinstance(value, dict) else {}


def _daemon_api(options: Options, *, token: bool = True) -> DaemonApi:
    """Read the config's [api] table only (`token`: the token too, else only where the API listens).

    With --token-file the token comes from that file instead of the config's token / token_file."""
    path = Path(options.config_path).absolute()
    try:
        with path.open("rb") as f:
            document = tomllib.load(f)
    except OSError as e:
        _fail([(str(path), "(file)", f"cannot read: {e.strerror}")])
    except UnicodeDecodeError:
        _fail([(str(path), "(file)", "is not UTF-8 text")])
    except tomllib.TOMLDecodeError as e:
        _fail([(str(path), "(syntax)", f"invalid TOML: {e}")])
    ctx = Context(path)
    table = dict(Table(ctx, "", document).table("api").data)
    if options.token_file is not None:
        table.pop("token", None)
        table["token_file"] = str(Path(options.token_file).absolute())
    api = parse_api(Table(ctx, "api", table))
    problems = [p for p in ctx.problems if token or p[1] not in TOKEN_KEYS]
    if problems:
        for file, key, message in problems:
            where = "--token-file" if options.token_file is not None and key in TOKEN_KEYS else f"{file}: {key}"
            click.echo(f"{where}: {message}", err=True)
        if options.token_file is None and any(key == "api.token_file" and message.startswith("cannot read")
                                              for _, key, message in problems):
            click.echo("(where only the service can read that file, give the host's copy of the token: "
                       "--token-file /etc/watcherd/api-token, or WATCHERD_TOKEN_FILE)", err=True)
        sys.exit(2)
    return DaemonApi(api, frozenset(document))


def _part(text: str) -> str:
    """One path segment: an id with a `/` or `?` in it must not reach another route."""
    return urllib.parse.quote(text, safe="")


def _show(invoice: dict[str, Any], as_json: bool, pay_with: str | None = None) -> None:
    if as_json:
        click.echo(json.dumps(invoice, indent=2))
    else:
        view.invoice(invoice, pay_with)


# ---- commands that talk to the daemon -------------------------------------------------------------------------


@main.command()
@api_options
@click.option("--wait", type=click.FloatRange(min=0), default=0, metavar="SECONDS",
              help="Wait up to SECONDS for the daemon to answer and be ready.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def status(options: Options, wait: float, as_json: bool) -> None:
    """What the running daemon follows, how far, and which instance holds each lease; exit 1 when not ready.

    Needs only the config's [api] table; without a readable token it tells only whether the daemon is ready."""
    daemon = _daemon_api(options, token=False)
    deadline = time.monotonic() + wait
    while True:
        try:
            report = daemon.readiness()
        except click.ClickException:  # not listening (yet)
            if time.monotonic() >= deadline:
                raise
            report = {}
        if report.get("ready") or time.monotonic() >= deadline:
            break
        time.sleep(0.25)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        view.status(report)
    if not report.get("ready"):
        sys.exit(1)


@main.group()
@api_options
def invoice() -> None:
    """Create and inspect invoices (through the running daemon)."""


def _rates(values: tuple[str, ...]) -> dict[str, str]:
    rates = {}
    for value in values:
        asset, _, price = value.partition("=")
        if not asset or not price:
            raise click.BadParameter(f"{value!r} is not COIN=PRICE, e.g. BTC=50000", param_hint="--rate")
        rates[asset.strip().upper()] = price.strip()
    return rates


@invoice.command("create")
@api_options
@click.option("--chain", help="Priced in this chain's coin, payable only in it (or give --currency)")
@click.option("--currency", help="Priced in this currency (USD, EUR ...), payable in the --method coins")
@click.option("--method", "methods", multiple=True, help="With --currency: a payment method (btc, eth:USDC ...); "
              "repeat it; default: every configured one")
@click.option("--rate", "rates", multiple=True, metavar="COIN=PRICE", help="With --currency: the price of one "
              "coin in it (BTC=50000), locked for this invoice instead of [rates]; repeat it")
@click.option("--amount", required=True, help="Decimal amount, e.g. 0.015 (or 49.00 with --currency)")
@click.option("--asset", help="A token configured on the chain (e.g. USDC); default: the chain's own coin")
@click.option("--order-id")
@click.option("--expires-in", type=int, help="Seconds (default: the chain's invoice_expiry_seconds)")
@click.option("--quiet", "-q", is_flag=True, help="Print only the new invoice's id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def invoice_create(options: Options, chain: str | None, currency: str | None, methods: tuple[str, ...],
                   rates: tuple[str, ...], amount: str, asset: str | None, order_id: str | None,
                   expires_in: int | None, quiet: bool, as_json: bool) -> None:
    """Create an invoice: priced in a chain's coin (--chain) or in a currency (--currency)."""
    if (chain is None) == (currency is None):
        raise click.UsageError("give --chain (priced in its coin) or --currency (priced in a currency), not both")
    if currency is None and (methods or rates):
        raise click.UsageError("--method and --rate go with --currency; --chain is payable in its coin only")
    if currency is not None and asset:
        raise click.UsageError("--asset goes with --chain; with --currency name methods (--method eth:USDC)")
    body: dict[str, Any] = {"amount": amount}
    if chain is not None:
        body["chain"] = chain
    else:
        body["currency"] = currency
        if methods:
            body["payment_methods"] = list(methods)
        if rates:
            body["rates"] = _rates(rates)
    if asset:
        body["asset"] = asset
    if order_id:
        body["order_id"] = order_id
    if expires_in is not None:
        body["expires_in"] = expires_in
    created = _daemon_api(options).call("POST", "/v1/invoices", body)
    if quiet:
        click.echo(created["id"])
    else:
        _show(created, as_json)


@invoice.command("pick")
@api_options
@click.argument("invoice_id")
@click.argument("method")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def invoice_pick(options: Options, invoice_id: str, method: str, as_json: bool) -> None:
    """Pick a payment method of a priced invoice, as the customer does on its page: it gets its address."""
    _show(_daemon_api(options).call("POST", f"/v1/invoices/{_part(invoice_id)}/payment-methods/{_part(method)}"),
          as_json, method)


@invoice.command("show")
@api_options
@click.argument("invoice_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def invoice_show(options: Options, invoice_id: str, as_json: bool) -> None:
    """One invoice: its amounts, expiry, page, each method's amount, due and address, and its payments."""
    _show(_daemon_api(options).call("GET", f"/v1/invoices/{_part(invoice_id)}"), as_json)


@invoice.command("list")
@api_options
@click.option("--status")
@click.option("--chain")
@click.option("--order-id")
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--before", metavar="INVOICE_ID", help="The page after the one that ended at this invoice")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def invoice_list(options: Options, status: str | None, chain: str | None, order_id: str | None, limit: int,
                 before: str | None, as_json: bool) -> None:
    """The newest invoices first."""
    query = urllib.parse.urlencode({k: v for k, v in {"status": status, "chain": chain, "order_id": order_id,
                                                      "limit": limit, "before": before}.items() if v is not None})
    answer = _daemon_api(options).call("GET", f"/v1/invoices?{query}")
    if as_json:
        click.echo(json.dumps(answer["invoices"], indent=2))
        return
    view.invoices(answer["invoices"])
    if answer.get("next"):
        click.echo(f"(more: --before {answer['next']})")


@invoice.command("cancel")
@api_options
@click.argument("invoice_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def invoice_cancel(options: Options, invoice_id: str, as_json: bool) -> None:
    """Cancel an invoice that holds no money being processed."""
    _show(_daemon_api(options).call("POST", f"/v1/invoices/{_part(invoice_id)}/cancel"), as_json)


@main.group()
@api_options
def webhooks() -> None:
    """Inspect and redeliver webhook notifications."""


@webhooks.command("list")
@api_options
@click.option("--state", type=click.Choice(["pending", "delivered", "failed"]))
@click.option("--invoice", "invoice_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def webhooks_list(options: Options, state: str | None, invoice_id: str | None, as_json: bool) -> None:
    """The newest 100 deliveries, one row per event and transport (webhook, MQTT)."""
    query = urllib.parse.urlencode({k: v for k, v in {"state": state, "invoice_id": invoice_id}.items() if v})
    rows = _daemon_api(options).call("GET", f"/v1/webhooks?{query}")["deliveries"]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    view.deliveries(rows)


@webhooks.command("redeliver")
@api_options
@click.argument("event_id")
@click.pass_obj
def webhooks_redeliver(options: Options, event_id: str) -> None:
    """Send an event again, on every transport, now (also one given up on, or older than max_retry_hours)."""
    daemon = _daemon_api(options)
    transports = [name for name in ("webhook", "mqtt") if name in daemon.tables]
    if not transports:
        raise click.ClickException(f"{Path(options.config_path).absolute()} has no [webhook] (nor [mqtt]) table: "
                                   f"there is nowhere to redeliver {event_id} to")
    daemon.call("POST", f"/v1/webhooks/{_part(event_id)}/redeliver")
    click.echo(f"{event_id}: queued for redelivery ({' and '.join(transports)})")
