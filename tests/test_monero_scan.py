"""View-key scanning (watcherd.chains.xmr_crypto + the adapter's output rules) on real regtest transactions.

tests/vectors/monero_regtest.json holds real transactions paid by monero-wallet-rpc to a throwaway wallet and
what that wallet's own view-only monero-wallet-rpc found in them (see make_monero_regtest.py).
"""

from __future__ import annotations

import copy
import json
from decimal import Decimal
from pathlib import Path

import pytest

from watcherd.chains.monero import MoneroAdapter
from watcherd.chains.xmr_crypto import (
    SubaddressDeriver,
    decode_address,
    encode_address,
    parse_tx_json,
    scalar_base,
)
from watcherd.config import MoneroChainConfig, MoneroNetwork
from watcherd.devnet_monero import new_keys, primary_address

VECTORS = json.loads((Path(__file__).parent / "vectors" / "monero_regtest.json").read_text())
VIEW = bytes.fromhex(VECTORS["view_key"])
SPEND_PUBLIC = bytes.fromhex(VECTORS["spend_public"])
SUBS = SubaddressDeriver(VIEW, SPEND_PUBLIC, "mainnet")
WATCHED = {SUBS.spend_key(major, minor): (major, minor) for major in range(3) for minor in range(8)}


def adapter() -> MoneroAdapter:
    config = MoneroChainConfig(
        name="xmr", network=MoneroNetwork("mainnet"), rpc_url="http://127.0.0.1:1", rpc_user=None,
        rpc_password=None, zmq_pub=None, primary_address=encode_address(18, SPEND_PUBLIC, scalar_base(VIEW)),
        view_key=VIEW, underpaid_tolerance_percent=Decimal(0),
    )
    chain = MoneroAdapter(config)
    chain.watchlist.keys.update(WATCHED)
    return chain


def test_finds_exactly_what_the_wallet_found():
    """Every output the reference wallet credited (subaddress index and amount) and nothing else."""
    chain = adapter()
    found = []
    for entry in VECTORS["txs"]:
        tx = chain._chain_tx(parse_tx_json(entry["txid"], entry["json"]))
        for r in tx.received if tx else ():
            found.append((entry["txid"], *WATCHED[r.key], r.amount))
    expected = sorted(tuple(e) for e in VECTORS["expected"])
    assert expected, "the vector file must hold owned outputs"
    assert any(len(entry["json"]["vout"]) > 2 for entry in VECTORS["txs"]), "some txs have additional keys"
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


def test_unlock_time_is_ignored():
    entry = owned_entry()
    entry["json"]["unlock_time"] = 1_000_000
    tx = adapter()._chain_tx(parse_tx_json(entry["txid"], entry["json"]))
    assert tx is None or not tx.received


def test_duplicate_output_key_counts_once():
    """The burning bug: a second tx reusing an owned one-time key pays nothing."""
    entry = owned_entry()
    chain = adapter()
    first = chain._chain_tx(parse_tx_json(entry["txid"], entry["json"]))
    assert first is not None and first.received
    again = chain._chain_tx(parse_tx_json("ff" * 32, entry["json"]))
    assert again is None or not again.received
    assert chain._chain_tx(parse_tx_json(entry["txid"], entry["json"])).received == first.received  # same tx again


def test_wrong_view_tag_short_circuits():
    entry = owned_entry()
    for out in entry["json"]["vout"]:
        tag = out["target"]["tagged_key"]
        tag["view_tag"] = f"{(int(tag['view_tag'], 16) + 1) % 256:02x}"
    tx = adapter()._chain_tx(parse_tx_json(entry["txid"], entry["json"]))
    assert tx is None or not tx.received


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
