"""Monero view-key cryptography on libsodium (PyNaCl) and keccak (pycryptodome).

The pure-Python ed25519 of the `monero` package takes milliseconds per scalar multiplication; libsodium
takes ~0.1 ms, which is what makes scanning thousands of transactions per second on one core possible.

What is here: keccak, the ed25519 primitives, the Monero base58 address codec and subaddress derivation (view
key + public spend key). Output scanning, built on them, is in scan.py.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from Crypto.Hash import keccak as _keccak_module
from Crypto.Util import _raw_api
from nacl import bindings as sodium
from nacl._sodium import ffi as _ffi
from nacl._sodium import lib as _lib

L = 2**252 + 27742317777372353535851937790883648493  # the ed25519 group order
# H, the second Pedersen generator (rctTypes.h): amount * H in every commitment.
H_POINT = bytes.fromhex("8b655970153799af2aeadc9ff1add0ea6c7251d54154cfa92c173a0dd39c1f94")
IDENTITY = bytes([1]) + bytes(31)


class MoneroKeyError(ValueError):
    """A key or address that is not valid Monero material."""


# pycryptodome's private C bindings: its stubs don't declare them, hence the typed-as-Any aliases.
_raw_keccak_lib: Any = getattr(_keccak_module, "_raw_keccak_lib")  # noqa: B009
VoidPointer: Any = _raw_api.VoidPointer
c_size_t: Any = _raw_api.c_size_t
c_ubyte: Any = getattr(_raw_api, "c_ubyte")  # noqa: B009
create_string_buffer: Any = _raw_api.create_string_buffer
get_raw_buffer: Any = _raw_api.get_raw_buffer


class _Keccak(threading.local):
    """One reusable keccak-256 state per thread, driven through pycryptodome's C functions directly: its
    Python wrapper costs ~4x the hash itself for 40-byte inputs, and scanning hashes several per output."""

    def __init__(self) -> None:
        self.state = VoidPointer()
        if _raw_keccak_lib.keccak_init(self.state.address_of(), c_size_t(64), c_ubyte(24)):
            raise RuntimeError("keccak_init failed")
        self.handle = self.state.get()
        self.out = create_string_buffer(32)


_KECCAK = _Keccak()


_reset, _absorb, _digest = (_raw_keccak_lib.keccak_reset, _raw_keccak_lib.keccak_absorb,
                            _raw_keccak_lib.keccak_digest)  # bound once: each lookup costs as much as a call


def keccak256(data: bytes) -> bytes:
    k = _KECCAK
    _reset(k.handle)
    _absorb(k.handle, data, len(data))
    _digest(k.handle, k.out, 32, 1)  # padding 0x01: original Keccak, not SHA-3
    return get_raw_buffer(k.out)


def sc_reduce32(data: bytes) -> bytes:
    return (int.from_bytes(data, "little") % L).to_bytes(32, "little")


def hash_to_scalar(data: bytes) -> bytes:
    return sc_reduce32(keccak256(data))


def varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def read_varint(data: bytes | list[int], pos: int) -> tuple[int, int]:
    n, shift = 0, 0
    while True:
        if pos >= len(data) or shift > 63:
            raise MoneroKeyError("truncated varint")
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n, pos
        shift += 7


# The scanning hot path calls libsodium through cffi directly, skipping PyNaCl's per-call length and type
# checks (several microseconds each, on calls of 15-50 us). Callers guarantee 32-byte inputs: parse_tx_json
# checks every key, commitment and tx public key it hands on.


def _base(scalar: bytes) -> bytes:
    out = _ffi.new("unsigned char[32]")
    if _lib.crypto_scalarmult_ed25519_base_noclamp(out, scalar) != 0:
        return IDENTITY  # the scalar is 0 mod L
    return _ffi.buffer(out)[:]


def _sub(p: bytes, q: bytes) -> bytes | None:
    out = _ffi.new("unsigned char[32]")
    if _lib.crypto_core_ed25519_sub(out, p, q) != 0:
        return None  # not valid points
    return _ffi.buffer(out)[:]


def _x25519(k: bytes, u: bytes) -> bytes | None:
    out = _ffi.new("unsigned char[32]")
    if _lib.crypto_scalarmult(out, k, u) != 0:
        return None  # a small-order input
    return _ffi.buffer(out)[:]


def scalar_base(scalar: bytes) -> bytes:
    """scalar·G; the identity for a zero scalar (libsodium refuses to return it)."""
    if len(scalar) != 32:
        raise MoneroKeyError("a scalar is 32 bytes")
    return _base(scalar)


def is_canonical_scalar(key: bytes) -> bool:
    return len(key) == 32 and int.from_bytes(key, "little") < L


def public_key(secret: bytes) -> bytes:
    if not is_canonical_scalar(secret):
        raise MoneroKeyError("not a reduced ed25519 scalar")
    return scalar_base(secret)


# --- addresses -----------------------------------------------------------------------------------------

_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58)}
_FULL_BLOCK, _FULL_ENCODED = 8, 11
_ENCODED_SIZES = [0, 2, 3, 5, 6, 7, 9, 10, 11]

# network -> (standard, integrated, subaddress) prefixes; regtest uses mainnet's.
PREFIXES = {"mainnet": (18, 19, 42), "testnet": (53, 54, 63), "stagenet": (24, 25, 36)}
_KINDS = ("standard", "integrated", "subaddress")


def b58encode(data: bytes) -> str:
    out = []
    for start in range(0, len(data), _FULL_BLOCK):
        block = data[start:start + _FULL_BLOCK]
        n, size = int.from_bytes(block, "big"), _ENCODED_SIZES[len(block)]
        chars = []
        for _ in range(size):
            n, r = divmod(n, 58)
            chars.append(_B58[r])
        out.append("".join(reversed(chars)))
    return "".join(out)


def b58decode(text: str) -> bytes:
    out = bytearray()
    for start in range(0, len(text), _FULL_ENCODED):
        block = text[start:start + _FULL_ENCODED]
        if len(block) not in _ENCODED_SIZES:
            raise MoneroKeyError("invalid base58 length")
        size = _ENCODED_SIZES.index(len(block))
        n = 0
        for c in block:
            if c not in _B58_INDEX:
                raise MoneroKeyError(f"invalid base58 character {c!r}")
            n = n * 58 + _B58_INDEX[c]
        if n >= 1 << (8 * size):
            raise MoneroKeyError("base58 block overflow")
        out += n.to_bytes(size, "big")
    return bytes(out)


@dataclass(frozen=True)
class Address:
    network: str
    kind: str  # standard | integrated | subaddress
    spend_public: bytes
    view_public: bytes


def encode_address(prefix: int, spend_public: bytes, view_public: bytes) -> str:
    body = varint(prefix) + spend_public + view_public
    return b58encode(body + keccak256(body)[:4])


def decode_address(text: str) -> Address:
    raw = b58decode(text)
    if len(raw) < 69:
        raise MoneroKeyError("too short for a Monero address")
    body, checksum = raw[:-4], raw[-4:]
    if keccak256(body)[:4] != checksum:
        raise MoneroKeyError("bad checksum")
    prefix, pos = read_varint(body, 0)
    known = {p: (net, kind) for net, ps in PREFIXES.items() for p, kind in zip(ps, _KINDS, strict=True)}
    if prefix not in known:
        raise MoneroKeyError(f"unknown network prefix {prefix}")
    network, kind = known[prefix]
    keys = body[pos:]
    if len(keys) != (72 if kind == "integrated" else 64):
        raise MoneroKeyError("wrong length for its kind")
    spend, view = keys[:32], keys[32:64]
    for key in (spend, view):
        if not sodium.crypto_core_ed25519_is_valid_point(key):
            raise MoneroKeyError("holds a key that is not a valid curve point")
    return Address(network, kind, spend, view)


class SubaddressDeriver:
    """Subaddress (account, index) from the private view key a and the public spend key B:
    m = Hs("SubAddr\\0" ‖ a ‖ account ‖ index), D = B + m·G, C = a·D. (0, 0) is the primary address."""

    def __init__(self, view_secret: bytes, spend_public: bytes, network: str):
        self.view_secret = view_secret
        self.spend_public = spend_public
        self.network = network

    def spend_key(self, account: int, index: int) -> bytes:
        if account == 0 and index == 0:
            return self.spend_public
        m = hash_to_scalar(b"SubAddr\x00" + self.view_secret + account.to_bytes(4, "little")
                           + index.to_bytes(4, "little"))
        return sodium.crypto_core_ed25519_add(self.spend_public, scalar_base(m))

    def address(self, account: int, index: int) -> tuple[str, bytes]:
        """(address text, D) of the subaddress."""
        standard, _, sub = PREFIXES[self.network]
        d = self.spend_key(account, index)
        if account == 0 and index == 0:
            return encode_address(standard, d, scalar_base(self.view_secret)), d
        c = sodium.crypto_scalarmult_ed25519_noclamp(self.view_secret, d)
        return encode_address(sub, d, c), d


class MoneroDeriver:
    """Invoice derivation index i -> subaddress (account, i + 1): index 0 of an account is its main address,
    which the operator's wallet also uses for other things, so invoices never get it."""

    def __init__(self, view_secret: bytes, spend_public: bytes, network: str, account: int):
        self.subaddresses = SubaddressDeriver(view_secret, spend_public, network)
        self.account = account

    def subaddress_index(self, index: int) -> tuple[int, int]:
        return self.account, index + 1

    def derive(self, index: int) -> tuple[str, bytes]:
        return self.subaddresses.address(*self.subaddress_index(index))
