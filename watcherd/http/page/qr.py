"""Payment URIs as QR codes, rendered server-side as SVG by segno and cached (a QR costs 5-10 ms to build; a
page load must cost far less).

BIP21 alphanumeric trick, for BTC only: a bech32 address is case-insensitive, so `BITCOIN:BC1Q...` fits QR's
alphanumeric mode (5.5 bits a character instead of 8) and the code gets a size smaller and easier to scan; the
query (`?amount=0.015`) stays a byte-mode segment as given. Not for Litecoin: some wallets mishandle an
uppercase LTC address. EIP-681 and monero: URIs are encoded exactly as the invoice gives them.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from functools import lru_cache

import segno

BECH32_BTC_PREFIXES = ("bc1", "tb1", "bcrt1")


def qr_content(payment_uri: str, asset: str | None) -> list[str]:
    """The QR's segments: [payment_uri], or for a BTC bech32 address ["BITCOIN:<ADDRESS>", "?query"]."""
    scheme, colon, rest = payment_uri.partition(":")
    if asset != "BTC" or not colon or scheme.lower() != "bitcoin":
        return [payment_uri]
    address, question, query = rest.partition("?")
    if not address.lower().startswith(BECH32_BTC_PREFIXES) or not address.isalnum():
        return [payment_uri]
    upper = f"BITCOIN:{address.upper()}"
    return [upper, question + query] if question else [upper]


_CODES: OrderedDict[tuple[str, str | None], segno.QRCode] = OrderedDict()  # least recently used first
_CODES_KEPT = 4096
_CODES_LOCK = threading.Lock()  # codes are built in worker threads (`build`) and read on the event loop


def built(payment_uri: str, asset: str | None) -> bool:
    return (payment_uri, asset) in _CODES


def build(payment_uri: str, asset: str | None) -> segno.QRCode:
    """The code for a URI, from the cache or made (5-10 ms, 80% of it choosing the mask: the page handler
    calls this in a worker thread for a QR it has not built yet, so the event loop never stalls on it)."""
    key = (payment_uri, asset)
    with _CODES_LOCK:
        code = _CODES.get(key)
        if code is not None:
            _CODES.move_to_end(key)
            return code
    # a list is a sequence of segments (segno.encoder.prepare_data), each in the mode segno finds for it:
    # alphanumeric for the uppercased part, byte for the query; its type hints name only the single-segment form
    code = segno.make(qr_content(payment_uri, asset), error="m")  # type: ignore[arg-type]
    with _CODES_LOCK:
        _CODES[key] = code
        if len(_CODES) > _CODES_KEPT:
            _CODES.popitem(last=False)
    return code


@lru_cache(maxsize=4096)
def inline_svg(payment_uri: str, asset: str | None, label: str) -> str:
    """An <svg> for the page: dark modules on a white quiet zone (scanners need that, in dark mode too); sized
    by the stylesheet through its viewBox."""
    return build(payment_uri, asset).svg_inline(
        border=4, dark="#000", light="#fff", omitsize=True, svgclass="qr-code", lineclass=None, title=label,
    )


@lru_cache(maxsize=1024)
def svg_document(payment_uri: str, asset: str | None) -> bytes:
    """A standalone image/svg+xml document, for <img src> or a billing system's own page."""
    out = io.BytesIO()
    build(payment_uri, asset).save(out, kind="svg", scale=8, border=4, dark="#000", light="#fff",
                                   lineclass=None, svgclass=None, xmldecl=True)
    return out.getvalue()
