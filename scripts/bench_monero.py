"""The Monero section of scripts/bench: view-key scanning throughput, and monero-wallet-rpc for comparison.

Throughput: real regtest transactions (tests/vectors/make_monero_regtest.py), each decoded from the JSON text
monerod returns for it (pruned, as the daemon asks for it) and scanned (key derivation, view tags, subaddress
lookup, amount decoding, commitment check) on one core, against a watch set of 100,000 subaddress keys, over
two corpora:
- chain-like (the target): 160 txs as a merchant sees a chain, 1 in 20 paying us;
- payment-heavy (the worst case): 24 txs, half of them paying us, each owned output costing two more
  fixed-base multiplications and a commitment check.
Full runs also start a real monerod, mine blocks of payments, and time (a) watcherd's fetch + scan of those
blocks and (b) a view-only monero-wallet-rpc refreshing over the same blocks, in the same run.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from watcherd.chains.monero.adapter import decode_tx
from watcherd.chains.monero.crypto import SubaddressDeriver, scalar_base
from watcherd.chains.monero.rpc import TX_BATCH
from watcherd.chains.monero.scan import Scanner

TARGET_TX_PER_S = 4_000
VECTORS = Path(__file__).resolve().parent.parent / "tests" / "vectors"
CORPORA = [("chain-like", "monero_regtest_chain.json", 40), ("payment-heavy", "monero_regtest.json", 250)]


def section_monero(settings: Any, work: Any, *, figure: Any, best_seconds: Any, outcome: Any) -> Any:
    for label, filename, repeats in CORPORA:
        vectors = json.loads((VECTORS / filename).read_text())
        view = bytes.fromhex(vectors["view_key"])
        subs = SubaddressDeriver(view, bytes.fromhex(vectors["spend_public"]), "mainnet")
        watched = {subs.spend_key(major, minor) for major in range(3) for minor in range(8)}
        watched |= {os.urandom(32) for _ in range(100_000)}
        # the text of get_transactions(decode_as_json, prune): the tx's JSON without its signatures
        txs = [(e["txid"], json.dumps({k: v for k, v in e["json"].items() if k != "rctsig_prunable"}))
               for e in vectors["txs"]]
        corpus = txs * (repeats // 10 if settings.quick else repeats)
        scanner = Scanner(view)
        owned = sum(len(scanner.scan(decode_tx(t, text), watched)) for t, text in txs)
        if owned != len(vectors["expected"]):
            outcome.broken.append(f"monero {label} scan found {owned} owned outputs, "
                                  f"the wallet found {len(vectors['expected'])}")

        def run(corpus: list = corpus, scanner: Scanner = scanner, watched: set = watched) -> None:
            for txid, text in corpus:
                scanner.scan(decode_tx(txid, text), watched)

        seconds = best_seconds(run, settings.rounds)
        rate = len(corpus) / seconds
        paying = len({txid for txid, *_ in vectors["expected"]})
        outputs = sum(len(decode_tx(t, text).outputs) for t, text in txs)
        figure(f"monero {label} corpus", f"{len(txs)} real regtest txs x {len(corpus) // len(txs)}, "
                                         f"{paying} of them paying us ({owned} of {outputs} outputs), "
                                         "100,000 watched subaddresses")
        figure(f"monero {label} scan (one core)", f"{rate:,.0f} tx/s ({seconds / len(corpus) * 1e6:.0f} us/tx)")
        if label == "chain-like":
            outcome.targets.append((f"monero chain-like scan >= {TARGET_TX_PER_S:,} tx/s", rate >= TARGET_TX_PER_S))
    if settings.quick:
        figure("monero wallet-rpc comparison", "skipped in a quick run")
        return outcome
    _versus_wallet_rpc(figure, outcome)
    return outcome


def _versus_wallet_rpc(figure: Any, outcome: Any) -> None:
    from testkit.monero_node import MoneroNode, new_keys, primary_address

    with tempfile.TemporaryDirectory() as tmp:
        node = MoneroNode("xmr", Path(tmp))
        node.start()
        try:
            spend, view = new_keys()
            subs = SubaddressDeriver(view, scalar_base(spend), "mainnet")
            start_height = node.tip()[0] + 1
            for i in range(30):
                node.pay({subs.address(0, 1 + i % 4)[0]: 10**10 + i})
                if i % 6 == 5:
                    node.mine(1)
            node.mine(1)
            end_height = node.tip()[0]
            watched = {subs.spend_key(0, i) for i in range(1, 5)}
            scanner = Scanner(view)

            started = time.perf_counter()
            txs, owned, scan_seconds = 0, 0, 0.0
            for height in range(start_height, end_height + 1):
                block = node.rpc("get_block", height=height)
                hashes = block.get("tx_hashes") or []
                for chunk in range(0, len(hashes), TX_BATCH):  # as the daemon fetches them
                    answer = node.other("get_transactions", txs_hashes=hashes[chunk:chunk + TX_BATCH],
                                        decode_as_json=True, prune=True)
                    for entry in answer["txs"]:
                        t0 = time.perf_counter()
                        owned += len(scanner.scan(decode_tx(entry["tx_hash"], entry["as_json"]), watched))
                        scan_seconds += time.perf_counter() - t0
                        txs += 1
            ours = time.perf_counter() - started

            started = time.perf_counter()
            node.wallet("generate_from_keys", filename="bench-viewonly", address=primary_address(spend, view),
                        viewkey=view.hex(), password="", restore_height=start_height)
            for _ in range(4):
                node.wallet("create_address", account_index=0)
            node.wallet("refresh", start_height=start_height)
            theirs = time.perf_counter() - started
            credited = len(node.wallet("get_transfers", **{"in": True}).get("in", []))
        finally:
            node.stop()
    blocks = end_height - start_height + 1
    if owned != 30 or credited != 30:
        outcome.broken.append(f"monero comparison: watcherd found {owned}, wallet-rpc {credited}, 30 were paid")
    figure("monero comparison blocks", f"{blocks} blocks, {txs} txs (30 paying the watched wallet)")
    figure("monero watcherd fetch + scan", f"{ours * 1000:.0f} ms (scan alone {scan_seconds * 1000:.1f} ms)")
    figure("monero wallet-rpc view-only restore + refresh", f"{theirs * 1000:.0f} ms")
    outcome.targets.append(("monero watcherd faster than wallet-rpc refresh", ours < theirs))
