"""The HTTP API billing systems call: create, read, list and cancel invoices; inspect and redeliver webhooks.

Every error is JSON: {"error": {"code": ..., "message": ..., "field": ...}} with a 4xx status naming the
offending field, so an integrator sees at once what to fix.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal
from fractions import Fraction
from typing import Any, Protocol

from aiohttp import web

from watcherd import views
from watcherd.core.currencies import minor_units
from watcherd.core.invoices import Status
from watcherd.core.money import (
    MAX_ATOMIC,
    QUOTED,
    TooPrecise,
    number_text,
    parse_decimal,
    parse_whole,
    quoted,
    to_atomic,
)
from watcherd.exceptions import STORE_ERRORS, InvoiceError, RatesUnavailable
from watcherd.http import checkout, limits, openapi
from watcherd.ledger import Processor
from watcherd.logs import CONTEXT_FIELDS

log = logging.getLogger(__name__)
audit_log = logging.getLogger("watcherd.audit")

MAX_EXPIRES_IN = 30 * 24 * 3600
MAX_METADATA_BYTES = 16 * 1024
MAX_BODY_BYTES = 64 * 1024  # every app's client_max_size: aiohttp answers 413 beyond it, unread
MAX_JSON_DEPTH = 32  # arrays and objects within one another in a request body
MAX_MESSAGE = 500  # characters of an error message: whatever it quotes, it stays short
COMMON_FIELDS = {"order_id", "expires_in", "metadata", "redirect_url"}
INVOICE_FIELDS = {"chain", "asset", "amount", "amount_atomic", *COMMON_FIELDS}
PRICED_FIELDS = {"currency", "amount", "payment_methods", "rates", *COMMON_FIELDS}
PROCESSOR: web.AppKey[Processor] = web.AppKey("processor", Processor)
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json"})
PUBLIC_PREFIX = "/i/"  # the payment pages (watcherd/http/checkout.py): an invoice id is the only key
READINESS: web.AppKey[Callable[[], Awaitable[dict[str, Any]]]] = web.AppKey("readiness")
TOKEN: web.AppKey[str] = web.AppKey("token", str)
RATES: web.AppKey[Callable[[], Quotes | None]] = web.AppKey("rates")  # the current one: a reload replaces it


class Quotes(Protocol):
    """Exchange rates (watcherd.rates.RateBook): whole `currency` units per whole coin, or RatesUnavailable."""

    def quote(self, currency: str, asset: str) -> Fraction: ...


def authorized(request: web.Request, token: str) -> bool:
    """The request carries the API's bearer token."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.encode(), token.encode())


def error(status: int, code: str, message: str, field: str | None = None) -> web.HTTPException:
    body: dict[str, Any] = {"code": code, "message": message[:MAX_MESSAGE]}
    if field is not None:
        body["field"] = field
    cls = {400: web.HTTPBadRequest, 401: web.HTTPUnauthorized, 404: web.HTTPNotFound,
           409: web.HTTPConflict, 422: web.HTTPUnprocessableEntity, 503: web.HTTPServiceUnavailable}[status]
    return cls(text=json.dumps({"error": body}), content_type="application/json")


def audit(api: str, action: str, **ids: str) -> None:
    """The one log line of a state-changing call, once it is done: the API that made it (native, greenfield,
    bitpay), the action, and the ids it acted on (an invoice's and an event's as the log's own fields). Ids only:
    never a URL, a body or a secret."""
    context = {name: value for name, value in ids.items() if name in CONTEXT_FIELDS}
    named = "".join(f" {name}={value}" for name, value in ids.items() if name not in context)
    audit_log.info("api=%s action=%s%s", api, action, named, extra=context)


