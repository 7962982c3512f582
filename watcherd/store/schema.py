"""The schema as its migration scripts: `SCHEMA[n]` takes a store from version n to n + 1.

A released script never changes: an existing database has already run it. A change is a new script appended.
"""

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
    # version 3: the decimals of each asset invoices were made for (an invoice still renders right once its chain
    # left the config); an invoice's events by index, not by scanning them all
    """
    CREATE TABLE assets (
        chain TEXT NOT NULL,
        asset TEXT NOT NULL,
        decimals INTEGER NOT NULL,
        PRIMARY KEY (chain, asset)
    );
    CREATE INDEX events_invoice ON events (invoice_id, seq);
    """,
    # version 4: an invoice is priced in a currency (fiat, or a coin) and payable by one or more methods (a coin or
    # token on a chain), each with its rate locked at creation and, once the customer picks it, its own address.
    # The address columns move from invoices to methods; an invoice of version 3 becomes one priced in its coin
    # with that one method, activated, at a rate of 1.
    """
    -- the chain's own coin (method id "btc"), else a token ("eth:USDC")
    ALTER TABLE assets ADD COLUMN native INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE methods (
        invoice_id TEXT NOT NULL REFERENCES invoices(id),
        chain TEXT NOT NULL,
        asset TEXT NOT NULL,
        rate TEXT NOT NULL,  -- invoice currency minor units per atomic unit of the asset, an exact fraction "n/d"
        amount TEXT NOT NULL,  -- the whole price in atomic units, rounded up
        confirmations_required INTEGER NOT NULL,
        activated_at INTEGER,
        address TEXT,
        watch_key BLOB,
        derivation_index INTEGER,
        PRIMARY KEY (invoice_id, chain, asset),
        UNIQUE (chain, derivation_index),
        UNIQUE (chain, address)
    );
    CREATE INDEX methods_key ON methods (chain, watch_key);
    INSERT INTO methods (invoice_id, chain, asset, rate, amount, confirmations_required, activated_at, address,
                         watch_key, derivation_index)
        SELECT id, chain, asset, '1', amount, confirmations_required, created_at, address, watch_key,
               derivation_index FROM invoices;
    -- which of its invoice's methods a payment came by (the method owning the address it paid)
    ALTER TABLE payments ADD COLUMN method_asset TEXT;
    UPDATE payments SET method_asset = (SELECT m.asset FROM methods m WHERE m.invoice_id = payments.invoice_id);
    CREATE TABLE invoices_v4 (
        id TEXT PRIMARY KEY,
        currency TEXT NOT NULL,  -- a fiat code (USD) or an asset code (BTC): `amount` is in its smallest unit
        decimals INTEGER,  -- the currency's (NULL before version 4: the coin's, from its method)
        amount TEXT NOT NULL,
        tolerance_percent TEXT NOT NULL,
        status TEXT NOT NULL,
        exception TEXT,
        order_id TEXT,
        idempotency_key TEXT UNIQUE,
        request_digest TEXT,
        metadata TEXT NOT NULL DEFAULT '{}',
        redirect_url TEXT,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        cancelled_at INTEGER,
        paid_at INTEGER,
        updated_at INTEGER NOT NULL,
        digest TEXT NOT NULL DEFAULT ''
    );
    INSERT INTO invoices_v4 (id, currency, amount, tolerance_percent, status, exception, order_id, idempotency_key,
                             request_digest, metadata, created_at, expires_at, cancelled_at, paid_at, updated_at,
                             digest)
        SELECT id, asset, amount, tolerance_percent, status, exception, order_id, idempotency_key, request_digest,
               metadata, created_at, expires_at, cancelled_at, paid_at, updated_at, digest FROM invoices;
    DROP TABLE invoices;
    ALTER TABLE invoices_v4 RENAME TO invoices;
    CREATE INDEX invoices_open ON invoices (status, expires_at);
    CREATE INDEX invoices_order ON invoices (order_id);
    """,
    # version 5: the compatible APIs (BTCPay Greenfield, BitPay). An invoice may be marked paid or invalid by hand
    # (overriding what its payments say), keeps what a compatible API was asked that the native invoice has no field
    # for (BitPay's notificationURL and posData, Greenfield's checkout options), and webhooks registered through the
    # API each get their own deliveries: the exact body sent, with its own retry state.
    """
    ALTER TABLE invoices ADD COLUMN manual_status TEXT;  -- 'paid' | 'invalid' | NULL
    ALTER TABLE invoices ADD COLUMN compat TEXT NOT NULL DEFAULT '{}';
    CREATE TABLE hooks (
        id TEXT PRIMARY KEY,
        url TEXT NOT NULL,
        secret TEXT NOT NULL,
        enabled INTEGER NOT NULL DEFAULT 1,
        automatic_redelivery INTEGER NOT NULL DEFAULT 1,
        events TEXT,  -- JSON list of the event types it wants; NULL: every one
        created_at INTEGER NOT NULL,
        deleted_at INTEGER  -- deleted hooks keep their delivery records until they are pruned
    );
    CREATE TABLE hook_deliveries (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        hook_id TEXT,  -- NULL: a one-off notification URL of the invoice (BitPay's IPN)
        url TEXT NOT NULL,
        invoice_id TEXT NOT NULL,
        type TEXT NOT NULL,
        body TEXT NOT NULL,  -- exactly what is POSTed (and signed)
        created_at INTEGER NOT NULL,
        original_id TEXT,  -- a redelivery: the delivery it repeats
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        delivered_at INTEGER,
        failed_at INTEGER,
        last_error TEXT,
        http_code INTEGER,
        last_attempt_at INTEGER
    );
    CREATE INDEX hook_deliveries_pending ON hook_deliveries (delivered_at, failed_at, next_attempt_at);
    CREATE INDEX hook_deliveries_hook ON hook_deliveries (hook_id, seq);
    CREATE INDEX hook_deliveries_invoice ON hook_deliveries (url, invoice_id, seq);
    """,
    # version 6: several instances on one store. Each chain's follower and the outbox sender run under a lease
    # (one holder at a time, taken over once it expires); the token grows at every takeover and each of the
    # holder's transactions checks it, so a stalled ex-holder's late commit is refused. Instances that did not
    # hand an address out learn it from methods_index.
    """
    CREATE TABLE leases (
        name TEXT PRIMARY KEY,  -- 'chain:<name>' or 'outbox'
        holder TEXT NOT NULL,  -- the instance that holds (or last held) it
        token INTEGER NOT NULL,  -- the fencing token
        expires_at REAL NOT NULL,  -- unix seconds, by the store's clock
        caught_up INTEGER NOT NULL DEFAULT 0  -- a chain's holder has processed up to its node's tip (expiry waits)
    );
    CREATE INDEX methods_index ON methods (chain, derivation_index);
    """,
    # version 7: the order an invoice's methods were offered in, as a column: it was SQLite's rowid, which
    # PostgreSQL has no equivalent of (schema_postgres.py starts at this version)
    """
    ALTER TABLE methods ADD COLUMN position INTEGER NOT NULL DEFAULT 0;
    UPDATE methods SET position = rowid;
    """,
    # version 8: the undelivered rows indexed on their own, in order and by invoice, so that finding each
    # invoice's next due delivery reads only those, whatever the planner knows of the tables (PostgreSQL without
    # statistics yet, on a new store, read the whole backlog once per undelivered row: seconds for a few thousand)
    """
    CREATE INDEX deliveries_open ON deliveries (transport, event_seq) WHERE delivered_at IS NULL AND failed_at IS NULL;
    CREATE INDEX deliveries_open_invoice ON deliveries (transport, invoice_id, event_seq)
        WHERE delivered_at IS NULL AND failed_at IS NULL;
    CREATE INDEX hook_deliveries_open ON hook_deliveries (seq) WHERE delivered_at IS NULL AND failed_at IS NULL;
    CREATE INDEX hook_deliveries_open_invoice ON hook_deliveries (invoice_id, seq)
        WHERE delivered_at IS NULL AND failed_at IS NULL;
    """,
    # version 9: the API that created each invoice, so that the compatible APIs' key reaches only theirs
    # ([greenfield] scope) and its lists still read an index newest first, as every invoice list now does. An
    # invoice from before knew it by what the API was asked: those with compat data are the compatible APIs'.
    """
    ALTER TABLE invoices ADD COLUMN api TEXT NOT NULL DEFAULT 'native';  -- 'native' | 'greenfield' | 'bitpay'
    UPDATE invoices SET api = CASE json_extract(compat, '$.api') WHEN 'bitpay' THEN 'bitpay' ELSE 'greenfield' END
        WHERE compat <> '{}';
    CREATE INDEX invoices_created ON invoices (created_at, id);
    CREATE INDEX invoices_compat ON invoices (created_at, id) WHERE api <> 'native';
    """,
]
