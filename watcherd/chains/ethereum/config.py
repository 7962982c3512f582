"""An EVM chain's `[chains.NAME]` table (kind = "ethereum": the native asset and ERC-20 tokens, over websocket)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from decimal import Decimal

from watcherd.chains.ethereum import address as eth_address
from watcherd.config.reader import Table, common_chain_keys, has_userinfo

# Ethereum finalizes 64 to 96 blocks behind its head: a reorg deeper than 128 is a wrong node, or a chain
# (Polygon PoS has had deeper ones) whose operator raises this.
MAX_REORG_DEPTH = 128


@dataclass(frozen=True)
class EthToken:
    symbol: str
    contract: str  # EIP-55 checksummed
    decimals: int


@dataclass(frozen=True)
class EvmNetwork:
    name: str  # "chain-id-<n>": two chains are the same network only when their chain ids match


@dataclass(frozen=True)
class EthereumChainConfig:
    name: str
    ws_url: str = field(repr=False)  # may carry a provider's API key in its path
    chain_id: int
    xpub: str = field(repr=False)  # account level m/44'/60'/0'; invoices get /0/i
    confirmations: int  # used when finality is None
    finality: str | None  # "finalized": a payment is confirmed once the node's `finalized` block covers it
    tokens: tuple[EthToken, ...]
    asset: str  # the native asset's symbol (ETH, or POL, ...)
    underpaid_tolerance_percent: Decimal
    invoice_expiry_seconds: int
    start_height: int | None  # None: start at the node's tip on the very first run
    node_down_after_seconds: float = 30.0
    max_reorg_depth: int = MAX_REORG_DEPTH
    kind: str = "ethereum"
    decimals: int = 18
    coin: str = "ethereum"

    @property
    def network(self) -> EvmNetwork:
        return EvmNetwork(f"chain-id-{self.chain_id}")

    def address_deriver(self) -> eth_address.EthDeriver:
        return eth_address.EthDeriver(self.xpub)


_WS_URL = re.compile(r"wss?://\S+")
_TOKEN_SYMBOL = re.compile(r"[A-Za-z0-9.]{1,16}")


def parse_config(t: Table, name: str) -> EthereumChainConfig | None:
    # A provider's URL carries its key (wss://mainnet.infura.io/ws/v3/<key>): it may come from a file like any
    # secret (ws_url_file), and is shown redacted in logs.
    ws_url = t.secret("ws_url") or ""
    if ws_url and not _WS_URL.fullmatch(ws_url):
        t.problem(t.secret_key("ws_url"), "must be a websocket URL, ws:// or wss:// (the node's websocket JSON-RPC)")
    elif ws_url and has_userinfo(ws_url):
        t.problem(t.secret_key("ws_url"), "must not contain credentials (user:password@): they would travel and show "
                  "with the URL; a provider's key in the path is fine (logs show only the host), and ws_url_file "
                  "keeps the whole URL in a file of its own")
    chain_id = t.integer("chain_id", None, lambda x: x >= 1, "an integer ≥ 1 (1 = Ethereum mainnet)")
    xpub = t.secret("xpub")
    if xpub is not None:
        try:
            eth_address.EthDeriver(xpub)
        except ValueError as e:
            t.problem(t.secret_key("xpub"), str(e))
            xpub = None
    finality = t.choice("finality", ("finalized",), default="") or None
    if finality is not None and t.present("confirmations"):
        t.problem("finality", "set confirmations or finality = \"finalized\", not both")
    asset = t.text("asset", default="ETH")
    tokens = _tokens(t, asset)
    common = common_chain_keys(t, confirmations=12, max_reorg_depth=MAX_REORG_DEPTH)
    chain = EthereumChainConfig(
        name=name,
        ws_url=ws_url,
        chain_id=chain_id,
        xpub=xpub or "",
        finality=finality,
        tokens=tokens,
        asset=asset,
        **asdict(common),  # the keys every chain table has
    )
    return chain if t.finish() and xpub is not None and chain_id else None


def _tokens(t: Table, asset: str) -> tuple[EthToken, ...]:
    """The [[chains.NAME.tokens]] array; a token with problems is left out (and its problems reported)."""
    tokens: list[EthToken] = []
    raw_tokens = t.raw("tokens")
    if raw_tokens is None:
        return ()
    if not isinstance(raw_tokens, list):
        t.problem("tokens", "must be an array of tables: [[chains.NAME.tokens]] symbol, contract, decimals")
        return ()
    for i, item in enumerate(raw_tokens):
        if not isinstance(item, dict):
            t.problem(f"tokens[{i}]", "must be a table with symbol, contract, decimals")
            continue
        tt = Table(t.ctx, t.dotted(f"tokens[{i}]"), item)
        symbol = tt.text("symbol")
        if symbol and not _TOKEN_SYMBOL.fullmatch(symbol):
            tt.problem("symbol", "must be 1-16 letters, digits or dots")
        elif symbol and (symbol == asset or symbol in {tok.symbol for tok in tokens}):
            tt.problem("symbol", f"{symbol!r} is already an asset of this chain")
        contract = tt.text("contract")
        if contract:
            try:
                contract = eth_address.to_checksum(eth_address.parse_address(contract))
            except ValueError as e:
                tt.problem("contract", str(e))
                contract = ""
        if contract and contract in {tok.contract for tok in tokens}:
            tt.problem("contract", "is listed twice")
        decimals = tt.integer("decimals", None, lambda x: 0 <= x <= 36, "an integer 0 ≤ x ≤ 36")
        if tt.finish() and symbol and contract:
            tokens.append(EthToken(symbol=symbol, contract=contract, decimals=decimals))
    return tuple(tokens)
