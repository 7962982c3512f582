"""Greenfield's webhooks API: register, update and delete webhooks, list their deliveries, see what was sent,
and redeliver. Each registered webhook is delivered from the durable outbox (delivery/hooks.py).

A store has MAX_HOOKS webhooks at most; a URL naming an internal address literally is refused here (a host name
is judged at each connection, delivery/addresses.py), and a delivery's error is shown as one of the sender's
generic reasons, never with a host, port or address."""

from __future__ import annotations

import re
import secrets
from typing import Any

from aiohttp import web

from watcherd.compat import greenfield as gf
from watcherd.delivery.addresses import url_refusal
from watcherd.http.api import audit
from watcherd.http.greenfield_common import CONFIG, PROCESSOR, invalid, problem, read_body
from watcherd.store.hooks import MAX_HOOKS

# what a delivery's error may show: the sender's generic reasons (rows from before them show "connection failed")
_SHOWN_ERROR = re.compile(r"HTTP \d{3}|connection refused by policy|connection failed|timeout"
                          r"|webhook deleted( or disabled)?")

# --- webhooks ----------------------------------------------------------------------------------------

def _hook_json(hook: dict[str, Any]) -> dict[str, Any]:
    return {"id": hook["id"], "enabled": hook["enabled"], "automaticRedelivery": hook["automatic_redelivery"],
            "url": hook["url"], "authorizedEvents": {"everything": hook["events"] is None,
                                                     "specificEvents": hook["events"] or []}}


def _hook_fields(request: web.Request, body: dict[str, Any], current: dict[str, Any] | None) -> dict[str, Any]:
    url = body.get("url", current["url"] if current else None)
    try:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")) or len(url) > 2000:
            raise ValueError(url)
        refused = url_refusal(url, request.app[CONFIG].hook_allow_networks)
    except ValueError:
        raise invalid("url", "must be an http(s) URL") from None
    if refused is not None:
        raise invalid("url", f"must not point at an internal address ({refused}); the operator may allow its "
                             "network in [greenfield] hook_allow_networks")
    flags = {}
    for name, key in (("enabled", "enabled"), ("automaticRedelivery", "automatic_redelivery")):
        value = body.get(name)
        if value is None:
            value = current[key] if current else True
        if not isinstance(value, bool):
            raise invalid(name, "must be true or false")
        flags[key] = value
    events: list[str] | None = current["events"] if current else None
    authorized = body.get("authorizedEvents")
    if authorized is not None:
        if not isinstance(authorized, dict):
            raise invalid("authorizedEvents", "must be an object")
        specific = authorized.get("specificEvents") or []
        if not isinstance(specific, list) or not all(isinstance(e, str) for e in specific):
            raise invalid("authorizedEvents.specificEvents", "must be a list of event types")
        events = None if authorized.get("everything", True) is not False else specific
    secret = body.get("secret")
    if secret is not None and not isinstance(secret, str):
        raise invalid("secret", "must be a string")
    return {"url": url, "events": events, "secret": secret or None, **flags}


async def list_hooks(request: web.Request) -> web.Response:
    return web.json_response([_hook_json(h) for h in await request.app[PROCESSOR].store.hooks()])


async def create_hook(request: web.Request) -> web.Response:
    processor = request.app[PROCESSOR]
    fields = _hook_fields(request, await read_body(request), None)
    secret = fields["secret"] or secrets.token_urlsafe(24)  # generated when none is sent, returned once here
    hook_id = secrets.token_hex(11)
    async with processor.store.transaction():  # counted in the transaction that adds one: concurrent creates queue
        if await processor.store.hook_count() >= MAX_HOOKS:
            raise invalid("", f"a store has at most {MAX_HOOKS} webhooks: delete one first")
        await processor.store.add_hook(hook_id, fields["url"], secret, enabled=fields["enabled"],
                                       automatic_redelivery=fields["automatic_redelivery"], events=fields["events"],
                                       now=int(processor.clock()))
        hook = await processor.store.hook(hook_id)
    assert hook is not None
    audit("greenfield", "webhook_create", webhook_id=hook_id)
    return web.json_response({**_hook_json(hook), "secret": secret})


