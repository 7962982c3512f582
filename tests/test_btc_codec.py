"""The Bitcoin-family decoder against real bytes: mainnet transactions, Litecoin (MWEB) and Bitcoin SV regtest
blocks, python-bitcoinlib as an independent decoder, and malformed input of every kind."""

import json
from pathlib import Path

import pytest
from bitcoin.core import (
    CBlock,
    CMutableTransaction,
    CMutableTxIn,
    CMutableTxOut,
    CoreMainParams,
    COutPoint,
    CScript,
    CScriptWitness,
    CTransaction,
    CTxInWitness,
    CTxWitness,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from watcherd.chains.bitcoin.codec import ScannedBlock, ScannedTx, outpoint, scan_block, scan_tx
from watcherd.exceptions import DecodeError

VECTORS = Path(__file__).parent / "vectors"
MAINNET = json.loads((VECTORS / "bitcoin_mainnet_txs.json").read_text())["txs"]
LITECOIN = json.loads((VECTORS / "litecoin_regtest_mweb.json").read_text())
BSV = json.loads((VECTORS / "bsv_regtest.json").read_text())
REGTEST_BLOCKS = LITECOIN["blocks"] + BSV["blocks"]
MAINNET_BY_NAME = {vector["name"]: vector for vector in MAINNET}
COINBASE_OUTPOINT = bytes(32) + b"\xff\xff\xff\xff"


def raw_of(vector: dict) -> bytes:
    return bytes.fromhex(vector["hex"])


def bitcoinlib_view(raw: bytes) -> tuple[str, list[bytes], list[tuple[int, int, bytes]]]:
    """txid, spent outpoints and every output, as python-bitcoinlib decodes them."""
    tx = CTransaction.deserialize(raw)
    spent = [txin.prevout.hash + txin.prevout.n.to_bytes(4, "little") for txin in tx.vin]
    outputs = [(i, out.nValue, bytes(out.scriptPubKey)) for i, out in enumerate(tx.vout)]
    return tx.GetTxid()[::-1].hex(), spent, outputs


# --- mainnet transactions --------------------------------------------------------------------------------


@pytest.mark.parametrize("vector", MAINNET, ids=[v["name"] for v in MAINNET])
def test_mainnet_tx_agrees_with_known_txid_and_bitcoinlib(vector):
    """Every script family decodes to the txid the network knows it by, and to python-bitcoinlib's outpoints,
    values and scripts."""
    raw = raw_of(vector)
    lib_txid, lib_spent, lib_outputs = bitcoinlib_view(raw)
    assert lib_txid == vector["txid"]  # the vector itself is intact

    scanned = scan_tx(raw, {script for _, _, script in lib_outputs})

    assert scanned.txid == vector["txid"]
    assert scanned.spent == lib_spent
    assert scanned.matches == lib_outputs


def test_only_watched_outputs_match_with_their_satoshis():
    """Unwatched outputs are ignored; a match carries its index, integer satoshis and the script."""
    raw = raw_of(MAINNET_BY_NAME["p2pkh_spend"])
    second = bytes.fromhex("76a914fbed3d9b11183209a57999d54d59f67c019e756c88ac")

    scanned = scan_tx(raw, {second, bytes.fromhex("0014" + "00" * 20)})

    assert scanned.matches == [(1, 42_130_042, second)]
    assert scan_tx(raw, set()).matches == []


def test_taproot_output_matches():
    """A P2TR output is matched like any other script: 34 opaque bytes."""
    raw = raw_of(MAINNET_BY_NAME["p2tr_keypath_spend"])
    script = bytes.fromhex("5120a37c3903c8d0db6512e2b40b0dffa05e5a3ab73603ce8c9c4b7771e5412328f9")

    assert scan_tx(raw, {script}).matches == [(1, 67_230, script)]


def test_spent_outpoints_are_as_serialized_and_match_outpoint():
    """`outpoint()` builds exactly what `spent` holds, so the adapter can look spends up by (txid, vout)."""
    scanned = scan_tx(raw_of(MAINNET_BY_NAME["p2wsh_spend"]), set())
    # Both in internal byte order, as serialized.
    first = bytes.fromhex("e1434357ad4d08274ed106e21f2694d35000b46e66b1dd714d63e9cd3f2ab474")
    second = bytes.fromhex("b9de6f14166a841772ec53c6e384adb3dc151ba1e7b2c0a92cc9f194690be124")

    assert scanned.spent == [first + bytes(4), second + bytes(4)]
    assert first[::-1].hex().startswith("74b42a3fcde9634d")  # the display order an RPC shows
    assert outpoint(first[::-1].hex(), 0) == scanned.spent[0]
    assert outpoint(first[::-1].hex(), 7) == first + b"\x07\x00\x00\x00"


def test_outpoint_rejects_a_short_txid():
    """A txid that is not 32 bytes is a caller bug, not something to pad."""
    with pytest.raises(ValueError):
        outpoint("abcd", 0)


def test_coinbase_has_the_null_outpoint():
    """A coinbase spends nothing: its one outpoint is the null one, which no real output has."""
    raw = raw_of(MAINNET_BY_NAME["genesis_coinbase"])
    p2pk = bytes(CoreMainParams.GENESIS_BLOCK.vtx[0].vout[0].scriptPubKey)

    scanned = scan_tx(raw, {p2pk})

    assert scanned.txid == "4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b"
    assert scanned.spent == [COINBASE_OUTPOINT]
    assert scanned.matches == [(0, 5_000_000_000, p2pk)]


def test_result_types_are_the_published_interface():
    """The adapter is written against these names and types."""
    scanned = scan_tx(raw_of(MAINNET_BY_NAME["p2pkh_spend"]), set())
    assert isinstance(scanned, ScannedTx)
    assert ScannedTx._fields == ("txid", "spent", "matches")
    assert ScannedBlock._fields == ("hash", "prev_hash", "txs", "time")
    assert type(scanned.spent[0]) is bytes and len(scanned.spent[0]) == 36


def test_bytearray_and_memoryview_decode_like_bytes():
    """ZMQ frames and RPC bytes arrive in different buffer types; all decode alike."""
    raw = raw_of(MAINNET_BY_NAME["p2sh_p2wsh_multisig_spend"])
    expected = scan_tx(raw, set())
    assert scan_tx(bytearray(raw), set()) == expected
    assert scan_tx(memoryview(raw), set()) == expected


def test_big_output_script_uses_the_four_byte_varint():
    """Bitcoin SV carries scripts far over 64 KiB; their length is a 0xfe varint."""
    big = CScript(b"\x6a" + bytes(70_000))
    tx = CMutableTransaction(
        [CMutableTxIn(COutPoint(b"\x11" * 32, 3), CScript(b"\x51"))],
        [CMutableTxOut(0, big), CMutableTxOut(7, big)],
    )
    raw = tx.serialize()
    assert raw[56:61] == b"\xfe\x71\x11\x01\x00"  # after version, the input, output count and value

    scanned = scan_tx(raw, {bytes(big)})

    assert scanned.txid == tx.GetTxid()[::-1].hex()
    assert scanned.matches == [(0, 0, bytes(big)), (1, 7, bytes(big))]


# --- blocks ------------------------------------------------------------------------------------------------


def test_genesis_block():
    """The header hash, the previous hash (all zero here) and the coinbase txid of a real block."""
    raw = CoreMainParams.GENESIS_BLOCK.serialize()

    block = scan_block(raw, set())

    assert block.hash == "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f"
    assert block.prev_hash == "00" * 32
    assert [tx.txid for tx in block.txs] == [
        "4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b"
    ]


def test_block_of_mainnet_transactions_agrees_with_bitcoinlib():
    """A block built from the real transactions (legacy and segwit mixed) under a real-shaped header."""
    genesis = CoreMainParams.GENESIS_BLOCK
    txs = [CTransaction.deserialize(raw_of(v)) for v in MAINNET]
    template = CBlock(
        nVersion=0x20000000,
        hashPrevBlock=genesis.GetHash(),
        nTime=1_700_000_000,
        nBits=0x1D00FFFF,
        nNonce=42,
        vtx=txs,
    )
    block = CBlock(
        nVersion=0x20000000,
        hashPrevBlock=genesis.GetHash(),
        hashMerkleRoot=template.calc_merkle_root(),
        nTime=1_700_000_000,
        nBits=0x1D00FFFF,
        nNonce=42,
        vtx=txs,
    )
    raw = block.serialize()
    watched = {bytes(out.scriptPubKey) for tx in txs for out in tx.vout}

    scanned = scan_block(raw, watched)

    assert scanned.hash == block.GetHash()[::-1].hex()
    assert scanned.prev_hash == "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f"
    assert scanned.time == 1_700_000_000  # the header's nTime: a payment found on catch-up dates from it
    assert [tx.txid for tx in scanned.txs] == [v["txid"] for v in MAINNET]
    assert [tx.matches for tx in scanned.txs] == [bitcoinlib_view(tx.serialize())[2] for tx in txs]


@pytest.mark.parametrize("vector", REGTEST_BLOCKS, ids=[v["name"] for v in REGTEST_BLOCKS])
def test_regtest_block_agrees_with_the_node(vector):
    """Blocks exactly as litecoind (with MWEB) and the Bitcoin SV node serve them decode to what the node
    itself reports: hashes, txids, spent outpoints, and every output when all are watched."""
    watched = {bytes.fromhex(script) for tx in vector["txs"] for _, _, script in tx["outputs"]}

    block = scan_block(raw_of(vector), watched)

    assert block.hash == vector["hash"]
    assert block.prev_hash == vector["prev_hash"]
    assert [tx.txid for tx in block.txs] == [tx["txid"] for tx in vector["txs"]]
    assert [[o.hex() for o in tx.spent] for tx in block.txs] == [tx["spent"] for tx in vector["txs"]]
    assert [tx.matches for tx in block.txs] == [
        [(n, value, bytes.fromhex(script)) for n, value, script in tx["outputs"]] for tx in vector["txs"]
    ]


def ltc_block(height: int) -> dict:
    return next(b for b in LITECOIN["blocks"] if b["height"] == height)


def test_litecoin_pegouts_are_hogex_outputs():
    """MWEB peg-outs to a watched address are paid by the HogEx, the block's last canonical transaction: the
    wallet sent 3 LTC to a P2PKH and 4.25 LTC to a P2WPKH address from MWEB coins."""
    vector = ltc_block(440)
    p2pkh = bytes.fromhex(vector["txs"][1]["outputs"][1][2])
    p2wpkh = bytes.fromhex(vector["txs"][1]["outputs"][2][2])
    assert p2pkh[:3] == b"\x76\xa9\x14" and p2wpkh[:2] == b"\x00\x14"

    block = scan_block(raw_of(vector), {p2pkh, p2wpkh})

    hogex = block.txs[-1]
    assert hogex.txid == vector["txs"][1]["txid"]
    assert hogex.matches == [(1, 300_000_000, p2pkh), (2, 425_000_000, p2wpkh)]
    # The coinbase pays the same P2WPKH script: matching is per output, not per script.
    assert block.txs[0].matches == [(0, 1_250_005_050, p2wpkh)]


def test_litecoin_block_without_extension_block_still_decodes():
    """Serialized without MWEB (as for peers that do not know it), a block simply ends after the HogEx."""
    vector = ltc_block(438)
    raw = raw_of(vector)
    assert raw[vector["txs_end"]] == 0x01  # the extension block's marker

    assert scan_block(raw[: vector["txs_end"]], set()) == scan_block(raw, set())


def test_litecoin_extension_block_with_a_bad_marker_is_a_decode_error():
    """Tolerating MWEB data does not mean accepting any bytes after a HogEx."""
    vector = ltc_block(438)
    raw = bytearray(raw_of(vector))
    raw[vector["txs_end"]] = 0x02

    with pytest.raises(DecodeError, match="bad MWEB block marker"):
        scan_block(bytes(raw), set())


def test_blake3_known_answers():
    """BLAKE3 only names MWEB-only transactions, but a wrong one would name them wrongly (official vectors:
    the empty input, "abc", and the spec's i % 251 pattern across chunk boundaries)."""
    from watcherd.chains.bitcoin.codec import _blake3

    pattern = bytes(i % 251 for i in range(2048))
    assert _blake3(b"").hex() == "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
    assert _blake3(b"abc").hex() == "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
    assert _blake3(pattern[:1024]).hex() == "42214739f095a406f3fc83deb889744ac00df831c10daa55189b5d121c855af7"
    assert _blake3(pattern[:1025]).hex() == "d00278ae47eb27b34faecf67b4fe263f82d5412916c1ffd97c8cb7fb814b8444"
    assert _blake3(pattern).hex() == "e776b6028c7cd22a4d0ba182a8bf62205d2ef576467e838ed6f2529b85fba24a"


@pytest.mark.parametrize("vector", LITECOIN["txs"], ids=[v["note"][:30] for v in LITECOIN["txs"]])
def test_litecoin_mempool_tx_txids(vector):
    """Mempool transactions, including MWEB-only ones (named after their first kernel) and a peg-in whose
    MWEB part is still attached (flags 0x09), get the txid the node gave them."""
    scanned = scan_tx(raw_of(vector), set())
    assert scanned.txid == vector["txid"]


def test_litecoin_mweb_only_tx_spends_and_pays_nothing_canonical():
    """MWEB-only transactions can never produce a payment or a canonical spend."""
    vector = next(v for v in LITECOIN["txs"] if v["txid"].startswith("f57c7cfc"))
    scanned = scan_tx(raw_of(vector), {b"\x00\x14" + bytes(20)})
    assert (scanned.spent, scanned.matches) == ([], [])


def test_litecoin_mweb_field_with_a_bad_presence_byte_is_a_decode_error():
    """The MWEB field is walked, not skipped blindly: garbage there is caught."""
    vector = next(v for v in LITECOIN["txs"] if v["txid"].startswith("f57c7cfc"))
    raw = bytearray(raw_of(vector))
    assert raw[4:9] == b"\x00\x08\x00\x00\x01"  # marker, flags, no inputs, no outputs, MWEB present
    raw[8] = 0x02

    with pytest.raises(DecodeError, match="bad MWEB presence byte"):
        scan_tx(bytes(raw), set())


def test_litecoin_pegin_with_mweb_part_decodes_canonical_inputs():
    """A mempool peg-in (flags 0x09) spends the same outpoints as its mined form (flag 0x01)."""
    vector = next(v for v in LITECOIN["txs"] if v["txid"].startswith("c30a503f"))
    raw = raw_of(vector)
    assert raw[4:6] == b"\x00\x09"
    in_block = next(tx for tx in ltc_block(439)["txs"] if tx["txid"] == vector["txid"])

    scanned = scan_tx(raw, set())

    assert [o.hex() for o in scanned.spent] == in_block["spent"]


# --- malformed input ------------------------------------------------------------------------------------

ALL_TXS = [raw_of(v) for v in MAINNET + LITECOIN["txs"]]


@pytest.mark.parametrize(
    "raw", ALL_TXS, ids=[v.get("name", v["txid"][:8]) for v in MAINNET + LITECOIN["txs"]]
)
def test_every_truncation_of_a_tx_is_a_decode_error(raw):
    """No prefix of a transaction decodes, and none leaks IndexError or struct.error."""
    for cut in range(len(raw)):
        with pytest.raises(DecodeError):
            scan_tx(raw[:cut], set())


@pytest.mark.parametrize("vector", REGTEST_BLOCKS, ids=[v["name"] for v in REGTEST_BLOCKS])
def test_every_truncation_of_a_block_is_a_decode_error(vector):
    """No prefix of a block decodes, except the one that drops the whole MWEB extension block."""
    raw = raw_of(vector)
    for cut in range(len(raw)):
        if cut == vector["txs_end"]:
            continue  # the whole extension block cut off: a valid serialization without MWEB
        with pytest.raises(DecodeError):
            scan_block(raw[:cut], set())


@pytest.mark.parametrize("garbage", [b"\x00", b"\xff" * 5, bytes(40)])
def test_trailing_bytes_after_a_tx_are_a_decode_error(garbage):
    """A raw transaction is exactly one transaction."""
    for raw in ALL_TXS:
        with pytest.raises(DecodeError, match="more bytes follow"):
            scan_tx(raw + garbage, set())


def test_trailing_bytes_after_a_block_are_a_decode_error():
    """Only a HogEx may be followed by anything, and only by one well-formed extension block."""
    with pytest.raises(DecodeError, match="after its last transaction"):
        scan_block(raw_of(BSV["blocks"][0]) + b"\x00", set())
    with pytest.raises(DecodeError, match="after its MWEB extension block"):
        scan_block(raw_of(ltc_block(438)) + b"\x00", set())
    with pytest.raises(DecodeError):
        scan_block(CoreMainParams.GENESIS_BLOCK.serialize() + b"\x01", set())


VERSION = b"\x02\x00\x00\x00"
ONE_INPUT = b"\x01" + bytes(36) + b"\x00" + b"\xff" * 4


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"", "truncated"),
        (VERSION + b"\xff" + b"\xff" * 8, "inputs"),  # 2^64-1 inputs
        (VERSION + b"\xfe\x00\x00\x00\x10" + bytes(100), "inputs"),  # 2^28 inputs in 105 bytes
        (VERSION + ONE_INPUT + b"\xfe\xff\xff\xff\x7f" + bytes(30), "outputs"),
        (VERSION + ONE_INPUT + b"\x01" + bytes(8) + b"\xff" + b"\xff" * 8 + bytes(4), "truncated"),  # script
        (VERSION + b"\xfd\x01\x00" + bytes(60), "non-canonical"),  # 1 written as 0xfd 0x0001
        (VERSION + b"\x00\x02" + ONE_INPUT + b"\x00" + bytes(4), "unknown serialization flags"),
        (VERSION + b"\x00\x00" + bytes(4), "unknown serialization flags"),
        (VERSION + b"\x00\x01" + ONE_INPUT + b"\x00" + b"\x00" + bytes(4), "every witness is empty"),
        (VERSION + b"\x00\x01" + ONE_INPUT + b"\x00" + b"\xfe\xff\xff\xff\x00" + bytes(4), "witness"),
    ],
)
def test_absurd_or_malformed_tx_is_a_decode_error(raw, message):
    """Forged counts and lengths fail fast with a DecodeError naming the problem."""
    with pytest.raises(DecodeError, match=message):
        scan_tx(raw, set())


