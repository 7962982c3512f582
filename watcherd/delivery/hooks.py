"""Delivery to webhooks registered through the Greenfield API and to invoices' notification URLs (BitPay IPN).

Each delivery row holds the exact body; a registered webhook's is signed `BTCPay-Sig: sha256=<hex HMAC-SHA256
(secret, body)>` with the hook's current secret and sent to its current URL. Unlike BTCPay (retry timers in
memory for about an hour, a failing delivery holding up later ones), retries follow watcherd's own schedule
for `max_retry_hours` across restarts, per invoice and hook in order, never holding up other invoices. A hook
registered with automaticRedelivery false gets one attempt (a redelivery through the API gets another).

These URLs come from whoever holds the compat key, so they reach no internal address (addresses.py: judged on
the address connected to, unless `allow_networks` holds it), a failure is recorded with a generic reason only
("connection refused by policy", "connection failed", "timeout", "HTTP 500": what the deliveries API shows; the
operator's log has the detail), and each target has slots of its own within the SLOTS in all: a webhook PER_HOOK
sends in flight at most, a notification URL PER_URL, the notification URLs IPN_SLOTS together. One slow endpoint
fills only its own and holds up no other.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Hashable

import aiohttp
from aiohttp.abc import AbstractResolver
from yarl import URL

from watcherd import metrics
from watcherd.delivery.addresses import POLICY, GuardedResolver, Network, Refused, check_host
from watcherd.delivery.dispatch import RETRYABLE_STATUS, Attempt, Dispatcher, read_capped
from watcherd.delivery.schedule import retry_delay
from watcherd.store import HookDelivery, Store

log = logging.getLogger("watcherd.hooks")

TRANSPORT = "hooks"  # the label in metrics
SLOTS = 64  # sends in flight at once, in all (each a connection)
PER_HOOK = 8  # to one registered webhook: as many as all of them shared before they had slots of their own
PER_URL = 4  # to one notification URL (each invoice names its own: they are many, and cheap to make)
IPN_SLOTS = 16  # to notification URLs together
IPN: Hashable = "notification URLs"  # the group every notification URL's sends count in
CAPS: dict[Hashable, int] = {"hook": PER_HOOK, "url": PER_URL, IPN: IPN_SLOTS}  # by a group's kind
FAILED, TIMEOUT = "connection failed", "timeout"


def btcpay_sig(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _failure(exc: BaseException) -> tuple[str, str]:
    """Why a send that got no answer failed: the generic reason (nothing of the host, port or address), and the
    detail for the operator's log."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, Refused):
            return POLICY, f"refused: {seen}"
        seen = seen.__cause__ or getattr(seen, "os_error", None)
    return TIMEOUT if isinstance(exc, TimeoutError) else FAILED, f"{type(exc).__name__}: {exc}"


class HookSender(Dispatcher[HookDelivery]):
    transport = TRANSPORT
    log = log

    def __init__(self, store: Store, wakeup: asyncio.Event, *, max_retry_hours: float = 72,
                 timeout_seconds: float = 10, clock: Callable[[], float] = time.time,
                 allow_networks: tuple[Network, ...] = (), resolver: AbstractResolver | None = None):
        super().__init__(store, wakeup, clock, SLOTS)
        self.max_retry_hours = max_retry_hours
        self.timeout_seconds = timeout_seconds
        self.allow_networks = allow_networks  # [greenfield] hook_allow_networks
        self.resolver = resolver  # the system's by default; the guard filters what it answers

    def _timeout_seconds(self) -> float:
        return self.timeout_seconds

    def _connector(self) -> aiohttp.TCPConnector:
        resolver = GuardedResolver(self.allow_networks, self.resolver)
        return aiohttp.TCPConnector(limit=self.concurrency, resolver=resolver)

    async def _due(self, now: float, limit: int, full: frozenset[Hashable]) -> list[HookDelivery]:
        keyed = [group for group in full if isinstance(group, tuple)]
        return await self.store.due_hook_deliveries(now, limit, skip_hooks=[k for kind, k in keyed if kind == "hook"],
                                                    skip_urls=[k for kind, k in keyed if kind == "url"],
                                                    urls=IPN not in full)

    def _seq(self, delivery: HookDelivery) -> int:
        return delivery.seq

    def _lane(self, delivery: HookDelivery) -> Hashable:
        return delivery.invoice_id, delivery.hook_id if delivery.hook_id is not None else delivery.url  # as the query

    def _groups(self, delivery: HookDelivery) -> tuple[Hashable, ...]:
        if delivery.hook_id is not None:
            return (("hook", delivery.hook_id),)
        return IPN, ("url", delivery.url)

    def _cap(self, group: Hashable) -> int:
        return CAPS[group[0] if isinstance(group, tuple) else group]

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
            target = URL(url)  # parsed once: the host judged is the host connected to
            check_host(target.raw_host, self.allow_networks)  # an IP literal is not resolved, so judged here
            async with session.post(target, data=body, headers=headers, allow_redirects=False) as response:
                code = response.status
                await read_capped(response)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            reason, detail = _failure(exc)
            return Attempt(self.clock(), reason, final=not retries, detail=detail)
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
            log.warning("%s delivery %s for %s failed (attempt %d): %s%s", delivery.type, delivery.id,
                        delivery.invoice_id, delivery.attempts + 1, error,
                        f" ({attempt.detail})" if attempt.detail else "", extra={"invoice_id": delivery.invoice_id})
        return retry_at
