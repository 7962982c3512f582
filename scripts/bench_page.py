"""The payment-page section of scripts/bench: page loads per second from the daemon on one core, the bytes of a full
page load, no request leaving the daemon's origin, and how fast a committed status change reaches the pages
watching it live (targets: >= 500 loads/s, <= 60 kB, zero external requests, p99 <= 50 ms with 1,000 pages open).

Two child processes. The server runs the daemon's own HTTP application (watcherd/http/api.py `make_app`, the
payment page of watcherd/http/checkout.py) under aiohttp, pinned to one core with its SQLite threads, over a real
Processor and Store (SQLite in a temp dir) with the real Bitcoin and Monero adapters deriving the addresses (no
node: payments are reported to the ledger directly, as an adapter would). It holds invoices priced at 49.00 USD,
offered in BTC and XMR, BTC picked on every one and XMR too on every other one, and adds a few token-protected
/bench routes that commit payments and blocks through the ledger and say when each committed. The client runs on
the other core(s) with a small HTTP/1.1 keep-alive client of its own (asyncio protocols, so that it can keep up
with the server and time each byte's arrival).

Page loads (judged): the page of an invoice (BTC shown, or XMR with ?method=xmr) with its stylesheet and script
(the QR is an inline SVG), round-robin over the pages loaded once before (their QR cached) from 16 keep-alive
connections. Beside it, in the same run: GET /healthz (the server and client's ceiling), the HTML alone (a
returning visitor: the assets are cached for a year) and the first load of each page (its QR built: 5 ms for a
BTC URI, 10 ms for a Monero one; later loads take it from the cache). The bytes are counted as they come over the
wire, headers included, asking for compression as a browser does; every URL in the page, its CSS and its script
must be same-origin (or data:, or a wallet link such as bitcoin:).

Live: one page (an SSE stream on /i/{id}/live) open per invoice; payments are committed one at a time, 0-10 ms
apart, on random invoices (`Processor.tx_seen`); each one's latency runs from the moment its transaction committed
(CLOCK_MONOTONIC, which is system-wide on Linux, read in the server right after COMMIT returned) to the moment
the client read the message carrying it. Then one block gives a payment on every invoice its second confirmation
(`Processor.block_connected`, which wakes every page watching an invoice payable on that chain: live.py
`touch_chain`), and the time until each page had its message is measured, the last one included. That is no
status change (the invoices stay underpaid) but a thousand pages re-rendered at once: they share three reads
(live.py `Coalescer`), and each page's render (about 0.2 ms of exact fractions and formatting) is the cost. It is
judged against its own target, all pages within 1 s: the shortest block interval watched (Ethereum's 12 s) leaves
room for that, while a status change must reach its page at once.

`python scripts/bench_page.py [--quick]` runs the section alone; `--serve` and `--client` are its two halves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import resource
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

REPO_ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-token-0123456789abcdef"
TARGET_LOADS_PER_S = 500
TARGET_PAGE_BYTES = 60_000
TARGET_LIVE_P99_MS = 50.0
TARGET_BLOCK_ALL_MS = 1000.0  # a block's new confirmations on every open page
CONNECTIONS = 16  # keep-alive connections loading pages
BROWSER_HEADERS = (b"Accept: text/html,application/xhtml+xml,*/*;q=0.8\r\nAccept-Encoding: gzip, deflate, br, zstd\r\n"
                   b"Accept-Language: en-US,en;q=0.9\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) bench\r\n")
PRICE_CENTS = 4900
RATES = {"BTC": Fraction(50_000), "XMR": Fraction(150)}
PREPAY_SATS = 10_000  # the block the live part starts from pays each invoice this much (5.00 USD: underpaid)
CHANGE_SATS = 1_000  # each measured change pays 0.50 USD more


@dataclass(frozen=True)
class Settings:
    pages: int  # invoices, and live pages open (one per invoice)
    first_loads: int  # pages loaded for the first time (their QR built)
    load_seconds: float  # per page-load figure
    changes: int  # live status changes measured


FULL = Settings(pages=1_000, first_loads=998, load_seconds=3.0, changes=300)
QUICK = Settings(pages=200, first_loads=30, load_seconds=0.2, changes=60)


def now() -> float:
    """The one clock both processes read: CLOCK_MONOTONIC is system-wide on Linux."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def _more_files() -> None:
    """A thousand streams are a thousand sockets on each side; many systems start processes at 1,024 files."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard))


# --- the server (child process) ---------------------------------------------------------------------------


def serve(pages: int, cpu: int) -> None:
    """The daemon's HTTP app over `pages` invoices, pinned to `cpu`: prints one JSON line (port, invoices), stops
    at EOF on stdin."""
    os.sched_setaffinity(0, {cpu})  # before any thread starts: aiosqlite's threads inherit it
    _more_files()
    sys.path.insert(0, str(REPO_ROOT))
    import logging
    import tempfile

    logging.getLogger("watcherd").setLevel(logging.ERROR)  # a thousand unused addresses trip the gap-limit warning
    with tempfile.TemporaryDirectory(prefix="watcherd-bench-page-") as tmp:
        asyncio.run(_serve(pages, Path(tmp)))


async def _serve(pages: int, tmp: Path) -> None:
    from aiohttp import web
    from bench_lag import XMR_TIP, _btc_config  # scripts/ is sys.path[0]

    from watcherd.chains.bitcoin.adapter import BitcoinAdapter
    from watcherd.chains.monero.adapter import MoneroAdapter
    from watcherd.chains.monero.config import MoneroChainConfig, MoneroNetwork
    from watcherd.chains.monero.crypto import encode_address, scalar_base
    from watcherd.core.types import ChainBlock, ChainTx, Cursor, Received
    from watcherd.daemon import settle_heap, tune_interpreter
    from watcherd.http.api import make_app, quote_methods
    from watcherd.ledger import Processor
    from watcherd.store import Store

    tune_interpreter()  # as the daemon does at its start
    vectors = json.loads((REPO_ROOT / "tests" / "vectors" / "monero_regtest.json").read_text())
    view, spend_public = bytes.fromhex(vectors["view_key"]), bytes.fromhex(vectors["spend_public"])
    btc = BitcoinAdapter(_btc_config("http://127.0.0.1:9"))  # never called: payments go to the ledger directly
    xmr = MoneroAdapter(MoneroChainConfig(
        name="xmr", network=MoneroNetwork("mainnet"), rpc_url="http://127.0.0.1:9", rpc_user=None, rpc_password=None,
        zmq_pub=None, primary_address=encode_address(18, spend_public, scalar_base(view)), view_key=view,
    ))
    store = await Store.open(tmp / "bench.sqlite3")
    processor = Processor(store, {"btc": btc, "xmr": xmr}, ["webhook"], public_url="http://127.0.0.1")
    await processor.start()
    await processor.set_cursor("btc", Cursor(100, "h100"))
    await processor.set_cursor("xmr", Cursor(*XMR_TIP))

    committed = [0.0]  # when the last transaction's COMMIT returned
    transaction = store.transaction

    @contextlib.asynccontextmanager
    async def timed_transaction() -> AsyncIterator[Any]:
        async with transaction() as tx:
            yield tx
        committed[0] = now()

    store.transaction = timed_transaction  # type: ignore[method-assign]

    params = {"currency": "USD", "decimals": 2, "methods": ["btc", "xmr"], "given": RATES}
    quotes = quote_methods(params, processor, None)
    invoices, keys = [], []
    for i in range(pages):  # as a shop creates them and their customers pick a coin
        invoice = await processor.create_priced_invoice(
            "USD", PRICE_CENTS, quotes, order_id=f"A-{10_000 + i}", metadata={"description": "1 x Widget, blue"},
            redirect_url=f"https://shop.example/orders/A-{10_000 + i}",
        )
        picked = ["btc", "xmr"] if i % 2 else ["btc"]
        for method in picked:
            await processor.activate_method(invoice["id"], method)
        invoices.append({"id": invoice["id"], "method": picked[-1]})  # the page shows the last one picked
        key = next(m.watch_key for m in await store.methods_for(invoice["id"]) if m.chain == "btc")
        assert key is not None
        keys.append(key)
    rng = random.Random(20240607)

    async def prepay(request: web.Request) -> web.Response:
        """One block paying every invoice a little: each page then shows a payment whose confirmations move."""
        txs = tuple(ChainTx(f"{i:064x}", (Received(key, 0, PREPAY_SATS),), (rng.randbytes(36),))
                    for i, key in enumerate(keys))
        await processor.block_connected("btc", ChainBlock(101, "h101", "h100", txs))
        paid = 0
        for invoice in invoices:
            shown = await processor.invoice_json(invoice["id"])
            paid += shown is not None and shown["amount_received_atomic"] != "0"
        return web.json_response({"paid": paid})

    async def changes(request: web.Request) -> web.Response:
        """`n` payments, one at a time, 0-10 ms apart, each to a random invoice: when each committed."""
        done = []
        for _ in range(int(request.query["n"])):
            index = rng.randrange(len(invoices))
            txid = rng.randbytes(32).hex()
            await processor.tx_seen("btc", ChainTx(txid, (Received(keys[index], 0, CHANGE_SATS),),
                                                   (rng.randbytes(36),)))
            done.append({"invoice": index, "txid": txid, "committed": committed[0]})
            await asyncio.sleep(rng.uniform(0, 0.010))
        return web.json_response({"changes": done})

    async def block(request: web.Request) -> web.Response:
        """An empty block: the prepay block's payments get their second confirmation, on every invoice."""
        started = now()
        await processor.block_connected("btc", ChainBlock(102, "h102", "h101", ()))
        return web.json_response({"started": started, "committed": committed[0], "watching": processor.live.watching})

    async def readiness() -> dict[str, Any]:
        return {"ready": True}

    app = make_app(processor, TOKEN, readiness)
    app.router.add_post("/bench/prepay", prepay)  # behind the API's token, as every non-public route
    app.router.add_post("/bench/changes", changes)
    app.router.add_post("/bench/block", block)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)  # as the daemon runs it
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    settle_heap()  # as the daemon does after start-up
    print(json.dumps({"port": runner.addresses[0][1], "invoices": invoices}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes it
    await runner.cleanup()
    await btc.close()
    await xmr.close()
    await store.close()


# --- the client (child process) ---------------------------------------------------------------------------


class Http(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time; answers need a Content-Length (every answer
    but the event stream has one)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[bytes, bytes]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None or self.waiter.done():
            return
        head = bytes(self.buffer[:end])
        found = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
        total = end + 4 + (int(found.group(1)) if found else 0)
        if len(self.buffer) >= total:
            body = bytes(self.buffer[end + 4:total])
            del self.buffer[:total]
            self.waiter.set_result((head, body))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("the server closed the connection"))

    async def request(self, path: str, headers: bytes = b"") -> tuple[bytes, bytes]:
        """(status line + headers, body); both together are what came over the wire."""
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode() + headers + b"\r\n")
        return await self.waiter


class Stream(asyncio.Protocol):
    """One page's live channel (GET /i/{id}/live): each event with the CLOCK_MONOTONIC time its last byte came."""

    def __init__(self, on_event: Callable[[], None]) -> None:
        self.on_event = on_event
        self.events: list[tuple[float, bytes]] = []
        self.status = b""
        self._buffer = bytearray()
        self._payload = bytearray()
        self._chunk_left: int | None = None  # the stream is chunked: left of the current chunk
        self._head = True
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        arrived = now()
        buffer = self._buffer
        buffer += data
        if self._head:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            self.status = bytes(buffer[:buffer.find(b"\r\n")])
            del buffer[:end + 4]
            self._head = False
        while buffer:
            if self._chunk_left is None:
                end = buffer.find(b"\r\n")
                if end < 0:
                    break
                self._chunk_left = int(buffer[:end], 16)
                del buffer[:end + 2]
            take = min(self._chunk_left, len(buffer))
            self._payload += buffer[:take]
            del buffer[:take]
            self._chunk_left -= take
            if self._chunk_left or len(buffer) < 2:
                break
            del buffer[:2]  # the CRLF after the chunk
            self._chunk_left = None
        while (end := self._payload.find(b"\n\n")) >= 0:
            event = bytes(self._payload[:end])
            del self._payload[:end + 2]
            if b"data:" in event:  # not the retry: line, nor a heartbeat comment
                self.events.append((arrived, event))
                self.on_event()


class Links(HTMLParser):
    """Every URL a page refers to: (tag, attribute, value), inline style url()s included."""

    ATTRIBUTES = frozenset({"href", "src", "action", "formaction", "srcset", "poster", "data", "background",
                            "manifest", "ping", "cite", "xlink:href"})

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str, str]] = []
        self.subresources: list[str] = []  # what a browser loads with the page

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for name, value in attrs:
            if value is None:
                continue
            if name in self.ATTRIBUTES or (name.startswith("data-") and "/" in value and not any(
                    c.isspace() for c in value)):
                for part in value.split(",") if name == "srcset" else [value]:
                    self.urls.append((tag, name, part.strip().split(" ")[0]))
            elif name == "content" and (values.get("http-equiv") or "").lower() == "refresh":
                at = value.lower().find("url=")  # the noscript refresh has none: it reloads the page itself
                if at >= 0:
                    self.urls.append((tag, name, value[at + 4:].strip("'\" ")))
            elif name == "style":
                self.urls += [(tag, "style", url) for url in css_urls(value)]
        rel = (values.get("rel") or "").lower().split()
        if tag == "script" and values.get("src"):
            self.subresources.append(str(values["src"]))
        elif tag == "link" and values.get("href") and {"stylesheet", "icon", "preload", "modulepreload"} & set(rel):
            self.subresources.append(str(values["href"]))
        elif tag in ("img", "iframe", "embed", "source", "video", "audio") and values.get("src"):
            self.subresources.append(str(values["src"]))

    def handle_data(self, data: str) -> None:
        if self.lasttag == "style":
            self.urls += [("style", "", url) for url in css_urls(data)]


