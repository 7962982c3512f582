"""Webhook delivery: each due outbox event POSTed, signed, to `webhook.url`, until a 2xx acknowledges it.

A 4xx other than 408/429 is given up at once (the endpoint rejects the event itself); anything else is retried
on the shared schedule until `webhook.max_retry_hours` have passed since the event. While the store cannot
record outcomes (disk full, read-only), sending pauses and backs off; it resumes by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import aiohttp

from watcherd import metrics
from watcherd.delivery.schedule import StoreOutage, Unrecorded, retry_delay, sleep_until_due
from watcherd.delivery.signing import sign
from watcherd.exceptions import STORE_ERRORS
from watcherd.store import Delivery, Store

if TYPE_CHECKING:
    from watcherd.config import WebhookConfig

# named as before the package layout, so log filters on the logger name keep matching
log = logging.getLogger("watcherd.outbox")

RETRYABLE_STATUS = {408, 429}


class WebhookSender:
    transport = "webhook"

    def __init__(
        self, store: Store, config: WebhookConfig, wakeup: asyncio.Event, clock: Callable[[], float] = time.time,
        concurrency: int = 8,
    ):
        self.store = store
        self.config = config
        self.wakeup = wakeup
        self.clock = clock
        self._slots = asyncio.Semaphore(concurrency)
        self._unrecorded = Unrecorded()

    async def run(self, stop: asyncio.Event) -> None:
        timeout = aiohttp.ClientTimeout(total=self.config.timeout_seconds)
        outage = StoreOutage(log, self.transport)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not stop.is_set():
                try:
                    await self.deliver_due(session)
                    await sleep_until_due(self.store, self.transport, self.clock, self.wakeup, stop)
                except STORE_ERRORS as exc:
                    await outage.wait(exc, self.wakeup, stop)
                else:
                    outage.ok()

    async def drain(self, deadline: float) -> None:
        """Deliver what is due now, for at most until `deadline` (graceful shutdown); nothing more once the
        store cannot record outcomes (what it could not record is sent again after the restart)."""
        timeout = aiohttp.ClientTimeout(total=min(self.config.timeout_seconds, max(0.1, deadline - self.clock())))
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                while self.clock() < deadline and await self.deliver_due(session):
                    pass
        except STORE_ERRORS as exc:
            log.warning("webhook drain stopped: the store cannot record deliveries (%s); %d sent but unrecorded "
                        "will be sent again after the restart", exc, len(self._unrecorded))

    async def deliver_due(self, session: aiohttp.ClientSession) -> int:
        """Send what is due, concurrently; raises a store error (after every send ended) if an outcome could
        not be recorded, so the caller backs off."""
        await self._unrecorded.flush()
        due = await self.store.due_deliveries(self.transport, self.clock())
        await asyncio.gather(*(self._deliver(session, d) for d in due))
        await self._unrecorded.flush()
        return len(due)

    async def _deliver(self, session: aiohttp.ClientSession, delivery: Delivery) -> None:
        async with self._slots:
            body = delivery.payload.encode()
            now = int(self.clock())
            headers = {
                "Content-Type": "application/json",
                "User-Agent": "watcherd",
                "Watcherd-Event-Id": delivery.event_id,
                "Watcherd-Signature": sign(self.config.secret, now, body),
            }
            error: str | None = None
            permanent = False
            try:
                # a followed redirect would turn the POST into a GET that "succeeds" without the event
                async with session.post(self.config.url, data=body, headers=headers,
                                        allow_redirects=False) as response:
                    await response.read()
                    if 200 <= response.status < 300:
                        pass
                    elif 300 <= response.status < 400:  # retried: fixing webhook.url (SIGHUP) loses nothing
                        error = (f"HTTP {response.status} redirect to {response.headers.get('Location', '?')[:200]}"
                                 ": set webhook.url to the final URL (redirects are not followed)")
                    else:
                        error = f"HTTP {response.status}"
                        permanent = response.status < 500 and response.status not in RETRYABLE_STATUS
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            # never raised out of the gather: a sibling still sending would be left running, and could send
            # its event again once the loop reads it as due; deliver_due raises it after the gather
            at = self.clock()
            with contextlib.suppress(*STORE_ERRORS):
                await self._unrecorded.record(lambda: self._record(delivery, error, permanent, at))

    async def _record(self, delivery: Delivery, error: str | None, permanent: bool, now: float) -> None:
        async with self.store.transaction():
            if error is None:
                await self.store.mark_delivered(self.transport, delivery.event_seq, int(now))
            else:
                give_up = permanent or now - delivery.created_at > self.config.max_retry_hours * 3600
                await self.store.mark_attempt_failed(
                    self.transport, delivery.event_seq, error,
                    now + retry_delay(delivery.attempts + 1), int(now) if give_up else None,
                )
        if error is None:
            metrics.DELIVERED.labels(self.transport).inc()
            metrics.DELIVERY_LATENCY.labels(self.transport).observe(max(0.0, now - delivery.created_at))
            log.info("delivered %s %s", delivery.type, delivery.event_id,
                     extra={"invoice_id": delivery.invoice_id, "event_id": delivery.event_id})
        else:
            metrics.DELIVERY_FAILURES.labels(self.transport).inc()
            log.warning(
                "webhook %s for %s failed (attempt %d): %s%s", delivery.event_id, delivery.invoice_id,
                delivery.attempts + 1, error, "; not retried (a 4xx other than 408/429)" if permanent else "",
                extra={"invoice_id": delivery.invoice_id, "event_id": delivery.event_id},
            )
