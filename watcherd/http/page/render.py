"""The payment page's HTML. Plain functions joining escaped strings: everything that comes from the billing
system (order id, description, redirect URL, amounts, addresses) passes through `html.escape` or a strings
lookup that escapes, and only http(s) URLs become links. The head and the static parts are precomputed, the QR
is cached, so a page costs a few tens of microseconds beyond reading the invoice.

Links are relative to /i/ (`root` is the way back there from the page's own URL) so the page also works behind
a reverse proxy that mounts watcherd under a path prefix.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from html import escape
from typing import Any
from urllib.parse import quote

from watcherd.compat.greenfield import STATUS as GREENFIELD_STATUS
from watcherd.config import ChainLabel
from watcherd.http.page import public, qr
from watcherd.http.page.strings import Html, Strings

TONES = {"unpaid": "wait", "underpaid": "warn", "processing": "progress", "paid": "ok", "overpaid": "warn",
         "paid_late": "warn", "expired": "bad", "cancelled": "bad", "invalid": "bad"}
PAID_STATES = frozenset({"paid", "overpaid", "paid_late"})
OPEN_STATES = frozenset({"unpaid", "underpaid"})  # the customer may still pay: address, QR, countdown
WALLET_SCHEMES = frozenset({"bitcoin", "litecoin", "ethereum", "monero"})
PAYMENT_STATES = frozenset({"pending", "confirmed", "replaced", "wrong_asset"})
REFRESH_SECONDS = 15  # the <noscript> page's meta refresh
MODAL_QUERY = "?view=modal"  # the page inside a shop's overlay (see render_page)
AMOUNT_PARAMS = frozenset({"amount", "tx_amount", "value", "uint256"})  # where a payment URI asks for money
SHOWN_DECIMALS = 8  # a coin's amount in the list of coins: XMR's 12 decimals (ETH's 18) rounded up to these


@dataclass(frozen=True)
class Assets:
    css: str  # file names under /i/assets/, content-hashed
    js: str


def _head(strings: Strings, title: str, assets: Assets, root: str, refresh: bool) -> str:
    noscript = f'<noscript><meta http-equiv="refresh" content="{REFRESH_SECONDS}"></noscript>' if refresh else ""
    return (
        f'<!doctype html><html lang="{strings.code}"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        '<meta name="color-scheme" content="light dark"><meta name="referrer" content="no-referrer">'
        f'<title>{title}</title><link rel="icon" href="data:,">'
        f'<link rel="stylesheet" href="{root}assets/{assets.css}">'
        f'<script src="{root}assets/{assets.js}" defer></script>{noscript}</head>'
    )


def _money(amount: Any, unit: Any) -> str:
    return escape(f"{amount} {unit or ''}".strip())


def shown_amount(amount: Any) -> Any:
    """A coin amount as the list of coins shows it: at most SHOWN_DECIMALS decimals, rounded UP, so it never
    reads less than what is due (0.326666666667 -> 0.32666667). What the customer copies and the payment URI
    stay exact."""
    try:
        value = Decimal(str(amount))
    except (InvalidOperation, ValueError):
        return amount
    if not value.is_finite() or value.as_tuple().exponent >= -SHOWN_DECIMALS:  # type: ignore[operator]
        return amount
    rounded = value.quantize(Decimal(1).scaleb(-SHOWN_DECIMALS), rounding=ROUND_CEILING)
    return format(rounded.normalize(), "f")


def _time(iso: Any) -> str:
    """2026-11-23T22:52:10Z -> 2026-11-23 22:52 UTC (anything else: as given, escaped)."""
    text = str(iso)
    if len(text) >= 16 and text[10] == "T":
        return escape(f"{text[:10]} {text[11:16]} UTC")
    return escape(text)


def _seconds_left(expires_at: Any, now: float) -> int | None:
    try:
        return max(0, int(datetime.fromisoformat(str(expires_at)).timestamp() - now))
    except ValueError:
        return None


def countdown_text(seconds: int) -> str:
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _method_name(method: dict[str, Any], strings: Strings, labels: Mapping[str, ChainLabel]) -> str:
    """"USDC on Ethereum" for a token or a coin on a chain of another name: the chain's display name, never the
    operator's key for it (a chain without a label, removed from the config meanwhile: the asset alone)."""
    asset, chain = method.get("asset") or method["method"], method.get("chain")
    label = labels.get(str(chain))
    if chain and label is not None and str(chain).upper() != str(asset).upper():
        return strings("on_chain", asset=asset, chain=label.display_name)
    return escape(str(asset))


