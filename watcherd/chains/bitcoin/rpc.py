"""Async JSON-RPC client for bitcoind-family nodes.

Replaces python-bitcoinrpc's AuthServiceProxy, which is blocking (it would stall the event loop for a whole
block download). Like it, JSON numbers are parsed as Decimal, never float.
"""

from __future__ import annotations

import base64
import itertools
from pathlib import Path
from typing import Any

import aiohttp

from watcherd.chains.rpc import RpcError, post_json, result, retrying
from watcherd.exceptions import NodeUnavailable


class JsonRpc:
    def __init__(
        self, url: str, user: str | None = None, password: str | None = None,
        cookie_file: Path | None = None, timeout: float = 60.0, give_up_after: float = 30.0,
    ):
        self.url = url
        self._user, self._password, self._cookie_file = user, password, cookie_file
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._ids = itertools.count(1)
        self._session: aiohttp.ClientSession | None = None
        self.give_up_after = give_up_after  # a transient error (503, -28, reset) is retried this long

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
        async def once() -> Any:
            answer = await self._post(
                {"jsonrpc": "1.0", "id": next(self._ids), "method": method, "params": params}, method)
            return result(method, answer)

        return await retrying(once, method, self.give_up_after)

    async def batch(self, method: str, param_lists: list[tuple[Any, ...]]) -> list[Any]:
        """One HTTP round trip for many calls of `method`; results in the order of `param_lists`, an item the
        node answered with an error as that RpcError (the caller decides: a tx that left the mempool meanwhile
        is no reason to fail the others)."""
        if not param_lists:
            return []

        async def once() -> list[Any]:
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
            return [_result_or_error(method, by_id.get(first + i)) for i in range(len(param_lists))]

        return await retrying(once, f"{method} (batch)", self.give_up_after)


def _result_or_error(method: str, answer: Any) -> Any:
    try:
        return result(method, answer)
    except RpcError as exc:
        return exc
