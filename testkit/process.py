"""One process lifecycle for every node program the test kit runs: bitcoind, litecoind, anvil, monerod and
monero-wallet-rpc.

A `NodeProcess` is spawned in a session of its own (a Ctrl-C in the terminal that ran `scripts/devnet up` must
not take the nodes down), optionally tied to its parent's life (tests want their nodes gone even when pytest is
SIGKILLed; a devnet outlives `scripts/devnet`). Its start returns only once the node's RPC answers, and fails
fast with the tail of the node's logs when the program exits or never answers. A later process (the next
`scripts/devnet` command) finds it again by pid, and only ever signals that pid while its command line still
carries the node's own directory, so a reused pid is never touched. Stopping asks the node (a stop RPC, else
SIGTERM), waits for the pid to be gone, and SIGKILLs it if it is not.
"""

from __future__ import annotations

import ctypes  # here, not in the child: one that switched to another user may not be able to read it
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from testkit.rpc import NodeRPCError

REPO_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
KILL_TIMEOUT = 10.0
# One readiness probe: short, so a port that accepts but never answers cannot hide a node that already died.
PROBE_TIMEOUT = 5.0
POLL_INTERVAL = 0.05


# ---- where the programs are ---------------------------------------------------------------------------------


def nodes_dir() -> Path:
    """Where `scripts/install-deps` put the node binaries that do not come from Debian."""
    return Path(os.environ.get("WATCHERD_NODES_DIR") or REPO_ROOT / ".nodes")


def installed_binary(relative: str) -> Path:
    """A program `scripts/install-deps` unpacked under nodes_dir()."""
    path = nodes_dir() / relative
    if not os.access(path, os.X_OK):
        raise FileNotFoundError(f"{path} is missing: run scripts/install-deps")
    return path


def binary_on_path(name: str, package: str) -> Path:
    """A program installed system-wide (a Debian package)."""
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} is not on PATH: run scripts/install-deps (Debian package {package})")
    return Path(found)


# ---- ports and pids -------------------------------------------------------------------------------------------


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


def port_free(port: int) -> bool:
    """True if a node could bind `port` on loopback now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As the nodes bind: connections of a previous run lingering in TIME_WAIT do not make a port busy.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pid_alive(pid: int) -> bool:
    """True while `pid` runs; a zombie (exited, not yet reaped) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # The state letter follows the parenthesised command name, which may itself contain spaces or ')'.
    return stat[stat.rindex(")") + 2] not in "ZX"


def pid_cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def wait_pid_gone(pid: int, timeout: float) -> bool:
    """Wait for `pid` to exit; False if it still runs after `timeout`. Polls the pid itself, not an ownership
    check on the command line: an exiting process loses its command line (and may still hold its ports)
    before it is gone."""
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_INTERVAL)
    return True


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: ask the kernel to SIGTERM it when its parent dies.
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)


def _asked(ask: Callable[[], object] | None) -> bool:
    if ask is None:
        return False
    try:
        ask()
    except NodeRPCError:  # not answering: a signal still works
        return False
    return True


def _contains(args: Sequence[str], marker: Sequence[str]) -> bool:
    n = len(marker)
    return any(list(args[i : i + n]) == list(marker) for i in range(len(args) - n + 1))


# ---- one node program ----------------------------------------------------------------------------------------