async def _hook(request: web.Request) -> dict[str, Any]:
    hook = await request.app[PROCESSOR].store.hook(request.match_info["webhookId"])
    if hook is None:
        raise problem(404, "webhook-not-found", f"no webhook {request.match_info['webhookId']!r}")
    return hook


async def show_hook(request: web.Request) -> web.Response:
    return web.json_response(_hook_json(await _hook(request)))


async def update_hook(request: web.Request) -> web.Response:
    processor = request.app[PROCESSOR]
    current = await _hook(request)
    fields = _hook_fields(request, await read_body(request), current)
    async with processor.store.transaction():
        await processor.store.update_hook(current["id"], fields["url"], fields["secret"] or current["secret"],
                                          enabled=fields["enabled"],
                                          automatic_redelivery=fields["automatic_redelivery"], events=fields["events"])
        hook = await processor.store.hook(current["id"])
    assert hook is not None
    audit("greenfield", "webhook_update", webhook_id=hook["id"])
    return web.json_response(_hook_json(hook))


async def delete_hook(request: web.Request) -> web.Response:
    processor = request.app[PROCESSOR]
    hook = await _hook(request)
    async with processor.store.transaction():
        await processor.store.delete_hook(hook["id"], int(processor.clock()))
    audit("greenfield", "webhook_delete", webhook_id=hook["id"])
    return web.json_response({})


def _delivery_json(d: dict[str, Any]) -> dict[str, Any]:
    if d["delivered_at"] is not None:
        status = "HttpSuccess"
    elif d["http_code"] is not None:
        status = "HttpError"
    else:
        status = "Failed"  # not answered (yet): a network error, or not attempted so far
    return {"id": d["id"], "timestamp": d["created_at"], "deliveryTime": d["last_attempt_at"] or d["created_at"],
            "httpCode": d["http_code"], "errorMessage": _shown_error(d["last_error"]), "status": status}


def _shown_error(error: str | None) -> str:
    if not error:
        return ""
    return error if _SHOWN_ERROR.fullmatch(error) else "connection failed"


def _compat_only(request: web.Request) -> bool:
    """Deliveries of invoices outside the key's scope (queued while it was "all") are not shown, nor redelivered."""
    return request.app[CONFIG].scope == "compat"


async def list_deliveries(request: web.Request) -> web.Response:
    hook = await _hook(request)
    rows = await request.app[PROCESSOR].store.hook_deliveries(hook["id"], compat_only=_compat_only(request))
    return web.json_response([_delivery_json(d) for d in rows])


async def _delivery(request: web.Request) -> dict[str, Any]:
    hook = await _hook(request)
    delivery = await request.app[PROCESSOR].store.hook_delivery(hook["id"], request.match_info["deliveryId"],
                                                                compat_only=_compat_only(request))
    if delivery is None:
        raise problem(404, "webhookdelivery-not-found", f"no delivery {request.match_info['deliveryId']!r}")
    return delivery


async def show_delivery(request: web.Request) -> web.Response:
    return web.json_response(_delivery_json(await _delivery(request)))


async def delivery_request(request: web.Request) -> web.Response:
    delivery = await _delivery(request)
    return web.Response(text=delivery["body"], content_type="application/json")


async def redeliver(request: web.Request) -> web.Response:
    """A new delivery of the same event: its own id, `isRedelivery` true, `originalDeliveryId` the first one's."""
    processor = request.app[PROCESSOR]
    original = await _delivery(request)
    first = original["original_id"] or original["id"]
    delivery_id = gf.new_delivery_id()
    async with processor.store.transaction():
        await processor.store.add_hook_delivery(
            delivery_id, original["hook_id"], original["url"], original["invoice_id"], original["type"],
            gf.redelivery_body(original["body"], delivery_id, first), int(processor.clock()), original_id=first,
        )
    audit("greenfield", "redeliver", webhook_id=original["hook_id"], delivery_id=delivery_id,
          original_delivery_id=first, invoice_id=original["invoice_id"])
    processor.wake_outbox()
    return web.json_response(delivery_id)
