"""The chain-agnostic core: applies what adapters saw to the store, one atomic transaction at a time.

Each public coroutine is one SQLite transaction holding the facts (payments, cursor) AND their consequences
(invoice status, outbox events), so a crash can never leave a status change without its notification or a
cursor advanced past a block whose payments were not recorded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from decimal import Decimal
from fractions import Fraction
from functools import partial
from typing import Any

from watcherd import metrics, views
from watcherd.core.chain import ChainAdapter, OpenInvoice
from watcherd.core.currencies import minor_units
from watcherd.core.invoices import FINALITY, Status, assess, event_type
from watcherd.core.money import MAX_ATOMIC
from watcherd.core.types import ChainBlock, ChainTx, Cursor, Received
from watcherd.exceptions import InvoiceError
from watcherd.live import Live
from watcherd.store import KEEP_BLOCKS, InvoiceRow, MethodRow, PaymentRow, Store

log = logging.getLogger("watcherd.processor")

GAP_LIMIT = 20  # wallets stop scanning after 20 unused addresses in a row (BIP44 gap limit)


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


class Processor:
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

    def sink(self, chain_name: str) -> LedgerSink:
        """What the chain's adapter reports to: this ledger, bound to that chain."""
        return LedgerSink(self, chain_name)

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

    async def start(self) -> None:
        for name in self.chains:
            await self.load_chain(name)
        self.known_assets, self.natives = await self.store.known_assets()

    async def load_chain(self, name: str) -> None:
        """Load a chain's watched keys and live spends into its adapter's memory."""
        chain = self.chains[name]
        async with self._transaction():
            await self.store.ensure_chain(name)
            await self.store.record_assets(name, chain.assets, chain.asset)
        await self.watch_new_keys(name)
        self.known_assets[name] = dict(chain.assets)
        self.natives[name] = chain.asset
        for outpoint, txid in await self.store.spends(name):
            chain.watchlist.spends[outpoint] = txid
        cursor = await self.store.cursor(name)
        self.tips[name] = cursor.height if cursor else 0
        metrics.WATCHED_ADDRESSES.labels(name).set(len(chain.watchlist.keys))

    async def watch_new_keys(self, name: str) -> None:
        """Watch the addresses handed out since the last look, by this instance or another one on the store:
        before a block or a pool diff is matched, and every second while another instance shares the store."""
        chain = self.chains[name]
        rows = await self.store.keys_from(name, self._key_floor.get(name, 0))
        if rows:
            chain.watchlist.keys.update(key for _, key in rows)
            # derivation indexes commit in order (the chain's counter row is locked until its transaction ends)
            self._key_floor[name] = max(index for index, _ in rows) + 1
            metrics.WATCHED_ADDRESSES.labels(name).set(len(chain.watchlist.keys))

    async def wake_pages_since(self, seq: int | None) -> int:
        """Wake the pages watching invoices that were given an event after `seq` (by another instance on the
        store: this one's own commits wake them at once); the last event's seq, to pass next time."""
        last, invoice_ids = await self.store.events_after(seq)
        self.live.touch(set(invoice_ids))
        return last

    # --- invoices -----------------------------------------------------------------------------------

    async def create_invoice(
        self, chain_name: str, amount: int, *, asset: str | None = None, order_id: str | None = None,
        expires_in: int | None = None, metadata: dict[str, Any] | None = None, idempotency_key: str | None = None,
        redirect_url: str | None = None,
    ) -> dict[str, Any]:
        """An invoice priced in a coin, payable in it on one chain, with its address at once (the one-coin form).
        With an `idempotency_key` seen before, the invoice it created (a retried request must not burn a second
        address), or InvoiceError if the request differs."""
        chain = self.chains.get(chain_name)
        if chain is None:
            raise InvoiceError("chain", f"unknown chain {chain_name!r}; configured: {sorted(self.chains)}")
        asset = asset or chain.asset
        if asset not in chain.assets:
            raise InvoiceError("asset", f"{chain_name} has no asset {asset!r}; configured: {sorted(chain.assets)}")
        if amount <= 0:
            raise InvoiceError("amount", "must be greater than zero")
        request = [chain_name, asset, amount, order_id, expires_in, metadata]
        # a redirect_url only when given: a key used before it existed still matches its retry
        digest = json.dumps(request + ([redirect_url] if redirect_url is not None else []), sort_keys=True)
        method = MethodRow("", chain_name, asset, Fraction(1), amount, chain.confirmations)
        return await self._create(
            asset, chain.assets[asset], amount, [method], activate=True, order_id=order_id, metadata=metadata,
            redirect_url=redirect_url,
            expires_in=expires_in if expires_in is not None else chain.invoice_expiry_seconds,
            tolerance=chain.underpaid_tolerance_percent, idempotency_key=idempotency_key, request_digest=digest,
        )

    async def create_priced_invoice(
        self, currency: str, amount: int, quotes: dict[str, Fraction], *, decimals: int | None = None,
        request_digest: str | None = None, order_id: str | None = None, expires_in: int | None = None,
        metadata: dict[str, Any] | None = None, idempotency_key: str | None = None, redirect_url: str | None = None,
        confirmations: int | None = None, compat: dict[str, Any] | None = None, tolerance: Decimal | None = None,
    ) -> dict[str, Any]:
        """An invoice priced in `currency` (`amount` in its smallest unit, of `decimals` places: by default the
        currency's minor units or the coin's), offered in each method of `quotes` (method id -> the currency's
        minor units per atomic unit of the method's coin, locked now). No address is taken until the customer
        picks a method (activate_method). `request_digest` says what was asked (not the rates it got), for a
        retry with the same `idempotency_key`. `confirmations` asks for more than a chain's configured count
        (never fewer; a chain with finality keeps it); `compat` keeps what a compatible API was asked that the
        invoice has no field for."""
        if amount <= 0:
            raise InvoiceError("amount", "must be greater than zero")
        if not quotes:
            raise InvoiceError("payment_methods", "no payment method to offer")
        methods = []
        for method_id, rate in quotes.items():
            chain_name, asset = self.method_parts(method_id)
            chain = self.chains[chain_name]
            required = chain.confirmations
            if confirmations is not None and required != FINALITY:
                required = max(required, confirmations)
            due = math.ceil(amount / rate)
            if due > MAX_ATOMIC:
                raise InvoiceError("payment_methods", f"{method_id}: {due} atomic units is more than it can carry")
            methods.append(MethodRow("", chain_name, asset, rate, due, required))
        chains = [self.chains[m.chain] for m in methods]
        if request_digest is None:
            asked: list[Any] = [currency, amount, sorted(quotes), order_id, expires_in, metadata, redirect_url]
            if (confirmations, compat, tolerance) != (None, None, None):  # a compatible API's create
                asked += [confirmations, compat, str(tolerance)]
            request_digest = json.dumps(asked, sort_keys=True)
        if decimals is None:
            decimals = self.currency_decimals(currency)
        return await self._create(
            currency, decimals, amount, methods, activate=False, order_id=order_id, metadata=metadata,
            redirect_url=redirect_url,
            expires_in=expires_in if expires_in is not None else min(c.invoice_expiry_seconds for c in chains),
            tolerance=tolerance if tolerance is not None else min(c.underpaid_tolerance_percent for c in chains),
            idempotency_key=idempotency_key, request_digest=request_digest, compat=compat,
        )

    def currency_decimals(self, currency: str) -> int:
        """A fiat currency's minor units, or a configured coin's decimals (0 for neither)."""
        fiat = minor_units(currency)
        if fiat is not None:
            return fiat
        return next((c.assets[currency] for c in self.chains.values() if currency in c.assets), 0)

    def method_parts(self, method_id: str) -> tuple[str, str]:
        """(chain, asset) of a configured method id ("btc", "eth:USDC"); InvoiceError otherwise."""
        chain_name, _, token = method_id.partition(":")
        chain = self.chains.get(chain_name)
        asset = token or (chain.asset if chain else "")
        if chain is None or asset not in chain.assets:
            raise InvoiceError("payment_methods", f"unknown payment method {method_id!r}; configured: "
                               f"{', '.join(self.method_ids())}")
        return chain_name, asset

    def method_ids(self) -> list[str]:
        """Every configured method: each chain's coin, then its tokens."""
        return [name if asset == chain.asset else f"{name}:{asset}"
                for name, chain in self.chains.items() for asset in chain.assets]

    def _method_id(self, chain: str, asset: str) -> str:
        native = self.chains[chain].asset if chain in self.chains else self.natives.get(chain)
        return chain if asset == native else f"{chain}:{asset}"

    async def _create(
        self, currency: str, decimals: int, amount: int, methods: list[MethodRow], *, activate: bool,
        order_id: str | None, metadata: dict[str, Any] | None, redirect_url: str | None, expires_in: int,
        tolerance: Decimal, idempotency_key: str | None, request_digest: str, compat: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        now = int(self.clock())
        async with self._transaction():
            if idempotency_key is not None:
                earlier = await self.store.invoice_by_idempotency_key(idempotency_key)
                if earlier is not None:
                    if earlier.request_digest != request_digest:
                        raise InvoiceError("Idempotency-Key", "was already used for a different request")
                    return await self._shown(earlier.id)
            invoice = InvoiceRow(
                id=new_id("inv"), currency=currency, decimals=decimals, amount=amount,
                tolerance_percent=tolerance, status=Status.UNPAID,
                exception=None, order_id=order_id, metadata=metadata or {}, created_at=now, expires_at=now + expires_in,
                cancelled_at=None, paid_at=None, updated_at=now, idempotency_key=idempotency_key,
                request_digest=request_digest, redirect_url=redirect_url, compat=compat or {},
            )
            await self.store.insert_invoice(invoice, methods)
            methods = [replace(m, invoice_id=invoice.id) for m in methods]
            if activate:
                methods[0] = await self._activate(methods[0], now)
            # the rows are all here: the new invoice is rendered from them, once, for its event and the answer
            shown = await self._reassess(invoice.id, force_type="invoice.created", rows=(invoice, methods, []))
        self._after_activation(methods[0].chain if activate else None, invoice.id)
        assert shown is not None
        return shown

    async def _activate(self, method: MethodRow, now: int) -> MethodRow:
        """Give the method its address: the chain's next derivation index. Inside the caller's transaction."""
        chain = self.chains[method.chain]
        index, self._unused[method.chain] = await self.store.allocate_address_index(method.chain)
        address, key = await chain.address(index)
        await self.store.activate(method, address, key, index, now)
        _PENDING.get().new_keys.append((method.chain, key))
        return replace(method, activated_at=now, address=address, watch_key=key, derivation_index=index)

    def _after_activation(self, chain_name: str | None, invoice_id: str) -> None:
        """After the commit (which made the new address watched): warn when the gap limit is near."""
        self.wake_outbox()
        if chain_name is None:
            return
        unused = self._unused.get(chain_name, 0)
        metrics.UNUSED_ADDRESS_RUN.labels(chain_name).set(unused)
        if unused > GAP_LIMIT:
            log.warning(
                "%d consecutive issued addresses are unused: a wallet with gap limit %d would stop seeing "
                "funds sent past them; raise the wallet's gap limit", unused, GAP_LIMIT,
                extra={"chain": chain_name, "invoice_id": invoice_id},
            )

    async def activate_method(self, invoice_id: str, method: str) -> dict[str, Any]:
        """The customer picked `method`: give it its address (once; again is a no-op). KeyError for an unknown
        invoice, InvoiceError("method") for a method the invoice does not offer or an invoice no longer open."""
        async with self._transaction():
            invoice = await self.store.invoice(invoice_id)
            if invoice is None:
                raise KeyError(invoice_id)
            offered = {self._method_id(m.chain, m.asset): m for m in await self.store.methods_for(invoice_id)}
            chosen = offered.get(method)
            if chosen is None:
                raise InvoiceError("method", f"invoice {invoice_id} is not payable with {method!r}; it offers "
                                             f"{', '.join(offered)}")
            if chosen.activated_at is None:
                if invoice.status not in (Status.UNPAID, Status.PROCESSING) or invoice.cancelled_at is not None:
                    raise InvoiceError("method", f"invoice {invoice_id} is {invoice.status}: no new address")
                if invoice.expires_at <= self.clock():  # expired, though its chains may not have said so yet
                    raise InvoiceError("method", f"invoice {invoice_id} is expired: no new address")
                if chosen.chain not in self.chains:
                    raise InvoiceError("method", f"{method} is no longer configured")
                await self._activate(chosen, int(self.clock()))
                await self._reassess(invoice_id, force_type="invoice.updated")
                activated = chosen.chain
            else:
                activated = None
        self._after_activation(activated, invoice_id)
        return await self._shown(invoice_id)

    async def cancel_invoice(self, invoice_id: str) -> dict[str, Any]:
        async with self._transaction():
            invoice = await self.store.invoice(invoice_id)
            if invoice is None:
                raise KeyError(invoice_id)
            if invoice.status not in (Status.UNPAID, Status.EXPIRED, Status.CANCELLED):
                raise InvoiceError("status", f"an invoice that is {invoice.status} cannot be cancelled")
            if invoice.cancelled_at is None:
                await self.store.update_invoice(
                    invoice_id, status=invoice.status, exception=invoice.exception, paid_at=invoice.paid_at,
                    cancelled_at=int(self.clock()), digest=invoice.digest, now=int(self.clock()),
                )
                await self._reassess(invoice_id)
        self.wake_outbox()
        return await self._shown(invoice_id)

    async def mark_status(self, invoice_id: str, status: Status) -> dict[str, Any]:
        """Mark the invoice paid or invalid by hand, whatever its payments say (they are still recorded).
        KeyError for an unknown invoice."""
        if status not in (Status.PAID, Status.INVALID):
            raise InvoiceError("status", "an invoice can be marked paid or invalid only")
        async with self._transaction():
            invoice = await self.store.invoice(invoice_id)
            if invoice is None:
                raise KeyError(invoice_id)
            if invoice.manual_status is not status:
                await self.store.set_manual_status(invoice_id, status)
                await self._reassess(invoice_id)
        self.wake_outbox()
        return await self._shown(invoice_id)

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
        rows: tuple[InvoiceRow, list[MethodRow], list[PaymentRow]] | None = None,
    ) -> dict[str, Any] | None:
        """Recompute one invoice from its payments; on any visible change, store it and queue an event, and
        return the invoice as the event shows it. `rows`: the invoice, its methods and payments as the caller
        just wrote them (a new invoice), instead of reading them back.

        Must run inside a store transaction."""
        invoice = rows[0] if rows else await self.store.invoice(invoice_id)
        if invoice is None:
            return None
        now = int(self.clock())
        payments = rows[2] if rows else await self.store.payments_for(invoice_id)
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
        methods = rows[1] if rows else await self.store.methods_for(invoice_id)
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
        await self.store.update_invoice(
            invoice_id, status=assessment.status, exception=exception, paid_at=paid_at,
            cancelled_at=invoice.cancelled_at, digest=digest, now=now,
        )
        type_ = force_type or event_type(invoice.status, assessment.status)
        updated = replace(invoice, status=assessment.status, exception=exception, paid_at=paid_at, digest=digest,
                          updated_at=now)
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
        pending.effects.append(partial(
            log.info, "invoice %s %s -> %s%s", invoice_id, invoice.status, assessment.status,
            f" ({exception})" if exception else "",
            extra={"invoice_id": invoice_id, "chain": label, "event_id": event_id},
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

    async def expire_due(self) -> int:
        """Expire unpaid invoices past their expiry, but only on chains that are caught up: a payment mined
        while we (or the node) were away must be found before we judge it missing."""
        due = [i for i, chains in await self.store.expiring(int(self.clock()))
               if all(self.caught_up(chain) for chain in chains)]
        if due:
            async with self._transaction(fence="outbox"):
                for invoice_id in due:
                    await self._reassess(invoice_id)
            self.wake_outbox()
        return len(due)

    async def prune(self, retention_seconds: int | None) -> tuple[int, int]:
        """Forget what can no longer matter, a bounded batch per transaction so that blocks are not held up:
        the events (and delivery records) of settled invoices older than the retention once delivered, and the
        spent outpoints of payments replaced or buried deeper than any reorg we follow. Invoices and payments
        stay for ever. Returns (events, spends) forgotten."""
        events = spends = 0
        if retention_seconds is not None:
            while True:
                async with self._transaction(fence="outbox"):
                    pruned = await self.store.prune_events(int(self.clock()) - retention_seconds)
                events += pruned
                if not pruned:
                    break
        for name, chain in list(self.chains.items()):
            while True:
                async with self._transaction(fence="outbox"):
                    gone = await self.store.prune_spends(name, self.tips.get(name, 0) - KEEP_BLOCKS)
                for outpoint, txid in gone:
                    if chain.watchlist.spends.get(outpoint) == txid:
                        del chain.watchlist.spends[outpoint]
                spends += len(gone)
                if not gone:
                    break
        return events, spends

    # --- what adapters report -----------------------------------------------------------------------

    async def _apply_tx(self, chain: ChainAdapter, tx: ChainTx, block: ChainBlock | None) -> set[str]:
        touched: set[str] = set()
        for other in chain.watchlist.conflicts(tx.txid, tx.spent):
            touched.update(await self.store.replace_tx(chain.name, other))
            log.warning(
                "payment tx %s replaced by conflicting tx %s", other, tx.txid,
                extra={"chain": chain.name, "txid": other},
            )
        now = int(self.clock())
        # first met in a block: seen when the chain says it was mined, not when we caught up (never later)
        seen_at = now if block is None or block.time is None else min(now, block.time)
        for output in tx.received:
            method = await self.store.method_by_key(chain.name, output.key)
            if method is None or method.derivation_index is None:
                continue
            if output.output_key is not None and not await self._takes_output_key(chain, tx, output, block, touched):
                continue
            await self.store.upsert_payment(
                chain.name, method.invoice_id, output.asset or chain.asset, tx.txid, output.vout, output.amount,
                seen_at, block.height if block else None, block.hash if block else None, output.output_key,
                method_asset=method.asset,
            )
            touched.add(method.invoice_id)
            await self.store.mark_address_used(chain.name, method.derivation_index)
            _PENDING.get().effects.append(partial(
                log.info, "payment %s:%d of %d to invoice %s%s", tx.txid, output.vout, output.amount,
                method.invoice_id, f" in block {block.height}" if block else " (unconfirmed)",
                extra={"chain": chain.name, "txid": tx.txid, "invoice_id": method.invoice_id},
            ))
        if tx.received and tx.spent:
            await self.store.add_spends(chain.name, tx.txid, tx.spent)
        return touched

    async def _takes_output_key(
        self, chain: ChainAdapter, tx: ChainTx, output: Received, block: ChainBlock | None, touched: set[str]
    ) -> bool:
        """Monero's burning bug: outputs sharing a one-time key can be spent only once, so only one of them
        counts: the first seen, unless it is still unmined and this one is in a block (the pool one may never
        be mined)."""
        assert output.output_key is not None
        holder = await self.store.payment_with_output_key(chain.name, output.output_key)
        if holder is None or holder[:2] == (tx.txid, output.vout):
            return True
        where = f"{tx.txid}:{output.vout}"
        if block is not None and holder[2] is None:
            touched.add(await self.store.replace_payment(chain.name, holder[0], holder[1]))
            log.warning("unmined output %s:%d gives its one-time key up to %s, mined in block %d (burning bug)",
                        holder[0], holder[1], where, block.height, extra={"chain": chain.name, "txid": tx.txid})
            return True
        metrics.MALFORMED.labels(chain.name, "duplicate_output_key").inc()
        log.warning("ignored output %s: its one-time key already paid us in %s:%d (burning bug)", where,
                    holder[0], holder[1], extra={"chain": chain.name, "txid": tx.txid})
        return False

    def _refresh_spends(self, chain: ChainAdapter, tx: ChainTx) -> None:
        for other in chain.watchlist.conflicts(tx.txid, tx.spent):
            for outpoint in [o for o, t in chain.watchlist.spends.items() if t == other]:
                del chain.watchlist.spends[outpoint]
        if tx.received:
            for outpoint in tx.spent:
                chain.watchlist.spends[outpoint] = tx.txid

    async def tx_seen(self, chain_name: str, tx: ChainTx) -> None:
        """A transaction entered the mempool."""
        chain = self.chains[chain_name]
        if tx.received and not chain.watchlist.conflicts(tx.txid, tx.spent) and {
                o.vout for o in tx.received} <= await self.store.counting_outputs(chain_name, tx.txid):
            # seen before and still counting: nothing would change. A node announces a block's transactions
            # again once it connects the block; taking each again would hold up the payments behind them
            return
        async with self._transaction(fence=f"chain:{chain_name}"):
            touched = await self._apply_tx(chain, tx, None)
            for invoice_id in touched:
                await self._reassess(invoice_id)
        self._refresh_spends(chain, tx)
        self.wake_outbox()

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

    async def block_connected(self, chain_name: str, block: ChainBlock) -> None:
        """A block joined the main chain on top of the cursor: record it and advance the cursor with it."""
        chain = self.chains[chain_name]
        async with self._tentative_tip(chain_name), self._transaction(fence=f"chain:{chain_name}"):
            touched: set[str] = set()
            for tx in block.txs:
                touched |= await self._apply_tx(chain, tx, block)
            await self.store.set_cursor(chain_name, Cursor(block.height, block.hash))
            self.tips[chain_name] = block.height
            final = self.final_heights.get(chain_name, -1)
            touched.update(await self.store.invoices_gaining_confirmation(chain_name, block.height, final))
            for invoice_id in sorted(touched):
                await self._reassess(invoice_id)
        for tx in block.txs:
            self._refresh_spends(chain, tx)
        self.wake_outbox()
        self.live.touch_chain(chain_name)  # the pages there show their payments' confirmations

    async def block_disconnected(self, chain_name: str, height: int, block_hash: str, parent: Cursor) -> None:
        """The block at the cursor left the main chain: undo it and move the cursor to its parent."""
        async with self._tentative_tip(chain_name), self._transaction(fence=f"chain:{chain_name}"):
            touched = await self.store.unconfirm_block(chain_name, block_hash)
            await self.store.set_cursor(chain_name, parent)
            self.tips[chain_name] = parent.height
            final = self.final_heights.get(chain_name, -1)
            touched.extend(await self.store.invoices_losing_confirmation(chain_name, parent.height, final))
            for invoice_id in sorted(set(touched)):
                await self._reassess(invoice_id)
        log.warning(
            "block %d %s disconnected (reorg)", height, block_hash, extra={"chain": chain_name}
        )
        self.wake_outbox()
        self.live.touch_chain(chain_name)

    async def set_cursor(self, chain_name: str, cursor: Cursor) -> None:
        """Where a chain starts on its very first run (nothing was issued before it)."""
        async with self._transaction(fence=f"chain:{chain_name}"):
            await self.store.set_cursor(chain_name, cursor)
        self.tips[chain_name] = cursor.height

    async def mempool_synced(self, chain_name: str, mempool: set[str]) -> None:
        """The node's whole mempool, read right after catching up to its tip: an unconfirmed payment that is
        in neither a block nor the mempool was dropped or replaced by a conflict we never saw."""
        chain = self.chains[chain_name]
        dropped = [t for t in await self.store.unconfirmed_txids(chain_name) if t not in mempool]
        if not dropped:
            return
        async with self._transaction(fence=f"chain:{chain_name}"):
            touched: set[str] = set()
            for txid in dropped:
                log.warning("payment tx %s left the mempool unmined", txid, extra={"chain": chain_name, "txid": txid})
                touched.update(await self.store.replace_tx(chain_name, txid))
            for invoice_id in sorted(touched):
                await self._reassess(invoice_id)
        for outpoint in [o for o, t in chain.watchlist.spends.items() if t in dropped]:
            del chain.watchlist.spends[outpoint]
        self.wake_outbox()


class LedgerSink:
    """One chain's view of the ledger: the `watcherd.core.chain.ChainSink` its adapter talks to."""

    def __init__(self, ledger: Processor, chain: str):
        self._ledger = ledger
        self._store = ledger.store
        self.chain = chain

    async def cursor(self) -> Cursor | None:
        return await self._store.cursor(self.chain)

    async def block_hash(self, height: int) -> str | None:
        return await self._store.block_hash(self.chain, height)

    async def set_cursor(self, cursor: Cursor) -> None:
        await self._ledger.set_cursor(self.chain, cursor)

    async def tx_seen(self, tx: ChainTx) -> None:
        await self._ledger.tx_seen(self.chain, tx)

    async def block_connected(self, block: ChainBlock) -> None:
        await self._ledger.block_connected(self.chain, block)

    async def block_disconnected(self, height: int, block_hash: str, parent: Cursor) -> None:
        await self._ledger.block_disconnected(self.chain, height, block_hash, parent)

    async def mempool_synced(self, known: set[str]) -> None:
        await self._ledger.mempool_synced(self.chain, known)

    async def unconfirmed_txids(self) -> list[str]:
        return await self._store.unconfirmed_txids(self.chain)

    async def refresh_watchlist(self) -> None:
        await self._ledger.watch_new_keys(self.chain)

    def set_final_height(self, height: int) -> None:
        self._ledger.final_heights[self.chain] = height

    async def open_invoices(self, asset: str, expired_since: int) -> list[OpenInvoice]:
        rows = await self._store.open_invoices(self.chain, asset, expired_since)
        return [OpenInvoice(invoice_id, address, key) for invoice_id, address, key in rows]

    async def mined_totals(self, asset: str, invoice_ids: list[str], height: int) -> dict[str, int]:
        return await self._store.mined_totals(self.chain, asset, invoice_ids, height)
