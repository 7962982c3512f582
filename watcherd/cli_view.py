"""How the command line shows what the daemon's API answers: aligned tables with a header line, colour only on a
terminal (never with NO_COLOR set), amounts with their unit, times as the API gives them (ISO 8601)."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import click

Cell = str | tuple[str, str | None]  # text, or (text, its colour)
COLOURS = {"paid": "green", "processing": "yellow", "expired": "bright_black", "cancelled": "bright_black",
           "invalid": "red", "confirmed": "green", "pending": "yellow", "replaced": "red", "delivered": "green",
           "failed": "red", "ready": "green", "catching up": "yellow", "node unreachable": "red"}
# numbers: right-aligned under these headers
RIGHT_ALIGNED = frozenset({"AMOUNT", "DUE", "RATE", "CONF", "RECEIVED", "VALUE", "HEIGHT", "NODE TIP", "LAG",
                           "TOKEN", "ATTEMPTS"})


def colour() -> bool:
    """Colour only on a terminal, and never when NO_COLOR is set (https://no-color.org)."""
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def styled(text: str, fg: str | None = None, bold: bool = False) -> str:
    return click.style(text, fg=fg, bold=bold or None) if (fg or bold) and colour() else text


def coloured(text: str) -> Cell:
    """A status word with its colour."""
    return text, COLOURS.get(text.split(" (")[0])


def table(headers: Sequence[str], rows: Sequence[Sequence[Cell]]) -> None:
    """Columns padded to their widest cell (numbers right-aligned), a header line above them."""
    cells = [[(c, None) if isinstance(c, str) else c for c in row] for row in rows]
    widths = [max([len(h), *(len(row[i][0]) for row in cells)]) for i, h in enumerate(headers)]

    def line(row: Sequence[tuple[str, str | None]], bold: bool = False) -> str:
        shown = []
        for i, (header, (text, fg), width) in enumerate(zip(headers, row, widths, strict=True)):
            last = i == len(headers) - 1
            padded = text.rjust(width) if header in RIGHT_ALIGNED else text if last else text.ljust(width)
            shown.append(styled(padded, fg, bold))
        return "  ".join(shown).rstrip()

    click.echo(line([(h, None) for h in headers], bold=True))
    for row in cells:
        click.echo(line(row))


def fields(pairs: Sequence[tuple[str, Cell]]) -> None:
    """`key  value` lines, the values aligned."""
    width = max(len(key) for key, _ in pairs)
    for key, value in pairs:
        text, fg = (value, None) if isinstance(value, str) else value
        click.echo(f"{key:<{width}}  {styled(text, fg)}")


def when(value: str | float | None) -> str:
    """A time as the API gives it (ISO 8601; a unix time from older answers), or "-"."""
    if value is None:
        return "-"
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return value


def from_now(iso: str | None) -> str:
    """"in 14 min" or "3 h ago"; "" for what cannot be read."""
    try:
        seconds = (datetime.fromisoformat(iso or "") - datetime.now(UTC)).total_seconds()
    except (TypeError, ValueError):
        return ""
    span = abs(seconds)
    text = (f"{span:.0f} s" if span < 90 else f"{span / 60:.0f} min" if span < 5400
            else f"{span / 3600:.0f} h" if span < 172_800 else f"{span / 86400:.0f} days")
    return f"in {text}" if seconds > 0 else f"{text} ago"


def _status(record: dict[str, Any]) -> Cell:
    exception = f" ({record['exception']})" if record.get("exception") else ""
    return coloured(record["status"] + exception)


def _offered(method: dict[str, Any]) -> str:
    """"0.00098 BTC"; with the method id where the asset alone does not name it (eth:USDC, a chain named so)."""
    shown = f"{method['amount']} {method['asset']}"
    return shown if method["method"] == method["asset"].lower() else f"{shown} ({method['method']})"


def invoice(shown: dict[str, Any], pay_with: str | None = None) -> None:
    """One invoice: its fields, a row per payment method (amount, due, rate, address once picked), a row per
    payment, and the payment URI of each picked method still owed (`pay_with`: only that method's)."""
    currency = shown["currency"]
    expires = shown["expires_at"]
    if shown["status"] in ("unpaid", "processing"):
        expires += f"  ({from_now(shown['expires_at'])})"
    pairs: list[tuple[str, Cell]] = [
        ("invoice", shown["id"]),
        ("status", _status(shown)),
        ("amount", f"{shown['amount']} {currency}  received {shown['amount_received']}  due {shown['due']}"),
        ("order id", shown["order_id"] or "-"),
        ("created", shown["created_at"]),
        ("expires", expires),
    ]
    pairs += [(key, shown[f"{key}_at"]) for key in ("paid", "cancelled") if shown[f"{key}_at"]]
    pairs.append(("page", shown["checkout_url"]))
    fields(pairs)

    methods = shown["payment_methods"]
    priced = any(m["asset"] != currency for m in methods)  # a coin-priced invoice's one rate is 1: not shown
    click.echo()
    table(["METHOD", "AMOUNT", "DUE", *(["RATE"] if priced else []), "CONF", "ADDRESS"], [
        [m["method"], f"{m['amount']} {m['asset']}", f"{m['due']} {m['asset']}",
         *([f"{m['rate']} {currency}"] if priced else []),
         str(m["confirmations_required"]) if m["confirmations_required"] else "final",
         m.get("address") or ("not picked", "bright_black")]
        for m in methods
    ])
    if shown["payments"]:
        required = {m["method"]: m["confirmations_required"] for m in methods}
        click.echo()
        table(["PAYMENT", "AMOUNT", "VALUE", "CONF", "STATUS", "SEEN", "TXID:VOUT"], [
            [p["method"], f"{p['amount']} {p['asset']}", f"{p['value']} {currency}",
             f"{p['confirmations']}/{required.get(p['method']) or 'final'}", coloured(p["status"]),
             when(p["first_seen_at"]), f"{p['txid']}:{p['vout']}"]
            for p in shown["payments"]
        ])
    owed = [m for m in methods if m.get("payment_uri") and pay_with in (None, m["method"])]
    if owed and shown["status"] in ("unpaid", "expired"):
        click.echo()
        for m in owed:
            click.echo(f"pay {m['due']} {m['asset']}: {m['payment_uri']}")


def invoices(shown: list[dict[str, Any]]) -> None:
    if not shown:
        click.echo("no invoices")
        return
    table(["INVOICE", "STATUS", "AMOUNT", "RECEIVED", "ORDER ID", "EXPIRES", "METHODS"], [
        [i["id"], _status(i), f"{i['amount']} {i['currency']}", i["amount_received"], i["order_id"] or "-",
         i["expires_at"], ", ".join(map(_offered, i["payment_methods"]))]
        for i in shown
    ])


def deliveries(rows: list[dict[str, Any]]) -> None:
    if not rows:
        click.echo("no deliveries")
        return
    table(["EVENT", "TYPE", "INVOICE", "TRANSPORT", "STATE", "ATTEMPTS", "CREATED", "LAST ERROR"], [
        [r["id"], r["type"], r["invoice_id"], r["transport"],
         coloured("delivered" if r["delivered_at"] else "failed" if r["failed_at"] else "pending"),
         str(r["attempts"]), when(r["created_at"]), r["last_error"] or ""]
        for r in rows
    ])


def status(report: dict[str, Any]) -> None:
    """/readyz: the instance, a row per chain, a row per lease, stale rates."""
    ready = styled("ready", "green") if report.get("ready") else styled("NOT READY", "red")
    if set(report) == {"ready"}:  # what /readyz tells without the token
        click.echo(f"{ready} (the API token gives the detail: --token-file or WATCHERD_TOKEN_FILE)")
        return
    store = "writable" if report.get("store_writable") else styled("NOT WRITABLE", "red")
    click.echo(f"instance {report.get('instance')}: {ready}, store {store}")
    chains = report.get("chains", {})
    if chains:
        rows: list[list[Cell]] = []
        for name, chain in chains.items():
            if "followed_by" in chain:
                state: Cell = f"followed by instance {chain['followed_by']}"
            else:
                state = coloured("node unreachable" if not chain.get("connected")
                                 else "ready" if chain.get("ready") else "catching up")
            numbers = [chain.get(key) for key in ("processed_height", "node_tip", "lag")]
            rows.append([name, *("-" if n is None else str(n) for n in numbers), state])
        click.echo()
        table(["CHAIN", "HEIGHT", "NODE TIP", "LAG", "STATE"], rows)
    leases = report.get("leases", {})
    if leases:
        click.echo()
        table(["LEASE", "HELD BY", "TOKEN", "EXPIRES"], [
            [name, "this instance" if lease["mine"] else lease["holder"], str(lease["token"]),
             f"renewed, {lease['expires_in']} s left" if lease["expires_in"] > 0 else ("expired", "red")]
            for name, lease in leases.items()
        ])
    if report.get("rates_stale"):
        click.echo(f"\nno fresh exchange rate: {', '.join(report['rates_stale'])}")
