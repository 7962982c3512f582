"""Monero output scanning with the view key: key derivation, view tags, the subaddress lookup, amount decoding and
the commitment check (on the primitives of crypto.py), and the daemon's transaction JSON parsed for it."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import gmpy2
from gmpy2 import mpz
from nacl import bindings as sodium
from nacl.exceptions import RuntimeError as SodiumError

from watcherd.chains.monero.crypto import (
    H_POINT,
    L,
    MoneroKeyError,
    _base,
    _sub,
    _x25519,
    hash_to_scalar,
    keccak256,
    read_varint,
    varint,
)


@dataclass(frozen=True, slots=True)
class TxOutput:
    key: bytes  # the one-time output public key P
    view_tag: int | None  # None before HF15 outputs
    encrypted_amount: bytes | None  # 8 bytes (compact ECDH); None: cleartext (`amount`)
    commitment: bytes | None
    amount: int  # cleartext amount of non-RingCT outputs, else 0


@dataclass(frozen=True, slots=True)
class ParsedTx:
    txid: str
    tx_public_keys: tuple[bytes, ...]
    additional_keys: tuple[bytes, ...]
    outputs: tuple[TxOutput, ...]
    key_images: tuple[bytes, ...]
    unlock_time: int
    coinbase: bool


@dataclass(frozen=True, slots=True)
class OwnedOutput:
    index: int
    key: bytes  # one-time output key P (the burning bug: count one P once)
    spend_key: bytes  # the subaddress D it pays (the watch key)
    amount: int
    commitment_ok: bool


def parse_extra(extra: bytes | list[int]) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    """(tx public keys, additional public keys) from tx_extra; unknown fields end the parse like monerod's."""
    data = bytes(extra)
    keys: list[bytes] = []
    additional: list[bytes] = []
    pos = 0
    while pos < len(data):
        tag = data[pos]
        pos += 1
        if tag == 0x00:  # padding: the rest is zeros
            break
        if tag == 0x01:
            if pos + 32 > len(data):
                break
            keys.append(data[pos:pos + 32])
            pos += 32
        elif tag == 0x02:  # nonce (payment id)
            size, pos = read_varint(data, pos)
            pos += size
        elif tag == 0x04:
            count, pos = read_varint(data, pos)
            if pos + 32 * count > len(data):
                break
            additional = [data[pos + 32 * i: pos + 32 * (i + 1)] for i in range(count)]
            pos += 32 * count
        elif tag == 0xDE:  # mysterious minergate
            size, pos = read_varint(data, pos)
            pos += size
        else:
            break
    return tuple(keys), tuple(additional)


def key_derivation(view_secret: bytes, tx_public_key: bytes) -> bytes | None:
    """8·a·R (cofactor cleared by three doublings, exactly as ge_mul8), or None for an unusable R."""
    try:
        p = sodium.crypto_scalarmult_ed25519_noclamp(view_secret, tx_public_key)
    except (SodiumError, ValueError, TypeError):
        return None
    for _ in range(3):
        p = sodium.crypto_core_ed25519_add(p, p)
    return p


P25519 = 2**255 - 19
_P, _ZERO, _ONE = mpz(P25519), mpz(0), mpz(1)
_Y_MASK = (1 << 255) - 1


def x25519_scalar(view_secret: bytes) -> bytes | None:
    """A scalar k that X25519's clamping leaves alone with k·R = ±8a·R for every R.

    X25519 clears the low 3 bits and sets bit 254: k = 8c with 2^251 <= c < 2^252 and c = ±a (mod L) fits,
    and the ± only flips the sign of x, which the caller tries both ways. A multiple of 8 also clears any
    torsion component of R, exactly like Monero's ge_mul8."""
    a = int.from_bytes(view_secret, "little")
    for c in (a, L - a):
        if 2**251 <= c < 2**252:
            return (8 * c).to_bytes(32, "little")
    return None  # a >= 2^252 (probability 2^-128): the slow path


