"""The faults real nodes produce, between the daemon and real regtest nodes: a busy or flaky node must never
cause a wrong status, a stall, or a reorg that did not happen; a node answering garbage forever stops only its
own chain. The faults come from testkit/faultproxy.py."""

from __future__ import annotations

import time

from conftest import scaled
from harness import Daemon, chain_table, eth_table, monero_table

from testkit.faultproxy import FaultProxy
from testkit.monero_node import new_keys, primary_address

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
        xmr_node.mine(2)
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
