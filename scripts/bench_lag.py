"""The event-loop-lag section of scripts/bench: how late the daemon's event loop wakes up while it scans a
payment-heavy Monero pool and connects 2,000-tx Bitcoin blocks at the same time (target: p99 <= 10 ms).

Everything runs in one asyncio loop, as in the daemon: the real MoneroAdapter (`sync_pool`: pool hashes,
get_transactions in batches of 100, the view-key scan in a worker thread, each payment applied by the ledger)
and the real BitcoinAdapter (`catch_up`: getblockcount, getblockhash, getblock 0 as hex, its JSON decoded and
the block scanned off the loop, the matches applied), both over HTTP against a fake node in a child process
(so that serving the answers costs the measured process nothing), with the real Processor and Store (SQLite in a
temp dir). A probe task measures the lag as the daemon's own monitor does (daemon.py `_measure_loop_lag`):
ask for a 1 ms sleep, record how much later than that the loop woke it.

Judged: the wake-ups while both chains are in flight (from the start until the first of the two is done; the
pool's scan thread runs through most of it). Also shown: the whole run (the pool's ledger work goes on after
the blocks), the same probe on the idle loop just before (the baseline), one 100-tx pool batch scanned on the
loop instead of in a thread (what to_thread spares it), and what one full garbage collection costs.

As in a daemon that has run a while, what set-up built is garbage-collected into the oldest generation and the
default executor has its threads before measuring (else a collection traversing every watch set, and Thread.start
waiting for the GIL, would land in the figures).

The pool is the payment-heavy regtest corpus (24 real txs, 12 paying us) repeated under fresh txids and key
images: every copy costs the full scan, but only the first copy of each payment is credited; the others share
its one-time output keys and stop at the ledger's burning-bug check.

`python scripts/bench_lag.py --diagnose` runs the quick workload once and lists the loop callbacks that held the
loop for 3 ms or more, with where they resumed and stopped (`--serve FILE` is the fake node, for the bench).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import json
import logging
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
VECTORS = REPO_ROOT / "tests" / "vectors"
TARGET_P99_MS = 10.0
PROBE_SECONDS = 0.001
BLOCK_TXS = 2_000
PAID_PER_BLOCK = 20
XPUB = "xpub6BgBgsespWvERF3LHQu6CnqdvfEvtMcQjYrcRzx53QJjSxarj2afYWcLteoGVky7D3UKDP9QyrLprQ3VCECoY49yfdDEHGCtMMj92pReUsQ"
XMR_TIP = (3_000_000, "ab" * 32)


# --- the fake node (child process) ------------------------------------------------------------------------


def serve(datafile: str) -> None:
    """bitcoind on /btc, monerod on /xmr/..., answering from `datafile`; prints its port, stops at EOF on stdin."""
    from aiohttp import web

    data = json.loads(Path(datafile).read_text())
    btc, xmr = data["btc"], data["xmr"]
    hashes: list[str] = btc["hashes"]  # hashes[0] is the cursor's block, at height btc["base"]
    blocks = {h: json.dumps({"result": raw, "error": None, "id": 1}).encode()
              for h, raw in zip(hashes[1:], btc["blocks"], strict=True)}
    pool_txs: dict[str, str] = xmr["txs"]

    def answer(value: Any) -> web.Response:
        return web.Response(body=json.dumps(value).encode(), content_type="application/json")

    async def bitcoind(request: web.Request) -> web.Response:
        call = await request.json()
        method, params = call["method"], call["params"]
        if method == "getblockcount":
            return answer({"result": btc["base"] + len(hashes) - 1, "error": None, "id": call["id"]})
        if method == "getblockhash":
            index = params[0] - btc["base"]
            if 0 <= index < len(hashes):
                return answer({"result": hashes[index], "error": None, "id": call["id"]})
            return answer({"result": None, "error": {"code": -8, "message": "out of range"}, "id": call["id"]})
        if method == "getbestblockhash":
            return answer({"result": hashes[-1], "error": None, "id": call["id"]})
        if method == "getblock":
            return web.Response(body=blocks[params[0]], content_type="application/json")
        return answer({"result": None, "error": {"code": -32601, "message": method}, "id": call["id"]})

    async def monerod(request: web.Request) -> web.Response:
        call = await request.json()
        path = request.match_info["path"]
        if path == "json_rpc" and call["method"] == "get_last_block_header":
            height, tip = xmr["tip"]
            return answer({"jsonrpc": "2.0", "id": "0", "result": {"block_header": {"hash": tip, "height": height}}})
        if path == "get_transaction_pool_hashes":
            return answer({"status": "OK", "tx_hashes": list(pool_txs)})
        if path == "get_transactions":
            txs = [{"tx_hash": t, "as_json": pool_txs[t]} for t in call["txs_hashes"] if t in pool_txs]
            return answer({"status": "OK", "txs": txs})
        return answer({"jsonrpc": "2.0", "id": "0", "error": {"code": -32601, "message": path}})

    async def main() -> None:
        app = web.Application(client_max_size=2**20)
        app.router.add_post("/btc", bitcoind)
        app.router.add_post("/xmr/{path}", monerod)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        print(port, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes it
        await runner.cleanup()

    asyncio.run(main())


# --- the workload ---------------------------------------------------------------------------------------


def _pool(copies: int) -> tuple[dict[str, Any], dict[str, str], int]:
    """The payment-heavy corpus `copies` times under fresh txids and key images (else each copy would be a double
    spend of the one before): (vectors, txid -> pruned JSON, owned outputs)."""
    vectors = json.loads((VECTORS / "monero_regtest.json").read_text())
    txs: dict[str, str] = {}
    for copy in range(copies):
        for entry in vectors["txs"]:
            # the text of get_transactions(decode_as_json, prune): the tx's JSON without its signatures
            tx = {k: v for k, v in entry["json"].items() if k != "rctsig_prunable"}
            tx["vin"] = [{"key": {**i["key"], "k_image": hashlib.sha256(f"{copy}:{i['key']['k_image']}".encode())
                                  .hexdigest()}} if "key" in i else i for i in tx["vin"]]
            txs[hashlib.sha256(f"{copy}:{entry['txid']}".encode()).hexdigest()] = json.dumps(tx)
    return vectors, txs, copies * len(vectors["expected"])


def _blocks(make_tx: Any, n_blocks: int, payees: list[bytes], seed: int) -> tuple[int, list[str], list[str]]:
    """`n_blocks` chained blocks of BLOCK_TXS fresh transactions each, every 100th paying the next of `payees`:
    (height of the block before them, their hashes from that block on, their raw hex)."""
    rng = random.Random(seed)
    base, hashes, raws = 850_000, [rng.randbytes(32).hex()], []
    payee = iter(payees)
    for _ in range(n_blocks):
        txs = [make_tx(rng, ("p2pkh", "p2wpkh", "p2tr")[rng.randrange(3)], rng.randint(1, 3),
                       next(payee) if i % (BLOCK_TXS // PAID_PER_BLOCK) == 50 else None) for i in range(BLOCK_TXS)]
        header = ((0x20000000).to_bytes(4, "little") + bytes.fromhex(hashes[-1])[::-1] + rng.randbytes(32)
                  + int(time.time()).to_bytes(4, "little") + rng.randbytes(8))
        block = header + b"\xfd" + len(txs).to_bytes(2, "little") + b"".join(txs)
        hashes.append(hashlib.sha256(hashlib.sha256(header).digest()).digest()[::-1].hex())
        raws.append(block.hex())
    return base, hashes, raws


class Probe:
    """The daemon's loop-lag monitor (daemon.py `_measure_loop_lag`) at a 1 ms period, keeping every sample."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self.at: list[float] = []  # perf_counter() of each wake-up

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time()
            await asyncio.sleep(PROBE_SECONDS)
            self.lags.append(max(0.0, loop.time() - asked - PROBE_SECONDS))
            self.at.append(time.perf_counter())

    def window(self, start: float, end: float) -> list[float]:
        """The lags of the wake-ups between `start` and `end` (perf_counter)."""
        return [lag for lag, at in zip(self.lags, self.at, strict=True) if start <= at <= end]

    async def during(self, work: Any) -> Any:
        """Await `work` with the probe running; the probe's samples cover exactly that stretch."""
        self.lags.clear()
        self.at.clear()
        task = asyncio.create_task(self.run())
        await asyncio.sleep(0)
        try:
            return await work
        finally:
            task.cancel()