def derivation_candidates(k: bytes, tx_public_key: bytes) -> tuple[bytes, bytes] | None:
    """The two compressed points ±8aR (the true key derivation is one of them), through X25519.

    libsodium's ed25519 scalar multiplication first proves R is in the prime-order subgroup, which costs a
    second scalar multiplication; the Montgomery ladder needs only R's y. The sign of x is lost on the way,
    so both signs come back: the view tag (1 keccak) tells which, a wrong one costs nothing but a hash."""
    p = _P  # mpz throughout: converting to and from Python ints costs as much as the arithmetic
    y = mpz.from_bytes(tx_public_key, "little") & _Y_MASK
    if y >= p or y == 1:
        return None
    q = _x25519(k, ((1 + y) * gmpy2.invert(1 - y, p) % p).to_bytes(32, "little"))
    if q is None:
        return None
    uq = mpz.from_bytes(q, "little")
    if uq == p - 1:
        return None
    encoded = ((uq - 1) * gmpy2.invert(uq + 1, p) % p).to_bytes(32, "little")
    return encoded, encoded[:31] + bytes([encoded[31] | 0x80])


def view_tag(derivation: bytes, index: int) -> int:
    return keccak256(b"view_tag" + derivation + varint(index))[0]


_D = -121665 * pow(121666, -1, P25519) % P25519  # the curve constant d of -x^2 + y^2 = 1 + d x^2 y^2
_D2 = 2 * _D % P25519
_SQRT_M1 = pow(2, (P25519 - 1) // 4, P25519)


def _decompress(point: bytes) -> tuple[int, int]:
    """(x, y) of a compressed ed25519 point, for the few points the tables are built from."""
    y = int.from_bytes(point, "little") & _Y_MASK
    x2 = (y * y - 1) * pow(_D * y * y + 1, -1, P25519) % P25519
    x = pow(x2, (P25519 + 3) // 8, P25519)
    if x * x % P25519 != x2:
        x = x * _SQRT_M1 % P25519
    if x & 1 != point[31] >> 7:
        x = P25519 - x
    return x, y


def _compress(x: int, y: int) -> bytes:
    return (y | (x & 1) << 255).to_bytes(32, "little")


_WINDOW = 8


@functools.cache
def _h_table() -> tuple[tuple[tuple[mpz, mpz, mpz], ...], ...]:
    """d·2^(8w)·H for each byte position w of a 64-bit amount and each byte value d, as (y - x, y + x, 2d·x·y):
    amount·H is then at most eight mixed additions, half the time of an X25519 ladder. 2,048 points, built
    once (~20 ms) when the first amount is checked."""
    p = mpz(P25519)
    table = []
    bx, by = (mpz(c) for c in _decompress(H_POINT))
    for _ in range(64 // _WINDOW):
        row, x, y = [(mpz(1), mpz(1), mpz(0))], mpz(0), mpz(1)  # d = 0: the identity, never used
        for _ in range(1, 1 << _WINDOW):
            # affine addition (x, y) + (bx, by) on -x^2 + y^2 = 1 + d x^2 y^2
            t = _D * x * bx * y * by % p
            x, y = (x * by + y * bx) * gmpy2.invert(1 + t, p) % p, (y * by + x * bx) * gmpy2.invert(1 - t, p) % p
            row.append(((y - x) % p, (y + x) % p, _D2 * x * y % p))
        table.append(tuple(row))
        for _ in range(_WINDOW):  # the next window's base: 2^8 times this one
            t = _D * bx * bx * by * by % p
            bx, by = 2 * bx * by * gmpy2.invert(1 + t, p) % p, (by * by + bx * bx) * gmpy2.invert(1 - t, p) % p
    return tuple(table)


def amount_h(amount: int) -> bytes:
    """amount·H compressed, for 0 <= amount < 2^64 (every decrypted amount is 8 bytes)."""
    p, table = _P, _h_table()
    X, Y, Z, T = _ZERO, _ONE, _ONE, _ZERO  # extended coordinates of the identity
    for w in range(64 // _WINDOW):
        digit = amount >> (_WINDOW * w) & 0xFF
        if digit:
            ymx, ypx, t2d = table[w][digit]
            a, b, c, d = (Y - X) * ymx % p, (Y + X) * ypx % p, T * t2d % p, 2 * Z
            e, f, g, h = b - a, d - c, d + c, b + a
            X, Y, Z, T = e * f % p, g * h % p, f * g % p, e * h % p
    inverse = gmpy2.invert(Z, p)
    return _compress(int(X * inverse % p), int(Y * inverse % p))


def commitment_ok(amount: int, mask: bytes, commitment: bytes) -> bool:
    """C == mask·G + amount·H: the amount the sender encrypted is the amount the chain enforces (its range
    proof binds C), so a forged amount never pays an invoice. Checked as C - mask·G == amount·H: libsodium's
    fixed-base multiplication for mask·G, a table of multiples of H for amount·H."""
    if not 0 <= amount < 2**64 or len(mask) != 32 or len(commitment) != 32:
        return False
    rest = _sub(commitment, _base(mask)) if any(mask) else commitment
    return rest is not None and rest == amount_h(amount)


class Scanner:
    """Finds the outputs of a transaction that pay one of `watched` subaddress spend keys."""

    def __init__(self, view_secret: bytes):
        self.view_secret = view_secret
        self._k = x25519_scalar(view_secret)

    def _derive(self, tx_public_key: bytes) -> tuple[bytes, ...]:
        if self._k is not None:
            return derivation_candidates(self._k, tx_public_key) or ()
        d = key_derivation(self.view_secret, tx_public_key)
        return () if d is None else (d,)

    def _derivations(self, tx: ParsedTx) -> tuple[bytes, ...]:
        if len(tx.tx_public_keys) == 1:
            return self._derive(tx.tx_public_keys[0])
        return tuple(d for r in tx.tx_public_keys for d in self._derive(r))

    def scan(self, tx: ParsedTx, watched: set[bytes] | frozenset[bytes]) -> list[OwnedOutput]:
        if not tx.outputs or not watched:
            return []
        derivations = self._derivations(tx)
        additional = tx.additional_keys if len(tx.additional_keys) == len(tx.outputs) else ()
        owned = []
        for i, out in enumerate(tx.outputs):
            index_bytes = varint(i)
            # an output to a subaddress is keyed on its additional key: try that one first
            candidates = self._derive(additional[i]) + derivations if additional else derivations
            for derivation in candidates:
                if out.view_tag is not None and keccak256(b"view_tag" + derivation + index_bytes)[0] != out.view_tag:
                    continue
                shared = hash_to_scalar(derivation + index_bytes)
                spend = _sub(out.key, _base(shared))
                if spend is None or spend not in watched:
                    continue
                if out.encrypted_amount is None:
                    amount, ok = out.amount, True
                else:
                    pad = int.from_bytes(keccak256(b"amount" + shared)[:8], "little")
                    amount = int.from_bytes(out.encrypted_amount, "little") ^ pad
                    mask = hash_to_scalar(b"commitment_mask" + shared)
                    ok = out.commitment is not None and commitment_ok(amount, mask, out.commitment)
                if amount > 0:  # ours, but a zero-value output is no payment
                    owned.append(OwnedOutput(i, out.key, spend, amount, ok))
                break
        return owned


def parse_tx_json(txid: str, tx: dict) -> ParsedTx:
    """A transaction as monerod's `get_transactions` (decode_as_json) shows it -> ParsedTx.

    Raises MoneroKeyError (or KeyError/TypeError/ValueError) on anything malformed."""
    vin = tx.get("vin") or []
    coinbase = any("gen" in i for i in vin)
    key_images = tuple(bytes.fromhex(i["key"]["k_image"]) for i in vin if "key" in i)
    rct = tx.get("rct_signatures") or {}
    rct_type = int(rct.get("type", 0))
    ecdh = rct.get("ecdhInfo") or []
    out_pk = rct.get("outPk") or []
    outputs = []
    for i, o in enumerate(tx.get("vout") or []):
        target = o["target"]
        if "tagged_key" in target:
            key, tag = bytes.fromhex(target["tagged_key"]["key"]), int(target["tagged_key"]["view_tag"], 16)
        else:
            key, tag = bytes.fromhex(target["key"]), None
        if len(key) != 32:
            raise MoneroKeyError(f"output {i}: key is not 32 bytes")
        if rct_type == 0 or coinbase:
            outputs.append(TxOutput(key, tag, None, None, int(o.get("amount", 0))))
        elif rct_type >= 4:  # compact ECDH amounts (Bulletproofs 2, CLSAG, Bulletproofs+)
            enc, commitment = bytes.fromhex(ecdh[i]["amount"])[:8], bytes.fromhex(out_pk[i])
            if len(enc) != 8 or len(commitment) != 32:
                raise MoneroKeyError(f"output {i}: malformed encrypted amount or commitment")
            outputs.append(TxOutput(key, tag, enc, commitment, 0))
        else:
            raise MoneroKeyError(f"RingCT type {rct_type} (pre-2019) is not scanned")
    keys, additional = parse_extra(tx.get("extra") or [])
    return ParsedTx(txid, keys, additional, tuple(outputs), key_images, int(tx.get("unlock_time", 0)), coinbase)


