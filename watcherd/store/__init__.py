"""aiosqlite storage: the schema, its migrations, and the only place with SQL.

Every change that has consequences (payments, invoice status, the chain cursor, outbox rows) happens inside
`Store.transaction()`, so a crash leaves either all of a block's effects or none of them. Amounts are stored
as TEXT holding the integer: SQLite's INTEGER is signed 64-bit and wei overflows it.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiosqlite

from watcherd.core.invoices import Payment, Status, Terms
from watcherd.core.types import Cursor
from watcherd.exceptions import StoreError

SCHEMA = [
    # version 1
    """
    CREATE TABLE chains (
        name TEXT PRIMARY KEY,
        cursor_height INTEGER,
        cursor_hash TEXT,
        next_address_index INTEGER NOT NULL DEFAULT 0,
        last_used_index INTEGER NOT NULL DEFAULT -1  -- highest derivation index that ever received funds
    );
    -- recent blocks of the main chain as we processed them: the reorg walk-back compares against these
    CREATE TABLE blocks (
        chain TEXT NOT NULL,
        height INTEGER NOT NULL,
        hash TEXT NOT NULL,
        PRIMARY KEY (chain, height)
    );
    CREATE TABLE invoices (
        id TEXT PRIMARY KEY,
        chain TEXT NOT NULL,
        asset TEXT NOT NULL,
        address TEXT NOT NULL,
        watch_key BLOB NOT NULL,  -- what the chain adapter matches on (a scriptPubKey, an address)
        derivation_index INTEGER NOT NULL,
        amount TEXT NOT NULL,
        confirmations_required INTEGER NOT NULL,
        tolerance_percent TEXT NOT NULL,
        status TEXT NOT NULL,
        exception TEXT,
        order_id TEXT,
        idempotency_key TEXT UNIQUE,  -- the API's Idempotency-Key: a retried create returns the same invoice
        request_digest TEXT,
        metadata TEXT NOT NULL DEFAULT '{}',
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        cancelled_at INTEGER,
        paid_at INTEGER,
        updated_at INTEGER NOT NULL,
        digest TEXT NOT NULL DEFAULT '',  -- what the last event showed: a change emits the next one
        UNIQUE (chain, derivation_index),
        UNIQUE (chain, address)
    );
    CREATE INDEX invoices_key ON invoices (chain, watch_key);
    CREATE INDEX invoices_open ON invoices (status, expires_at);
    CREATE TABLE payments (
        chain TEXT NOT NULL,
        txid TEXT NOT NULL,
        vout INTEGER NOT NULL,
        invoice_id TEXT NOT NULL REFERENCES invoices(id),
        asset TEXT NOT NULL,
        amount TEXT NOT NULL,
        first_seen_at INTEGER NOT NULL,
        block_height INTEGER,
        block_hash TEXT,
        confirmed_at INTEGER,
        replaced INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (chain, txid, vout)
    );
    CREATE INDEX payments_invoice ON payments (invoice_id);
    CREATE INDEX payments_block ON payments (chain, block_hash);
    CREATE INDEX payments_height ON payments (chain, block_height);
    CREATE INDEX payments_unconfirmed ON payments (chain) WHERE confirmed_at IS NULL;
    -- the outpoints spent by each paying transaction: another transaction spending one of them replaces it
    CREATE TABLE spends (
        chain TEXT NOT NULL,
        outpoint BLOB NOT NULL,
        txid TEXT NOT NULL,
        PRIMARY KEY (chain, outpoint, txid)
    );
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        invoice_id TEXT NOT NULL,
        chain TEXT NOT NULL,
        type TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        payload TEXT NOT NULL
    );
    CREATE TABLE deliveries (
        event_seq INTEGER NOT NULL REFERENCES events(seq),
        transport TEXT NOT NULL,
        invoice_id TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        delivered_at INTEGER,
        failed_at INTEGER,
        last_error TEXT,
        PRIMARY KEY (event_seq, transport)
    );
    CREATE INDEX deliveries_pending ON deliveries (transport, delivered_at, failed_at, next_attempt_at);
    CREATE INDEX deliveries_invoice ON deliveries (transport, invoice_id, event_seq);
    """,
    # version 2: Monero's one-time output keys, so a reused one counts once across restarts
    """
    ALTER TABLE payments ADD COLUMN output_key BLOB;
    CREATE INDEX payments_output_key ON payments (chain, output_key) WHERE output_key IS NOT NULL;
    """,
]


@dataclass(frozen=True, slots=True)
class InvoiceRow:
    id: str
    chain: str
    asset: str
    address: str
    watch_key: bytes
    derivation_index: int
    amount: int
    confirmations_required: int
    tolerance_percent: Decimal
    status: Status
    exception: str | None
    order_id: str | None
    metadata: dict[str, Any]
    created_at: int
    expires_at: int
    cancelled_at: int | None
    paid_at: int | None
    updated_at: int
    digest: str = ""
    idempotency_key: str | None = None
    request_digest: str | None = None

    @property
    def terms(self) -> Terms:
        return Terms(
            amount=self.amount,
            expires_at=self.expires_at,
            confirmations_required=self.confirmations_required,
            underpaid_tolerance_percent=self.tolerance_percent,
            cancelled=self.cancelled_at is not None,
        )


@dataclass(frozen=True, slots=True)
class PaymentRow:
    invoice_id: str
    payment: Payment
    block_hash: str | None
    confirmed_at: int | None
    asset: str


@dataclass(frozen=True, slots=True)
class Delivery:
    event_seq: int
    event_id: str
    invoice_id: str
    type: str
    payload: str
    attempts: int
    created_at: int


def _invoice(row: sqlite3.Row) -> InvoiceRow:
    return InvoiceRow(
        id=row["id"],
        chain=row["chain"],
        asset=row["asset"],
        address=row["address"],
        watch_key=bytes(row["watch_key"]),
        derivation_index=row["derivation_index"],
        amount=int(row["amount"]),
        confirmations_required=row["confirmations_required"],
        tolerance_percent=Decimal(row["tolerance_percent"]),
        status=Status(row["status"]),
        exception=row["exception"],
        order_id=row["order_id"],
        metadata=json.loads(row["metadata"]),
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        cancelled_at=row["cancelled_at"],
        paid_at=row["paid_at"],
        updated_at=row["updated_at"],
        digest=row["digest"],
        idempotency_key=row["idempotency_key"],
        request_digest=row["request_digest"],
    )


def _payment(row: sqlite3.Row) -> PaymentRow:
    return PaymentRow(
        invoice_id=row["invoice_id"],
        payment=Payment(
            txid=row["txid"],
            vout=row["vout"],
            amount=int(row["amount"]),
            first_seen_at=row["first_seen_at"],
            block_height=row["block_height"],
            replaced=bool(row["replaced"]),
            wrong_asset=row["asset"] != row["invoice_asset"],
        ),
        asset=row["asset"],
        block_hash=row["block_hash"],
        confirmed_at=row["confirmed_at"],
    )


class Store:
    def __init__(self, db: aiosqlite.Connection):
        self._db = db
        self._lock = asyncio.Lock()
        self._in_transaction = False

    @classmethod
    async def open(cls, path: str | Path) -> Store:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            db = await aiosqlite.connect(str(path), isolation_level=None)
            db.row_factory = sqlite3.Row
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=FULL")  # an acknowledged commit survives power loss
            await db.execute("PRAGMA foreign_keys=ON")
            await db.execute("PRAGMA busy_timeout=5000")
            store = cls(db)
            await store._migrate()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {path}: {exc}") from exc
        return store

    async def close(self) -> None:
        await self._db.close()

    async def _migrate(self) -> None:
        version = (await self._one("PRAGMA user_version"))[0]
        for number, script in enumerate(SCHEMA[version:], start=version + 1):
            await self._db.executescript(f"BEGIN; {script}; PRAGMA user_version={number}; COMMIT;")

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Store]:
        """One atomic unit of work; transactions are serialized, never interleaved."""
        async with self._lock:
            await self._db.execute("BEGIN IMMEDIATE")
            self._in_transaction = True
            try:
                yield self
            except BaseException:
                await asyncio.shield(self._db.execute("ROLLBACK"))
                raise
            else:
                # shielded: a shutdown cancelling the caller must not leave a commit half-acknowledged
                await asyncio.shield(self._db.execute("COMMIT"))
            finally:
                self._in_transaction = False

    async def _one(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Row | None:
        async with self._db.execute(sql, tuple(params)) as cur:
            return await cur.fetchone()

    async def _all(self, sql: str, params: Iterable[Any] | dict[str, Any] = ()) -> list[sqlite3.Row]:
        async with self._db.execute(sql, params if isinstance(params, dict) else tuple(params)) as cur:
            return list(await cur.fetchall())

    async def _write(self, sql: str, params: Iterable[Any] = ()) -> int:
        if not self._in_transaction:
            raise StoreError("write outside a transaction")
        async with self._db.execute(sql, tuple(params)) as cur:
            return cur.lastrowid or 0

    async def writable(self) -> bool:
        try:
            async with self.transaction():
                await self._write("CREATE TEMP TABLE IF NOT EXISTS probe (x)")
            return True
        except (sqlite3.Error, StoreError):
            return False

    # --- chains -------------------------------------------------------------------------------------

    async def ensure_chain(self, chain: str) -> None:
        await self._write("INSERT OR IGNORE INTO chains (name) VALUES (?)", (chain,))

    async def cursor(self, chain: str) -> Cursor | None:
        row = await self._one("SELECT cursor_height, cursor_hash FROM chains WHERE name = ?", (chain,))
        if row is None or row[0] is None:
            return None
        return Cursor(row[0], row[1])

    async def set_cursor(self, chain: str, cursor: Cursor, keep_blocks: int = 1000) -> None:
        await self._write(
            "UPDATE chains SET cursor_height = ?, cursor_hash = ? WHERE name = ?",
            (cursor.height, cursor.hash, chain),
        )
        await self._write(
            "INSERT OR REPLACE INTO blocks (chain, height, hash) VALUES (?, ?, ?)",
            (chain, cursor.height, cursor.hash),
        )
        await self._write(
            "DELETE FROM blocks WHERE chain = ? AND (height > ? OR height <= ?)",
            (chain, cursor.height, cursor.height - keep_blocks),
        )

    async def block_hash(self, chain: str, height: int) -> str | None:
        row = await self._one("SELECT hash FROM blocks WHERE chain = ? AND height = ?", (chain, height))
        return row[0] if row else None

    async def allocate_address_index(self, chain: str) -> int:
        row = await self._one("SELECT next_address_index FROM chains WHERE name = ?", (chain,))
        if row is None:
            raise StoreError(f"unknown chain {chain!r}")
        await self._write("UPDATE chains SET next_address_index = ? WHERE name = ?", (row[0] + 1, chain))
        return int(row[0])

    async def unused_address_run(self, chain: str) -> int:
        """How many of the newest issued addresses in a row have never received anything."""
        row = await self._one("SELECT next_address_index - 1 - last_used_index FROM chains WHERE name = ?", (chain,))
        return int(row[0]) if row else 0

    async def mark_address_used(self, chain: str, derivation_index: int) -> None:
        await self._write(
            "UPDATE chains SET last_used_index = MAX(last_used_index, ?) WHERE name = ?", (derivation_index, chain)
        )

    # --- invoices -----------------------------------------------------------------------------------

    async def insert_invoice(self, inv: InvoiceRow) -> None:
        await self._write(
            """INSERT INTO invoices (id, chain, asset, address, watch_key, derivation_index, amount,
                   confirmations_required, tolerance_percent, status, exception, order_id, metadata,
                   created_at, expires_at, cancelled_at, paid_at, updated_at, idempotency_key, request_digest)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (
                inv.id, inv.chain, inv.asset, inv.address, inv.watch_key, inv.derivation_index, str(inv.amount),
                inv.confirmations_required, str(inv.tolerance_percent), inv.status.value, inv.exception,
                inv.order_id, json.dumps(inv.metadata), inv.created_at, inv.expires_at, inv.cancelled_at,
                inv.paid_at, inv.updated_at, inv.idempotency_key, inv.request_digest,
            ),
        )

    async def update_invoice(
        self, invoice_id: str, *, status: Status, exception: str | None, paid_at: int | None,
        cancelled_at: int | None, digest: str, now: int,
    ) -> None:
        await self._write(
            """UPDATE invoices SET status = ?, exception = ?, paid_at = ?, cancelled_at = ?, digest = ?,
                   updated_at = ? WHERE id = ?""",
            (status.value, exception, paid_at, cancelled_at, digest, now, invoice_id),
        )

    async def invoice_by_idempotency_key(self, key: str) -> InvoiceRow | None:
        row = await self._one("SELECT * FROM invoices WHERE idempotency_key = ?", (key,))
        return _invoice(row) if row else None

    async def invoice(self, invoice_id: str) -> InvoiceRow | None:
        row = await self._one("SELECT * FROM invoices WHERE id = ?", (invoice_id,))
        return _invoice(row) if row else None

    async def invoices(
        self, *, status: str | None = None, chain: str | None = None, order_id: str | None = None,
        limit: int = 100, before: str | None = None,
    ) -> list[InvoiceRow]:
        where, params = [], []
        for column, value in (("status", status), ("chain", chain), ("order_id", order_id)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if before is not None:
            where.append("(created_at, id) < (SELECT created_at, id FROM invoices WHERE id = ?)")
            params.append(before)
        sql = "SELECT * FROM invoices"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
        return [_invoice(r) for r in await self._all(sql, (*params, limit))]

    async def watch_keys(self, chain: str) -> list[bytes]:
        """Every address ever issued on the chain: late payments to old invoices must still be seen."""
        rows = await self._all("SELECT watch_key FROM invoices WHERE chain = ?", (chain,))
        return [bytes(r[0]) for r in rows]

    async def invoice_by_key(self, chain: str, watch_key: bytes) -> InvoiceRow | None:
        row = await self._one("SELECT * FROM invoices WHERE chain = ? AND watch_key = ?", (chain, watch_key))
        return _invoice(row) if row else None

    async def open_invoices(self, chain: str, asset: str, expired_since: int) -> list[InvoiceRow]:
        """Invoices that may still receive money worth reconciling: unpaid, processing, or expired lately."""
        rows = await self._all(
            """SELECT * FROM invoices WHERE chain = :chain AND asset = :asset
               AND (status IN ('unpaid', 'processing') OR (status = 'expired' AND expires_at >= :since))""",
            {"chain": chain, "asset": asset, "since": expired_since},
        )
        return [_invoice(r) for r in rows]

    async def mined_totals(self, chain: str, asset: str, invoice_ids: list[str], height: int) -> dict[str, int]:
        """Per invoice, the `asset` payments that still count and were mined at or below `height`."""
        totals: dict[str, int] = {}
        for start in range(0, len(invoice_ids), 500):  # SQLite's bound-parameter limit
            chunk = invoice_ids[start:start + 500]
            rows = await self._all(
                f"""SELECT invoice_id, amount FROM payments WHERE chain = ? AND asset = ? AND replaced = 0
                    AND block_height IS NOT NULL AND block_height <= ?
                    AND invoice_id IN ({", ".join("?" * len(chunk))})""",
                (chain, asset, height, *chunk),
            )
            for invoice_id, amount in rows:
                totals[invoice_id] = totals.get(invoice_id, 0) + int(amount)
        return totals

    async def expiring(self, now: int) -> list[str]:
        rows = await self._all(
            "SELECT id FROM invoices WHERE status = ? AND expires_at <= ?", (Status.UNPAID.value, now)
        )
        return [r[0] for r in rows]

    async def invoice_counts(self) -> list[tuple[str, str, int]]:
        return [
            (r[0], r[1], r[2])
            for r in await self._all("SELECT chain, status, COUNT(*) FROM invoices GROUP BY chain, status")
        ]

    # --- payments -----------------------------------------------------------------------------------

    async def payments_for(self, invoice_id: str) -> list[PaymentRow]:
        rows = await self._all(
            """SELECT p.*, i.asset AS invoice_asset FROM payments p JOIN invoices i ON i.id = p.invoice_id
               WHERE p.invoice_id = ? ORDER BY p.first_seen_at, p.txid, p.vout""",
            (invoice_id,),
        )
        return [_payment(r) for r in rows]

    async def upsert_payment(
        self, chain: str, invoice_id: str, asset: str, txid: str, vout: int, amount: int, now: int,
        block_height: int | None = None, block_hash: str | None = None, output_key: bytes | None = None,
    ) -> None:
        """Record a payment (seen again, it counts again); a block puts it in that block, while a mempool
        sighting (block_height None) never takes a mined payment out of its block."""
        await self._write(
            """INSERT INTO payments (chain, txid, vout, invoice_id, asset, amount, first_seen_at, block_height,
                   block_hash, replaced, output_key)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?)
               ON CONFLICT (chain, txid, vout) DO UPDATE SET replaced = 0,
                   block_height = COALESCE(excluded.block_height, block_height),
                   block_hash = COALESCE(excluded.block_hash, block_hash),
                   output_key = COALESCE(excluded.output_key, output_key)""",
            (chain, txid, vout, invoice_id, asset, str(amount), now, block_height, block_hash, output_key),
        )

    async def payment_with_output_key(self, chain: str, output_key: bytes) -> tuple[str, int, int | None] | None:
        """(txid, vout, block height) of the payment still counting that holds this one-time output key."""
        row = await self._one(
            """SELECT txid, vout, block_height FROM payments
               WHERE chain = ? AND output_key = ? AND replaced = 0 LIMIT 1""",
            (chain, output_key),
        )
        return None if row is None else (row[0], row[1], row[2])

    async def replace_payment(self, chain: str, txid: str, vout: int) -> str:
        """Mark one output's payment replaced; returns its invoice."""
        row = await self._one("SELECT invoice_id FROM payments WHERE chain = ? AND txid = ? AND vout = ?",
                              (chain, txid, vout))
        await self._write(
            """UPDATE payments SET replaced = 1, block_height = NULL, block_hash = NULL
               WHERE chain = ? AND txid = ? AND vout = ?""",
            (chain, txid, vout),
        )
        return row[0]

    async def set_payment_confirmed_at(self, chain: str, txid: str, vout: int, when: int | None) -> None:
        await self._write(
            "UPDATE payments SET confirmed_at = ? WHERE chain = ? AND txid = ? AND vout = ?",
            (when, chain, txid, vout),
        )

    async def replace_tx(self, chain: str, txid: str) -> list[str]:
        """Mark every payment of `txid` replaced; returns the invoices concerned."""
        rows = await self._all(
            "SELECT DISTINCT invoice_id FROM payments WHERE chain = ? AND txid = ? AND replaced = 0",
            (chain, txid),
        )
        await self._write(
            """UPDATE payments SET replaced = 1, block_height = NULL, block_hash = NULL
               WHERE chain = ? AND txid = ?""",
            (chain, txid),
        )
        return [r[0] for r in rows]

    async def unconfirm_block(self, chain: str, block_hash: str) -> list[str]:
        """A block left the main chain: its payments go back to unconfirmed."""
        rows = await self._all(
            "SELECT DISTINCT invoice_id FROM payments WHERE chain = ? AND block_hash = ?", (chain, block_hash)
        )
        await self._write(
            """UPDATE payments SET block_height = NULL, block_hash = NULL, confirmed_at = NULL
               WHERE chain = ? AND block_hash = ?""",
            (chain, block_hash),
        )
        return [r[0] for r in rows]

    async def unconfirmed_txids(self, chain: str) -> list[str]:
        rows = await self._all(
            "SELECT DISTINCT txid FROM payments WHERE chain = ? AND block_height IS NULL AND replaced = 0",
            (chain,),
        )
        return [r[0] for r in rows]

    # A payment is confirmed at `tip` when its block is at or below the invoice's threshold height: the tip
    # less its required confirmations (plus one), or on a chain with finality (required 0) the final height.
    _THRESHOLD = "CASE i.confirmations_required WHEN 0 THEN :final ELSE :tip - i.confirmations_required + 1 END"

    async def invoices_gaining_confirmation(self, chain: str, tip: int, final: int) -> list[str]:
        """Invoices with a mined payment that the new tip (or final height) confirms."""
        rows = await self._all(
            f"""SELECT DISTINCT p.invoice_id FROM payments p JOIN invoices i ON i.id = p.invoice_id
                WHERE p.chain = :chain AND p.confirmed_at IS NULL AND p.replaced = 0
                  AND p.block_height IS NOT NULL AND p.block_height <= {self._THRESHOLD}""",
            {"chain": chain, "tip": tip, "final": final},
        )
        return [r[0] for r in rows]

    async def invoices_losing_confirmation(self, chain: str, tip: int, final: int) -> list[str]:
        """Invoices with a confirmed payment that a lower tip (after a reorg) no longer confirms."""
        deepest = await self._one("SELECT MAX(confirmations_required) FROM invoices WHERE chain = ?", (chain,))
        rows = await self._all(
            f"""SELECT DISTINCT p.invoice_id FROM payments p JOIN invoices i ON i.id = p.invoice_id
                WHERE p.chain = :chain AND p.block_height > :lowest AND p.confirmed_at IS NOT NULL
                  AND p.block_height > {self._THRESHOLD}""",
            {"chain": chain, "tip": tip, "final": final, "lowest": min(tip, final) - (deepest[0] or 0) - 1},
        )
        return [r[0] for r in rows]

    async def add_spends(self, chain: str, txid: str, outpoints: Iterable[bytes]) -> None:
        for outpoint in outpoints:
            await self._write(
                "INSERT OR IGNORE INTO spends (chain, outpoint, txid) VALUES (?, ?, ?)", (chain, outpoint, txid)
            )

    async def spends(self, chain: str) -> list[tuple[bytes, str]]:
        """Outpoints spent by payments that still count: a conflicting spend replaces them."""
        rows = await self._all(
            """SELECT s.outpoint, s.txid FROM spends s WHERE s.chain = ? AND EXISTS (
                   SELECT 1 FROM payments p WHERE p.chain = s.chain AND p.txid = s.txid AND p.replaced = 0)""",
            (chain,),
        )
        return [(bytes(r[0]), r[1]) for r in rows]

    # --- events and deliveries ----------------------------------------------------------------------

    async def add_event(
        self, event_id: str, invoice_id: str, chain: str, type_: str, created_at: int, payload: str,
        transports: Iterable[str], now: float,
    ) -> int:
        seq = await self._write(
            "INSERT INTO events (id, invoice_id, chain, type, created_at, payload) VALUES (?, ?, ?, ?, ?, ?)",
            (event_id, invoice_id, chain, type_, created_at, payload),
        )
        for transport in transports:
            await self._write(
                """INSERT INTO deliveries (event_seq, transport, invoice_id, next_attempt_at)
                   VALUES (?, ?, ?, ?)""",
                (seq, transport, invoice_id, now),
            )
        return seq

    async def due_deliveries(self, transport: str, now: float, limit: int = 100) -> list[Delivery]:
        """Undelivered events whose time has come, each the oldest undelivered one of its invoice."""
        rows = await self._all(
            """SELECT d.event_seq, e.id, d.invoice_id, e.type, e.payload, d.attempts, e.created_at
               FROM deliveries d JOIN events e ON e.seq = d.event_seq
               WHERE d.transport = ? AND d.delivered_at IS NULL AND d.failed_at IS NULL
                 AND d.next_attempt_at <= ?
                 AND NOT EXISTS (SELECT 1 FROM deliveries o WHERE o.transport = d.transport
                     AND o.invoice_id = d.invoice_id AND o.event_seq < d.event_seq
                     AND o.delivered_at IS NULL AND o.failed_at IS NULL)
               ORDER BY d.event_seq LIMIT ?""",
            (transport, now, limit),
        )
        return [Delivery(r[0], r[1], r[2], r[3], r[4], r[5], r[6]) for r in rows]

    async def next_delivery_time(self, transport: str) -> float | None:
        row = await self._one(
            """SELECT MIN(next_attempt_at) FROM deliveries
               WHERE transport = ? AND delivered_at IS NULL AND failed_at IS NULL""",
            (transport,),
        )
        return row[0] if row else None

    async def mark_delivered(self, transport: str, event_seq: int, now: int) -> None:
        await self._write(
            "UPDATE deliveries SET delivered_at = ?, attempts = attempts + 1, last_error = NULL "
            "WHERE event_seq = ? AND transport = ?",
            (now, event_seq, transport),
        )

    async def mark_attempt_failed(
        self, transport: str, event_seq: int, error: str, next_attempt_at: float, give_up_at: int | None,
    ) -> None:
        await self._write(
            """UPDATE deliveries SET attempts = attempts + 1, last_error = ?, next_attempt_at = ?, failed_at = ?
               WHERE event_seq = ? AND transport = ?""",
            (error[:500], next_attempt_at, give_up_at, event_seq, transport),
        )

    async def redeliver(self, event_id: str, now: float) -> bool:
        row = await self._one("SELECT seq FROM events WHERE id = ?", (event_id,))
        if row is None:
            return False
        await self._write(
            """UPDATE deliveries SET delivered_at = NULL, failed_at = NULL, next_attempt_at = ?
               WHERE event_seq = ?""",
            (now, row[0]),
        )
        return True

    async def deliveries(
        self, *, transport: str | None = None, state: str | None = None, invoice_id: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        where, params = [], []
        if transport:
            where.append("d.transport = ?")
            params.append(transport)
        if invoice_id:
            where.append("d.invoice_id = ?")
            params.append(invoice_id)
        if state == "pending":
            where.append("d.delivered_at IS NULL AND d.failed_at IS NULL")
        elif state == "delivered":
            where.append("d.delivered_at IS NOT NULL")
        elif state == "failed":
            where.append("d.failed_at IS NOT NULL")
        sql = """SELECT e.id, e.type, d.invoice_id, e.chain, d.transport, e.created_at, d.attempts,
                        d.next_attempt_at, d.delivered_at, d.failed_at, d.last_error
                 FROM deliveries d JOIN events e ON e.seq = d.event_seq"""
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY d.event_seq DESC LIMIT ?"
        return [dict(r) for r in await self._all(sql, (*params, limit))]

    async def pending_deliveries(self) -> list[tuple[str, int, int | None]]:
        """(transport, count, oldest created_at) of what is still to deliver."""
        rows = await self._all(
            """SELECT d.transport, COUNT(*), MIN(e.created_at) FROM deliveries d
               JOIN events e ON e.seq = d.event_seq
               WHERE d.delivered_at IS NULL AND d.failed_at IS NULL GROUP BY d.transport"""
        )
        return [(r[0], r[1], r[2]) for r in rows]

    async def failed_deliveries(self) -> dict[str, int]:
        """Per transport, the deliveries given up on (kept for `webhooks redeliver`)."""
        rows = await self._all(
            "SELECT transport, COUNT(*) FROM deliveries WHERE failed_at IS NOT NULL GROUP BY transport"
        )
        return {r[0]: r[1] for r in rows}

    async def events_for(self, invoice_id: str) -> list[dict[str, Any]]:
        rows = await self._all(
            "SELECT id, type, created_at, payload FROM events WHERE invoice_id = ? ORDER BY seq", (invoice_id,)
        )
        return [dict(r) for r in rows]
