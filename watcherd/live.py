"""Who is looking at which invoice right now (a payment page's live channel), and waking them when it changes.

The ledger touches an invoice after the transaction that changed it committed, and touches a chain's watchers
when a block there moved confirmations; a watcher then re-reads the committed invoice. A wake-up is only a hint:
a spurious one costs a read, a missed one cannot happen for a committed change.

Each watcher is an open connection, so a file descriptor: there are at most `max_total` of them (by default
derived from the process's file limit, so that streams never take the descriptors the store, the nodes, the
deliveries and the API need) and `max_per_invoice` on one invoice; one more is refused (Crowded)."""

from __future__ import annotations

import asyncio
import resource
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from watcherd import metrics

PER_INVOICE = 8  # a customer's tabs and a shop's overlay; more on one invoice is someone else
MAX_TOTAL = 4096  # each page woken by a block costs its render (about 0.2 ms): beyond this, polling is cheaper
RESERVED_FILES = 256  # store, node sockets, deliveries, logs, the listeners: never for streams
MAX_SECONDS = 900.0  # a stream then ends and the browser reconnects ([api] live_stream_seconds)


class Watcher(asyncio.Event):
    """Set whenever the invoice may have changed. `chains` narrows the blocks that wake it to the chains the
    invoice can be paid on, once the watcher has read it (None until then: every block wakes it)."""

    chains: frozenset[str] | None = None


class Crowded(Exception):
    """No room for another watcher: of this invoice, or at all."""


def total_for(files: int) -> int:
    """The most watchers a process allowed `files` descriptors keeps: half of what the reserve leaves, so that
    the other half takes the API's own connections (and a burst of connections refused) at the same time."""
    return max(0, min(MAX_TOTAL, (files - RESERVED_FILES) // 2))


def own_file_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


class Live:
    def __init__(self, max_total: int | None = None, max_per_invoice: int = PER_INVOICE,
                 max_seconds: float = MAX_SECONDS) -> None:
        self._watchers: dict[str, set[Watcher]] = {}
        self._count = 0
        self.max_total = total_for(own_file_limit()) if max_total is None else max_total
        self.max_per_invoice = max_per_invoice
        self.max_seconds = max_seconds  # how long one page watches at most before it must ask again

    @contextmanager
    def watch(self, invoice_id: str) -> Iterator[Watcher]:
        """A watcher set whenever the invoice may have changed; clear it before re-reading. Crowded when the
        invoice has `max_per_invoice` already, or everything `max_total`."""
        if self._count >= self.max_total or len(self._watchers.get(invoice_id, ())) >= self.max_per_invoice:
            metrics.LIVE_REFUSED.inc()
            raise Crowded(invoice_id)
        watcher = Watcher()
        self._watchers.setdefault(invoice_id, set()).add(watcher)
        self._count += 1
        metrics.LIVE_STREAMS.set(self._count)
        try:
            yield watcher
        finally:
            watchers = self._watchers.get(invoice_id)
            if watchers is not None and watcher in watchers:
                watchers.discard(watcher)
                self._count -= 1
                metrics.LIVE_STREAMS.set(self._count)
                if not watchers:
                    del self._watchers[invoice_id]

    def touch(self, invoice_ids: Iterable[str]) -> None:
        for invoice_id in invoice_ids:
            for watcher in self._watchers.get(invoice_id, ()):
                watcher.set()

    def touch_chain(self, chain: str) -> None:
        """A block there connected or left: every page whose invoice can be paid on that chain."""
        for watchers in self._watchers.values():
            for watcher in watchers:
                if watcher.chains is None or chain in watcher.chains:
                    watcher.set()

    def touch_all(self) -> None:
        for watchers in self._watchers.values():
            for watcher in watchers:
                watcher.set()

    @property
    def watching(self) -> int:
        return self._count


class Coalescer:
    """Reads asked for in the same turn of the event loop become one read of them all: when a block wakes a
    thousand pages, they share three queries instead of making three each, and the first page is not left
    waiting behind everyone else's queries."""

    def __init__(self, read_many: Callable[[Sequence[str]], Coroutine[Any, Any, dict[str, Any]]]) -> None:
        self._read_many = read_many
        self._pending: dict[str, asyncio.Future[Any]] = {}
        self._reading: set[asyncio.Task[dict[str, Any]]] = set()  # the loop only keeps weak references

    async def read(self, key: str) -> Any:
        """`read_many`'s value for key (None when it has none); its exception if it raised."""
        future = self._pending.get(key)
        if future is None:
            if not self._pending:
                asyncio.get_running_loop().call_soon(self._flush)  # after every reader woken with this one
            future = self._pending[key] = asyncio.get_running_loop().create_future()
        return await asyncio.shield(future)  # one reader cancelled (its page closed) leaves the others' read

    def _flush(self) -> None:
        batch, self._pending = self._pending, {}
        task = asyncio.get_running_loop().create_task(self._read_many(list(batch)))
        self._reading.add(task)
        task.add_done_callback(self._reading.discard)
        task.add_done_callback(lambda done: self._settle(batch, done))

    @staticmethod
    def _settle(batch: dict[str, asyncio.Future[Any]], done: asyncio.Task[dict[str, Any]]) -> None:
        for key, future in batch.items():
            if future.done():
                continue
            if done.cancelled():
                future.cancel()
            elif (error := done.exception()) is not None:
                future.set_exception(error)
                future.exception()  # readers still raise it; a reader that left must not log it as unretrieved
            else:
                future.set_result(done.result().get(key))
