"""The Prometheus listener: /metrics, with the gauges read from the store at scrape time."""

from __future__ import annotations

import logging
import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from watcherd import metrics
from watcherd.exceptions import STORE_ERRORS
from watcherd.store import Store

log = logging.getLogger("watcherd.metrics")


async def refresh_from_store(store: Store, transports: tuple[str, ...], now: float) -> None:
    """Gauges that are cheapest to read from the store at scrape time."""
    metrics.INVOICES.clear()
    for chain, status, count in await store.invoice_counts():
        metrics.INVOICES.labels(chain, status).set(count)
    pending = {transport: (count, oldest) for transport, count, oldest in await store.pending_deliveries()}
    failed = await store.failed_deliveries()
    for transport in transports:
        metrics.NOTIFICATIONS_FAILED.labels(transport).set(failed.get(transport, 0))
        count, oldest = pending.get(transport, (0, None))
        metrics.NOTIFICATIONS_PENDING.labels(transport).set(count)
        metrics.OLDEST_PENDING_AGE.labels(transport).set(0 if oldest is None else max(0.0, now - oldest))


def make_app(store: Store, transports: tuple[str, ...]) -> web.Application:
    async def scrape(request: web.Request) -> web.Response:
        try:
            await refresh_from_store(store, transports, time.time())
        except STORE_ERRORS as exc:
            # a database that is away (PostgreSQL restarting) must not take the scrape down with it: the store
            # gauges keep their last values, and watcherd_store_writable says why
            log.debug("metrics from the store are stale: %s", exc)
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    return app
