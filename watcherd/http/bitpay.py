"""The BitPay-style invoice API (BTCPay's official WHMCS plugin v3, BitPay-era plugins), served at /invoices when
[greenfield] is configured: `Authorization: Basic base64(<api key>)`, answers wrapped in {"data": ...}, errors as
{"error": "..."}. The JSON is watcherd/compat/bitpay.py's; `posData` comes back exactly as sent.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from watcherd.compat import bitpay
from watcherd.compat import greenfield as gf
from watcherd.config import GreenfieldConfig
from watcherd.core.money import number_text, parse_decimal, quoted
from watcherd.delivery.addresses import url_refusal
from watcherd.exceptions import STORE_ERRORS, InvoiceError
from watcherd.http import api
from watcherd.ledger import Processor

CONFIG: web.AppKey[GreenfieldConfig] = web.AppKey("bitpay", GreenfieldConfig)
PROCESSOR = api.PROCESSOR
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def failure(status: int, message: str) -> web.HTTPException:
    cls = {400: web.HTTPBadRequest, 401: web.HTTPUnauthorized, 404: web.HTTPNotFound,
           503: web.HTTPServiceUnavailable}[status]
    return cls(text=json.dumps({"error": message}), content_type="application/json")


def _authorized(header: str, key: str) -> bool:
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(given.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return False
    # base64(<key>) as the plugins send it; base64(<key>:) as an HTTP client's basic auth with an empty password
    candidate = decoded[:-1] if decoded.endswith(":") else decoded
    return hmac.compare_digest(candidate.encode(), key.encode())


def make_app(processor: Processor, config: GreenfieldConfig,
             rates: Callable[[], api.Quotes | None] = lambda: None) -> web.Application:
    """The sub-application mounted at /invoices."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not _authorized(request.headers.get("Authorization", ""), config.api_key):
            raise failure(401, "Unauthorized: missing or wrong API key")
        try:
            return await handler(request)
        except STORE_ERRORS:
            raise failure(503, "the store cannot be written right now; retry later") from None
        except web.HTTPException as exc:
            if exc.content_type == "application/json" or exc.status < 400:
                raise
            return web.json_response({"error": exc.reason}, status=exc.status)

    app = web.Application(middlewares=[guard], client_max_size=64 * 1024)
    app[PROCESSOR] = processor
    app[CONFIG] = config
    app[api.RATES] = rates
    app.add_routes([web.post("", create_invoice), web.post("/", create_invoice), web.get("/{id}", show_invoice)])
    return app


async def create_invoice(request: web.Request) -> web.Response:
    processor, config = request.app[PROCESSOR], request.app[CONFIG]
    try:
        body = await api.read_json(request)
    except ValueError as exc:
        raise failure(400, str(exc)) from None
    if not isinstance(body, dict):
        raise failure(400, "the request body must be a JSON object")
    try:
        fields = bitpay.bind_create(body)
    except InvoiceError as exc:
        raise failure(400, f"{exc.field}: {exc}") from None
    try:
        price = parse_decimal(number_text(fields["price"]))
    except ValueError as exc:
        raise failure(400, f"price: must be a number greater than zero, such as \"25.00\": {exc}") from None
    currency = (fields["currency"] or config.default_currency).strip().upper()
    amount = gf.round_price(price, gf.price_decimals(processor, currency))
    if amount is None:
        raise failure(400, f"price: has more decimals than {quoted(currency)} has")
    if amount <= 0:
        raise failure(400, "price: must be a number greater than zero")
    default_speed = {"HighSpeed": "high", "LowMediumSpeed": "low-medium", "LowSpeed": "low"}.get(
        config.speed_policy, "medium")
    speed = bitpay.speed(fields["transactionSpeed"], default_speed)
    notification_url = fields["notificationURL"] or None
    if notification_url is not None and not notification_url.startswith(("http://", "https://")):
        raise failure(400, "notificationURL: must be an http(s) URL")
    try:
        refused = url_refusal(notification_url, config.hook_allow_networks) if notification_url else None
    except ValueError:
        raise failure(400, "notificationURL: must be an http(s) URL") from None
    if refused:
        raise failure(400, f"notificationURL: must not point at an internal address ({refused})")
    metadata = {k: fields[k] for k in ("orderId", "itemDesc", "itemCode", "physical", *bitpay.BUYER_FIELDS.values())
                if fields[k] is not None}
    native: dict[str, Any] = {"currency": currency, "amount": format(amount, "f"), "metadata": metadata}
    if fields["orderId"] is not None:
        native["order_id"] = fields["orderId"]
    if fields["redirectURL"]:
        native["redirect_url"] = fields["redirectURL"]
    try:
        params = api.parse_priced_request(native, processor)
        quotes = api.quote_methods(params, processor, request.app[api.RATES]())
    except web.HTTPException as exc:
        try:
            message = json.loads(exc.text or "{}")["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        raise failure(503 if exc.status == 503 else 400, message) from None
    compat = {"api": "bitpay", "posData": fields["posData"], "notificationURL": notification_url,
              "transactionSpeed": speed,
              "fullNotifications": bool(fields["fullNotifications"] or fields["extendedNotifications"])}
    try:
        del params["methods"], params["given"]
        created = await processor.create_priced_invoice(**params, quotes=quotes, confirmations=bitpay.SPEEDS[speed],
                                                        compat=compat)
    except InvoiceError as exc:
        raise failure(400, f"{exc.field}: {exc}") from None
    return web.json_response({"facade": "pos/invoice", "data": bitpay.invoice(created, compat, processor.clock())})


async def show_invoice(request: web.Request) -> web.Response:
    processor = request.app[PROCESSOR]
    row = await processor.store.invoice(request.match_info["id"])
    if row is not None and not gf.reachable(row, request.app[CONFIG].scope):
        row = None  # outside the key's scope: exactly as if there were no such invoice
    native = await processor.invoice_json(row.id) if row is not None else None
    if row is None or native is None:
        raise failure(404, "Object not found")
    return web.json_response({"facade": "pos/invoice", "data": bitpay.invoice(native, row.compat, processor.clock())})
