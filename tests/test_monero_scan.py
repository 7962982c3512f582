"""View-key scanning (watcherd.chains.monero.scan + the adapter's output rules) on real regtest transactions.

tests/vectors/monero_regtest.json holds real transactions paid by monero-wallet-rpc to a throwaway wallet and
what that wallet's own view-only monero-wallet-rpc found in them (see make_monero_regtest.py).
"""

from __future__ import annotations

import copy
import json
from decimal import Decimal
from pathlib import Path

import pytest

from testkit.monero_node import new_keys, primary_address
from watcherd import metrics
from watcherd.chains.monero.adapter import MoneroAdapter
from watcherd.chains.monero.config import MoneroChainConfig, MoneroNetwork
from watcherd.chains.monero.crypto import (
    H_POINT,
    IDENTITY,
    SubaddressDeriver,
    decode_address,
    encode_address,
    hash_to_scalar,
    keccak256,
    scalar_base,
    varint,
)
from watcherd.chains.monero.scan import Scanner, commitment_ok, parse_tx_json
from watcherd.core.types import ChainBlock, Cursor
from watcherd.exceptions import NodeProtocolError

VECTOR_DIR = Path(__file__).parent / "vectors"
VECTORS = json.loads((VECTOR_DIR / "monero_regtest.json").read_text())
CHAIN_VECTORS = json.loads((VECTOR_DIR / "monero_regtest_chain.json").read_text())


def subaddresses(vectors: dict) -> dict[bytes, tuple[int, int]]:
    """spend key D -> (account, index) of the vector wallet's first subaddresses."""
    subs = SubaddressDeriver(bytes.fromhex(vectors["view_key"]), bytes.fromhex(vectors["spend_public"]), "mainnet")
    return {subs.spend_key(major, minor): (major, minor) for major in range(3) for minor in range(8)}


VIEW = bytes.fromhex(VECTORS["view_key"])
SPEND_PUBLIC = bytes.fromhex(VECTORS["spend_public"])
WATCHED = subaddresses(VECTORS)


def adapter(vectors: dict = VECTORS) -> MoneroAdapter:
    view, spend_public = bytes.fromhex(vectors["view_key"]), bytes.fromhex(vectors["spend_public"])
    config = MoneroChainConfig(
        name="xmr", network=MoneroNetwork("mainnet"), rpc_url="http://127.0.0.1:1", rpc_user=None,
        rpc_password=None, zmq_pub=None, primary_address=encode_address(18, spend_public, scalar_base(view)),
        view_key=view, underpaid_tolerance_percent=Decimal(0),
    )
    chain = MoneroAdapter(config)
    chain.watchlist.keys.update(subaddresses(vectors))
    return chain


@pytest.mark.parametrize("vectors", [VECTORS, CHAIN_VECTORS], ids=["payment-heavy", "chain-like"])
def test_finds_exactly_what_the_wallet_found(vectors):
    """Every output the reference wallet credited (subaddress index and amount) and nothing else."""
    chain, watched = adapter(vectors), subaddresses(vectors)
    found = []
    for entry in vectors["txs"]:
        tx = chain._chain_tx(parse_tx_json(entry["txid"], entry["json"]))
        for r in tx.received if tx else ():
            found.append((entry["txid"], *watched[r.key], r.amount))
    expected = sorted(tuple(e) for e in vectors["expected"])
    assert expected, "the vector file must hold owned outputs"
    assert any(len(entry["json"]["vout"]) > 2 for entry in vectors["txs"]), "some txs have additional keys"
    # monero-wallet-rpc sums the outputs of one tx to one subaddress into one transfer
    summed: dict[tuple[str, int, int], int] = {}
    for txid, major, minor, amount in found:
        summed[(txid, major, minor)] = summed.get((txid, major, minor), 0) + amount
    assert sorted((*k, v) for k, v in summed.items()) == expected


def test_key_images_are_the_spent_identifiers():
    entry = next(e for e in VECTORS["txs"] if e["json"]["vin"])
    tx = parse_tx_json(entry["txid"], entry["json"])
    assert tx.key_images == tuple(bytes.fromhex(i["key"]["k_image"]) for i in entry["json"]["vin"])


def owned_entry():
    txid = VECTORS["expected"][0][0]
    return copy.deepcopy(next(e for e in VECTORS["txs"] if e["txid"] == txid))


def test_forged_amount_never_pays():
    """An amount that does not open the output's commitment is flagged and not counted."""
    entry = owned_entry()
    chain = adapter()
    honest = chain._chain_tx(parse_tx_json(entry["txid"], entry["json"]))
    assert honest is not None and honest.received
    for out in honest.received:
        ecdh = entry["json"]["rct_signatures"]["ecdhInfo"][out.vout]
        forged = bytearray(bytes.fromhex(ecdh["amount"]))
        forged[5] ^= 0x01  # the decrypted amount grows by 2^40 piconero
        ecdh["amount"] = forged.hex()
    forged_tx = adapter()._chain_tx(parse_tx_json(entry["txid"], entry["json"]))
    assert forged_tx is None or not forged_tx.received


