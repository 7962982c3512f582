"""How long one connection may hold the daemon: the listeners' idle and header time, and a request body's.

aiohttp's own default keeps an idle keep-alive connection an hour, and waits for a request body for ever: a
few hundred connections doing nothing then hold every file descriptor. Here a connection that has not sent a
whole request head within KEEPALIVE_SECONDS of connecting (or of its last answer) is closed, and a request
whose body has not arrived within BODY_SECONDS answers 408 and is closed. The live streams have their own
bounds (watcherd/live.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web

# above nginx's default upstream keepalive_timeout (60 s): a proxy reusing an idle connection never races our
# closing it, and still a minute, not an hour
KEEPALIVE_SECONDS = 75.0
BODY_SECONDS = 10.0  # a body is at most 64 kB (the API's client_max_size)


def runner(app: web.Application) -> web.AppRunner:
    """The daemon's runner for a listener's application."""
    return web.AppRunner(app, access_log=None, handle_signals=False, keepalive_timeout=KEEPALIVE_SECONDS)


@web.middleware
async def body_in_time(request: web.Request,
                       handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Read the request body (kept for the handler's request.json()) within BODY_SECONDS, or answer 408."""
    too_large = request.content_length is not None and request.content_length > request.client_max_size
    if request.body_exists and not too_large:  # too large: the handler's own read answers 413 in its API's shape
        try:
            async with asyncio.timeout(BODY_SECONDS):
                await request.read()
        except TimeoutError:
            response = web.json_response({"error": {"code": "request_timeout", "message": (
                f"the request body did not arrive within {BODY_SECONDS:.0f} s")}}, status=408)
            response.force_close()
            return response
    return await handler(request)
