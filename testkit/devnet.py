"""A devnet: a directory of real regtest nodes plus a state file, for the demo, `scripts/devnet` and tests.

`scripts/devnet` commands run as separate processes: `up` starts nodes and records each one's datadir, ports,
password and pid in `state.json`; a later `pay`, `status` or `down` finds the same nodes there. The directory
also keeps the operator's keys (an HD seed, a Monero spend/view pair, mode 0600), standing in for a cold
wallet: only public keys (and Monero's view key) ever reach the daemon config `write_config` writes.

Beside the nodes it can run the billing side, a webhook receiver process (`DevnetReceiver`) that checks each
signature and appends what it accepts to `webhooks.jsonl`, and it keeps what `scripts/devnet up` chose for the
daemon's config (API port and token, webhook, store) in `state.json`, so that a second `up` writes the same ones
under a daemon already running.

The node kinds live in their own modules (bitcoin_node, eth_node, monero_node); this one only picks the class
for a chain, and never reaches into a node's process.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import sys
import threading
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from testkit.bitcoin_node import BITCOIN_CHAINS, Node
from testkit.configs import bitcoin_table, ethereum_table, monero_table, toml_value
from testkit.eth_node import TOKENS, EthNode
from testkit.monero_node import MoneroNode, new_keys, primary_address
from testkit.process import REPO_ROOT, NodeProcess, free_ports, port_free
from testkit.rpc import NodeRPCError

# chain name -> node kind
CHAIN_KINDS = {**BITCOIN_CHAINS, "eth": EthNode.kind, "xmr": MoneroNode.kind}

AnyNode = Node | EthNode | MoneroNode

# The devnet's fixed exchange rates (USD per whole coin), written as [rates.fixed]: a priced invoice works
# offline, and the README's example prices 49.00 USD at 0.00098 BTC or 0.49 LTC.
USD_RATES = {"BTC": "50000", "LTC": "100", "ETH": "2500", "USDC": "1", "DAI": "1", "XMR": "150"}


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
        """Stop every node this devnet started, each by its own pid (and its PostgreSQL and webhook receiver, if
        it has them)."""
        for name in self.chains():
            self.node(name).stop()
        self._save_state()
        postgres = self.postgres()
        if postgres is not None:
            postgres.stop()
        receiver = self.receiver()
        if receiver is not None:
            receiver.process.stop()

    def _update_state(self, key: str, value: Any) -> None:
        state = self._load_state()
        state[key] = value
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(self.state_path)

    # ---- the daemon's config, as `scripts/devnet up` chose it ----------------------------------------------

    def daemon_settings(self) -> dict[str, Any] | None:
        """What the last `up` wrote into the config (api_port, api_token, webhook_url, store_url); None before."""
        settings: dict[str, Any] | None = self._load_state().get("daemon")
        return settings

    def keep_daemon_settings(self, settings: dict[str, Any]) -> None:
        self._update_state("daemon", settings)

    # ---- the billing side: a webhook receiver process -------------------------------------------------------

    def webhook_secret(self) -> str:
        """The webhook signing secret, made once and kept in the devnet dir (mode 0600)."""
        path = self.root / "webhook-secret"
        if not path.exists():
            self._write_secret(path, secrets.token_urlsafe(32) + "\n")
        return path.read_text().strip()

    def receiver(self) -> DevnetReceiver | None:
        """The webhook receiver as `receiver_up` left it (None: this devnet has none)."""
        known = self._load_state().get("webhook_receiver")
        if known is None:
            return None
        return DevnetReceiver(self.root, known["port"], pid=known.get("pid"), die_with_parent=self.die_with_parent)

    def receiver_up(self) -> DevnetReceiver:
        """Start (or find running) the devnet's webhook receiver, on the port it had before if it is free."""
        self.webhook_secret()
        receiver = self.receiver()
        if receiver is None or (not receiver.process.running() and not port_free(receiver.port)):
            receiver = DevnetReceiver(self.root, free_ports(1)[0], die_with_parent=self.die_with_parent)
        if not receiver.process.running():
            receiver.start()
        self._update_state("webhook_receiver", {"port": receiver.port, "pid": receiver.process.pid})
        return receiver

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
        usd_rates: bool = False,
    ) -> Path:
        """Write a watcherd TOML config watching every running node of this devnet (`usd_rates`: with
        [rates.fixed] USD prices of their coins and tokens, no exchange asked)."""
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
        nodes = sorted(self.running_nodes(), key=lambda n: n.name)
        if usd_rates:
            assets = {asset for node in nodes for asset in _assets(node)}
            lines += ["[rates]", "sources = []", 'currencies = ["USD"]', "[rates.fixed]"]
            lines += [f"{asset}_USD = {q(rate)}" for asset, rate in USD_RATES.items() if asset in assets] + [""]
        for node in nodes:
            lines.append(self.chain_table(node, confirmations, poll_interval_seconds))
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines))
        return path


def _assets(node: Any) -> tuple[str, ...]:
    if isinstance(node, EthNode):
        return ("ETH", *TOKENS)
    return ("XMR",) if isinstance(node, MoneroNode) else (COIN_ASSETS[node.kind],)


COIN_ASSETS = {"bsv": "BTC", "bitcoin": "BTC", "litecoin": "LTC"}


class DevnetReceiver:
    """The devnet's billing side: a process serving testkit.receiver's WebhookReceiver (signatures checked with
    the devnet's webhook secret) that appends every event it accepts, as one JSON line with its arrival time, to
    DIR/webhooks.jsonl. Like the nodes it outlives the command that started it and is stopped by its pid."""

    def __init__(self, root: Path, port: int, *, pid: int | None = None, die_with_parent: bool = False):
        self.root = root
        self.port = port
        self.events_path = root / "webhooks.jsonl"
        # the events file is unique to this devnet: a pid whose command line lacks it is not this receiver
        self.process = NodeProcess("webhook receiver", [str(self.events_path)], root / "webhook-receiver.log",
                                   die_with_parent=die_with_parent, pid=pid)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/crypto"

    def start(self) -> None:
        code = "import sys; sys.path.insert(0, sys.argv[1]); from testkit.devnet import receive; receive(*sys.argv[2:])"
        self.process.start([sys.executable, "-c", code, str(REPO_ROOT), str(self.port),
                            str(self.root / "webhook-secret"), str(self.events_path)], ready=self._answers)

    def _answers(self) -> None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=2):
                pass
        except OSError as exc:  # refused while it binds
            raise NodeRPCError("GET /", None, str(exc)) from None

    def events(self) -> list[dict[str, Any]]:
        """What it accepted so far, oldest first."""
        try:
            lines = self.events_path.read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]


def receive(port: str, secret_file: str, events_file: str) -> None:
    """The receiver process (DevnetReceiver.start): serve until SIGTERM."""
    from testkit.receiver import WebhookReceiver

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    written = threading.Lock()  # the server answers each delivery in a thread of its own
    with WebhookReceiver(Path(secret_file).read_text().strip(), port=int(port)) as receiver, \
            open(events_file, "a") as events:

        def record(event: dict[str, Any]) -> None:
            arrived = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            with written:
                events.write(json.dumps({"received_at": arrived, **event}) + "\n")
                events.flush()

        receiver.on_event = record
        stop.wait()
