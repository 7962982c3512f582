"""The node section of scripts/bench: the real daemon following a real regtest bitcoind (the Bitcoin SV code base
node from testkit, ZMQ rawtx + hashblock), measured end to end. Two targets:

* Detection latency under load: a payment sent -> its `invoice.processing` webhook answered 2xx, p99 <= 50 ms
  while a background load of 100 tx/s runs through the same node. A thread sends the load (paced; transactions
  funded by the node's wallet, paying a P2PKH script nobody watches) and mines a block every 2 s so the pool
  stays small. Meanwhile, one payment at a time: an invoice is created through the API (not timed), then t0,
  `sendtoaddress` to its address, and the arrival of its webhook at the receiver. The figure is an upper bound
  of what the daemon adds: it includes the wallet's signing (which waits for the load's sends) and the node's
  relay. The same run measures a series on the idle node first, as the baseline, and prints the load rate
  actually achieved.
* Failover: two daemons on one SQLite store (`instance = "a"` / `"b"`) and one chain table. The one holding
  `chain:btc` is killed with SIGKILL, a block with a payment to an invoice is mined, and the time until the other
  one's /readyz shows it holds `chain:btc` with that block processed is the failover time (<= 10 s). The default
  `lease_seconds` (6) in a full run, 2 in a quick one.

`python scripts/bench_node.py [--quick]` runs the section alone.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bip_utils import Bip32KeyNetVersions, Bip32Slip10Secp256k1  # noqa: E402

from testkit.bitcoin_node import Node  # noqa: E402
from testkit.configs import bitcoin_table  # noqa: E402
from testkit.receiver import WebhookReceiver  # noqa: E402

TOKEN = "bench-token-0123456789abcdef"
WEBHOOK_SECRET = "bench-webhook-secret-0123456789"
TPUB_VERSIONS = Bip32KeyNetVersions(bytes.fromhex("043587cf"), bytes.fromhex("04358394"))
LOAD_TX_PER_S = 100
BLOCK_EVERY_S = 2.0
TARGET_P99_MS = 50.0
TARGET_FAILOVER_S = 10.0
DEFAULT_LEASE_SECONDS = 6
LOG_LEVEL = "info"  # each daemon's log, in the temporary directory: "debug" to see where time goes


def account_tpub() -> str:
    """A fresh p2pkh operator account key (m/44'/1'/0'); the private half never leaves this function."""
    master = Bip32Slip10Secp256k1.FromSeed(os.urandom(32), TPUB_VERSIONS)
    return master.DerivePath("m/44'/1'/0'").PublicKey().ToExtended()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Daemon:
    """`python -m watcherd run` on a config of its own, its output in `workdir/daemon.log`."""

    def __init__(self, workdir: Path, store: str, chain: str, webhook_url: str):
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log_path = workdir / "daemon.log"
        self.config_path = workdir / "watcherd.toml"
        self.config_path.write_text(
            f'[store]\n{store}\n[api]\nlisten = "127.0.0.1:{self.port}"\ntoken = "{TOKEN}"\n'
            f'[webhook]\nurl = "{webhook_url}"\nsecret = "{WEBHOOK_SECRET}"\n[log]\nlevel = "{LOG_LEVEL}"\n{chain}')
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "watcherd", "--config", str(self.config_path),
                                             "run"], stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the daemon exited {self.process.returncode}:\n{self.log_tail()}")
            try:
                self.api("GET", "/healthz")
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"the daemon's API did not come up:\n{self.log_tail()}")

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:]

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """SIGKILL, or (SIGTERM) a stop that ends in SIGKILL after 30 s."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            with exc:
                if path == "/readyz":  # 503 while not ready, with the same report
                    return json.loads(exc.read())
                raise

    def leads(self, height: int | None = None) -> bool:
        """Holds `chain:btc` (and, given `height`, has processed the chain up to it)."""
        shown = self.api("GET", "/readyz")
        mine = shown.get("leases", {}).get("chain:btc", {}).get("mine", False)
        return mine and (height is None or shown["chains"]["btc"].get("processed_height") == height)


def raw_tx(inputs: list[tuple[str, int]], outputs: list[tuple[int, bytes]]) -> bytes:
    """A version-1 transaction; every input's scriptSig empty (it spends OP_TRUE outputs, or is funded later)."""
    raw = b"\x01\x00\x00\x00" + bytes([len(inputs)])
    for txid, vout in inputs:
        raw += bytes.fromhex(txid)[::-1] + vout.to_bytes(4, "little") + b"\x00\xff\xff\xff\xff"
    raw += bytes([len(outputs)])
    for value, script in outputs:
        raw += value.to_bytes(8, "little") + bytes([len(script)]) + script
    return raw + b"\x00\x00\x00\x00"