def _test_badge(method: dict[str, Any], strings: Strings, labels: Mapping[str, ChainLabel]) -> str:
    label = labels.get(str(method.get("chain")))
    return f'<p class="tag test-network">{strings("test_network")}</p>' if label and label.test_network else ""


def _wallet_link(uri: Any) -> str | None:
    """A payment URI as a link only when its scheme is a wallet's (never javascript:, data: ...)."""
    if not isinstance(uri, str) or ":" not in uri or any(c.isspace() or ord(c) < 0x20 for c in uri):
        return None
    return uri if uri.split(":", 1)[0].lower() in WALLET_SCHEMES else None


def uri_for_due(method: dict[str, Any]) -> str | None:
    """The payment URI asking for what is still due (after an underpayment). The daemon's URI of a picked
    method already asks for its `due`: kept as it is. One that still carries the whole amount gets its amount
    parameter (BIP21 `amount`, monero `tx_amount`, EIP-681 `value`/`uint256`) swapped for the due, in the same
    form (decimal or atomic units). None when the URI carries the amount some other way: then no QR, only the
    text."""
    uri, due = method.get("payment_uri"), method.get("due")
    if not isinstance(uri, str) or due is None or due == method.get("amount"):
        return uri if isinstance(uri, str) else None
    forms = [(str(old), str(new)) for old, new in ((method.get("amount"), due),
                                                   (method.get("amount_atomic"), method.get("due_atomic")))
             if old is not None and new is not None]
    base, _, query = uri.partition("?")
    params, swapped = [], False
    for param in query.split("&") if query else []:
        key, eq, value = param.partition("=")
        if eq and key in AMOUNT_PARAMS:
            if any(value == new for _, new in forms):
                return uri  # it asks for the due already
            new = next((new for old, new in forms if value == old), None)
            if new is not None:
                param, swapped = f"{key}={new}", True
        params.append(param)
    return f"{base}?{'&'.join(params)}" if swapped else None


def _qr_uri(method: dict[str, Any], view: str) -> str | None:
    """The URI a picked method's QR encodes: what is still due after an underpayment, else the whole amount."""
    underpaid = view == "underpaid" and method.get("due") is not None
    uri = uri_for_due(method) if underpaid else method.get("payment_uri")
    return uri if isinstance(uri, str) and uri else None


def qr_shown(invoice: dict[str, Any], asked_method: str | None) -> tuple[str, str | None] | None:
    """The (payment URI, asset) whose QR `render_page` will draw, if any: so that the page handler can build
    a QR it has not built yet off the event loop first."""
    view = public.state(invoice)
    chosen = public.chosen_method(invoice, asked_method)
    if view not in OPEN_STATES or chosen is None or not chosen.get("activated") or not chosen.get("address"):
        return None
    uri = _qr_uri(chosen, view)
    return (uri, chosen.get("asset")) if uri else None


def _copyable(field_id: str, value: str, label: str, strings: Strings, unit: str = "", wide: bool = False) -> str:
    unit_html = f' <span class="unit">{escape(unit)}</span>' if unit else ""
    return (
        f'<div class="field"><dt>{label}</dt><dd><code id="{field_id}" class="value{" wide" if wide else ""}">'
        f'{escape(value)}</code>{unit_html}<button type="button" class="copy" data-copy="{field_id}" '
        f'aria-label="{strings("copy_amount" if field_id == "pay-amount" else "copy_address")}" hidden>'
        f'{strings("copy")}</button></dd></div>'
    )


def _activate_form(invoice_id: str, method: dict[str, Any], strings: Strings, primary: bool, modal: bool) -> str:
    action = f"{quote(invoice_id, safe='')}/methods/{quote(method['method'], safe='')}{MODAL_QUERY if modal else ''}"
    label = strings("pay_with", asset=method.get("asset") or method["method"])
    return (f'<form method="post" action="{action}" class="activate"><button type="submit" class="button'
            f'{"" if primary else " secondary"}">{label}</button></form>')


