"""The daemon end to end against real regtest nodes: the SV bitcoind over ZMQ, litecoind by polling.

Every test runs the real `watcherd run` process with its own store, a real webhook receiver that verifies
signatures, and pays with the node's own wallet.
"""

from __future__ import annotations

import time
from decimal import Decimal

import pytest
from harness import chain_table, critical_lines, readiness, wait_delivered, wait_stopped


def test_exact_payment_over_zmq(bsv_node, daemon_factory, receiver):
    """ZMQ bitcoind, p2pkh: unpaid -> processing within 1 s of the tx entering the mempool -> paid after 2."""
    daemon = daemon_factory(chain_table("btc", bsv_node, confirmations=2))
    invoice = daemon.create_invoice("btc", "0.015", order_id="ORDER-1")
    assert invoice["status"] == "unpaid" and invoice["address"][0] in "mn"
    assert invoice["payment_uri"] == f"bitcoin:{invoice['address']}?amount=0.015"
    txid = bsv_node.pay(invoice["address"], Decimal("0.015"))
    paid_at = time.monotonic()
    processing = daemon.wait_status(invoice["id"], "processing", timeout=5)
    assert time.monotonic() - paid_at < 1.0, "processing must follow the mempool within 1 s"
    assert processing["payments"][0]["txid"] == txid
    assert processing["payments"][0]["status"] == "pending"
    bsv_node.mine(1)
    time.sleep(1.0)
    assert daemon.invoice(invoice["id"])["status"] == "processing"  # one confirmation of two
    bsv_node.mine(1)
    paid = daemon.wait_status(invoice["id"], "paid")
    payment = paid["payments"][0]
    assert (payment["amount"], payment["amount_atomic"], payment["confirmations"]) == ("0.015", "1500000", 2)
    assert payment["status"] == "confirmed" and payment["block_height"] == bsv_node.tip()[0] - 1
    assert paid["exception"] is None and paid["amount_received_atomic"] == "1500000"
    events = wait_delivered(receiver, invoice["id"], ["unpaid", "processing", "paid"])
    assert [e["type"] for e in events] == ["invoice.created", "invoice.processing", "invoice.paid"]
    assert events[-1]["invoice"]["payments"][0]["txid"] == txid
    assert receiver.rejected == 0
    # what an SRE's scrape shows at this point
    tip = bsv_node.tip()[0]
    assert daemon.metric("watcherd_node_tip_height", chain="btc") == tip
    assert daemon.metric("watcherd_processed_height", chain="btc") == tip
    assert daemon.metric("watcherd_lag_blocks", chain="btc") == 0
    assert daemon.metric("watcherd_node_up", chain="btc") == 1
    assert daemon.metric("watcherd_invoices", chain="btc", status="paid") == 1
    assert daemon.metric("watcherd_notifications_delivered_total", transport="webhook") == 3
    assert daemon.metric("watcherd_notifications_pending", transport="webhook") == 0
    assert daemon.metric("watcherd_detection_latency_seconds_count", chain="btc") >= 2
    assert daemon.metric("watcherd_delivery_latency_seconds_count", transport="webhook") == 3


def test_exact_payment_by_polling_bech32(ltc_node, daemon_factory, receiver):
    """litecoind has no ZMQ: the same flow through polling, with bech32 (p2wpkh) addresses."""
    daemon = daemon_factory(chain_table("ltc", ltc_node, confirmations=2))
    invoice = daemon.create_invoice("ltc", "0.5")
    assert invoice["address"].startswith("rltc1q")
    assert invoice["payment_uri"].startswith("litecoin:rltc1q")
    txid = ltc_node.pay(invoice["address"], "0.5")
    assert daemon.wait_status(invoice["id"], "processing", timeout=5)["payments"][0]["txid"] == txid
    ltc_node.mine(2)
    paid = daemon.wait_status(invoice["id"], "paid")
    assert paid["payments"][0]["amount_atomic"] == "50000000"
    wait_delivered(receiver, invoice["id"], ["unpaid", "processing", "paid"])


