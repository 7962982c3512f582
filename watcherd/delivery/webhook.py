"""Webhook delivery: each due outbox event POSTed, signed, to `webhook.url`, until a 2xx acknowledges it.

A 4xx other than 408/429 is given up at once (the endpoint rejects the event itself); anything else is retried
on the shared schedule until `webhook.max_retry_hours` have passed since the event. Up to `concurrency` events
are in flight at once, each the oldest undelivered one of its invoice (dispatch.py). While the store cannot
record outcomes (disk full, read-only), sending pauses and backs off; it resumes by itself. `webhook.url` is the
operator's own and trusted as configured: unlike a hook registered through an API, any address is connected to,
and a failure is logged and listed (`GET /v1/webhooks`) with its detail.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING

import aiohttp

from watcherd import metrics
from watcherd.delivery.dispatch import RETRYABLE_STATUS, Attempt, Dispatcher, read_capped
from watcherd.delivery.schedule import retry_delay
from watcherd.delivery.signing import sign
from watcherd.store import Delivery, Store

if TYPE_CHECKING:
    from watcherd.config import WebhookConfig

# named as before the package layout, so log filters on the logger name keep matching
log = logging.getLogger("watcherd.outbox")

class WebhookSender(Dispatcher[Delivery]):
    transport = "webhook"
    log = log

    def __init__(
        self, store: Store, config: WebhookConfig, wakeup: asyncio.Event, clock: Callable[[], float] = time.time,
        concurrency: int = 8,
    ):
        super().__init__(store, wakeup, clock, concurrency)
        self.config = config

    def _timeout_seconds(self) -> float:
        return self.config.timeout_seconds

    async def _due(self, now: float, limit: int, full: frozenset[Hashable]) -> list[Delivery]:
        return await self.store.due_deliveries(self.transport, now, limit)

    def _seq(self, delivery: Delivery) -> int:
        return delivery.event_seq

    def _lane(self, delivery: Delivery) -> Hashable:
        return delivery.invoice_id

    async def _send(self, session: aiohttp.ClientSession, delivery: Delivery) -> Attempt:
        body = delivery.payload.encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "watcherd",
            "Watcherd-Event-Id": delivery.event_id,
            "Watcherd-Signature": sign(self.config.secret, int(self.clock()), body),
        }
        try:
            # a followed redirect would turn the POST into a GET that "succeeds" without the event
            async with session.post(self.config.url, data=body, headers=headers, allow_redirects=False) as response:
                await read_capped(response)
                status = response.status
                if 200 <= status < 300:
                    return Attempt(self.clock(), code=status)
                if 300 <= status < 400:  # retried: fixing webhook.url (SIGHUP) loses nothing
                    error = (f"HTTP {status} redirect to {response.headers.get('Location', '?')[:200]}"
                             ": set webhook.url to the final URL (redirects are not followed)")
                    return Attempt(self.clock(), error, status)
                permanent = status < 500 and status not in RETRYABLE_STATUS
                return Attempt(self.clock(), f"HTTP {status}", status, final=permanent)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return Attempt(self.clock(), f"{type(exc).__name__}: {exc}")

    async def _record(self, delivery: Delivery, attempt: Attempt) -> float | None:
        now, error = attempt.at, attempt.error
        retry_at: float | None = None
        async with self.store.transaction():
            if error is None:
                await self.store.mark_delivered(self.transport, delivery.event_seq, int(now))
            else:
                give_up = attempt.final or now - delivery.created_at > self.config.max_retry_hours * 3600
                retry_at = now + retry_delay(delivery.attempts + 1)
                await self.store.mark_attempt_failed(
                    self.transport, delivery.event_seq, error, retry_at, int(now) if give_up else None,
                )
                if give_up:
                    retry_at = None
        if error is None:
            metrics.DELIVERED.labels(self.transport).inc()
            metrics.DELIVERY_LATENCY.labels(self.transport).observe(max(0.0, now - delivery.created_at))
            log.info("delivered %s %s", delivery.type, delivery.event_id,
                     extra={"invoice_id": delivery.invoice_id, "event_id": delivery.event_id})
        else:
            metrics.DELIVERY_FAILURES.labels(self.transport).inc()
            log.warning(
                "webhook %s for %s failed (attempt %d): %s%s", delivery.event_id, delivery.invoice_id,
                delivery.attempts + 1, error, "; not retried (a 4xx other than 408/429)" if attempt.final else "",
                extra={"invoice_id": delivery.invoice_id, "event_id": delivery.event_id},
            )
        return retry_at
