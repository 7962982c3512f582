"""monerod's RPC: its JSON-RPC (/json_rpc) and its plain JSON endpoints (/get_transactions ...)."""

from __future__ import annotations

from typing import Any

import aiohttp

from watcherd.chains.rpc import NodeBusy, RpcError, post_json, retrying
from watcherd.exceptions import NodeProtocolError

TX_BATCH = 100
TOO_BIG_HEIGHT = -2  # CORE_RPC_ERROR_CODE_TOO_BIG_HEIGHT: the only "no block at this height"


class MoneroRpc:
    """monerod's JSON-RPC (/json_rpc) and its plain JSON endpoints (/get_transactions ...)."""

    def __init__(self, url: str, user: str | None, password: str | None, timeout: float = 60.0,
                 give_up_after: float = 30.0):
        self.url = url.rstrip("/")
        self._auth = (user, password) if user is not None and password is not None else None
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self.give_up_after = give_up_after  # a transient error (busy, reset, timeout) is retried this long

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _post(self, path: str, payload: dict[str, Any], what: str) -> Any:
        if self._session is None:
            middlewares: tuple[aiohttp.DigestAuthMiddleware, ...] = ()
            if self._auth is not None:  # monerod --rpc-login uses HTTP digest authentication
                middlewares = (aiohttp.DigestAuthMiddleware(*self._auth),)
            self._session = aiohttp.ClientSession(timeout=self._timeout, middlewares=middlewares)
        answer = await post_json(self._session, f"{self.url}/{path}", payload, what)
        if not isinstance(answer, dict):
            raise NodeProtocolError(f"{what}: malformed answer: {str(answer)[:80]!r}")
        return answer

    async def call(self, method: str, **params: Any) -> Any:
        return await retrying(lambda: self._call_once(method, **params), method, self.give_up_after)

    async def _call_once(self, method: str, **params: Any) -> Any:
        answer = await self._post("json_rpc", {"jsonrpc": "2.0", "id": "0", "method": method, "params": params},
                                  method)
        error = answer.get("error")
        if error:
            if not isinstance(error, dict) or not isinstance(error.get("code"), int):
                raise NodeProtocolError(f"{method}: malformed RPC error: {str(error)[:80]!r}")
            raise RpcError(method, error["code"], str(error.get("message", "")))
        result = answer.get("result")
        if not isinstance(result, dict):
            raise NodeProtocolError(f"{method}: malformed JSON-RPC answer: {str(answer)[:80]!r}")
        return result

    async def other(self, path: str, **params: Any) -> Any:
        return await retrying(lambda: self._other_once(path, **params), path, self.give_up_after)

    async def _other_once(self, path: str, **params: Any) -> Any:
        answer = await self._post(path, params, path)
        if answer.get("status") == "BUSY":  # CORE_RPC_STATUS_BUSY: syncing, ask again
            raise NodeBusy(f"{path}: monerod is busy")
        if answer.get("status") != "OK":
            raise NodeProtocolError(f"{path}: status {str(answer.get('status'))[:80]!r}")
        return answer

    async def transactions(self, txids: list[str]) -> dict[str, str]:
        """txid -> the transaction's JSON text (decode_as_json), for those monerod knows (pool or chain), in
        batches. The text is parsed per transaction later (decode_tx), so that one bad tx fails alone. Pruned:
        scanning never reads the signatures, which are ~3/4 of a transaction."""
        found: dict[str, str] = {}
        for start in range(0, len(txids), TX_BATCH):
            chunk = txids[start:start + TX_BATCH]
            answer = await self.other("get_transactions", txs_hashes=chunk, decode_as_json=True, prune=True)
            for entry in answer.get("txs") or []:
                try:
                    found[str(entry["tx_hash"])] = str(entry["as_json"])
                except (KeyError, TypeError) as exc:
                    raise NodeProtocolError(f"get_transactions: malformed entry: {exc!r}") from exc
        return found
