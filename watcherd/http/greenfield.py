"""BTCPay's Greenfield API, the part existing billing plugins use (WooCommerce, WHMCS, the PHP client), served
under /api/v1 when [greenfield] is configured: one store, one API key (`Authorization: token <key>`).

Greenfield's conventions, kept exactly: every success is HTTP 200 (creates too: BTCPay's PHP client throws on
201), 422 errors are `[{"path", "message"}]`, other errors `{"code", "message"}`; JSON in camelCase with decimal
strings and unix seconds (watcherd/compat/greenfield.py). Unknown request fields are ignored, as Greenfield does.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

from aiohttp import web

from watcherd import __version__
from watcherd.compat import greenfield as gf
from watcherd.config import GreenfieldConfig
from watcherd.config.tables import SPEED_POLICIES
from watcherd.core.invoices import Status
from watcherd.core.money import number_text, parse_decimal, parse_whole, quoted
from watcherd.exceptions import STORE_ERRORS, InvoiceError
from watcherd.http import api
from watcherd.http.greenfield_common import (
    CONFIG,
    MAX_TAKE,
    PERMISSIONS,
    PROCESSOR,
    Handler,
    invalid,
    problem,
    read_body,
)
from watcherd.http.greenfield_hooks import (
    create_hook,
    delete_hook,
    delivery_request,
    list_deliveries,
    list_hooks,
    redeliver,
    show_delivery,
    show_hook,
    update_hook,
)
from watcherd.ledger import Processor


def make_app(processor: Processor, config: GreenfieldConfig,
             readiness: Callable[[], Awaitable[dict[str, Any]]],
             rates: Callable[[], api.Quotes | None] = lambda: None) -> web.Application:
    """The sub-application mounted at /api/v1."""

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "token" or not hmac.compare_digest(given.strip().encode(), config.api_key.encode()):
            raise problem(401, "unauthenticated", "Authentication is required for accessing this endpoint")
        store_id = request.match_info.get("storeId")
        if store_id is not None and store_id != config.store_id:
            raise problem(403, "missing-permission", f"no store {store_id!r} for this API key")
        return await handler(request)

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except STORE_ERRORS:
            raise problem(503, "store-unavailable", "the store cannot be written right now; retry later") from None
        except web.HTTPException as exc:
            if exc.content_type == "application/json" or exc.status < 400:
                raise
            body = {"code": exc.reason.lower().replace(" ", "-"), "message": exc.reason}
            return web.json_response(body, status=exc.status)

    app = web.Application(middlewares=[errors, auth], client_max_size=64 * 1024)
    app[PROCESSOR] = processor
    app[CONFIG] = config
    app[api.READINESS] = readiness
    app[api.RATES] = rates
    store = "/stores/{storeId}"
    invoice_paths = [f"{store}/invoices/{{invoiceId}}", "/invoices/{invoiceId}"]
    hook_paths = [f"{store}/webhooks/{{webhookId}}", "/webhooks/{webhookId}"]
    routes = [
        web.get("/api-keys/current", current_key),
        web.get("/server/info", server_info),
        web.get("/stores", list_stores),
        web.get(store, show_store),
        web.get(f"{store}/payment-methods", store_payment_methods),
        web.get(f"{store}/payment-methods/onchain", store_payment_methods),
        web.post(f"{store}/invoices", create_invoice),
        web.post(f"{store}/invoices/", create_invoice),
        web.get(f"{store}/invoices", list_invoices),
        web.get(f"{store}/invoices/", list_invoices),
        web.get(f"{store}/webhooks", list_hooks),
        web.post(f"{store}/webhooks", create_hook),
    ]
    for path in invoice_paths:
        routes += [
            web.get(path, show_invoice),
            web.get(f"{path}/payment-methods", invoice_payment_methods),
            web.post(f"{path}/payment-methods/{{paymentMethodId}}/activate", activate_method),
            web.post(f"{path}/status", mark_status),
        ]
    for path in hook_paths:
        routes += [
            web.get(path, show_hook),
            web.put(path, update_hook),
            web.delete(path, delete_hook),
            web.get(f"{path}/deliveries", list_deliveries),
            web.get(f"{path}/deliveries/{{deliveryId}}", show_delivery),
            web.get(f"{path}/deliveries/{{deliveryId}}/request", delivery_request),
            web.post(f"{path}/deliveries/{{deliveryId}}/redeliver", redeliver),
        ]
    app.add_routes(routes)
    return app


# --- key, server, store -----------------------------------------------------------------------------

async def current_key(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    return web.json_response({"apiKey": config.api_key, "label": "watcherd",
                              "permissions": [f"{p}:{config.store_id}" for p in PERMISSIONS]})


def _method_ids(processor: Processor) -> list[str]:
    return list(dict.fromkeys(gf.method_id(processor.method_parts(m)[1]) for m in processor.method_ids()))


async def server_info(request: web.Request) -> web.Response:
    processor = request.app[PROCESSOR]
    report = await request.app[api.READINESS]()
    chains = report.get("chains", {})
    return web.json_response({
        "version": f"2.0.0-watcherd-{__version__}",
        "onion": None,
        "supportedPaymentMethods": _method_ids(processor),
        "fullySynched": bool(report.get("ready")),
        "syncStatus": [{"paymentMethodId": gf.method_id(processor.chains[name].asset), "chainHeight": c.get("node_tip"),
                        "syncHeight": c.get("processed_height"), "available": bool(c.get("ready"))}
                       for name, c in chains.items() if name in processor.chains],
    })


def _store(config: GreenfieldConfig) -> dict[str, Any]:
    return {"id": config.store_id, "name": config.store_name, "website": None,
            "defaultCurrency": config.default_currency, "invoiceExpiration": 900,
            "monitoringExpiration": gf.MONITORING_SECONDS, "displayExpirationTimer": 300,
            "speedPolicy": config.speed_policy, "paymentTolerance": 0.0, "archived": False,
            "anyoneCanCreateInvoice": False, "lazyPaymentMethods": True, "redirectAutomatically": False}


async def list_stores(request: web.Request) -> web.Response:
    return web.json_response([_store(request.app[CONFIG])])


async def show_store(request: web.Request) -> web.Response:
    return web.json_response(_store(request.app[CONFIG]))


async def store_payment_methods(request: web.Request) -> web.Response:
    return web.json_response([{"paymentMethodId": m, "enabled": True}
                              for m in _method_ids(request.app[PROCESSOR])])


# --- invoices ----------------------------------------------------------------------------------------

async def _invoice(request: web.Request) -> tuple[dict[str, Any], Any]:
    processor = request.app[PROCESSOR]
    invoice_id = request.match_info["invoiceId"]
    row = await processor.store.invoice(invoice_id)
    if row is not None and not gf.reachable(row, request.app[CONFIG].scope):
        row = None  # outside the key's scope: exactly as if there were no such invoice
    native = await processor.invoice_json(invoice_id) if row is not None else None
    if row is None or native is None:
        raise problem(404, "invoice-not-found", f"no invoice {invoice_id!r}")
    return native, row


def _native_methods(processor: Processor, wanted: Any) -> list[str]:
    """Native method ids for Greenfield's `checkout.paymentMethods` (null: every configured one)."""
    offered = processor.method_ids()
    if wanted is None:
        return offered
    if not isinstance(wanted, list) or not all(isinstance(m, str) for m in wanted):
        raise invalid("checkout.paymentMethods", "must be a list of payment method ids such as \"BTC-CHAIN\"")
    by_asset: dict[str, str] = {}
    for method in offered:
        by_asset.setdefault(processor.method_parts(method)[1], method)
    chosen: list[str] = []
    for text in wanted:
        found = by_asset.get(gf.parse_method_id(text))
        if found is None:
            raise invalid("checkout.paymentMethods", f"{text!r} is not enabled in this store; enabled: "
                                                     f"{', '.join(_method_ids(processor))}")
        if found not in chosen:
            chosen.append(found)
    return chosen


