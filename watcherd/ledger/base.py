"""The ledger's shared part: the state every part of it reads, transactions whose effects (log lines, counters,
watched addresses, woken pages) take place only once they commit, the invoice JSON, and the reassessment that
turns an invoice's payments into its status and an outbox event.

Each public coroutine of the ledger is one store transaction holding the facts (payments, cursor) AND their
consequences (invoice status, outbox events), so a crash can never leave a status change without its
notification or a cursor advanced past a block whose payments were not recorded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from watcherd import metrics, views
from watcherd.core.chain import ChainAdapter
from watcherd.core.invoices import FINALITY, Status, assess, event_type
from watcherd.core.money import to_decimal_string
from watcherd.live import Live
from watcherd.store import InvoiceRow, MethodRow, PaymentRow, Store

log = logging.getLogger("watcherd.processor")


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


@dataclass(frozen=True, slots=True)
class EventRecord:
    """An event just queued, as an event listener sees it (inside the event's transaction)."""

    seq: int
    id: str
    type: str
    invoice_id: str
    created_at: int
    invoice: dict[str, Any]  # the invoice JSON the event carries
    previous: dict[str, Any] | None  # the invoice JSON of the invoice's previous event (None: its first)
    row: InvoiceRow  # the invoice as stored now (manual status, what a compatible API was asked)


@dataclass(slots=True)
class _Pending:
    """What one open transaction does once it commits: its log lines and counters, the addresses it handed out
    (watched from then on), the invoices it gave an event (their pages re-read). Group commit runs several
    transactions at once, each in its own task, so each keeps its own (a ContextVar), never the Processor's."""

    effects: list[Callable[[], object]] = field(default_factory=list)
    new_keys: list[tuple[str, bytes]] = field(default_factory=list)
    touched: set[str] = field(default_factory=set)


_PENDING: ContextVar[_Pending] = ContextVar("watcherd_pending")


# Called for every event, inside its transaction: what it writes (a registered webhook's delivery) commits with
# the event or not at all.
EventListener = Callable[[Store, EventRecord], Awaitable[None]]


class LedgerBase:
    def __init__(
        self, store: Store, chains: dict[str, ChainAdapter], transports: Iterable[str] = (),
        clock: Callable[[], float] = time.time, public_url: str = "",
    ):
        self.public_url = public_url  # the payment pages' base: checkout_url is <public_url>/i/<id>
        self.store = store
        self.chains = chains
        self.transports = tuple(transports)
        self.clock = clock
        self.outbox_listeners: list[asyncio.Event] = []  # one per transport: set when events are queued
        self.tips: dict[str, int] = {}
        self.final_heights: dict[str, int] = {}  # chains with finality: the node's last finalized height
        self.known_assets: dict[str, dict[str, int]] = {}  # chains no longer configured render with these
        self.natives: dict[str, str] = {}  # each chain's own coin
        self._unused: dict[str, int] = {}  # per chain: issued addresses in a row that never received funds
        self._key_floor: dict[str, int] = {}  # per chain: the derivation indexes below it are all watched
        # several instances on one store (leases.py): lease name -> (instance, token) this one works under, checked
        # inside each of that work's transactions; and the chains another instance follows -> caught up there
        self.fences: dict[str, tuple[str, int]] = {}
        self.elsewhere: dict[str, bool] = {}
        self.live = Live()  # payment pages watching an invoice
        self._touched: set[str] = set()  # invoices given a committed event since the last wake-up
        self.event_listeners: list[EventListener] = []  # the compatible APIs' webhooks and notification URLs

    def outbox_listener(self) -> asyncio.Event:
        event = asyncio.Event()
        self.outbox_listeners.append(event)
        return event

    def wake_outbox(self) -> None:
        """After a commit: the senders have events to send, and pages watching a changed invoice re-read it."""
        for event in self.outbox_listeners:
            event.set()
        self.live.touch(self._touched)
        self._touched.clear()

    @asynccontextmanager
    async def _transaction(self, fence: str | None = None) -> AsyncIterator[None]:
        """A store transaction whose log lines and counters take effect only once it committed: a block retried
        after a failed commit must not report its payments twice, nor once for nothing. `fence`: the lease the
        work runs under, if it runs under one; the transaction commits only while this instance holds it."""
        pending = _Pending()
        token = _PENDING.set(pending)
        try:
            async with self.store.transaction():
                if fence is not None and fence in self.fences:
                    await self.store.fence(fence, *self.fences[fence])
                yield
        finally:
            _PENDING.reset(token)
        for name, key in pending.new_keys:  # watched before the answer that hands the address out
            if name in self.chains:  # (a reload may have removed it meanwhile)
                self.chains[name].watchlist.keys.add(key)
                metrics.WATCHED_ADDRESSES.labels(name).set(len(self.chains[name].watchlist.keys))
        self._touched |= pending.touched
        for effect in pending.effects:
            effect()

    @asynccontextmanager
    async def _tentative_tip(self, chain_name: str) -> AsyncIterator[None]:
        """The tip moves with the transaction that moves the cursor (its reassessments count against it), and
        moves back if that transaction does not commit (a full disk, a cancelled follower)."""
        before = self.tips.get(chain_name, 0)
        try:
            yield
        except BaseException:
            self.tips[chain_name] = before
            raise

    def _method_id(self, chain: str, asset: str) -> str:
        native = self.chains[chain].asset if chain in self.chains else self.natives.get(chain)
        return chain if asset == native else f"{chain}:{asset}"

    async def _shown(self, invoice_id: str) -> dict[str, Any]:
        """The JSON of an invoice that exists (we just wrote or read it)."""
        shown = await self.invoice_json(invoice_id)
        if shown is None:
            raise KeyError(invoice_id)
        return shown

    async def invoice_json(self, invoice_id: str) -> dict[str, Any] | None:
        invoice = await self.store.invoice(invoice_id)
        if invoice is None:
            return None
        methods = await self.store.methods_for(invoice_id)
        return self._render(invoice, methods, await self.store.payments_for(invoice_id))

    async def invoice_jsons(self, invoice_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Many invoices as `invoice_json` renders them, in three reads (the payment pages a block wakes)."""
        invoices = await self.store.invoices_by_id(invoice_ids)
        found = list(invoices)
        methods = await self.store.methods_of(found)
        payments = await self.store.payments_of(found)
        return {i: self._render(invoices[i], methods.get(i, []), payments.get(i, [])) for i in found}

    def _confirmed(self, row: PaymentRow) -> bool:
        """Whether the payment has its own chain's required confirmations (with finality: its block is at or
        below the chain's final height)."""
        if row.payment.block_height is None or not row.payment.counts:
            return False
        if row.chain not in self.chains or row.chain in self.elsewhere or (
                row.confirmations_required == FINALITY and row.chain not in self.final_heights):
            # nobody follows that chain (it left the config), another instance does, or its final height is not
            # known yet (a restart): it cannot be judged here and now, so it stays as last judged; a reorg there
            # resets it when followed again
            return row.confirmed_at is not None
        if row.confirmations_required == FINALITY:
            return row.payment.block_height <= self.final_heights[row.chain]
        return row.payment.confirmations(self.tips.get(row.chain, 0)) >= row.confirmations_required

    def _decimals(self, chain_name: str, asset: str) -> int:
        chain = self.chains.get(chain_name)
        return (chain.assets if chain else self.known_assets.get(chain_name, {})).get(asset, 0)

    def _amount(self, chain_name: str, asset: str, atomic: int) -> str:
        """An amount as the log shows it: decimal, with its unit ("0.00098 BTC")."""
        return f"{to_decimal_string(atomic, self._decimals(chain_name, asset))} {asset}"

    def _shown_methods(self, methods: list[MethodRow]) -> list[views.ShownMethod]:
        shown = []
        for m in methods:
            chain = self.chains.get(m.chain)
            decimals = self._decimals(m.chain, m.asset)
            uri = full = None
            if chain is not None and m.address is not None:
                full = chain.payment_uri(m.address, m.amount, m.asset)
                uri = full
            shown.append(views.ShownMethod(m, self._method_id(m.chain, m.asset), decimals,
                                           self.tips.get(m.chain, 0), uri, full))
        return shown

    def _render(self, invoice: InvoiceRow, methods: list[MethodRow], payments: list[PaymentRow]) -> dict[str, Any]:
        shown = self._shown_methods(methods)
        valued = [views.ShownPayment(p, replace(p.payment, confirmed=self._confirmed(p)),
                                     self._decimals(p.chain, p.asset)) for p in payments]
        body = views.invoice_json(invoice, shown, valued, now=self.clock(),
                                  currency_decimals=self._currency_decimals(invoice, shown),
                                  checkout_url=f"{self.public_url}/i/{invoice.id}")
        # a picked method's URI asks for what is still due
        for m, j in zip(shown, body["payment_methods"], strict=True):
            if m.row.address is not None and j.get("due_atomic") not in (None, "0") and m.row.chain in self.chains:
                j["payment_uri"] = self.chains[m.row.chain].payment_uri(m.row.address, int(j["due_atomic"]),
                                                                        m.row.asset)
        return body

    def _currency_decimals(self, invoice: InvoiceRow, methods: list[views.ShownMethod]) -> int:
        if invoice.decimals is not None:
            return invoice.decimals
        # an invoice from before version 4: priced in the coin of its one method
        return next((m.decimals for m in methods if m.row.asset == invoice.currency), 0)

    async def _reassess(
        self, invoice_id: str, force_type: str | None = None,
        new: tuple[InvoiceRow, list[MethodRow]] | None = None, *, why: str | None = None, chain: str | None = None,
    ) -> dict[str, Any] | None:
        """Recompute one invoice from its payments; on any visible change, store it and queue an event, and
        return the invoice as the event shows it. `new`: an invoice and its methods not stored yet (no payments):
        it is inserted with its assessment. `why` and `chain`: what the log line says changed, and on which
        chain (a payment's, a picked method's), when the status alone would not say it.

        Must run inside a store transaction."""
        invoice = new[0] if new else await self.store.invoice(invoice_id, for_update=True)
        if invoice is None:
            return None
        now = int(self.clock())
        payments = [] if new else await self.store.payments_for(invoice_id)
        changed = False
        for row in payments:
            confirmed = self._confirmed(row)
            if confirmed != (row.confirmed_at is not None):
                await self.store.set_payment_confirmed_at(
                    row.chain, row.payment.txid, row.payment.vout, now if confirmed else None
                )
                changed = True
        if changed:
            payments = await self.store.payments_for(invoice_id)
        valued = [replace(p.payment, confirmed=self._confirmed(p)) for p in payments]
        assessment = assess(invoice.terms, valued, 0, now)
        exception = assessment.exception.value if assessment.exception else None
        methods = new[1] if new else await self.store.methods_for(invoice_id)
        # what an event shows that can change (a picked method has its own event): the same as before version 4,
        # so an upgrade emits nothing for invoices that did not change
        digest = json.dumps([assessment.status, exception, sorted((p.txid, p.vout, p.status(0, 0)) for p in valued)])
        if digest == invoice.digest and force_type is None:
            return None
        paid_at = invoice.paid_at
        if assessment.status is Status.PAID and invoice.status is not Status.PAID:
            paid_at = now
        elif assessment.status is not Status.PAID:
            paid_at = None
        updated = replace(invoice, status=assessment.status, exception=exception, paid_at=paid_at, digest=digest,
                          updated_at=now)
        if new:
            await self.store.insert_invoice(updated, methods)
        else:
            await self.store.update_invoice(
                invoice_id, status=assessment.status, exception=exception, paid_at=paid_at,
                cancelled_at=invoice.cancelled_at, digest=digest, now=now,
            )
        type_ = force_type or event_type(invoice.status, assessment.status)
        body = self._render(updated, methods, payments)
        label = body["chain"] or "none"  # the event's chain: its first picked method's (metrics, MQTT topics)
        event_id = new_id("evt")
        payload = json.dumps(
            {"id": event_id, "type": type_, "created_at": views.iso(now), "invoice": body}, separators=(",", ":")
        )
        seq = await self.store.add_event(event_id, invoice_id, label, type_, now, payload, self.transports,
                                         self.clock())
        if self.event_listeners:
            previous = await self.store.previous_event_payload(invoice_id, seq)
            record = EventRecord(seq, event_id, type_, invoice_id, now, body,
                                 json.loads(previous)["invoice"] if previous else None, updated)
            for listener in self.event_listeners:
                await listener(self.store, record)
        pending = _PENDING.get()
        pending.touched.add(invoice_id)
        pending.effects.append(partial(metrics.EVENTS.labels(label, type_).inc))
        if new:
            why = f"created, {body['amount']} {body['currency']} in " + ", ".join(
                m["method"] for m in body["payment_methods"])
        elif invoice.status is not assessment.status:
            why = f"{invoice.status} -> {assessment.status}"
        elif why is None:
            why = f"updated, still {assessment.status}"
        pending.effects.append(partial(
            log.info, "invoice %s: %s%s", invoice_id, why, f" ({exception})" if exception else "",
            extra={"invoice_id": invoice_id, "chain": chain or body["chain"], "event_id": event_id},
        ))
        return body

    def caught_up(self, chain_name: str) -> bool:
        """The chain's node answers and we have processed up to its tip: what it has not shown us, it has not
        got. A chain no longer configured has nobody watching it: nothing to wait for."""
        chain = self.chains.get(chain_name)
        if chain is None:
            return True
        if chain_name in self.elsewhere:  # as its follower said when it last renewed its lease
            return self.elsewhere[chain_name]
        return chain.connected and (chain.node_tip is None or self.tips.get(chain_name, -1) >= chain.node_tip)
