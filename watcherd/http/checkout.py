"""The hosted payment page's routes, on the API listener and without a token: an invoice id is unguessable, and
the page shows only what the customer paying it needs (watcherd/http/page/public.py).

    GET  /i/{id}                     the page (HTML, server-rendered in the customer's language)
    POST /i/{id}/methods/{method}    choose a coin: a form post (303 back to the page) or JSON (the public invoice)
    GET  /i/{id}/live                Server-Sent Events: the public invoice JSON each time it changes, until final
    GET  /i/{id}/status              the public invoice JSON (polling fallback; ETag / If-None-Match)
    GET  /i/{id}/qr/{method}.svg     the method's payment URI as a QR code
    GET  /i/assets/{name}            the stylesheet and script, content-hashed names, cached for a year

Every answer carries a strict Content-Security-Policy: the page loads nothing but its own stylesheet and script
from this daemon, and talks to nothing else.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from typing import Any
from urllib.parse import quote

from aiohttp import web

from watcherd.config import ChainLabel
from watcherd.exceptions import STORE_ERRORS, InvoiceError, MethodLimit
from watcherd.http.page import public, qr
from watcherd.http.page.render import Assets, qr_shown, render_message, render_page
from watcherd.http.page.strings import Strings, negotiate
from watcherd.ledger import MAX_UNPAID_METHODS, Processor
from watcherd.live import Coalescer, Crowded, Watcher

log = logging.getLogger(__name__)

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}
PAGE_HEADERS = {**SECURITY_HEADERS, "Cache-Control": "no-store", "Vary": "Accept-Language"}
STREAM_HEADERS = {**SECURITY_HEADERS, "Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-store",
                  "X-Accel-Buffering": "no"}  # nginx: pass events through at once
HEARTBEAT_SECONDS = 15.0  # an SSE comment this often keeps proxies from closing an idle stream
RECONNECT_MS = 3000  # the browser's EventSource retry delay
MAX_ID_LENGTH = 128

PROCESSOR: web.AppKey[Processor] = web.AppKey("checkout_processor", Processor)
CLOSING: web.AppKey[asyncio.Event] = web.AppKey("checkout_closing", asyncio.Event)
MODAL_HEADERS: web.AppKey[dict[str, str]] = web.AppKey("checkout_modal_headers", dict)
LIVE_READS: web.AppKey[Coalescer] = web.AppKey("checkout_live_reads", Coalescer)
Labels = Callable[[], Mapping[str, ChainLabel]]  # the current config's (a reload replaces it)
LABELS: web.AppKey[Labels] = web.AppKey("checkout_labels")


def _static() -> tuple[Assets, dict[str, tuple[bytes, str]]]:
    """The stylesheet and the script, read once; named by their content hash so a browser may cache them for
    ever and a new version is a new URL."""
    folder = resources.files("watcherd.http").joinpath("page")
    files: dict[str, tuple[bytes, str]] = {}
    names = []
    for filename, content_type in (("checkout.css", "text/css"), ("checkout.js", "text/javascript")):
        body = folder.joinpath(filename).read_bytes()
        stem, suffix = filename.rsplit(".", 1)
        name = f"{stem}.{hashlib.sha256(body).hexdigest()[:12]}.{suffix}"
        files[name] = (body, content_type)
        names.append(name)
    return Assets(css=names[0], js=names[1]), files


ASSETS, STATIC_FILES = _static()


def setup(app: web.Application, processor: Processor, embed_origins: Sequence[str] = ("*",),
          labels: Labels = dict) -> None:
    """Register the payment page on the API's application (its auth middleware lets /i/ through).
    `embed_origins`: who may frame the page in modal mode (`?view=modal`); never anyone otherwise. `labels`: how
    the page names each chain (display name, test network)."""
    app[PROCESSOR] = processor
    app[LABELS] = labels
    app[MODAL_HEADERS] = {"Content-Security-Policy": CSP.replace("frame-ancestors 'none'",
                                                                 f"frame-ancestors {' '.join(embed_origins)}")}
    app[CLOSING] = asyncio.Event()
    app[LIVE_READS] = Coalescer(processor.invoice_jsons)
    app.on_shutdown.append(_close_streams)
    app.add_routes([
        web.get("/i/assets/{name}", static_file),
        web.get("/i/{invoice_id}", page),
        web.post("/i/{invoice_id}/methods/{method}", activate_method),
        web.get("/i/{invoice_id}/live", live, allow_head=False),  # a HEAD would hold a stream open for nothing
        web.get("/i/{invoice_id}/status", status),
        web.get("/i/{invoice_id}/qr/{method}.svg", qr_code),
    ])


async def _close_streams(app: web.Application) -> None:
    """Shutdown: end every live stream now (the server would otherwise wait for them)."""
    app[CLOSING].set()
    app[PROCESSOR].live.touch_all()


def _json_error(status: int, code: str, message: str, field: str | None = None) -> web.Response:
    """The API's error shape ({"error": {code, message, field}}), for the page's JSON answers."""
    body: dict[str, Any] = {"code": code, "message": message[:500]}  # never what was sent echoed whole
    if field is not None:
        body["field"] = field
    return web.json_response({"error": body}, status=status, headers=SECURITY_HEADERS)


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8", headers=PAGE_HEADERS)


def _message_page(strings: Strings, status: int, title_key: str, message: str, *, root: str,
                  back: str | None = None) -> web.Response:
    response = _html(render_message(strings, ASSETS, title_key, message, root=root, back=back), status)
    if status == 503:
        response.headers["Retry-After"] = "30"
    return response


async def _invoice(request: web.Request) -> dict[str, Any] | None:
    invoice_id = request.match_info["invoice_id"]
    if len(invoice_id) > MAX_ID_LENGTH:
        return None
    return await request.app[PROCESSOR].invoice_json(invoice_id)


def _wants_json(request: web.Request) -> bool:
    return "application/json" in request.headers.get("Accept", "")


async def page(request: web.Request) -> web.Response:
    strings = negotiate(request.headers.get("Accept-Language"))
    try:
        invoice = await _invoice(request)
    except STORE_ERRORS as exc:
        log.error("store unavailable for the payment page: %s", exc)
        return _message_page(strings, 503, "unavailable", strings("msg_unavailable"), root="")
    if invoice is None:
        return _message_page(strings, 404, "not_found", strings("msg_not_found"), root="")
    asked = request.query.get("method")
    shown_qr = qr_shown(invoice, asked)
    if shown_qr is not None and not qr.built(*shown_qr):
        await asyncio.to_thread(qr.build, *shown_qr)  # its 5-10 ms off the event loop
    modal = request.query.get("view") == "modal"
    response = _html(render_page(invoice, strings, ASSETS, asked_method=asked, now=request.app[PROCESSOR].clock(),
                                 modal=modal, labels=request.app[LABELS]()))
    if modal:  # a shop's page frames it: those origins may, no one else
        response.headers.update(request.app[MODAL_HEADERS])
        del response.headers["X-Frame-Options"]
    return response


async def activate_method(request: web.Request) -> web.Response:
    """The customer picked a coin: the method gets its address (once). JSON for the page's script, otherwise
    a 303 back to the page showing that coin (so a reload never posts again)."""
    invoice_id, method = request.match_info["invoice_id"], request.match_info["method"]
    wants_json = _wants_json(request)
    strings = negotiate(request.headers.get("Accept-Language"))
    back = f"../../{quote(invoice_id, safe='')}"
    try:
        if len(invoice_id) > MAX_ID_LENGTH:
            raise KeyError(invoice_id)
        invoice = await request.app[PROCESSOR].activate_method(invoice_id, method)
    except KeyError:
        if wants_json:
            return _json_error(404, "not_found", f"no invoice {invoice_id!r}", "id")
        return _message_page(strings, 404, "not_found", strings("msg_not_found"), root="../../")
    except MethodLimit as exc:
        if wants_json:
            return _json_error(409, "methods_limit", str(exc), exc.field)
        message = strings("methods_limit", n=MAX_UNPAID_METHODS)
        return _message_page(strings, 409, "page_title", message, root="../../", back=back)
    except InvoiceError as exc:
        if wants_json:
            return _json_error(422, "invalid_method", str(exc), exc.field)
        message = strings("cannot_pay_with", method=method)
        return _message_page(strings, 422, "page_title", message, root="../../", back=back)
    except STORE_ERRORS as exc:
        log.error("store unavailable while activating %s on %s: %s", method, invoice_id, exc)
        if wants_json:
            return _json_error(503, "store_unavailable", "the store cannot be written right now; retry later")
        return _message_page(strings, 503, "unavailable", strings("msg_unavailable"), root="../../", back=back)
    if wants_json:
        return web.json_response(public.public_invoice(invoice), headers=PAGE_HEADERS)
    modal = "&view=modal" if request.query.get("view") == "modal" else ""
    raise web.HTTPSeeOther(f"{back}?method={quote(method, safe='')}{modal}", headers=SECURITY_HEADERS)


async def status(request: web.Request) -> web.Response:
    """The public invoice JSON, with its version as the ETag: a poller sending If-None-Match gets a bodiless
    304 while nothing changed."""
    invoice = await _invoice(request)
    if invoice is None:
        return _json_error(404, "not_found", f"no invoice {request.match_info['invoice_id']!r}", "id")
    shown = public.public_invoice(invoice)
    etag = f'"{public.version(shown)}"'
    headers = {**SECURITY_HEADERS, "ETag": etag, "Cache-Control": "no-cache"}
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers=headers)
    return web.json_response(shown, headers=headers)


async def live(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: `id: <version>` + `data: <public invoice JSON>` whenever what the page shows changed,
    a comment every HEARTBEAT_SECONDS, and the end of the stream once the invoice is final (or at shutdown, or
    after the live channel's `max_seconds`: the browser then reconnects with the last version it got).

    The page passes the version it was rendered with (`?v=`; the browser sends `Last-Event-ID` when it
    reconnects), so an unchanged invoice sends nothing. A final invoice the client already shows answers 204,
    which tells EventSource to stop reconnecting. One stream too many (on the invoice or in all) answers 503 and
    closes the connection: EventSource does not retry a 503, and the page's script polls /status instead."""
    invoice_id = request.match_info["invoice_id"]
    try:
        # watch before the first read: a change committed between the two would otherwise go unseen
        with request.app[PROCESSOR].live.watch(invoice_id) as woken:
            return await _stream(request, invoice_id, woken)
    except Crowded:
        response = _json_error(503, "too_many_streams", "too many live streams open; poll the status instead")
        response.headers["Retry-After"] = "30"
        response.force_close()  # its descriptor is what ran short
        return response