class BackgroundLoad(threading.Thread):
    """Paced transactions through the node, and a block every BLOCK_EVERY_S.

    Each pays 1,000 sat to a P2PKH script nobody watches and the rest to OP_TRUE, spent by the next one on its
    strand (so nothing needs signing). Not the wallet's `sendtoaddress`: its send path slows as its transaction
    list grows (from 190 to 110 tx/s within 12 s here), so it could not hold the rate for a whole run."""

    STRANDS = 20  # parallel chains of unconfirmed spends, about 10 deep between two blocks

    def __init__(self, node: Node, rate: float):
        super().__init__(name="background-load", daemon=True)
        self.node, self.rate = node, rate
        self.stopping = threading.Event()
        self.sent, self.elapsed = 0, 0.0
        self.error: BaseException | None = None
        self.sink = b"\x76\xa9\x14" + os.urandom(20) + b"\x88\xac"
        # the node's wallet funds one OP_TRUE output per strand (1 BTC each), confirmed before the load starts
        funding = node.rpc("fundrawtransaction", raw_tx([], [(100_000_000, b"\x51")] * self.STRANDS).hex())
        txid = node.rpc("sendrawtransaction", node.rpc("signrawtransaction", funding["hex"])["hex"])
        node.mine(1)
        vouts = node.rpc("getrawtransaction", txid, 1)["vout"]
        self.heads = [(txid, o["n"], 100_000_000) for o in vouts if o["scriptPubKey"]["hex"] == "51"]

    def run(self) -> None:
        try:
            started = time.monotonic()
            next_block = started + BLOCK_EVERY_S
            while not self.stopping.is_set():
                wait = started + self.sent / self.rate - time.monotonic()
                if wait > 0 and self.stopping.wait(wait):
                    break
                strand = self.sent % len(self.heads)
                txid, vout, value = self.heads[strand]
                value -= 2_000  # 1,000 to the sink, 1,000 fee
                raw = raw_tx([(txid, vout)], [(1_000, self.sink), (value, b"\x51")])
                self.heads[strand] = (self.node.rpc("sendrawtransaction", raw.hex()), 1, value)
                self.sent += 1
                if time.monotonic() >= next_block:
                    self.node.mine(1)
                    next_block += BLOCK_EVERY_S
                self.elapsed = time.monotonic() - started
        except BaseException as exc:  # reported by the section, never lost in a thread
            self.error = exc

    def achieved(self) -> float:
        return self.sent / self.elapsed if self.elapsed else 0.0


class Arrivals:
    """When each invoice's first status change (`processing`, or `paid` if a block carried it first) arrived."""

    def __init__(self) -> None:
        self.seen: dict[str, tuple[float, str]] = {}
        self.changed = threading.Condition()

    def on_event(self, event: dict[str, Any]) -> None:
        if event["type"] in ("invoice.processing", "invoice.paid"):
            with self.changed:
                self.seen.setdefault(event["invoice"]["id"], (time.monotonic(), event["type"]))
                self.changed.notify_all()

    def wait(self, invoice_id: str, timeout: float = 30) -> tuple[float, str]:
        with self.changed:
            if not self.changed.wait_for(lambda: invoice_id in self.seen, timeout):
                raise RuntimeError(f"no invoice.processing webhook for {invoice_id} within {timeout:.0f} s")
            return self.seen[invoice_id]


def detection_series(daemon: Daemon, node: Node, arrivals: Arrivals, count: int) -> tuple[list[float], int]:
    """Payment sent -> its webhook arrived, in seconds, one payment at a time; and how many came as `paid`."""
    latencies, paid_first = [], 0
    for n in range(count):
        invoice = daemon.api("POST", "/v1/invoices", {"chain": "btc", "amount": "0.001", "order_id": f"n{n}"})
        sent = time.monotonic()
        node.pay(invoice["address"], "0.001")
        arrived, kind = arrivals.wait(invoice["id"])
        latencies.append(arrived - sent)
        paid_first += kind == "invoice.paid"
    return latencies, paid_first


def ms(latencies: list[float], q: float) -> float:
    """The nearest-rank `q` quantile, in milliseconds."""
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))] * 1000


def summary(latencies: list[float]) -> str:
    return f"p50 {ms(latencies, 0.5):.1f} ms, p99 {ms(latencies, 0.99):.1f} ms, max {ms(latencies, 1):.1f} ms"


def measure_detection(node: Node, tmp: Path, receiver: WebhookReceiver, arrivals: Arrivals, count: int,
                      figure: Any) -> tuple[float, float, list[str]]:
    """Both series on one daemon; returns the loaded p99 in ms, the load's rate and what went wrong."""
    chain = bitcoin_table("btc", node, xpub=account_tpub(), address_type="p2pkh", confirmations=1)
    daemon = Daemon(tmp / "detect", f'path = "{tmp / "detect.sqlite3"}"', chain, receiver.url)
    load = BackgroundLoad(node, LOAD_TX_PER_S)
    try:
        daemon.start()
        detection_series(daemon, node, arrivals, 2)  # warm-up: connections, first-time code paths
        idle, _ = detection_series(daemon, node, arrivals, count)
        node.mine(1)  # the idle series' payments confirmed before the load, not all in its first block
        load.start()
        time.sleep(2 * BLOCK_EVERY_S)  # the load settled, a block or two of it processed
        loaded, paid_first = detection_series(daemon, node, arrivals, count)
    finally:
        load.stopping.set()
        load.join(30)
        daemon.stop()
    if load.error is not None:
        return math.inf, 0.0, [f"node: the background load failed: {load.error!r}"]
    in_blocks = f", {paid_first} seen first in a block" if paid_first else ""
    figure("node: payment sent -> invoice.processing webhook 2xx, idle node (baseline)",
           f"{summary(idle)} ({len(idle)} payments)")
    figure("node: payment sent -> invoice.processing webhook 2xx",
           f"{summary(loaded)} ({len(loaded)} payments{in_blocks}, background load {load.achieved():.0f} tx/s "
           f"measured, a block every {BLOCK_EVERY_S:.0f} s)")
    return ms(loaded, 0.99), load.achieved(), []


