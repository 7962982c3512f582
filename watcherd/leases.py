"""The leases this instance works under: each chain's follower (`chain:<name>`) and the outbox with the jobs only
one instance may run (`outbox`: delivery, expiry, pruning). Several instances on one store each try to take
every lease; exactly one holds each at a time, and takes it over from a holder that stopped renewing (a kill -9,
a network cut to the database) once its lease has expired.

An instance alone on its store takes every lease at its first tick; restarted under the same name it takes its
own leases back at once. Losing a lease (the store says another instance took it) stops the work at once; what
that work was still committing is refused by the fencing token (store/leases.py). A store that cannot be reached
proves nothing: the work goes on (committing nothing until the store is back, and then only under its token)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

from watcherd import metrics
from watcherd.exceptions import STORE_ERRORS
from watcherd.ledger import Processor
from watcherd.store import LeaseRow, Store

log = logging.getLogger("watcherd.leases")


class Leaseholder:
    def __init__(self, store: Store, instance: str, seconds: float,
                 gained: Callable[[str, int], Awaitable[None]], lost: Callable[[str], Awaitable[None]],
                 caught_up: Callable[[str], bool] = lambda name: False):
        self.store = store
        self.instance = instance
        self.seconds = seconds  # a lease lasts this long unless renewed; renewed every third of it
        self.held: dict[str, int] = {}  # lease -> the token it is held under
        self.rows: list[LeaseRow] = []  # every lease as the last tick read it (readiness, status, metrics)
        self._gained, self._lost, self._caught_up = gained, lost, caught_up

    def holds(self, name: str) -> bool:
        return name in self.held

    def holder(self, name: str) -> str | None:
        return next((r.holder for r in self.rows if r.name == name and r.expires_in > 0), None)

    def shown(self) -> dict[str, dict[str, object]]:
        """Every lease on the store, for /readyz and `watcherd status`."""
        return {r.name: {"holder": r.holder, "token": r.token, "expires_in": round(r.expires_in, 1),
                         "mine": r.name in self.held, "caught_up": r.caught_up} for r in self.rows}

    async def run(self, wanted: Callable[[], Iterable[str]]) -> None:
        while True:
            await self.tick(list(wanted()))
            await asyncio.sleep(self.seconds / 3)

    async def tick(self, wanted: list[str]) -> None:
        for name in [n for n in self.held if n not in wanted]:  # a chain removed by a reload
            await self._lose(name, "no longer configured")
        for name in wanted:
            token = self.held.get(name)
            try:
                async with self.store.transaction():
                    if token is None:
                        token = await self.store.take_lease(name, self.instance, self.seconds)
                        kept = token is not None
                    else:
                        kept = await self.store.renew_lease(name, self.instance, token, self.seconds,
                                                           self._caught_up(name))
            except STORE_ERRORS:
                # unconfirmed, not lost: the work goes on meeting the same store errors (nothing commits), and
                # whatever it commits once the store is back is fenced by the token, so a takeover meanwhile
                # refuses it; the next renewal that reaches the store says which
                continue
            if not kept:
                if name in self.held:
                    await self._lose(name, "another instance took it over")
                continue
            if name not in self.held:
                assert token is not None
                self.held[name] = token
                metrics.LEASE_HELD.labels(name).set(1)
                metrics.LEASE_TAKEOVERS.labels(name).inc()
                log.info("took lease %s (token %d)", name, token, extra={"lease": name})
                await self._gained(name, token)
        try:
            self.rows = await self.store.leases()
        except STORE_ERRORS:
            pass  # shown as last read

    async def _lose(self, name: str, why: str) -> None:
        del self.held[name]
        metrics.LEASE_HELD.labels(name).set(0)
        log.warning("lost lease %s: %s; its work stops here", name, why, extra={"lease": name})
        await self._lost(name)

    async def release_all(self) -> None:
        """A clean stop: let every lease go, so that another instance takes over at once, not after expiry."""
        for name, token in list(self.held.items()):
            try:
                async with self.store.transaction():
                    await self.store.release_lease(name, self.instance, token)
            except STORE_ERRORS:
                return  # it expires by itself
            del self.held[name]
            metrics.LEASE_HELD.labels(name).set(0)


async def watch_others(leases: Leaseholder, processor: Processor) -> None:
    """Once a second: what the other instances on the store do. Which chains they follow (and whether those are
    caught up: expiry waits for it), those chains' heights (the confirmations shown here), the addresses they
    handed out (a pool payment the feed announces to one is matched at once), the pages to wake here for
    invoices they changed."""
    seen: int | None = None
    while True:
        await asyncio.sleep(1.0)
        try:
            for name in processor.chains:
                lease = next((r for r in leases.rows if r.name == f"chain:{name}"), None)
                if leases.holds(f"chain:{name}"):
                    await processor.watch_new_keys(name)
                if leases.holds(f"chain:{name}") or lease is None or lease.expires_in <= 0:
                    processor.elsewhere.pop(name, None)
                    continue
                processor.elsewhere[name] = lease.caught_up
                cursor = await processor.store.cursor(name)
                if cursor is not None:
                    processor.tips[name] = cursor.height
            seen = await processor.wake_pages_since(seen)
        except STORE_ERRORS as exc:
            log.debug("the view of the other instances waits for the store: %s", exc)
