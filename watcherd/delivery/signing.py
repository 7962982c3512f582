"""The webhook signature: what the sender puts in `Watcherd-Signature` and how a receiver checks it.

`verify` ships beside `sign` so the README's recipe, the tests and the demo's receiver share one definition.
"""

from __future__ import annotations

import hashlib
import hmac
import time


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The `Watcherd-Signature` header value: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: str, header: str, body: bytes, tolerance: int = 300, now: float | None = None) -> bool:
    """The receiver's side of `sign` (documented in the README), used by the tests and the demo."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs((now if now is not None else time.time()) - timestamp) > tolerance:
        return False
    expected = sign(secret, timestamp, body).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))
