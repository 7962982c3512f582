"""What every node's JSON-RPC client shares: one POST with JSON numbers parsed as Decimal (never float), and
the reading of a JSON-RPC answer into its result or a NodeError."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import aiohttp

from watcherd.exceptions import NodeProtocolError, NodeUnavailable


class RpcError(NodeProtocolError):
    """The node answered with a JSON-RPC error object."""

    def __init__(self, method: str, code: int, message: str):
        self.code = code
        super().__init__(f"{method}: RPC error {code}: {message}")


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
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise NodeUnavailable(f"{what}: {url} unreachable: {type(exc).__name__}: {exc}") from exc
    try:
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