def test_underpaid_topup_overpaid_and_late(bsv_node, daemon_factory):
    daemon = daemon_factory(chain_table("btc", bsv_node, confirmations=1))
    under = daemon.create_invoice("btc", "0.2")
    over = daemon.create_invoice("btc", "0.1")
    late = daemon.create_invoice("btc", "0.1", expires_in=1)
    bsv_node.pay(under["address"], "0.05")
    shown = daemon.wait_status(under["id"], "unpaid", exception="underpaid")
    assert shown["amount_received"] == "0.05"
    bsv_node.pay(over["address"], "0.15")
    daemon.wait_status(late["id"], "expired")
    bsv_node.pay(late["address"], "0.1")
    daemon.wait_status(late["id"], "processing", exception="paid_late")
    bsv_node.mine(1)
    daemon.wait_status(under["id"], "unpaid", exception="underpaid")  # confirmed, still short
    bsv_node.pay(under["address"], "0.15")  # the top-up
    bsv_node.mine(1)
    topped = daemon.wait_status(under["id"], "paid", exception=None)
    assert topped["amount_received"] == "0.2" and len(topped["payments"]) == 2
    assert daemon.wait_status(over["id"], "paid", exception="overpaid")["amount_received"] == "0.15"
    daemon.wait_status(late["id"], "paid", exception="paid_late")


def test_reorg_takes_invoice_back_then_pays_again(bsv_node, daemon_factory, receiver):
    """invalidateblock on the block holding the payment: paid -> processing, then paid again once re-mined."""
    daemon = daemon_factory(chain_table("btc", bsv_node, confirmations=2))
    invoice = daemon.create_invoice("btc", "0.01")
    txid = bsv_node.pay(invoice["address"], "0.01")
    daemon.wait_status(invoice["id"], "processing")
    first_block = bsv_node.mine(1)[0]
    bsv_node.mine(1)
    daemon.wait_status(invoice["id"], "paid")
    bsv_node.invalidate(first_block)
    back = daemon.wait_status(invoice["id"], "processing", where=lambda inv: inv["payments"][0]["block_height"] is None)
    assert back["payments"][0]["txid"] == txid and back["amount_received"] == "0.01"
    bsv_node.mine(2)
    again = daemon.wait_status(invoice["id"], "paid")
    assert again["payments"][0]["txid"] == txid and again["amount_received"] == "0.01"
    assert again["payments"][0]["block_hash"] != first_block
    wait_delivered(receiver, invoice["id"], ["unpaid", "processing", "paid", "processing", "paid"])


def test_rbf_replacement_counts_once(ltc_node, daemon_factory):
    """bumpfee on litecoind: the original is marked replaced, only the replacement counts."""
    daemon = daemon_factory(chain_table("ltc", ltc_node, confirmations=1))
    invoice = daemon.create_invoice("ltc", "0.3")
    original = ltc_node.pay(invoice["address"], "0.3", replaceable=True)
    daemon.wait_status(invoice["id"], "processing")
    replacement = ltc_node.bump_fee(original)
    assert replacement != original

    def statuses():
        return {p["txid"]: p["status"] for p in daemon.invoice(invoice["id"])["payments"]}

    deadline = time.monotonic() + 10
    while statuses() != {original: "replaced", replacement: "pending"} and time.monotonic() < deadline:
        time.sleep(0.1)
    assert statuses() == {original: "replaced", replacement: "pending"}
    assert daemon.invoice(invoice["id"])["amount_received"] == "0.3"
    ltc_node.mine(1)
    paid = daemon.wait_status(invoice["id"], "paid")
    assert paid["amount_received"] == "0.3" and paid["exception"] is None
    assert {p["txid"]: p["status"] for p in paid["payments"]} == {original: "replaced", replacement: "confirmed"}


def test_sigkill_before_confirmation_then_restart(bsv_node, daemon_factory, receiver):
    """Killed after the payment is seen; blocks mined while down; on restart: paid, every event delivered."""
    daemon = daemon_factory(chain_table("btc", bsv_node, confirmations=2))
    invoice = daemon.create_invoice("btc", "0.02")
    bsv_node.pay(invoice["address"], "0.02")
    daemon.wait_status(invoice["id"], "processing")
    daemon.kill()
    bsv_node.mine(3)
    daemon.start()
    daemon.wait_status(invoice["id"], "paid")
    events = wait_delivered(receiver, invoice["id"], ["unpaid", "processing", "paid"])
    # a duplicate delivery may only ever repeat an event id already delivered
    ids = [e["id"] for e in events]
    assert len(set(ids)) == 3 and all(e["_header_event_id"] == e["id"] for e in events)


