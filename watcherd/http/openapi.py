"""The native API and the payment page's routes described as OpenAPI 3.0, served at /openapi.json (a test keeps
it in sync with the routes and fuzzes the live daemon against it)."""

from __future__ import annotations

from typing import Any

from watcherd import __version__
from watcherd.core.invoices import Status

_STRING = {"type": "string"}
_NULLABLE_STRING = {"type": "string", "nullable": True}
_TIME = {"type": "string", "format": "date-time", "nullable": True}
_ATOMIC = {"type": "string", "pattern": "^[0-9]+$", "description": "an integer amount in atomic units"}
_DECIMAL = {"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]+)?$"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    why = {400: "invalid request", 401: "missing or wrong bearer token", 404: "not found", 405: "wrong method",
           409: "conflict", 413: "body too large", 415: "not JSON",
           422: "unknown chain, asset, currency or method, or an amount with more decimals than it has",
           503: "the store cannot be written right now, or (priced invoices) no fresh exchange rate"}
    return {str(s): _json(_ref("Error"), why[s]) for s in statuses}


_COMMON = (400, 401, 405, 413, 503)

_PAYMENT: dict[str, Any] = {
    "type": "object",
    "required": ["txid", "vout", "chain", "method", "asset", "amount", "amount_atomic", "value", "rate",
                 "confirmations", "block_height", "block_hash", "first_seen_at", "confirmed_at", "status"],
    "properties": {
        "txid": _STRING, "vout": {"type": "integer"}, "chain": _STRING, "method": _STRING, "asset": _STRING,
        "amount": _DECIMAL, "amount_atomic": _ATOMIC,
        "value": {**_DECIMAL, "description": "what it counts for, in the invoice currency"},
        "rate": {**_DECIMAL, "nullable": True,
                 "description": "the invoice currency per coin it was valued at (null: another asset, not counted)"},
        "confirmations": {"type": "integer"}, "block_height": {"type": "integer", "nullable": True},
        "block_hash": _NULLABLE_STRING, "first_seen_at": _TIME, "confirmed_at": _TIME,
        "status": {"type": "string", "enum": ["pending", "confirmed", "replaced", "wrong_asset"]},
    },
}

_PAYMENT_METHOD: dict[str, Any] = {
    "type": "object",
    "required": ["method", "chain", "asset", "activated", "rate", "amount", "amount_atomic",
                 "due", "due_atomic", "confirmations_required", "address", "payment_uri"],
    "properties": {
        "method": {**_STRING, "description": "the chain's name for its own asset, <chain>:<TOKEN> for a token"},
        "chain": _STRING, "asset": _STRING, "activated": {"type": "boolean"},
        "address": {**_NULLABLE_STRING, "description": "null until the method is picked"},
        "rate": {**_DECIMAL, "description": "invoice currency per coin, locked at creation"},
        "amount": _DECIMAL, "amount_atomic": _ATOMIC, "due": _DECIMAL, "due_atomic": _ATOMIC,
        "payment_uri": _NULLABLE_STRING, "confirmations_required": {"type": "integer", "nullable": True},
    },
}

_INVOICE = {
    "type": "object",
    "required": ["id", "chain", "asset", "address", "amount", "amount_atomic", "amount_received",
                 "amount_received_atomic", "amount_confirmed", "amount_confirmed_atomic", "status", "exception",
                 "payment_uri", "confirmations_required", "finality", "order_id", "metadata", "created_at",
                 "expires_at", "paid_at", "cancelled_at", "currency", "checkout_url", "payment_methods", "payments",
                 "due", "due_atomic", "redirect_url", "manually_marked"],
    "properties": {
        "id": _STRING, "chain": _NULLABLE_STRING, "asset": _NULLABLE_STRING, "address": _NULLABLE_STRING,
        "due": _DECIMAL, "due_atomic": _ATOMIC, "redirect_url": _NULLABLE_STRING,
        "amount": _DECIMAL, "amount_atomic": _ATOMIC, "amount_received": _DECIMAL, "amount_received_atomic": _ATOMIC,
        "amount_confirmed": _DECIMAL, "amount_confirmed_atomic": _ATOMIC,
        "status": {"type": "string", "enum": [s.value for s in Status]},
        "exception": _NULLABLE_STRING, "payment_uri": _NULLABLE_STRING,
        "manually_marked": {"type": "boolean", "description": "marked paid or invalid by hand (Greenfield's mark "
                            "status), whatever the payments say"},
        "confirmations_required": {"type": "integer", "nullable": True},
        "finality": {"type": "string", "enum": ["finalized"], "nullable": True},
        "order_id": _NULLABLE_STRING, "metadata": {"type": "object"},
        "created_at": _TIME, "expires_at": _TIME, "paid_at": _TIME, "cancelled_at": _TIME,
        "currency": {**_STRING, "description": "what the invoice is priced in"},
        "checkout_url": {**_STRING, "description": "the customer's payment page"},
        "payment_methods": {"type": "array", "items": _ref("PaymentMethod")},
        "payments": {"type": "array", "items": _ref("Payment")},
    },
}

_INVOICE_REQUEST: dict[str, Any] = {
    "type": "object",
    "required": ["chain"],
    "additionalProperties": False,
    "properties": {
        "chain": {"type": "string", "minLength": 1, "description": "a configured chain name"},
        "asset": {"type": "string", "description": "default: the chain's native asset"},
        "amount": {**_DECIMAL, "description": "give amount or amount_atomic, not both"},
        "amount_atomic": _ATOMIC,
        **(_COMMON_REQUEST := {
            "order_id": {"type": "string", "maxLength": 200},
            "expires_in": {"type": "integer", "minimum": 1, "maximum": 30 * 24 * 3600},
            "metadata": {"type": "object"},
            "redirect_url": {"type": "string", "maxLength": 2000, "description": "where the payment page's "
                             "button leads once paid (http or https)"},
        }),
    },
}

_PRICED_REQUEST: dict[str, Any] = {
    "type": "object",
    "required": ["currency", "amount"],
    "additionalProperties": False,
    "properties": {
        "currency": {"type": "string", "minLength": 1, "description": "an ISO 4217 code (USD) or a coin's (BTC)"},
        "amount": {**_DECIMAL, "description": "in the currency, at most its minor units' decimals"},
        "payment_methods": {"type": "array", "minItems": 1, "uniqueItems": True, "items": _STRING,
                            "description": "method ids (\"btc\", \"eth:USDC\"); default: every configured one"},
        "rates": {"type": "object", "additionalProperties": _DECIMAL,
                  "description": "currency per coin, when the billing system brings its own rates"},
        **_COMMON_REQUEST,
    },
}

_EVENT = {
    "type": "object",
    "required": ["id", "type", "created_at", "invoice"],
    "properties": {"id": _STRING, "type": _STRING, "created_at": _TIME, "invoice": _ref("Invoice")},
}

_DELIVERY = {
    "type": "object",
    "required": ["id", "type", "invoice_id", "chain", "transport", "created_at", "attempts", "next_attempt_at",
                 "delivered_at", "failed_at", "last_error"],
    "properties": {
        "id": {**_STRING, "description": "the event's id"}, "type": _STRING, "invoice_id": _STRING,
        "chain": {**_NULLABLE_STRING, "description": "the event's: its invoice's first picked method's (null: none)"},
        "transport": {"type": "string", "enum": ["webhook", "mqtt"]}, "created_at": _TIME,
        "attempts": {"type": "integer"},
        "next_attempt_at": {**_TIME, "description": "null once delivered or given up on"},
        "delivered_at": _TIME, "failed_at": _TIME, "last_error": _NULLABLE_STRING,
    },
}

# The payment page's JSON (watcherd/http/page/public.py): what a customer may see of an invoice, no metadata.
_PUBLIC_INVOICE = {
    "type": "object",
    "required": ["id", "status", "exception", "currency", "amount", "order_id", "expires_at", "paid_at",
                 "redirect_url", "payment_methods", "payments"],
    "properties": {
        "id": _STRING, "status": {"type": "string", "enum": [s.value for s in Status]},
        "exception": _NULLABLE_STRING, "currency": _STRING, "amount": _DECIMAL, "due": _DECIMAL,
        "order_id": _NULLABLE_STRING, "expires_at": _TIME, "paid_at": _TIME, "redirect_url": _NULLABLE_STRING,
        "payment_methods": {"type": "array", "items": {
            "type": "object",
            "required": ["method", "chain", "asset", "activated", "address", "amount", "due", "payment_uri",
                         "confirmations_required", "rate"],
            "properties": {key: _PAYMENT_METHOD["properties"][key] for key in (
                "method", "chain", "asset", "activated", "address", "amount", "due", "payment_uri",
                "confirmations_required", "rate")},
        }},
        "payments": {"type": "array", "items": {
            "type": "object",
            "required": ["txid", "method", "asset", "amount", "value", "confirmations", "status", "first_seen_at"],
            "properties": {key: _PAYMENT["properties"][key] for key in (
                "txid", "method", "asset", "amount", "value", "confirmations", "status", "first_seen_at")},
        }},
    },
}

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {
        "type": "object", "required": ["code", "message"],
        "properties": {"code": _STRING, "message": _STRING, "field": _STRING},
    }},
}

