"""The real daemon as a subprocess, configured against real regtest nodes, and an API client for it."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bip_utils import Bip32KeyNetVersions, Bip32Slip10Secp256k1
from prometheus_client.parser import text_string_to_metric_families

from testkit.configs import bitcoin_table, ethereum_table
from testkit.configs import monero_table as monero_table  # re-exported: tests take it from here

TESTNET_VERSIONS = Bip32KeyNetVersions(bytes.fromhex("043587cf"), bytes.fromhex("04358394"))  # tpub / tprv
TOKEN = "test-api-token-0123456789"
WEBHOOK_SECRET = "whsec_0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def account_tpub(purpose: int) -> str:
    """A fresh operator account key; the private half never leaves this function."""
    master = Bip32Slip10Secp256k1.FromSeed(os.urandom(32), TESTNET_VERSIONS)
    return master.DerivePath(f"m/{purpose}'/1'/0'").PublicKey().ToExtended()


def chain_table(name: str, node: Any, *, confirmations: int, zmq: bool = True, **extra: Any) -> str:
    """A [chains.<name>] table for a devnet node with a fresh operator key (the SV bitcoind has no segwit:
    p2pkh there)."""
    address_type, purpose = ("p2wpkh", 84) if node.kind == "litecoin" else ("p2pkh", 44)
    return bitcoin_table(name, node, xpub=account_tpub(purpose), address_type=address_type,
                         confirmations=confirmations, zmq=zmq, **extra)


def eth_account_xpub() -> str:
    """A fresh operator Ethereum account key (m/44'/60'/0'); the private half never leaves this function."""
    from bip_utils import Bip44, Bip44Coins

    return Bip44.FromSeed(os.urandom(32), Bip44Coins.ETHEREUM).Purpose().Coin().Account(0).PublicKey().ToExtended()


def eth_table(name: str, node: Any, *, confirmations: int, tokens: tuple[str, ...] = ("USDC", "DAI"),
              chain_id: int | None = None, **extra: Any) -> str:
    """A [chains.<name>] table for the devnet anvil with a fresh operator key, with its deployed test tokens."""
    return ethereum_table(name, node, xpub=eth_account_xpub(), confirmations=confirmations, tokens=tokens,
                          chain_id=chain_id, **extra)


def wait_delivered(receiver: Any, invoice_id: str, statuses: list[str], timeout: float = 30) -> list[dict]:
    """Wait until the webhooks delivered for the invoice show exactly `statuses`; returns the deliveries."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if receiver.statuses(invoice_id) == statuses:
            return receiver.for_invoice(invoice_id)
        time.sleep(0.05)
    raise AssertionError(f"webhooks for {invoice_id}: {receiver.statuses(invoice_id)}, wanted {statuses}")


class Daemon:
    def __init__(self, workdir: Path, chains: str, webhook_url: str | None = None, extra: str = "",
                 env: dict[str, str] | None = None, log_format: str = "plain", store: str | None = None,
                 files: int | None = None):
        """`extra`: more TOML tables (e.g. [mqtt]); `env`: extra environment for the process; `store`: the
        [store] table's keys (default: a SQLite file in `workdir`); `files`: the process's RLIMIT_NOFILE (soft
        and hard; default: this one's)."""
        self.env = {**os.environ, **(env or {})}
        self.files = files
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.metrics_port = free_port()
        self.config_path = workdir / "watcherd.toml"
        default_store = f'path = "{workdir / "watcherd.sqlite3"}"'
        webhook = f'[webhook]\nurl = "{webhook_url}"\nsecret = "{WEBHOOK_SECRET}"\n' if webhook_url else ""
        self.config_path.write_text(
            f'[store]\n{store or default_store}\n'
            f'[api]\nlisten = "127.0.0.1:{self.port}"\ntoken = "{TOKEN}"\n'
            f'[metrics]\nlisten = "127.0.0.1:{self.metrics_port}"\n'
            f'{webhook}{extra}[log]\nlevel = "debug"\nformat = "{log_format}"\n{chains}'
        )
        self.log_path = workdir / "daemon.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> Daemon:
        with self.log_path.open("ab") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(
                [sys.executable, "-m", "watcherd", "--config", str(self.config_path), "run"],
                stdout=log, stderr=subprocess.STDOUT, env=self.env,
                preexec_fn=None if self.files is None else self._limit_files,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"daemon exited {self.process.returncode}:\n{self.log_tail()}")
            try:
                self.api("GET", "/healthz")
                return self
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"daemon API did not come up:\n{self.log_tail()}")

    def _limit_files(self) -> None:
        assert self.files is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.files, self.files))

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self, timeout: float = 30) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(f"daemon ignored SIGTERM:\n{self.log_tail()}") from None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def request(self, method: str, path: str, body: Any = None, *, auth: str = f"Bearer {TOKEN}") -> tuple[int, Any]:
        """Any route's HTTP status and JSON answer, errors included (`auth`: the Authorization header)."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method,
                                         data=None if body is None else json.dumps(body).encode(),
                                         headers={"Authorization": auth, "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, json.loads(exc.read())

    def readiness(self) -> tuple[int, Any]:
        """/readyz's HTTP status and whole report (with the token: without it only `ready`), 503 included."""
        return self.request("GET", "/readyz")

    def metric(self, name: str, **labels: str) -> float:
        """One sample from the daemon's Prometheus endpoint (0 when absent)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as response:
            text = response.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return sample.value
        return 0.0

    def create_invoice(self, chain: str, amount: str, **extra: Any) -> dict[str, Any]:
        return self.api("POST", "/v1/invoices", {"chain": chain, "amount": amount, **extra})

    def invoice(self, invoice_id: str) -> dict[str, Any]:
        return self.api("GET", f"/v1/invoices/{invoice_id}")

    def wait_status(self, invoice_id: str, status: str, timeout: float = 20, exception: Any = ...,
                    where: Callable[[dict], bool] = lambda invoice: True) -> dict:
        """Wait for the status (and exception, if given) with `where(invoice)` true: a chain can pass through
        intermediate states (invalidateblock disconnects one block at a time) that have the same status."""
        deadline = time.monotonic() + timeout
        invoice: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                invoice = self.invoice(invoice_id)
            except urllib.error.HTTPError as exc:
                exc.close()
                invoice = {}
            except OSError:  # the daemon is (re)starting
                invoice = {}
            if (invoice.get("status") == status and (exception is ... or invoice.get("exception") == exception)
                    and where(invoice)):
                return invoice
            time.sleep(0.05)
        raise AssertionError(
            f"invoice {invoice_id} not {status} within {timeout}s: {json.dumps(invoice)[:1500]}\n{self.log_tail()}"
        )


def readiness(daemon: Daemon) -> dict[str, Any]:
    """/readyz as the API token sees it, ready (200) or not (503)."""
    return dict(daemon.readiness()[1])


def wait_stopped(daemon: Daemon, chain: str, timeout: float = 30) -> str:
    """Wait until /readyz shows `chain` stopped and the daemon not ready; the reason it gives."""
    deadline = time.monotonic() + timeout
    while True:
        shown = readiness(daemon)
        reason = shown["chains"].get(chain, {}).get("stopped")
        if reason:
            assert not shown["ready"] and not shown["chains"][chain]["ready"], shown
            return str(reason)
        assert time.monotonic() < deadline, f"{chain} not stopped: {shown}\n{daemon.log_tail()}"
        time.sleep(0.1)


def critical_lines(daemon: Daemon) -> list[str]:
    """The CRITICAL lines of the daemon's (plain) log."""
    return [line for line in daemon.log_path.read_text(errors="replace").splitlines() if " CRITICAL " in line]


async def read_event(stream: Any, within: float = 5) -> str:
    """The data of the next SSE event (heartbeats and the retry line skipped)."""
    async with asyncio.timeout(within):
        data = []
        while True:
            line = (await stream.content.readline()).decode()
            if not line:
                raise EOFError("stream ended")
            if line.startswith("data: "):
                data.append(line[6:].rstrip("\n"))
            elif line == "\n" and data:
                return "\n".join(data)