def test_zero_amount_output_is_no_payment():
    """An output to a watched subaddress that carries 0 piconero, with a commitment that opens (a real
    zero-amount output), pays nothing: it is not reported (so it neither pays an invoice nor gives one
    wrong_asset), and the tx's other outputs still are."""
    entry = owned_entry()
    parsed = parse_tx_json(entry["txid"], entry["json"])
    honest = adapter()._chain_tx(parsed)
    assert honest is not None and honest.received
    zeroed = honest.received[0]
    ecdh = entry["json"]["rct_signatures"]["ecdhInfo"][zeroed.vout]
    encrypted = int.from_bytes(bytes.fromhex(ecdh["amount"]), "little")
    scanner = Scanner(VIEW)
    derivations = [d for r in (*parsed.tx_public_keys, *parsed.additional_keys) for d in scanner._derive(r)]
    secrets = {hash_to_scalar(d + varint(zeroed.vout)) for d in derivations}
    (shared,) = {s for s in secrets if int.from_bytes(keccak256(b"amount" + s)[:8], "little") ^ encrypted
                 == zeroed.amount}  # the output's shared secret: the one that decrypts its amount
    mask = hash_to_scalar(b"commitment_mask" + shared)
    ecdh["amount"] = keccak256(b"amount" + shared)[:8].hex()  # the pad itself: encrypts 0
    entry["json"]["rct_signatures"]["outPk"][zeroed.vout] = scalar_base(mask).hex()  # mask·G + 0·H
    assert commitment_ok(0, mask, scalar_base(mask))
    tx = adapter()._chain_tx(parse_tx_json(entry["txid"], entry["json"]))
    found = tx.received if tx is not None else ()
    assert [(r.vout, r.amount) for r in found] == [(r.vout, r.amount) for r in honest.received[1:]]


def test_unlock_time_is_ignored():
    entry = owned_entry()
    entry["json"]["unlock_time"] = 1_000_000
    tx = adapter()._chain_tx(parse_tx_json(entry["txid"], entry["json"]))
    assert tx is None or not tx.received


def test_outputs_carry_their_one_time_key_for_the_burning_bug_rule():
    """The core refuses a second output with the same one-time key (tests/test_processor.py); the adapter
    hands each owned output's P on, the same for the same tx scanned again under another txid."""
    entry = owned_entry()
    chain = adapter()
    first = chain._chain_tx(parse_tx_json(entry["txid"], entry["json"]))
    again = chain._chain_tx(parse_tx_json("ff" * 32, entry["json"]))
    assert first is not None and again is not None and first.received
    keys = {bytes.fromhex(o["target"]["tagged_key"]["key"]) for o in entry["json"]["vout"]}
    assert all(r.output_key in keys for r in first.received)
    assert [r.output_key for r in again.received] == [r.output_key for r in first.received]


def test_wrong_view_tag_short_circuits():
    entry = owned_entry()
    for out in entry["json"]["vout"]:
        tag = out["target"]["tagged_key"]
        tag["view_tag"] = f"{(int(tag['view_tag'], 16) + 1) % 256:02x}"
    tx = adapter()._chain_tx(parse_tx_json(entry["txid"], entry["json"]))
    assert tx is None or not tx.received


class FakeBlockRpc:
    """monerod's answers for one block at height 101: get_block, then get_transactions' JSON texts."""

    def __init__(self, texts: dict[str, str], tx_hashes: list[str]):
        self.texts, self.tx_hashes = texts, tx_hashes

    async def call(self, method: str, **params):
        assert (method, params) == ("get_block", {"height": 101})
        return {"block_header": {"height": 101, "hash": "bb" * 32, "prev_hash": "aa" * 32},
                "tx_hashes": self.tx_hashes}

    async def transactions(self, txids: list[str]) -> dict[str, str]:
        return {t: self.texts[t] for t in txids if t in self.texts}


class BlockRecorder:
    def __init__(self):
        self.blocks: list[ChainBlock] = []

    async def refresh_watchlist(self) -> None:
        pass

    async def block_connected(self, block: ChainBlock) -> None:
        self.blocks.append(block)


def malformed_rpc_count() -> float:
    return metrics.MALFORMED.labels("xmr", "rpc")._value.get()


