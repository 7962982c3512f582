"""Async JSON-RPC client for bitcoind-family nodes.

Replaces python-bitcoinrpc's AuthServiceProxy, which is blocking (it would stall the event loop for a whole
block download). Like it, JSON numbers are parsed as Decimal, never float.
"""

from __future__ import annotations

import base64
import itertools
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp

from ..exceptions import NodeProtocolError, NodeUnavailable


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


class JsonRpc:
    def __init__(
        self, url: str, user: str | None = None, password: str | None = None,
        cookie_file: Path | None = None, timeout: float = 60.0,
    ):
        self.url = url
        self._user, self._password, self._cookie_file = user, password, cookie_file
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._ids = itertools.count(1)
        self._session: aiohttp.ClientSession | None = None

    def _auth_header(self) -> str:
        if self._cookie_file is not None:
            # bitcoind rewrites the cookie at every start: read it per request, never cache it
            try:
                credentials = self._cookie_file.read_text().strip()
            except OSError as exc:
                raise NodeUnavailable(f"cannot read RPC cookie {self._cookie_file}: {exc}") from exc
        else:
            credentials = f"{self._user or ''}:{self._password or ''}"
        return "Basic " + base64.b64encode(credentials.encode()).decode()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _post(self, payload: Any, what: str) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        headers = {"Authorization": self._auth_header(), "Content-Type": "application/json"}
        return await post_json(self._session, self.url, payload, what, headers)

    async def call(self, method: str, *params: Any) -> Any:
        answer = await self._post({"jsonrpc": "1.0", "id": next(self._ids), "method": method, "params": params},
                                  method)
        return result(method, answer)

    async def batch(self, method: str, param_lists: list[tuple[Any, ...]]) -> list[Any]:
        """One HTTP round trip for many calls of `method`; results in the order of `param_lists`."""
        if not param_lists:
            return []
        first = next(self._ids)
        payload = [
            {"jsonrpc": "1.0", "id": first + i, "method": method, "params": list(params)}
            for i, params in enumerate(param_lists)
        ]
        self._ids = itertools.count(first + len(param_lists))
        answers = await self._post(payload, f"{method} (batch of {len(param_lists)})")
        if not isinstance(answers, list):
            return [result(method, answers)]  # a node rejecting the whole batch answers one error object
        by_id = {a.get("id"): a for a in answers if isinstance(a, dict)}
        return [result(method, by_id.get(first + i)) for i in range(len(param_lists))]


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
