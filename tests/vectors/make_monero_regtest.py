#!/usr/bin/env python3
"""Regenerate the Monero vectors: real transactions from a fresh monerod regtest, paid by monero-wallet-rpc.

    make_monero_regtest.py            monero_regtest.json: 24 txs, half of them paying the recipient
    make_monero_regtest.py chain      monero_regtest_chain.json: 160 txs shaped like chain traffic, 1 in 20
                                      paying the recipient (pruned: without signatures)

The recipient wallet is throwaway: a file keeps its private VIEW key (needed to scan) and public spend key,
never its spend key. `expected` is what the recipient's own view-only monero-wallet-rpc reported.
"""

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from testkit.monero_node import MoneroNode, new_keys, primary_address, random_address  # noqa: E402
from testkit.rpc import NodeRPCError  # noqa: E402
from watcherd.chains.monero.crypto import SubaddressDeriver, scalar_base  # noqa: E402


def payments_plan(subs: SubaddressDeriver) -> list[dict[str, int]]:
    """Mostly what customers send: one destination + change (2 outputs, 1 tx public key); a quarter pay three
    destinations, two of them our subaddresses (additional tx public keys)."""
    plan = []
    for i in range(24):
        if i % 4 == 1:
            plan.append({random_address(): 10**10 + i, subs.address(0, 2)[0]: 2 * 10**11 + i,
                         subs.address(1, 1)[0]: 3 * 10**11 + i})
        elif i % 3 == 0:
            plan.append({subs.address(0, 1 + i % 5)[0]: 10**11 + i})
        else:
            plan.append({random_address(): 10**10 + i})
    return plan


def random_subaddress() -> str:
    spend, view = new_keys()
    return SubaddressDeriver(view, scalar_base(spend), "mainnet").address(0, 1)[0]


def chain_plan(subs: SubaddressDeriver) -> list[dict[str, int]]:
    """Traffic as a merchant's watcher sees a chain: 1 tx in 20 pays one of our subaddresses; the others pay
    strangers: mostly one address + change, 1 in 6 a subaddress, 1 in 6 three destinations with subaddresses
    among them (additional tx public keys, 4 outputs)."""
    plan = []
    for i in range(160):
        if i % 20 == 0:
            plan.append({subs.address(0, 1 + i // 20 % 5)[0]: 10**11 + i})
        elif i % 6 == 1:
            plan.append({random_subaddress(): 10**10 + i, random_subaddress(): 2 * 10**10 + i,
                         random_address(): 3 * 10**10 + i})
        elif i % 6 == 4:
            plan.append({random_subaddress(): 10**10 + i})
        else:
            plan.append({random_address(): 10**10 + i})
    return plan


def pay(node: MoneroNode, destinations: dict[str, int]) -> str:
    """Pay, mining 10 blocks to unlock change whenever the customer wallet runs out of unlocked outputs."""
    for _ in range(5):
        try:
            return node.pay(destinations)
        except NodeRPCError as exc:
            if "not enough" not in str(exc).lower():
                raise
            node.mine(10)
    raise RuntimeError("the customer wallet stays short of unlocked money")


def main() -> None:
    kind = sys.argv[1] if len(sys.argv) > 1 else "payments"
    plan_for, filename = {"payments": (payments_plan, "monero_regtest.json"),
                          "chain": (chain_plan, "monero_regtest_chain.json")}[kind]
    with tempfile.TemporaryDirectory() as tmp:
        node = MoneroNode("xmr", Path(tmp))
        node.start()
        try:
            spend, view = new_keys()
            subs = SubaddressDeriver(view, scalar_base(spend), "mainnet")
            txids = []
            for i, destinations in enumerate(plan_for(subs)):
                txids.append(pay(node, destinations))
                if i % 8 == 7:
                    node.mine(1)
            node.mine(1)
            decoded = {}
            for chunk in range(0, len(txids), 4):
                # the chain corpus is pruned, as watcherd fetches transactions: no signatures
                answer = node.other("get_transactions", txs_hashes=txids[chunk:chunk + 4], decode_as_json=True,
                                    prune=kind == "chain")
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
    Path(__file__).with_name(filename).write_text(json.dumps(out, indent=1 if kind == "payments" else None) + "\n")
    print(f"{len(txids)} txs, {len(expected)} owned outputs")


if __name__ == "__main__":
    main()
