"""A real anvil (Ethereum dev node) for the demo and the tests: spawn, deploy the test contracts, pay, reorg.

Synchronous and stdlib-only, like bitcoin_node.py: used from pytest fixtures and the devnet CLI, never from the
daemon's event loop. anvil runs with `--no-mining` so a payment waits in the pool (watcherd shows it as
`processing`) until `mine()`; `--dump-state` at exit and `--load-state` at start make `restart()` keep the
chain, the way a real node restarts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from testkit.process import PROBE_TIMEOUT, START_TIMEOUT, STOP_TIMEOUT, NodeProcess, free_ports, installed_binary
from testkit.rpc import call_jsonrpc
from watcherd.chains.ethereum.address import parse_address, to_checksum

REPO_ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO_ROOT / "contracts" / "artifacts.json"
ANVIL_CHAIN_ID = 31337
TOKEN_SYMBOL = "USDC"
TOKEN_DECIMALS = 6
# The test tokens deploy_contracts() makes, the ones a devnet config lists: symbol -> decimals
TOKENS = {TOKEN_SYMBOL: TOKEN_DECIMALS, "DAI": 18}
# and a fee-on-transfer token (contracts/FeeToken.sol, 6 decimals) that only the tests configure
FEE_TOKEN = "FEE"


def anvil_binary() -> Path:
    return installed_binary("npm/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil")


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
                 die_with_parent: bool = False, pid: int | None = None):
        self.name = name
        self.datadir = Path(datadir).absolute()
        self.port = port or free_ports(1)[0]
        self.chain_id = chain_id
        self.process = NodeProcess(f"{name} anvil", ["--dump-state", str(self.state_path)],
                                   self.datadir / "console.log", die_with_parent=die_with_parent, pid=pid)
        self.contracts: dict[str, str] = {}  # name -> address, once deployed
        if self.contracts_path.exists():
            self.contracts = json.loads(self.contracts_path.read_text())

    def to_state(self) -> dict[str, Any]:
        return {"kind": self.kind, "datadir": str(self.datadir), "port": self.port, "chain_id": self.chain_id,
                "pid": self.pid}

    @classmethod
    def from_state(cls, name: str, state: dict[str, Any], die_with_parent: bool = False) -> EthNode:
        return cls(name, Path(state["datadir"]), port=state["port"], chain_id=state["chain_id"],
                   die_with_parent=die_with_parent, pid=state.get("pid"))

    def __repr__(self) -> str:
        return f"<EthNode {self.name} rpc={self.port} pid={self.pid}>"

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def ports(self) -> tuple[int, ...]:
        return (self.port,)

    def move_to_free_ports(self) -> None:
        """A fresh port (for a node whose old one was taken while it was down)."""
        self.port = free_ports(1)[0]

    @property
    def state_path(self) -> Path:
        return self.datadir / "state.json"

    @property
    def contracts_path(self) -> Path:
        return self.datadir / "contracts.json"

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
        return self.process.running()

    def start(self, timeout: float = START_TIMEOUT) -> None:
        self.datadir.mkdir(parents=True, exist_ok=True)
        self.process.start(self.command(), ready=lambda: self.rpc("eth_chainId", timeout=PROBE_TIMEOUT),
                           timeout=timeout)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM (anvil dumps its state on the way out), wait for the pid; SIGKILL if it hangs."""
        self.process.stop(timeout)

    def restart(self) -> None:
        """Stop (dumping the chain) and start again from the dump on the same port: websockets drop."""
        self.stop()
        self.start()

    def log_tail(self, lines: int = 30) -> str:
        return self.process.tail(lines)

    # ---- JSON-RPC -----------------------------------------------------------------------------------------

    def rpc(self, method: str, *params: Any, timeout: float = 60) -> Any:
        return call_jsonrpc(self.rpc_url, method, list(params), timeout=timeout)

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

    def send(self, sender: str, to: str | None, value: int = 0, data: str = "0x", gas: int | None = None) -> str:
        """`gas`: a fixed limit, for a transaction that will revert (anvil refuses to estimate one)."""
        tx: dict[str, Any] = {"from": sender, "value": hex(value), "data": data}
        if to is not None:
            tx["to"] = to
        if gas is not None:
            tx["gas"] = hex(gas)
        return self.rpc("eth_sendTransaction", tx)

    def pay(self, address: str, wei: int, account: int = 1) -> str:
        """Send `wei` from one of anvil's funded accounts (the customer); pending until mined."""
        return self.send(self.accounts()[account], address, wei)

    def balance(self, address: str) -> int:
        return int(self.rpc("eth_getBalance", address, "latest"), 16)

    # ---- contracts ----------------------------------------------------------------------------------------

    def receipt(self, txid: str) -> dict[str, Any]:
        return self.rpc("eth_getTransactionReceipt", txid)

    def deploy_contracts(self) -> dict[str, str]:
        """Deploy TestToken ("USDC", 6 decimals; a second "DAI"-like one with 18), FeeToken ("FEE") and
        Forwarder from account 0, mint tokens to the paying accounts 1-3 (the others hold none); returns name ->
        address. Idempotent across restarts."""
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

        usdc = deploy("TestToken", token_args("Test USD Coin", TOKEN_SYMBOL, TOKENS[TOKEN_SYMBOL]))
        dai = deploy("TestToken", token_args("Test Dai", "DAI", TOKENS["DAI"]))
        forwarder = deploy("Forwarder")
        fee = deploy("FeeToken")
        self.contracts = {k: to_checksum(parse_address(v)) for k, v in
                          {"USDC": usdc, "DAI": dai, "Forwarder": forwarder, FEE_TOKEN: fee}.items()}
        for account in self.accounts()[1:4]:
            for token in (self.contracts["USDC"], self.contracts["DAI"], self.contracts[FEE_TOKEN]):
                self.send(deployer, token, 0, "0x40c10f19" + _abi_word(account) + _abi_word(10**30))
        self.mine(1)
        self.contracts_path.write_text(json.dumps(self.contracts))
        return self.contracts

    def pay_token(self, symbol: str, address: str, amount: int, account: int = 1, gas: int | None = None) -> str:
        """ERC-20 transfer(address, amount) of `symbol` from a funded account; pending until mined."""
        data = "0xa9059cbb" + _abi_word(address) + _abi_word(amount)
        return self.send(self.accounts()[account], self.contracts[symbol], 0, data, gas=gas)

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