def percentiles(lags: list[float]) -> tuple[float, float, float]:
    """(p50, p99, max) in ms, nearest-rank; NaN without samples (which fails any target)."""
    ordered = sorted(lags)
    if not ordered:
        return math.nan, math.nan, math.nan

    def rank(q: float) -> float:
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)] * 1000

    return rank(0.50), rank(0.99), ordered[-1] * 1000


class CountingSink:
    """The ledger's sink for a chain, counting the outputs the adapter reports as paying us."""

    def __init__(self, sink: Any) -> None:
        self._sink = sink
        self.outputs = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sink, name)

    async def tx_seen(self, tx: Any) -> None:
        self.outputs += len(tx.received)
        await self._sink.tx_seen(tx)


@dataclass
class Workload:
    n_blocks: int
    base: int  # height of the block the bitcoin cursor starts at
    hashes: list[str]  # from that block on
    raws: list[str]  # the blocks after it, raw hex (getblock verbosity 0)
    payees: list[bytes]  # the bitcoin invoices' scripts, in derivation order: the blocks pay each once
    vectors: dict[str, Any]
    pool: dict[str, str]  # txid -> pruned JSON text
    owned_expected: int


def _workload(quick: bool, make_tx: Any) -> Workload:
    n_blocks, copies = (3, 30) if quick else (8, 80)
    vectors, pool, owned_expected = _pool(copies)
    deriver = _btc_config("").address_deriver()
    payees = [deriver.derive(i)[1] for i in range(n_blocks * PAID_PER_BLOCK)]
    base, hashes, raws = _blocks(make_tx, n_blocks, payees, seed=20240603)
    return Workload(n_blocks, base, hashes, raws, payees, vectors, pool, owned_expected)


