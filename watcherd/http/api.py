"""The HTTP API billing systems call: create, read, list and cancel invoices; inspect and redeliver webhooks.

Every error is JSON: {"error": {"code": ..., "message": ..., "field": ...}} with a 4xx status naming the
offending field, so an integrator sees at once what to fix.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal
from fractions import Fraction
from typing import Any, Protocol

from aiohttp import web

from watcherd.core.currencies import minor_units
from watcherd.core.invoices import Status
from watcherd.core.money import MAX_ATOMIC, to_atomic
from watcherd.exceptions import STORE_ERRORS, InvoiceError, RatesUnavailable
from watcherd.http import checkout, limits, openapi
from watcherd.ledger import Processor

log = logging.getLogger(__name__)

MAX_EXPIRES_IN = 30 * 24 * 3600
MAX_METADATA_BYTES = 16 * 1024
COMMON_FIELDS = {"order_id", "expires_in", "metadata", "redirect_url"}
INVOICE_FIELDS = {"chain", "asset", "amount", "amount_atomic", *COMMON_FIELDS}
PRICED_FIELDS = {"currency", "amount", "payment_methods", "rates", *COMMON_FIELDS}
PROCESSOR: web.AppKey[Processor] = web.AppKey("processor", Processor)
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json"})
PUBLIC_PREFIX = "/i/"  # the payment pages (watcherd/http/checkout.py): an invoice id is the only key
READINESS: web.AppKey[Callable[[], Awaitable[dict[str, Any]]]] = web.AppKey("readiness")
RATES: web.AppKey[Callable[[], Quotes | None]] = web.AppKey("rates")  # the current one: a reload replaces it


class Quotes(Protocol):
    """Exchange rates (watcherd.rates.RateBook): whole `currency` units per whole coin, or RatesUnavailable."""

    def quote(self, currency: str, asset: str) -> Fraction: ...


def error(status: int, code: str, message: str, field: str | None = None) -> web.HTTPException:
    body: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        body["field"] = field
    cls = {400: web.HTTPBadRequest, 401: web.HTTPUnauthorized, 404: web.HTTPNotFound,
           409: web.HTTPConflict, 422: web.HTTPUnprocessableEntity, 503: web.HTTPServiceUnavailable}[status]
    return cls(text=json.dumps({"error": body}), content_type="application/json")


def make_app(processor: Processor, token: str, readiness: Callable[[], Awaitable[dict[str, Any]]],
             rates: Callable[[], Quotes | None] = lambda: None,
             compat: Sequence[tuple[str, web.Application]] = (),
             embed_origins: Sequence[str] = ("*",)) -> web.Application:
    """The native API; `compat` mounts the compatible APIs (prefix, sub-application), each with its own
    authentication and error shapes."""
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
        if public:
            return await handler(request)
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
            raise error(401, "unauthorized", "missing or wrong bearer token")
        return await handler(request)

    @web.middleware
    async def json_errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
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

    app = web.Application(middlewares=[json_errors, auth, limits.body_in_time], client_max_size=64 * 1024)
    app[PROCESSOR] = processor
    app[READINESS] = readiness
    app[RATES] = rates
    checkout.setup(app, processor, embed_origins)
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


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise error(400, "invalid_json", "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise error(400, "invalid_json", "the request body must be a JSON object")
    return body


def _parse_invoice_request(body: dict[str, Any], processor: Processor) -> dict[str, Any]:
    unknown = sorted(set(body) - INVOICE_FIELDS)
    if unknown:
        raise error(400, "unknown_field", f"unknown field {unknown[0]!r}", unknown[0])
    chain_name = body.get("chain")
    if not isinstance(chain_name, str) or not chain_name:
        raise error(400, "invalid_field", "required: the configured chain name, e.g. \"btc\"", "chain")
    chain = processor.chains.get(chain_name)
    if chain is None:
        raise error(422, "unknown_chain", f"no chain {chain_name!r}; configured: {sorted(processor.chains)}",
                    "chain")
    asset = body.get("asset", chain.asset)
    if not isinstance(asset, str) or asset not in chain.assets:
        raise error(422, "unknown_asset", f"{chain_name} has no asset {asset!r}; configured: {sorted(chain.assets)}",
                    "asset")
    decimals = chain.assets[asset]
    if ("amount" in body) == ("amount_atomic" in body):
        raise error(400, "invalid_field", "give exactly one of amount (decimal string) or amount_atomic", "amount")
    if "amount" in body:
        if not isinstance(body["amount"], str):
            raise error(400, "invalid_field", "must be a decimal string such as \"0.015\" (not a JSON number, "
                                              "which loses precision)", "amount")
        try:
            amount = to_atomic(body["amount"], decimals)
        except ValueError as exc:
            raise error(400, "invalid_field", str(exc), "amount") from None
    else:
        raw = body["amount_atomic"]
        if isinstance(raw, bool) or not isinstance(raw, (int, str)) or not str(raw).isdigit():
            raise error(400, "invalid_field", "must be a whole number of atomic units", "amount_atomic")
        if len(str(raw)) > len(str(MAX_ATOMIC)) or int(raw) > MAX_ATOMIC:
            raise error(400, "invalid_field", "is more than any chain can carry", "amount_atomic")
        amount = int(raw)
    field = "amount" if "amount" in body else "amount_atomic"
    if amount <= 0:
        raise error(400, "invalid_field", "must be greater than zero", field)
    return {"chain_name": chain_name, "asset": asset, "amount": amount, **_common_fields(body)}


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
        raise error(400, "unknown_field", f"unknown field(s) {', '.join(unknown)}; a priced invoice takes "
                                          f"{', '.join(sorted(PRICED_FIELDS))}", unknown[0])
    currency = body["currency"]
    if not isinstance(currency, str) or not currency:
        raise error(400, "invalid_field", "must be a currency code such as \"USD\" (or a coin's, \"BTC\")", "currency")
    decimals = minor_units(currency)
    if decimals is None:  # a coin: its decimals, if every chain that has it agrees
        places = {chain.assets[currency] for chain in processor.chains.values() if currency in chain.assets}
        if len(places) > 1:
            raise error(422, "ambiguous_currency", f"{currency!r} has different decimals on different chains "
                                                   f"({sorted(places)}): price in a fiat currency", "currency")
        decimals = places.pop() if places else None
    if decimals is None:
        raise error(422, "unknown_currency", f"{currency!r} is neither an ISO 4217 currency watcherd knows nor a "
                                             "configured coin", "currency")
    if not isinstance(body.get("amount"), str):
        raise error(400, "invalid_field", "required: a decimal string such as \"49.00\"", "amount")
    try:
        amount = to_atomic(body["amount"], decimals)
    except ValueError as exc:
        raise error(400, "invalid_field", str(exc), "amount") from None
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
    """A rate the request brings: a positive decimal of sane size (a huge exponent would stall the event loop)."""
    try:
        value = Decimal(text.strip())
    except ArithmeticError:
        value = Decimal(0)
    if not value.is_finite() or value <= 0 or not -18 <= value.adjusted() <= 18 or len(value.as_tuple().digits) > 40:
        raise error(400, "invalid_field", f"{asset}: must be a positive decimal string between 1e-18 and 1e18, "
                                          "e.g. \"50000.00\"", "rates")
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
        raise error(404, "not_found", f"no invoice {request.match_info['id']!r}", "id") from None
    except InvoiceError as exc:
        raise error(422, "invalid_method", str(exc), "method") from None
    return web.json_response(invoice)


async def show_invoice(request: web.Request) -> web.Response:
    invoice = await request.app[PROCESSOR].invoice_json(request.match_info["id"])
    if invoice is None:
        raise error(404, "not_found", f"no invoice {request.match_info['id']!r}", "id")
    return web.json_response(invoice)


async def list_invoices(request: web.Request) -> web.Response:
    processor = request.app[PROCESSOR]
    status = request.query.get("status")
    if status is not None and status not in Status.__members__.values():
        raise error(400, "invalid_field", f"one of {', '.join(s.value for s in Status)}", "status")
    text = request.query.get("limit", "100")
    limit = int(text) if text.isdigit() and len(text) <= 4 else 0
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
        raise error(404, "not_found", f"no invoice {request.match_info['id']!r}", "id") from None
    except InvoiceError as exc:
        raise error(409, "conflict", str(exc), exc.field) from None
    return web.json_response(invoice)


async def invoice_events(request: web.Request) -> web.Response:
    processor = request.app[PROCESSOR]
    invoice_id = request.match_info["id"]
    if await processor.store.invoice(invoice_id) is None:
        raise error(404, "not_found", f"no invoice {invoice_id!r}", "id")
    events = [json.loads(e["payload"]) for e in await processor.store.events_for(invoice_id)]
    return web.json_response({"events": events})


async def list_webhooks(request: web.Request) -> web.Response:
    state = request.query.get("state")
    if state not in (None, "pending", "delivered", "failed"):
        raise error(400, "invalid_field", "one of pending, delivered, failed", "state")
    rows = await request.app[PROCESSOR].store.deliveries(
        transport=request.query.get("transport"), state=state, invoice_id=request.query.get("invoice_id"),
    )
    return web.json_response({"deliveries": rows})


async def redeliver_webhook(request: web.Request) -> web.Response:
    processor = request.app[PROCESSOR]
    async with processor.store.transaction():
        found = await processor.store.redeliver(request.match_info["event_id"], processor.clock())
    if not found:
        raise error(404, "not_found", f"no event {request.match_info['event_id']!r}", "event_id")
    processor.wake_outbox()
    return web.json_response({"event_id": request.match_info["event_id"], "queued": True}, status=202)


async def openapi_document(request: web.Request) -> web.Response:
    return web.json_response(openapi.document(sorted(request.app[PROCESSOR].chains)))


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    report = await request.app[READINESS]()
    return web.json_response(report, status=200 if report["ready"] else 503)
