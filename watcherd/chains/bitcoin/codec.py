"""Decode raw Bitcoin-family transactions and blocks, keeping only what a watcher needs.

A watcher does not validate: the node already did. It needs, per transaction, the txid, the outpoints it
spends (to notice double spends and replacements) and the outputs paying a watched scriptPubKey. So this
module walks the serialization once with an integer offset and builds nothing else; at a block's worth of
transactions per second, every avoided object shows.

Covered: legacy and segwit serializations (Bitcoin, Litecoin, and Bitcoin SV, which only has legacy), any
script (a script is just bytes here), coinbase inputs, and Litecoin's MWEB additions:

* a transaction flag bit 0x08 carries MWEB data after the witness. In a block it is the HogEx ("integrating
  transaction"), whose MWEB field is empty; in the mempool it can be a full MWEB transaction. Its canonical
  inputs and outputs are decoded like any others; the MWEB part is skipped, after checking its structure;
* a block ending in a HogEx is followed by the serialized MWEB extension block, also skipped;
* a transaction with no canonical inputs or outputs ("MWEB-only", seen in the mempool only) is named by its
  first kernel's ID, a BLAKE3 hash, not by a double SHA-256. It pays and spends nothing a watcher can see,
  but its txid is still the one the node reports.

Every malformed input raises DecodeError: truncation, trailing bytes, unknown flags, counts that cannot fit.
"""

import hashlib
from collections.abc import Container
from typing import NamedTuple

from watcherd.exceptions import DecodeError

__all__ = ["ScannedTx", "ScannedBlock", "scan_tx", "scan_block", "outpoint"]


class ScannedTx(NamedTuple):
    txid: str  # hex, RPC display order (byte-reversed double SHA-256 of the non-witness serialization)
    spent: list[bytes]  # 36-byte outpoints as serialized: prev txid (internal order) + vout (4 bytes LE)
    matches: list[tuple[int, int, bytes]]  # (vout index, satoshis, scriptPubKey) for watched outputs


class ScannedBlock(NamedTuple):
    hash: str  # hex, display order
    prev_hash: str  # hex, display order
    txs: list[ScannedTx]
    time: int  # the header's timestamp, unix seconds


# The smallest serialized input is an outpoint, an empty script and a sequence; the smallest output is a
# value and an empty script. Counts that could not fit in the remaining bytes are rejected up front, so a
# forged count can never make a loop run long.
_MIN_INPUT = 36 + 1 + 4
_MIN_OUTPUT = 8 + 1
_MIN_TX = 4 + 1 + 1 + 4
_HEADER_SIZE = 80

_FLAG_WITNESS = 0x01
_FLAG_MWEB = 0x08

_sha256 = hashlib.sha256
# NamedTuple's generated __new__ is a Python-level function; building the tuple directly skips it (~0.3 us
# of the ~5 us a typical transaction costs).
_new_tx = tuple.__new__


def outpoint(txid_hex: str, vout: int) -> bytes:
    """The 36-byte outpoint of output `vout` of the transaction `txid_hex` (display order), as in `spent`."""
    txid = bytes.fromhex(txid_hex)
    if len(txid) != 32:
        raise ValueError(f"a txid is 32 bytes, got {len(txid)}")
    return txid[::-1] + vout.to_bytes(4, "little")


def scan_tx(raw: bytes, watched: Container[bytes]) -> ScannedTx:
    """Decode one serialized transaction; `raw` must hold exactly one, nothing before or after."""
    if type(raw) is not bytes:
        raw = bytes(raw)
    try:
        tx, end = _scan(raw, 0, len(raw), watched)
    except IndexError:
        # Reading a byte past the end is the cheap way to find truncation in the hot loop.
        raise DecodeError("transaction is truncated") from None
    if end != len(raw):
        raise DecodeError(f"transaction ends at byte {end}, but {len(raw) - end} more bytes follow")
    return tx