def css_urls(text: str) -> list[str]:
    return [m.group(2) or m.group(3) for m in re.finditer(r"""url\(\s*(['"]?)([^'")]*)\1\s*\)|@import\s+['"]([^'"]+)""",
                                                          text)]


def js_urls(text: str) -> list[str]:
    """Absolute or protocol-relative URLs in a script's string literals."""
    return re.findall(r"""['"`]((?:[a-z][a-z0-9+.-]*:)?//[^'"`\s]+)""", text, re.IGNORECASE)


def external(url: str, page: str) -> bool:
    """Whether a browser would send a request for `url` anywhere but the page's own origin (data: and wallet
    schemes such as bitcoin: or monero: open no connection)."""
    target, origin = urlsplit(urljoin(page, url)), urlsplit(page)
    return target.scheme in ("http", "https", "ws", "wss", "ftp") and \
        (target.scheme, target.netloc) != (origin.scheme, origin.netloc)


async def _connect(port: int) -> Http:
    _, protocol = await asyncio.get_running_loop().create_connection(Http, "127.0.0.1", port)
    return protocol


def _header(head: bytes, name: str) -> str:
    found = re.search(rb"\r\n" + name.encode() + rb": *([^\r]*)", head, re.IGNORECASE)
    return found.group(1).decode() if found else ""