def _methods(invoice: dict[str, Any], chosen: dict[str, Any] | None, strings: Strings, collapsed: bool,
             modal: bool, labels: Mapping[str, ChainLabel]) -> str:
    """The coins the invoice is offered in, with their amounts; folded away (a native <details>) under the
    chosen coin once it has an address, so a phone shows the QR first."""
    items, whole_amounts = [], False
    part_paid = invoice.get("due") not in (None, invoice.get("amount"))
    for method in public.methods(invoice):
        is_chosen = chosen is not None and method["method"] == chosen["method"]
        shown = method.get("due") if method.get("due") is not None else method.get("amount")
        whole_amounts = whole_amounts or (part_paid and method.get("due") is None and shown is not None)
        amount = _money(shown_amount(shown), method.get("asset")) if shown is not None else ""
        if is_chosen:
            action = f'<span class="tag">{strings("chosen")}</span>'
        elif method.get("activated"):
            asset = method.get("asset") or method["method"]
            action = (f'<a class="button secondary" href="?method={quote(method["method"], safe="")}'
                      f'{"&amp;view=modal" if modal else ""}">'
                      f'{strings("show_method", asset=asset)}</a>')
        else:
            action = _activate_form(str(invoice.get("id")), method, strings, primary=False, modal=modal)
        current = ' class="method chosen" aria-current="true"' if is_chosen else ' class="method"'
        items.append(
            f'<li{current}>'
            f'<span class="method-name">{_method_name(method, strings, labels)}</span>'
            f'<span class="method-amount">{amount}</span>{action}</li>'
        )
    # part of the invoice is paid: a coin not picked yet has no due of its own until it is, only its price
    hint = f'<p class="hint">{strings("whole_amounts")}</p>' if whole_amounts else ""
    if collapsed:
        return (f'<details class="methods"><summary>{strings("other_coin")}</summary><ul>{"".join(items)}</ul>'
                f'{hint}</details>')
    return (f'<section class="methods" aria-labelledby="methods-title"><h2 id="methods-title">'
            f'{strings("choose_coin")}</h2><ul>{"".join(items)}</ul>{hint}</section>')


def _pay_box(invoice: dict[str, Any], method: dict[str, Any], view: str, strings: Strings, modal: bool,
             labels: Mapping[str, ChainLabel]) -> str:
    asset = method.get("asset") or method["method"]
    title = (f'<h2 id="pay-title">{strings("pay_with", asset=Html(_method_name(method, strings, labels)))}</h2>'
             + _test_badge(method, strings, labels))
    if not method.get("activated") or not method.get("address"):
        owed = method.get("due") if method.get("due") is not None else method.get("amount")
        price = f'<p class="pay-amount">{_money(shown_amount(owed), asset)}</p>' if owed is not None else ""
        return (f'<section class="pay" aria-labelledby="pay-title">{title}{price}'
                f'{_activate_form(str(invoice.get("id")), method, strings, primary=True, modal=modal)}</section>')
    underpaid = view == "underpaid" and method.get("due") is not None
    amount = method.get("due") if underpaid else method.get("amount")
    uri = _qr_uri(method, view)
    parts = [f'<section class="pay" aria-labelledby="pay-title">{title}']
    if uri:
        label = strings.raw("qr_label").format(asset=asset)
        parts.append(f'<div class="qr">{qr.inline_svg(uri, method.get("asset"), label)}</div>')
        if underpaid:
            parts.append(f'<p class="hint">{strings("qr_for_remaining")}</p>')
    parts.append('<dl class="fields">')
    if amount is not None:
        parts.append(_copyable("pay-amount", str(amount), strings("send_exactly"), strings, unit=str(asset)))
    parts.append(_copyable("pay-address", str(method["address"]), strings("to_address"), strings, wide=True))
    parts.append("</dl>")
    link = _wallet_link(uri)
    if link:
        parts.append(f'<a class="button" href="{escape(link)}">{strings("open_wallet")}</a>')
    parts.append("</section>")
    return "".join(parts)


def _confirmations(payment: dict[str, Any], invoice: dict[str, Any], strings: Strings) -> str:
    method = public.method_of(payment, invoice) or {}
    required, seen = method.get("confirmations_required"), payment.get("confirmations")
    if payment.get("status") != "pending":
        key = f"payment_{payment.get('status')}"
        return strings(key) if payment.get("status") in PAYMENT_STATES else escape(str(payment.get("status") or ""))
    if not isinstance(required, int) or required <= 0:
        return strings("msg_finality")
    return strings("msg_confirmations", n=min(seen, required) if isinstance(seen, int) else 0, m=required)


def _progress(invoice: dict[str, Any], strings: Strings) -> str:
    """Processing: "n of m" of the least confirmed pending payment, m its own method's confirmations_required
    (payments on two chains each count against their own chain's); of two equally confirmed ones, the one that
    needs more. A pending payment waiting for finality (no count required) says so instead."""
    least: tuple[int, int] | None = None
    for payment in public.payments(invoice):
        if payment.get("status") != "pending":
            continue
        required = (public.method_of(payment, invoice) or {}).get("confirmations_required")
        if not isinstance(required, int) or required <= 0:
            return f'<p>{strings("msg_finality")}</p>'
        seen = payment.get("confirmations")
        count = min(seen, required) if isinstance(seen, int) else 0
        if least is None or (count, -required) < (least[0], -least[1]):
            least = (count, required)
    if least is None:
        return ""
    count, required = least
    return (f'<p class="progress"><progress max="{required}" value="{count}"></progress> '
            f'<span class="confirmations">{strings("msg_confirmations", n=count, m=required)}</span></p>')


