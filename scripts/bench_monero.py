"""The Monero section of scripts/bench: view-key scanning throughput, and monero-wallet-rpc for comparison.

Throughput: the real regtest transactions of tests/vectors/monero_regtest.json, parsed from monerod's JSON
and scanned (key derivation, view tags, subaddress lookup, amount decoding, commitment check) on one core,
against a watch set of 100,000 subaddress keys. Full runs also start a real monerod, mine blocks of payments,
and time (a) watcherd's fetch + scan of those blocks and (b) a view-only monero-wallet-rpc refreshing over
the same blocks, in the same run.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from watcherd.chains.xmr_crypto import Scanner, SubaddressDeriver, parse_tx_json, sc_reduce32, scalar_base

TARGET_TX_PER_S = 4_000
VECTORS = Path(__file__).resolve().parent.parent / "tests" / "vectors" / "monero_regtest.json"


def section_monero(settings: Any, work: Any, *, figure: Any, best_seconds: Any, outcome: Any) -> Any:
    vectors = json.loads(VECTORS.read_text())
    view = bytes.fromhex(vectors["view_key"])
    subs = SubaddressDeriver(view, bytes.fromhex(vectors["spend_public"]), "mainnet")
    watched = {subs.spend_key(major, minor) for major in range(3) for minor in range(8)}
    watched |= {os.urandom(32) for _ in range(100_000)}
    repeats = 25 if settings.quick else 250
    corpus = [(e["txid"], e["json"]) for e in vectors["txs"]] * repeats
    scanner = Scanner(view)
    owned_per_pass = sum(len(scanner.scan(parse_tx_json(t, j), watched)) for t, j in corpus[: len(vectors["txs"])])
    expected = len(vectors["expected"])
    if owned_per_pass < expected:
        outcome.broken.append(f"monero scan found {owned_per_pass} owned outputs, the wallet found {expected}")

    def run() -> None:
        for txid, tx in corpus:
            scanner.scan(parse_tx_json(txid, tx), watched)

    seconds = best_seconds(run, settings.rounds)
    rate = len(corpus) / seconds
    # the common case on a live chain: transactions that pay someone else (view tags reject every output)
    stranger = Scanner(sc_reduce32(os.urandom(32)))
    stranger_seconds = best_seconds(lambda: [stranger.scan(parse_tx_json(t, j), watched) for t, j in corpus],
                                    settings.rounds)
    share = owned_per_pass / sum(len(parse_tx_json(t, j).outputs) for t, j in corpus[: len(vectors["txs"])])
    figure("monero corpus", f"{len(vectors['txs'])} real regtest txs x {repeats}, 100,000 watched subaddresses, "
                            f"{share:.0%} of the outputs ours")
    figure("monero scan throughput (one core)", f"{rate:,.0f} tx/s ({seconds / len(corpus) * 1e6:.0f} us/tx)")
    figure("monero scan, same txs paying another wallet",
           f"{len(corpus) / stranger_seconds:,.0f} tx/s ({stranger_seconds / len(corpus) * 1e6:.0f} us/tx)")
    outcome.targets.append((f"monero scan >= {TARGET_TX_PER_S:,} tx/s", rate >= TARGET_TX_PER_S))
    if settings.quick:
        figure("monero wallet-rpc comparison", "skipped in a quick run")
        return outcome
    _versus_wallet_rpc(figure, outcome)
    return outcome


def _versus_wallet_rpc(figure: Any, outcome: Any) -> None:
    from watcherd.devnet_monero import MoneroNode, new_keys, primary_address

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
                for chunk in range(0, len(hashes), 4):
                    answer = node.other("get_transactions", txs_hashes=hashes[chunk:chunk + 4], decode_as_json=True)
                    for entry in answer["txs"]:
                        t0 = time.perf_counter()
                        owned += len(scanner.scan(parse_tx_json(entry["tx_hash"], json.loads(entry["as_json"])),
                                                  watched))
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
