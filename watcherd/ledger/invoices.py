"""The invoice side of the ledger: creating invoices (priced in a coin or in a currency with locked rates),
giving a picked method its address, cancelling, marking by hand, expiring, and pruning what no longer matters."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from decimal import Decimal
from fractions import Fraction
from typing import Any

from watcherd import metrics
from watcherd.core.currencies import minor_units
from watcherd.core.invoices import FINALITY, Status
from watcherd.core.money import MAX_ATOMIC
from watcherd.exceptions import InvoiceError, MethodLimit
from watcherd.ledger.base import _PENDING, LedgerBase, log, new_id
from watcherd.store import KEEP_BLOCKS, InvoiceRow, MethodRow

GAP_LIMIT = 20  # wallets stop scanning after 20 unused addresses in a row (BIP44 gap limit)
MAX_UNPAID_METHODS = 3  # methods one invoice may have picked while nothing is paid (first, second thoughts, a third)


class InvoiceLedger(LedgerBase):
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
            raise InvoiceError("chain", f"unknown chain {chain_name!r}; configured: {', '.join(sorted(self.chains))}")
        asset = asset or chain.asset
        if asset not in chain.assets:
            configured = ", ".join(sorted(chain.assets))
            raise InvoiceError("asset", f"{chain_name} has no asset {asset!r}; configured: {configured}")
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
        invoice has no field for, its "api" the API that created it (none: the native one)."""
        if amount <= 0:
            raise InvoiceError("amount", "must be greater than zero")
        if tolerance is not None and not 0 <= tolerance < 100:  # whatever door it came through (config caps its own)
            raise InvoiceError("tolerance", "must be a percentage 0 <= x < 100")
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
                api=(compat or {}).get("api", "native"),
            )
            methods = [replace(m, invoice_id=invoice.id) for m in methods]
            if activate:
                methods[0] = await self._activate(methods[0], now, stored=False)
            # the rows are all here: the new invoice is stored with its assessment, and rendered once for its event
            # and the answer
            shown = await self._reassess(invoice.id, force_type="invoice.created", new=(invoice, methods))
        self._after_activation(methods[0].chain if activate else None, invoice.id)
        assert shown is not None
        return shown

    async def _activate(self, method: MethodRow, now: int, *, stored: bool = True) -> MethodRow:
        """Give the method its address: the chain's next derivation index. Inside the caller's transaction.
        `stored`: the method's row is in the store already (not: the caller inserts the returned row)."""
        chain = self.chains[method.chain]
        index, self._unused[method.chain] = await self.store.allocate_address_index(method.chain)
        address, key = await chain.address(index)
        if stored:
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

    async def _check_pick(self, invoice: InvoiceRow, methods: list[MethodRow], chosen: MethodRow, method: str,
                          capped: bool) -> None:
        """Why `chosen` may not get an address now (InvoiceError / MethodLimit), else nothing."""
        invoice_id = invoice.id
        if invoice.status not in (Status.UNPAID, Status.PROCESSING) or invoice.cancelled_at is not None:
            raise InvoiceError("method", f"invoice {invoice_id} is {invoice.status}: no new address")
        if invoice.expires_at <= self.clock():  # expired, though its chains may not have said so yet
            raise InvoiceError("method", f"invoice {invoice_id} is expired: no new address")
        if chosen.chain not in self.chains:
            raise InvoiceError("method", f"{method} is no longer configured")
        picked = sum(m.activated_at is not None for m in methods)
        if capped and picked >= MAX_UNPAID_METHODS and not any(
                p.payment.counts for p in await self.store.payments_for(invoice_id)):
            raise MethodLimit("method", f"invoice {invoice_id} has {picked} payment methods picked and "
                                        f"nothing paid yet: pay with one of them")

    async def activate_method(self, invoice_id: str, method: str, *, capped: bool = True) -> dict[str, Any]:
        """The customer picked `method`: give it its address (once; again is a no-op, which reads but never
        writes). KeyError for an unknown invoice, InvoiceError("method") for a method the invoice does not
        offer or an invoice no longer open, MethodLimit when `capped` and MAX_UNPAID_METHODS are picked already
        with nothing paid (whoever holds an invoice id must not burn addresses past a wallet's gap limit)."""
        invoice = await self.store.invoice(invoice_id)
        if invoice is None:
            raise KeyError(invoice_id)
        methods = await self.store.methods_for(invoice_id)
        chosen = self._offered(invoice_id, methods, method)
        if chosen.activated_at is not None:  # a second click, a reload, a retry: answered from what is committed
            return self._render(invoice, methods, await self.store.payments_for(invoice_id))
        # judged first on what is committed: a refused pick (repeated by whoever holds the id) takes no writer
        await self._check_pick(invoice, methods, chosen, method, capped)
        async with self._transaction():
            invoice = await self.store.invoice(invoice_id, for_update=True)
            if invoice is None:
                raise KeyError(invoice_id)
            methods = await self.store.methods_for(invoice_id)
            chosen = self._offered(invoice_id, methods, method)
            if chosen.activated_at is None:
                await self._check_pick(invoice, methods, chosen, method, capped)  # again, under the row's lock
                await self._activate(chosen, int(self.clock()))
                await self._reassess(invoice_id, force_type="invoice.updated", why=f"method {method} picked",
                                     chain=chosen.chain)
                activated = chosen.chain
            else:
                activated = None
        self._after_activation(activated, invoice_id)
        return await self._shown(invoice_id)

    def _offered(self, invoice_id: str, methods: list[MethodRow], method: str) -> MethodRow:
        offered = {self._method_id(m.chain, m.asset): m for m in methods}
        chosen = offered.get(method)
        if chosen is None:
            raise InvoiceError("method", f"invoice {invoice_id} is not payable with {method!r}; it offers "
                                         f"{', '.join(offered)}")
        return chosen

    async def cancel_invoice(self, invoice_id: str) -> dict[str, Any]:
        async with self._transaction():
            invoice = await self.store.invoice(invoice_id, for_update=True)
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
            invoice = await self.store.invoice(invoice_id, for_update=True)
            if invoice is None:
                raise KeyError(invoice_id)
            if invoice.manual_status is not status:
                await self.store.set_manual_status(invoice_id, status)
                await self._reassess(invoice_id)
        self.wake_outbox()
        return await self._shown(invoice_id)

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