def _btc_config(rpc_url: str) -> Any:
    from watcherd.chains.bitcoin.address import network
    from watcherd.chains.bitcoin.config import BitcoinChainConfig

    return BitcoinChainConfig(
        name="btc", coin="bitcoin", network=network("bitcoin", "mainnet"), asset="BTC", rpc_url=rpc_url,
        rpc_user="bench", rpc_password="bench", rpc_cookie_file=None, zmq_rawtx=None, zmq_hashblock=None,
        poll_interval_seconds=1.0, xpub=XPUB, address_type="p2wpkh", confirmations=2,
        underpaid_tolerance_percent=Decimal(0), invoice_expiry_seconds=900, start_height=None,
    )


@contextlib.contextmanager
def fake_node(w: Workload) -> Iterator[str]:
    """The fake bitcoind + monerod of `w`, in a child process: its base URL."""
    with tempfile.TemporaryDirectory(prefix="watcherd-bench-lag-") as tmp:
        datafile = Path(tmp) / "node.json"
        datafile.write_text(json.dumps({"btc": {"base": w.base, "hashes": w.hashes, "blocks": w.raws},
                                        "xmr": {"tip": XMR_TIP, "txs": w.pool}}))
        node = subprocess.Popen([sys.executable, __file__, "--serve", str(datafile)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
        try:
            assert node.stdout is not None
            yield f"http://127.0.0.1:{int(node.stdout.readline())}"
        finally:
            assert node.stdin is not None
            node.stdin.close()  # it stops at EOF
            try:
                node.wait(timeout=5)
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait()


async def _run(w: Workload, url: str, watched: set[bytes], store_dir: Path, quick: bool,
               diagnose: Any = None) -> dict[str, Any]:
    from watcherd.chains.bitcoin.adapter import BitcoinAdapter
    from watcherd.chains.monero.adapter import MoneroAdapter
    from watcherd.chains.monero.config import MoneroChainConfig, MoneroNetwork
    from watcherd.chains.monero.crypto import SubaddressDeriver, encode_address, scalar_base
    from watcherd.core.types import Cursor
    from watcherd.daemon import settle_heap, tune_interpreter
    from watcherd.ledger import Processor
    from watcherd.store import Store

    view, spend_public = bytes.fromhex(w.vectors["view_key"]), bytes.fromhex(w.vectors["spend_public"])
    async with contextlib.AsyncExitStack() as cleanup:
        btc = BitcoinAdapter(_btc_config(f"{url}/btc"))
        cleanup.push_async_callback(btc.close)
        xmr = MoneroAdapter(MoneroChainConfig(
            name="xmr", network=MoneroNetwork("mainnet"), rpc_url=f"{url}/xmr", rpc_user=None, rpc_password=None,
            zmq_pub=None, primary_address=encode_address(18, spend_public, scalar_base(view)), view_key=view,
        ))
        cleanup.push_async_callback(xmr.close)
        store = await Store.open(store_dir / "bench.sqlite3")
        cleanup.push_async_callback(store.close)  # its threads would keep the process alive
        processor = Processor(store, {"btc": btc, "xmr": xmr})
        await processor.start()
        btc_invoices = [(await processor.create_invoice("btc", 10**5))["id"] for _ in w.payees]
        for _ in range(8):  # subaddresses (0, 1..8): the pool pays the first four
            await processor.create_invoice("xmr", 10**11)
        subs = SubaddressDeriver(view, spend_public, "mainnet")
        xmr.watchlist.keys.update(subs.spend_key(major, minor) for major in range(3) for minor in range(8))
        xmr.watchlist.keys.update(os.urandom(32) for _ in range(100_000))  # as bench_monero: 100,000 watched
        btc.watchlist.keys.update(watched)
        await processor.set_cursor("btc", Cursor(w.base, w.hashes[0]))
        await processor.set_cursor("xmr", Cursor(*XMR_TIP))
        btc_sink, xmr_sink = processor.sink("btc"), CountingSink(processor.sink("xmr"))

        # A daemon that has run a while has long since moved what it built at start-up (the watch sets above all)
        # to the oldest generation; here that collection would land in the measurement. Do it now, and time it:
        # a full collection traverses every watch set, on whichever thread triggers it (the loop's, often).
        started = time.perf_counter()
        gc.collect()
        full_gc = time.perf_counter() - started
        settle_heap()  # as the daemon does after start-up
        tune_interpreter()  # and at its start
        # Likewise its default executor already has its worker threads: starting one blocks the loop until the new
        # thread first gets the GIL (Thread.start waits for it), which the scanning threads make slow.
        await asyncio.gather(*(asyncio.to_thread(time.sleep, 0.01) for _ in range(min(32, (os.cpu_count() or 1) + 4))))

        probe = Probe()
        await probe.during(asyncio.sleep(0.3 if quick else 1.0))
        idle = list(probe.lags)

        timings: dict[str, float] = {}
        scan_all = xmr._scan_all

        def timed_scan(*args: Any) -> Any:  # the adapter's own scan, with its start and end noted
            timings["scan start"] = time.perf_counter()
            try:
                return scan_all(*args)
            finally:
                timings["scan end"] = time.perf_counter()

        async def timed(name: str, work: Any) -> None:
            await work
            timings[name] = time.perf_counter()

        xmr._scan_all = timed_scan  # type: ignore[method-assign]
        if diagnose is not None:
            diagnose.start(probe)
        started = time.perf_counter()
        await probe.during(asyncio.gather(timed("xmr", xmr.sync_pool(xmr_sink)), timed("btc", btc.catch_up(btc_sink))))
        if diagnose is not None:
            diagnose.stop()
        xmr._scan_all = scan_all  # type: ignore[method-assign]
        busy = list(probe.lags)
        both = probe.window(started, min(timings["xmr"], timings["btc"]))

        # contrast: one get_transactions batch (100 txs) scanned on the loop itself, as without to_thread
        batch = dict(list(w.pool.items())[:100])

        async def on_loop() -> None:
            await asyncio.sleep(0.005)
            xmr._scan_all(batch, list(batch))
            await asyncio.sleep(0.005)

        await probe.during(on_loop())
        blocking = list(probe.lags)

        paid = 0
        for invoice_id in btc_invoices:
            shown = await processor.invoice_json(invoice_id)
            paid += shown is not None and shown["amount_received_atomic"] != "0"
        cursor = await store.cursor("btc")
    return {
        "full_gc": full_gc, "set_entries": len(watched) + len(btc.watchlist.keys) + len(xmr.watchlist.keys),
        "idle": idle, "busy": busy, "both": both, "blocking": blocking, "started": started, "timings": timings,
        "owned": xmr_sink.outputs, "btc_paid": paid,
        "btc_cursor_ok": cursor is not None and cursor.hash == w.hashes[-1],
    }


def measure(quick: bool, make_tx: Any, watched: set[bytes], diagnose: Any = None) -> tuple[Workload, dict[str, Any]]:
    logging.getLogger("watcherd").setLevel(logging.ERROR)  # the pool's repeated payments trip the burning-bug warning
    w = _workload(quick, make_tx)
    with fake_node(w) as url, tempfile.TemporaryDirectory(prefix="watcherd-bench-lag-") as store_dir:
        return w, asyncio.run(_run(w, url, watched, Path(store_dir), quick, diagnose))


def section(quick: bool, figure: Any, make_tx: Any, watched: set[bytes]) -> tuple[list[tuple[str, bool]], list[str]]:
    w, r = measure(quick, make_tx, watched)
    broken = []
    if r["owned"] != w.owned_expected:
        broken.append(f"loop lag: the monero pool scan reported {r['owned']} owned outputs, "
                      f"{w.owned_expected} were in it")
    if r["btc_paid"] != len(w.payees) or not r["btc_cursor_ok"]:
        broken.append(f"loop lag: {r['btc_paid']} of {len(w.payees)} bitcoin payments credited, "
                      f"cursor at the last block: {r['btc_cursor_ok']}")
    idle, both, busy, blocking = (percentiles(r[k]) for k in ("idle", "both", "busy", "blocking"))
    t, t0 = r["timings"], r["started"]

    def span(start: str, end: str) -> str:
        return f"{(t[start] - t0) * 1000:.0f}-{(t[end] - t0) * 1000:.0f} ms" if start in t and end in t else "?"

    def lag(p: tuple[float, float, float], samples: list[float]) -> str:
        return f"p50 {p[0]:.2f} ms, p99 {p[1]:.2f} ms, max {p[2]:.2f} ms ({len(samples)} wake-ups)"

    figure("loop lag workload",
           f"monero pool of {len(w.pool):,} payment-heavy txs ({r['owned']} owned outputs) + {w.n_blocks} "
           f"bitcoin blocks of {BLOCK_TXS:,} txs ({len(w.payees)} payments), at once, over HTTP, into SQLite")
    figure("loop lag timeline", f"blocks 0-{(t['btc'] - t0) * 1000:.0f} ms, pool 0-{(t['xmr'] - t0) * 1000:.0f} ms "
           f"(its scan thread {span('scan start', 'scan end')}, then the ledger applies its payments)")
    figure("loop lag idle (baseline)", lag(idle, r["idle"]))
    figure("loop lag while both chains are in flight", lag(both, r["both"]))
    figure("loop lag over the whole run", lag(busy, r["busy"]))
    figure("loop lag, one 100-tx pool batch scanned on the loop instead (contrast)", f"max {blocking[2]:.1f} ms")
    figure("loop lag not counted above: one full garbage collection",
           f"{r['full_gc'] * 1000:.0f} ms with {r['set_entries']:,} keys in watch sets (the loop stalls that long "
           "when it runs one; done before measuring)")
    return [(f"loop lag p99 <= {TARGET_P99_MS:.0f} ms while scanning both chains", both[1] <= TARGET_P99_MS)], broken


class SlowCallbacks:
    """--diagnose: every loop callback that ran >= 3 ms, with the wall time, the loop thread's own CPU time
    (wall >> CPU: the thread waited, for the GIL or a core; CPU ~ wall: the code itself computed) and, for a
    task, the await it resumed from and the one it stopped at: the code between them held the loop."""

    def __init__(self) -> None:
        self.slow: list[tuple[float, float, str, str]] = []
        self._original = asyncio.events.Handle._run

    @staticmethod
    def _where(task: Any) -> str:
        if not isinstance(task, asyncio.Task):
            return ""
        frames, awaiting = [], task.get_coro()
        while awaiting is not None:  # down the chain of awaits: the innermost frames are where it stopped
            frame = getattr(awaiting, "cr_frame", None) or getattr(awaiting, "gi_frame", None)
            if frame is not None:
                frames.append(f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno}")
            awaiting = getattr(awaiting, "cr_await", None) or getattr(awaiting, "gi_yieldfrom", None)
        return " <- ".join(reversed(frames[-4:]))

    def start(self, probe: Probe) -> None:
        original, slow, where = self._original, self.slow, self._where

        def run(handle: asyncio.Handle) -> None:
            task = getattr(handle._callback, "__self__", None)  # type: ignore[attr-defined]
            callback = handle._callback  # type: ignore[attr-defined]
            # its name, not its repr: some objects' __repr__ (aiohttp's) changes their state
            before = where(task) or getattr(callback, "__qualname__", type(callback).__name__)
            wall, cpu = time.perf_counter(), time.thread_time()
            original(handle)
            wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
            if wall >= 0.003:
                slow.append((wall * 1000, cpu * 1000, before, where(task)))

        asyncio.events.Handle._run = run  # type: ignore[method-assign]

    def stop(self) -> None:
        asyncio.events.Handle._run = self._original  # type: ignore[method-assign]

    def report(self) -> None:
        print(f"{len(self.slow)} callbacks held the loop >= 3 ms; the longest:")
        for wall, cpu, before, after in sorted(self.slow, reverse=True)[:15]:
            print(f"  {wall:5.1f} ms wall, {cpu:5.1f} ms CPU: from {before}\n{'':33}to {after or '(done)'}")


def _diagnose() -> None:
    """The bench's quick workload once, naming the callbacks that held the loop."""
    sys.path.insert(0, str(REPO_ROOT))
    from importlib.machinery import SourceFileLoader
    from importlib.util import module_from_spec, spec_from_loader

    loader = SourceFileLoader("bench", str(REPO_ROOT / "scripts" / "bench"))
    spec = spec_from_loader("bench", loader)
    assert spec is not None
    bench = module_from_spec(spec)
    loader.exec_module(bench)
    watched = {os.urandom(22) for _ in range(50_000)}
    tracer = SlowCallbacks()
    _, r = measure(True, bench.make_tx, watched, tracer)
    print("lag while both chains are in flight, p50/p99/max ms:",
          ", ".join(f"{x:.2f}" for x in percentiles(r["both"])))
    tracer.report()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(sys.argv[2])
    elif sys.argv[1:] == ["--diagnose"]:
        _diagnose()
    else:
        sys.exit(__doc__)
