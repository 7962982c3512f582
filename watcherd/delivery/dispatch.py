"""The HTTP transports' dispatcher: deliveries go out as a pipeline, not in rounds.

At most `concurrency` sends are in flight; as soon as one ends and its outcome is recorded, its slot takes the
next due delivery. A transport may also count each send in groups with caps of their own (a registered hook, an
invoice's notification URL): a group at its cap is left out of the next read, so one slow endpoint fills only its
own slots and holds up no other.

Order is kept per lane (an invoice, for a registered hook: an invoice and hook) and nowhere else: the store
answers only each lane's head, the oldest delivery not yet settled, and a lane with a send in flight gets no other
until that send's outcome is recorded.

The store is read again only when something may have become due: an event was committed (`wakeup`), a send
settled its delivery (its lane's next one is the head now), a slot freed after a read that filled its page, a
retry this dispatcher scheduled came due, or 5 s passed (retries scheduled before a restart). A read asks for
the free slots' worth of rows beside those in flight, oldest first, so a new event waits for no in-memory batch;
a page whose rows filled a group's cap is read again without that group.

An answer's body is read up to MAX_BODY bytes and no further (what it says is never used).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

import aiohttp

from watcherd.delivery.schedule import StoreOutage, Unrecorded
from watcherd.exceptions import STORE_ERRORS
from watcherd.retry import sleep_unless
from watcherd.store import Store

IDLE_READ_SECONDS = 5.0  # the longest wait between reads while slots are free
RETRYABLE_STATUS = {408, 429}  # the 4xx answers retried like a 5xx; any other 4xx rejects the event for good
MAX_BODY = 64 * 1024  # bytes of an answer's body read at most

D = TypeVar("D")  # a transport's delivery row


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one POST came to."""

    at: float  # when it ended
    error: str | None = None  # None: acknowledged (a 2xx)
    code: int | None = None  # the HTTP status, if one came
    final: bool = False  # never retried, whatever its age (rejected for good, or a hook without redelivery)
    detail: str | None = None  # for the operator's log only, beside `error` (which the hooks API shows)


async def read_capped(response: aiohttp.ClientResponse) -> None:
    """Read the answer's body so that its connection can serve the next send, but MAX_BODY bytes at most: a
    longer one closes the connection instead (an endpoint answering gigabytes costs one read of 64 KB)."""
    left = MAX_BODY
    while left > 0:
        chunk = await response.content.read(left)
        if not chunk:
            return
        left -= len(chunk)
    if not response.content.at_eof():
        response.close()


class _Flight:
    """A delivery being sent (then recorded); the dispatcher forgets it only between its reads of the store."""

    __slots__ = ("lane", "groups", "task", "recording", "settled")

    def __init__(self, lane: Hashable, groups: tuple[Hashable, ...]):
        self.lane = lane
        self.groups = groups
        self.task: asyncio.Task[None] | None = None
        self.recording = False  # past the send: a cancel now would only cut the record short
        self.settled = False  # recorded delivered or given up: the lane's next delivery may be due


