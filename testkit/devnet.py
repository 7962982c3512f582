"""A devnet: a directory of real regtest nodes plus a state file, for the demo, `scripts/devnet` and tests.

`scripts/devnet` commands run as separate processes: `up` starts nodes and records each one's datadir, ports,
password and pid in `state.json`; a later `pay`, `status` or `down` finds the same nodes there. The directory
also keeps the operator's keys (an HD seed, a Monero spend/view pair, mode 0600), standing in for a cold
wallet: only public keys (and Monero's view key) ever reach the daemon config `write_config` writes.

The node kinds live in their own modules (bitcoin_node, eth_node, monero_node); this one only picks the class
for a chain, and never reaches into a node's process.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from testkit.bitcoin_node import BITCOIN_CHAINS, Node
from testkit.configs import bitcoin_table, ethereum_table, monero_table, toml_value
from testkit.eth_node import EthNode
from testkit.monero_node import MoneroNode, new_keys, primary_address
from testkit.process import free_ports, port_free

# chain name -> node kind
CHAIN_KINDS = {**BITCOIN_CHAINS, "eth": EthNode.kind, "xmr": MoneroNode.kind}

AnyNode = Node | EthNode | MoneroNode


def _node_class(kind: str) -> type[Node] | type[EthNode] | type[MoneroNode]:
    return {EthNode.kind: EthNode, MoneroNode.kind: MoneroNode}.get(kind, Node)


class Devnet:
    """A directory of regtest nodes plus `state.json`, so separate processes can find what `up` started."""

    def __init__(self, root: Path, *, die_with_parent: bool = False):
        self.root = Path(root).absolute()
        # For tests: the nodes die with this process (see NodeProcess); a CLI devnet outlives its command.
        self.die_with_parent = die_with_parent
        self.state_path = self.root / "state.json"
        self.seed_path = self.root / "operator-seed.hex"
        self.monero_keys_path = self.root / "operator-monero-keys.json"
        self._nodes: dict[str, AnyNode] = {}

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

    def node(self, name: str) -> Any:
        """The node of chain `name` (a Node, EthNode or MoneroNode), as `up` left it."""
        if name not in self._nodes:
            state = self._load_state()["nodes"]
            if name not in state:
                raise KeyError(f"no {name!r} node in {self.state_path}; run `scripts/devnet up` first")
            self._nodes[name] = _node_class(state[name]["kind"]).from_state(name, state[name], self.die_with_parent)
        return self._nodes[name]

    def running_nodes(self) -> list[Any]:
        return [node for node in map(self.node, self.chains()) if node.is_running()]

    # ---- lifecycle ----------------------------------------------------------------------------------------

    def _new_node(self, name: str) -> AnyNode:
        kind, datadir = CHAIN_KINDS[name], self.root / name
        if kind == EthNode.kind:
            return EthNode(name, datadir, die_with_parent=self.die_with_parent)
        if kind == MoneroNode.kind:
            return MoneroNode(name, datadir, die_with_parent=self.die_with_parent)
        return Node.create(name, datadir, kind, die_with_parent=self.die_with_parent)

    def up(self, chains: tuple[str, ...] | list[str] = ("btc", "ltc")) -> None:
        """Start the named nodes (those already running are left alone); a node known from an earlier `up`
        comes back on its old datadir, ports and password, so existing configs keep working."""
        known = self.chains()
        for name in chains:
            if name not in CHAIN_KINDS:
                raise ValueError(f"unknown chain {name!r}; known: {', '.join(CHAIN_KINDS)}")
            node = self.node(name) if name in known else self._new_node(name)
            self._nodes[name] = node
            if node.is_running():
                continue
            node.stop()  # half up (monerod without its wallet-rpc, or the reverse): start all of it afresh
            if name in known and not all(port_free(p) for p in node.ports):
                node.move_to_free_ports()  # its old ports were taken while it was down (a reboot, another program)
            try:
                node.start()  # a first start funds the node's wallet (monero: ~10 s of mining)
                if isinstance(node, EthNode):
                    node.deploy_contracts()  # the test tokens and the forwarder; idempotent across restarts
            finally:
                self._save_state()

    def down(self) -> None:
        """Stop every node this devnet started, each by its own pid (and its PostgreSQL, if it has one)."""
        for name in self.chains():
            self.node(name).stop()
        self._save_state()
        postgres = self.postgres()
        if postgres is not None:
            postgres.stop()

    # ---- PostgreSQL (scripts/devnet up --postgres) -------------------------------------------------------

    def postgres(self) -> Any:
        """The devnet's PostgreSQL server as `postgres_up` left it (None: it has none)."""
        from testkit.postgres import PostgresServer

        known = self._load_state().get("postgres")
        if known is None:
            return None
        return PostgresServer(self.root / "postgres", known["port"], die_with_parent=False, pid=known.get("pid"))

    def postgres_up(self) -> str:
        """Start (or find running) the devnet's PostgreSQL, on the port it had before; the URL of its watcherd
        database."""
        from testkit.postgres import PostgresServer

        server = self.postgres()
        if server is None:
            server = PostgresServer(self.root / "postgres", die_with_parent=False)
        if not server.running():
            if not port_free(server.port):
                server.port = free_ports(1)[0]
            server.start()
        state = self._load_state()
        state["postgres"] = {"port": server.port, "pid": server.pid}
        self.root.mkdir(parents=True, exist_ok=True)
        self.state_path.write_text(json.dumps(state, indent=2) + "\n")
        if not server.has_database("watcherd"):
            server.new_database(name="watcherd")
        return server.url("watcherd")

    # ---- operator keys and daemon config ------------------------------------------------------------------

    def _write_secret(self, path: Path, text: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)

    def _operator_seed(self) -> bytes:
        if not self.seed_path.exists():
            self._write_secret(self.seed_path, secrets.token_hex(32) + "\n")
        return bytes.fromhex(self.seed_path.read_text().strip())

    def operator_monero_keys(self) -> tuple[str, str]:
        """(primary address, private view key hex) of the operator's Monero wallet: a spend/view keypair made
        once and kept in the devnet dir (mode 0600) as the operator's cold wallet. Only the address and the
        view key ever reach the daemon's config; the spend key stays in this file."""
        if not self.monero_keys_path.exists():
            spend, view = new_keys()
            self._write_secret(self.monero_keys_path,
                               json.dumps({"spend_secret": spend.hex(), "view_secret": view.hex()}) + "\n")
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

    def chain_table(self, node: Any, confirmations: int, poll_interval_seconds: float) -> str:
        """The [chains.<name>] table for one of this devnet's nodes, with the operator's keys."""
        if isinstance(node, MoneroNode):
            address, view_key = self.operator_monero_keys()
            return monero_table(node.name, node, primary_address=address, view_key=view_key,
                                confirmations=confirmations, poll_interval_seconds=poll_interval_seconds)
        xpub, address_type = self.operator_xpubs()[node.name]
        if isinstance(node, EthNode):
            return ethereum_table(node.name, node, xpub=xpub, confirmations=confirmations)
        return bitcoin_table(node.name, node, xpub=xpub, address_type=address_type, confirmations=confirmations,
                             poll_interval_seconds=poll_interval_seconds)

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
        store_url: str | None = None,
    ) -> Path:
        """Write a watcherd TOML config watching every running node of this devnet."""
        q = toml_value
        lines = [
            "# Written by testkit.devnet for the local regtest devnet. Holds only public keys (and, for Monero,",
            "# the private VIEW key, which can see payments but never spend them).",
            "[store]",
            f"url = {q(store_url)}" if store_url else f"path = {q(str(store_path))}",
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
            lines.append(self.chain_table(node, confirmations, poll_interval_seconds))
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines))
        return path
