"""Command line: thin wrappers that parse, call and print. Invoice commands talk to the running daemon's API."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any, TypeVar

import click

from watcherd.config import Config, load
from watcherd.exceptions import STORE_ERRORS, ConfigError

DEFAULT_CONFIG = "/etc/watcherd/watcherd.toml"

_Command = TypeVar("_Command", bound=Callable[..., Any])


def _load(path: str) -> Config:
    try:
        return load(path)
    except ConfigError as exc:
        for file, key, message in exc.problems:
            click.echo(f"{file}: {key}: {message}", err=True)
        sys.exit(2)


def _override_config(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.obj = value  # this command's context only: pass_obj below reads it, the parent keeps its own


def config_option(command: _Command) -> _Command:
    """`--config PATH` after the command (`watcherd run --config PATH`), as operators type it.

    The group's own `--config` (before the command, or WATCHERD_CONFIG, or the default) is the context object
    every command receives; this one, when given, replaces it for the command it follows, so the later, more
    specific one wins.
    """
    return click.option(
        "--config", "config_path", default=None, expose_value=False, callback=_override_config,
        metavar="PATH", help="Path of the TOML configuration; overrides one given before the command.",
    )(command)


@click.group()
@click.option("--config", "config_path", default=DEFAULT_CONFIG, show_default=True, envvar="WATCHERD_CONFIG",
              show_envvar=True, metavar="PATH",
              help="Path of the TOML configuration (also accepted after the command).")
@click.version_option(package_name="watcherd")
@click.pass_context
def main(ctx: click.Context, config_path: str) -> None:
    """watcherd: watch-only blockchain watcher for invoices."""
    ctx.obj = config_path


@main.command()
@config_option
@click.pass_obj
def run(config_path: str) -> None:
    """Run the daemon in the foreground."""
    from watcherd import logs
    from watcherd.daemon import Daemon

    config = _load(config_path)
    logs.setup(config.log.level, config.log.format)
    for file, key, message in config.warnings:
        logging.getLogger("watcherd.config").warning("%s: %s: %s", file, key, message)
    asyncio.run(Daemon(config).run())


@main.command("check-config")
@config_option
@click.pass_obj
def check_config(config_path: str) -> None:
    """Validate the configuration; exit non-zero naming the file and key of every error."""
    config = _load(config_path)
    for file, key, message in config.warnings:
        click.echo(f"{file}: {key}: warning: {message}", err=True)
    click.echo(f"{config_path}: OK ({len(config.chains)} chain(s): {', '.join(config.chains) or 'none'})")


@main.command()
@config_option
@click.pass_obj
def migrate(config_path: str) -> None:
    """Bring the store's schema up to date (`run` does it too) and print its version."""
    from watcherd.store import Store

    config = _load(config_path)

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


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def status(config_path: str, as_json: bool) -> None:
    """What the running daemon follows, how far, and which instance holds each lease; exit 1 when not ready."""
    config = _load(config_path)
    try:
        # with the token: without it /readyz answers only whether the daemon is ready
        request = urllib.request.Request(f"http://{config.api.listen}/readyz",
                                         headers={"Authorization": f"Bearer {config.api.token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            report = json.loads(response.read())
    except urllib.error.HTTPError as exc:  # 503: not ready, and the same report says why
        with exc:
            report = json.loads(exc.read() or b"{}")
    except urllib.error.URLError as exc:
        raise click.ClickException(f"cannot reach the daemon's API at {config.api.listen}: {exc.reason}") from None
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(f"instance {report.get('instance')}: {'ready' if report.get('ready') else 'NOT READY'}, "
                   f"store {'writable' if report.get('store_writable') else 'NOT WRITABLE'}")
        for name, chain in report.get("chains", {}).items():
            if "followed_by" in chain:
                where = f"followed by instance {chain['followed_by']}"
            else:
                where = (f"height {chain['processed_height']}, node {chain['node_tip']}, lag {chain['lag']}"
                         if chain.get("connected") else "node unreachable")
            click.echo(f"  {name}: {where}{'' if chain.get('ready') else ' (not ready)'}")
        for name, lease in report.get("leases", {}).items():
            state = "held here" if lease["mine"] else f"held by {lease['holder']}"
            expiry = f"renewed, {lease['expires_in']} s left" if lease["expires_in"] > 0 else "expired"
            click.echo(f"  lease {name}: {state} (token {lease['token']}, {expiry})")
    if not report.get("ready"):
        sys.exit(1)


def _api(config_path: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    config = _load(config_path)
    request = urllib.request.Request(
        f"http://{config.api.listen}{path}", method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {config.api.token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = json.loads(exc.read() or b"{}").get("error", {})
        field = f" ({detail['field']})" if detail.get("field") else ""
        raise click.ClickException(f"{exc.code}: {detail.get('message', exc.reason)}{field}") from None
    except urllib.error.URLError as exc:
        raise click.ClickException(f"cannot reach the daemon's API at {config.api.listen}: {exc.reason}") from None


def _print_invoice(invoice: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(invoice, indent=2))
        return
    exception = f" ({invoice['exception']})" if invoice["exception"] else ""
    click.echo(f"{invoice['id']}  {invoice['status']}{exception}  {invoice['amount']} {invoice['currency']}  "
               f"received {invoice['amount_received']}  {invoice['address'] or invoice['checkout_url']}")
    for p in invoice["payments"]:
        click.echo(f"    {p['txid']}:{p['vout']}  {p['amount']} {p['asset']} = {p['value']} {invoice['currency']}  "
                   f"{p['status']}  {p['confirmations']} conf")


@main.group()
@config_option
def invoice() -> None:
    """Create and inspect invoices (through the running daemon)."""


@invoice.command("create")
@config_option
@click.option("--chain", help="Priced in this chain's coin, payable only in it (or give --currency)")
@click.option("--currency", help="Priced in this currency (USD, EUR ...), payable in the --method coins")
@click.option("--method", "methods", multiple=True, help="With --currency: a payment method (btc, eth:USDC ...); "
              "repeat it; default: every configured one")
@click.option("--amount", required=True, help="Decimal amount, e.g. 0.015 (or 49.00 with --currency)")
@click.option("--asset", help="A token configured on the chain (e.g. USDC); default: the chain's own coin")
@click.option("--order-id")
@click.option("--expires-in", type=int, help="Seconds (default: the chain's invoice_expiry_seconds)")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def invoice_create(config_path: str, chain: str | None, currency: str | None, methods: tuple[str, ...], amount: str,
                   asset: str | None, order_id: str | None, expires_in: int | None, as_json: bool) -> None:
    if (chain is None) == (currency is None):
        raise click.UsageError("give --chain (priced in its coin) or --currency (priced in a currency), not both")
    if currency is not None and asset:
        raise click.UsageError("--asset goes with --chain; with --currency name methods (--method eth:USDC)")
    body: dict[str, Any] = {"amount": amount}
    if chain is not None:
        body["chain"] = chain
    else:
        body["currency"] = currency
        if methods:
            body["payment_methods"] = list(methods)
    if asset:
        body["asset"] = asset
    if order_id:
        body["order_id"] = order_id
    if expires_in is not None:
        body["expires_in"] = expires_in
    created = _api(config_path, "POST", "/v1/invoices", body)
    _print_invoice(created, as_json)
    if not as_json:
        click.echo(f"    pay: {created['payment_uri'] or created['checkout_url']}")


@invoice.command("pick")
@config_option
@click.argument("invoice_id")
@click.argument("method")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def invoice_pick(config_path: str, invoice_id: str, method: str, as_json: bool) -> None:
    """Pick a payment method of a priced invoice: it gets its address."""
    shown = _api(config_path, "POST", f"/v1/invoices/{invoice_id}/payment-methods/{method}")
    _print_invoice(shown, as_json)
    if not as_json:
        picked = next(m for m in shown["payment_methods"] if m["method"] == method)
        click.echo(f"    pay {picked['due']} {picked['asset']}: {picked['payment_uri']}")


@invoice.command("show")
@config_option
@click.argument("invoice_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def invoice_show(config_path: str, invoice_id: str, as_json: bool) -> None:
    _print_invoice(_api(config_path, "GET", f"/v1/invoices/{invoice_id}"), as_json)


@invoice.command("list")
@config_option
@click.option("--status")
@click.option("--chain")
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def invoice_list(config_path: str, status: str | None, chain: str | None, limit: int, as_json: bool) -> None:
    query = urllib.parse.urlencode({k: v for k, v in {"status": status, "chain": chain, "limit": limit}.items()
                                    if v is not None})
    answer = _api(config_path, "GET", f"/v1/invoices?{query}")
    if as_json:
        click.echo(json.dumps(answer["invoices"], indent=2))
    for inv in [] if as_json else answer["invoices"]:
        _print_invoice(inv, False)


@invoice.command("cancel")
@config_option
@click.argument("invoice_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def invoice_cancel(config_path: str, invoice_id: str, as_json: bool) -> None:
    _print_invoice(_api(config_path, "POST", f"/v1/invoices/{invoice_id}/cancel"), as_json)


@main.group()
@config_option
def webhooks() -> None:
    """Inspect and redeliver webhook notifications."""


@webhooks.command("list")
@config_option
@click.option("--state", type=click.Choice(["pending", "delivered", "failed"]))
@click.option("--invoice", "invoice_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def webhooks_list(config_path: str, state: str | None, invoice_id: str | None, as_json: bool) -> None:
    query = urllib.parse.urlencode({k: v for k, v in {"state": state, "invoice_id": invoice_id}.items() if v})
    rows = _api(config_path, "GET", f"/v1/webhooks?{query}")["deliveries"]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        state_text = "delivered" if r["delivered_at"] else "FAILED" if r["failed_at"] else "pending"
        error = f"  last error: {r['last_error']}" if r["last_error"] else ""
        click.echo(f"{r['id']}  {r['type']:<20} {r['invoice_id']}  {r['transport']:<7} {state_text} after "
                   f"{r['attempts']} attempt(s){error}")


@webhooks.command("redeliver")
@config_option
@click.argument("event_id")
@click.pass_obj
def webhooks_redeliver(config_path: str, event_id: str) -> None:
    _api(config_path, "POST", f"/v1/webhooks/{event_id}/redeliver")
    click.echo(f"{event_id}: queued for redelivery")