def scan_block(raw: bytes, watched: Container[bytes]) -> ScannedBlock:
    """Decode one serialized block: the 80-byte header, a transaction count, the transactions, and (Litecoin
    after a HogEx) the MWEB extension block."""
    if type(raw) is not bytes:
        raw = bytes(raw)
    n = len(raw)
    if n < _HEADER_SIZE + 1:
        raise DecodeError(f"block of {n} bytes is shorter than a header and a transaction count")
    header = raw[:_HEADER_SIZE]
    block_hash = _sha256(_sha256(header).digest()).digest()[::-1].hex()
    prev_hash = header[4:36][::-1].hex()
    try:
        count, pos = _read_compact_size(raw, _HEADER_SIZE)
        if count * _MIN_TX > n - pos:
            raise DecodeError(f"block claims {count} transactions, more than {n - pos} bytes can hold")
        txs: list[ScannedTx] = []
        append = txs.append
        start = pos
        for _ in range(count):
            start = pos
            tx, pos = _scan(raw, pos, n, watched)
            append(tx)
        if pos != n:
            if not (count and _is_hogex(raw, start)):
                raise DecodeError(f"block has {n - pos} bytes after its last transaction")
            pos = _skip_mweb_block(raw, pos)
            if pos != n:
                raise DecodeError(f"block has {n - pos} bytes after its MWEB extension block")
    except IndexError:
        raise DecodeError("block is truncated") from None
    return ScannedBlock(block_hash, prev_hash, txs, int.from_bytes(header[68:72], "little"))


def _scan(raw: bytes, pos: int, n: int, watched: Container[bytes]) -> tuple[ScannedTx, int]:
    """Decode the transaction starting at `pos` of `raw[:n]`; return it and the offset just past it.

    This is the hot path: everything is inlined by hand, and the common one-byte varint never leaves it.
    """
    start = pos
    pos += 4  # version
    inputs = raw[pos]
    flags = 0
    if inputs == 0:
        # An empty input list is impossible in a transaction, so 0x00 here is the extended format's marker.
        flags = raw[pos + 1]
        if flags not in (1, 8, 9):
            raise DecodeError(f"transaction at byte {start} has unknown serialization flags {flags:#04x}")
        pos += 2
        inputs = raw[pos]
    body = pos  # the inputs and outputs: the part of an extended transaction that the txid covers
    if inputs < 0xFD:
        pos += 1
    else:
        inputs, pos = _read_compact_size(raw, pos)
    if inputs * _MIN_INPUT > n - pos:
        raise DecodeError(f"transaction at byte {start} claims {inputs} inputs, too many for its bytes")

    spent = []
    for _ in range(inputs):
        spent.append(raw[pos : pos + 36])
        size = raw[pos + 36]
        if size < 0xFD:
            pos += 41 + size  # outpoint, script length byte, script, sequence
        else:
            size, pos = _read_compact_size(raw, pos + 36)
            pos += size + 4

    outputs = raw[pos]
    if outputs < 0xFD:
        pos += 1
    else:
        outputs, pos = _read_compact_size(raw, pos)
    if outputs * _MIN_OUTPUT > n - pos:
        raise DecodeError(f"transaction at byte {start} claims {outputs} outputs, too many for its bytes")

    matches = []
    for index in range(outputs):
        size = raw[pos + 8]
        if size < 0xFD:
            script = raw[pos + 9 : pos + 9 + size]
            end = pos + 9 + size
        else:
            size, script_at = _read_compact_size(raw, pos + 8)
            end = script_at + size
            script = raw[script_at:end]
        if script in watched:
            # A slice past the end is silently short; only pay out of a transaction proven complete.
            if end > n:
                raise DecodeError(f"transaction at byte {start} is truncated")
            value = int.from_bytes(raw[pos : pos + 8], "little", signed=True)
            if value < 0:
                raise DecodeError(f"transaction at byte {start} has a negative output value")
            matches.append((index, value, script))
        pos = end

    if flags:
        body_end = pos
        if flags & _FLAG_WITNESS:
            pos = _skip_witnesses(raw, pos, n, inputs)
        if flags & _FLAG_MWEB:
            pos, kernel, kernel_end = _skip_mweb_tx(raw, pos, outputs > 0)
            if not inputs and not outputs:
                # MWEB-only: Litecoin names it after its first kernel (the kernel ID, a BLAKE3 hash).
                if pos + 4 > n or not kernel_end:
                    raise DecodeError(f"MWEB-only transaction at byte {start} is truncated or has no kernel")
                txid = _blake3(raw[kernel:kernel_end])[::-1].hex()
                return _new_tx(ScannedTx, (txid, spent, matches)), pos + 4
        pos += 4
        if pos > n:
            raise DecodeError(f"transaction at byte {start} is truncated")
        digest = _sha256(raw[start : start + 4] + raw[body:body_end] + raw[pos - 4 : pos]).digest()
    else:
        pos += 4
        if pos > n:
            raise DecodeError(f"transaction at byte {start} is truncated")
        digest = _sha256(raw if start == 0 and pos == len(raw) else raw[start:pos]).digest()
    return _new_tx(ScannedTx, (_sha256(digest).digest()[::-1].hex(), spent, matches)), pos