class Dispatcher(ABC, Generic[D]):
    """The loop every HTTP transport shares; a transport says how to read, send and record its deliveries."""

    transport: str
    log: logging.Logger

    def __init__(self, store: Store, wakeup: asyncio.Event, clock: Callable[[], float], concurrency: int):
        self.store = store
        self.wakeup = wakeup
        self.clock = clock
        self.concurrency = concurrency
        self._unrecorded = Unrecorded()
        self._flights: dict[int, _Flight] = {}  # by delivery seq
        self._landed = asyncio.Event()  # a flight ended
        self._fault: BaseException | None = None  # a store error a flight met before it sent anything
        self._stale = True  # a read may find a delivery the last one could not
        self._full_page = False  # the last read filled its page: more may be due behind it
        self._last_read = float("-inf")
        self._retries: list[float] = []  # when the failures this dispatcher recorded are due again (a heap)

    # ---- the transport's part ------------------------------------------------------------------------------

    @abstractmethod
    def _timeout_seconds(self) -> float:
        """A send's limit, from connecting to the whole answer read."""

    @abstractmethod
    async def _due(self, now: float, limit: int, full: frozenset[Hashable]) -> list[D]:
        """Due deliveries, each its lane's head, oldest first, none of a group in `full` (at its cap)."""

    @abstractmethod
    def _seq(self, delivery: D) -> int:
        """The delivery's own number (in flight at most once)."""

    @abstractmethod
    def _lane(self, delivery: D) -> Hashable:
        """What the delivery keeps its order within."""

    def _groups(self, delivery: D) -> tuple[Hashable, ...]:
        """The groups the delivery's send counts in besides the transport's total, each capped by `_cap`."""
        return ()

    def _cap(self, group: Hashable) -> int:
        """How many sends of `group` may be in flight at once."""
        return self.concurrency

    @abstractmethod
    async def _send(self, session: aiohttp.ClientSession, delivery: D) -> Attempt:
        """POST it; what came of it (a store error means nothing was sent)."""

    @abstractmethod
    async def _record(self, delivery: D, attempt: Attempt) -> float | None:
        """Record the outcome in one transaction, then log and count it; when it is due again (None: settled)."""

    # ---- the loop ------------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop`, then let what is in flight finish and be recorded. While the store cannot
        record outcomes nothing new is sent (what was sent is recorded first), with a growing pause."""
        outage = StoreOutage(self.log, self.transport)
        async with self._session(self._timeout_seconds()) as session:
            try:
                while not stop.is_set():
                    try:
                        await self._dispatch(session)
                    except STORE_ERRORS as exc:
                        self._stale = True
                        await outage.wait(exc, self.wakeup, stop)
                        continue
                    outage.ok()
                    await self._idle(stop)
                await self._land()
            except BaseException:
                await self._abort()
                raise
        with contextlib.suppress(*STORE_ERRORS):  # what stays unrecorded is the drain's to record
            self._reap()
            await self._unrecorded.flush()

    async def drain(self, deadline: float) -> None:
        """Deliver what is due now, for at most until `deadline` (graceful shutdown), and wait for what is in
        flight; nothing more once the store cannot record outcomes (what it could not record is sent again
        after the restart)."""
        timeout = min(self._timeout_seconds(), max(0.1, deadline - self.clock()))
        try:
            async with self._session(timeout) as session:
                await self._until_idle(session, deadline)
        except STORE_ERRORS as exc:
            self.log.warning("%s drain stopped: the store cannot record deliveries (%s); %d sent but unrecorded "
                             "will be sent again after the restart", self.transport, exc, len(self._unrecorded))

    async def deliver_due(self) -> int:
        """Deliver what is due now, and what becomes due as those sends settle their lanes, until nothing more
        is; how many sends that took. Raises a store error (after every send ended) if an outcome could not be
        recorded."""
        async with self._session(self._timeout_seconds()) as session:
            return await self._until_idle(session, None)

    def _session(self, timeout_seconds: float) -> aiohttp.ClientSession:
        """Every send goes through a session of the transport's own (its connector may guard where it connects)."""
        return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_seconds), connector=self._connector())

    def _connector(self) -> aiohttp.TCPConnector:
        # keep-alive connections, as many as there are slots: a burst reuses them instead of connecting anew
        return aiohttp.TCPConnector(limit=self.concurrency)

    async def _until_idle(self, session: aiohttp.ClientSession, deadline: float | None) -> int:
        started = 0
        self._stale = True
        try:
            while deadline is None or self.clock() < deadline:
                started += await self._dispatch(session)
                if not self._flights:
                    break
                await sleep_unless(IDLE_READ_SECONDS if deadline is None else deadline - self.clock(), self._landed)
        except STORE_ERRORS:
            await self._land()
            raise
        except BaseException:
            await self._abort()
            raise
        await self._land()
        self._reap()
        await self._unrecorded.flush()
        return started

    async def _dispatch(self, session: aiohttp.ClientSession) -> int:
        """One turn: take in the flights that ended, record the outcomes kept from before, and fill the free slots
        with what is due; how many sends it started."""
        self._reap()
        if self._unrecorded:
            await self._unrecorded.flush()
            self._stale = True
        started = 0
        while True:
            free = self.concurrency - len(self._flights)
            if free <= 0 or not (self._stale or self.wakeup.is_set() or self.clock() >= self._next_read()):
                return started
            self.wakeup.clear()  # before reading: an event committed after the read still wakes us
            now = self.clock()
            sending = Counter(group for flight in self._flights.values() for group in flight.groups)
            full = frozenset(group for group, n in sending.items() if n >= self._cap(group))
            # flights are reaped only between reads, so those recorded while this read ran are still filtered out
            limit = free + len(self._flights)
            due = await self._due(now, limit, full)
            self._stale, self._full_page, self._last_read = False, len(due) == limit, now
            while self._retries and self._retries[0] <= now:
                heapq.heappop(self._retries)
            busy = {flight.lane for flight in self._flights.values()}
            launched, capped = 0, False
            for delivery in due:
                lane = self._lane(delivery)
                if launched == free:
                    break
                # a lane busy with another seq: one of its earlier deliveries was redelivered meanwhile
                if self._seq(delivery) in self._flights or lane in busy:
                    continue
                groups = self._groups(delivery)
                if any(sending[group] >= self._cap(group) for group in groups):
                    capped = True  # its group filled during this turn
                    continue
                busy.add(lane)
                sending.update(groups)
                self._launch(session, delivery, lane, groups)
                launched += 1
            started += launched
            if not (capped and self._full_page and launched):
                return started
            # the page was full of rows of groups that filled meanwhile: others' due rows may be behind them; the
            # next read leaves those groups out (each such read fills at least one more, so this ends)
            self._stale = True

    def _next_read(self) -> float:
        retry = self._retries[0] if self._retries else float("inf")
        return min(self._last_read + IDLE_READ_SECONDS, retry)

    async def _idle(self, stop: asyncio.Event) -> None:
        """Wait for a reason to take another turn: a flight ended, `stop`, and with a slot free a new event or
        the next read's time."""
        if len(self._flights) >= self.concurrency:
            await sleep_unless(IDLE_READ_SECONDS, stop, self._landed)
        else:
            wait = min(IDLE_READ_SECONDS, max(0.0, self._next_read() - self.clock()))
            await sleep_unless(wait, stop, self._landed, self.wakeup)

    def _launch(self, session: aiohttp.ClientSession, delivery: D, lane: Hashable, groups: tuple[Hashable, ...]
                ) -> None:
        flight = _Flight(lane, groups)
        flight.task = asyncio.create_task(self._fly(session, delivery, flight), name=f"{self.transport}-send")
        flight.task.add_done_callback(lambda _: self._landed.set())
        self._flights[self._seq(delivery)] = flight

    async def _fly(self, session: aiohttp.ClientSession, delivery: D, flight: _Flight) -> None:
        try:
            attempt = await self._send(session, delivery)
        except STORE_ERRORS as exc:  # nothing was sent: it is due again once the store answers
            self._fault = self._fault or exc
            return
        flight.recording = True
        retry_at: float | None = None

        async def write() -> None:
            nonlocal retry_at
            retry_at = await self._record(delivery, attempt)

        try:
            await self._unrecorded.record(write)
        except STORE_ERRORS:
            return  # kept: the next turn records it before it reads what is due
        if retry_at is None:
            flight.settled = True
        else:
            heapq.heappush(self._retries, retry_at)

    def _reap(self) -> None:
        """Forget the flights that ended; raise what went wrong in them (a store error: after all are taken in)."""
        self._landed.clear()
        for seq, flight in list(self._flights.items()):
            task = flight.task
            assert task is not None
            if not task.done():
                continue
            del self._flights[seq]
            error = None if task.cancelled() else task.exception()
            if error is not None:
                raise error  # a bug: the transport stops, loudly
            if flight.settled or self._full_page:
                self._stale = True
        if self._fault is not None:
            fault, self._fault = self._fault, None
            raise fault

    async def _land(self) -> None:
        """Wait for every flight to end (sent and recorded, or kept)."""
        tasks = [flight.task for flight in self._flights.values() if flight.task is not None]
        if tasks:
            await asyncio.wait(tasks)

    async def _abort(self) -> None:
        """Cancel the sends in flight (none is recorded as delivered); a record already under way completes."""
        for flight in self._flights.values():
            if flight.task is not None and not flight.recording:
                flight.task.cancel()
        await asyncio.gather(*(f.task for f in self._flights.values() if f.task is not None), return_exceptions=True)
        self._flights.clear()