def test_node_restart_while_paying(bsv_node, daemon_factory):
    """The node restarts (ZMQ drops); a payment made right after it comes back is found."""
    daemon = daemon_factory(chain_table("btc", bsv_node, confirmations=1))
    invoice = daemon.create_invoice("btc", "0.03")
    bsv_node.restart()
    txid = bsv_node.pay(invoice["address"], "0.03")
    processing = daemon.wait_status(invoice["id"], "processing", timeout=20)
    assert processing["payments"][0]["txid"] == txid
    bsv_node.mine(1)
    daemon.wait_status(invoice["id"], "paid", timeout=20)
    assert daemon.alive()


def test_malformed_zmq_frames_are_counted_and_survived(bsv_node, tmp_path, daemon_factory):
    """Garbage on the feed is logged and counted; the daemon keeps running and still finds payments."""
    import zmq
    from harness import free_port

    port = free_port()
    context = zmq.Context()
    publisher = context.socket(zmq.PUB)
    publisher.bind(f"tcp://127.0.0.1:{port}")
    try:
        table = chain_table("btc", bsv_node, confirmations=1, zmq=False,
                            zmq_rawtx=f"tcp://127.0.0.1:{port}", zmq_hashblock=f"tcp://127.0.0.1:{port}")
        daemon = daemon_factory(table)
        invoice = daemon.create_invoice("btc", "0.04")
        time.sleep(1.0)  # let the subscription reach the publisher
        publisher.send_multipart([b"rawtx", b"\x01\x02garbage", (0).to_bytes(4, "little")])
        publisher.send_multipart([b"rawtx", b"two frames only"])
        publisher.send_multipart([b"hashblock", b"x" * 32, b"bad-seq"])
        deadline = time.monotonic() + 10
        while daemon.metric("watcherd_malformed_messages_total", chain="btc", source="zmq") < 3:
            assert time.monotonic() < deadline, daemon.log_tail()
            time.sleep(0.1)
        assert daemon.alive()
        # the node's real feed is not connected here: the RPC reconcile the garbage triggered finds the payment
        bsv_node.pay(invoice["address"], "0.04")
        publisher.send_multipart([b"rawtx", b"", (1).to_bytes(4, "little")])
        daemon.wait_status(invoice["id"], "processing", timeout=15)
        assert "ignored a malformed ZMQ message" in daemon.log_tail(200)
    finally:
        publisher.close(linger=0)
        context.term()


def test_garbage_rpc_answers_are_counted_and_survived(tmp_path, daemon_factory):
    """A 'node' answering garbage: logged, counted, retried with backoff; the API stays up, readyz says why."""
    import threading
    import urllib.error
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Garbage(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"<html>this is not JSON-RPC</html>")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Garbage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        fake_node = type("N", (), {"kind": "bsv", "rpc_url": f"http://127.0.0.1:{server.server_address[1]}",
                                   "rpc_user": "u", "rpc_password": "p", "zmq_endpoint": None})
        daemon = daemon_factory(chain_table("btc", fake_node, confirmations=1))
        deadline = time.monotonic() + 10
        while daemon.metric("watcherd_malformed_messages_total", chain="btc", source="rpc") < 2:
            assert time.monotonic() < deadline, daemon.log_tail()
            time.sleep(0.1)
        assert daemon.alive() and daemon.api("GET", "/healthz") == {"status": "ok"}
        assert daemon.metric("watcherd_node_up", chain="btc") == 0
        with pytest.raises(urllib.error.HTTPError) as not_ready:
            daemon.api("GET", "/readyz")
        assert not_ready.value.code == 503
        not_ready.value.close()
        assert "not a JSON answer" in daemon.log_tail(200)
        # invoices can still be created while the node is unusable: addresses are derived locally
        assert daemon.create_invoice("btc", "1")["status"] == "unpaid"
    finally:
        server.shutdown()
        server.server_close()


def test_reorg_while_the_daemon_is_down(bsv_node, daemon_factory, receiver):
    """The block holding a payment is replaced while watcherd is down: on restart it walks back from its
    cursor to the common ancestor, undoes the block, and re-applies the new chain."""
    daemon = daemon_factory(chain_table("btc", bsv_node, confirmations=1))
    invoice = daemon.create_invoice("btc", "0.05")
    txid = bsv_node.pay(invoice["address"], "0.05")
    daemon.wait_status(invoice["id"], "processing")  # seen in the pool first, as the events below expect
    first_block = bsv_node.mine(1)[0]
    daemon.wait_status(invoice["id"], "paid")
    daemon.kill()
    bsv_node.invalidate(first_block)
    bsv_node.mine(3)  # a longer chain that includes the payment again, in another block
    daemon.start()
    wait_delivered(receiver, invoice["id"], ["unpaid", "processing", "paid", "processing", "paid"])
    paid = daemon.invoice(invoice["id"])
    assert paid["status"] == "paid" and paid["payments"][0]["txid"] == txid
    assert paid["payments"][0]["block_hash"] != first_block
    assert daemon.metric("watcherd_reorgs_total", chain="btc") == 1


