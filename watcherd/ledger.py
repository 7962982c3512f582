"""The chain-agnostic core: applies what adapters saw to the store, one atomic transaction at a time.

Each public coroutine is one SQLite transaction holding the facts (payments, cursor) AND their consequences
(invoice status, outbox events), so a crash can never leave a status change without its notification or a
cursor advanced past a block whose payments were not recorded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

from watcherd import metrics, views
from watcherd.core.chain import ChainAdapter, OpenInvoice
from watcherd.core.invoices import FINALITY, PaymentStatus, Status, Terms, assess, event_type
from watcherd.core.types import ChainBlock, ChainTx, Cursor, Received
from watcherd.exceptions import InvoiceError
from watcherd.live import Live
from watcherd.store import KEEP_BLOCKS, InvoiceRow, PaymentRow, Store

log = logging.getLogger("watcherd.processor")

GAP_LIMIT = 20  # wallets stop scanning after 20 unused addresses in a row (BIP44 gap limit)


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


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
        self.live = Live()  # payment pages watching an invoice
        self._touched: set[str] = set()  # invoices given an event since the last wake-up

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
        self.known_assets = await self.store.known_assets()

    async def load_chain(self, name: str) -> None:
        """Load a chain's watched keys and live spends into its adapter's memory."""
        chain = self.chains[name]
        async with self.store.transaction():
            await self.store.ensure_chain(name)
            await self.store.record_assets(name, chain.assets)
        chain.watchlist.keys.update(await self.store.watch_keys(name))
        self.known_assets[name] = dict(chain.assets)
        for outpoint, txid in await self.store.spends(name):
            chain.watchlist.spends[outpoint] = txid
        cursor = await self.store.cursor(name)
        self.tips[name] = cursor.height if cursor else 0
        metrics.WATCHED_ADDRESSES.labels(name).set(len(chain.watchlist.keys))

    # --- invoices -----------------------------------------------------------------------------------

    async def create_invoice(
        self, chain_name: str, amount: int, *, asset: str | None = None, order_id: str | None = None,
        expires_in: int | None = None, metadata: dict[str, Any] | None = None, idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """A new invoice with a fresh address; with an `idempotency_key` seen before, the invoice it created
        (a retried request must not burn a second address), or InvoiceError if the request differs."""
        chain = self.chains.get(chain_name)
        if chain is None:
            raise InvoiceError("chain", f"unknown chain {chain_name!r}; configured: {sorted(self.chains)}")
        asset = asset or chain.asset
        if asset not in chain.assets:
            raise InvoiceError("asset", f"{chain_name} has no asset {asset!r}; configured: {sorted(chain.assets)}")
        if amount <= 0:
            raise InvoiceError("amount", "must be greater than zero")
        now = int(self.clock())
        request_digest = json.dumps([chain_name, asset, amount, order_id, expires_in, metadata], sort_keys=True)
        async with self.store.transaction():
            if idempotency_key is not None:
                earlier = await self.store.invoice_by_idempotency_key(idempotency_key)
                if earlier is not None:
                    if earlier.request_digest != request_digest:
                        raise InvoiceError("Idempotency-Key", "was already used for a different request")
                    return await self._shown(earlier.id)
            index = await self.store.allocate_address_index(chain_name)
            address, key = await chain.address(index)
            invoice = InvoiceRow(
                id=new_id("inv"), chain=chain_name, asset=asset, address=address, watch_key=key,
                derivation_index=index, amount=amount, confirmations_required=chain.confirmations,
                tolerance_percent=chain.underpaid_tolerance_percent, status=Status.UNPAID, exception=None,
                order_id=order_id, metadata=metadata or {}, created_at=now,
                expires_at=now + (expires_in if expires_in is not None else chain.invoice_expiry_seconds),
                cancelled_at=None, paid_at=None, updated_at=now, idempotency_key=idempotency_key,
                request_digest=request_digest,
            )
            await self.store.insert_invoice(invoice)
            await self._reassess(invoice.id, force_type="invoice.created")
            unused = await self.store.unused_address_run(chain_name)
        chain.watchlist.keys.add(key)
        metrics.WATCHED_ADDRESSES.labels(chain_name).set(len(chain.watchlist.keys))
        metrics.UNUSED_ADDRESS_RUN.labels(chain_name).set(unused)
        if unused > GAP_LIMIT:
            log.warning(
                "%d consecutive issued addresses are unused: a wallet with gap limit %d would stop seeing "
                "funds sent past them; raise the wallet's gap limit", unused, GAP_LIMIT,
                extra={"chain": chain_name, "invoice_id": invoice.id},
            )
        self.wake_outbox()
        return await self._shown(invoice.id)

    async def activate_method(self, invoice_id: str, method: str) -> dict[str, Any]:
        """The customer picked `method`: give it its address (once; again is a no-op). KeyError for an unknown
        invoice, InvoiceError("method") for a method the invoice does not offer."""
        shown = await self._shown(invoice_id)
        if method not in {m["method"] for m in shown["payment_methods"]}:
            raise InvoiceError("method", f"invoice {invoice_id} does not offer {method!r}")
        return shown

    async def cancel_invoice(self, invoice_id: str) -> dict[str, Any]:
        async with self.store.transaction():
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
        return self._render(invoice, await self.store.payments_for(invoice_id))

    def _counting(self, invoice: InvoiceRow) -> tuple[Terms, int]:
        """The terms and the height that payment confirmations are counted against: the chain tip, or on a
        chain with finality the final height, where one "confirmation" means "at or below it"."""
        if invoice.confirmations_required == FINALITY:
            return replace(invoice.terms, confirmations_required=1), self.final_heights.get(invoice.chain, -1)
        return invoice.terms, self.tips.get(invoice.chain, 0)

    def _render(self, invoice: InvoiceRow, payments: list[PaymentRow]) -> dict[str, Any]:
        chain = self.chains.get(invoice.chain)
        terms, counting_tip = self._counting(invoice)
        return views.invoice_json(
            invoice, payments, terms=terms, counting_tip=counting_tip, tip=self.tips.get(invoice.chain, 0),
            now=self.clock(), assets=chain.assets if chain else self.known_assets.get(invoice.chain, {}),
            payment_uri=chain.payment_uri(invoice.address, invoice.amount, invoice.asset) if chain else None,
            method=invoice.chain if chain is None or invoice.asset == chain.asset
            else f"{invoice.chain}:{invoice.asset}",
            checkout_url=f"{self.public_url}/i/{invoice.id}",
        )

    async def _reassess(self, invoice_id: str, force_type: str | None = None) -> None:
        """Recompute one invoice from its payments; on any visible change, store it and queue an event.

        Must run inside a store transaction."""
        invoice = await self.store.invoice(invoice_id)
        if invoice is None:
            return
        now = int(self.clock())
        terms, tip = self._counting(invoice)
        payments = await self.store.payments_for(invoice_id)
        required = terms.confirmations_required
        changed = False
        for row in payments:
            confirmed = row.payment.status(tip, required) is PaymentStatus.CONFIRMED
            if confirmed != (row.confirmed_at is not None):
                await self.store.set_payment_confirmed_at(
                    invoice.chain, row.payment.txid, row.payment.vout, now if confirmed else None
                )
                changed = True
        if changed:
            payments = await self.store.payments_for(invoice_id)
        assessment = assess(terms, [p.payment for p in payments], tip, now)
        exception = assessment.exception.value if assessment.exception else None
        digest = json.dumps(
            [assessment.status, exception,
             sorted((p.payment.txid, p.payment.vout, p.payment.status(tip, required)) for p in payments)]
        )
        if digest == invoice.digest and force_type is None:
            return
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
        body = self._render(updated, payments)
        event_id = new_id("evt")
        payload = json.dumps(
            {"id": event_id, "type": type_, "created_at": views.iso(now), "invoice": body}, separators=(",", ":")
        )
        await self.store.add_event(
            event_id, invoice_id, invoice.chain, type_, now, payload, self.transports, self.clock()
        )
        metrics.EVENTS.labels(invoice.chain, type_).inc()
        self._touched.add(invoice_id)
        log.info(
            "invoice %s %s -> %s%s", invoice_id, invoice.status, assessment.status,
            f" ({exception})" if exception else "",
            extra={"invoice_id": invoice_id, "chain": invoice.chain, "event_id": event_id},
        )

    def caught_up(self, chain_name: str) -> bool:
        """The chain's node answers and we have processed up to its tip: what it has not shown us, it has not
        got. A chain no longer configured has nobody watching it: nothing to wait for."""
        chain = self.chains.get(chain_name)
        if chain is None:
            return True
        return chain.connected and (chain.node_tip is None or self.tips.get(chain_name, -1) >= chain.node_tip)

    async def expire_due(self) -> int:
        """Expire unpaid invoices past their expiry, but only on chains that are caught up: a payment mined
        while we (or the node) were away must be found before we judge it missing."""
        due = [i for i, chain in await self.store.expiring(int(self.clock())) if self.caught_up(chain)]
        if due:
            async with self.store.transaction():
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
                async with self.store.transaction():
                    pruned = await self.store.prune_events(int(self.clock()) - retention_seconds)
                events += pruned
                if not pruned:
                    break
        for name, chain in list(self.chains.items()):
            while True:
                async with self.store.transaction():
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
            invoice = await self.store.invoice_by_key(chain.name, output.key)
            if invoice is None:
                continue
            if output.output_key is not None and not await self._takes_output_key(chain, tx, output, block, touched):
                continue
            await self.store.upsert_payment(
                chain.name, invoice.id, output.asset or chain.asset, tx.txid, output.vout, output.amount, seen_at,
                block.height if block else None, block.hash if block else None, output.output_key,
            )
            touched.add(invoice.id)
            await self.store.mark_address_used(chain.name, invoice.derivation_index)
            log.info(
                "payment %s:%d of %d to invoice %s%s", tx.txid, output.vout, output.amount, invoice.id,
                f" in block {block.height}" if block else " (unconfirmed)",
                extra={"chain": chain.name, "txid": tx.txid, "invoice_id": invoice.id},
            )
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
        async with self.store.transaction():
            touched = await self._apply_tx(chain, tx, None)
            for invoice_id in touched:
                await self._reassess(invoice_id)
        self._refresh_spends(chain, tx)
        self.wake_outbox()

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
        async with self._tentative_tip(chain_name), self.store.transaction():
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
        self.live.touch_all()  # every page shows its payments' confirmations

    async def block_disconnected(self, chain_name: str, height: int, block_hash: str, parent: Cursor) -> None:
        """The block at the cursor left the main chain: undo it and move the cursor to its parent."""
        async with self._tentative_tip(chain_name), self.store.transaction():
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
        self.live.touch_all()

    async def set_cursor(self, chain_name: str, cursor: Cursor) -> None:
        """Where a chain starts on its very first run (nothing was issued before it)."""
        async with self.store.transaction():
            await self.store.set_cursor(chain_name, cursor)
        self.tips[chain_name] = cursor.height

    async def mempool_synced(self, chain_name: str, mempool: set[str]) -> None:
        """The node's whole mempool, read right after catching up to its tip: an unconfirmed payment that is
        in neither a block nor the mempool was dropped or replaced by a conflict we never saw."""
        chain = self.chains[chain_name]
        dropped = [t for t in await self.store.unconfirmed_txids(chain_name) if t not in mempool]
        if not dropped:
            return
        async with self.store.transaction():
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

    def set_final_height(self, height: int) -> None:
        self._ledger.final_heights[self.chain] = height

    async def open_invoices(self, asset: str, expired_since: int) -> list[OpenInvoice]:
        rows = await self._store.open_invoices(self.chain, asset, expired_since)
        return [OpenInvoice(r.id, r.address, r.watch_key) for r in rows]

    async def mined_totals(self, asset: str, invoice_ids: list[str], height: int) -> dict[str, int]:
        return await self._store.mined_totals(self.chain, asset, invoice_ids, height)
