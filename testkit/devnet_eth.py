"""A real anvil (Ethereum dev node) for the demo and the tests: spawn, deploy the test contracts, pay, reorg.

Synchronous and stdlib-only, like devnet.py: used from pytest fixtures and the devnet CLI, never from the
daemon's event loop. anvil runs with `--no-mining` so a payment waits in the pool (watcherd shows it as
`processing`) until `mine()`; `--dump-state` at exit and `--load-state` at start make `restart()` keep the
chain, the way a real node restarts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from testkit.devnet import (
    START_TIMEOUT,
    STOP_TIMEOUT,
    NodeRPCError,
    _die_with_parent,
    _pid_alive,
    _pid_cmdline,
    free_ports,
    nodes_dir,
    wait_exited,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO_ROOT / "contracts" / "artifacts.json"
ANVIL_CHAIN_ID = 31337
TOKEN_SYMBOL = "USDC"
TOKEN_DECIMALS = 6


def anvil_binary() -> Path:
    path = nodes_dir() / "npm" / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"
    if not os.access(path, os.X_OK):
        raise FileNotFoundError(f"{path} is missing: run scripts/install-deps")
    return path


def _abi_word(value: int | bytes | str) -> str:
    if isinstance(value, str):  # an address
        return value[2:].lower().rjust(64, "0")
    if isinstance(value, bytes):
        return value.hex().ljust(64, "0")
    return hex(value)[2:].rjust(64, "0")


def _abi_string(text: str) -> str:
    raw = text.encode()
    return _abi_word(len(raw)) + raw.hex().ljust(64 * ((len(raw) + 31) // 32 or 1), "0")


class EthNode:
    """One anvil process on a loopback port of its own, in `datadir` (holding its dumped state)."""

    kind = "anvil"

    def __init__(self, name: str, datadir: Path, port: int | None = None, chain_id: int = ANVIL_CHAIN_ID,
                 die_with_parent: bool = False):
        self.name = name
        self.datadir = Path(datadir).absolute()
        self.port = port or free_ports(1)[0]
        self.chain_id = chain_id
        self.die_with_parent = die_with_parent
        self.pid: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self.contracts: dict[str, str] = {}  # name -> address, once deployed

    def to_state(self) -> dict[str, Any]:
        return {"kind": self.kind, "datadir": str(self.datadir), "port": self.port, "chain_id": self.chain_id,
                "pid": self.pid}

    @classmethod
    def from_state(cls, name: str, state: dict[str, Any]) -> EthNode:
        node = cls(name, Path(state["datadir"]), port=state["port"], chain_id=state["chain_id"])
        node.pid = state.get("pid")
        if (node.datadir / "contracts.json").exists():
            node.contracts = json.loads((node.datadir / "contracts.json").read_text())
        return node

    @property
    def state_path(self) -> Path:
        return self.datadir / "state.json"

    @property
    def rpc_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        args = [str(anvil_binary()), "--host", "127.0.0.1", "--port", str(self.port), "--chain-id",
                str(self.chain_id), "--no-mining", "--silent", "--dump-state", str(self.state_path)]
        if self.state_path.exists():
            args += ["--load-state", str(self.state_path)]
        return args

    def is_running(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        return self.pid is not None and _pid_alive(self.pid) and str(self.state_path) in _pid_cmdline(self.pid)

    def start(self, timeout: float = START_TIMEOUT) -> None:
        self.datadir.mkdir(parents=True, exist_ok=True)
        with open(self.datadir / "console.log", "ab") as console:
            self._proc = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=(_die_with_parent if self.die_with_parent
                            and threading.current_thread() is threading.main_thread() else None),
            )
        self.pid = self._proc.pid
        deadline = time.monotonic() + timeout
        while True:
            if not self.is_running():
                raise RuntimeError(f"anvil exited during startup:\n{self.log_tail()}")
            try:
                self.rpc("eth_chainId")
                break
            except NodeRPCError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"anvil did not answer within {timeout:.0f} s:\n{self.log_tail()}") from None
                time.sleep(0.05)
        if not self.contracts and (self.datadir / "contracts.json").exists():
            self.contracts = json.loads((self.datadir / "contracts.json").read_text())

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM (anvil dumps its state on the way out), wait for the pid; SIGKILL if it hangs."""
        if self.pid is not None and self.is_running():
            os.kill(self.pid, signal.SIGTERM)
            if not wait_exited(self._proc, self.pid, timeout) and self.is_running():
                os.kill(self.pid, signal.SIGKILL)
                wait_exited(self._proc, self.pid, 10)
        self._proc = None
        self.pid = None

    def restart(self) -> None:
        """Stop (dumping the chain) and start again from the dump on the same port: websockets drop."""
        self.stop()
        self.start()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join((self.datadir / "console.log").read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    # ---- JSON-RPC -----------------------------------------------------------------------------------------

    def rpc(self, method: str, *params: Any) -> Any:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}).encode()
        request = urllib.request.Request(self.rpc_url, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                reply = json.loads(response.read())
        except (OSError, urllib.error.URLError, ValueError) as exc:
            raise NodeRPCError(method, None, f"cannot reach {self.rpc_url}: {exc}") from None
        if reply.get("error"):
            raise NodeRPCError(method, reply["error"].get("code"), reply["error"].get("message", ""))
        return reply["result"]

    def accounts(self) -> list[str]:
        return self.rpc("eth_accounts")

    def mine(self, n: int = 1) -> list[str]:
        """Mine `n` blocks; returns their hashes."""
        self.rpc("anvil_mine", hex(n))
        tip = int(self.rpc("eth_blockNumber"), 16)
        return [self.rpc("eth_getBlockByNumber", hex(h), False)["hash"] for h in range(tip - n + 1, tip + 1)]

    def tip(self) -> tuple[int, str]:
        block = self.rpc("eth_getBlockByNumber", "latest", False)
        return int(block["number"], 16), block["hash"]

    def send(self, sender: str, to: str | None, value: int = 0, data: str = "0x") -> str:
        tx: dict[str, Any] = {"from": sender, "value": hex(value), "data": data}
        if to is not None:
            tx["to"] = to
        return self.rpc("eth_sendTransaction", tx)

    def pay(self, address: str, wei: int, account: int = 1) -> str:
        """Send `wei` from one of anvil's funded accounts (the customer); pending until mined."""
        return self.send(self.accounts()[account], address, wei)

    def balance(self, address: str) -> int:
        return int(self.rpc("eth_getBalance", address, "latest"), 16)

    # ---- contracts ----------------------------------------------------------------------------------------

    def deploy_contracts(self) -> dict[str, str]:
        """Deploy TestToken ("USDC", 6 decimals; a second "DAI"-like one with 18) and Forwarder from account 0,
        mint tokens to the paying accounts; returns name -> address. Idempotent across restarts."""
        if self.contracts:
            return self.contracts
        artifacts = json.loads(ARTIFACTS.read_text())["contracts"]
        deployer = self.accounts()[0]

        def deploy(name: str, args: str = "") -> str:
            txid = self.send(deployer, None, 0, artifacts[name]["bytecode"] + args)
            self.mine(1)
            return self.rpc("eth_getTransactionReceipt", txid)["contractAddress"]

        def token_args(name: str, symbol: str, decimals: int) -> str:
            head = _abi_word(96) + _abi_word(96 + 32 + 32 * ((len(name) + 31) // 32 or 1)) + _abi_word(decimals)
            return head + _abi_string(name) + _abi_string(symbol)

        from watcherd.chains.ethereum.address import parse_address, to_checksum

        usdc = deploy("TestToken", token_args("Test USD Coin", TOKEN_SYMBOL, TOKEN_DECIMALS))
        dai = deploy("TestToken", token_args("Test Dai", "DAI", 18))
        forwarder = deploy("Forwarder")
        self.contracts = {k: to_checksum(parse_address(v)) for k, v in
                          {"USDC": usdc, "DAI": dai, "Forwarder": forwarder}.items()}
        for account in self.accounts()[1:4]:
            for token in (self.contracts["USDC"], self.contracts["DAI"]):
                self.send(deployer, token, 0, "0x40c10f19" + _abi_word(account) + _abi_word(10**30))
        self.mine(1)
        (self.datadir / "contracts.json").write_text(json.dumps(self.contracts))
        return self.contracts

    def pay_token(self, symbol: str, address: str, amount: int, account: int = 1) -> str:
        """ERC-20 transfer(address, amount) of `symbol` from a funded account; pending until mined."""
        data = "0xa9059cbb" + _abi_word(address) + _abi_word(amount)
        return self.send(self.accounts()[account], self.contracts[symbol], 0, data)

    def pay_through_forwarder(self, address: str, wei: int, account: int = 1) -> str:
        """ETH to `address` through the Forwarder contract's internal call: no tx has `to` = address."""
        data = "0x" + "101e8952" + _abi_word(address)  # forward(address)
        return self.send(self.accounts()[account], self.contracts["Forwarder"], wei, data)

    # ---- reorgs -------------------------------------------------------------------------------------------

    def raw_transaction(self, txid: str) -> str:
        return self.rpc("eth_getRawTransactionByHash", txid)

    def reorg(self, depth: int) -> None:
        """Replace the last `depth` blocks with empty ones (their transactions are gone, not re-queued)."""
        self.rpc("anvil_reorg", depth, [])

    def rebroadcast(self, raw: str) -> str:
        return self.rpc("eth_sendRawTransaction", raw)
