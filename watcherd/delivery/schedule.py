"""Durable notifications: the outbox rows written with each state change, delivered until acknowledged.

Delivery keeps per-invoice order (an invoice's next event waits until the previous one is delivered) without
letting one failing invoice hold back the others: its head event waits out its backoff while other invoices'
events keep flowing.

This module is the schedule every transport shares: the backoff between attempts, the idle wait for the
next due delivery, and what a transport does while the store cannot record its outcomes (disk full, read-only).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Iterator

from watcherd.exceptions import STORE_ERRORS
from watcherd.retry import backoff, sleep_unless
from watcherd.store import Store

MAX_BACKOFF = 3600.0


def retry_delay(attempts: int) -> float:
    """Delay before attempt number `attempts + 1` (1 s, 2 s, 4 s ... capped at about an hour)."""
    return min(MAX_BACKOFF, 2.0 ** max(0, attempts - 1)) * random.uniform(0.8, 1.2)


async def sleep_until_due(
    store: Store, transport: str, clock: Callable[[], float], wakeup: asyncio.Event, stop: asyncio.Event
) -> None:
    """A transport's idle wait: until its next delivery is due (at most 5 s), a new event, or `stop`."""
    wakeup.clear()  # before reading the store: an event queued after the read still wakes us
    next_at = await store.next_delivery_time(transport)
    wait = 5.0 if next_at is None else max(0.0, min(5.0, next_at - clock()))
    await sleep_unless(wait, stop, wakeup)


class Unrecorded:
    """Delivery outcomes the store could not record (disk full, read-only), kept in memory and recorded before
    the transport reads what is due again: otherwise an event the endpoint already acknowledged would be due,
    and sent, a second time. Only a restart before the store recovers sends it again (at-least-once, with the
    same event id)."""

    def __init__(self) -> None:
        self._writes: list[Callable[[], Awaitable[None]]] = []

    def __len__(self) -> int:
        return len(self._writes)

    async def record(self, write: Callable[[], Awaitable[None]]) -> None:
        """Run `write` (one outcome's transaction, then its log line and metrics); on a store error keep it
        for `flush` and raise."""
        try:
            await write()
        except STORE_ERRORS:
            self._writes.append(write)
            raise

    async def flush(self) -> None:
        """Record the kept outcomes, oldest first; raises the store's error while it still fails."""
        while self._writes:
            await self._writes[0]()
            del self._writes[0]


class StoreOutage:
    """A transport's view of a store that fails: one log line when the trouble starts and one when it ends,
    and a growing pause between attempts meanwhile (the store probe, /readyz and the metric report the
    outage itself)."""

    def __init__(self, log: logging.Logger, transport: str):
        self.log = log
        self.transport = transport
        self._delays: Iterator[float] | None = None

    async def wait(self, exc: BaseException, wakeup: asyncio.Event, stop: asyncio.Event) -> None:
        """After a store error: back off (1 s doubling up to 30 s), or less if an event is committed meanwhile
        (the store takes writes again) or `stop` is set."""
        if self._delays is None:
            self._delays = backoff(first=1.0, cap=30.0)
            self.log.error("%s deliveries paused: the store cannot record them (%s: %s); retrying until it can",
                           self.transport, type(exc).__name__, exc)
        wakeup.clear()  # a wake-up from before the failure must not turn the backoff into a busy loop
        await sleep_unless(next(self._delays), stop, wakeup)

    def ok(self) -> None:
        if self._delays is not None:
            self._delays = None
            self.log.info("%s deliveries resumed: the store records them again", self.transport)