def _ledger(invoice: dict[str, Any], strings: Strings) -> str:
    lines = []
    for payment in public.payments(invoice):
        if payment.get("status") == "replaced":
            continue
        asset = payment.get("asset") or ""
        amount = _money(payment.get("amount"), asset)
        value, currency = payment.get("value"), invoice.get("currency")
        if value is not None and currency and currency != asset:
            amount = f'{_money(value, currency)} <span class="unit">({amount})</span>'
        lines.append(
            '<li><dl class="line">'
            f'<div><dt>{strings("ledger_date")}</dt><dd>{_time(payment.get("first_seen_at"))}</dd></div>'
            f'<div><dt>{strings("ledger_type")}</dt><dd>{strings("ledger_type_value", asset=asset)}</dd></div>'
            f'<div><dt>{strings("ledger_reference")}</dt><dd><code class="wide">'
            f'{escape(str(payment.get("txid") or ""))}</code></dd></div>'
            f'<div><dt>{strings("ledger_amount")}</dt><dd>{amount}</dd></div>'
            f'<div><dt>{strings("status_label")}</dt><dd>{_confirmations(payment, invoice, strings)}</dd></div>'
            '</dl></li>'
        )
    if not lines:
        return ""
    return (f'<section class="ledger" aria-labelledby="ledger-title"><h2 id="ledger-title">{strings("payments")}'
            f'</h2><ul>{"".join(lines)}</ul></section>')


def _status(invoice: dict[str, Any], view: str, chosen: dict[str, Any] | None, strings: Strings,
            now: float) -> str:
    exception = invoice.get("exception")
    counted = [p for p in public.payments(invoice) if p.get("status") in ("pending", "confirmed")]
    messages: list[str] = []
    if view == "unpaid":
        if chosen is None:
            messages.append(strings("msg_choose"))
        elif not chosen.get("activated") or not chosen.get("address"):
            messages.append(strings("msg_activate", asset=chosen.get("asset") or chosen["method"]))
        else:
            messages.append(strings("msg_unpaid"))
    elif view == "underpaid":
        if chosen is not None and chosen.get("due") is not None:
            due = Html(_money(chosen["due"], chosen.get("asset")))
        else:
            due = Html(_money(invoice.get("due", ""), invoice.get("currency")))
        # the rest goes to the same address only if the part came there (not after switching coins)
        same = chosen is not None and chosen.get("activated") and any(
            (public.method_of(p, invoice) or {}).get("method") == chosen["method"] for p in counted)
        messages.append(strings("msg_underpaid" if same else "msg_underpaid_rest",
                                due=Html(f"<strong>{due}</strong>")))
    elif view == "processing":
        messages.append(strings("msg_processing"))
    elif view == "expired":
        messages.append(strings("msg_expired_partial" if counted or exception == "underpaid" else "msg_expired"))
    elif view in ("paid", "overpaid", "paid_late", "cancelled", "invalid"):
        messages.append(strings(f"msg_{view}"))
    if view in ("overpaid", "paid_late"):
        messages.insert(0, strings("msg_paid"))
    if view == "processing" and exception in ("overpaid", "paid_late"):
        messages.append(strings(f"msg_{exception}"))
    if exception in ("double_spent", "wrong_asset"):
        messages.append(strings(f"msg_{exception}"))
    headline = strings(view) if view in TONES else escape(view)
    body = "".join(f"<p>{m}</p>" for m in messages)
    if view == "processing":
        body += _progress(invoice, strings)
    if view in OPEN_STATES and invoice.get("expires_at"):
        left = _seconds_left(invoice["expires_at"], now)
        if left is not None:
            expires = escape(str(invoice["expires_at"]))
            body += (f'<p class="countdown">{strings("expires_in")} <time datetime="{expires}" data-countdown>'
                     f'{countdown_text(left)}</time></p>')
    return (f'<section class="status tone-{TONES.get(view, "wait")}" role="status" aria-live="polite">'
            f'<h2>{headline}</h2>{body}</section>')


