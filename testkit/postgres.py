"""A real PostgreSQL 15 server (Debian `postgresql`) on loopback, in a directory of its own, for the tests and
the devnet.

PostgreSQL refuses to run as root: as root its programs run as the `postgres` user (the directory is handed to
it); as anybody else, as that user. `start` returns once the server accepts connections and fails fast with the
tail of its log when it exits; `stop` stops it by its own pid (fast shutdown, SIGKILL if it lingers) and may be
followed by another `start` on the same data and port: a database that goes away under a running daemon.
`new_database` makes an empty database in a few tens of milliseconds (CREATE DATABASE ... TEMPLATE template0)."""

from __future__ import annotations

import itertools
import os
import pwd
import signal
import subprocess
import time
from pathlib import Path

from testkit.process import START_TIMEOUT, _die_with_parent, free_ports, pid_alive, pid_cmdline, wait_pid_gone

BIN_DIR = Path(os.environ.get("WATCHERD_POSTGRES_BIN") or "/usr/lib/postgresql/15/bin")
STOP_TIMEOUT = 20.0


def available() -> bool:
    return (BIN_DIR / "postgres").exists()


class PostgresServer:
    def __init__(self, root: Path, port: int | None = None, *, die_with_parent: bool = True, pid: int | None = None):
        """`pid`: a server an earlier process started (the devnet's), found again by its state file."""
        self.root = root
        self.data = root / "data"
        self.log = root / "postgres.log"
        self.port = port or free_ports(1)[0]
        self.die_with_parent = die_with_parent
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid = pid
        self._counter = itertools.count(1)
        self._user = "postgres" if os.geteuid() == 0 else None  # root: run as postgres, else as ourselves

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else self._pid

    def _owns(self, pid: int) -> bool:
        """Still our server: alive, and its command line names our data directory (a reused pid is not)."""
        return pid_alive(pid) and str(self.data) in pid_cmdline(pid)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> str:
        done = subprocess.run(args, user=self._user, capture_output=True, text=True, timeout=60, cwd=self.root)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        return done.stdout

    def initdb(self) -> None:
        if not available():
            raise FileNotFoundError(f"{BIN_DIR}/postgres is missing: run scripts/install-deps (Debian postgresql)")
        self.root.mkdir(parents=True, exist_ok=True)
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._run(str(BIN_DIR / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                  "--no-sync")

    def start(self, timeout: float = START_TIMEOUT) -> PostgresServer:
        if not self.data.exists():
            self.initdb()
        with open(self.log, "ab") as log:
            self._proc = subprocess.Popen(
                [str(BIN_DIR / "postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.root),
                 "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=200"],
                user=self._user, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent if self.die_with_parent else None,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"postgres exited ({self._proc.returncode}) during startup\n{self.tail()}")
            ready = subprocess.run([str(BIN_DIR / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
                                   capture_output=True)
            if ready.returncode == 0:
                self._pid = self._proc.pid
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"postgres did not accept connections within {timeout:.0f}s\n{self.tail()}")
            time.sleep(0.1)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Fast shutdown (SIGINT: sessions are cut, nothing waits for them), by the server's own pid."""
        proc, self._proc = self._proc, None
        if proc is None:
            pid, self._pid = self._pid, None
            if pid is not None and self._owns(pid):
                os.kill(pid, signal.SIGINT)
                if not wait_pid_gone(pid, timeout):
                    os.kill(pid, signal.SIGKILL)
                    wait_pid_gone(pid, 10)
            return
        self._pid = None
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        # its backends are its children: gone with it, but make sure before the port is reused
        wait_pid_gone(proc.pid, 5)

    def running(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None and pid_alive(self._proc.pid)
        return self._pid is not None and self._owns(self._pid)

    def sql(self, statement: str, database: str = "postgres") -> str:
        return self._run(str(BIN_DIR / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
                         "-p", str(self.port), "-U", "postgres", "-d", database, "-c", statement)

    def new_database(self, prefix: str = "watcherd", name: str | None = None) -> str:
        """A new empty database (`name`, or a fresh one); its URL."""
        name = name or f"{prefix}_{os.getpid()}_{next(self._counter)}"
        self.sql(f"CREATE DATABASE {name} TEMPLATE template0")
        return self.url(name)

    def has_database(self, name: str) -> bool:
        return self.sql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'").strip() == "1"

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"