def test_a_bitcoin_chain_pointed_at_litecoind_is_refused(ltc_node, daemon_factory):
    """A Bitcoin regtest chain whose rpc_url is litecoind's follows nothing of it: one CRITICAL line naming what
    the node serves and what the config says, /readyz not ready for that chain with the same reason,
    watcherd_chain_stopped{reason="network"}; the matching config on the same node, beside it, is followed."""
    daemon = daemon_factory(chain_table("btc", ltc_node, confirmations=1, zmq=False, coin="bitcoin")
                            + chain_table("ltc", ltc_node, confirmations=1, zmq=False))
    refusal = (f"chains.btc: the node at {ltc_node.rpc_url} serves litecoin regtest (genesis block "
               "530827f38f93b43ed12af0b3ad25a288dc02ed74d6d7857862df51fc56c416f9), the config says "
               "coin = 'bitcoin', network = 'regtest'; refusing to follow it (wrong node, or wrong config?)")
    assert wait_stopped(daemon, "btc") == refusal
    [line] = critical_lines(daemon)
    assert refusal in line and "this chain stops (the others go on)" in line
    assert daemon.metric("watcherd_chain_stopped", chain="btc", reason="network") == 1
    assert daemon.metric("watcherd_processed_height", chain="btc") == 0  # not even a first cursor
    invoice = daemon.create_invoice("ltc", "0.1")
    ltc_node.pay(invoice["address"], "0.1")
    ltc_node.mine(1)
    daemon.wait_status(invoice["id"], "paid")
    shown = readiness(daemon)
    assert shown["chains"]["ltc"]["ready"] and "stopped" not in shown["chains"]["ltc"]
    assert not shown["ready"] and shown["chains"]["btc"]["processed_height"] is None


def test_a_reorg_deeper_than_max_reorg_depth_stops_the_chain_and_undoes_nothing(bsv_node, daemon_factory, receiver):
    """invalidateblock three blocks deep on a chain allowed two: the invoice paid in the invalidated block stays
    paid (no webhook takes it back), the chain stops with one CRITICAL line, and /readyz and
    watcherd_chain_stopped{reason="reorg_depth"} say so. (A reorg within the limit is
    test_reorg_takes_invoice_back_then_pays_again.)"""
    daemon = daemon_factory(chain_table("btc", bsv_node, confirmations=1, max_reorg_depth=2))
    invoice = daemon.create_invoice("btc", "0.01")
    bsv_node.pay(invoice["address"], "0.01")
    daemon.wait_status(invoice["id"], "processing")  # seen in the pool first, as the events below expect
    paying_block = bsv_node.mine(1)[0]
    bsv_node.mine(2)
    tip, tip_hash = bsv_node.tip()
    daemon.wait_status(invoice["id"], "paid")
    wait_delivered(receiver, invoice["id"], ["unpaid", "processing", "paid"])
    deadline = time.monotonic() + 20
    while daemon.metric("watcherd_processed_height", chain="btc") != tip:
        assert time.monotonic() < deadline, daemon.log_tail()
        time.sleep(0.1)
    reorgs = daemon.metric("watcherd_reorgs_total", chain="btc")
    bsv_node.invalidate(paying_block)
    bsv_node.mine(4)
    reason = wait_stopped(daemon, "btc")
    assert f"more than max_reorg_depth = 2 blocks below our block {tip} {tip_hash}" in reason, reason
    assert "nothing was disconnected" in reason
    [line] = critical_lines(daemon)
    assert reason in line
    assert daemon.metric("watcherd_chain_stopped", chain="btc", reason="reorg_depth") == 1
    time.sleep(1.0)  # what a disconnect would have sent, it would have sent by now
    shown = daemon.invoice(invoice["id"])
    assert shown["status"] == "paid" and shown["payments"][0]["block_hash"] == paying_block
    assert receiver.statuses(invoice["id"]) == ["unpaid", "processing", "paid"]
    assert daemon.metric("watcherd_reorgs_total", chain="btc") == reorgs
    assert daemon.metric("watcherd_processed_height", chain="btc") == tip
