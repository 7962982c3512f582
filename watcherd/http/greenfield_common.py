"""What the Greenfield handlers share: the app keys, Greenfield's two error shapes, the JSON body reader."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from watcherd.config import GreenfieldConfig
from watcherd.core.money import QUOTED
from watcherd.http import api

CONFIG: web.AppKey[GreenfieldConfig] = web.AppKey("greenfield", GreenfieldConfig)
PROCESSOR = api.PROCESSOR
MAX_TAKE = 1000
PERMISSIONS = ("btcpay.store.canviewinvoices", "btcpay.store.cancreateinvoice", "btcpay.store.canviewstoresettings",
               "btcpay.store.canmodifyinvoices", "btcpay.store.webhooks.canmodifywebhooks")
EVENT_TYPES = ("InvoiceCreated", "InvoiceReceivedPayment", "InvoiceProcessing", "InvoiceExpired", "InvoiceSettled",
               "InvoiceInvalid", "InvoicePaymentSettled")


def problem(status: int, code: str, message: str) -> web.HTTPException:
    cls = {400: web.HTTPBadRequest, 401: web.HTTPUnauthorized, 403: web.HTTPForbidden, 404: web.HTTPNotFound,
           409: web.HTTPConflict, 503: web.HTTPServiceUnavailable}[status]
    return cls(text=json.dumps({"code": code, "message": message[:api.MAX_MESSAGE]}), content_type="application/json")


def invalid(path: str, message: str) -> web.HTTPException:
    return web.HTTPUnprocessableEntity(text=json.dumps([{"path": path[:QUOTED], "message": message[:api.MAX_MESSAGE]}]),
                                       content_type="application/json")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]



async def read_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await api.read_json(request)
    except ValueError as exc:
        raise invalid("", str(exc)) from None
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise invalid("", "the request body must be a JSON object")
    return body