def _amount_text(value: Any) -> str:
    try:
        amount = parse_decimal(number_text(value))
    except ValueError as exc:
        raise invalid("amount", f"must be a decimal string such as \"5.00\": {exc}") from None
    if amount <= 0:
        raise invalid("amount", "must be greater than zero")
    return format(amount, "f")


def _checkout_number(checkout: dict[str, Any], name: str) -> Decimal | None:
    """A number of `checkout` (a JSON number, or a numeric string), exactly and of bounded size."""
    if checkout.get(name) is None:
        return None
    try:
        return parse_decimal(number_text(checkout[name]), max_digits=20)
    except ValueError as exc:
        raise invalid(f"checkout.{name}", str(exc)) from None


def _native_error(exc: web.HTTPException, paths: dict[str, str]) -> web.HTTPException:
    """A native API error (reused parsing) in Greenfield's shape."""
    try:
        detail = json.loads(exc.text or "{}")["error"]
    except (ValueError, KeyError, TypeError):
        detail = {"code": "error", "message": exc.reason}
    if exc.status == 503:
        return problem(503, "rates-unavailable", detail["message"])
    field = detail.get("field") or ""
    return invalid(paths.get(field, field), detail["message"])


async def create_invoice(request: web.Request) -> web.Response:
    processor, config = request.app[PROCESSOR], request.app[CONFIG]
    body = gf.bind_create(await read_body(request))
    if body.get("amount") is None:
        raise invalid("amount", "watcherd needs an amount: top-up invoices (no amount) are not supported")
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise invalid("metadata", "must be a JSON object")
    checkout = body.get("checkout") or {}
    if not isinstance(checkout, dict):
        raise invalid("checkout", "must be a JSON object")
    currency = body.get("currency") or config.default_currency
    if not isinstance(currency, str):
        raise invalid("currency", "must be a currency code such as \"USD\"")
    order_id = metadata.get("orderId")
    speed = checkout.get("speedPolicy") or config.speed_policy
    if not isinstance(speed, str) or speed not in SPEED_POLICIES:  # a list is no key: TypeError, 500
        raise invalid("checkout.speedPolicy", f"one of {', '.join(SPEED_POLICIES)}")
    minutes = _checkout_number(checkout, "expirationMinutes")
    if minutes is not None and not 1 <= minutes <= api.MAX_EXPIRES_IN // 60:
        raise invalid("checkout.expirationMinutes", f"a number of minutes from 1 to {api.MAX_EXPIRES_IN // 60}")
    tolerance = _checkout_number(checkout, "paymentTolerance")
    if tolerance is not None and not 0 <= tolerance < 100:  # 100 would settle the invoice with nothing paid
        raise invalid("checkout.paymentTolerance", "a percentage from 0 to less than 100")
    decimals = gf.price_decimals(processor, currency.upper())
    amount = gf.round_price(Decimal(_amount_text(body["amount"])), decimals)
    if amount is None:
        raise invalid("amount", f"has more decimals than {quoted(currency)} has")
    if metadata.get("taxIncluded") is not None:
        try:
            metadata = {**metadata, "taxIncluded": gf.tax_included(metadata["taxIncluded"], amount, decimals)}
        except ValueError as exc:
            raise invalid("metadata.taxIncluded", str(exc)) from None
    native: dict[str, Any] = {
        "currency": currency.upper(), "amount": format(amount, "f"),
        "payment_methods": _native_methods(processor, checkout.get("paymentMethods")),
        "metadata": metadata,
    }
    if order_id is not None:
        native["order_id"] = str(order_id)
    if minutes is not None:
        native["expires_in"] = int(minutes * 60)
    if checkout.get("redirectURL"):
        native["redirect_url"] = checkout["redirectURL"]
    paths = {"currency": "currency", "amount": "amount", "payment_methods": "checkout.paymentMethods",
             "order_id": "metadata.orderId", "expires_in": "checkout.expirationMinutes", "metadata": "metadata",
             "redirect_url": "checkout.redirectURL", "rates": "currency"}
    try:
        params = api.parse_priced_request(native, processor)
        quotes = api.quote_methods(params, processor, request.app[api.RATES]())
    except web.HTTPException as exc:
        raise _native_error(exc, paths) from None
    del params["methods"], params["given"]
    kept = {k: checkout.get(k) for k in ("redirectAutomatically", "defaultLanguage") if checkout.get(k) is not None}
    try:
        created = await processor.create_priced_invoice(
            **params, quotes=quotes, confirmations=SPEED_POLICIES[speed],
            tolerance=tolerance,
            compat={"api": "greenfield", "checkout": {"speedPolicy": speed, **kept}},
        )
    except InvoiceError as exc:
        raise invalid(paths.get(exc.field, exc.field), str(exc)) from None
    row = await processor.store.invoice(created["id"])
    assert row is not None
    return web.json_response(gf.invoice(created, row, config.store_id))


