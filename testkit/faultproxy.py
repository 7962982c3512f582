"""A proxy between watcherd and a node that misbehaves on purpose, like a busy or flaky real node.

HTTP (bitcoind, monerod): a share of requests is answered with one of the faults a node produces under load
instead of being forwarded: `HTTP 503 Work queue depth exceeded`, a JSON-RPC `-28 Loading block index`, a
connection reset, or a stall before forwarding. Websocket (anvil): messages are relayed both ways, and the
connection is cut right after a block-reading request went up (mid-block), a share of the time.

Garbage (`faults=GARBAGE_FAULTS`, with `share=1.0`: a node answering garbage forever): HTTP 200 with a body
that is not JSON, JSON-RPC without `result` (nor `error`), or a `result` of the wrong type for the method (a
`getblockcount` answering a string). `enabled = False` heals the node: every call is forwarded again.

Runs its own event loop in a thread, so synchronous tests drive it like a node.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
from collections import Counter
from typing import Any

import aiohttp
from aiohttp import web

HTTP_FAULTS = ("503", "warmup", "reset", "stall")
GARBAGE_FAULTS = ("notjson", "noresult", "wrongtype")
# a result of the wrong type for what each bitcoind method answers (anything else: a number where a string or
# an object was due); getbestblockhash names a block that does not exist instead, so that a follower goes on
# to its next call (getblockcount) and meets a wrongly typed answer there
WRONG_RESULTS: dict[str, Any] = {
    "getblockcount": "many blocks",
    "getbestblockhash": "f" * 64,
    "getblockhash": ["not", "a", "hash"],
    "getblock": {"hex": None},
    "getblockheader": "no header",
    "getrawmempool": 7,
    "getrawtransaction": ["raw"],
    "getblockchaininfo": "regtest",
    "getnetworkinfo": [],
}
BLOCK_READS = ("eth_getBlockByHash", "eth_getBlockByNumber", "eth_getLogs", "eth_getBalance")


class FaultProxy:
    def __init__(self, upstream: str, *, share: float = 0.2, faults: tuple[str, ...] = HTTP_FAULTS,
                 stall_seconds: float = 2.5, seed: int = 1, websocket: bool = False, in_turn: bool = False,
                 methods: tuple[str, ...] | None = None):
        """`in_turn`: the faults are injected one after the other, so a short run meets each of them (else one
        chosen at random each time); `methods`: only calls of these JSON-RPC methods meet faults (HTTP)."""
        self.upstream = upstream.rstrip("/")
        self.share, self.faults, self.stall_seconds, self.websocket = share, faults, stall_seconds, websocket
        self.in_turn, self.methods = in_turn, methods
        self.random = random.Random(seed)
        self.injected: Counter[str] = Counter()
        self.forwarded = 0
        self.enabled = True
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fault-proxy", daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"{'ws' if self.websocket else 'http'}://127.0.0.1:{self.port}"

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fault proxy did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._websocket if self.websocket else self._http)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()
        await self._session.close()

    def _fault(self) -> str | None:
        if not self.enabled or self.random.random() >= self.share:
            return None
        if self.in_turn:
            fault = self.faults[sum(self.injected.values()) % len(self.faults)]
        else:
            fault = self.random.choice(self.faults)
        self.injected[fault] += 1
        return fault

    async def _http(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        fault = self._fault() if self.methods is None or _method(body) in self.methods else None
        if fault == "503":
            return web.Response(status=503, text="Work queue depth exceeded")
        if fault == "warmup":
            request_id = _request_id(body)
            return web.json_response({"result": None, "id": request_id,
                                      "error": {"code": -28, "message": "Loading block index..."}}, status=500)
        if fault == "reset":
            assert request.transport is not None
            request.transport.abort()  # the client sees the connection reset mid-request
            return web.Response(status=500)
        if fault == "stall":
            await asyncio.sleep(self.stall_seconds)
        elif fault in GARBAGE_FAULTS:
            return _garbage(fault, body)
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type")}
        async with self._session.request(request.method, self.upstream + request.path_qs, data=body,
                                         headers=headers) as upstream:
            answer = await upstream.read()
            self.forwarded += 1
            return web.Response(status=upstream.status, body=answer,
                                content_type=upstream.content_type or "application/json")

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        client = web.WebSocketResponse(max_msg_size=256 * 1024 * 1024)
        await client.prepare(request)
        async with self._session.ws_connect(self.upstream, max_msg_size=256 * 1024 * 1024) as node:
            async def down() -> None:
                async for message in node:
                    await client.send_str(message.data)

            relay = asyncio.create_task(down())
            try:
                async for message in client:
                    if message.type != aiohttp.WSMsgType.TEXT:
                        continue
                    await node.send_str(message.data)
                    self.forwarded += 1
                    if any(method in message.data for method in BLOCK_READS) and self._fault():
                        break  # cut right after a block read went up: the answer never arrives
            finally:
                relay.cancel()
        await client.close()
        return client


def _garbage(fault: str, body: bytes) -> web.Response:
    """An HTTP 200 a node answering garbage sends: not JSON, JSON-RPC without a result, or wrongly typed
    results (a batch gets one wrongly typed answer per call)."""
    if fault == "notjson":
        return web.Response(status=200, text="<html><body>upstream garbage \x00\xff</body></html>",
                            content_type="text/html")
    if fault == "noresult":
        return web.json_response({"id": _request_id(body), "jsonrpc": "2.0", "status": "ok"})
    try:
        decoded = json.loads(body)
    except ValueError:
        decoded = None
    calls = decoded if isinstance(decoded, list) else [decoded]
    answers = [{"result": WRONG_RESULTS.get(c.get("method"), 12345) if isinstance(c, dict) else 12345,
                "error": None, "id": c.get("id") if isinstance(c, dict) else None} for c in calls]
    return web.json_response(answers if isinstance(decoded, list) else answers[0])


def _method(body: bytes) -> Any:
    try:
        decoded = json.loads(body)
    except ValueError:
        return None
    return decoded.get("method") if isinstance(decoded, dict) else None


def _request_id(body: bytes) -> Any:
    try:
        decoded = json.loads(body)
    except ValueError:
        return None
    return decoded.get("id") if isinstance(decoded, dict) else None
