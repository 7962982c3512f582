"""Durable notifications: the outbox rows written with each state change, delivered until acknowledged.

Delivery keeps per-invoice order (an invoice's next event waits until the previous one is delivered) without
letting one failing invoice hold back the others: its head event waits out its backoff while other invoices'
events keep flowing.

This module is the schedule every transport shares: the backoff between attempts and the idle wait for the
next due delivery.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

from watcherd.retry import sleep_unless
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
