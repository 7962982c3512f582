"""JSON over HTTP to the test nodes: one POST, one JSON-RPC call, one error type, for every node kind.

bitcoind, litecoind, anvil, monerod and monero-wallet-rpc differ only in the envelope (JSON-RPC 1.0 or 2.0,
positional or named params) and in how they fail, so the callers pass those in; failures of every kind come
out as `NodeRPCError`.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from decimal import Decimal
from typing import Any


class NodeRPCError(RuntimeError):
    """The node answered a JSON-RPC call with an error (or could not be reached)."""

    def __init__(self, method: str, code: int | None, message: str):
        self.method = method
        self.code = code
        super().__init__(f"{method}: {message}" + (f" (code {code})" if code is not None else ""))


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        # What Bitcoin Core's own test framework does: amounts have at most 8 decimals, and float's shortest
        # repr of such a value reads back as exactly that decimal text on the node's side.
        return float(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def post_json(url: str, payload: Any, *, method: str, timeout: float, headers: dict[str, str] | None = None,
              parse_float: Callable[[str], Any] | None = None) -> Any:
    """POST `payload` as JSON to `url`; the decoded reply. An HTTP error whose body is JSON is a reply too
    (bitcoind sends RPC errors as HTTP 500/404 with the error in the body); anything else raises NodeRPCError
    naming `method`. Decimal amounts are sent as JSON numbers."""
    body = json.dumps(payload, default=_json_default).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            raw = exc.read()
        try:
            return json.loads(raw, parse_float=parse_float)
        except ValueError:
            detail = raw[:200].decode(errors="replace")
            raise NodeRPCError(method, exc.code, f"HTTP {exc.code} {exc.reason} {detail}".rstrip()) from None
    except (OSError, urllib.error.URLError) as exc:
        raise NodeRPCError(method, None, f"cannot reach {url}: {exc}") from None
    try:
        return json.loads(raw, parse_float=parse_float)
    except ValueError:
        raise NodeRPCError(method, None, f"unparseable reply {raw[:200]!r}") from None


def call_jsonrpc(url: str, method: str, params: list[Any] | dict[str, Any], *, timeout: float = 120,
                 version: str = "2.0", headers: dict[str, str] | None = None,
                 parse_float: Callable[[str], Any] | None = None) -> Any:
    """One JSON-RPC call; its `result`, or NodeRPCError with the node's error code and message."""
    payload = {"jsonrpc": version, "id": method, "method": method, "params": params}
    reply = post_json(url, payload, method=method, timeout=timeout, headers=headers, parse_float=parse_float)
    error = reply.get("error") if isinstance(reply, dict) else None
    if error:
        raise NodeRPCError(method, error.get("code"), error.get("message", str(error)))
    if not isinstance(reply, dict) or "result" not in reply:
        raise NodeRPCError(method, None, f"not a JSON-RPC reply: {str(reply)[:200]}")
    return reply["result"]
