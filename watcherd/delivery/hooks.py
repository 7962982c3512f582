"""Delivery to webhooks registered through the Greenfield API and to invoices' notification URLs (BitPay IPN).

Each delivery row holds the exact body; a registered webhook's is signed `BTCPay-Sig: sha256=<hex HMAC-SHA256
(secret, body)>` with the hook's current secret and sent to its current URL. Unlike BTCPay (retry timers in
memory for about an hour, a failing delivery holding up later ones), retries follow watcherd's own schedule
for `max_retry_hours` across restarts, per invoice and hook in order, never holding up other invoices. A hook
registered with automaticRedelivery false gets one attempt (a redelivery through the API gets another).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Hashable

import aiohttp

from watcherd import metrics
from watcherd.delivery.dispatch import RETRYABLE_STATUS, Attempt, Dispatcher
from watcherd.delivery.schedule import retry_delay
from watcherd.store import HookDelivery, Store

log = logging.getLogger("watcherd.hooks")

TRANSPORT = "hooks"  # the label in metrics


def btcpay_sig(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class HookSender(Dispatcher[HookDelivery]):
    transport = TRANSPORT
    log = log

    def __init__(self, store: Store, wakeup: asyncio.Event, *, max_retry_hours: float = 72,
                 timeout_seconds: float = 10, clock: Callable[[], float] = time.time, concurrency: int = 8):
        super().__init__(store, wakeup, clock, concurrency)
        self.max_retry_hours = max_retry_hours
        self.timeout_seconds = timeout_seconds

    def _timeout_seconds(self) -> float:
        return self.timeout_seconds

    async def _due(self, now: float, limit: int) -> list[HookDelivery]:
        return await self.store.due_hook_deliveries(now, limit)

    def _seq(self, delivery: HookDelivery) -> int:
        return delivery.seq

    def _lane(self, delivery: HookDelivery) -> Hashable:
        return delivery.invoice_id, delivery.hook_id if delivery.hook_id is not None else delivery.url  # as the query

    async def _send(self, session: aiohttp.ClientSession, delivery: HookDelivery) -> Attempt:
        body = delivery.body.encode()
        headers = {"Content-Type": "application/json", "User-Agent": "watcherd"}
        url = delivery.url
        retries = True
        if delivery.hook_id is not None:
            hook = await self.store.hook(delivery.hook_id)
            if hook is None or not hook["enabled"]:
                return Attempt(self.clock(), "webhook deleted or disabled", final=True)
            url = hook["url"]
            retries = hook["automatic_redelivery"]
            headers["BTCPay-Sig"] = btcpay_sig(hook["secret"], body)
        try:
            async with session.post(url, data=body, headers=headers, allow_redirects=False) as response:
                await response.read()
                code = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return Attempt(self.clock(), f"{type(exc).__name__}: {exc}", final=not retries)
        if 200 <= code < 300:
            return Attempt(self.clock(), code=code)
        permanent = 400 <= code < 500 and code not in RETRYABLE_STATUS
        return Attempt(self.clock(), f"HTTP {code}", code, final=permanent or not retries)

    async def _record(self, delivery: HookDelivery, attempt: Attempt) -> float | None:
        now, error = attempt.at, attempt.error
        retry_at: float | None = None
        async with self.store.transaction():
            if error is None:
                await self.store.mark_hook_delivered(delivery.seq, attempt.code or 200, int(now))
            else:
                give_up = attempt.final or now - delivery.created_at > self.max_retry_hours * 3600
                retry_at = now + retry_delay(delivery.attempts + 1)
                await self.store.mark_hook_attempt_failed(
                    delivery.seq, error, attempt.code, retry_at, int(now) if give_up else None, int(now),
                )
                if give_up:
                    retry_at = None
        if error is None:
            metrics.DELIVERED.labels(self.transport).inc()
            log.info("delivered %s %s", delivery.type, delivery.id, extra={"invoice_id": delivery.invoice_id})
        else:
            metrics.DELIVERY_FAILURES.labels(self.transport).inc()
            log.warning("%s delivery %s for %s failed (attempt %d): %s", delivery.type, delivery.id,
                        delivery.invoice_id, delivery.attempts + 1, error, extra={"invoice_id": delivery.invoice_id})
        return retry_at
