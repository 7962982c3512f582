#!/usr/bin/env python3
"""Regenerate monero_regtest.json: real transactions from a fresh monerod regtest, paid by monero-wallet-rpc.

The recipient wallet is throwaway: the file keeps its private VIEW key (needed to scan) and public spend key,
never its spend key. `expected` is what the recipient's own view-only monero-wallet-rpc reported.
"""

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from watcherd.chains.xmr_crypto import SubaddressDeriver, scalar_base  # noqa: E402
from watcherd.devnet_monero import MoneroNode, new_keys, primary_address, random_address  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        node = MoneroNode("xmr", Path(tmp))
        node.start()
        try:
            spend, view = new_keys()
            subs = SubaddressDeriver(view, scalar_base(spend), "mainnet")
            txids = []
            # Mostly what customers send: one destination + change (2 outputs, 1 tx public key); a quarter
            # pay three destinations, two of them our subaddresses (additional tx public keys).
            for i in range(24):
                if i % 4 == 1:
                    dests = {random_address(): 10**10 + i, subs.address(0, 2)[0]: 2 * 10**11 + i,
                             subs.address(1, 1)[0]: 3 * 10**11 + i}
                elif i % 3 == 0:
                    dests = {subs.address(0, 1 + i % 5)[0]: 10**11 + i}
                else:
                    dests = {random_address(): 10**10 + i}
                txids.append(node.pay(dests))
                if i % 8 == 7:
                    node.mine(1)
            node.mine(1)
            decoded = {}
            for chunk in range(0, len(txids), 4):
                answer = node.other("get_transactions", txs_hashes=txids[chunk:chunk + 4], decode_as_json=True)
                for entry in answer["txs"]:
                    decoded[entry["tx_hash"]] = json.loads(entry["as_json"])
            node.wallet("generate_from_keys", filename="recipient", address=primary_address(spend, view),
                        viewkey=view.hex(), password="", restore_height=0)
            for _ in range(5):
                node.wallet("create_address", account_index=0)
            node.wallet("create_account")
            node.wallet("create_address", account_index=1)
            node.wallet("refresh")
            transfers = node.wallet("get_transfers", **{"in": True, "all_accounts": True})
            expected = sorted(
                (t["txid"], t["subaddr_index"]["major"], t["subaddr_index"]["minor"], t["amount"])
                for t in transfers.get("in", [])
            )
        finally:
            node.stop()
    out = {
        "network": "mainnet",
        "view_key": view.hex(),
        "spend_public": scalar_base(spend).hex(),
        "txs": [{"txid": t, "json": decoded[t]} for t in txids],
        "expected": [list(e) for e in expected],
    }
    Path(__file__).with_name("monero_regtest.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"{len(txids)} txs, {len(expected)} owned outputs")


if __name__ == "__main__":
    main()
