"""A Monero chain's `[chains.NAME]` table (kind = "monero": monerod, watched with the private view key)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from decimal import Decimal

from watcherd.chains.monero import crypto as xmr_crypto
from watcherd.config.reader import ZMQ_ENDPOINT, Table, common_chain_keys, has_userinfo, is_http_url

# A reorg deeper than this is more likely a wrong node than a real one.
MAX_REORG_DEPTH = 100


@dataclass(frozen=True)
class MoneroNetwork:
    name: str  # mainnet | stagenet | testnet: the address prefixes (regtest uses mainnet's)
    regtest: bool = False

    @property
    def nettype(self) -> str:
        """What monerod's get_info calls it (monerod --regtest: "fakechain")."""
        return "fakechain" if self.regtest else self.name

    @property
    def configured(self) -> str:
        """The config's `network`."""
        return "regtest" if self.regtest else self.name


@dataclass(frozen=True)
class MoneroChainConfig:
    name: str
    network: MoneroNetwork
    rpc_url: str
    rpc_user: str | None
    rpc_password: str | None = field(repr=False)
    zmq_pub: str | None  # monerod --zmq-pub endpoint; None: poll
    primary_address: str = field(repr=False)  # not secret, but it identifies the operator's wallet
    view_key: bytes = field(repr=False)  # the PRIVATE view key: reveals every incoming payment
    account: int = 0
    confirmations: int = 10
    underpaid_tolerance_percent: Decimal = Decimal(0)
    invoice_expiry_seconds: int = 900
    node_down_after_seconds: float = 30.0
    max_reorg_depth: int = MAX_REORG_DEPTH
    poll_interval_seconds: float = 2.0
    start_height: int | None = None  # None: start at the node's tip on the very first run
    asset: str = "XMR"
    kind: str = "monero"
    decimals: int = 12
    coin: str = "monero"

    def address_deriver(self) -> xmr_crypto.MoneroDeriver:
        spend_public = xmr_crypto.decode_address(self.primary_address).spend_public
        return xmr_crypto.MoneroDeriver(self.view_key, spend_public, self.network.name, self.account)


def parse_config(t: Table, name: str) -> MoneroChainConfig | None:
    network_name = t.choice("network", ("mainnet", "stagenet", "testnet", "regtest"))
    network = MoneroNetwork("mainnet", regtest=True) if network_name == "regtest" else MoneroNetwork(network_name)
    rpc_url = t.text("rpc_url")
    if rpc_url and not is_http_url(rpc_url):
        t.problem("rpc_url", "must be an http:// or https:// URL (monerod's RPC, e.g. http://127.0.0.1:18081)")
    elif rpc_url and has_userinfo(rpc_url):
        t.problem("rpc_url", "must not contain credentials (user:password@); use rpc_user + rpc_password(_file)")
    rpc_user = t.optional_text("rpc_user")
    rpc_password = t.secret("rpc_password", required=False)
    if (rpc_user is None) != (rpc_password is None):
        t.problem("rpc_user" if rpc_user is None else "rpc_password", "set rpc_user and rpc_password together "
                  "(monerod --rpc-login user:password), or neither")
    zmq_pub = t.optional_text("zmq_pub")
    if zmq_pub is not None and not ZMQ_ENDPOINT.fullmatch(zmq_pub):
        t.problem("zmq_pub", "must be a ZMQ endpoint like tcp://127.0.0.1:18084 (monerod --zmq-pub)")
    address_text = t.text("primary_address")
    address = None
    if address_text:
        try:
            address = xmr_crypto.decode_address(address_text)
        except xmr_crypto.MoneroKeyError as e:
            t.problem("primary_address", f"not a valid Monero address: {e}")
        else:
            if address.kind != "standard":
                t.problem("primary_address", f"must be the wallet's primary address, not a {address.kind} address")
                address = None
            elif network_name and address.network != network.name:
                t.problem("primary_address", f"is a {address.network} address, but network = {network_name!r}")
                address = None
    view_key = None
    view_hex = t.secret("view_key")
    if view_hex is not None:
        source = t.secret_key("view_key")
        try:
            view_key = bytes.fromhex(view_hex.strip())
            public = xmr_crypto.public_key(view_key)
        except (ValueError, xmr_crypto.MoneroKeyError):
            t.problem(source, "must be the 64-hex-digit private view key (monero-wallet-cli: viewkey)")
            view_key = None
        else:
            if address is not None and public == address.spend_public:
                t.problem(source, "refused: this is the wallet's private SPEND key, which can move the funds; "
                          "watcherd is watch-only: give it the private VIEW key")
                view_key = None
            elif address is not None and public != address.view_public:
                t.problem(source, "is not the private view key of primary_address (its public key differs)")
                view_key = None
    account = t.integer("account", 0, lambda x: 0 <= x < 2**32, "an integer 0 ≤ x < 2^32")
    common = common_chain_keys(t, confirmations=10, max_reorg_depth=MAX_REORG_DEPTH)
    chain = MoneroChainConfig(
        name=name,
        network=network,
        rpc_url=rpc_url,
        rpc_user=rpc_user,
        rpc_password=rpc_password,
        zmq_pub=zmq_pub,
        primary_address=address_text,
        view_key=view_key or bytes(32),
        account=account,
        poll_interval_seconds=t.number("poll_interval_seconds", 2.0, lambda x: x > 0, "a number > 0"),
        **asdict(common),  # the keys every chain table has
    )
    return chain if t.finish() and address is not None and view_key is not None else None