def _query_list(request: web.Request, name: str) -> list[str]:
    values: list[str] = []
    for value in request.query.getall(name, []):
        values += [v for v in value.split(",") if v]
    return values


def _query_int(request: web.Request, name: str, max_digits: int) -> int | None:
    text = request.query.get(name)
    if text is None or text == "":
        return None
    try:
        return parse_whole(text, max_digits=max_digits)
    except ValueError as exc:
        raise invalid(name, str(exc)) from None


async def list_invoices(request: web.Request) -> web.Response:
    processor, config = request.app[PROCESSOR], request.app[CONFIG]
    statuses = set(_query_list(request, "status"))
    unknown = statuses - set(gf.STATUS.values())
    if unknown:
        raise invalid("status", f"unknown status {sorted(unknown)[0]!r}; one of New, Processing, Settled, Expired, "
                                "Invalid")
    wanted = [native for native, shown in gf.STATUS.items() if shown in statuses]
    start, end = _query_int(request, "startDate", 12), _query_int(request, "endDate", 12)  # unix seconds
    take = _query_int(request, "take", 9)
    rows = await processor.store.invoices(
        statuses=wanted, order_ids=_query_list(request, "orderId"), created_from=start, created_to=end,
        text=request.query.get("textSearch") or None, offset=_query_int(request, "skip", 9) or 0,
        limit=MAX_TAKE if take is None else min(take, MAX_TAKE), compat_only=config.scope == "compat",
    )
    natives = await processor.invoice_jsons([row.id for row in rows])
    with_methods = request.query.get("includePaymentMethods", "").lower() == "true"
    shown: list[dict[str, Any]] = []
    for row in rows:
        item = gf.invoice(natives[row.id], row, config.store_id)
        if with_methods:
            item["paymentMethods"] = gf.payment_methods(natives[row.id])
        shown.append(item)
    return web.json_response(shown)


