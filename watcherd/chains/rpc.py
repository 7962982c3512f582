"""What every node's JSON-RPC client shares: one POST with JSON numbers parsed as Decimal (never float), and
the reading of a JSON-RPC answer into its result or a NodeError."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from decimal import Decimal
from typing import Any, TypeVar

import aiohttp

from watcherd.exceptions import NodeError, NodeProtocolError, NodeUnavailable
from watcherd.logs import redact_url, scrub
from watcherd.retry import backoff

T = TypeVar("T")
log = logging.getLogger("watcherd.chains.rpc")

# Answers that say "busy, ask again" rather than "no": bitcoind's -28 (RPC_IN_WARMUP: loading the block index,
# verifying blocks) and monerod's -9 (CORE_RPC_ERROR_CODE_CORE_BUSY).
TRANSIENT_RPC_CODES = frozenset({-28, -9})
BUSY_BODY_SNIPPET = 80
LARGE_ANSWER_BYTES = 256 * 1024
# A call failing this long is told to the chain's follower (chains/follow.py sets STALLED), so that a wrong port
# or a stopped node is in the log within seconds, not only once the chain counts as down (node_down_after_seconds).
NOTICE_AFTER_SECONDS = 3.0
# (the error, the seconds left before the call gives up), or (None, 0) when the call then succeeds
STALLED: ContextVar[Callable[[NodeError | None, float], None] | None] = ContextVar("watcherd_stalled", default=None)


class RpcError(NodeProtocolError):
    """The node answered with a JSON-RPC error object."""

    def __init__(self, method: str, code: int, message: str):
        self.code = code
        super().__init__(f"{method}: RPC error {code}: {message}")


class NodeBusy(NodeUnavailable):
    """The node is up but refused the call for now (HTTP 503 "Work queue depth exceeded", warming up)."""


def is_transient(exc: NodeError) -> bool:
    """An error that the same call may not meet again in a moment: the node unreachable or busy."""
    return isinstance(exc, NodeUnavailable) or (isinstance(exc, RpcError) and exc.code in TRANSIENT_RPC_CODES)


async def retrying(call: Callable[[], Awaitable[T]], what: str, give_up_after: float) -> T:
    """Run one node call, again after a transient error, with a short capped backoff, for at most
    `give_up_after` seconds; then (or on any other error) the error propagates: the node counts as down.

    A single 503 or reset connection on a busy node must cost a fraction of a second, not a reconnect."""
    started = time.monotonic()
    delays = backoff(first=0.05, cap=2.0)
    stalled = STALLED.get()
    noticed = False
    while True:
        try:
            answer = await call()
        except NodeError as exc:
            delay = next(delays)
            failing = time.monotonic() - started
            if not is_transient(exc) or failing + delay > give_up_after:
                raise
            if stalled is not None and not noticed and failing >= NOTICE_AFTER_SECONDS:
                noticed = True
                stalled(exc, give_up_after - failing)
            log.debug("%s: %s; retrying in %.2f s", what, exc, delay)
            await asyncio.sleep(delay)
        else:
            if noticed and stalled is not None:
                stalled(None, 0)
            return answer


async def post_json(
    session: aiohttp.ClientSession, url: str, payload: Any, what: str, headers: dict[str, str] | None = None
) -> Any:
    """POST a JSON request to a node and decode its JSON answer (numbers as Decimal, never float).
    NodeUnavailable when the node cannot be reached; NodeProtocolError for refused credentials or an answer
    that is not JSON."""
    try:
        async with session.post(url, data=json.dumps(payload), headers=headers) as response:
            body = await response.read()
            if response.status in (401, 403):
                raise NodeProtocolError(f"{what}: the node refused our RPC credentials (HTTP {response.status})")
            if response.status == 503:
                snippet = body[:BUSY_BODY_SNIPPET].decode(errors="replace").strip()
                raise NodeBusy(f"{what}: the node is busy (HTTP 503: {snippet!r})")
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise NodeUnavailable(f"{what}: {redact_url(url)} unreachable: {type(exc).__name__}: {scrub(str(exc), url)}"
                              ) from exc
    try:
        if len(body) > LARGE_ANSWER_BYTES:  # a whole block: decode it off the event loop
            return await asyncio.to_thread(json.loads, body, parse_float=Decimal)
        return json.loads(body, parse_float=Decimal)
    except ValueError as exc:
        snippet = body[:80].decode(errors="replace")
        raise NodeProtocolError(f"{what}: not a JSON answer (HTTP {response.status}): {snippet!r}") from exc


def result(method: str, answer: Any) -> Any:
    """The `result` of one JSON-RPC answer; its error as RpcError, a malformed answer as NodeProtocolError."""
    if not isinstance(answer, dict) or "result" not in answer and "error" not in answer:
        raise NodeProtocolError(f"{method}: malformed JSON-RPC answer: {str(answer)[:80]!r}")
    error = answer.get("error")
    if error:
        if isinstance(error, dict):
            raise RpcError(method, int(error.get("code", 0)), str(error.get("message", "")))
        raise NodeProtocolError(f"{method}: malformed RPC error: {str(error)[:80]!r}")
    return answer["result"]