async def test_undecodable_tx_is_skipped_not_its_block():
    """One transaction we cannot decode (pre-2019 RingCT, not JSON, not an object, a vout without a target)
    is logged, counted and skipped: the block still connects with the other transactions' payments, instead
    of failing (and being retried) forever."""
    owned = owned_entry()
    old_rct = copy.deepcopy(owned["json"])
    old_rct["rct_signatures"]["type"] = 3
    no_target = copy.deepcopy(owned["json"])
    del no_target["vout"][0]["target"]
    bad = {"01" * 32: json.dumps(old_rct), "02" * 32: "{not json", "03" * 32: "[1, 2]",
           "04" * 32: json.dumps(no_target)}
    texts = {owned["txid"]: json.dumps(owned["json"]), **bad}
    order = ["01" * 32, "02" * 32, owned["txid"], "03" * 32, "04" * 32]
    chain, recorder = adapter(), BlockRecorder()
    chain._rpc = FakeBlockRpc(texts, order)
    before = malformed_rpc_count()
    assert await chain.connect_next(recorder, Cursor(100, "aa" * 32))
    [block] = recorder.blocks
    assert (block.height, block.hash) == (101, "bb" * 32)
    assert [tx.txid for tx in block.txs] == [owned["txid"]]
    paid: dict[tuple[int, int], int] = {}  # summed per subaddress, as the reference wallet reports it
    for r in block.txs[0].received:
        paid[WATCHED[r.key]] = paid.get(WATCHED[r.key], 0) + r.amount
    assert paid == {(major, minor): amount for txid, major, minor, amount in VECTORS["expected"]
                    if txid == owned["txid"]}
    assert malformed_rpc_count() - before == len(bad)


async def test_block_whose_txs_the_node_cannot_give_stays_an_error():
    """A block we cannot read at all (the node does not know one of its txs) is not connected half: it is a
    NodeProtocolError, retried from the cursor."""
    owned = owned_entry()
    chain, recorder = adapter(), BlockRecorder()
    chain._rpc = FakeBlockRpc({owned["txid"]: json.dumps(owned["json"])}, [owned["txid"], "05" * 32])
    with pytest.raises(NodeProtocolError, match="does not know its txs"):
        await chain.connect_next(recorder, Cursor(100, "aa" * 32))
    assert recorder.blocks == []


@pytest.mark.parametrize("amount", [0, 1, 7, 8, 255, 256, 2**40, 10**12, 25 * 10**11, 2**63, 2**64 - 1,
                                    123456789012345])
def test_commitment_check_against_libsodium(amount):
    """The table of multiples of H agrees with libsodium's own ed25519 arithmetic, round amounts and zero
    included, and a wrong amount, a wrong mask or the opposite point never opens the commitment."""
    from nacl import bindings as sodium

    mask = hash_to_scalar(amount.to_bytes(8, "little"))
    amount_h = IDENTITY if amount == 0 else sodium.crypto_scalarmult_ed25519_noclamp(
        amount.to_bytes(32, "little"), H_POINT)
    commitment = sodium.crypto_core_ed25519_add(scalar_base(mask), amount_h)
    assert commitment_ok(amount, mask, commitment)
    assert commitment_ok(amount, bytes(32), amount_h), "a zero mask"
    assert not commitment_ok(amount ^ 1, mask, commitment)
    assert not commitment_ok((amount * 3 + 1) % 2**64, mask, commitment)
    assert not commitment_ok(amount, hash_to_scalar(mask), commitment)
    assert not commitment_ok(amount, mask, bytes(32))
    if amount:
        assert not commitment_ok(amount, mask, sodium.crypto_core_ed25519_sub(scalar_base(mask), amount_h))


def test_address_codec_roundtrip():
    spend, view = new_keys()
    address = primary_address(spend, view)
    decoded = decode_address(address)
    assert (decoded.kind, decoded.network) == ("standard", "mainnet")
    assert decoded.spend_public == scalar_base(spend) and decoded.view_public == scalar_base(view)
    broken = address[:-1] + ("1" if address[-1] != "1" else "2")
    with pytest.raises(ValueError):
        decode_address(broken)


def test_subaddresses_match_monero_wallet_rpc(xmr_node):
    """A view-only monero-wallet-rpc restored from the same keys derives the same subaddresses."""
    spend, view = new_keys()
    subs = SubaddressDeriver(view, scalar_base(spend), "mainnet")
    height = xmr_node.tip()[0]
    xmr_node.wallet("generate_from_keys", filename=f"viewonly-{view.hex()[:8]}", address=primary_address(spend, view),
                    viewkey=view.hex(), password="", restore_height=height)
    try:
        assert xmr_node.wallet("get_address", account_index=0)["address"] == subs.address(0, 0)[0]
        for _ in range(3):
            made = xmr_node.wallet("create_address", account_index=0)
            assert made["address"] == subs.address(0, made["address_index"])[0]
        account = xmr_node.wallet("create_account")
        assert account["address"] == subs.address(account["account_index"], 0)[0]
    finally:
        xmr_node.wallet("close_wallet")
        xmr_node.wallet("open_wallet", filename="customer")
