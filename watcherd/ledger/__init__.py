"""The chain-agnostic core: applies what adapters saw to the store, one atomic transaction at a time, and
serves the invoices. `base` holds the shared state, transactions, rendering and reassessment; `invoices` the
invoice side; `chains` what adapters report, and the sink they report through."""

from __future__ import annotations

from watcherd.ledger.base import EventListener, EventRecord, new_id
from watcherd.ledger.chains import ChainLedger, LedgerSink
from watcherd.ledger.invoices import GAP_LIMIT, MAX_UNPAID_METHODS, InvoiceLedger

__all__ = ["GAP_LIMIT", "MAX_UNPAID_METHODS", "EventListener", "EventRecord", "LedgerSink", "Processor", "new_id"]


class Processor(InvoiceLedger, ChainLedger):
    """The ledger: what the daemon, the APIs and the senders are handed."""

    def sink(self, chain_name: str) -> LedgerSink:
        """What the chain's adapter reports to: this ledger, bound to that chain."""
        return LedgerSink(self, chain_name)