_READINESS = {
    "type": "object",
    "required": ["ready"],  # the rest only with the API token
    "properties": {"ready": {"type": "boolean"}, "store_writable": {"type": "boolean"},
                   "chains": {"type": "object"},
                   "rates_stale": {"type": "array", "items": _STRING,
                                   "description": "with [rates]: the pairs with no fresh rate (priced invoices in "
                                                  "them answer 503)"}},
}


_INVOICE_LINKS = {
    name: {"operationId": operation, "parameters": {"id": "$response.body#/id"}}
    for name, operation in (("GetInvoice", "getInvoice"), ("CancelInvoice", "cancelInvoice"),
                            ("InvoiceEvents", "invoiceEvents"))
}


def _path_id(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": _STRING}


def _query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema}


_PATHS: dict[str, Any] = {
    "/v1/invoices": {
        "post": {
            "summary": "Create an invoice with a fresh address",
            "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                            "schema": {"type": "string", "minLength": 1, "maxLength": 200}}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {"oneOf": [
                _ref("InvoiceRequest"), _ref("PricedInvoiceRequest")]}}}},
            "responses": {"201": {**_json(_ref("Invoice"), "created"), "links": _INVOICE_LINKS},
                          "200": _json(_ref("Invoice"), "a retry with the same Idempotency-Key"),
                          **_errors(*_COMMON, 409, 415, 422)},
            "description": "The coin form (chain, amount) takes an address at once; the priced form (currency, "
                           "amount, payment_methods) locks each method's rate now (503 while rates are stale) and "
                           "takes an address only when a method is picked.",
        },
        "get": {
            "summary": "List invoices, newest first",
            "parameters": [
                _query("status", {"type": "string", "enum": [s.value for s in Status]}), _query("chain", _STRING),
                _query("order_id", _STRING), _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
                _query("before", _STRING),
            ],
            "responses": {"200": _json({"type": "object", "required": ["invoices", "next"], "properties": {
                "invoices": {"type": "array", "items": _ref("Invoice")}, "next": _NULLABLE_STRING}}, "a page"),
                **_errors(*_COMMON)},
        },
    },
    "/v1/invoices/{id}": {
        "get": {"summary": "One invoice", "operationId": "getInvoice", "parameters": [_path_id("id")],
                "responses": {"200": _json(_ref("Invoice"), "the invoice"), **_errors(*_COMMON, 404)}},
    },
    "/v1/invoices/{id}/cancel": {
        "post": {"summary": "Cancel an invoice before money arrived", "operationId": "cancelInvoice",
                 "parameters": [_path_id("id")],
                 "responses": {"200": _json(_ref("Invoice"), "cancelled (or invalid, if money arrives later)"),
                               **_errors(*_COMMON, 404, 409)}},
    },
    "/v1/invoices/{id}/payment-methods/{method}": {
        "post": {"summary": "Pick a payment method: it gets its address (once)", "operationId": "activateMethod",
                 "parameters": [_path_id("id"), _path_id("method")],
                 "responses": {"200": _json(_ref("Invoice"), "the invoice, the method activated"),
                               **_errors(*_COMMON, 404, 422)}},
    },
    "/v1/invoices/{id}/events": {
        "get": {"summary": "Every event of the invoice, as delivered", "operationId": "invoiceEvents",
                "parameters": [_path_id("id")],
                "responses": {"200": _json({"type": "object", "required": ["events"], "properties": {
                    "events": {"type": "array", "items": _ref("Event")}}}, "the events, oldest first"),
                    **_errors(*_COMMON, 404)}},
    },
    "/v1/webhooks": {
        "get": {
            "summary": "The newest 100 deliveries (webhook and MQTT), one row per event and transport",
            "parameters": [_query("state", {"type": "string", "enum": ["pending", "delivered", "failed"]}),
                           _query("invoice_id", _STRING),
                           _query("transport", {"type": "string", "enum": ["webhook", "mqtt"]})],
            "responses": {"200": _json({"type": "object", "required": ["deliveries"], "properties": {
                "deliveries": {"type": "array", "items": _ref("Delivery")}}}, "deliveries"), **_errors(*_COMMON)},
        },
    },
    "/v1/webhooks/{event_id}/redeliver": {
        "post": {"summary": "Deliver an event again on every transport, due now", "parameters": [_path_id("event_id")],
                 "responses": {"202": _json({"type": "object", "required": ["event_id", "queued"], "properties": {
                     "event_id": _STRING, "queued": {"type": "boolean"}}}, "queued"), **_errors(*_COMMON, 404)}},
    },
    "/healthz": {"get": {"summary": "The process is alive", "security": [],
                         "responses": {"200": _json({"type": "object"}, "alive"), **_errors(405)}}},
    "/readyz": {"get": {"summary": "Store writable, every chain connected and caught up; without the token only "
                                   "`ready`", "security": [{}, {"bearer": []}],
                        "responses": {"200": _json(_ref("Readiness"), "ready"),
                                      "503": _json(_ref("Readiness"), "not ready, with the reasons"),
                                      **_errors(405)}}},
    "/openapi.json": {"get": {"summary": "This document", "security": [],
                              "responses": {"200": _json({"type": "object"}, "OpenAPI 3.0"), **_errors(405)}}},
}


