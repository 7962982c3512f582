"""Delivery to webhooks registered through the Greenfield API and to invoices' notification URLs (BitPay IPN).

Each delivery row holds the exact body; a registered webhook's is signed `BTCPay-Sig: sha256=<hex HMAC-SHA256
(secret, body)>` with the hook's current secret and sent to its current URL. Unlike BTCPay (retry timers in
memory for about an hour, a failing delivery holding up later ones), retries follow watcherd's own schedule
for `max_retry_hours` across restarts, per invoice and hook in order, never holding up other invoices. A hook
registered with automaticRedelivery false gets one attempt (a redelivery through the API gets another).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from collections.abc import Callable

import aiohttp

from watcherd import metrics
from watcherd.delivery.schedule import StoreOutage, Unrecorded, retry_delay
from watcherd.exceptions import STORE_ERRORS
from watcherd.retry import sleep_unless
from watcherd.store import HookDelivery, Store

log = logging.getLogger("watcherd.hooks")

RETRYABLE_STATUS = {408, 429}
TRANSPORT = "hooks"  # the label in metrics


def btcpay_sig(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class HookSender:
    transport = TRANSPORT

    def __init__(self, store: Store, wakeup: asyncio.Event, *, max_retry_hours: float = 72,
                 timeout_seconds: float = 10, clock: Callable[[], float] = time.time, concurrency: int = 8):
        self.store = store
        self.wakeup = wakeup
        self.max_retry_hours = max_retry_hours
        self.timeout_seconds = timeout_seconds
        self.clock = clock
        self._slots = asyncio.Semaphore(concurrency)
        self._unrecorded = Unrecorded()

    async def run(self, stop: asyncio.Event) -> None:
        outage = StoreOutage(log, self.transport)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_seconds)) as session:
            while not stop.is_set():
                try:
                    await self.deliver_due(session)
                    self.wakeup.clear()
                    next_at = await self.store.next_hook_delivery_time()
                    wait = 5.0 if next_at is None else max(0.0, min(5.0, next_at - self.clock()))
                    await sleep_unless(wait, stop, self.wakeup)
                except STORE_ERRORS as exc:
                    await outage.wait(exc, self.wakeup, stop)
                else:
                    outage.ok()

    async def drain(self, deadline: float) -> None:
        timeout = aiohttp.ClientTimeout(total=min(self.timeout_seconds, max(0.1, deadline - self.clock())))
        with contextlib.suppress(*STORE_ERRORS):
            async with aiohttp.ClientSession(timeout=timeout) as session:
                while self.clock() < deadline and await self.deliver_due(session):
                    pass

    async def deliver_due(self, session: aiohttp.ClientSession) -> int:
        await self._unrecorded.flush()
        due = await self.store.due_hook_deliveries(self.clock())
        await asyncio.gather(*(self._deliver(session, d) for d in due))
        await self._unrecorded.flush()
        return len(due)

    async def _deliver(self, session: aiohttp.ClientSession, delivery: HookDelivery) -> None:
        async with self._slots:
            body = delivery.body.encode()
            headers = {"Content-Type": "application/json", "User-Agent": "watcherd"}
            url = delivery.url
            retries = True
            error: str | None = None
            code: int | None = None
            permanent = False
            if delivery.hook_id is not None:
                hook = await self.store.hook(delivery.hook_id)
                if hook is None or not hook["enabled"]:
                    error, permanent = "webhook deleted or disabled", True
                else:
                    url = hook["url"]
                    retries = hook["automatic_redelivery"]
                    headers["BTCPay-Sig"] = btcpay_sig(hook["secret"], body)
            if error is None:
                try:
                    async with session.post(url, data=body, headers=headers, allow_redirects=False) as response:
                        await response.read()
                        code = response.status
                        if not 200 <= code < 300:
                            error = f"HTTP {code}"
                            permanent = 400 <= code < 500 and code not in RETRYABLE_STATUS
                except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                    error = f"{type(exc).__name__}: {exc}"
            at = self.clock()
            give_up = permanent or not retries
            with contextlib.suppress(*STORE_ERRORS):
                await self._unrecorded.record(lambda: self._record(delivery, error, code, give_up, at))

    async def _record(self, delivery: HookDelivery, error: str | None, code: int | None, give_up: bool,
                      now: float) -> None:
        async with self.store.transaction():
            if error is None:
                await self.store.mark_hook_delivered(delivery.seq, code or 200, int(now))
            else:
                give_up = give_up or now - delivery.created_at > self.max_retry_hours * 3600
                await self.store.mark_hook_attempt_failed(
                    delivery.seq, error, code, now + retry_delay(delivery.attempts + 1),
                    int(now) if give_up else None, int(now),
                )
        if error is None:
            metrics.DELIVERED.labels(self.transport).inc()
            log.info("delivered %s %s", delivery.type, delivery.id, extra={"invoice_id": delivery.invoice_id})
        else:
            metrics.DELIVERY_FAILURES.labels(self.transport).inc()
            log.warning("%s delivery %s for %s failed (attempt %d): %s", delivery.type, delivery.id,
                        delivery.invoice_id, delivery.attempts + 1, error, extra={"invoice_id": delivery.invoice_id})