def _read_compact_size(raw: bytes, pos: int) -> tuple[int, int]:
    """The Bitcoin CompactSize at `pos`, and the offset after it, refusing non-canonical encodings.

    No upper bound here (Bitcoin SV scripts can exceed Bitcoin Core's 32 MB MAX_SIZE): callers compare
    counts with the bytes left, and a length past the end shows up as truncation.
    """
    first = raw[pos]
    if first < 0xFD:
        return first, pos + 1
    width = 2 if first == 0xFD else 4 if first == 0xFE else 8
    end = pos + 1 + width
    if end > len(raw):
        raise DecodeError(f"varint at byte {pos} is truncated")
    value = int.from_bytes(raw[pos + 1 : end], "little")
    if value < (0xFD if width == 2 else 1 << (4 * width)):
        raise DecodeError(f"non-canonical varint at byte {pos}")
    return value, end


def _skip_witnesses(raw: bytes, pos: int, n: int, inputs: int) -> int:
    """Skip one witness stack per input; the txid does not cover them."""
    empty = True
    for _ in range(inputs):
        items, pos = _read_compact_size(raw, pos)
        if items > n - pos:
            raise DecodeError(f"witness at byte {pos} claims {items} items, more than its bytes can hold")
        if items:
            empty = False
        for _ in range(items):
            size = raw[pos]
            if size < 0xFD:
                pos += 1 + size
            else:
                size, pos = _read_compact_size(raw, pos)
                pos += size
    if empty and inputs:
        # Bitcoin Core rejects this as "Superfluous witness record": the flag promised witness data.
        raise DecodeError(f"witness flag set but every witness is empty (at byte {pos})")
    return pos


def _is_hogex(raw: bytes, start: int) -> bool:
    """Whether the transaction at `start` carries the MWEB flag, as only the HogEx does inside a block."""
    return raw[start + 4] == 0 and bool(raw[start + 5] & _FLAG_MWEB)


# --- Litecoin MWEB: skipped, but walked field by field so that garbage is still caught -----------------
# Layout from Litecoin Core's libmw (src/libmw/include/mw/models): fixed-size keys, commitments, signatures
# and range proofs, with feature bits saying which optional fields follow.


def _skip_mweb_tx(raw: bytes, pos: int, has_canonical_outputs: bool) -> tuple[int, int, int]:
    """Skip a transaction's optional MWEB field: 0x00 (the HogEx marks itself so) or 0x01 and a transaction.

    Returns the offset after it, and the start and end of its first kernel (0, 0 for the HogEx)."""
    present = raw[pos]
    if present == 0:
        if not has_canonical_outputs:
            raise DecodeError(f"HogEx without outputs at byte {pos}")
        return pos + 1, 0, 0
    if present != 1:
        raise DecodeError(f"bad MWEB presence byte {present:#04x} at byte {pos}")
    return _skip_mweb_body(raw, pos + 1 + 32 + 32)  # kernel offset, stealth offset


