"""Issue 9: payments made while watcherd is down. On restart it catches up from its cursor before judging any
invoice missing, and judges lateness by when the chain says the payment was mined, not by when it caught up."""

from __future__ import annotations

import calendar
import time

from conftest import scaled, wait_for
from harness import chain_table, wait_delivered
from test_faults import readiness

from testkit.faultproxy import FaultProxy

EXPECTED = ["unpaid", "processing", "paid"]  # 2 confirmations: the catch-up connects one block at a time


def unix(iso: str) -> int:
    return calendar.timegm(time.strptime(iso, "%Y-%m-%dT%H:%M:%SZ"))


def sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.time()))


def next_block_is_wall_clock(node) -> bool:
    """A new block's time is max(median time past + 1, now): right after a burst of mining (101 blocks at node
    start) the median runs ahead of the wall clock and blocks are stamped in the future. Wait that out."""
    return node.rpc("getblockchaininfo")["mediantime"] < time.time() - 1


def test_paid_while_the_daemon_was_down_is_paid_not_expired_nor_late(bsv_node, daemon_factory, receiver):
    """Stop the daemon, pay and mine, let the invoice expire, start it: the invoice is `paid` without
    `paid_late`, never `expired`, and the payment was first seen at its block's time. The control: an invoice
    whose payment was mined after its expiry, in the same downtime, is judged `paid_late`.

    On restart the node is slow to say its height (getblockcount takes longer than the expiry loop's tick): the
    expiry must wait for the catch-up however long the node takes, never judge in between."""
    wait_for(lambda: next_block_is_wall_clock(bsv_node), 45, "block times back at the wall clock")
    with FaultProxy(bsv_node.rpc_url, share=1.0, faults=("stall",), stall_seconds=1.2,
                    methods=("getblockcount",)) as proxy:
        proxy.enabled = False  # healthy until the restart
        daemon = daemon_factory(chain_table("btc", bsv_node, confirmations=2).replace(bsv_node.rpc_url, proxy.url))
        wait_for(lambda: readiness(daemon)[0] == 200, 10, "btc followed (its cursor stored)")
        on_time = daemon.create_invoice("btc", "0.01", expires_in=5)
        late = daemon.create_invoice("btc", "0.01", expires_in=2)
        for invoice in (on_time, late):
            wait_for(lambda i=invoice: receiver.statuses(i["id"]) == ["unpaid"], 10, "invoice.created delivered")
        assert daemon.stop() == 0

        bsv_node.pay(on_time["address"], "0.01")
        paid_block = bsv_node.mine(2)[0]
        paid_at_block = bsv_node.rpc("getblockheader", paid_block)["time"]
        assert paid_at_block < unix(on_time["expires_at"])  # the premise: mined in time
        sleep_until(unix(late["expires_at"]) + 1)
        bsv_node.pay(late["address"], "0.01")
        late_block = bsv_node.mine(2)[0]
        late_at_block = bsv_node.rpc("getblockheader", late_block)["time"]
        assert late_at_block >= unix(late["expires_at"])  # the premise: mined after its expiry
        sleep_until(unix(on_time["expires_at"]) + 1.5)  # both expired while the daemon was down

        proxy.enabled = True
        daemon.start()
        paid = daemon.wait_status(on_time["id"], "paid", timeout=scaled(15))
        assert paid["exception"] is None, paid
        assert paid["payments"][0]["block_hash"] == paid_block
        assert unix(paid["payments"][0]["first_seen_at"]) == paid_at_block  # when mined, not when caught up
        judged = daemon.wait_status(late["id"], "paid", timeout=scaled(15))
        assert judged["exception"] == "paid_late", judged
        assert unix(judged["payments"][0]["first_seen_at"]) == late_at_block

        for invoice, exception in ((on_time, None), (late, "paid_late")):
            delivered = wait_delivered(receiver, invoice["id"], EXPECTED, timeout=scaled(10))
            assert [e["invoice"]["exception"] for e in delivered[1:]] == [exception] * 2, delivered
            events = daemon.api("GET", f"/v1/invoices/{invoice['id']}/events")["events"]
            assert "invoice.expired" not in [e["type"] for e in events], events
        time.sleep(1.5)  # the expiry loop ticks every second: still nothing more to say
        assert receiver.statuses(on_time["id"]) == EXPECTED and receiver.statuses(late["id"]) == EXPECTED
        assert proxy.injected["stall"] >= 1
