"""A real Monero regtest node for the tests, the demo and the bench: monerod plus a paying customer wallet.

monerod runs `--regtest --offline --fixed-difficulty 1` with ZMQ publications on; a monero-wallet-rpc holds
the customer's wallet (never the operator's: watcherd itself only ever gets the view key). Coinbase outputs
unlock after 60 blocks, so the first start mines 80 blocks to the customer wallet.

Synchronous and stdlib-only on purpose, like bitcoin_node.py.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from testkit.process import PROBE_TIMEOUT, STOP_TIMEOUT, NodeProcess, binary_on_path, free_ports
from testkit.rpc import NodeRPCError, call_jsonrpc, post_json
from watcherd.chains.monero.crypto import PREFIXES, encode_address, hash_to_scalar, scalar_base

START_TIMEOUT = 90.0
COINBASE_UNLOCK = 60
FUNDING_BLOCKS = 80
ATOMIC = 10**12
SPLIT_TRANSFERS = 3
SPLIT_OUTPUT = 3 * ATOMIC


def random_address() -> str:
    """A throwaway mainnet-prefix (regtest) address nobody holds the keys of: where extra blocks are mined to,
    so that re-mined blocks after pop_blocks get fresh hashes."""
    spend = scalar_base(hash_to_scalar(os.urandom(32)))
    view = scalar_base(hash_to_scalar(os.urandom(32)))
    return encode_address(PREFIXES["mainnet"][0], spend, view)


def new_keys() -> tuple[bytes, bytes]:
    """A fresh (spend secret, view secret) pair the way Monero wallets make it: a = Hs(b)."""
    spend = hash_to_scalar(os.urandom(32))
    return spend, hash_to_scalar(spend)


def primary_address(spend_secret: bytes, view_secret: bytes, network: str = "mainnet") -> str:
    return encode_address(PREFIXES[network][0], scalar_base(spend_secret), scalar_base(view_secret))


def _program(name: str) -> str:
    return str(binary_on_path(name, "monero"))


class MoneroNode:
    """monerod in regtest on loopback ports of its own, plus the customer's monero-wallet-rpc."""

    kind = "monero"

    def __init__(self, name: str, datadir: Path, die_with_parent: bool = False,
                 ports: tuple[int, int, int, int, int] | None = None, pid: int | None = None,
                 wallet_pid: int | None = None, customer_address: str = ""):
        self.name = name
        self.datadir = Path(datadir).absolute()
        self.rpc_port, self.zmq_rpc_port, self.zmq_port, self.p2p_port, self.wallet_port = ports or free_ports(5)
        # both run in the datadir: monero's programs write a log named after themselves where they run when no
        # --log-file applies yet (`monero-wallet-rpc --version` writes monero-wallet-rpc.log): never into a checkout
        self.monerod = NodeProcess(f"{name} monerod", ["--data-dir", str(self.datadir / "chain")],
                                   self.datadir / "monerod.console.log", logs=[self.datadir / "monerod.log"],
                                   die_with_parent=die_with_parent, pid=pid, cwd=self.datadir)
        self.wallet_process = NodeProcess(
            f"{name} monero-wallet-rpc", ["--wallet-dir", str(self.datadir / "wallets")],
            self.datadir / "wallet.console.log", logs=[self.datadir / "wallet-rpc.log"],
            die_with_parent=die_with_parent, pid=wallet_pid, cwd=self.datadir,
        )
        self.customer_address = customer_address

    # ---- state, for scripts/devnet's separate processes ------------------------------------------------

    @property
    def ports(self) -> tuple[int, int, int, int, int]:
        return self.rpc_port, self.zmq_rpc_port, self.zmq_port, self.p2p_port, self.wallet_port

    def move_to_free_ports(self) -> None:
        """Fresh ports (for a node whose old ones were taken while it was down)."""
        self.rpc_port, self.zmq_rpc_port, self.zmq_port, self.p2p_port, self.wallet_port = free_ports(5)

    @property
    def pid(self) -> int | None:
        """monerod's pid (the wallet-rpc's is `wallet_pid`)."""
        return self.monerod.pid

    @property
    def wallet_pid(self) -> int | None:
        return self.wallet_process.pid

    def to_state(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "datadir": str(self.datadir), "rpc_port": self.rpc_port,
            "zmq_rpc_port": self.zmq_rpc_port, "zmq_port": self.zmq_port, "p2p_port": self.p2p_port,
            "wallet_port": self.wallet_port, "pid": self.pid, "wallet_pid": self.wallet_pid,
            "customer_address": self.customer_address,
        }

    @classmethod
    def from_state(cls, name: str, state: dict[str, Any], die_with_parent: bool = False) -> MoneroNode:
        ports = (state["rpc_port"], state["zmq_rpc_port"], state["zmq_port"], state["p2p_port"],
                 state["wallet_port"])
        return cls(name, Path(state["datadir"]), die_with_parent, ports, state.get("pid"), state.get("wallet_pid"),
                   state.get("customer_address", ""))

    def is_running(self) -> bool:
        return self.monerod.running() and self.wallet_process.running()

    def __repr__(self) -> str:
        return f"<MoneroNode {self.name} rpc={self.rpc_port} pid={self.pid} wallet_pid={self.wallet_pid}>"

    @property
    def rpc_url(self) -> str:
        return f"http://127.0.0.1:{self.rpc_port}"

    @property
    def wallet_url(self) -> str:
        """The customer's monero-wallet-rpc JSON-RPC endpoint."""
        return f"http://127.0.0.1:{self.wallet_port}/json_rpc"

    @property
    def zmq_endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.zmq_port}"

    def command(self) -> list[str]:
        return [
            # --keep-fakechain: without it a --regtest monerod wipes its chain at every start, so a restarted
            # node would come back at height 1, below every cursor and every wallet's outputs
            _program("monerod"), "--regtest", "--keep-fakechain", "--offline", "--fixed-difficulty", "1",
            "--data-dir", str(self.datadir / "chain"), "--rpc-bind-ip", "127.0.0.1",
            "--rpc-bind-port", str(self.rpc_port), "--p2p-bind-ip", "127.0.0.1",
            "--p2p-bind-port", str(self.p2p_port), "--zmq-rpc-bind-port", str(self.zmq_rpc_port),
            "--zmq-pub", self.zmq_endpoint, "--non-interactive", "--no-igd", "--log-level", "0",
            "--log-file", str(self.datadir / "monerod.log"), "--max-txpool-weight", "100000000",
        ]

    def wallet_command(self) -> list[str]:
        return [
            _program("monero-wallet-rpc"), "--daemon-address", f"127.0.0.1:{self.rpc_port}",
            "--rpc-bind-ip", "127.0.0.1", "--rpc-bind-port", str(self.wallet_port), "--disable-rpc-login",
            "--wallet-dir", str(self.datadir / "wallets"), "--non-interactive", "--trusted-daemon",
            "--log-file", str(self.datadir / "wallet-rpc.log"),
        ]

    # ---- lifecycle ------------------------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start monerod and the customer's wallet-rpc; on the very first start also mine and fund the wallet.
        On any failure both are stopped again."""
        if self.monerod.running():
            raise RuntimeError(f"{self!r} is already running")
        first = not (self.datadir / "chain").exists()
        try:
            self.start_monerod(timeout)
            if not self.wallet_process.running():
                self.wallet_process.start(self.wallet_command(), timeout=timeout, ready=lambda: call_jsonrpc(
                    self.wallet_url, "get_version", {}, timeout=PROBE_TIMEOUT))
            if first:
                self.wallet("create_wallet", filename="customer", language="English")
            else:
                self.wallet("open_wallet", filename="customer")
            self.customer_address = self.wallet("get_address", account_index=0)["address"]
            if first:
                self.mine(FUNDING_BLOCKS, self.customer_address)
                self._split_funds()
        except BaseException:
            self.stop()
            raise

    def _split_funds(self) -> None:
        """Coinbase outputs are few and a spent one's change stays locked for 10 blocks: split some into many
        3 XMR outputs, so that tests can pay many times in a row without mining in between."""
        for _ in range(SPLIT_TRANSFERS):
            own = [self.wallet("create_address", account_index=0)["address"] for _ in range(15)]
            self.pay(dict.fromkeys(own, SPLIT_OUTPUT))
        self.mine(10)

    def start_monerod(self, timeout: float = START_TIMEOUT) -> None:
        self.monerod.start(self.command(), timeout=timeout, ready=lambda: call_jsonrpc(
            f"{self.rpc_url}/json_rpc", "get_block_count", {}, timeout=PROBE_TIMEOUT))

    def stop_monerod(self) -> None:
        """Stop over RPC first: monerod then flushes its database (a signal can lose the last blocks)."""
        self.monerod.stop(STOP_TIMEOUT, ask=lambda: post_json(f"{self.rpc_url}/stop_daemon", {},
                                                              method="stop_daemon", timeout=10))

    def restart(self, timeout: float = START_TIMEOUT) -> None:
        self.stop_monerod()
        self.start_monerod(timeout)
        if self.wallet_process.running():
            # monero-wallet-rpc does not notice on its own that monerod came back: point it there again
            self.wallet("set_daemon", address=f"127.0.0.1:{self.rpc_port}", trusted=True)

    def stop(self) -> None:
        if self.wallet_process.running():
            try:
                self.wallet("close_wallet")  # saves it
            except NodeRPCError:
                pass
        self.wallet_process.stop()
        self.stop_monerod()

    def log_tail(self) -> str:
        return self.monerod.tail() + "\n" + self.wallet_process.tail()

    # ---- RPC ------------------------------------------------------------------------------------------

    def rpc(self, method: str, **params: Any) -> Any:
        return call_jsonrpc(f"{self.rpc_url}/json_rpc", method, params)

    def other(self, path: str, **params: Any) -> Any:
        """monerod's non-JSON-RPC endpoints (/get_transactions, /pop_blocks ...)."""
        reply = post_json(f"{self.rpc_url}/{path}", params, method=path, timeout=120)
        if reply.get("status") not in ("OK", None):
            raise NodeRPCError(path, None, str(reply.get("status")))
        return reply

    def wallet(self, method: str, **params: Any) -> Any:
        return call_jsonrpc(self.wallet_url, method, params, timeout=300)

    # ---- chain and wallet -----------------------------------------------------------------------------

    def mine(self, n: int = 1, address: str | None = None) -> list[str]:
        """Mine `n` blocks (to a throwaway address by default); returns their hashes."""
        return self.rpc("generateblocks", amount_of_blocks=n, wallet_address=address or random_address(),
                        starting_nonce=0)["blocks"]

    def tip(self) -> tuple[int, str]:
        header = self.rpc("get_last_block_header")["block_header"]
        return header["height"], header["hash"]

    def pop_blocks(self, n: int) -> None:
        self.other("pop_blocks", nblocks=n)

    def pool(self) -> list[str]:
        return self.other("get_transaction_pool_hashes").get("tx_hashes") or []

    def pay(self, destinations: dict[str, int] | str, amount: int | None = None) -> str:
        """Pay piconero from the customer wallet: pay(address, amount) or pay({address: amount, ...}); returns
        once the transaction is in monerod's pool."""
        if isinstance(destinations, str):
            assert amount is not None
            destinations = {destinations: amount}
        deadline = time.monotonic() + 60
        while True:
            try:
                self.wallet("refresh")
                result = self.wallet(
                    "transfer", destinations=[{"address": a, "amount": v} for a, v in destinations.items()],
                    priority=0, ring_size=16, get_tx_key=True,
                )
                break
            except NodeRPCError as exc:
                # right after a monerod restart the wallet needs a moment to reconnect and read the outputs
                transient = exc.code == -38 or "output distribution" in str(exc)
                if not transient or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        txid: str = result["tx_hash"]
        # the wallet relays asynchronously: a block mined right after this call could miss the payment
        deadline = time.monotonic() + 20
        while txid not in self.pool():
            if time.monotonic() > deadline:
                raise AssertionError(f"payment {txid} never reached monerod's pool")
            time.sleep(0.05)
        return txid