async def _stream(request: web.Request, invoice_id: str, woken: Watcher) -> web.StreamResponse:
    processor = request.app[PROCESSOR]
    shown_version = request.headers.get("Last-Event-ID") or request.query.get("v")
    closing = request.app[CLOSING]
    reads = request.app[LIVE_READS]
    loop = asyncio.get_running_loop()
    # spread out: streams opened together (a restart's reconnections) must not all end together again
    ends = loop.time() + processor.live.max_seconds * random.uniform(0.9, 1.0)
    invoice = await _invoice(request)
    if invoice is None:
        return _json_error(404, "not_found", f"no invoice {invoice_id!r}", "id")
    woken.chains = frozenset(m["chain"] for m in invoice["payment_methods"])  # blocks elsewhere change nothing
    shown = public.public_invoice(invoice)
    if public.is_final(shown) and public.version(shown) == shown_version:
        return web.Response(status=204, headers=SECURITY_HEADERS)
    response = web.StreamResponse(headers=STREAM_HEADERS)
    await response.prepare(request)
    try:
        await response.write(f"retry: {RECONNECT_MS}\n\n".encode())
        while not closing.is_set():
            current = public.version(shown)
            if current != shown_version:
                data = json.dumps(shown, separators=(",", ":"))
                await response.write(f"id: {current}\ndata: {data}\n\n".encode())
                shown_version = current
            left = ends - loop.time()
            if public.is_final(shown) or left <= 0:
                break
            try:
                async with asyncio.timeout(min(HEARTBEAT_SECONDS, left)):
                    await woken.wait()
            except TimeoutError:
                if ends > loop.time():
                    await response.write(b": heartbeat\n\n")
                continue
            woken.clear()
            invoice = await reads.read(invoice_id)
            if invoice is None:
                break
            shown = public.public_invoice(invoice)
    except ConnectionError:
        pass  # the customer left
    except STORE_ERRORS as exc:
        log.warning("live stream of %s ended: store unavailable: %s", invoice_id, exc)  # the browser retries
    return response


async def qr_code(request: web.Request) -> web.Response:
    invoice = await _invoice(request)
    method_id = request.match_info["method"]
    method = next((m for m in public.methods(invoice or {}) if m["method"] == method_id), None)
    uri = method.get("payment_uri") if method is not None and method.get("activated") else None
    if not isinstance(uri, str) or not uri:
        return _json_error(404, "not_found", f"no payment URI for {method_id!r} on this invoice", "method")
    return web.Response(body=qr.svg_document(uri, method.get("asset") if method else None),
                        content_type="image/svg+xml",
                        headers={**SECURITY_HEADERS, "Cache-Control": "private, max-age=3600"})


async def static_file(request: web.Request) -> web.Response:
    found = STATIC_FILES.get(request.match_info["name"])
    if found is None:
        return _json_error(404, "not_found", "no such file")
    body, content_type = found
    return web.Response(body=body, content_type=content_type, charset="utf-8",
                        headers={**SECURITY_HEADERS, "Cache-Control": "public, max-age=31536000, immutable"})