def make_app(processor: Processor, token: str, readiness: Callable[[], Awaitable[dict[str, Any]]],
             rates: Callable[[], Quotes | None] = lambda: None,
             compat: Sequence[tuple[str, web.Application]] = (),
             embed_origins: Sequence[str] = ("*",), labels: checkout.Labels = dict) -> web.Application:
    """The native API; `compat` mounts the compatible APIs (prefix, sub-application), each with its own
    authentication and error shapes; `labels`: how the payment page names the chains."""
    prefixes = tuple(prefix for prefix, _ in compat)

    def compatible(path: str) -> bool:
        return any(path == p or path.startswith(p + "/") for p in prefixes)

    @web.middleware
    async def auth(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        # judged by the route that matched, not the raw path, so no path trick reaches the API without a token
        resource = request.match_info.route.resource
        if resource is None:  # nothing matched: a 404 or 405, in the shape of the API the path is under
            public = request.path in PUBLIC_PATHS or compatible(request.path)
        else:
            public = (request.path in PUBLIC_PATHS or resource.canonical.startswith(PUBLIC_PREFIX)
                      or compatible(resource.canonical))
        if public or authorized(request, token):
            return await handler(request)
        raise error(401, "unauthorized", "missing or wrong bearer token")

    @web.middleware
    async def json_errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        if "\x00" in request.path or "\x00" in request.query_string:  # no store keeps a NUL (PostgreSQL refuses it)
            raise error(400, "invalid_request", "the URL holds a NUL character (%00)")
        try:
            return await handler(request)
        except STORE_ERRORS as exc:
            # nothing was written (the transaction rolled back): the client may retry, with its Idempotency-Key
            log.error("store unavailable during %s %s: %s", request.method, request.path, exc)
            raise error(503, "store_unavailable", "the store cannot be written right now; retry later") from None
        except web.HTTPException as exc:
            if exc.content_type == "application/json" or exc.status < 400 or compatible(request.path):
                raise
            # aiohttp's own errors (unknown route, body too large...) get the same JSON shape as ours
            body = {"error": {"code": exc.reason.lower().replace(" ", "_"), "message": exc.reason}}
            return web.json_response(body, status=exc.status)

    app = web.Application(middlewares=[json_errors, auth, limits.body_in_time], client_max_size=MAX_BODY_BYTES)
    app[PROCESSOR] = processor
    app[READINESS] = readiness
    app[RATES] = rates
    app[TOKEN] = token
    checkout.setup(app, processor, embed_origins, labels)
    app.add_routes([
        web.post("/v1/invoices", create_invoice),
        web.get("/v1/invoices", list_invoices),
        web.get("/v1/invoices/{id}", show_invoice),
        web.post("/v1/invoices/{id}/cancel", cancel_invoice),
        web.post("/v1/invoices/{id}/payment-methods/{method}", activate_method),
        web.get("/v1/invoices/{id}/events", invoice_events),
        web.get("/v1/webhooks", list_webhooks),
        web.post("/v1/webhooks/{event_id}/redeliver", redeliver_webhook),
        web.get("/healthz", healthz),
        web.get("/readyz", readyz),
        web.get("/openapi.json", openapi_document),
    ])
    for prefix, sub in compat:
        app.add_subapp(prefix, sub)
    return app


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400: it would go out again as Infinity, which is not JSON
        raise ValueError("a number beyond a float's range")
    return value


# built once: json.loads with keywords builds a decoder per call, which costs more than the parse
_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite_float)


def _check_json(value: Any) -> None:
    """Refuse what parsed but would fail a later reader: nesting deeper than MAX_JSON_DEPTH (the store, the
    webhook bodies and the page all recurse), lone surrogates ("\\ud800": no store can encode them) and NUL
    characters ("\\u0000": PostgreSQL keeps none)."""
    pending = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if depth > MAX_JSON_DEPTH:
            raise ValueError(f"the request body nests deeper than {MAX_JSON_DEPTH} levels")
        children = [*item, *item.values()] if isinstance(item, dict) else item if isinstance(item, list) else ()
        for child in children:
            if isinstance(child, (dict, list)):
                pending.append((child, depth + 1))
            elif isinstance(child, str):
                if "\x00" in child:
                    raise ValueError("the request body has a NUL character (\\u0000) in a string")
                try:
                    child.encode()
                except UnicodeEncodeError:
                    raise ValueError("the request body has a lone surrogate (\\ud800 to \\udfff) in a string") from None