def _page_error(description: str, html: bool = False) -> dict[str, Any]:
    """A payment page route's error: the API's error JSON, or (for a browser: no Accept: application/json on the
    page and its form posts) a message page."""
    content: dict[str, Any] = {"application/json": {"schema": _ref("Error")}}
    if html:
        content["text/html"] = {"schema": _STRING}
    return {"description": description, "content": content}


_HTML = {"text/html": {"schema": _STRING}}
_ACCEPT = {"name": "Accept", "in": "header", "required": False,
           "schema": {"type": "string", "enum": ["application/json", "text/html"]},
           "description": "application/json: the public invoice JSON (and JSON errors) instead of a redirect"}

# The customer's payment page (README, "Payment page"): no token, the unguessable invoice id is the key.
_PAGE_PATHS: dict[str, Any] = {
    "/i/{invoice_id}": {"get": {
        "summary": "The payment page (HTML)", "security": [],
        "parameters": [_path_id("invoice_id"), _query("method", _STRING),
                       _query("view", {"type": "string", "enum": ["modal"]})],
        "responses": {"200": {"description": "the page", "content": _HTML},
                      "404": {"description": "no such invoice", "content": _HTML},
                      "503": {"description": "the store is unavailable", "content": _HTML},
                      "400": _page_error("invalid request")}}},
    "/i/{invoice_id}/methods/{method}": {"post": {
        "summary": "The customer picks a coin: it gets its address (once)", "security": [],
        "parameters": [_path_id("invoice_id"), _path_id("method"), _ACCEPT,
                       _query("view", {"type": "string", "enum": ["modal"]})],
        "responses": {"200": _json(_ref("PublicInvoice"), "with Accept: application/json: the public invoice"),
                      "303": {"description": "otherwise: back to the page showing that coin"},
                      "400": _page_error("invalid request"),
                      "404": _page_error("no such invoice", html=True),
                      "409": _page_error("three methods picked and nothing paid yet", html=True),
                      "422": _page_error("a method the invoice does not offer, or an invoice no longer open",
                                         html=True),
                      "503": _page_error("the store is unavailable", html=True)}}},
    "/i/{invoice_id}/status": {"get": {
        "summary": "The public invoice JSON, its version as the ETag", "security": [],
        "parameters": [_path_id("invoice_id"), {"name": "If-None-Match", "in": "header", "required": False,
                                                "schema": _STRING}],
        "responses": {"200": _json(_ref("PublicInvoice"), "the public invoice"),
                      "304": {"description": "If-None-Match is its version: unchanged"},
                      "400": _page_error("invalid request"), "404": _page_error("no such invoice")}}},
    "/i/{invoice_id}/live": {"get": {
        "summary": "Server-Sent Events: the public invoice JSON at each change, until it is final", "security": [],
        "parameters": [_path_id("invoice_id"), _query("v", _STRING),
                       {"name": "Last-Event-ID", "in": "header", "required": False, "schema": _STRING}],
        "responses": {"200": {"description": "`id: <version>` + `data: <public invoice JSON>` events",
                              "content": {"text/event-stream": {"schema": {  # one event (OpenAPI 3.0's reading)
                                  "type": "object", "properties": {
                                      "id": _STRING, "retry": {"type": "integer"},
                                      "data": {"type": "string", "contentMediaType": "application/json",
                                               "contentSchema": _ref("PublicInvoice")}}}}}},
                      "204": {"description": "final, and the client shows that version already: stop"},
                      "400": _page_error("invalid request"), "404": _page_error("no such invoice"),
                      "503": _page_error("too many live streams open: poll the status instead")}}},
    "/i/{invoice_id}/qr/{method}.svg": {"get": {
        "summary": "The picked method's payment URI as an SVG QR code", "security": [],
        "parameters": [_path_id("invoice_id"), _path_id("method")],
        "responses": {"200": {"description": "the QR code", "content": {"image/svg+xml": {"schema": _STRING}}},
                      "400": _page_error("invalid request"),
                      "404": _page_error("no such invoice, or no payment URI for that method")}}},
}


def document(chains: list[str] | None = None) -> dict[str, Any]:
    """The document; with the configured `chains` named, so that a client (or a fuzzer) knows the valid ones."""
    request = _INVOICE_REQUEST
    if chains:
        chain = {**_INVOICE_REQUEST["properties"]["chain"], "enum": sorted(chains)}
        request = {**_INVOICE_REQUEST, "properties": {**_INVOICE_REQUEST["properties"], "chain": chain}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "watcherd", "version": __version__,
                 "description": "Watch-only payment watcher: invoices in, signed webhooks out."},
        "security": [{"bearer": []}],
        "paths": {**_PATHS, **_PAGE_PATHS},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Invoice": _INVOICE, "InvoiceRequest": request, "PricedInvoiceRequest": _PRICED_REQUEST,
                        "Payment": _PAYMENT,
                        "PaymentMethod": _PAYMENT_METHOD, "Event": _EVENT, "Delivery": _DELIVERY, "Error": _ERROR,
                        "Readiness": _READINESS, "PublicInvoice": _PUBLIC_INVOICE},
        },
    }
