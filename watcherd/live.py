"""Who is looking at which invoice right now (a payment page's live channel), and waking them when it changes.

The ledger touches an invoice after the transaction that changed it committed, and touches everyone when a
block moved confirmations; a watcher then re-reads the committed invoice. A wake-up is only a hint: a spurious
one costs a read, a missed one cannot happen for a committed change."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from contextlib import contextmanager


class Live:
    def __init__(self) -> None:
        self._watchers: dict[str, set[asyncio.Event]] = {}

    @contextmanager
    def watch(self, invoice_id: str) -> Iterator[asyncio.Event]:
        """An event set whenever the invoice may have changed; clear it before re-reading."""
        event = asyncio.Event()
        self._watchers.setdefault(invoice_id, set()).add(event)
        try:
            yield event
        finally:
            watchers = self._watchers.get(invoice_id)
            if watchers is not None:
                watchers.discard(event)
                if not watchers:
                    del self._watchers[invoice_id]

    def touch(self, invoice_ids: Iterable[str]) -> None:
        for invoice_id in invoice_ids:
            for event in self._watchers.get(invoice_id, ()):
                event.set()

    def touch_all(self) -> None:
        for watchers in self._watchers.values():
            for event in watchers:
                event.set()

    @property
    def watching(self) -> int:
        return sum(len(w) for w in self._watchers.values())