def test_absurd_block_tx_count_is_a_decode_error():
    """A forged transaction count cannot make the decoder loop for long."""
    header = CoreMainParams.GENESIS_BLOCK.serialize()[:80]
    with pytest.raises(DecodeError, match="claims 4294967295 transactions"):
        scan_block(header + b"\xfe\xff\xff\xff\xff" + bytes(100), set())
    with pytest.raises(DecodeError, match="shorter than a header"):
        scan_block(header, set())


def test_negative_value_in_a_watched_output_is_a_decode_error():
    """A payment is never credited with a negative amount."""
    script = b"\x00\x14" + bytes(20)
    raw = VERSION + ONE_INPUT + b"\x01" + b"\xff" * 8 + b"\x16" + script + bytes(4)
    with pytest.raises(DecodeError, match="negative"):
        scan_tx(raw, {script})


@given(st.binary(max_size=400))
def test_random_bytes_never_leak_other_exceptions(raw):
    """Whatever the bytes, callers only ever have to catch DecodeError."""
    for decode in (scan_tx, scan_block):
        try:
            decode(raw, set())
        except DecodeError:
            pass


@given(
    st.sampled_from(ALL_TXS),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_corrupted_real_txs_never_leak_other_exceptions(raw, edits):
    """Overwrite a few bytes of a real transaction: the result is a decode or a DecodeError, nothing else."""
    data = bytearray(raw)
    for where, value in edits:
        data[where % len(data)] = value
    try:
        scan_tx(bytes(data), set())
    except DecodeError:
        pass


# --- property: agree with python-bitcoinlib on random valid transactions ---------------------------------

scripts = st.one_of(st.binary(max_size=40), st.binary(min_size=250, max_size=300))


@st.composite
def transactions(draw) -> tuple[bytes, CMutableTransaction, set[bytes]]:
    vin = [
        CMutableTxIn(
            COutPoint(draw(st.binary(min_size=32, max_size=32)), draw(st.integers(0, 2**32 - 1))),
            CScript(draw(scripts)),
            draw(st.integers(0, 2**32 - 1)),
        )
        for _ in range(draw(st.integers(1, 4)))
    ]
    vout = [
        CMutableTxOut(draw(st.integers(0, 21_000_000 * 100_000_000)), CScript(draw(scripts)))
        for _ in range(draw(st.integers(0, 5)))
    ]
    witness = CTxWitness()
    if draw(st.booleans()):
        stacks = [draw(st.lists(st.binary(max_size=80), max_size=3)) for _ in vin]
        if not any(stacks):
            stacks[0] = [b"\x01"]  # an all-empty witness is not a segwit serialization
        witness = CTxWitness([CTxInWitness(CScriptWitness(stack)) for stack in stacks])
    tx = CMutableTransaction(vin, vout, draw(st.integers(0, 2**32 - 1)), draw(st.integers(1, 2)), witness)
    watched = {bytes(out.scriptPubKey) for out in vout if draw(st.booleans())}
    return tx.serialize(), tx, watched


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(transactions())
def test_random_valid_tx_agrees_with_bitcoinlib(case):
    """For any valid transaction, legacy or segwit, the txid, spends and matches equal python-bitcoinlib's."""
    raw, tx, watched = case

    scanned = scan_tx(raw, watched)

    assert scanned.txid == tx.GetTxid()[::-1].hex()
    assert scanned.spent == [txin.prevout.hash + txin.prevout.n.to_bytes(4, "little") for txin in tx.vin]
    assert scanned.matches == [
        (i, out.nValue, bytes(out.scriptPubKey))
        for i, out in enumerate(tx.vout)
        if bytes(out.scriptPubKey) in watched
    ]


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(transactions(), min_size=1, max_size=6))
def test_random_block_agrees_with_bitcoinlib(cases):
    """Blocks of random valid transactions: header hash and every txid as python-bitcoinlib computes them."""
    txs = [CTransaction.from_tx(tx) for _, tx, _ in cases]
    watched = set().union(*(w for _, _, w in cases))
    block = CBlock(nVersion=4, hashPrevBlock=b"\x07" * 32, nTime=1, nBits=0x207FFFFF, nNonce=0, vtx=txs)
    raw = block.serialize()

    scanned = scan_block(raw, watched)

    assert scanned.hash == block.GetHash()[::-1].hex()
    assert scanned.prev_hash == "07" * 32
    assert [t.txid for t in scanned.txs] == [tx.GetTxid()[::-1].hex() for tx in txs]
    assert [len(t.matches) for t in scanned.txs] == [
        sum(bytes(out.scriptPubKey) in watched for out in tx.vout) for tx in txs
    ]