def render_page(invoice: dict[str, Any], strings: Strings, assets: Assets, *, asked_method: str | None,
                now: float, modal: bool = False, labels: Mapping[str, ChainLabel] | None = None) -> str:
    """The whole page for one invoice (the full invoice JSON: the page shows `metadata.description`, and only
    that, of the metadata). `modal`: inside a shop's overlay (BTCPay's modal script, `?view=modal`): a close
    button, links that stay modal, and the invoice's Greenfield status for the script to post to the shop.
    `labels`: the chains' display names and test networks, from the config."""
    labels = labels or {}
    view = public.state(invoice)
    chosen = public.chosen_method(invoice, asked_method)
    invoice_id = str(invoice.get("id", ""))
    order = invoice.get("order_id")
    text = public.description(invoice)
    # the heading: the order, else the description, else just "Payment" (never "PAYMENT" over "Payment")
    named = escape(str(order)) if order else escape(text[:80]) if text else None
    title = strings("page_title") + (f" · {named}" if named else "")
    final = public.is_final(invoice)
    parts = [_head(strings, title, assets, "", refresh=not final)]
    version = public.version(public.public_invoice(invoice))
    parts.append(
        f'<body data-copied="{strings("copied")}" data-copy-failed="{strings("copy_failed")}">'
        f'<main id="checkout" data-id="{escape(invoice_id)}" data-live="{quote(invoice_id, safe="")}/live" '
        f'data-status="{quote(invoice_id, safe="")}/status" data-version="{version}" '
        f'data-final="{"1" if final else "0"}"'
        + (f' data-modal-status="{GREENFIELD_STATUS.get(str(invoice.get("status")), "New")}">' if modal else '>')
    )
    if modal:
        parts.append(f'<p class="modal-close"><button type="button" class="button secondary" data-close hidden>'
                     f'{strings("close")}</button></p>')
    if order:
        parts.append(f'<header class="order"><p class="eyebrow">{strings("page_title")}</p>'
                     f'<h1><span class="label">{strings("order")}</span> {escape(str(order))}</h1>')
        if text:
            parts.append(f'<p class="description">{escape(text)}</p>')
    elif text:
        parts.append(f'<header class="order"><p class="eyebrow">{strings("page_title")}</p>'
                     f'<h1 class="description">{escape(text)}</h1>')
    else:
        parts.append(f'<header class="order"><h1>{strings("page_title")}</h1>')
    part_paid = invoice.get("due") not in (None, invoice.get("amount"))
    if invoice.get("amount") is not None:
        label = strings("amount_due" if view in OPEN_STATES and not part_paid else "ledger_amount")
        parts.append(f'<p class="total"><span class="label">{label}</span> '
                     f'<strong>{_money(invoice["amount"], invoice.get("currency"))}</strong></p>')
    if view in OPEN_STATES and part_paid:
        parts.append(f'<p class="total"><span class="label">{strings("still_due")}</span> '
                     f'<strong>{_money(invoice["due"], invoice.get("currency"))}</strong></p>')
    parts.append("</header>")
    parts.append(_status(invoice, view, chosen, strings, now))
    if view in OPEN_STATES:
        several = len(public.methods(invoice)) > 1
        ready = chosen is not None and bool(chosen.get("activated")) and bool(chosen.get("address"))
        if several and not ready:
            parts.append(_methods(invoice, chosen, strings, collapsed=False, modal=modal, labels=labels))
        if chosen is not None:
            parts.append(_pay_box(invoice, chosen, view, strings, modal, labels))
        if several and ready:
            parts.append(_methods(invoice, chosen, strings, collapsed=True, modal=modal, labels=labels))
    parts.append(_ledger(invoice, strings))
    back = public.redirect_url(invoice)
    if back and (view in PAID_STATES or final):
        primary = view in PAID_STATES
        parts.append(f'<p class="actions"><a class="button{"" if primary else " secondary"}" href="{escape(back)}"'
                     f' rel="noreferrer">{strings("back_to_shop")}</a></p>')
    if not final:
        parts.append(f'<noscript><p class="hint">{strings("noscript")}</p></noscript>')
    parts.append('<p id="copy-status" class="visually-hidden" aria-live="polite"></p></main></body></html>')
    return "".join(parts)


def render_message(strings: Strings, assets: Assets, title_key: str, message: str, *, root: str,
                   back: str | None = None) -> str:
    """A page that only says something (not found, unavailable, cannot pay with ...); `message` is markup."""
    link = f'<p class="actions"><a class="button" href="{escape(back)}">{strings("back_to_invoice")}</a></p>' \
        if back else ""
    return (f'{_head(strings, strings(title_key), assets, root, refresh=False)}<body><main id="checkout">'
            f'<header class="order"><p class="eyebrow">{strings("page_title")}</p><h1>{strings(title_key)}</h1>'
            f'</header><section class="status tone-bad"><p>{message}</p></section>{link}</main></body></html>')
