"""The faults real nodes produce, between the daemon and real regtest nodes: a busy or flaky node must never
cause a wrong status, a stall, or a reorg that did not happen; a node answering garbage forever stops only its
own chain. The faults come from testkit/faultproxy.py."""

from __future__ import annotations

import asyncio
import calendar
import json
import logging
import time
import urllib.error
import urllib.request
from typing import Any

from conftest import scaled, wait_for
from harness import Daemon, chain_table, eth_table, monero_table
from prometheus_client.parser import text_string_to_metric_families

from testkit.faultproxy import GARBAGE_FAULTS, FaultProxy
from testkit.monero_node import new_keys, primary_address
from watcherd.chains import follow

INVOICES = 16


def never_back_from_paid(receiver, invoice_id: str) -> None:
    """The webhooks delivered for the invoice reach paid (waited for) and nothing after it leaves paid."""
    deadline = time.monotonic() + scaled(20)
    while "paid" not in receiver.statuses(invoice_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    statuses = receiver.statuses(invoice_id)
    assert "paid" in statuses, statuses
    assert statuses[statuses.index("paid"):] == ["paid"] * (len(statuses) - statuses.index("paid")), statuses


def wait_all_paid(daemon: Daemon, invoices: list[dict], seconds: float) -> None:
    deadline = time.monotonic() + scaled(seconds)
    pending = {i["id"] for i in invoices}
    while pending and time.monotonic() < deadline:
        pending = {i for i in pending if daemon.invoice(i)["status"] != "paid"}
        time.sleep(0.1)
    assert not pending, f"{len(pending)} of {len(invoices)} not paid {seconds} s after the last block:\n" \
                        f"{daemon.log_tail(80)}"


def test_busy_bitcoind_never_stalls_nor_invents_a_reorg(bsv_node, daemon_factory, receiver):
    """20% of RPC calls meet a 503, a -28 warm-up, a reset connection or a 2.5 s stall: all 16 invoices are paid
    within 10 s of their last block, none goes back from paid, and no reorg is counted."""
    with FaultProxy(bsv_node.rpc_url, share=0.2) as proxy:
        daemon = daemon_factory(chain_table("btc", bsv_node, confirmations=2).replace(bsv_node.rpc_url, proxy.url))
        invoices = [daemon.create_invoice("btc", "0.01") for _ in range(INVOICES)]
        for n, invoice in enumerate(invoices):
            bsv_node.pay(invoice["address"], "0.01")
            if n % 4 == 3:
                bsv_node.mine(1)
        bsv_node.mine(2)
        wait_all_paid(daemon, invoices, 10)
        assert sum(proxy.injected.values()) >= 5, proxy.injected
        for invoice in invoices:
            never_back_from_paid(receiver, invoice["id"])
        assert daemon.metric("watcherd_reorgs_total", chain="btc") == 0
        assert daemon.metric("watcherd_node_up", chain="btc") == 1


def test_busy_monerod_never_stalls_nor_invents_a_reorg(xmr_node, daemon_factory, receiver):
    """The same with monerod: 503s, resets and stalls on a fifth of its RPC calls."""
    spend, view = new_keys()
    table = monero_table("xmr", xmr_node, primary_address=primary_address(spend, view), view_key=view.hex(),
                         confirmations=2)
    with FaultProxy(xmr_node.rpc_url, share=0.2, faults=("503", "reset", "stall")) as proxy:
        daemon = daemon_factory(table.replace(xmr_node.rpc_url, proxy.url))
        deadline = time.monotonic() + scaled(30)
        while daemon.metric("watcherd_node_up", chain="xmr") != 1:
            assert time.monotonic() < deadline, daemon.log_tail()
            time.sleep(0.1)
        invoices = [daemon.create_invoice("xmr", "0.01") for _ in range(INVOICES)]
        txids = [xmr_node.pay({invoice["address"]: 10**10 for invoice in half})  # 16 outputs: too large for one tx
                 for half in (invoices[:8], invoices[8:])]
        deadline = time.monotonic() + scaled(20)  # the wallet relays asynchronously: mine once both are in the pool
        while not set(txids) <= set(xmr_node.pool()):
            assert time.monotonic() < deadline, "the payments never reached monerod's pool"
            time.sleep(0.1)
        # a block template made while the second one was still being relayed leaves it for the next block
        for _ in range(5):
            xmr_node.mine(1)
            if not set(txids) & set(xmr_node.pool()):
                break
        xmr_node.mine(1)  # the second confirmation of the last one mined
        wait_all_paid(daemon, invoices, 10)
        assert sum(proxy.injected.values()) >= 3, proxy.injected
        for invoice in invoices:
            never_back_from_paid(receiver, invoice["id"])
        assert daemon.metric("watcherd_reorgs_total", chain="xmr") == 0


def test_anvil_websocket_cut_mid_block(eth_node, daemon_factory, receiver):
    """anvil's websocket dropped right after a block read went up (the answer never comes), a fifth of the
    time: the daemon reconnects, catches up from its cursor, and all 16 invoices are paid, none taken back."""
    with FaultProxy(eth_node.ws_url, share=0.2, websocket=True) as proxy:
        daemon = daemon_factory(eth_table("eth", eth_node, confirmations=2).replace(eth_node.ws_url, proxy.url))
        invoices = [daemon.create_invoice("eth", "0.01") for _ in range(INVOICES)]
        for n, invoice in enumerate(invoices):
            eth_node.pay(invoice["address"], 10**16)
            if n % 4 == 3:
                eth_node.mine(1)
                time.sleep(0.2)
        eth_node.mine(2)
        wait_all_paid(daemon, invoices, 10)
        assert sum(proxy.injected.values()) >= 1, proxy.injected
        for invoice in invoices:
            never_back_from_paid(receiver, invoice["id"])
        assert daemon.metric("watcherd_reorgs_total", chain="eth") == 0


def readiness(daemon: Daemon) -> tuple[int, Any]:
    """/readyz's HTTP status and body, 503 included."""
    return daemon.readiness()


def log_entries(daemon: Daemon, chain: str, since: int = 0) -> list[dict]:
    """The JSON log lines of `chain`'s follower, from line `since` on."""
    lines = daemon.log_path.read_text(errors="replace").splitlines()[since:]
    return [e for e in map(json.loads, lines) if e.get("chain") == chain and e["logger"].startswith("watcherd.chains")]


def btc_samples(daemon: Daemon) -> dict[tuple[str, str], float]:
    """The btc chain's failure and malformed-answer counters from one scrape, by (name, kind or source)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(s.name, s.labels.get("kind") or s.labels.get("source", "")): s.value
            for family in text_string_to_metric_families(text) for s in family.samples
            if s.labels.get("chain") == "btc"
            and s.name in ("watcherd_chain_failures_total", "watcherd_malformed_messages_total")}


def test_one_node_answering_garbage_forever_stops_only_its_chain(tmp_path, bsv_node, ltc_node, receiver):
    """btc's node turns to answering every call with garbage (not JSON, no result, wrongly typed results) and
    never stops: the ltc invoices are still paid and delivered, the daemon stays up, /readyz names btc, the
    outage is one warning in the log, and a btc invoice can still be created (its address comes from the xpub);
    once the node heals, btc catches up from its cursor by itself and that invoice is paid too."""
    # in turn, the follower's first three attempts fail on: not JSON, no result, then the network check's
    # getblockhash answering a list (after a getbestblockhash naming no block)
    garbage = ("notjson", "noresult", "wrongtype", "wrongtype")
    with FaultProxy(bsv_node.rpc_url, share=1.0, faults=garbage, in_turn=True) as proxy:
        proxy.enabled = False  # healthy at first: btc gets its cursor, so what is mined during the outage counts
        chains = (chain_table("btc", bsv_node, confirmations=1).replace(bsv_node.rpc_url, proxy.url)
                  + chain_table("ltc", ltc_node, confirmations=1, zmq=False))
        daemon = Daemon(tmp_path / "d", chains, receiver.url, log_format="json").start()
        try:
            wait_for(lambda: readiness(daemon)[0] == 200, 15, "both chains ready")
            lines_before = len(daemon.log_path.read_text().splitlines())
            proxy.enabled = True  # garbage from now on
            wait_for(lambda: daemon.metric("watcherd_chain_failures_total", chain="btc", kind="node") >= 1, 10,
                     "the btc follower failing")

            # creating works (what an operator wants: the address comes from the xpub, the node is not asked);
            # it cannot expire while its chain is down: its payment may be in a block we could not read yet
            btc_invoice = daemon.create_invoice("btc", "0.02", expires_in=2)
            assert btc_invoice["status"] == "unpaid" and btc_invoice["address"]
            bsv_node.pay(btc_invoice["address"], "0.02")
            mined = bsv_node.mine(1)[0]  # while its node answers garbage: found from the cursor once it heals
            mined_at = bsv_node.rpc("getblockheader", mined)["time"]

            ltc_invoices = [daemon.create_invoice("ltc", "0.01") for _ in range(3)]
            for invoice in ltc_invoices:
                ltc_node.pay(invoice["address"], "0.01")
            ltc_node.mine(1)
            wait_all_paid(daemon, ltc_invoices, 15)
            for invoice in ltc_invoices:
                never_back_from_paid(receiver, invoice["id"])

            assert daemon.alive() and daemon.api("GET", "/healthz") == {"status": "ok"}
            status, report = readiness(daemon)
            assert status == 503 and report["ready"] is False, report
            assert report["chains"]["btc"]["ready"] is False and report["chains"]["ltc"]["ready"] is True, report
            assert daemon.metric("watcherd_node_up", chain="ltc") == 1
            wait_for(lambda: daemon.metric("watcherd_node_up", chain="btc") == 0, 5, "btc node_up 0")
            expires_at = calendar.timegm(time.strptime(btc_invoice["expires_at"], "%Y-%m-%dT%H:%M:%SZ"))
            time.sleep(max(0.0, expires_at + 1.5 - time.time()))  # the expiry loop ticks every second
            assert daemon.invoice(btc_invoice["id"])["status"] == "unpaid"
            assert receiver.statuses(btc_invoice["id"]) == ["unpaid"]

            # the outage is one warning; the retries back off (a handful of attempts, a line or two each)
            wait_for(lambda: daemon.metric("watcherd_chain_failures_total", chain="btc", kind="node") >= 3, 10,
                     "the btc follower retrying")
            scrape = btc_samples(daemon)  # one scrape: the counters agree with each other
            failures = sum(v for (name, _), v in scrape.items() if name == "watcherd_chain_failures_total")
            btc_lines = log_entries(daemon, "btc", lines_before)
            warnings = [e for e in btc_lines if e["level"] in ("warning", "error", "critical")]
            assert len(warnings) == 1 and "this chain retries in" in warnings[0]["msg"], warnings
            assert 3 <= failures <= 8, failures
            # every kind of garbage is the node's fault, never taken for a bug of ours nor for an answer
            assert scrape[("watcherd_chain_failures_total", "node")] == failures, scrape
            assert scrape[("watcherd_malformed_messages_total", "rpc")] == failures, scrape
            assert set(proxy.injected) == set(GARBAGE_FAULTS), proxy.injected
            assert any("getblockhash: answered a list" in e["msg"] for e in btc_lines), btc_lines
            assert not [e for e in btc_lines if "answers" in e["msg"]], btc_lines
            assert len(btc_lines) <= 2 * failures + 2, [e["msg"] for e in btc_lines]
            assert sum(proxy.injected.values()) >= failures, proxy.injected

            proxy.enabled = False  # the node heals: nobody restarts anything
            paid = daemon.wait_status(btc_invoice["id"], "paid", timeout=scaled(40))
            # late or not by the block's time (regtest may stamp blocks ahead of the wall clock after a burst)
            assert paid["exception"] == ("paid_late" if mined_at >= expires_at else None), (paid, mined_at)
            never_back_from_paid(receiver, btc_invoice["id"])
            assert "expired" not in receiver.statuses(btc_invoice["id"])
            wait_for(lambda: readiness(daemon)[0] == 200, 10, "/readyz 200 again")
            assert daemon.metric("watcherd_node_up", chain="btc") == 1
            assert daemon.alive()
        finally:
            assert daemon.stop() == 0


async def test_an_unexpected_follower_failure_is_logged_with_its_traceback(monkeypatch, caplog):
    """What no rule foresaw (a bug of ours meeting an answer) is logged once, with the traceback that says where:
    the warning is written after the `except` block, so it must carry the exception itself."""
    monkeypatch.setattr(follow, "backoff", lambda: iter([0.01] * 100))

    class Follower:
        name = "broken"
        connected = True

    async def session() -> None:
        raise ZeroDivisionError("a bug")

    with caplog.at_level(logging.DEBUG, logger="watcherd.chains.base"):
        task = asyncio.create_task(follow.follow_forever(Follower(), session))  # type: ignore[arg-type]
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.exc_info and warning.exc_info[0] is ZeroDivisionError
    assert "in session" in caplog.text  # the traceback's frame