async def full_load(port: int, path: str) -> dict[str, Any]:
    """One first visit to a page, as a browser makes it: the page, then what it loads; the bytes received for
    each (headers included, as sent: compressed when the server compresses), and every URL it refers to."""
    http = await _connect(port)
    base = f"http://127.0.0.1:{port}{path}"
    head, body = await http.request(path, BROWSER_HEADERS)
    parts = {"html": len(head) + 4 + len(body)}
    encodings = {_header(head, "Content-Encoding") or "identity"}
    links = Links()
    links.feed(body.decode())
    refs = [(f"<{tag} {name}>", url) for tag, name, url in links.urls]
    for ref in links.subresources:
        if external(ref, base) or ref.startswith("data:"):
            continue
        sub = urlsplit(urljoin(base, ref))
        sub_head, sub_body = await http.request(sub.path + (f"?{sub.query}" if sub.query else ""), BROWSER_HEADERS)
        kind = ref.rsplit(".", 1)[-1].split("?")[0]
        parts[kind] = parts.get(kind, 0) + len(sub_head) + 4 + len(sub_body)
        encodings.add(_header(sub_head, "Content-Encoding") or "identity")
        text = sub_body.decode(errors="replace")
        refs += [(kind, url) for url in (css_urls(text) if kind == "css" else js_urls(text))]
    assert http.transport is not None
    http.transport.close()
    return {"parts": parts, "total": sum(parts.values()), "encodings": sorted(encodings),
            "qr_inline": "<svg" in body.decode(), "refs": refs,
            "external": [f"{where} {url}" for where, url in refs if external(url, base)],
            "csp": _header(head, "Content-Security-Policy")}