def _skip_mweb_block(raw: bytes, pos: int) -> int:
    """Skip the extension block that follows a HogEx: 0x00, or 0x01, a header and a body."""
    present = raw[pos]
    if present == 0:
        return pos + 1
    if present != 1:
        raise DecodeError(f"bad MWEB block marker {present:#04x} at byte {pos}")
    _, pos = _read_mw_varint(raw, pos + 1)  # height
    pos += 32 * 5  # output, kernel and leafset roots; kernel and stealth offsets
    _, pos = _read_mw_varint(raw, pos)  # output MMR size
    _, pos = _read_mw_varint(raw, pos)  # kernel MMR size
    return _skip_mweb_body(raw, pos)[0]


def _skip_mweb_body(raw: bytes, pos: int) -> tuple[int, int, int]:
    """Skip MWEB inputs, outputs and kernels; return the offset after them, and the start and end of the
    first kernel (end 0 if there is none)."""
    n = len(raw)
    count, pos = _read_compact_size(raw, pos)
    if count * 163 > n - pos:
        raise DecodeError(f"MWEB data claims {count} inputs, more than its bytes can hold")
    for _ in range(count):
        features = raw[pos]
        pos += 1 + 32 + 33 + 33  # features, output id, commitment, output public key
        if features & 0x01:
            pos += 33  # input public key
        if features & 0x02:
            pos = _skip_bytes_vector(raw, pos)  # extra data
        pos += 64  # signature
    count, pos = _read_compact_size(raw, pos)
    if count * 839 > n - pos:
        raise DecodeError(f"MWEB data claims {count} outputs, more than its bytes can hold")
    for _ in range(count):
        features = raw[pos + 99]
        pos += 33 + 33 + 33 + 1  # commitment, sender and receiver public keys, message features
        if features & 0x01:
            pos += 33 + 1 + 8 + 16  # key exchange public key, view tag, masked value, masked nonce
        if features & 0x02:
            pos = _skip_bytes_vector(raw, pos)  # extra data
        pos += 675 + 64  # range proof, signature
    count, pos = _read_compact_size(raw, pos)
    if count * 98 > n - pos:
        raise DecodeError(f"MWEB data claims {count} kernels, more than its bytes can hold")
    first_kernel, first_kernel_end = pos, 0
    for _ in range(count):
        features = raw[pos]
        pos += 1
        if features & 0x01:
            _, pos = _read_mw_varint(raw, pos)  # fee
        if features & 0x02:
            _, pos = _read_mw_varint(raw, pos)  # peg-in amount
        if features & 0x04:
            pegouts, pos = _read_compact_size(raw, pos)
            for _ in range(pegouts):
                _, pos = _read_mw_varint(raw, pos)  # amount
                pos = _skip_bytes_vector(raw, pos)  # scriptPubKey
        if features & 0x08:
            _, pos = _read_mw_varint(raw, pos)  # lock height
        if features & 0x10:
            pos += 33  # stealth excess
        if features & 0x20:
            pos = _skip_bytes_vector(raw, pos)  # extra data
        pos += 33 + 64  # excess commitment, signature
        if not first_kernel_end:
            first_kernel_end = pos
    if pos > n:
        raise DecodeError("MWEB data is truncated")
    return pos, first_kernel, first_kernel_end


def _read_mw_varint(raw: bytes, pos: int) -> tuple[int, int]:
    """Bitcoin Core's other varint (serialize.h VarInt: base 128, most significant group first), which MWEB
    uses for amounts and heights."""
    value = 0
    for _ in range(10):
        byte = raw[pos]
        pos += 1
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            return value, pos
        value += 1
    raise DecodeError(f"MWEB varint at byte {pos} is too long")


