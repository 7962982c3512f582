"""A Bitcoin-family chain's `[chains.NAME]` table (kind = "bitcoin": Bitcoin and Litecoin Core nodes)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

from watcherd.chains.bitcoin import address as btc_address
from watcherd.config.reader import ZMQ_ENDPOINT, Table, common_chain_keys, is_http_url

# A reorg deeper than this is more likely a wrong node than a real one (100 blocks: coinbase maturity).
MAX_REORG_DEPTH = 100


@dataclass(frozen=True)
class BitcoinChainConfig:
    name: str
    coin: str  # bitcoin | litecoin
    network: btc_address.Network
    asset: str  # BTC | LTC
    rpc_url: str
    rpc_user: str | None
    rpc_password: str | None = field(repr=False)
    # Kept as a path, not read: bitcoind writes a new cookie on every restart, the adapter re-reads it.
    rpc_cookie_file: Path | None
    zmq_rawtx: str | None
    zmq_hashblock: str | None
    poll_interval_seconds: float
    xpub: str = field(repr=False)  # not secret, but it reveals every address of the account
    address_type: str
    confirmations: int
    underpaid_tolerance_percent: Decimal
    invoice_expiry_seconds: int
    start_height: int | None  # None: start at the node's tip on the very first run
    node_down_after_seconds: float = 30.0
    max_reorg_depth: int = MAX_REORG_DEPTH
    kind: str = "bitcoin"
    decimals: int = 8

    @property
    def zmq(self) -> bool:
        """True when the node pushes over ZMQ; otherwise the chain is polled."""
        return self.zmq_rawtx is not None and self.zmq_hashblock is not None

    def address_deriver(self) -> btc_address.AddressDeriver:
        return btc_address.AddressDeriver(self.xpub, self.address_type, self.network)


def parse_config(t: Table, name: str) -> BitcoinChainConfig | None:
    coin = t.choice("coin", ("bitcoin", "litecoin"))
    network_name = t.choice("network", ("mainnet", "testnet", "testnet4", "signet", "regtest"))
    network = None
    if coin and network_name:
        try:
            network = btc_address.network(coin, network_name)
        except ValueError:
            t.problem("network", f"{coin} has no {network_name} network")

    rpc_url = t.text("rpc_url")
    if rpc_url and not is_http_url(rpc_url):
        t.problem("rpc_url", "must be an http:// or https:// URL")
    elif rpc_url and (urlsplit(rpc_url).username or urlsplit(rpc_url).password):
        t.problem(
            "rpc_url", "must not contain credentials; use rpc_user + rpc_password(_file), or rpc_cookie_file"
        )
    rpc_user = t.optional_text("rpc_user")
    rpc_password = t.secret("rpc_password", required=False)
    rpc_cookie_file = t.optional_path("rpc_cookie_file")
    has_user, has_cookie = t.present("rpc_user"), t.present("rpc_cookie_file")
    has_password = t.present("rpc_password") or t.present("rpc_password_file")
    if has_cookie and (has_user or has_password):
        t.problem("rpc_cookie_file", "use either rpc_cookie_file or rpc_user with rpc_password, not both")
    elif has_user and not has_password:
        t.problem("rpc_password", "is required with rpc_user (or rpc_password_file)")
    elif has_password and not has_user:
        t.problem("rpc_user", "is required with rpc_password")
    elif not (has_cookie or has_user):
        t.problem(
            "rpc_cookie_file", "no RPC credentials: set rpc_cookie_file, or rpc_user + rpc_password(_file)"
        )

    zmq_rawtx = t.optional_text("zmq_rawtx")
    zmq_hashblock = t.optional_text("zmq_hashblock")
    for key, endpoint in (("zmq_rawtx", zmq_rawtx), ("zmq_hashblock", zmq_hashblock)):
        if endpoint is not None and not ZMQ_ENDPOINT.fullmatch(endpoint):
            t.problem(key, "must be a ZMQ endpoint like tcp://127.0.0.1:28332 or ipc:///path")
    if t.present("zmq_rawtx") != t.present("zmq_hashblock"):
        missing = "zmq_hashblock" if t.present("zmq_rawtx") else "zmq_rawtx"
        t.problem(missing, "set both zmq_rawtx and zmq_hashblock, or neither to poll the node")

    address_type = t.choice("address_type", btc_address.ADDRESS_TYPES, default="p2wpkh")
    xpub = t.secret("xpub")
    if xpub is not None and network is not None and address_type:
        try:
            btc_address.AddressDeriver(xpub, address_type, network)
        except ValueError as e:
            t.problem(t.secret_key("xpub"), str(e))

    poll_interval_seconds = t.number("poll_interval_seconds", 2.0, lambda x: x > 0, "a number > 0")
    common = common_chain_keys(t, confirmations=2, max_reorg_depth=MAX_REORG_DEPTH)
    chain = BitcoinChainConfig(
        name=name,
        coin=coin,
        network=network or btc_address.network("bitcoin", "mainnet"),
        asset={"bitcoin": "BTC", "litecoin": "LTC"}.get(coin, ""),
        rpc_url=rpc_url,
        rpc_user=rpc_user,
        rpc_password=rpc_password,
        rpc_cookie_file=rpc_cookie_file,
        zmq_rawtx=zmq_rawtx,
        zmq_hashblock=zmq_hashblock,
        poll_interval_seconds=poll_interval_seconds,
        xpub=xpub or "",
        address_type=address_type,
        **asdict(common),  # the keys every chain table has
    )
    # A refused or invalid key leaves placeholders behind; such a chain must not be used, even for checks.
    return chain if t.finish() and network is not None and xpub is not None else None