async def load_rate(port: int, groups: list[list[str]], seconds: float | None) -> tuple[float, int]:
    """Loads per second, a load being each path of a group in turn; the groups round-robin over CONNECTIONS
    connections for `seconds` (None: each group once)."""
    connections = [await _connect(port) for _ in range(CONNECTIONS)]
    done = 0
    started = now()
    stop = started + seconds if seconds is not None else float("inf")

    async def worker(http: Http, first: int) -> None:
        nonlocal done
        index = first
        while now() < stop and (seconds is not None or index < len(groups)):
            for path in groups[index % len(groups)]:
                head, _ = await http.request(path, BROWSER_HEADERS)
                if not head.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(f"GET {path}: {head[:40]!r}")
            done += 1
            index += CONNECTIONS

    await asyncio.gather(*(worker(http, k) for k, http in enumerate(connections)))
    elapsed = now() - started
    for http in connections:
        assert http.transport is not None
        http.transport.close()
    return done / elapsed, done


async def _control(port: int, path: str) -> dict[str, Any]:
    """A /bench route of the server (POST, with the API token)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
                 "Content-Length: 0\r\nConnection: close\r\n\r\n".encode())
    answer = await reader.read()
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"POST {path}: {answer[:300]!r}")
    return dict(json.loads(body))


async def _live(port: int, invoices: list[dict[str, str]], settings: Settings) -> dict[str, Any]:
    result: dict[str, Any] = {"prepaid": (await _control(port, "/bench/prepay"))["paid"]}
    received = [0]
    enough = asyncio.Event()
    wanted = [len(invoices)]

    def counted() -> None:
        received[0] += 1
        if received[0] >= wanted[0]:
            enough.set()

    loop = asyncio.get_running_loop()
    streams: list[Stream] = []
    opening = asyncio.Semaphore(64)  # the server's listen backlog is 128: don't overflow it

    async def open_page(invoice: dict[str, str]) -> Stream:
        async with opening:
            transport, stream = await loop.create_connection(lambda: Stream(counted), "127.0.0.1", port)
            transport.write(f"GET /i/{invoice['id']}/live HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
                            "Cache-Control: no-cache\r\n\r\n".encode())
            return stream

    streams = list(await asyncio.gather(*(open_page(invoice) for invoice in invoices)))
    # no ?v=: each stream first sends what the page shows now, which says the page is watching
    async with asyncio.timeout(30):
        await enough.wait()
    result["open"] = sum(s.status.startswith(b"HTTP/1.1 200") and len(s.events) == 1 for s in streams)

    before = [len(s.events) for s in streams]
    asked = (await _control(port, f"/bench/changes?n={settings.changes}"))["changes"]

    def arrival(change: dict[str, Any]) -> float | None:
        txid = change["txid"].encode()
        events = streams[change["invoice"]].events[before[change["invoice"]]:]
        return next((t for t, event in events if txid in event), None)

    for _ in range(200):  # the last ones' messages may still be on their way
        if all(arrival(change) is not None for change in asked):
            break
        await asyncio.sleep(0.01)
    arrivals = [(arrival(change), change["committed"]) for change in asked]
    result.update(changes=len(asked), change_latencies=[t - c for t, c in arrivals if t is not None],
                  change_missing=sum(t is None for t, _ in arrivals))

    before = [len(s.events) for s in streams]
    wanted[0], enough = received[0] + len(streams), asyncio.Event()
    block = await _control(port, "/bench/block")
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(30):
            await enough.wait()
    reached = [s.events[n][0] for s, n in zip(streams, before, strict=True) if len(s.events) > n]
    result.update(block_watching=block["watching"], block_pages=len(reached),
                  block_commit=block["committed"] - block["started"],
                  block_latencies=[t - block["committed"] for t in reached])
    for stream in streams:
        if stream.transport is not None:
            stream.transport.close()
    return result


async def _client(port: int, invoices: list[dict[str, str]], settings: Settings) -> dict[str, Any]:
    from watcherd.http.checkout import ASSETS

    def page(invoice: dict[str, str]) -> str:
        return f"/i/{invoice['id']}" + ("?method=xmr" if invoice["method"] == "xmr" else "")

    assets = [f"/i/assets/{ASSETS.css}", f"/i/assets/{ASSETS.js}"]
    result: dict[str, Any] = {}
    # each page's first load builds its QR; the first two pages are measured as a browser sees them first
    result["cold"] = await load_rate(port, [[page(i)] for i in invoices[2:2 + settings.first_loads]], None)
    result["bytes"] = {invoice["method"]: await full_load(port, page(invoice)) for invoice in invoices[:2]}
    result["healthz"] = await load_rate(port, [["/healthz"]], settings.load_seconds)
    loaded = invoices[:2 + settings.first_loads]  # then the pages seen before, their QR cached
    result["html"] = await load_rate(port, [[page(i)] for i in loaded], settings.load_seconds)
    result["full"] = await load_rate(port, [[page(i), *assets] for i in loaded], settings.load_seconds)
    result.update(await _live(port, invoices, settings))
    return result


def client(quick: bool, cpus: set[int]) -> None:
    """Started with the server, so that its start-up overlaps the server's: the server's greeting (port,
    invoices) comes on stdin; the figures go to stdout as one JSON object."""
    os.sched_setaffinity(0, cpus)
    _more_files()
    sys.path.insert(0, str(REPO_ROOT))
    import watcherd.http.checkout  # noqa: F401  (the import takes a while: done before the server is ready)

    hello = json.loads(sys.stdin.readline())
    print(json.dumps(asyncio.run(_client(hello["port"], hello["invoices"], QUICK if quick else FULL))), flush=True)


# --- the section (in the bench's process) -----------------------------------------------------------------


def _cpus() -> tuple[int, set[int]]:
    """The server's core, and the client's: the others when there are others."""
    mine = sorted(os.sched_getaffinity(0))
    return mine[0], set(mine[1:]) or set(mine)


@contextlib.contextmanager
def _server(pages: int, cpu: int) -> Iterator[str]:
    """The server's greeting (one JSON line: port, invoices), while it runs."""
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(pages), str(cpu)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        if not line:
            raise RuntimeError("the page bench's server did not start")
        yield line
    finally:
        assert server.stdin is not None
        server.stdin.close()  # it stops at EOF
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def measure(quick: bool) -> tuple[dict[str, Any], float, int, set[int]]:
    settings = QUICK if quick else FULL
    server_cpu, client_cpus = _cpus()
    started = time.perf_counter()
    client = subprocess.Popen(
        [sys.executable, __file__, "--client", "quick" if quick else "full", ",".join(map(str, sorted(client_cpus)))],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    try:
        with _server(settings.pages, server_cpu) as hello:
            setup = time.perf_counter() - started
            out, err = client.communicate(hello, timeout=300)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    if client.returncode != 0:
        raise RuntimeError(f"the page bench's client failed:\n{out}{err}")
    return json.loads(out), setup, server_cpu, client_cpus


def percentiles(samples: list[float]) -> tuple[float, float, float]:
    """p50, p99, max of seconds, in ms (nearest rank)."""
    ordered = sorted(samples)

    def rank(q: float) -> float:
        return ordered[max(0, -(-int(q * len(ordered) * 1000) // 1000) - 1)] * 1000

    return rank(0.50), rank(0.99), ordered[-1] * 1000


def section(quick: bool, figure: Any) -> tuple[list[tuple[str, bool]], list[str]]:
    settings = QUICK if quick else FULL
    r, setup, server_cpu, client_cpus = measure(quick)
    broken: list[str] = []
    pages = settings.pages
    btc, xmr = r["bytes"]["btc"], r["bytes"]["xmr"]
    heaviest = max(btc["total"], xmr["total"])
    external = btc["external"] + xmr["external"]
    if not (btc["qr_inline"] and xmr["qr_inline"]) or set(btc["parts"]) != {"html", "css", "js"}:
        broken.append(f"page load: expected the HTML with an inline QR, its CSS and JS, got {sorted(btc['parts'])}")
    if "default-src 'none'" not in btc["csp"]:
        broken.append(f"page load: no strict Content-Security-Policy ({btc['csp']!r})")
    if r["prepaid"] != pages or r["open"] != pages:
        broken.append(f"live: {r['prepaid']} of {pages} invoices prepaid, {r['open']} of {pages} pages open")
    if r["change_missing"] or r["changes"] != settings.changes:
        broken.append(f"live: {r['change_missing']} of {r['changes']} changes never reached their page")
    if r["block_watching"] != pages:
        broken.append(f"live: {r['block_watching']} pages watching at the block, {pages} were opened")
    if r["block_pages"] != pages:
        broken.append(f"live: the block's confirmations reached {r['block_pages']} of {pages} pages")

    def kb(n: int) -> str:
        return f"{n / 1000:.1f} kB"

    def rate(key: str) -> float:
        return float(r[key][0])

    figure("page bench setup", f"server on CPU {server_cpu}, client on CPU {','.join(map(str, sorted(client_cpus)))}; "
           f"{pages:,} invoices of 49.00 USD offered in BTC and XMR (BTC picked, XMR too on every other one), "
           f"built in {setup:.1f} s")
    for method, load in (("BTC", btc), ("XMR", xmr)):
        parts = ", ".join(f"{name.upper()} {kb(n)}" for name, n in load["parts"].items())
        figure(f"page full load bytes ({method} shown)",
               f"{kb(load['total'])} as transferred, headers included ({parts}; encoding: "
               f"{', '.join(load['encodings'])}; QR inline)")
    figure("page external requests", f"{len(external)} ({len(btc['refs']) + len(xmr['refs'])} URLs in the two pages "
           "and their CSS/JS, all same-origin, data: or wallet links; CSP default-src 'none')"
           + (f": {'; '.join(external)}" if external else ""))
    figure("page loads baseline: GET /healthz", f"{rate('healthz'):,.0f} req/s (server + client ceiling)")
    figure("page loads, HTML only (assets cached)", f"{rate('html'):,.0f} loads/s")
    figure("page loads, full (HTML + CSS + JS)", f"{rate('full'):,.0f} loads/s")
    figure("page loads, first load of each page (its QR built)",
           f"{rate('cold'):,.0f} loads/s ({r['cold'][1]:,} pages)")
    p50, p99, top = percentiles(r["change_latencies"])
    figure(f"live: change committed -> message received, {r['open']:,} pages open",
           f"p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {top:.2f} ms ({len(r['change_latencies'])} changes)")
    b50, b99, last = percentiles(r["block_latencies"]) if r["block_latencies"] else (0.0, 0.0, 0.0)
    figure(f"live: block committed -> message received, on each of the {pages:,} pages (touch_chain)",
           f"first {min(r['block_latencies'], default=0) * 1000:.1f} ms, p50 {b50:.0f} ms, p99 {b99:.0f} ms, "
           f"all {r['block_pages']:,} pages {last:.0f} ms (the block's own commit, reassessing every invoice: "
           f"{r['block_commit'] * 1000:.0f} ms)")
    targets = [
        (f"page loads >= {TARGET_LOADS_PER_S} /s on one core (HTML + CSS + JS)", rate("full") >= TARGET_LOADS_PER_S),
        (f"page full load <= {TARGET_PAGE_BYTES // 1000} kB", heaviest <= TARGET_PAGE_BYTES),
        ("page makes zero external requests", not external),
        (f"live change -> page p99 <= {TARGET_LIVE_P99_MS:.0f} ms with {pages:,} pages open",
         p99 <= TARGET_LIVE_P99_MS),
        (f"live block changing all {pages:,} pages -> every page <= {TARGET_BLOCK_ALL_MS:.0f} ms",
         bool(r["block_latencies"]) and last <= TARGET_BLOCK_ALL_MS),
    ]
    return targets, broken


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(int(sys.argv[2]), int(sys.argv[3]))
    elif sys.argv[1:2] == ["--client"]:
        client(sys.argv[2] == "quick", {int(c) for c in sys.argv[3].split(",")})
    else:
        from bench_alone import run_alone  # scripts/ is sys.path[0]

        sys.exit(run_alone(section))
