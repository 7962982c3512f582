"""prometheus-client collectors: one module, so an SRE can read every metric watcherd exports here.

A leaf: every layer may count into it; the /metrics listener lives in watcherd/http/metrics.py."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

NODE_TIP = Gauge("watcherd_node_tip_height", "Best block height reported by the node", ["chain"])
PROCESSED_HEIGHT = Gauge("watcherd_processed_height", "Height of the last block committed", ["chain"])
LAG = Gauge("watcherd_lag_blocks", "Node tip minus processed height", ["chain"])
NODE_UP = Gauge("watcherd_node_up", "1 when the node's RPC answered on the last attempt", ["chain"])
RECONNECTS = Counter("watcherd_feed_reconnects_total", "Feed (ZMQ/websocket) (re)connections", ["chain"])
SEQUENCE_GAPS = Counter("watcherd_feed_sequence_gaps_total", "Gaps in the node feed's sequence", ["chain"])
MALFORMED = Counter(
    "watcherd_malformed_messages_total", "Node messages or RPC answers that could not be used", ["chain", "source"]
)
CHAIN_FAILURES = Counter(
    "watcherd_chain_failures_total",
    "A chain's follower stopped and backed off: kind node (down or unusable answers), store, or unexpected",
    ["chain", "kind"],
)
CHAIN_STOPPED = Gauge(
    "watcherd_chain_stopped",
    "1 while a chain is stopped: its node serves another network (reason network) or a reorg deeper than "
    "max_reorg_depth (reason reorg_depth); an operator decides",
    ["chain", "reason"],
)
REORGS = Counter("watcherd_reorgs_total", "Chain reorganisations handled", ["chain"])
REORG_DEPTH = Histogram(
    "watcherd_reorg_depth_blocks", "Blocks disconnected per reorg", ["chain"], buckets=(1, 2, 3, 6, 10, 20, 100)
)
BLOCKS = Counter("watcherd_blocks_processed_total", "Blocks connected", ["chain"])
TXS = Counter("watcherd_transactions_processed_total", "Transactions decoded and matched", ["chain", "source"])
WATCHED_ADDRESSES = Gauge("watcherd_watched_addresses", "Addresses matched in memory", ["chain"])
UNUSED_ADDRESS_RUN = Gauge(
    "watcherd_unused_address_run",
    "Newest issued addresses in a row that never received funds (wallet gap limit is usually 20)",
    ["chain"],
)
EVENTS = Counter("watcherd_events_total", "Invoice events written to the outbox", ["chain", "type"])
LIVE_STREAMS = Gauge("watcherd_live_streams", "Payment pages' live streams (SSE) open now")
LIVE_REFUSED = Counter(
    "watcherd_live_streams_refused_total",
    "Live streams answered 503: the invoice had its per-invoice streams already, or the daemon its total",
)
DELIVERED = Counter("watcherd_notifications_delivered_total", "Notifications delivered", ["transport"])
DELIVERY_FAILURES = Counter(
    "watcherd_notification_attempts_failed_total", "Failed delivery attempts", ["transport"]
)
DELIVERY_LATENCY = Histogram(
    "watcherd_delivery_latency_seconds", "From state change to a 2xx answer", ["transport"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 15, 60, 300, 3600),
)
DETECTION_LATENCY = Histogram(
    "watcherd_detection_latency_seconds", "From node notification to committed state", ["chain"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
STORE_WRITABLE = Gauge("watcherd_store_writable", "1 when the store took the last probe write")
LEASE_HELD = Gauge("watcherd_lease_held", "1 while this instance holds the lease (chain:<name>, outbox)", ["lease"])
LEASE_TAKEOVERS = Counter("watcherd_lease_takeovers_total", "Times this instance took the lease", ["lease"])
LOOP_LAG = Histogram(
    "watcherd_event_loop_lag_seconds", "How late the event loop ran a timer: CPU work on the loop stalls everything",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
INVOICES = Gauge("watcherd_invoices", "Invoices by chain and status", ["chain", "status"])
NOTIFICATIONS_PENDING = Gauge("watcherd_notifications_pending", "Events not yet delivered", ["transport"])
NOTIFICATIONS_FAILED = Gauge(
    "watcherd_notifications_failed", "Events given up on (retries exhausted or a 4xx): redeliver by hand", ["transport"]
)
OLDEST_PENDING_AGE = Gauge(
    "watcherd_notification_oldest_pending_age_seconds", "Age of the oldest undelivered event", ["transport"]
)
RATE_SOURCE_FAILURES = Counter(
    "watcherd_rate_source_failures_total",
    "Exchange rate fetches that failed or answered garbage (unreachable, HTTP error, timeout, bad JSON or price)",
    ["source"],
)
RATE_SOURCE_OUTLIERS = Counter(
    "watcherd_rate_source_outliers_total",
    "Rates left out of a pair's median for deviating from it by more than max_deviation_percent",
    ["source", "pair"],
)
RATE_AGE = Gauge(
    "watcherd_rate_age_seconds", "Age of a pair's newest source value (fixed pairs 0, never fetched +Inf)", ["pair"]
)
RATE = Gauge(
    "watcherd_exchange_rate", "A pair's median rate before the spread (NaN while unavailable); display only", ["pair"]
)
