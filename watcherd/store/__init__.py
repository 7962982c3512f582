"""Storage, SQLite (aiosqlite, the default) or PostgreSQL (asyncpg): the schema, its migrations, and the only
place with SQL.

Every change that has consequences (payments, invoice status, the chain cursor, outbox rows) happens inside
`Store.transaction()`, so a crash leaves either all of a block's effects or none of them. Amounts are stored
as TEXT holding the integer: SQLite's INTEGER is signed 64-bit and wei overflows it.

`db` owns transactions (group commit) over a `backend` (`sqlite`, `postgres`), `schema` and `schema_postgres` the
migration scripts, `rows` the dataclasses handed out, `copy` moves a SQLite store into PostgreSQL; `chains`,
`invoices`, `payments`, `outbox`, `hooks` and `leases` each hold one family of queries, in SQL both databases read
the same, and `Store` is all of them over one database.
"""

from __future__ import annotations

from watcherd.store.chains import KEEP_BLOCKS, ChainQueries
from watcherd.store.hooks import HookQueries
from watcherd.store.invoices import InvoiceQueries
from watcherd.store.leases import LeaseLost, LeaseQueries, LeaseRow
from watcherd.store.outbox import OutboxQueries
from watcherd.store.payments import PaymentQueries
from watcherd.store.rows import Delivery, HookDelivery, InvoiceRow, MethodRow, PaymentRow
from watcherd.store.schema import SCHEMA

__all__ = ["KEEP_BLOCKS", "SCHEMA", "Delivery", "HookDelivery", "InvoiceRow", "LeaseLost", "LeaseRow", "MethodRow",
           "PaymentRow", "Store"]


class Store(ChainQueries, InvoiceQueries, PaymentQueries, OutboxQueries, HookQueries, LeaseQueries):
    """Every query family over one connection: what the ledger, the API and the senders are handed."""
