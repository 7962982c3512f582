"""The daemon end to end against a real monerod regtest: view key only, ZMQ wake-ups, RPC truth.

The operator's keys are made fresh per test; the daemon's config holds only the primary address and the
private VIEW key. A monero-wallet-rpc customer wallet pays (it is the customer, never the operator).
"""

from __future__ import annotations

import time
from pathlib import Path

from harness import Daemon, critical_lines, monero_table, readiness, wait_delivered, wait_stopped

from testkit.monero_node import new_keys, primary_address
from watcherd.chains.monero.crypto import SubaddressDeriver, scalar_base

XMR = 10**12


class Operator:
    """The operator's wallet: its seed stays here; only the address and the view key reach the daemon."""

    def __init__(self):
        self.spend, self.view = new_keys()
        self.address = primary_address(self.spend, self.view)
        self.subaddresses = SubaddressDeriver(self.view, scalar_base(self.spend), "mainnet")

    def table(self, node, confirmations: int, **extra) -> str:
        return monero_table("xmr", node, primary_address=self.address, view_key=self.view.hex(),
                            confirmations=confirmations, **extra)


def wait_ready(daemon: Daemon, timeout: float = 30) -> None:
    """Invoices made before the first catch-up would be fine too; waiting keeps 'mined before' unambiguous."""
    deadline = time.monotonic() + timeout
    while daemon.metric("watcherd_node_up", chain="xmr") != 1:
        assert time.monotonic() < deadline, daemon.log_tail()
        time.sleep(0.1)


def test_exact_payment_pool_then_confirmed(xmr_node, daemon_factory, receiver):
    """processing as soon as the pool has the tx (ZMQ), paid only at the required confirmations; integer
    piconero everywhere; the subaddress is what monero-wallet-rpc would derive for (0, 1)."""
    operator = Operator()
    daemon = daemon_factory(operator.table(xmr_node, confirmations=3))
    wait_ready(daemon)
    invoice = daemon.create_invoice("xmr", "1.25", order_id="X-1")
    assert invoice["address"] == operator.subaddresses.address(0, 1)[0]
    assert invoice["address"].startswith("8") and invoice["asset"] == "XMR"
    assert invoice["payment_uri"] == f"monero:{invoice['address']}?tx_amount=1.25"
    txid = xmr_node.pay(invoice["address"], 1_250_000_000_000)
    processing = daemon.wait_status(invoice["id"], "processing", timeout=15)
    assert processing["payments"][0]["txid"] == txid and processing["payments"][0]["status"] == "pending"
    assert processing["amount_received_atomic"] == "1250000000000"
    xmr_node.mine(2)
    time.sleep(1.0)
    assert daemon.invoice(invoice["id"])["status"] == "processing"  # 2 of 3 confirmations
    xmr_node.mine(1)
    paid = daemon.wait_status(invoice["id"], "paid", timeout=20)
    payment = paid["payments"][0]
    assert (payment["amount"], payment["amount_atomic"], payment["confirmations"]) == ("1.25", "1250000000000", 3)
    assert payment["block_height"] == xmr_node.tip()[0] - 2 and paid["exception"] is None
    events = wait_delivered(receiver, invoice["id"], ["unpaid", "processing", "paid"])
    assert [e["type"] for e in events] == ["invoice.created", "invoice.processing", "invoice.paid"]


