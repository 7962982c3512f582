"""The chain side of the ledger: what adapters report (pool transactions, blocks connected and disconnected, the
cursor, the pool read whole), applied with its consequences; the watched addresses and spends loaded into
their memory; and `LedgerSink`, the one door an adapter reports through."""

from __future__ import annotations

from functools import partial

from watcherd import metrics
from watcherd.core.chain import ChainAdapter, OpenInvoice
from watcherd.core.types import ChainBlock, ChainTx, Cursor, Received
from watcherd.ledger.base import _PENDING, LedgerBase, log


class ChainLedger(LedgerBase):
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
        authoritative = block is not None and block.authoritative
        counting = await self.store.counting_outputs(chain.name, tx.txid) if authoritative else {}
        paid: set[int] = set()
        for output in tx.received:
            if output.amount <= 0:
                continue  # a zero-value output is never a payment, on any chain
            method = await self.store.method_by_key(chain.name, output.key)
            if method is None or method.derivation_index is None:
                continue
            if output.output_key is not None and not await self._takes_output_key(chain, tx, output, block, touched):
                continue
            held = counting.get(output.vout)
            if held is not None and held[0] != method.invoice_id:
                log.warning("ignored output %s:%d to invoice %s: that id was a payment to invoice %s", tx.txid,
                            output.vout, method.invoice_id, held[0], extra={"chain": chain.name, "txid": tx.txid})
                continue
            if held is not None and held[1] != output.amount:
                _PENDING.get().effects.append(partial(
                    log.info, "payment %s:%d is %s as mined, not %s as seen before", tx.txid, output.vout,
                    self._amount(chain.name, output.asset or chain.asset, output.amount),
                    self._amount(chain.name, output.asset or chain.asset, held[1]),
                    extra={"chain": chain.name, "txid": tx.txid},
                ))
            paid.add(output.vout)
            await self.store.upsert_payment(
                chain.name, method.invoice_id, output.asset or chain.asset, tx.txid, output.vout, output.amount,
                seen_at, block.height if block else None, block.hash if block else None, output.output_key,
                method_asset=method.asset,
            )
            touched.add(method.invoice_id)
            await self.store.mark_address_used(chain.name, method.derivation_index)
            _PENDING.get().effects.append(partial(
                log.info, "payment %s:%d of %s to %s%s", tx.txid, output.vout,
                self._amount(chain.name, output.asset or chain.asset, output.amount), method.invoice_id,
                f" in block {block.height}" if block else " (unconfirmed)",
                extra={"chain": chain.name, "txid": tx.txid, "invoice_id": method.invoice_id},
            ))
        for vout in sorted(counting.keys() - paid):
            # the block is the truth: its transaction did not pay this (reverted, or its token paid elsewhere)
            touched.add(await self.store.replace_payment(chain.name, tx.txid, vout))
            log.warning("payment %s:%d is not paid by its mined transaction: it no longer counts", tx.txid, vout,
                        extra={"chain": chain.name, "txid": tx.txid})
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
                o.vout for o in tx.received} <= (await self.store.counting_outputs(chain_name, tx.txid)).keys():
            # seen before and still counting: nothing would change. A node announces a block's transactions
            # again once it connects the block; taking each again would hold up the payments behind them
            return
        async with self._transaction(fence=f"chain:{chain_name}"):
            touched = await self._apply_tx(chain, tx, None)
            for invoice_id in touched:
                await self._reassess(invoice_id, chain=chain_name)
        self._refresh_spends(chain, tx)
        self.wake_outbox()

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
                await self._reassess(invoice_id, chain=chain_name)
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
                await self._reassess(invoice_id, chain=chain_name)
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
                await self._reassess(invoice_id, chain=chain_name)
        for outpoint in [o for o, t in chain.watchlist.spends.items() if t in dropped]:
            del chain.watchlist.spends[outpoint]
        self.wake_outbox()


class LedgerSink:
    """One chain's view of the ledger: the `watcherd.core.chain.ChainSink` its adapter talks to."""

    def __init__(self, ledger: ChainLedger, chain: str):
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
