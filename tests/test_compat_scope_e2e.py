"""The compatible APIs' key against a real daemon on a real node: it cannot read, list, search or mark a natively
created invoice; its mark shows as `manually_marked` in the native invoice and in the signed webhook delivered
for it, and a mark leaves an audit line in the daemon's log."""

from __future__ import annotations

import base64
import json
from decimal import Decimal
from typing import Any

from harness import chain_table, wait_delivered

KEY = "gf-scope-key-0123456789abcdef"
STORE = "shop-scope"
GREENFIELD = f"""[greenfield]
store_id = "{STORE}"
api_key = "{KEY}"
[rates]
sources = []
currencies = ["USD"]
[rates.fixed]
BTC_USD = "50000"
"""


def call(daemon: Any, method: str, path: str, body: Any = None, *, auth: str = f"token {KEY}") -> tuple[int, Any]:
    return daemon.request(method, path, body, auth=auth)


def test_the_compat_key_cannot_reach_a_native_invoice_and_a_mark_is_told_apart_from_money(daemon_factory, bsv_node,
                                                                                          receiver):
    """Default scope: the native invoice is a 404 to Greenfield and BitPay (as an unknown id is), in no list or
    search, and cannot be marked; a Greenfield invoice marked Settled is `paid` with `manually_marked: true` in
    the native JSON and in its delivered, signature-checked `invoice.paid`, while the invoice paid on chain says
    false; the mark (and only it) is in the audit log, without the key."""
    daemon = daemon_factory(chain_table("btc", bsv_node, confirmations=1), extra=GREENFIELD)
    native = daemon.create_invoice("btc", "0.001", order_id="N-scope", metadata={"note": "native-only"})
    status, ours = call(daemon, "POST", f"/api/v1/stores/{STORE}/invoices",
                        {"amount": "10", "currency": "USD", "metadata": {"orderId": "G-scope"}})
    assert status == 200, ours

    unknown = "inv_" + "0" * 24
    for path in (f"/api/v1/stores/{STORE}/invoices/{{id}}", "/api/v1/invoices/{id}"):
        refused, missing = (call(daemon, "GET", path.format(id=i)) for i in (native["id"], unknown))
        assert refused[0] == missing[0] == 404
        assert json.loads(json.dumps(refused[1]).replace(native["id"], unknown)) == missing[1]
    status, body = call(daemon, "POST", f"/api/v1/stores/{STORE}/invoices/{native['id']}/status",
                        {"status": "Settled"})
    assert (status, body["code"]) == (404, "invoice-not-found")
    basic = "Basic " + base64.b64encode(KEY.encode()).decode()
    assert call(daemon, "GET", f"/invoices/{native['id']}", auth=basic) == (404, {"error": "Object not found"})
    for query in ("", "?orderId=N-scope", "?textSearch=native-only", f"?textSearch={native['id']}"):
        status, listed = call(daemon, "GET", f"/api/v1/stores/{STORE}/invoices{query}")
        assert status == 200 and native["id"] not in [i["id"] for i in listed], query
    assert [i["id"] for i in call(daemon, "GET", f"/api/v1/stores/{STORE}/invoices")[1]] == [ours["id"]]
    shown = daemon.invoice(native["id"])
    assert (shown["status"], shown["manually_marked"]) == ("unpaid", False)

    status, marked = call(daemon, "POST", f"/api/v1/invoices/{ours['id']}/status", {"status": "Settled"})
    assert (status, marked["status"], marked["additionalStatus"]) == (200, "Settled", "Marked")
    shown = daemon.invoice(ours["id"])
    assert (shown["status"], shown["manually_marked"], shown["amount_received"]) == ("paid", True, "0.00")
    bsv_node.pay(native["address"], Decimal("0.001"))
    daemon.wait_status(native["id"], "processing")
    bsv_node.mine(1)
    daemon.wait_status(native["id"], "paid")

    for invoice_id, statuses, manual in ((ours["id"], ["unpaid", "paid"], True),
                                         (native["id"], ["unpaid", "processing", "paid"], False)):
        events = wait_delivered(receiver, invoice_id, statuses)
        assert [(e["type"], e["invoice"]["manually_marked"]) for e in events][-1] == ("invoice.paid", manual)
        assert all(e["invoice"]["manually_marked"] is False for e in events[:-1])
    assert receiver.rejected == 0

    log = daemon.log_path.read_text()
    audit = [line for line in log.splitlines() if "watcherd.audit" in line]
    assert len(audit) == 1 and "api=greenfield action=mark_settled" in audit[0] and ours["id"] in audit[0], audit
    assert KEY not in log
