"""The write-throughput section of scripts/bench: invoices created through the HTTP API by 32 concurrent clients,
and webhook events delivered to a local receiver that answers at once (targets: >= 1,000 invoices/s with p99
<= 50 ms on SQLite; >= 1,000 events/s delivered).

The server is the real daemon (`python -m watcherd run`) on a temporary SQLite store, pinned to one core, with
one Bitcoin chain whose node is never there (creating an invoice derives its address from the xpub and needs no
node) and a [webhook] pointing at the receiver. The client runs on the other core with the receiver: 32
keep-alive connections POST /v1/invoices one request at a time each, for a fixed time, timing each answer (a
201 is sent only once its invoice is committed); the receiver counts the webhook deliveries (one
`invoice.created` event per invoice) and answers 200 at once. After the load, the time the daemon takes to
deliver the backlog gives the delivery rate.

The same run measures the daemon with `[store] max_batch = 1`, the old path (one transaction, so one fsync, per
request and per delivery record), beside the default (concurrent transactions committed together).

Then the same two runs on PostgreSQL (target: >= 1,500 invoices/s across two instances): a real server
(testkit.postgres, started as the tests start it, so with fsync = off) and two daemons (`instance = "a"` and
`"b"`) on one fresh database per run, the 32 clients split 16 to each daemon's API. This machine has two cores:
both daemons share the server core, PostgreSQL runs on the client core beside the clients and the receiver.

`python scripts/bench_create.py [--quick]` runs the section alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-token-0123456789abcdef"
# The bench's own key (seed be..be at m/84'/0'/0'): a public test vector is refused on mainnet.
XPUB = "xpub6CEwsXvU54bryCgLk4vWcfvpNp2X45HYr9V486UgrkbyL6M3XFrBb5Xgv15FTCrVuzVUC3NEhCSBYmHtHfdjLhL2XHJYuZrxWhi5uBk9vpX"
CLIENTS = 32
TARGET_CREATES_PER_S = 1000
TARGET_CREATE_P99_MS = 50.0
TARGET_DELIVERIES_PER_S = 1000
TARGET_POSTGRES_CREATES_PER_S = 1500  # across two instances
MODES = {"one transaction per request (max_batch = 1)": 1, "group commit (default)": None}
BODY = json.dumps({"chain": "btc", "amount": "0.001", "order_id": "bench", "expires_in": 3600}).encode()


def now() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


# --- the receiver and the clients (one process, on the client core) ----------------------------------------


class Receiver(asyncio.Protocol):
    """A webhook endpoint that answers 200 at once to every POST on a keep-alive connection, counting them."""

    count = 0
    last = 0.0
    arrived: asyncio.Event | None = None  # set at each delivery

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            found = re.search(rb"\r\ncontent-length: *(\d+)", bytes(self.buffer[:end]), re.IGNORECASE)
            total = end + 4 + (int(found.group(1)) if found else 0)
            if len(self.buffer) < total:
                return
            del self.buffer[:total]
            Receiver.count += 1
            Receiver.last = now()
            if Receiver.arrived is not None:
                Receiver.arrived.set()
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")


class Client(asyncio.Protocol):
    """One keep-alive connection creating invoices, one request at a time."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer = bytearray()
        self.waiter: asyncio.Future[bytes] | None = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None:
            return
        found = re.search(rb"\r\ncontent-length: *(\d+)", bytes(self.buffer[:end]), re.IGNORECASE)
        total = end + 4 + (int(found.group(1)) if found else 0)
        if len(self.buffer) >= total:
            head = bytes(self.buffer[:end])
            del self.buffer[:total]
            self.waiter.set_result(head)
            self.waiter = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None:
            self.waiter.set_exception(ConnectionError("the daemon closed the connection"))

    async def create(self) -> bytes:
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(b"POST /v1/invoices HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                             b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
                             b"Content-Length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)
        return await self.waiter


async def _load(ports: list[int], seconds: float, warmup: float) -> dict[str, Any]:
    """CLIENTS connections, dealt in turn to the daemons' API ports."""
    loop = asyncio.get_running_loop()
    clients = [(await loop.create_connection(Client, "127.0.0.1", ports[i % len(ports)]))[1] for i in range(CLIENTS)]
    latencies: list[float] = []
    failures: list[str] = []
    created = 0
    started = now()
    measured_from, stop = started + warmup, started + warmup + seconds

    async def worker(client: Client) -> None:
        nonlocal created
        while (sent := now()) < stop:
            head = await client.create()
            if not head.startswith(b"HTTP/1.1 201"):
                failures.append(head[:60].decode(errors="replace"))
                continue
            created += 1
            if sent >= measured_from:
                latencies.append(now() - sent)

    await asyncio.gather(*(worker(c) for c in clients))
    for client in clients:
        client.transport.close()
    return {"created": created, "latencies": latencies, "seconds": seconds, "failures": failures[:5],
            "failed": len(failures), "delivered_at_end": Receiver.count, "ended": now(),
            "load_elapsed": now() - started}


async def _run_client(seconds: float, warmup: float) -> None:
    """Says the receiver's port on stdout, reads the daemons' API ports (comma-separated) from stdin, loads them,
    then waits for the backlog: until every created invoice's event arrived, or none arrived for 10 s."""
    loop = asyncio.get_running_loop()
    Receiver.arrived = asyncio.Event()
    server = await loop.create_server(Receiver, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    ports = [int(p) for p in (await loop.run_in_executor(None, sys.stdin.readline)).split(",")]
    result = await _load(ports, seconds, warmup)
    while Receiver.count < result["created"]:
        Receiver.arrived.clear()
        try:
            async with asyncio.timeout(10):
                await Receiver.arrived.wait()
        except TimeoutError:
            break
    result.update(delivered=Receiver.count, drained_at=Receiver.last)
    print(json.dumps(result), flush=True)
    server.close()


def client(args: list[str]) -> None:
    cpus, seconds, warmup = args
    os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
    asyncio.run(_run_client(float(seconds), float(warmup)))


# --- the section (in the bench's process) -----------------------------------------------------------------


def _cpus() -> tuple[int, set[int]]:
    mine = sorted(os.sched_getaffinity(0))
    return mine[0], set(mine[1:]) or set(mine)


def _config(tmp: Path, api_port: int, receiver_port: int, max_batch: int | None, store: str) -> Path:
    """`store`: the [store] table's location and instance lines."""
    batch = f"max_batch = {max_batch}\n" if max_batch is not None else ""
    path = tmp / "watcherd.toml"
    path.write_text(f"""[store]
{store}
{batch}
[api]
listen = "127.0.0.1:{api_port}"
token = "{TOKEN}"

[webhook]
url = "http://127.0.0.1:{receiver_port}/hook"
secret = "bench-webhook-secret-0123456789"

[log]
level = "error"

[chains.btc]
kind = "bitcoin"
coin = "bitcoin"
network = "mainnet"
rpc_url = "http://127.0.0.1:9"
rpc_user = "bench"
rpc_password = "bench"
xpub = "{XPUB}"
address_type = "p2wpkh"
start_height = 800000
""")
    return path


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_up(port: int, daemon: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise RuntimeError(f"the daemon exited {daemon.returncode}:\n{log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the daemon's API did not come up:\n{log.read_text()[-2000:]}")


@contextlib.contextmanager
def _daemon(config: Path, cpu: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        profile = ["-m", "cProfile", "-o", os.environ["BENCH_PROFILE"]] if os.environ.get("BENCH_PROFILE") else []
        daemon = subprocess.Popen([sys.executable, *profile, "-m", "watcherd", "--config", str(config), "run"],
                                  stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                                  preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
    try:
        yield daemon
    finally:
        daemon.terminate()
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()


def measure(quick: bool, max_batch: int | None, postgres_url: str | None = None) -> dict[str, Any]:
    """One daemon on SQLite under load, or with `postgres_url` two (instances "a" and "b") on that database, both
    on the server core (`max_batch` None: the default)."""
    server_cpu, client_cpus = _cpus()
    seconds, warmup = (2.0, 0.5) if quick else (10.0, 1.0)
    with tempfile.TemporaryDirectory(prefix="watcherd-bench-create-") as tmp_name, contextlib.ExitStack() as daemons:
        tmp = Path(tmp_name)
        load = subprocess.Popen(
            [sys.executable, __file__, "--client", ",".join(map(str, sorted(client_cpus))), str(seconds), str(warmup)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert load.stdout is not None and load.stdin is not None
            receiver_port = load.stdout.readline().strip()
            if not receiver_port:
                raise RuntimeError(f"the bench client did not start: {load.stderr.read() if load.stderr else ''}")
            stores = ({"": f'path = "{tmp / "watcherd.sqlite3"}"'} if postgres_url is None else
                      {name: f'url = "{postgres_url}"\ninstance = "{name}"' for name in ("a", "b")})
            api_ports = []
            for name, store in stores.items():  # one after the other: the first one migrates the new database
                home = tmp / name
                home.mkdir(exist_ok=True)
                api_ports.append(_free_port())
                config = _config(home, api_ports[-1], int(receiver_port), max_batch, store)
                daemon = daemons.enter_context(_daemon(config, server_cpu, home / "daemon.log"))
                _wait_up(api_ports[-1], daemon, home / "daemon.log")
            out, err = load.communicate(f"{','.join(map(str, api_ports))}\n", timeout=seconds + warmup + 120)
        finally:
            if load.poll() is None:
                load.kill()
                load.wait()
        if load.returncode != 0:
            raise RuntimeError(f"the bench client failed:\n{out}{err}")
    result: dict[str, Any] = json.loads(out)
    result.update(server_cpu=server_cpu, client_cpus=sorted(client_cpus))
    return result


def measure_postgres(quick: bool) -> dict[str, dict[str, Any]]:
    """Both modes on a real PostgreSQL started for them (on the client cores), a fresh database per run; the
    server is stopped whatever happens."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from testkit.postgres import PostgresServer, available

    if not available():
        raise FileNotFoundError("no PostgreSQL 15 here: run scripts/install-deps")
    _, client_cpus = _cpus()
    # not under a private temp dir: the server runs as the postgres user when we are root
    root = Path(tempfile.mkdtemp(prefix="watcherd-bench-pg-"))
    server = PostgresServer(root)
    mine = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, client_cpus)  # the server and its backends inherit it
        try:
            server.start(timeout=60)
        finally:
            os.sched_setaffinity(0, mine)
        return {label: measure(quick, max_batch, server.new_database("bench_create")) for label, max_batch in
                MODES.items()}
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples) or [0.0]

    def rank(q: float) -> float:
        return ordered[max(0, -(-int(q * len(ordered) * 1000) // 1000) - 1)] * 1000

    return rank(0.50), rank(0.99)


def figures(r: dict[str, Any]) -> tuple[float, float, float, float]:
    """(creates/s, p50 ms, p99 ms, deliveries/s after the load)."""
    rate = len(r["latencies"]) / r["seconds"]
    p50, p99 = percentiles(r["latencies"])
    backlog = r["delivered"] - r["delivered_at_end"]
    drain = r["drained_at"] - r["ended"]
    delivery_rate = backlog / drain if backlog > 0 and drain > 0 else 0.0
    return rate, p50, p99, delivery_rate


def _judge(label: str, r: dict[str, Any], broken: list[str]) -> tuple[float, float, float, float]:
    """The run's figures; what it failed to do goes to `broken`."""
    if r["failed"]:
        broken.append(f"{label}: {r['failed']} creates failed, e.g. {r['failures']}")
    if r["delivered"] < r["created"]:
        broken.append(f"{label}: {r['delivered']} of {r['created']} invoice.created events delivered")
    return figures(r)


def _webhooks(r: dict[str, Any], delivery_rate: float) -> str:
    return (f"webhooks during the load {r['delivered_at_end'] / r['load_elapsed']:,.0f}/s of {r['created']:,} "
            f"events, the backlog after it at {delivery_rate:,.0f} events/s")


def section(quick: bool, figure: Any) -> tuple[list[tuple[str, bool]], list[str]]:
    broken: list[str] = []
    shown = {}
    for label, max_batch in MODES.items():
        r = measure(quick, max_batch)
        rate, p50, p99, delivery_rate = shown[label] = _judge(label, r, broken)
        figure(f"create: {label}", f"{rate:,.0f} invoices/s, p50 {p50:.1f} ms, p99 {p99:.1f} ms "
               f"({CLIENTS} clients, daemon on CPU {r['server_cpu']}); {_webhooks(r, delivery_rate)}")
    rate, _, p99, delivery_rate = shown["group commit (default)"]
    targets = [
        (f"invoice creation >= {TARGET_CREATES_PER_S:,}/s on SQLite ({CLIENTS} clients)", rate >= TARGET_CREATES_PER_S),
        (f"invoice creation p99 <= {TARGET_CREATE_P99_MS:.0f} ms", p99 <= TARGET_CREATE_P99_MS),
        (f"webhook delivery >= {TARGET_DELIVERIES_PER_S:,} events/s", delivery_rate >= TARGET_DELIVERIES_PER_S),
    ]
    postgres_rate = 0.0
    try:
        for mode, r in measure_postgres(quick).items():
            label = f"PostgreSQL, two instances, {mode}"
            rate, p50, p99, delivery_rate = _judge(label, r, broken)
            if MODES[mode] is None:
                postgres_rate = rate
            cpus = ",".join(map(str, r["client_cpus"]))
            figure(f"create: {label}", f"{rate:,.0f} invoices/s, p50 {p50:.1f} ms, p99 {p99:.1f} ms "
                   f"({CLIENTS} clients, {CLIENTS // 2} per instance; daemons a and b both on CPU {r['server_cpu']}, "
                   f"PostgreSQL (fsync = off) and the clients on CPU {cpus}); {_webhooks(r, delivery_rate)}")
    except Exception as exc:  # noqa: BLE001 -- said as BROKEN, the rest of the bench still runs
        broken.append(f"create on PostgreSQL not measured: {exc}")
    targets.append((f"invoice creation >= {TARGET_POSTGRES_CREATES_PER_S:,}/s across two instances on PostgreSQL",
                    postgres_rate >= TARGET_POSTGRES_CREATES_PER_S))
    return targets, broken


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        client(sys.argv[2:])
        return 0
    from bench_alone import run_alone  # scripts/ is sys.path[0]

    return run_alone(section)


if __name__ == "__main__":
    sys.exit(main())