def test_underpaid_topup_overpaid_and_two_invoices_in_one_tx(xmr_node, daemon_factory):
    operator = Operator()
    daemon = daemon_factory(operator.table(xmr_node, confirmations=1))
    wait_ready(daemon)
    under = daemon.create_invoice("xmr", "2")
    over = daemon.create_invoice("xmr", "0.5")
    first = daemon.create_invoice("xmr", "0.3")
    second = daemon.create_invoice("xmr", "0.4")
    xmr_node.pay(under["address"], XMR // 2)
    assert daemon.wait_status(under["id"], "unpaid", exception="underpaid")["amount_received"] == "0.5"
    xmr_node.pay(over["address"], XMR * 7 // 10)
    both = xmr_node.pay({first["address"]: 3 * XMR // 10, second["address"]: 4 * XMR // 10})
    xmr_node.mine(1)
    daemon.wait_status(under["id"], "unpaid", exception="underpaid")
    xmr_node.pay(under["address"], 3 * XMR // 2)  # the top-up
    xmr_node.mine(1)
    topped = daemon.wait_status(under["id"], "paid", exception=None, timeout=20)
    assert topped["amount_received_atomic"] == str(2 * XMR) and len(topped["payments"]) == 2
    assert daemon.wait_status(over["id"], "paid", exception="overpaid")["amount_received"] == "0.7"
    one = daemon.wait_status(first["id"], "paid", exception=None)
    two = daemon.wait_status(second["id"], "paid", exception=None)
    assert one["payments"][0]["txid"] == two["payments"][0]["txid"] == both
    assert one["payments"][0]["vout"] != two["payments"][0]["vout"]
    assert (one["amount_received_atomic"], two["amount_received_atomic"]) == (str(3 * XMR // 10), str(4 * XMR // 10))


def test_other_account_and_other_wallet_do_not_count(xmr_node, daemon_factory):
    """Same tx pays the invoice, the same subaddress index in account 1, and another wallet's subaddress
    (0, 1): only the invoice's own output counts."""
    operator, stranger = Operator(), Operator()
    daemon = daemon_factory(operator.table(xmr_node, confirmations=1))
    wait_ready(daemon)
    invoice = daemon.create_invoice("xmr", "0.1")
    other_account = operator.subaddresses.address(1, 1)[0]
    other_wallet = stranger.subaddresses.address(0, 1)[0]
    txid = xmr_node.pay({invoice["address"]: XMR // 20, other_account: XMR, other_wallet: XMR})
    shown = daemon.wait_status(invoice["id"], "unpaid", exception="underpaid")
    assert [p["txid"] for p in shown["payments"]] == [txid]
    assert shown["amount_received_atomic"] == str(XMR // 20)
    xmr_node.mine(1)
    time.sleep(1.5)
    assert daemon.invoice(invoice["id"])["amount_received_atomic"] == str(XMR // 20)


def test_reorg_with_pop_blocks(xmr_node, daemon_factory, receiver):
    """pop_blocks takes the payment's block away: paid -> processing; re-mined: paid again, with events."""
    operator = Operator()
    daemon = daemon_factory(operator.table(xmr_node, confirmations=2))
    wait_ready(daemon)
    invoice = daemon.create_invoice("xmr", "0.2")
    txid = xmr_node.pay(invoice["address"], XMR // 5)
    daemon.wait_status(invoice["id"], "processing")
    first_block = xmr_node.mine(2)[0]
    daemon.wait_status(invoice["id"], "paid")
    xmr_node.pop_blocks(2)
    back = daemon.wait_status(invoice["id"], "processing", timeout=20,
                              where=lambda inv: inv["payments"][0]["block_height"] is None)
    assert back["payments"][0]["txid"] == txid
    assert txid in xmr_node.pool(), "monerod returns a popped block's txs to its pool"
    xmr_node.mine(2)
    again = daemon.wait_status(invoice["id"], "paid", timeout=20)
    assert again["payments"][0]["block_hash"] != first_block and again["amount_received_atomic"] == str(XMR // 5)
    wait_delivered(receiver, invoice["id"], ["unpaid", "processing", "paid", "processing", "paid"])
    assert daemon.metric("watcherd_reorgs_total", chain="xmr") >= 1


def test_daemon_sigkill_mid_flow(xmr_node, daemon_factory, receiver):
    """The daemon is SIGKILLed after seeing the payment in the pool; blocks are mined while it is down: on
    restart it catches up from its cursor and ends paid, every event delivered once."""
    operator = Operator()
    daemon = daemon_factory(operator.table(xmr_node, confirmations=2))
    wait_ready(daemon)
    invoice = daemon.create_invoice("xmr", "0.3")
    txid = xmr_node.pay(invoice["address"], 3 * XMR // 10)
    assert daemon.wait_status(invoice["id"], "processing", timeout=30)["payments"][0]["txid"] == txid
    daemon.kill()
    xmr_node.mine(3)
    daemon.start()
    daemon.wait_status(invoice["id"], "paid", timeout=30)
    events = wait_delivered(receiver, invoice["id"], ["unpaid", "processing", "paid"])
    assert len({e["id"] for e in events}) == 3


def test_monerod_restart_while_paying(xmr_node, daemon_factory, receiver):
    """monerod goes away under a running daemon and comes back on the same chain: the daemon notices (node
    down), reconnects by itself (RPC and ZMQ), sees the payment made right after the restart once, ends paid
    at the required confirmations, and never dies."""
    operator = Operator()
    daemon = daemon_factory(operator.table(xmr_node, confirmations=2))
    wait_ready(daemon)
    invoice = daemon.create_invoice("xmr", "0.35")
    tip_before = xmr_node.tip()
    xmr_node.stop_monerod()
    deadline = time.monotonic() + 30
    while daemon.metric("watcherd_node_up", chain="xmr") != 0:
        assert time.monotonic() < deadline, "the daemon did not notice monerod was gone\n" + daemon.log_tail()
        time.sleep(0.1)
    xmr_node.restart()
    assert xmr_node.tip() == tip_before, "monerod came back on another chain (regtest without --keep-fakechain?)"
    txid = xmr_node.pay(invoice["address"], 35 * XMR // 100)
    processing = daemon.wait_status(invoice["id"], "processing", timeout=30)
    assert [p["txid"] for p in processing["payments"]] == [txid]
    assert daemon.metric("watcherd_node_up", chain="xmr") == 1
    xmr_node.mine(2)
    paid = daemon.wait_status(invoice["id"], "paid", timeout=30)
    assert len(paid["payments"]) == 1 and paid["amount_received_atomic"] == str(35 * XMR // 100)
    assert paid["payments"][0]["confirmations"] == 2 and paid["exception"] is None
    events = wait_delivered(receiver, invoice["id"], ["unpaid", "processing", "paid"])
    assert len({e["id"] for e in events}) == 3
    assert daemon.alive(), daemon.log_tail()


def test_malformed_zmq_messages_are_counted_and_survived(xmr_node, daemon_factory):
    """Garbage on monerod's feed (bad topic, no separator, not JSON, not tx hashes, split over frames) is logged
    and counted; the daemon keeps running and still finds payments over RPC."""
    import zmq
    from harness import free_port

    port = free_port()
    context = zmq.Context()
    publisher = context.socket(zmq.PUB)
    publisher.bind(f"tcp://127.0.0.1:{port}")
    try:
        operator = Operator()
        daemon = daemon_factory(operator.table(xmr_node, confirmations=1, zmq=False,
                                               zmq_pub=f"tcp://127.0.0.1:{port}"))
        wait_ready(daemon)
        invoice = daemon.create_invoice("xmr", "0.15")
        time.sleep(1.0)  # let the subscription reach the publisher
        garbage = [
            [b"json-minimal-txpool_add:{not json"],
            [b"json-minimal-txpool_add:[{\"id\": \"zz\"}]"],
            [b"json-minimal-txpool_add:[{\"no_id\": 1}]"],
            [b"json-minimal-txpool_addition:[]"],
            [b"json-minimal-chain_main"],
            [b"json-minimal-txpool_add:[", b"\xff\xfe"],
        ]
        for frames in garbage:
            publisher.send_multipart(frames)
        # well formed but unknown to monerod: not malformed, just nothing to find
        publisher.send_multipart([b"json-minimal-txpool_add:[{\"id\": \"" + b"00" * 32 + b"\"}]"])
        deadline = time.monotonic() + 10
        while daemon.metric("watcherd_malformed_messages_total", chain="xmr", source="zmq") < len(garbage):
            assert time.monotonic() < deadline, daemon.log_tail()
            time.sleep(0.1)
        assert daemon.alive()
        txid = xmr_node.pay(invoice["address"], 15 * XMR // 100)
        shown = daemon.wait_status(invoice["id"], "processing", timeout=15)
        assert [p["txid"] for p in shown["payments"]] == [txid]
        xmr_node.mine(1)
        daemon.wait_status(invoice["id"], "paid", timeout=20)
        assert daemon.metric("watcherd_malformed_messages_total", chain="xmr", source="zmq") == len(garbage)
        assert "ignored a malformed ZMQ message" in daemon.log_tail(1_000_000) and daemon.alive()
    finally:
        publisher.close(linger=0)
        context.term()


def test_a_mainnet_chain_pointed_at_a_regtest_monerod_is_refused(xmr_node, daemon_factory):
    """Regtest shares mainnet's addresses and genesis block: only monerod's nettype ("fakechain") tells a
    mainnet config it is fed free coins. One CRITICAL line, the chain stopped in /readyz and the metric."""
    daemon = daemon_factory(Operator().table(xmr_node, confirmations=1, network="mainnet"))
    refusal = (f"chains.xmr: the node at {xmr_node.rpc_url} serves Monero regtest (nettype fakechain), the config "
               "says network = 'mainnet'; refusing to follow it (wrong node, or wrong config?)")
    assert wait_stopped(daemon, "xmr") == refusal
    [line] = critical_lines(daemon)
    assert refusal in line
    assert daemon.metric("watcherd_chain_stopped", chain="xmr", reason="network") == 1
    assert readiness(daemon)["chains"]["xmr"]["processed_height"] is None


def test_the_monero_programs_run_in_their_node_directory(xmr_node):
    """monerod and monero-wallet-rpc run in the node's own directory: a log they write where they run (as
    monero-wallet-rpc.log, when no --log-file applies) lands there, never in the checkout the tests run from."""
    for pid in (xmr_node.pid, xmr_node.wallet_pid):
        assert Path(f"/proc/{pid}/cwd").resolve() == xmr_node.datadir.resolve()
