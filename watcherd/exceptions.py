"""One family of exceptions per layer; third-party errors are translated at the edges."""

import sqlite3


class WatcherdError(Exception):
    """Base of every error watcherd raises on purpose."""


class ConfigError(WatcherdError):
    """The configuration is invalid. `problems` lists every (file, key, message) found."""

    def __init__(self, problems: list[tuple[str, str, str]]):
        self.problems = problems
        super().__init__("\n".join(f"{f}: {k}: {m}" for f, k, m in problems))


class NodeError(WatcherdError):
    """A node could not be reached or answered something unusable."""


class NodeUnavailable(NodeError):
    """The node's RPC endpoint did not answer (connection refused, timeout)."""


class NodeProtocolError(NodeError):
    """The node answered, but the answer is malformed or an RPC error."""


class ChainRefused(WatcherdError):
    """The node serves another chain than the config names: refusing to follow it is the only safe answer.
    The chain stops (the others go on) until the operator changes its config or restarts watcherd."""

    reason = "network"  # the `reason` label of watcherd_chain_stopped


class ReorgTooDeep(ChainRefused):
    """The node's chain leaves ours deeper than the chain's max_reorg_depth: more likely a wrong node than a
    real reorg, so nothing is disconnected and an operator decides."""

    reason = "reorg_depth"


class DecodeError(WatcherdError):
    """Raw transaction or block bytes could not be decoded."""


class StoreError(WatcherdError):
    """The database refused an operation."""


class StoreUnavailable(StoreError):
    """The database server could not be reached or dropped the connection (PostgreSQL down, failing over)."""


# What a store call raises when the database cannot do its work (disk full, read-only, locked, gone).
STORE_ERRORS: tuple[type[Exception], ...] = (StoreError, sqlite3.Error)


class InvoiceError(WatcherdError):
    """A request about an invoice is invalid; `field` names the offending input."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(message)


class MethodLimit(InvoiceError):
    """An invoice with nothing paid has as many payment methods picked as it may: no address for another."""


class RatesUnavailable(WatcherdError):
    """No fresh exchange rate for a pair: pricing on it now would be a guess (the API answers 503)."""
