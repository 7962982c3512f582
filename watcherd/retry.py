"""Reconnect loops are code, not scattered sleeps."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator


def backoff(first: float = 0.5, cap: float = 30.0) -> Iterator[float]:
    """Exponential delays with +-20% jitter, so many watchers don't hammer a node in lockstep."""
    delay = first
    while True:
        yield delay * random.uniform(0.8, 1.2)
        delay = min(cap, delay * 2)


async def sleep_unless(seconds: float, *events: asyncio.Event) -> None:
    """Sleep `seconds`, or less if any of `events` is set meanwhile (a stop request, a wake-up)."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