class NodeProcess:
    """One node program: our child (with a Popen handle) once started here, or known only by the pid a state
    file kept. `marker` is a run of arguments unique to this node (its data directory): the command line a pid
    must carry to be taken for this node."""

    def __init__(self, label: str, marker: Sequence[str], console_log: Path, *, logs: Sequence[Path] = (),
                 die_with_parent: bool = False, pid: int | None = None, cwd: Path | None = None):
        self.label = label  # for messages: "btc node", "xmr monero-wallet-rpc"
        self.cwd = cwd  # where it runs (None: here); a program that writes files where it runs runs in its datadir
        self.marker = tuple(marker)
        self.console_log = console_log  # the program's stdout and stderr
        self.logs = tuple(logs)  # log files the program writes itself, shown after a failed start
        self.die_with_parent = die_with_parent
        self.pid = pid
        self._proc: subprocess.Popen[bytes] | None = None

    def owns(self, pid: int) -> bool:
        return pid_alive(pid) and _contains(pid_cmdline(pid), self.marker)

    def running(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        return self.pid is not None and self.owns(self.pid)

    def start(self, args: list[str], ready: Callable[[], object], timeout: float = START_TIMEOUT) -> None:
        """Spawn `args`, then call `ready` (an RPC probe, with a PROBE_TIMEOUT of its own) until it stops raising
        NodeRPCError. On any failure the program is killed and the error carries the tail of its logs."""
        if not _contains(args, self.marker):
            raise ValueError(f"{self.label}: {self.marker} is not in its command line; a later process could "
                             "never recognise it")
        if self.running():
            raise RuntimeError(f"{self.label} is already running (pid {self.pid})")
        self.console_log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.console_log, "ab") as console:
            self._proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT, start_new_session=True,
                cwd=self.cwd,
                # PDEATHSIG fires when the forking THREAD exits: only tie the node to the main thread, never to a
                # worker (a restart() run via asyncio.to_thread would otherwise die with its pool).
                preexec_fn=(_die_with_parent if self.die_with_parent
                            and threading.current_thread() is threading.main_thread() else None),
            )
        self.pid = self._proc.pid
        try:
            self._wait_ready(ready, timeout)
        except BaseException:
            self.kill()
            raise

    def _wait_ready(self, ready: Callable[[], object], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last_error: NodeRPCError | None = None
        while True:
            if not self.running():
                code = self._proc.returncode if self._proc is not None else None
                raise RuntimeError(f"{self.label} exited (code {code}) during startup\n{self.tail()}")
            try:
                ready()
                return
            except NodeRPCError as exc:  # refused while binding; "loading" errors while it reads its data
                last_error = exc
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.label} did not answer within {timeout:.0f}s ({last_error})\n{self.tail()}"
                )
            time.sleep(POLL_INTERVAL)

    def stop(self, timeout: float = STOP_TIMEOUT, ask: Callable[[], object] | None = None) -> None:
        """Ask the program to stop (`ask`, e.g. a stop RPC; SIGTERM without one or when it fails), wait until its
        pid is gone; SIGKILL it if it is not within `timeout`."""
        if self.running():
            if not _asked(ask):
                self._signal(signal.SIGTERM)
            if not self.wait_exit(timeout):
                self.kill()
                return
        self._forget()

    def kill(self) -> None:
        self._signal(signal.SIGKILL)
        self.wait_exit(KILL_TIMEOUT)
        self._forget()

    def wait_exit(self, timeout: float) -> bool:
        """Wait for the program to exit: our child through its Popen (reaping it), else by pid; False if it
        still runs after `timeout`."""
        if self._proc is not None:
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        return self.pid is None or wait_pid_gone(self.pid, timeout)

    def _signal(self, sig: signal.Signals) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.send_signal(sig)
        elif self.pid is not None and self.owns(self.pid):
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def _forget(self) -> None:
        if self._proc is not None:
            try:
                self._proc.wait(timeout=KILL_TIMEOUT)  # reap it: no zombie left behind
            except subprocess.TimeoutExpired:
                pass
            else:
                self._proc = None
        self.pid = None

    def tail(self, lines: int = 30) -> str:
        """The last `lines` of each of the program's logs, for error messages."""
        chunks = []
        for path in (self.console_log, *self.logs):
            try:
                text = path.read_text(errors="replace").splitlines()[-lines:]
            except FileNotFoundError:
                continue
            if text:
                chunks.append(f"--- tail of {path} ---\n" + "\n".join(text))
        return "\n".join(chunks) or f"(no log at {self.console_log})"
