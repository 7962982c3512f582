"""The daemon end to end against a real anvil: ETH and ERC-20 invoices over websocket subscriptions.

Every test runs the real `watcherd run` process with its own store and a webhook receiver that verifies
signatures; the customer pays from anvil's funded accounts. anvil runs with --no-mining, so a payment waits
in the pool (`processing`) until the test mines it. The node is shared by the session: tests compare
before/after, never absolute heights.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

from harness import Daemon, critical_lines, eth_table, readiness, wait_delivered, wait_stopped

from testkit.eth_node import FEE_TOKEN

ETH = 10**18
USDC = 10**6


def wait_caught_up(daemon: Daemon, eth_node, timeout: float = 30) -> None:
    """The daemon processed the node's tip (so a payment sent now is judged against a known state)."""
    height = eth_node.tip()[0]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.metric("watcherd_processed_height", chain="eth") >= height:
            return
        time.sleep(0.05)
    raise AssertionError(f"daemon did not reach block {height}:\n{daemon.log_tail()}")


def wait_invoice(daemon: Daemon, invoice_id: str, predicate, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        invoice = daemon.invoice(invoice_id)
        if predicate(invoice):
            return invoice
        time.sleep(0.05)
    raise AssertionError(f"invoice {invoice_id} never matched: {invoice}\n{daemon.log_tail()}")


def test_eth_exact_pending_processing_then_paid(eth_node, daemon_factory, receiver):
    """ETH: the pending tx gives `processing` before it is mined; `paid` once it has 2 confirmations."""
    daemon = daemon_factory(eth_table("eth", eth_node, confirmations=2))
    wait_caught_up(daemon, eth_node)
    invoice = daemon.create_invoice("eth", "0.25", order_id="ETH-1")
    address = invoice["address"]
    assert address.startswith("0x") and address != address.lower()  # EIP-55 checksummed
    assert invoice["payment_uri"] == f"ethereum:{address}@31337?value={ETH // 4}"
    txid = eth_node.pay(address, ETH // 4)
    processing = daemon.wait_status(invoice["id"], "processing", timeout=10)
    assert processing["payments"][0]["txid"] == txid and processing["payments"][0]["block_height"] is None
    eth_node.mine(1)
    time.sleep(1.0)
    assert daemon.invoice(invoice["id"])["status"] == "processing"  # one confirmation of two
    eth_node.mine(1)
    paid = daemon.wait_status(invoice["id"], "paid", timeout=20)
    payment = paid["payments"][0]
    assert (payment["amount"], payment["amount_atomic"], payment["vout"]) == ("0.25", str(ETH // 4), 0)
    assert payment["block_height"] == eth_node.tip()[0] - 1 and paid["exception"] is None
    events = wait_delivered(receiver, invoice["id"], ["unpaid", "processing", "paid"])
    assert [e["type"] for e in events] == ["invoice.created", "invoice.processing", "invoice.paid"]
    assert receiver.rejected == 0


def test_eth_underpaid_topup_and_overpaid(eth_node, daemon_factory):
    """Several ETH payments add up; an underpaid invoice is paid by a top-up; more than asked is overpaid."""
    daemon = daemon_factory(eth_table("eth", eth_node, confirmations=1))
    wait_caught_up(daemon, eth_node)
    under = daemon.create_invoice("eth", "1")
    over = daemon.create_invoice("eth", "0.1")
    eth_node.pay(under["address"], ETH // 4)
    eth_node.pay(over["address"], ETH // 5)
    eth_node.mine(1)
    shown = wait_invoice(daemon, under["id"], lambda i: i["amount_confirmed"] == "0.25")
    assert (shown["status"], shown["exception"], shown["amount_received"]) == ("unpaid", "underpaid", "0.25")
    assert daemon.wait_status(over["id"], "paid", exception="overpaid")["amount_received"] == "0.2"
    eth_node.pay(under["address"], 3 * ETH // 4, account=2)
    eth_node.mine(1)
    topped = daemon.wait_status(under["id"], "paid", exception=None)
    assert topped["amount_received_atomic"] == str(ETH) and len(topped["payments"]) == 2


def test_token_exact_underpaid_and_wrong_asset(eth_node, daemon_factory, receiver):
    """USDC invoices count only USDC Transfer logs; DAI or ETH to a USDC invoice is recorded, flagged, not
    counted."""
    daemon = daemon_factory(eth_table("eth", eth_node, confirmations=1))
    wait_caught_up(daemon, eth_node)
    exact = daemon.create_invoice("eth", "12.5", asset="USDC")
    assert exact["asset"] == "USDC" and exact["amount_atomic"] == str(12_500_000)
    usdc = eth_node.contracts["USDC"]
    assert exact["payment_uri"] == f"ethereum:{usdc}@31337/transfer?address={exact['address']}&uint256=12500000"
    short = daemon.create_invoice("eth", "10", asset="USDC")
    wrong = daemon.create_invoice("eth", "5", asset="USDC")
    txid = eth_node.pay_token("USDC", exact["address"], 12_500_000)
    daemon.wait_status(exact["id"], "processing", timeout=10)  # a pending direct transfer() call
    eth_node.pay_token("USDC", short["address"], 4 * USDC)
    eth_node.pay_token("DAI", wrong["address"], 5 * ETH)  # 5 DAI: same number, wrong asset
    eth_node.pay(wrong["address"], ETH // 100)  # and some ETH, also the wrong asset for this invoice
    eth_node.mine(1)
    paid = daemon.wait_status(exact["id"], "paid", exception=None)
    (payment,) = paid["payments"]  # the pending sighting and the mined log are one payment
    assert (payment["txid"], payment["vout"], payment["asset"], payment["amount"]) == (txid, 1, "USDC", "12.5")
    assert daemon.wait_status(short["id"], "unpaid", exception="underpaid")["amount_received"] == "4"
    flagged = daemon.wait_status(wrong["id"], "unpaid", exception="wrong_asset")
    assert flagged["amount_received"] == "0"
    assert sorted((p["asset"], p["amount"], p["status"]) for p in flagged["payments"]) == [
        ("DAI", "5", "wrong_asset"), ("ETH", "0.01", "wrong_asset")]
    wait_delivered(receiver, exact["id"], ["unpaid", "processing", "paid"])


def test_a_pending_transfer_that_reverts_when_mined_is_taken_back(eth_node, daemon_factory, receiver):
    """The free "payment": transfer(invoice, due) of the invoice's token from an account holding none of it.
    Pending, its calldata makes the invoice processing; mined, it reverts (no Transfer log), and the block is
    the truth: the invoice is unpaid again with nothing received, its events (API and webhooks) say so, and
    neither later blocks nor a reorg of that block bring the credit back."""
    daemon = daemon_factory(eth_table("eth", eth_node, confirmations=2))
    wait_caught_up(daemon, eth_node)
    invoice = daemon.create_invoice("eth", "12.5", asset="USDC")
    pauper = 5  # an anvil account with ETH for gas and no USDC
    assert int(eth_node.rpc("eth_call", {"to": eth_node.contracts["USDC"], "data": "0x70a08231" + "00" * 12
                                         + eth_node.accounts()[pauper][2:]}, "latest"), 16) == 0  # balanceOf
    txid = eth_node.pay_token("USDC", invoice["address"], 12_500_000, account=pauper, gas=100_000)
    processing = daemon.wait_status(invoice["id"], "processing", timeout=10)
    assert [(p["txid"], p["amount_atomic"], p["block_height"]) for p in processing["payments"]] == [
        (txid, "12500000", None)]
    eth_node.mine(1)
    assert eth_node.receipt(txid)["status"] == "0x0" and eth_node.receipt(txid)["logs"] == []  # reverted
    back = daemon.wait_status(invoice["id"], "unpaid", timeout=20)
    assert (back["amount_received_atomic"], back["exception"]) == ("0", "double_spent")
    assert [(p["txid"], p["status"]) for p in back["payments"]] == [(txid, "replaced")]
    events = daemon.api("GET", f"/v1/invoices/{invoice['id']}/events")["events"]
    assert [(e["type"], e["invoice"]["status"], e["invoice"]["amount_received_atomic"]) for e in events] == [
        ("invoice.created", "unpaid", "0"), ("invoice.processing", "processing", "12500000"),
        ("invoice.unpaid", "unpaid", "0")]
    wait_delivered(receiver, invoice["id"], ["unpaid", "processing", "unpaid"])
    eth_node.mine(2)
    wait_caught_up(daemon, eth_node)
    reorgs = daemon.metric("watcherd_reorgs_total", chain="eth")
    eth_node.reorg(3)  # the reverting block and the two above it, replaced by empty ones
    eth_node.mine(1)
    deadline = time.monotonic() + 20
    while daemon.metric("watcherd_reorgs_total", chain="eth") == reorgs:
        assert time.monotonic() < deadline, daemon.log_tail()
        time.sleep(0.05)
    wait_caught_up(daemon, eth_node)
    shown = daemon.invoice(invoice["id"])
    assert (shown["status"], shown["amount_received_atomic"]) == ("unpaid", "0")
    assert len(daemon.api("GET", f"/v1/invoices/{invoice['id']}/events")["events"]) == 3


def test_zero_value_transfers_are_no_payments(eth_node, daemon_factory, receiver):
    """transfer(invoice, 0) of the invoice's token and of another configured token, and 0 ETH, pending and
    mined (each logs or carries a real zero): no payment, no wrong_asset, no event, no error logged."""
    daemon = daemon_factory(eth_table("eth", eth_node, confirmations=1))
    wait_caught_up(daemon, eth_node)
    invoice = daemon.create_invoice("eth", "5", asset="USDC")
    marker = daemon.create_invoice("eth", "1", asset="USDC")  # paid in the same block: the block was processed
    zeros = [eth_node.pay_token("USDC", invoice["address"], 0), eth_node.pay_token("DAI", invoice["address"], 0),
             eth_node.pay(invoice["address"], 0)]
    eth_node.pay_token("USDC", marker["address"], USDC, account=2)
    daemon.wait_status(marker["id"], "processing", timeout=10)
    eth_node.mine(1)
    daemon.wait_status(marker["id"], "paid")
    receipts = [eth_node.receipt(txid) for txid in zeros]
    assert [(r["status"], len(r["logs"])) for r in receipts] == [("0x1", 1), ("0x1", 1), ("0x1", 0)]
    shown = daemon.invoice(invoice["id"])
    assert (shown["status"], shown["exception"], shown["payments"]) == ("unpaid", None, [])
    assert [e["type"] for e in daemon.api("GET", f"/v1/invoices/{invoice['id']}/events")["events"]] == [
        "invoice.created"]
    wait_delivered(receiver, marker["id"], ["unpaid", "processing", "paid"])
    assert receiver.statuses(invoice["id"]) == ["unpaid"]
    assert "Traceback" not in daemon.log_tail(400) and "ignored a malformed" not in daemon.log_tail(400)


def test_a_fee_on_transfer_token_is_credited_what_arrives_once(eth_node, daemon_factory):
    """A fee-on-transfer token that also logs its recipient's share twice (contracts/FeeToken.sol): the
    pending transfer() is credited its calldata, the mined payment is the same payment (same id) with the
    amount that arrived, counted once: the invoice is underpaid by the fee."""
    fee = eth_node.contracts[FEE_TOKEN]
    table = eth_table("eth", eth_node, confirmations=1) + (
        f'\n[[chains.eth.tokens]]\nsymbol = "{FEE_TOKEN}"\ncontract = "{fee}"\ndecimals = 6\n')
    daemon = daemon_factory(table)
    wait_caught_up(daemon, eth_node)
    invoice = daemon.create_invoice("eth", "10", asset=FEE_TOKEN)
    txid = eth_node.pay_token(FEE_TOKEN, invoice["address"], 10 * USDC)
    pending = daemon.wait_status(invoice["id"], "processing", timeout=10)
    assert [(p["txid"], p["vout"], p["amount"]) for p in pending["payments"]] == [(txid, 1, "10")]
    eth_node.mine(1)
    recipient_logs = [entry for entry in eth_node.receipt(txid)["logs"]
                      if entry["topics"][2][-40:] == invoice["address"][2:].lower()]
    assert [int(entry["data"], 16) for entry in recipient_logs] == [9_900_000, 9_900_000]
    balance = eth_node.rpc("eth_call", {"to": fee, "data": "0x70a08231" + "00" * 12 + invoice["address"][2:]},
                           "latest")
    assert int(balance, 16) == 9_900_000  # what arrived
    shown = daemon.wait_status(invoice["id"], "unpaid", exception="underpaid")
    assert [(p["txid"], p["vout"], p["amount"], p["status"]) for p in shown["payments"]] == [
        (txid, 1, "9.9", "confirmed")]
    assert shown["amount_received"] == "9.9"


def test_eth_through_forwarder_found_by_balance_reconciliation(eth_node, daemon_factory):
    """ETH reaching the invoice address through a contract's internal call (no tx `to` it) is found by the
    batched balance check and recorded with the block it was seen at."""
    daemon = daemon_factory(eth_table("eth", eth_node, confirmations=2))
    wait_caught_up(daemon, eth_node)
    invoice = daemon.create_invoice("eth", "0.3")
    eth_node.pay_through_forwarder(invoice["address"], 3 * ETH // 10)
    (block_hash,) = eth_node.mine(1)
    height = eth_node.tip()[0]
    shown = daemon.wait_status(invoice["id"], "processing", timeout=20)
    (payment,) = shown["payments"]
    assert payment["txid"] == f"internal:{block_hash}:{invoice['address'].lower()}"
    assert (payment["block_height"], payment["block_hash"], payment["amount"]) == (height, block_hash, "0.3")
    eth_node.mine(1)
    paid = daemon.wait_status(invoice["id"], "paid", exception=None)
    assert len(paid["payments"]) == 1 and paid["amount_received"] == "0.3"  # not re-counted on later blocks


def test_reorg_drops_confirmed_payment_then_paid_again(eth_node, daemon_factory, receiver):
    """anvil_reorg takes the block holding the payment: paid -> back (with events); re-included -> paid."""
    daemon = daemon_factory(eth_table("eth", eth_node, confirmations=2))
    wait_caught_up(daemon, eth_node)
    invoice = daemon.create_invoice("eth", "0.05")
    txid = eth_node.pay(invoice["address"], ETH // 20)
    daemon.wait_status(invoice["id"], "processing", timeout=10)
    raw = eth_node.raw_transaction(txid)
    eth_node.mine(2)
    daemon.wait_status(invoice["id"], "paid")
    eth_node.reorg(2)  # both blocks replaced by empty ones: the payment is gone
    back = daemon.wait_status(invoice["id"], "unpaid", timeout=30)
    assert back["payments"][0]["status"] == "replaced" and back["amount_received"] == "0"
    assert eth_node.rebroadcast(raw) == txid
    daemon.wait_status(invoice["id"], "processing", timeout=10)
    eth_node.mine(2)
    again = daemon.wait_status(invoice["id"], "paid", exception=None)
    assert len(again["payments"]) == 1 and again["payments"][0]["status"] == "confirmed"
    statuses = wait_delivered(receiver, invoice["id"], ["unpaid", "processing", "paid", "processing", "unpaid",
                                                        "processing", "paid"], timeout=30)
    assert statuses[-1]["type"] == "invoice.paid"


def test_websocket_drop_and_sigkill_lose_nothing_and_count_once(eth_node, daemon_factory, receiver):
    """anvil restarted from its dumped state while payments happen: found after reconnect, counted once.
    Then the daemon is SIGKILLed mid-flow: correct after restart, from its durable cursor."""
    daemon = daemon_factory(eth_table("eth", eth_node, confirmations=2))
    wait_caught_up(daemon, eth_node)
    before = daemon.metric("watcherd_feed_reconnects_total", chain="eth")
    first = daemon.create_invoice("eth", "0.01")
    second = daemon.create_invoice("eth", "2", asset="USDC")
    eth_node.pay(first["address"], ETH // 100)
    eth_node.mine(1)
    eth_node.stop()  # the websocket drops; the chain is dumped
    eth_node.start()
    eth_node.pay_token("USDC", second["address"], 2 * USDC)  # while the daemon is reconnecting
    eth_node.mine(2)
    daemon.wait_status(first["id"], "paid", timeout=30)
    daemon.wait_status(second["id"], "paid", timeout=30)
    assert daemon.metric("watcherd_feed_reconnects_total", chain="eth") > before
    third = daemon.create_invoice("eth", "0.02")
    eth_node.pay(third["address"], ETH // 50)
    daemon.wait_status(third["id"], "processing", timeout=10)
    daemon.kill()
    eth_node.mine(2)
    daemon.start()
    for invoice, amount in ((first, "0.01"), (second, "2"), (third, "0.02")):
        shown = daemon.wait_status(invoice["id"], "paid", timeout=30)
        assert len(shown["payments"]) == 1 and shown["amount_received"] == amount
    wait_delivered(receiver, third["id"], ["unpaid", "processing", "paid"])


def test_node_with_another_chain_id_is_refused(eth_node, daemon_factory):
    """A config naming chain id 1 against anvil (31337) follows nothing of it: one CRITICAL line naming both ids,
    the chain stopped in /readyz and watcherd_chain_stopped; the daemon and its API stay up."""
    daemon = daemon_factory(eth_table("eth", eth_node, confirmations=1, chain_id=1))
    reason = wait_stopped(daemon, "eth")
    assert "serves chain id 31337, the config says chain_id = 1; refusing to follow it" in reason, reason
    [line] = critical_lines(daemon)
    assert reason in line
    assert daemon.metric("watcherd_chain_stopped", chain="eth", reason="network") == 1
    assert readiness(daemon)["chains"]["eth"]["processed_height"] is None and daemon.alive()


def test_operator_cli_creates_shows_lists_cancels_and_redelivers(eth_node, daemon_factory, receiver):
    """`watcherd invoice ...` and `watcherd webhooks ...` against a running daemon, as an operator uses them:
    a USDC invoice created from the command line is paid on anvil; the webhooks it caused are listed and one
    is queued again."""
    daemon = daemon_factory(eth_table("eth", eth_node, confirmations=1))
    wait_caught_up(daemon, eth_node)

    def cli(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "watcherd", "--config", str(daemon.config_path), *args],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    created = json.loads(cli("invoice", "create", "--chain", "eth", "--amount", "12.5", "--asset", "USDC",
                             "--order-id", "CLI-1", "--json"))
    assert (created["asset"], created["amount_atomic"], created["order_id"]) == ("USDC", "12500000", "CLI-1")
    eth_node.pay_token("USDC", created["address"], 12_500_000)
    daemon.wait_status(created["id"], "processing", timeout=10)
    eth_node.mine(1)
    daemon.wait_status(created["id"], "paid")
    shown = cli("invoice", "show", created["id"])
    assert re.search(rf"^invoice +{created['id']}\nstatus +paid\namount +12\.5 USDC  received 12\.5 ", shown,
                     re.M), shown
    assert re.search(r"^eth:USDC +12\.5 USDC +12\.5 USDC +1/1 +confirmed ", shown, re.M), shown
    assert created["id"] in cli("invoice", "list", "--status", "paid")

    other = cli("invoice", "create", "--chain", "eth", "--amount", "0.1")
    other_id = re.search(r"^invoice +(inv_\w+)$", other, re.M)[1]
    assert re.search(r"^status +unpaid\namount +0\.1 ETH ", other, re.M) and "pay 0.1 ETH: ethereum:" in other
    assert "cancelled" in cli("invoice", "cancel", other_id)
    assert created["id"] not in cli("invoice", "list", "--status", "unpaid")
    # priced in USDC, the customer picks the token on the payment page, or here
    priced = cli("invoice", "create", "--currency", "USDC", "--amount", "5", "--method", "eth:USDC")
    priced_id = re.search(r"^invoice +(inv_\w+)$", priced, re.M)[1]
    assert re.search(r"^amount +5 USDC ", priced, re.M) and re.search(rf"^page +\S+/i/{priced_id}$", priced, re.M)
    assert "pay 5 USDC: ethereum:" in cli("invoice", "pick", priced_id, "eth:USDC")

    wait_delivered(receiver, created["id"], ["unpaid", "processing", "paid"])
    listed = json.loads(cli("webhooks", "list", "--invoice", created["id"], "--json"))
    assert [r["type"] for r in listed] == ["invoice.paid", "invoice.processing", "invoice.created"]  # newest first
    assert all(r["delivered_at"] for r in listed)
    paid_event = listed[0]["id"]
    assert re.search(rf"^{paid_event} +invoice\.paid +{created['id']} +webhook +delivered +1 ",
                     cli("webhooks", "list", "--invoice", created["id"]), re.M)
    assert "queued for redelivery" in cli("webhooks", "redeliver", paid_event)
    deadline = time.monotonic() + 20
    while len([d for d in receiver.for_invoice(created["id"]) if d["id"] == paid_event]) < 2:
        assert time.monotonic() < deadline, "the redelivered webhook never arrived"
        time.sleep(0.1)

    refused = subprocess.run([sys.executable, "-m", "watcherd", "--config", str(daemon.config_path), "invoice",
                              "create", "--chain", "eth", "--amount", "1", "--asset", "DOGE"],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "asset" in refused.stderr