def measure_failover(node: Node, tmp: Path, receiver: WebhookReceiver, repeats: int, lease_seconds: int,
                     figure: Any) -> tuple[list[float], list[str]]:
    """Kill -9 the instance holding `chain:btc`, `repeats` times; returns the failover times in seconds."""
    chain = bitcoin_table("btc", node, xpub=account_tpub(), address_type="p2pkh", confirmations=1)
    shared = f'path = "{tmp / "shared.sqlite3"}"\nlease_seconds = {lease_seconds}\n'
    daemons = {name: Daemon(tmp / name, f'{shared}instance = "{name}"', chain, receiver.url) for name in "ab"}
    times: list[float] = []
    shown_lease = f"lease_seconds = {lease_seconds}" + ("" if lease_seconds == DEFAULT_LEASE_SECONDS else
                                                        ", shortened for --quick")
    try:
        daemons["a"].start()
        daemons["b"].start()
        for _ in range(repeats):
            deadline = time.monotonic() + 30
            while not (leader := next((n for n, d in daemons.items() if d.alive() and d.leads()), None)):
                if time.monotonic() > deadline:
                    return times, ["failover: no instance took chain:btc within 30 s"]
                time.sleep(0.05)
            other = daemons["b" if leader == "a" else "a"]
            invoice = other.api("POST", "/v1/invoices", {"chain": "btc", "amount": "0.001", "order_id": "failover"})
            node.pay(invoice["address"], "0.001")
            killed = time.monotonic()
            daemons[leader].kill()
            node.mine(1)
            height = node.rpc("getblockcount")
            while not other.leads(height):
                if time.monotonic() > killed + 60:
                    return times, [f"failover: the other instance did not take over within 60 s:\n{other.log_tail()}"]
                time.sleep(0.02)
            times.append(time.monotonic() - killed)
            figure("failover: leader killed -> the other instance processed the next block",
                   f"{times[-1]:.1f} s ({shown_lease})")
            paid_by = time.monotonic() + 30
            while other.api("GET", f"/v1/invoices/{invoice['id']}")["status"] != "paid":
                if time.monotonic() > paid_by:
                    return times, ["failover: the invoice paid in the block after the kill is not paid"]
                time.sleep(0.05)
            daemons[leader].start()  # back, as the one that waits
    finally:
        for daemon in daemons.values():
            daemon.stop()
    return times, []


def section(quick: bool, figure: Any) -> tuple[list[tuple[str, bool]], list[str]]:
    count, repeats = (10, 1) if quick else (100, 3)
    lease_seconds = 2 if quick else DEFAULT_LEASE_SECONDS
    targets: list[tuple[str, bool]] = []
    broken: list[str] = []
    arrivals = Arrivals()
    with tempfile.TemporaryDirectory(prefix="watcherd-bench-node-") as tmp_name, \
            WebhookReceiver(WEBHOOK_SECRET) as receiver:
        tmp = Path(tmp_name)
        receiver.on_event = arrivals.on_event
        node = Node.create("btc", tmp / "node", die_with_parent=True)
        try:
            node.start()
            try:
                p99, rate, problems = measure_detection(node, tmp, receiver, arrivals, count, figure)
                broken += problems
                # a p99 met under less load than asked for is no pass
                targets.append((f"detection p99 <= {TARGET_P99_MS:.0f} ms under {LOAD_TX_PER_S} tx/s",
                                p99 <= TARGET_P99_MS and rate >= 0.95 * LOAD_TX_PER_S))
            except (OSError, RuntimeError) as exc:
                broken.append(f"node: detection latency not measured: {exc}")
            try:
                times, problems = measure_failover(node, tmp, receiver, repeats, lease_seconds, figure)
                broken += problems
                if times:
                    targets.append((f"failover <= {TARGET_FAILOVER_S:.0f} s", max(times) <= TARGET_FAILOVER_S))
            except (OSError, RuntimeError) as exc:
                broken.append(f"failover not measured: {exc}")
        finally:
            node.stop()
    return targets, broken


def main() -> int:
    from bench_alone import run_alone  # scripts/ is sys.path[0]

    return run_alone(section)


if __name__ == "__main__":
    sys.exit(main())