async def show_invoice(request: web.Request) -> web.Response:
    native, row = await _invoice(request)
    return web.json_response(gf.invoice(native, row, request.app[CONFIG].store_id))


async def invoice_payment_methods(request: web.Request) -> web.Response:
    native, _ = await _invoice(request)
    return web.json_response(gf.payment_methods(native))


async def activate_method(request: web.Request) -> web.Response:
    processor = request.app[PROCESSOR]
    native, _ = await _invoice(request)
    asset = gf.parse_method_id(request.match_info["paymentMethodId"])
    method = next((m["method"] for m in native["payment_methods"] if m["asset"] == asset), None)
    if method is None:
        raise problem(404, "paymentmethod-not-found", f"the invoice is not payable with "
                                                      f"{request.match_info['paymentMethodId']!r}")
    try:
        await processor.activate_method(native["id"], method)
    except InvoiceError as exc:
        raise invalid("paymentMethodId", str(exc)) from None
    return web.json_response({})


async def mark_status(request: web.Request) -> web.Response:
    processor = request.app[PROCESSOR]
    native, _ = await _invoice(request)
    body = await read_body(request)
    status = {"Settled": Status.PAID, "Invalid": Status.INVALID}.get(str(body.get("status")))  # str: a list is no key
    if status is None:
        raise invalid("status", "must be Settled or Invalid")
    await processor.mark_status(native["id"], status)
    api.audit("greenfield", f"mark_{body['status'].lower()}", invoice_id=native["id"])
    shown, row = await _invoice(request)
    return web.json_response(gf.invoice(shown, row, request.app[CONFIG].store_id))


MODAL_SCRIPT = (Path(__file__).parent / "static" / "btcpay.js").read_text()


def make_modal_app() -> web.Application:
    """/modal/btcpay.js, BTCPay's modal checkout script for plugins that open the payment page in an overlay: public,
    like BTCPay's."""

    async def modal_script(request: web.Request) -> web.Response:
        return web.Response(text=MODAL_SCRIPT, content_type="application/javascript",
                            headers={"Cache-Control": "public, max-age=3600", "Access-Control-Allow-Origin": "*"})

    app = web.Application()
    app.add_routes([web.get("/btcpay.js", modal_script)])
    return app