async def read_json(request: web.Request) -> Any:
    """The request body as JSON, or ValueError saying why not, for the client: not JSON (NaN, Infinity and 1e400
    are not), nested too deep or unstorable text (_check_json). Bodies beyond MAX_BODY_BYTES never get here (413)."""
    raw = await request.read()
    try:  # UTF-8 strictly (json.loads of bytes would let an encoded surrogate through)
        value = _DECODER.decode(raw.decode())
    except RecursionError:  # deeper than Python's stack, long before the body's size limit
        raise ValueError(f"the request body nests deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError:  # UnicodeDecodeError included
        raise ValueError("the request body is not valid JSON") from None
    # the walk only when the bytes say it may find something: more brackets than levels, or a \uDxxx escape
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH or b"\\ud" in raw.lower() or b"\\u0000" in raw:
        _check_json([value])
    return value


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await read_json(request)
    except ValueError as exc:
        raise error(400, "invalid_json", str(exc)) from None
    if not isinstance(body, dict):
        raise error(400, "invalid_json", "the request body must be a JSON object")
    return body


def _parse_invoice_request(body: dict[str, Any], processor: Processor) -> dict[str, Any]:
    unknown = sorted(set(body) - INVOICE_FIELDS)
    if unknown:
        raise error(400, "unknown_field", f"unknown field {quoted(unknown[0])}", unknown[0][:QUOTED])
    chain_name = body.get("chain")
    if not isinstance(chain_name, str) or not chain_name:
        raise error(400, "invalid_field", "required: the configured chain name, e.g. \"btc\"", "chain")
    chain = processor.chains.get(chain_name)
    if chain is None:
        configured = ", ".join(sorted(processor.chains))
        raise error(422, "unknown_chain", f"no chain {quoted(chain_name)}; configured: {configured}", "chain")
    asset = body.get("asset", chain.asset)
    if not isinstance(asset, str) or asset not in chain.assets:
        raise error(422, "unknown_asset", f"{chain_name} has no asset {quoted(str(asset))}; configured: "
                                          f"{', '.join(sorted(chain.assets))}",
                    "asset")
    decimals = chain.assets[asset]
    if ("amount" in body) == ("amount_atomic" in body):
        raise error(400, "invalid_field", "give exactly one of amount (decimal string) or amount_atomic", "amount")
    if "amount" in body:
        if not isinstance(body["amount"], str):
            raise error(400, "invalid_field", "must be a decimal string such as \"0.015\" (not a JSON number, "
                                              "which loses precision)", "amount")
        amount = _amount(body["amount"], decimals, "amount")
    else:
        raw = body["amount_atomic"]
        try:
            amount = parse_whole(number_text(raw) if isinstance(raw, int) else raw, max_digits=len(str(MAX_ATOMIC)))
        except ValueError:
            raise error(400, "invalid_field", "must be a whole number of atomic units (ASCII digits)",
                        "amount_atomic") from None
        if amount > MAX_ATOMIC:
            raise error(400, "invalid_field", "is more than any chain can carry", "amount_atomic")
    field = "amount" if "amount" in body else "amount_atomic"
    if amount <= 0:
        raise error(400, "invalid_field", "must be greater than zero", field)
    return {"chain_name": chain_name, "asset": asset, "amount": amount, **_common_fields(body)}


def _amount(text: str, decimals: int, field: str) -> int:
    """An amount in atomic units, exactly: 422 for more decimals than the unit has (nothing is rounded)."""
    try:
        return to_atomic(text, decimals)
    except TooPrecise as exc:
        raise error(422, "too_many_decimals", str(exc), field) from None
    except ValueError as exc:
        raise error(400, "invalid_field", str(exc), field) from None


def _common_fields(body: dict[str, Any]) -> dict[str, Any]:
    order_id = body.get("order_id")
    if order_id is not None and (not isinstance(order_id, str) or len(order_id) > 200):
        raise error(400, "invalid_field", "must be a string of at most 200 characters", "order_id")
    expires_in = body.get("expires_in")
    if expires_in is not None and (
        isinstance(expires_in, bool) or not isinstance(expires_in, int) or not 1 <= expires_in <= MAX_EXPIRES_IN
    ):
        raise error(400, "invalid_field", f"must be whole seconds between 1 and {MAX_EXPIRES_IN}", "expires_in")
    metadata = body.get("metadata", {})
    if not isinstance(metadata, dict):
        raise error(400, "invalid_field", "must be a JSON object", "metadata")
    if len(json.dumps(metadata)) > MAX_METADATA_BYTES:
        raise error(400, "invalid_field", f"must serialize to at most {MAX_METADATA_BYTES} bytes", "metadata")
    redirect_url = body.get("redirect_url")
    if redirect_url is not None and (not isinstance(redirect_url, str) or len(redirect_url) > 2000
                                     or not redirect_url.startswith(("https://", "http://"))):
        raise error(400, "invalid_field", "must be an http(s) URL of at most 2000 characters", "redirect_url")
    return {"order_id": order_id, "expires_in": expires_in, "metadata": metadata, "redirect_url": redirect_url}


def parse_priced_request(body: dict[str, Any], processor: Processor) -> dict[str, Any]:
    """The checkout form: a price in a currency, offered in several coins (validated; not yet priced)."""
    unknown = sorted(set(body) - PRICED_FIELDS)
    if unknown:
        raise error(400, "unknown_field", f"unknown field {quoted(unknown[0])}; a priced invoice takes "
                                          f"{', '.join(sorted(PRICED_FIELDS))}", unknown[0][:QUOTED])
    currency = body["currency"]
    if not isinstance(currency, str) or not currency:
        raise error(400, "invalid_field", "must be a currency code such as \"USD\" (or a coin's, \"BTC\")", "currency")
    decimals = minor_units(currency)
    if decimals is None:  # a coin: its decimals, if every chain that has it agrees
        places = {chain.assets[currency] for chain in processor.chains.values() if currency in chain.assets}
        if len(places) > 1:
            raise error(422, "ambiguous_currency", f"{quoted(currency)} has different decimals on different chains "
                                                   f"({', '.join(map(str, sorted(places)))}): price in a fiat "
                                                   "currency", "currency")
        decimals = places.pop() if places else None
    if decimals is None:
        raise error(422, "unknown_currency", f"{quoted(currency)} is neither an ISO 4217 currency watcherd knows nor a "
                                             "configured coin", "currency")
    if not isinstance(body.get("amount"), str):
        raise error(400, "invalid_field", "required: a decimal string such as \"49.00\"", "amount")
    amount = _amount(body["amount"], decimals, "amount")
    if amount <= 0:
        raise error(400, "invalid_field", "must be greater than zero", "amount")
    methods = body.get("payment_methods", processor.method_ids())
    if not isinstance(methods, list) or not methods or not all(isinstance(m, str) for m in methods) \
            or len(set(methods)) != len(methods):
        raise error(400, "invalid_field", "must be a non-empty list of distinct method ids such as \"btc\", "
                                          "\"eth:USDC\"", "payment_methods")
    for method in methods:
        try:
            processor.method_parts(method)
        except InvoiceError as exc:
            raise error(422, "unknown_method", str(exc), "payment_methods") from None
    given = body.get("rates", {})
    if not isinstance(given, dict) or not all(isinstance(v, str) for v in given.values()):
        raise error(400, "invalid_field", "must map coins to decimal strings: {\"BTC\": \"50000.00\"}", "rates")
    return {"currency": currency, "decimals": decimals, "amount": amount, "methods": methods,
            "given": {asset: _given_rate(asset, text) for asset, text in given.items()}, **_common_fields(body)}


def _given_rate(asset: str, text: str) -> Fraction:
    """A rate the request brings: a positive decimal of at most 40 digits, between 1e-18 and 1e18."""
    try:
        value = parse_decimal(text, max_digits=40)
    except ValueError:
        value = Decimal(0)
    if not Decimal("1e-18") <= value <= Decimal("1e18"):
        raise error(400, "invalid_field", f"{quoted(asset)}: must be a positive decimal string between 1e-18 and "
                                          "1e18, e.g. \"50000.00\"", "rates")
    return Fraction(value)


def quote_methods(params: dict[str, Any], processor: Processor, rates: Quotes | None) -> dict[str, Fraction]:
    """Each method's rate, now: the currency's minor units per atomic unit of the method's coin."""
    quotes: dict[str, Fraction] = {}
    for method in params["methods"]:
        chain_name, asset = processor.method_parts(method)
        per_coin = _rate(params["currency"], asset, params["given"], rates)
        quotes[method] = per_coin * 10 ** params["decimals"] / 10 ** processor.chains[chain_name].assets[asset]
    return quotes


def _rate(currency: str, asset: str, given: dict[str, Fraction], rates: Quotes | None) -> Fraction:
    """Whole currency units per whole coin: 1 for the coin itself, the request's, or the rate book's now."""
    if asset == currency:
        return Fraction(1)
    if asset in given:
        return given[asset]
    if rates is None:
        raise error(422, "no_rate_source", f"no exchange rate for {asset} in {currency}: configure [rates] or "
                                           "pass \"rates\" in the request", "rates")
    try:
        return rates.quote(currency, asset)
    except RatesUnavailable as exc:
        raise error(503, "rates_unavailable", f"{exc}; nothing was created, retry later") from None


async def create_invoice(request: web.Request) -> web.Response:
    processor = request.app[PROCESSOR]
    body = await _json_body(request)
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 1 <= len(key) <= 200:
        raise error(400, "invalid_field", "must be 1 to 200 characters", "Idempotency-Key")
    # a replayed request gets the invoice it created the first time, with 200 instead of 201
    earlier = await processor.store.invoice_by_idempotency_key(key) if key is not None else None
    try:
        if "currency" in body:
            params = parse_priced_request(body, processor)
            # what was asked, not the rates it got: a retry while rates are stale still gets its invoice
            digest = json.dumps(["priced", {k: str(v) if isinstance(v, Fraction) else v for k, v in params.items()
                                            if k != "given"}, sorted((a, str(r)) for a, r in params["given"].items())],
                                sort_keys=True)
            if earlier is not None and earlier.request_digest == digest:
                invoice = await processor.invoice_json(earlier.id) or {}
            else:
                if earlier is not None:
                    raise InvoiceError("Idempotency-Key", "was already used for a different request")
                quotes = quote_methods(params, processor, request.app[RATES]())
                del params["methods"], params["given"]
                invoice = await processor.create_priced_invoice(**params, quotes=quotes, request_digest=digest,
                                                                idempotency_key=key)
        else:
            invoice = await processor.create_invoice(**_parse_invoice_request(body, processor), idempotency_key=key)
    except InvoiceError as exc:
        status = 409 if exc.field == "Idempotency-Key" else 400
        raise error(status, "conflict" if status == 409 else "invalid_field", str(exc), exc.field) from None
    return web.json_response(invoice, status=200 if earlier is not None else 201,
                             headers={"Location": f"/v1/invoices/{invoice['id']}"})


async def activate_method(request: web.Request) -> web.Response:
    """The customer (through the billing system) picked a coin: it gets its address now."""
    try:
        invoice = await request.app[PROCESSOR].activate_method(request.match_info["id"], request.match_info["method"],
                                                               capped=False)  # the billing system: its own call
    except KeyError:
        raise error(404, "not_found", f"no invoice {quoted(request.match_info['id'])}", "id") from None
    except InvoiceError as exc:
        raise error(422, "invalid_method", str(exc), "method") from None
    return web.json_response(invoice)


async def show_invoice(request: web.Request) -> web.Response:
    invoice = await request.app[PROCESSOR].invoice_json(request.match_info["id"])
    if invoice is None:
        raise error(404, "not_found", f"no invoice {quoted(request.match_info['id'])}", "id")
    return web.json_response(invoice)


async def list_invoices(request: web.Request) -> web.Response:
    processor = request.app[PROCESSOR]
    status = request.query.get("status")
    if status is not None and status not in Status.__members__.values():
        raise error(400, "invalid_field", f"one of {', '.join(s.value for s in Status)}", "status")
    try:
        limit = parse_whole(request.query.get("limit", "100"), max_digits=4)
    except ValueError:
        limit = 0
    if not 1 <= limit <= 1000:
        raise error(400, "invalid_field", "a whole number from 1 to 1000", "limit")
    rows = await processor.store.invoices(
        status=status, chain=request.query.get("chain"), order_id=request.query.get("order_id"),
        limit=limit, before=request.query.get("before"),
    )
    shown = await processor.invoice_jsons([r.id for r in rows])
    return web.json_response({"invoices": [shown[r.id] for r in rows],
                              "next": rows[-1].id if len(rows) == limit else None})


async def cancel_invoice(request: web.Request) -> web.Response:
    try:
        invoice = await request.app[PROCESSOR].cancel_invoice(request.match_info["id"])
    except KeyError:
        raise error(404, "not_found", f"no invoice {quoted(request.match_info['id'])}", "id") from None
    except InvoiceError as exc:
        raise error(409, "conflict", str(exc), exc.field) from None
    audit("native", "cancel", invoice_id=invoice["id"])
    return web.json_response(invoice)


async def invoice_events(request: web.Request) -> web.Response:
    processor = request.app[PROCESSOR]
    invoice_id = request.match_info["id"]
    if await processor.store.invoice(invoice_id) is None:
        raise error(404, "not_found", f"no invoice {quoted(invoice_id)}", "id")
    events = [json.loads(e["payload"]) for e in await processor.store.events_for(invoice_id)]
    return web.json_response({"events": events})


async def list_webhooks(request: web.Request) -> web.Response:
    state = request.query.get("state")
    if state not in (None, "pending", "delivered", "failed"):
        raise error(400, "invalid_field", "one of pending, delivered, failed", "state")
    rows = await request.app[PROCESSOR].store.deliveries(
        transport=request.query.get("transport"), state=state, invoice_id=request.query.get("invoice_id"),
    )
    return web.json_response({"deliveries": [views.delivery_json(r) for r in rows]})


async def redeliver_webhook(request: web.Request) -> web.Response:
    processor = request.app[PROCESSOR]
    async with processor.store.transaction():
        found = await processor.store.redeliver(request.match_info["event_id"], processor.clock())
    if not found:
        raise error(404, "not_found", f"no event {quoted(request.match_info['event_id'])}", "event_id")
    audit("native", "redeliver", event_id=request.match_info["event_id"])
    processor.wake_outbox()
    return web.json_response({"event_id": request.match_info["event_id"], "queued": True}, status=202)


async def openapi_document(request: web.Request) -> web.Response:
    return web.json_response(openapi.document(sorted(request.app[PROCESSOR].chains)))


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready or not for anyone (a load balancer's probe); the reasons (host names, heights, lease tokens) only
    with the API token."""
    report = await request.app[READINESS]()
    shown = report if authorized(request, request.app[TOKEN]) else {"ready": report["ready"]}
    return web.json_response(shown, status=200 if report["ready"] else 503)