def _skip_bytes_vector(raw: bytes, pos: int) -> int:
    size, pos = _read_compact_size(raw, pos)
    return pos + size


# --- BLAKE3, only for the txid of MWEB-only transactions ---------------------------------------------------
# Those are rare, small, and the standard library has no BLAKE3, so a plain implementation of the spec's
# hash mode is enough; nothing on the hot path uses it.

_B3_IV = (0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A, 0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19)
_B3_PERM = (2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8)
_B3_CHUNK_START, _B3_CHUNK_END, _B3_PARENT, _B3_ROOT = 1, 2, 4, 8
_M32 = 0xFFFFFFFF


def _b3_compress(cv: tuple, words: list, counter: int, block_len: int, flags: int) -> list:
    s = [*cv, *_B3_IV[:4], counter & _M32, counter >> 32, block_len, flags]
    m = list(words)

    def g(a: int, b: int, c: int, d: int, x: int, y: int) -> None:
        s[a] = (s[a] + s[b] + x) & _M32
        t = s[d] ^ s[a]
        s[d] = (t >> 16) | (t << 16) & _M32
        s[c] = (s[c] + s[d]) & _M32
        t = s[b] ^ s[c]
        s[b] = (t >> 12) | (t << 20) & _M32
        s[a] = (s[a] + s[b] + y) & _M32
        t = s[d] ^ s[a]
        s[d] = (t >> 8) | (t << 24) & _M32
        s[c] = (s[c] + s[d]) & _M32
        t = s[b] ^ s[c]
        s[b] = (t >> 7) | (t << 25) & _M32

    for round_ in range(7):
        g(0, 4, 8, 12, m[0], m[1])
        g(1, 5, 9, 13, m[2], m[3])
        g(2, 6, 10, 14, m[4], m[5])
        g(3, 7, 11, 15, m[6], m[7])
        g(0, 5, 10, 15, m[8], m[9])
        g(1, 6, 11, 12, m[10], m[11])
        g(2, 7, 8, 13, m[12], m[13])
        g(3, 4, 9, 14, m[14], m[15])
        if round_ < 6:
            m = [m[i] for i in _B3_PERM]
    return [s[i] ^ s[i + 8] for i in range(8)]


def _b3_words(block: bytes) -> list:
    block = block.ljust(64, b"\0")
    return [int.from_bytes(block[i : i + 4], "little") for i in range(0, 64, 4)]


def _blake3(data: bytes) -> bytes:
    """BLAKE3-256 of `data` (the spec's reference algorithm, sequential)."""
    chunks = [data[i : i + 1024] for i in range(0, len(data), 1024)] or [b""]
    stack: list[list] = []  # chaining values of completed subtrees, merged like a binary counter
    for index, chunk in enumerate(chunks):
        blocks = [chunk[i : i + 64] for i in range(0, len(chunk), 64)] or [b""]
        cv = list(_B3_IV)
        for j, block in enumerate(blocks):
            flags = (_B3_CHUNK_START if j == 0 else 0) | (_B3_CHUNK_END if j == len(blocks) - 1 else 0)
            if len(chunks) == 1 and j == len(blocks) - 1:
                flags |= _B3_ROOT
            cv = _b3_compress(tuple(cv), _b3_words(block), index, len(block), flags)
        if len(chunks) == 1:
            return b"".join(w.to_bytes(4, "little") for w in cv)
        if index < len(chunks) - 1:
            total = index + 1
            while total & 1 == 0:  # merge subtrees completed by this chunk
                cv = _b3_compress(_B3_IV, stack.pop() + cv, 0, 64, _B3_PARENT)
                total >>= 1
            stack.append(cv)
        else:
            while stack:
                flags = _B3_PARENT | (_B3_ROOT if len(stack) == 1 else 0)
                cv = _b3_compress(_B3_IV, stack.pop() + cv, 0, 64, flags)
            return b"".join(w.to_bytes(4, "little") for w in cv)
    raise AssertionError("unreachable")
