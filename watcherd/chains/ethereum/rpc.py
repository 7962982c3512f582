"""Websocket JSON-RPC for Ethereum nodes (geth, reth, nethermind, anvil): calls, batches and subscriptions on
one connection, without blocking the event loop (aiohttp's websocket client; no web3 import).

Requests and answers are matched by id; `eth_subscription` notifications go to a queue the adapter reads. When
the socket closes, every waiting call and the notification reader get NodeUnavailable, so the adapter's run
loop reconnects and catches up from its durable cursor.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from typing import Any

import aiohttp

from watcherd.chains.rpc import result
from watcherd.exceptions import NodeProtocolError, NodeUnavailable
from watcherd.logs import redact_url, scrub

_CLOSED = object()
MAX_QUEUED = 10_000  # a node flooding pending transactions faster than we read them costs memory up to here
# geth refuses batches of more than 1,000 calls (--rpc.batch-request-limit) with one id-less error; other
# nodes have similar limits. Larger batches are split, and the parts sent together.
MAX_BATCH = 500


class WsRpc:
    def __init__(self, url: str, timeout: float = 30.0):
        self.url = url
        self.timeout = timeout
        self.calls = 0  # requests sent (a batch counts once): what the benchmark's "RPC calls per block" counts
        self.malformed = 0
        # Notifications of these subscriptions may be dropped when the queue is full (pending transactions:
        # each one is found again in its block); a block notification never is.
        self.droppable: set[str] = set()
        self.dropped = 0
        self._ids = itertools.count(1)
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._notifications: asyncio.Queue[Any] = asyncio.Queue()

    async def connect(self) -> None:
        await self.close()
        self._session = aiohttp.ClientSession()
        try:
            self._ws = await self._session.ws_connect(self.url, timeout=aiohttp.ClientWSTimeout(ws_close=5),
                                                      heartbeat=20, max_msg_size=256 * 1024 * 1024)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            await self.close()
            raise NodeUnavailable(f"{redact_url(self.url)} unreachable: {type(exc).__name__}: "
                                  f"{scrub(str(exc), self.url)}") from exc
        self._notifications = asyncio.Queue()
        self._reader = asyncio.create_task(self._read(self._ws), name="eth-ws-reader")

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
            self._reader = None
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
            self._ws = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._fail_waiting()

    def _fail_waiting(self) -> None:
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(NodeUnavailable(f"{redact_url(self.url)}: websocket closed"))
        self._waiting.clear()

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for message in ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    decoded = json.loads(message.data)
                except ValueError:
                    self.malformed += 1
                    continue
                for answer in decoded if isinstance(decoded, list) else [decoded]:
                    self._dispatch(answer)
        finally:
            self._fail_waiting()
            self._notifications.put_nowait(_CLOSED)

    def _dispatch(self, answer: Any) -> None:
        if not isinstance(answer, dict):
            self.malformed += 1
            return
        if answer.get("method") == "eth_subscription":
            params = answer.get("params")
            if isinstance(params, dict) and "subscription" in params:
                if params["subscription"] in self.droppable and self._notifications.qsize() >= MAX_QUEUED:
                    self.dropped += 1
                    return
                self._notifications.put_nowait((params["subscription"], params.get("result")))
            else:
                self._notifications.put_nowait(None)  # counted by the adapter as malformed
            return
        if answer.get("id") is None and "error" in answer:
            # a request the node refused as a whole ("batch too large", a parse error): which one is unknown,
            # so every waiting call fails with the node's own words instead of waiting for the timeout
            problem = NodeProtocolError(f"{redact_url(self.url)} refused a request: {str(answer['error'])[:200]}")
            for waiting in self._waiting.values():
                if not waiting.done():
                    waiting.set_exception(problem)
            return
        request_id = answer.get("id")
        future = self._waiting.pop(request_id, None) if isinstance(request_id, int) else None
        if future is None or future.done():
            self.malformed += 1
            return
        future.set_result(answer)

    async def _send(self, payload: Any, ids: list[int]) -> list[Any]:
        if self._ws is None or self._ws.closed:
            raise NodeUnavailable(f"{redact_url(self.url)}: websocket not connected")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in ids]
        self._waiting.update(zip(ids, futures, strict=True))
        self.calls += 1
        try:
            await self._ws.send_str(json.dumps(payload))
            async with asyncio.timeout(self.timeout):
                return list(await asyncio.gather(*futures))
        except TimeoutError as exc:
            raise NodeUnavailable(f"{redact_url(self.url)}: no answer within {self.timeout:.0f} s") from exc
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise NodeUnavailable(f"{redact_url(self.url)}: {type(exc).__name__}: {scrub(str(exc), self.url)}") from exc
        finally:
            for i in ids:
                self._waiting.pop(i, None)

    async def call(self, method: str, *params: Any) -> Any:
        request_id = next(self._ids)
        (answer,) = await self._send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params},
                                     [request_id])
        return result(method, answer)

    async def batch(self, method: str, param_lists: list[tuple[Any, ...]]) -> list[Any]:
        """Many calls of `method` in one round trip (batches of MAX_BATCH, sent together); results in the
        order of `param_lists`."""
        chunks = [param_lists[i:i + MAX_BATCH] for i in range(0, len(param_lists), MAX_BATCH)]
        answers = await asyncio.gather(*(self._send_batch(method, chunk) for chunk in chunks))
        return [result(method, a) for chunk in answers for a in chunk]

    async def _send_batch(self, method: str, param_lists: list[tuple[Any, ...]]) -> list[Any]:
        ids = [next(self._ids) for _ in param_lists]
        payload = [{"jsonrpc": "2.0", "id": i, "method": method, "params": list(p)}
                   for i, p in zip(ids, param_lists, strict=True)]
        return await self._send(payload, ids)

    def queued(self, limit: int) -> list[Any]:
        """Up to `limit` notifications already waiting, without waiting for more (so pending transactions that
        arrived together are fetched in one batch)."""
        items: list[Any] = []
        while len(items) < limit and not self._notifications.empty():
            item = self._notifications.get_nowait()
            if item is _CLOSED:
                self._notifications.put_nowait(_CLOSED)
                break
            items.append(item)
        return items

    async def notification(self, timeout: float) -> tuple[str, Any] | None:  # noqa: ASYNC109
        """The next subscription notification; None after `timeout` seconds of quiet (or for a malformed one).
        NodeUnavailable once the socket is closed."""
        try:
            async with asyncio.timeout(timeout):
                item = await self._notifications.get()
        except TimeoutError:
            return None
        if item is _CLOSED:
            self._notifications.put_nowait(_CLOSED)
            raise NodeUnavailable(f"{redact_url(self.url)}: websocket closed")
        return item

