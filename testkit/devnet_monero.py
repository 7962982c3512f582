"""A real Monero regtest node for the tests, the demo and the bench: monerod plus a paying customer wallet.

monerod runs `--regtest --offline --fixed-difficulty 1` with ZMQ publications on; a monero-wallet-rpc holds
the customer's wallet (never the operator's: watcherd itself only ever gets the view key). Coinbase outputs
unlock after 60 blocks, so the first start mines 80 blocks to the customer wallet.

Synchronous and stdlib-only on purpose, like devnet.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from testkit.devnet import NodeRPCError, _die_with_parent, _pid_alive, _pid_cmdline, free_ports, wait_exited
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


class _Process:
    """One child process. Started here it has a Popen handle; found again by a later process (scripts/devnet)
    it has only its pid, and is signalled only while that pid's command line still carries `marker` (the
    node's own directory), so a reused pid is never touched."""

    def __init__(self, args: list[str], log: Path, marker: str, die_with_parent: bool, pid: int | None = None):
        self.args, self.log, self.marker, self.die_with_parent = args, log, marker, die_with_parent
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid = pid

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as console:
            self.proc = subprocess.Popen(
                self.args, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=(_die_with_parent if self.die_with_parent
                            and threading.current_thread() is threading.main_thread() else None),
            )
        self.pid = self.proc.pid

    def _owns(self, pid: int) -> bool:
        return _pid_alive(pid) and self.marker in " ".join(_pid_cmdline(pid))

    def running(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        return self.pid is not None and self._owns(self.pid)

    def wait_exit(self, timeout: float) -> bool:
        """Wait for the process to exit (reaping it when it is our child); False if it still runs."""
        return wait_exited(self.proc, self.pid, timeout)

    def stop(self, timeout: float = 30.0) -> None:
        pid = self.pid
        if pid is not None and self.running() and self._owns(pid):
            os.kill(pid, signal.SIGTERM)
            if not self.wait_exit(timeout) and self._owns(pid):
                os.kill(pid, signal.SIGKILL)
                self.wait_exit(10)
        self.proc = None
        self.pid = None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


def _post(url: str, payload: Any, timeout: float = 120) -> Any:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            detail = exc.read()[:200].decode(errors="replace")
        raise NodeRPCError(str(payload.get("method", url)), exc.code, detail) from None
    except (OSError, urllib.error.URLError) as exc:
        raise NodeRPCError(str(payload.get("method", url)), None, f"cannot reach {url}: {exc}") from None


class MoneroNode:
    """monerod in regtest on loopback ports of its own, plus the customer's monero-wallet-rpc."""

    kind = "monero"

    def __init__(self, name: str, datadir: Path, die_with_parent: bool = False,
                 ports: tuple[int, int, int, int, int] | None = None):
        self.name = name
        self.datadir = Path(datadir).absolute()
        self.rpc_port, self.zmq_rpc_port, self.zmq_port, self.p2p_port, self.wallet_port = ports or free_ports(5)
        self.die_with_parent = die_with_parent
        self._monerod = _Process(self.command(), self.datadir / "monerod.console.log",
                                 f"--data-dir {self.datadir / 'chain'}", die_with_parent)
        self._wallet = _Process([
            _binary("monero-wallet-rpc"), "--daemon-address", f"127.0.0.1:{self.rpc_port}",
            "--rpc-bind-ip", "127.0.0.1", "--rpc-bind-port", str(self.wallet_port), "--disable-rpc-login",
            "--wallet-dir", str(self.datadir / "wallets"), "--non-interactive", "--trusted-daemon",
            "--log-file", str(self.datadir / "wallet-rpc.log"),
        ], self.datadir / "wallet.console.log", f"--wallet-dir {self.datadir / 'wallets'}", die_with_parent)
        self.customer_address = ""

    # ---- state, for scripts/devnet's separate processes ------------------------------------------------

    @property
    def ports(self) -> tuple[int, int, int, int, int]:
        return self.rpc_port, self.zmq_rpc_port, self.zmq_port, self.p2p_port, self.wallet_port

    @property
    def pid(self) -> int | None:
        """monerod's pid (the wallet-rpc's is `wallet_pid`)."""
        return self._monerod.pid

    @property
    def wallet_pid(self) -> int | None:
        return self._wallet.pid

    @property
    def die_with_parent(self) -> bool:
        return self._die_with_parent

    @die_with_parent.setter
    def die_with_parent(self, value: bool) -> None:
        # Devnet.node() sets it after from_state: the processes started later must follow it
        self._die_with_parent = value
        for process in (getattr(self, "_monerod", None), getattr(self, "_wallet", None)):
            if process is not None:
                process.die_with_parent = value

    def to_state(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "datadir": str(self.datadir), "rpc_port": self.rpc_port,
            "zmq_rpc_port": self.zmq_rpc_port, "zmq_port": self.zmq_port, "p2p_port": self.p2p_port,
            "wallet_port": self.wallet_port, "pid": self._monerod.pid, "wallet_pid": self._wallet.pid,
            "customer_address": self.customer_address,
        }

    @classmethod
    def from_state(cls, name: str, state: dict[str, Any]) -> MoneroNode:
        ports = (state["rpc_port"], state["zmq_rpc_port"], state["zmq_port"], state["p2p_port"],
                 state["wallet_port"])
        node = cls(name, Path(state["datadir"]), ports=ports)
        node._monerod.pid = state.get("pid")
        node._wallet.pid = state.get("wallet_pid")
        node.customer_address = state.get("customer_address", "")
        return node

    def is_running(self) -> bool:
        return self._monerod.running() and self._wallet.running()

    def __repr__(self) -> str:
        return f"<MoneroNode {self.name} rpc={self.rpc_port} pid={self.pid} wallet_pid={self.wallet_pid}>"

    @property
    def rpc_url(self) -> str:
        return f"http://127.0.0.1:{self.rpc_port}"

    @property
    def zmq_endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.zmq_port}"

    def command(self) -> list[str]:
        return [
            # --keep-fakechain: without it a --regtest monerod wipes its chain at every start, so a restarted
            # node would come back at height 1, below every cursor and every wallet's outputs
            _binary("monerod"), "--regtest", "--keep-fakechain", "--offline", "--fixed-difficulty", "1",
            "--data-dir", str(self.datadir / "chain"), "--rpc-bind-ip", "127.0.0.1",
            "--rpc-bind-port", str(self.rpc_port), "--p2p-bind-ip", "127.0.0.1",
            "--p2p-bind-port", str(self.p2p_port), "--zmq-rpc-bind-port", str(self.zmq_rpc_port),
            "--zmq-pub", self.zmq_endpoint, "--non-interactive", "--no-igd", "--log-level", "0",
            "--log-file", str(self.datadir / "monerod.log"), "--max-txpool-weight", "100000000",
        ]

    # ---- lifecycle ------------------------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT) -> None:
        first = not (self.datadir / "chain").exists()
        self.start_monerod(timeout)
        if not self._wallet.running():
            self._wallet.start()
            self._wait(lambda: self.wallet("get_version"), timeout, self._wallet)
        if first:
            self.wallet("create_wallet", filename="customer", language="English")
        else:
            self.wallet("open_wallet", filename="customer")
        self.customer_address = self.wallet("get_address", account_index=0)["address"]
        if first:
            self.mine(FUNDING_BLOCKS, self.customer_address)
            self._split_funds()

    def _split_funds(self) -> None:
        """Coinbase outputs are few and a spent one's change stays locked for 10 blocks: split some into many
        3 XMR outputs, so that tests can pay many times in a row without mining in between."""
        for _ in range(SPLIT_TRANSFERS):
            own = [self.wallet("create_address", account_index=0)["address"] for _ in range(15)]
            self.pay(dict.fromkeys(own, SPLIT_OUTPUT))
        self.mine(10)

    def start_monerod(self, timeout: float = START_TIMEOUT) -> None:
        self._monerod.start()
        self._wait(lambda: self.rpc("get_block_count"), timeout, self._monerod)

    def stop_monerod(self) -> None:
        """Stop over RPC first: monerod then flushes its database (a signal can lose the last blocks)."""
        if self._monerod.running():
            try:
                _post(f"{self.rpc_url}/stop_daemon", {}, timeout=10)
                self._monerod.wait_exit(30)
            except NodeRPCError:
                pass
        self._monerod.stop()

    def restart(self, timeout: float = START_TIMEOUT) -> None:
        self.stop_monerod()
        self.start_monerod(timeout)
        if self._wallet.running():
            # monero-wallet-rpc does not notice on its own that monerod came back: point it there again
            self.wallet("set_daemon", address=f"127.0.0.1:{self.rpc_port}", trusted=True)

    def stop(self) -> None:
        if self._wallet.running():
            try:
                self.wallet("close_wallet")
            except NodeRPCError:
                pass
        self._wallet.stop()
        self.stop_monerod()

    def _wait(self, probe: Any, timeout: float, process: _Process) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if not process.running():
                raise RuntimeError(f"{process.args[0]} exited during startup\n{process.tail()}")
            try:
                probe()
                return
            except NodeRPCError as exc:
                last = exc
                time.sleep(0.1)
        raise RuntimeError(f"{process.args[0]} did not answer within {timeout:.0f}s ({last})\n{process.tail()}")

    def log_tail(self) -> str:
        return self._monerod.tail() + "\n" + self._wallet.tail()

    # ---- RPC ------------------------------------------------------------------------------------------

    def rpc(self, method: str, **params: Any) -> Any:
        reply = _post(f"{self.rpc_url}/json_rpc", {"jsonrpc": "2.0", "id": "0", "method": method, "params": params})
        if reply.get("error"):
            raise NodeRPCError(method, reply["error"].get("code"), reply["error"].get("message", ""))
        return reply["result"]

    def other(self, path: str, **params: Any) -> Any:
        """monerod's non-JSON-RPC endpoints (/get_transactions, /pop_blocks ...)."""
        reply = _post(f"{self.rpc_url}/{path}", params)
        if reply.get("status") not in ("OK", None):
            raise NodeRPCError(path, None, str(reply.get("status")))
        return reply

    def wallet(self, method: str, **params: Any) -> Any:
        reply = _post(f"http://127.0.0.1:{self.wallet_port}/json_rpc",
                      {"jsonrpc": "2.0", "id": "0", "method": method, "params": params}, timeout=300)
        if reply.get("error"):
            raise NodeRPCError(method, reply["error"].get("code"), reply["error"].get("message", ""))
        return reply["result"]

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
        """Pay piconero from the customer wallet: pay(address, amount) or pay({address: amount, ...})."""
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
        return result["tx_hash"]


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} is not on PATH: run scripts/install-deps (Debian package monero)")
    return found
