"""BTCPay's official WHMCS plugin v3 (btcpayserver/whmcs-plugin, v3.2.2, "BTCPay Server (legacy API)") as it talks
to a BitPay-style server, written down from its sources for the tests to replay:

- the create request, byte for byte as its PHP sends it (`create_request`), and the fetch of an invoice
  (`fetch_request`);
- its IPN handler, `modules/gateways/callback/btcpay.php`, reimplemented with the WHMCS functions it calls over an
  in-memory ledger (`Callback`): it trusts nothing of the POST but `id` and a `posData` whose hash it checks,
  fetches the invoice, and books the whole balance on `confirmed` or `complete`, deduplicating on the invoice id.

Where each byte comes from:

- `modules/gateways/btcpay.php`, `btcpay_link()`: the client's browser posts `invoiceId`, `systemURL`, `ipnURL`
  (`$params['systemurl'] . '/modules/gateways/callback/btcpay.php'`; WHMCS's System URL ends with "/", hence the
  double slash), `buyerName` (first and last name), `buyerAddress1`, `buyerAddress2`, `buyerCity`, `buyerState`,
  `buyerZip`, `buyerEmail`, `buyerPhone` to createinvoice.php.
- `modules/gateways/btcpay/createinvoice.php`: `$options = $_POST` less invoiceId, systemURL and redirectURL, then
  `notificationURL` = ipnURL, `redirectURL` = the gateway's or systemURL, `transactionSpeed` = the gateway's
  ("medium"), `currency` = the client's; `bpCreateInvoice((int) $_POST['invoiceId'], $total, $invoiceId, ...)`,
  where `$total` is `tblinvoices.total` as PDO returns a DECIMAL(16,2) column: the string "25.00".
- `modules/gateways/btcpay/bp_options.php` (merged first): `notificationEmail` '', `physical` 'true',
  `fullNotifications` 'true', `verifyPos` true.
- `modules/gateways/btcpay/bp_lib.php`, `bpCreateInvoice()`: `posData` is the text
  `{"posData": "<invoice id>", "hash": "<crypt(invoice id, api key)>"}`, `orderID` the integer invoice id,
  `price` the total; the body is `json_encode()` (default flags: "/" written "\\/", non-ASCII "\\uXXXX") of the
  options present in the order of its `$postOptions` list. `bpCurl()`: `Content-Type: application/json`,
  `Content-Length`, `Authorization: Basic base64_encode($apiKey)`, `X-BitPay-Plugin-Info: whmcs 3.2.2`; curl adds
  `Host` and `Accept: */*`. (It also forces port 443: the tests connect to the daemon's port instead.)
- `bpVerifyNotification()` and `bpGetInvoice()`: the IPN body is read flat (`$json['posData']`, `$json['id']`), its
  posData is `json_decode`d (a TypeError in PHP 8 unless it is a string) and its hash compared with
  `crypt(posData, apiKey)`; the invoice is fetched with a GET carrying the same headers and `Content-Length: 0`,
  and read as `$response['data']` (`orderId`, `id`, `status`, `posData`).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

KEY = "whmcs-v3-key-0123456789ab"  # the "API Key" pasted into the gateway settings
VERSION = "3.2.2"  # modules/gateways/btcpay/version.php
# crypt($posData, $apiKey) as PHP computes it for these invoice ids: standard DES, salt "wh" (the key's first two
# characters). A table, since the callback only ever compares it with what it sent.
HASHES = {"1042": "wh2RGpbBu1L.Q", "1043": "whEdFSVw/bPrU", "1044": "whI03zK5uZcEI"}

# The client: WHMCS's clientdetails, non-ASCII name included ("\u00eb" in the body).
BUYER = {"name": "Zo\u00eb Lovelace", "address1": "12 Analytical Row", "address2": "", "city": "London",
         "state": "Greater London", "postcode": "NW1 6XE", "email": "zoe@example.com", "phone": "+44.2071234567"}

# json_encode() of bpCreateInvoice()'s $post: exactly these bytes, with the system URL, the invoice id and its
# total (and the posData hash) filled in.
CREATE_BODY = (
    '{"orderID":%(id)s,"notificationEmail":"","notificationURL":"%(ipn)s","redirectURL":"%(system)s",'
    '"posData":"{\\"posData\\": \\"%(id)s\\", \\"hash\\": \\"%(hash)s\\"}","price":"%(total)s","currency":"USD",'
    '"physical":"true","fullNotifications":"true","transactionSpeed":"medium","buyerName":"Zo\\u00eb Lovelace",'
    '"buyerAddress1":"12 Analytical Row","buyerAddress2":"","buyerCity":"London","buyerState":"Greater London",'
    '"buyerZip":"NW1 6XE","buyerEmail":"zoe@example.com","buyerPhone":"+44.2071234567"}'
)


def _php_url(url: str) -> str:
    return url.replace("/", "\\/")  # json_encode() without JSON_UNESCAPED_SLASHES


def ipn_url(system_url: str) -> str:
    """The notification URL the plugin sends for a WHMCS System URL (which ends with "/")."""
    return system_url + "/modules/gateways/callback/btcpay.php"


def create_body(system_url: str, invoice_id: int, total: str) -> bytes:
    return (CREATE_BODY % {"id": invoice_id, "ipn": _php_url(ipn_url(system_url)), "system": _php_url(system_url),
                           "hash": HASHES[str(invoice_id)].replace("/", "\\/"), "total": total}).encode()


def pos_data(invoice_id: int) -> str:
    """The posData text the plugin sends, as the server must give it back."""
    return '{"posData": "' + str(invoice_id) + '", "hash": "' + HASHES[str(invoice_id)] + '"}'  # as bp_lib.php


def headers(host: str, body: bytes) -> list[tuple[str, str]]:
    """bpCurl()'s headers, in curl's order (Host and Accept first), for a POST with `body` or a GET (b"")."""
    return [("Host", host), ("Accept", "*/*"), ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))), ("Authorization", "Basic " + base64.b64encode(KEY.encode()).decode()),
            ("X-BitPay-Plugin-Info", f"whmcs {VERSION}")]


class Callback:
    """callback/btcpay.php over an in-memory WHMCS: `balance` is tblinvoices (the unpaid balance of each invoice),
    `accounts` tblaccounts (one row per booked payment: transaction id, invoice, amount). `fetch(id)` is
    bpGetInvoice's GET, answering the response body."""

    def __init__(self, fetch: Callable[[str], bytes], balance: dict[int, Decimal]) -> None:
        self.fetch = fetch
        self.balance = dict(balance)
        self.accounts: list[tuple[str, int, Decimal]] = []
        self.outcomes: list[tuple[str, str]] = []  # (invoice status as fetched, what the callback did)

    def handle(self, body: bytes) -> str:
        outcome, status = self._handle(body)
        self.outcomes.append((status, outcome))
        return outcome

    def _handle(self, body: bytes) -> tuple[str, str]:
        posted = json.loads(body)
        if not isinstance(posted, dict) or "posData" not in posted:
            return "no posData", ""
        assert isinstance(posted["posData"], str), "json_decode() of a non-string is a TypeError in PHP 8"
        pos = json.loads(posted["posData"])
        if not isinstance(pos, dict) or pos.get("hash") != HASHES.get(str(pos.get("posData"))):
            return "ERROR: payload validation failed (bad hash)", ""
        if "id" not in posted:
            return "Cannot find invoice ID", ""
        response = json.loads(self.fetch(posted["id"]))
        data: dict[str, Any] = response["data"]
        assert isinstance(data["posData"], str) and json.loads(data["posData"]) == pos
        status = data["status"]
        # checkCbInvoiceID(): the WHMCS invoice named by the BitPay invoice's orderId, or die
        whmcs_id = data.get("orderId")
        if whmcs_id is None or not str(whmcs_id).isdigit() or int(whmcs_id) not in self.balance:
            return "Invoice ID Not Found", status
        invoice = int(whmcs_id)
        # checkCbTransID(): a transaction id already in tblaccounts ends processing
        if any(row[0] == data["id"] for row in self.accounts):
            return "already booked", status
        if status in ("confirmed", "complete"):
            # addInvoicePayment($id, $transid, '', 0, ...): an empty amount books the whole balance
            self.accounts.append((data["id"], invoice, self.balance[invoice]))
            self.balance[invoice] = Decimal(0)
            return "booked", status
        return "logged", status  # paid: "not confirmed yet"; expired / invalid: "do not process this order"