# --- the adapter's output rule ----------------------------------------------------------------------------


def test_a_zero_sat_output_to_a_watched_script_is_no_payment():
    """The decoder reports every watched output, 0 sat ones too (as the node does); the adapter reports none
    of value 0: a transaction whose only watched output is 0 sat concerns no invoice (no payment, no
    wrong_asset), and in one that also pays, only the paying output is received."""
    from decimal import Decimal

    from watcherd.chains.bitcoin.adapter import BitcoinAdapter
    from watcherd.chains.bitcoin.address import network
    from watcherd.chains.bitcoin.config import BitcoinChainConfig

    zpub = ("zpub6rFR7y4Q2AijBEqTUquhVz398htDFrtymD9xYYfG1m4wAcvPhXNfE3EfH1r1ADqtfSdVCToUG868RvUUkgDKf31mGDtKsAYz2o"
            "z2AGutZYs")
    adapter = BitcoinAdapter(BitcoinChainConfig(
        name="btc", coin="bitcoin", network=network("bitcoin", "mainnet"), asset="BTC",
        rpc_url="http://127.0.0.1:1", rpc_user="u", rpc_password="p", rpc_cookie_file=None, zmq_rawtx=None,
        zmq_hashblock=None, poll_interval_seconds=1.0, xpub=zpub, address_type="p2wpkh", confirmations=1,
        underpaid_tolerance_percent=Decimal(0), invoice_expiry_seconds=900, start_height=None))
    script = adapter.derive(0)[1]
    adapter.watchlist.keys.add(script)
    spend = CMutableTxIn(COutPoint(b"\x01" * 32, 0))
    only_zero = CMutableTransaction([spend], [CMutableTxOut(0, CScript(script))]).serialize()
    both = CMutableTransaction([spend], [CMutableTxOut(0, CScript(script)), CMutableTxOut(1500, CScript(script))])

    assert scan_tx(only_zero, {script}).matches == [(0, 0, script)]
    assert adapter._chain_tx(scan_tx(only_zero, {script})) is None
    paying = adapter._chain_tx(scan_tx(both.serialize(), {script}))
    assert paying is not None and [(r.vout, r.amount) for r in paying.received] == [(1, 1500)]
