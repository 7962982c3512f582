"""The hosted payment page (/i/<id>) without a browser: every state in every language, the public JSON, the live
stream, choosing a coin, escaping, the CSP, and QR content.

Two kinds of backing: the real ledger on a fake chain (what today's invoices look like, and real committed
changes for the live stream), and a stub holding hand-written invoice JSON for the shapes the model is growing
into (fiat invoices offering several coins, some not yet activated, and fields missing)."""

from __future__ import annotations

import asyncio
import copy
import io
import json
import re
import sqlite3
from decimal import Decimal
from typing import Any

import pytest
import segno
from aiohttp.test_utils import TestClient, TestServer
from harness import read_event

from testkit.fake import FakeChain
from watcherd.config import ChainLabel
from watcherd.core.types import ChainBlock, ChainTx, Cursor, Received
from watcherd.exceptions import InvoiceError
from watcherd.http import checkout
from watcherd.http.api import make_app
from watcherd.http.page import public, qr, render, strings
from watcherd.ledger import Processor
from watcherd.live import Live
from watcherd.store import Store

TOKEN = "api-token-0123456789abcdef"
XSS = "<script>alert(1)</script>"
NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z
EXPIRES_AT = "2027-01-15T08:15:00Z"  # 15 minutes after NOW
LEGACY = "mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn"
BECH32 = "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq"
TXID = "f" * 63 + "1"
EXPECTED_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
                "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")


def btc_method(**over: Any) -> dict[str, Any]:
    method = {"method": "btc", "chain": "btc", "asset": "BTC", "activated": True, "address": LEGACY, "rate": "1",
              "amount": "0.015", "amount_atomic": "1500000", "due": "0.015", "due_atomic": "1500000",
              "payment_uri": f"bitcoin:{LEGACY}?amount=0.015", "confirmations_required": 2}
    return {**method, **over}


def payment(confirmations: int, status: str, **over: Any) -> dict[str, Any]:
    return {"txid": TXID, "vout": 0, "asset": "BTC", "amount": "0.015", "amount_atomic": "1500000",
            "confirmations": confirmations, "block_height": None, "block_hash": None,
            "first_seen_at": "2027-01-15T08:03:00Z", "confirmed_at": None, "status": status, **over}


def coin_invoice(status: str = "unpaid", exception: str | None = None, **over: Any) -> dict[str, Any]:
    """Today's shape (watcherd/views.py): priced in the coin, its one method activated."""
    invoice = {
        "id": "inv_0123456789abcdef01234567", "chain": "btc", "asset": "BTC", "address": LEGACY,
        "amount": "0.015", "amount_atomic": "1500000", "amount_received": "0", "amount_received_atomic": "0",
        "status": status, "exception": exception, "payment_uri": f"bitcoin:{LEGACY}?amount=0.015",
        "confirmations_required": 2, "finality": None, "order_id": "A-1",
        "metadata": {"secret_note": "customer-7-internal"}, "created_at": "2027-01-15T08:00:00Z",
        "expires_at": EXPIRES_AT, "paid_at": None, "cancelled_at": None, "currency": "BTC",
        "checkout_url": "http://127.0.0.1/i/inv_0123456789abcdef01234567", "payment_methods": [btc_method()],
        "payments": [],
    }
    return {**invoice, **over}


def usd_invoice(**over: Any) -> dict[str, Any]:
    """The shape coming next: 49.00 USD offered in four coins, none picked yet."""
    methods = [
        {"method": "btc", "chain": "btc", "asset": "BTC", "activated": False, "rate": "50000", "amount": "0.00098"},
        {"method": "ltc", "chain": "ltc", "asset": "LTC", "activated": False, "rate": "70", "amount": "0.7"},
        {"method": "eth:USDC", "chain": "eth", "asset": "USDC", "activated": False, "rate": "1", "amount": "49"},
        {"method": "xmr", "chain": "xmr", "asset": "XMR", "activated": False, "rate": "150", "amount": "0.326667"},
    ]
    invoice = coin_invoice(currency="USD", amount="49.00", due="49.00", payment_methods=methods, order_id="U-1",
                           redirect_url="https://shop.example/orders/U-1")
    for key in ("chain", "asset", "address", "payment_uri", "amount_atomic"):
        invoice.pop(key)
    return {**invoice, **over}


STATES: dict[str, dict[str, Any]] = {
    "unpaid": coin_invoice(),
    "underpaid": coin_invoice(exception="underpaid", payments=[payment(0, "pending", amount="0.005")],
                              payment_methods=[btc_method(due="0.01", due_atomic="1000000")]),
    "processing": coin_invoice("processing", payments=[payment(1, "pending")]),
    "paid": coin_invoice("paid", payments=[payment(2, "confirmed")], paid_at="2027-01-15T08:30:00Z",
                         metadata={"redirect_url": "https://shop.example/done?o=A-1&x=1"}),
    "overpaid": coin_invoice("paid", "overpaid", payments=[payment(2, "confirmed", amount="0.02")]),
    "paid_late": coin_invoice("paid", "paid_late", payments=[payment(2, "confirmed")]),
    "expired": coin_invoice("expired"),
    "cancelled": coin_invoice("cancelled"),
    "invalid": coin_invoice("invalid", payments=[payment(2, "confirmed", amount="0.001")]),
}


# as the config names these chains (their display names; mainnet)
LABELS = {"btc": ChainLabel("Bitcoin", False), "ltc": ChainLabel("Litecoin", False),
          "eth": ChainLabel("Ethereum", False), "xmr": ChainLabel("Monero", False)}


def render_state(invoice: dict[str, Any], language: str = "en", method: str | None = None,
                 labels: dict[str, ChainLabel] = LABELS) -> str:
    return render.render_page(invoice, strings.LANGUAGES[language], checkout.ASSETS, asked_method=method, now=NOW,
                              labels=labels)


# ---- rendering: every state, every language ----------------------------------------------------------------


@pytest.mark.parametrize("language", sorted(strings.LANGUAGES))
@pytest.mark.parametrize("state", sorted(STATES))
def test_every_state_renders_its_headline_in_every_language(state: str, language: str) -> None:
    """Each status the customer can meet has its own headline, in the language asked for, and only an open
    invoice offers an address to pay to."""
    t = strings.LANGUAGES[language]
    page = render_state(STATES[state], language)
    assert page.startswith(f'<!doctype html><html lang="{language}">')
    assert f"<h2>{t(state)}</h2>" in page
    offers_address = 'id="pay-address"' in page
    assert offers_address == (state in ("unpaid", "underpaid")), state
    assert ('<svg viewBox' in page) == offers_address
    assert ('data-countdown>' in page) == offers_address
    assert "customer-7-internal" not in page  # metadata other than description never shows


def test_state_details() -> None:
    """What each state says beyond its headline: confirmations, the remaining amount, the ledger line, the way
    back to the shop."""
    t = strings.LANGUAGES["en"]
    processing = render_state(STATES["processing"])
    assert t("msg_confirmations", n=1, m=2) == "1 of 2 confirmations" and "1 of 2 confirmations" in processing
    assert '<progress max="2" value="1">' in processing
    underpaid = render_state(STATES["underpaid"])
    assert "send the remaining <strong>0.01 BTC</strong> to the same address" in underpaid.replace("Send", "send")
    assert '<code id="pay-amount" class="value">0.01</code>' in underpaid
    assert f"bitcoin:{LEGACY}?amount=0.01" in underpaid  # the wallet link (and QR) ask for what is left
    paid = render_state(STATES["paid"])
    assert "Crypto Payments (BTC)" in paid and TXID in paid and "2027-01-15 08:03 UTC" in paid
    assert '<a class="button" href="https://shop.example/done?o=A-1&amp;x=1" rel="noreferrer">' in paid
    assert 'http-equiv="refresh"' not in paid and 'data-final="1"' in paid  # nothing more will change
    assert 'http-equiv="refresh"' in render_state(STATES["unpaid"])  # the <noscript> page refreshes itself
    assert t("msg_overpaid") in render_state(STATES["overpaid"])
    assert t("msg_expired") in render_state(STATES["expired"])
    assert t("msg_expired_partial") in render_state(coin_invoice("expired", "underpaid",
                                                                 payments=[payment(3, "confirmed")]))
    unpaid = render_state(STATES["unpaid"])
    assert 'data-countdown>15:00</time>' in unpaid and f'datetime="{EXPIRES_AT}"' in unpaid
    assert f'<a class="button" href="bitcoin:{LEGACY}?amount=0.015">' in unpaid


def test_several_coins_list_their_amounts_and_offer_pay_with_buttons() -> None:
    """A USD invoice offered in four coins: each with its fixed amount; not yet activated ones are a form post
    (works without JS); the one asked for (?method=) is shown with a primary "Pay with" button."""
    page = render_state(usd_invoice())
    assert "<strong>49.00 USD</strong>" in page and "Choose a currency" in page
    for amount in ("0.00098 BTC", "0.7 LTC", "49 USDC", "0.326667 XMR"):
        assert amount in page
    assert 'action="inv_0123456789abcdef01234567/methods/eth%3AUSDC"' in page
    assert "USDC on Ethereum" in page and "on eth" not in page and 'id="pay-address"' not in page
    asked = render_state(usd_invoice(), method="ltc")
    assert '<li class="method chosen" aria-current="true"><span class="method-name">LTC</span>' in asked
    assert 'class="button">Pay with LTC</button>' in asked
    activated = usd_invoice()
    activated["payment_methods"][1].update(activated=True, address="rltc1qexample", due="0.7",
                                           payment_uri="litecoin:rltc1qexample?amount=0.7")
    shown = render_state(activated)  # the activated one is shown without asking
    assert '<code id="pay-address" class="value wide">rltc1qexample</code>' in shown
    assert "litecoin:rltc1qexample?amount=0.7" in shown
    assert 'href="?method=ltc"' not in shown and "Pay with BTC" in shown


def half_paid_usd_invoice(chosen: str, status: str = "unpaid", exception: str | None = "underpaid",
                          payments: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """49.00 USD offered in BTC (1 confirmation) and LTC (2), the daemon's shape: 0.00049 BTC (24.50 USD) paid
    to the BTC address; `chosen` ("btc" or "ltc") activated as well, its URI asking for its due."""
    btc = {"method": "btc", "chain": "btc", "asset": "BTC", "activated": True, "rate": "50000",
           "amount": "0.00098", "amount_atomic": "98000", "due": "0.00049", "due_atomic": "49000",
           "address": LEGACY, "payment_uri": f"bitcoin:{LEGACY}?amount=0.00049", "confirmations_required": 1}
    ltc = {"method": "ltc", "chain": "ltc", "asset": "LTC", "activated": False, "rate": "70", "amount": "0.7",
           "amount_atomic": "70000000", "confirmations_required": 2}
    if chosen == "ltc":
        ltc.update(activated=True, address="rltc1qexample", due="0.35", due_atomic="35000000",
                   payment_uri="litecoin:rltc1qexample?amount=0.35")
    paid = [payment(0, "pending", asset="BTC", amount="0.00049", value="24.50", method="btc", chain="btc")]
    return usd_invoice(status=status, exception=exception, due="24.50", amount_received="24.50",
                       payment_methods=[btc, ltc], payments=paid if payments is None else payments)


def test_a_usd_invoice_half_paid_in_one_coin_asks_for_the_rest_in_either() -> None:
    """After 24.50 of 49.00 USD arrived in BTC: the header shows the amount and what is still due in USD; BTC
    asks for its remaining 0.00049 "to the same address"; LTC, chosen next, asks for its due (0.35) without
    claiming the same address; the list shows a picked coin's due, and says that a coin not picked yet shows
    the price of the whole invoice."""
    on_btc = render_state(half_paid_usd_invoice("btc"), method="btc")
    assert '<span class="label">Amount</span> <strong>49.00 USD</strong>' in on_btc
    assert '<span class="label">Still due</span> <strong>24.50 USD</strong>' in on_btc
    assert "Send the remaining <strong>0.00049 BTC</strong> to the same address." in on_btc
    assert '<code id="pay-amount" class="value">0.00049</code>' in on_btc
    assert '<svg viewBox' in on_btc and f'href="bitcoin:{LEGACY}?amount=0.00049"' in on_btc
    assert '<span class="method-amount">0.00049 BTC</span>' in on_btc  # the picked coin's due in the list
    assert '<span class="method-amount">0.7 LTC</span>' in on_btc and strings.LANGUAGES["en"]("whole_amounts") in on_btc

    on_ltc = render_state(half_paid_usd_invoice("ltc"), method="ltc")
    assert "We received part of the amount: <strong>0.35 LTC</strong> remains to be paid." in on_ltc
    assert "same address" not in on_ltc
    assert '<code id="pay-amount" class="value">0.35</code>' in on_ltc
    assert '<code id="pay-address" class="value wide">rltc1qexample</code>' in on_ltc
    assert '<svg viewBox' in on_ltc and 'href="litecoin:rltc1qexample?amount=0.35"' in on_ltc
    assert strings.LANGUAGES["en"]("whole_amounts") not in on_ltc  # both picked: each shows its own due
    # LTC asked for but not picked yet: the rest in USD, and the button to get an address
    asked = render_state(half_paid_usd_invoice("btc"), method="ltc")
    assert "We received part of the amount: <strong>24.50 USD</strong> remains to be paid." in asked
    assert 'class="button">Pay with LTC</button>' in asked
    for language in ("de", "fr", "es"):
        assert "24.50 USD" in render_state(half_paid_usd_invoice("btc"), language, method="ltc")


def test_processing_shows_the_least_confirmed_pending_payment_against_its_own_method() -> None:
    """Payments on two chains: "n of m" is the pending payment with the fewest confirmations, m its own method's
    confirmations_required (BTC needs 1 here, LTC 2); of two equally confirmed, the one that needs more."""
    def processing(btc: tuple[int, str], ltc: tuple[int, str], btc_required: int = 1) -> str:
        invoice = half_paid_usd_invoice("ltc", "processing", None, payments=[
            payment(btc[0], btc[1], asset="BTC", amount="0.00049", value="24.50", method="btc"),
            payment(ltc[0], ltc[1], asset="LTC", amount="0.35", value="24.50", method="ltc", txid="e" * 64)])
        invoice["payment_methods"][0]["confirmations_required"] = btc_required
        page = render_state(invoice)
        return re.search(r'<span class="confirmations">([^<]*)</span>', page).group(1)  # type: ignore[union-attr]

    assert processing((0, "pending"), (0, "pending")) == "0 of 2 confirmations"  # not BTC's 0 of 1
    assert processing((1, "confirmed"), (1, "pending")) == "1 of 2 confirmations"
    assert processing((2, "pending"), (1, "pending"), btc_required=6) == "1 of 2 confirmations"
    assert processing((1, "pending"), (1, "pending"), btc_required=6) == "1 of 6 confirmations"
    assert processing((0, "pending"), (3, "confirmed"), btc_required=6) == "0 of 6 confirmations"


def test_the_paid_ledger_books_each_payment_in_the_invoice_currency_and_the_coin() -> None:
    """Paid: a line per payment with its date, "Crypto Payments (<coin>)", the txid as reference and the amount
    in USD with the coin beside it; a coin-priced invoice shows the coin amount alone."""
    invoice = half_paid_usd_invoice("ltc", "paid", None, payments=[
        payment(1, "confirmed", asset="BTC", amount="0.00049", value="24.50", method="btc"),
        payment(2, "confirmed", asset="LTC", amount="0.35", value="24.50", method="ltc", txid="e" * 64,
                first_seen_at="2027-01-15T08:05:00Z")])
    page = render_state(invoice)
    ledger = page[page.index('<section class="ledger"'):]
    lines = ledger.split("<li>")[1:]
    assert len(lines) == 2
    for line, (coin, txid, amount, when) in zip(lines, (("BTC", TXID, "0.00049", "08:03"),
                                                         ("LTC", "e" * 64, "0.35", "08:05")), strict=True):
        assert f"<dd>Crypto Payments ({coin})</dd>" in line and f'<code class="wide">{txid}</code>' in line
        assert f'<dd>24.50 USD <span class="unit">({amount} {coin})</span></dd>' in line
        assert f"2027-01-15 {when} UTC" in line and "<dd>confirmed</dd>" in line
    assert '<span class="label">Amount</span> <strong>49.00 USD</strong>' in page and "Still due" not in page
    coin_priced = render_state(STATES["paid"])
    assert "<dd>0.015 BTC</dd>" in coin_priced and "(0.015 BTC)" not in coin_priced


def test_missing_fields_never_break_the_page() -> None:
    """The invoice model grows underneath: a page renders whatever subset of fields it is given."""
    for invoice in ({"id": "inv_x"}, {"id": "inv_x", "status": "unpaid", "payment_methods": [{"method": "btc"}]},
                    {"id": "inv_x", "status": "processing", "payments": [{}], "payment_methods": None},
                    {"id": "inv_x", "status": "paid", "payments": [{"status": "confirmed"}], "metadata": "x"},
                    {"id": "inv_x", "status": "weird", "expires_at": "not a time"}):
        page = render_state(invoice)
        assert page.endswith("</html>")
        public.public_invoice(invoice)


def test_languages_are_chosen_by_accept_language() -> None:
    assert strings.negotiate("de-DE,de;q=0.9,en;q=0.8").code == "de"
    assert strings.negotiate("fr-CA").code == "fr"
    assert strings.negotiate("pt-BR, es;q=0.5, en;q=0.4").code == "es"
    assert strings.negotiate("en;q=0.3, fr;q=0.9").code == "fr"
    for unknown in (None, "", "*", "pt", "de;q=abc", "x" * 5000, ";;,,"):
        assert strings.negotiate(unknown).code == "en"


def test_each_language_file_has_every_key_with_the_same_placeholders() -> None:
    """Adding a language is adding a file; a missing key or a mistyped placeholder fails here, not on a page."""
    english = strings.CATALOG["en"]
    assert set(strings.CATALOG) >= {"en", "de", "fr", "es"}
    from importlib import resources

    for entry in resources.files("watcherd.http").joinpath("locales").iterdir():
        table = json.loads(entry.read_text(encoding="utf-8"))
        assert set(table) == set(english), (entry.name, set(english) ^ set(table))
        for key, text in table.items():
            assert set(re.findall(r"{(\w+)}", text)) == set(re.findall(r"{(\w+)}", english[key])), (entry.name, key)


# ---- escaping ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("redirect", ["javascript:alert(1)", "data:text/html,<script>alert(1)</script>",
                                      "//evil.example", "https://user:pw@shop.example/", "https://a b.example/"])
def test_only_http_urls_become_the_back_link(redirect: str) -> None:
    page = render_state(coin_invoice("paid", payments=[payment(2, "confirmed")], redirect_url=redirect))
    assert "Back to the shop" not in page and "javascript:" not in page
    assert public.public_invoice(coin_invoice(redirect_url=redirect))["redirect_url"] is None


def test_billing_system_text_is_escaped() -> None:
    """order_id, metadata.description and redirect_url are the billing system's: text, never markup."""
    invoice = coin_invoice("paid", payments=[payment(2, "confirmed")], order_id=XSS,
                           metadata={"description": XSS, "redirect_url": 'https://shop.example/"><script>x</script>'})
    page = render_state(invoice)
    assert page.count("<script") == 1 and "<script>alert" not in page  # only our own <script src=...>
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert 'href="https://shop.example/&quot;&gt;&lt;script&gt;x&lt;/script&gt;"' in page


def test_a_chain_is_named_by_its_display_name_never_by_the_operators_key() -> None:
    """The config's display name names a token's chain ("USDC on Ethereum", escaped like any text); a chain
    without a label (left the config) shows the asset alone: the operator's key for a chain ("eth", "mainnet-2")
    is never shown to the customer."""
    invoice = usd_invoice()
    invoice["payment_methods"][2]["chain"] = "mainnet-2"
    page = render_state(invoice, method="eth:USDC", labels={**LABELS, "mainnet-2": ChainLabel("Eth <b>1</b>", False)})
    assert "Pay with USDC on Eth &lt;b&gt;1&lt;/b&gt;" in page and "mainnet-2" not in page.replace(
        "eth%3AUSDC", "")
    bare = render_state(invoice, method="eth:USDC", labels={})
    assert "Pay with USDC</h2>" in bare and "mainnet-2" not in bare and " on " not in bare.split("<main")[1]


def test_a_coin_with_many_decimals_is_listed_rounded_up_and_sent_exactly() -> None:
    """XMR's 0.326666666667 (12 decimals) is listed as 0.32666667 XMR: at most 8 decimals, rounded up, so it never
    reads less than what is due; once picked, the amount to copy and the payment URI stay exact (copying the
    rounded one would overpay)."""
    invoice = usd_invoice()
    invoice["payment_methods"][3].update(amount="0.326666666667", due="0.326666666667")
    listed = render_state(invoice)
    assert "0.32666667 XMR" in listed and "0.326666666667" not in listed
    assert render.shown_amount("0.00000000001") == "0.00000001" and render.shown_amount("0.7") == "0.7"
    assert render.shown_amount("1.000000001") == "1.00000001" and render.shown_amount("49") == "49"
    assert '<p class="pay-amount">0.32666667 XMR</p>' in render_state(invoice, method="xmr")  # before it is picked
    uri = "monero:84example?tx_amount=0.326666666667"
    invoice["payment_methods"][3].update(activated=True, address="84example", payment_uri=uri)
    picked = render_state(invoice, method="xmr")
    assert '<code id="pay-amount" class="value">0.326666666667</code>' in picked and uri in picked


def test_a_test_network_address_wears_a_badge() -> None:
    """A regtest, testnet, signet or stagenet chain (the config's label says test_network) shows "Test network"
    beside the address it asks to pay to, in the customer's language; a mainnet one shows nothing."""
    test = {**LABELS, "btc": ChainLabel("Bitcoin", True)}
    assert '<p class="tag test-network">Test network</p>' in render_state(STATES["unpaid"], labels=test)
    assert "test-network" not in render_state(STATES["unpaid"])
    assert '<p class="tag test-network">Testnetz</p>' in render_state(STATES["unpaid"], "de", labels=test)


def test_without_an_order_id_the_heading_is_the_description_or_one_payment() -> None:
    """No order id: the description heads the page, else a single "Payment" (never "PAYMENT" over "Payment");
    with an order id, "Payment" over "Order A-1"."""
    none = render_state(coin_invoice(order_id=None))
    header = none.split('<header class="order">')[1].split("</header>")[0]
    assert header.count("Payment") == 1 and "eyebrow" not in header and "<title>Payment</title>" in none
    described = render_state(coin_invoice(order_id=None, metadata={"description": "2 × Widget"}))
    assert '<h1 class="description">2 × Widget</h1>' in described and "<title>Payment · 2 × Widget</title>" in described
    ordered = render_state(coin_invoice())
    assert '<p class="eyebrow">Payment</p><h1><span class="label">Order</span> A-1</h1>' in ordered


# ---- QR codes ------------------------------------------------------------------------------------------------


def decode_png(code: segno.QRCode) -> str:
    zxingcpp = pytest.importorskip("zxingcpp")
    from PIL import Image

    out = io.BytesIO()
    code.save(out, kind="png", scale=6, border=4)
    (result,) = zxingcpp.read_barcodes(Image.open(io.BytesIO(out.getvalue())))
    return result.text


def test_btc_bech32_is_uppercased_in_the_qr_only() -> None:
    """BIP21 alphanumeric trick: BITCOIN:BC1Q... in alphanumeric mode makes a smaller code; the query keeps its
    case; legacy (base58, case-sensitive) addresses and other coins are encoded exactly as given."""
    uri = f"bitcoin:{BECH32}?amount=0.015"
    assert qr.qr_content(uri, "BTC") == [f"BITCOIN:{BECH32.upper()}", "?amount=0.015"]
    assert decode_png(qr.build(uri, "BTC")) == f"BITCOIN:{BECH32.upper()}?amount=0.015"
    assert qr.build(uri, "BTC").version < segno.make(uri, error="m").version
    for unchanged, asset in ((f"bitcoin:{LEGACY}?amount=0.015", "BTC"), ("litecoin:ltc1qabc?amount=1", "LTC"),
                             ("ethereum:0xAbC@1?value=10", "ETH"), ("monero:4abc?tx_amount=1", "XMR"),
                             (f"bitcoin:{BECH32}", "LTC")):
        assert qr.qr_content(unchanged, asset) == [unchanged]
        assert decode_png(qr.build(unchanged, asset)) == unchanged
    assert qr.qr_content(f"bitcoin:{BECH32}", "BTC") == [f"BITCOIN:{BECH32.upper()}"]


def test_underpaid_uri_asks_for_the_remaining_amount() -> None:
    base = {"amount": "0.015", "due": "0.01", "amount_atomic": "15", "due_atomic": "10"}
    for uri, expected in (("bitcoin:a?amount=0.015&label=x", "bitcoin:a?amount=0.01&label=x"),
                          ("monero:4a?tx_amount=0.015", "monero:4a?tx_amount=0.01"),
                          ("ethereum:0xa@1?value=15", "ethereum:0xa@1?value=10"),
                          ("ethereum:0xt@1/transfer?address=0xa&uint256=15",
                           "ethereum:0xt@1/transfer?address=0xa&uint256=10")):
        assert render.uri_for_due({**base, "payment_uri": uri}) == expected
    assert render.uri_for_due({**base, "payment_uri": "other:a?amt=0.015"}) is None  # no QR rather than a wrong one
    # the daemon's URI of a picked method asks for the due already (decimal or atomic): kept as it is
    for uri in ("bitcoin:a?amount=0.01", "monero:4a?tx_amount=0.01", "ethereum:0xa@1?value=10",
                "ethereum:0xt@1/transfer?address=0xa&uint256=10", "fake:a?amount=10"):
        assert render.uri_for_due({**base, "payment_uri": uri}) == uri
    assert render.uri_for_due({**base, "payment_uri": "fake:a?amount=15"}) == "fake:a?amount=10"


# ---- over HTTP: the real ledger on a fake chain ---------------------------------------------------------------


class Clock:
    """The ledger's clock, moved by the tests (processor.clock.now += ...)."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def ledger(store_location):
    store = await Store.open(store_location)
    chain = FakeChain("btc", confirmations=2)
    processor = Processor(store, {"btc": chain}, ["webhook"], clock=Clock())
    await processor.start()
    await processor.set_cursor("btc", Cursor(100, "h100"))

    async def readiness():
        return {"ready": True}

    async with TestClient(TestServer(make_app(processor, TOKEN, readiness))) as client:
        yield client, processor, chain
    await store.close()


async def test_page_is_public_strict_csp_and_small(ledger) -> None:
    """No token for /i/, a strict CSP on every answer, assets cached for ever under hashed names, nothing
    external referenced, and a full load (HTML + CSS + JS, QR inline) well under 60 kB."""
    client, processor, _ = ledger
    invoice = await processor.create_invoice("btc", 1_500_000, order_id="A-1")
    response = await client.get(f"/i/{invoice['id']}", headers={"Accept-Language": "fr-FR,fr;q=0.9"})
    assert response.status == 200 and response.content_type == "text/html"
    assert response.headers["Content-Security-Policy"] == EXPECTED_CSP
    assert response.headers["Cache-Control"] == "no-store" and response.headers["X-Frame-Options"] == "DENY"
    page = await response.text()
    assert '<html lang="fr">' in page and "En attente du paiement" in page
    total = len(page.encode())
    for href in re.findall(r'(?:href|src)="(assets/[^"]+)"', page):
        asset = await client.get(f"/i/{href}")
        assert asset.status == 200 and asset.headers["Content-Security-Policy"] == EXPECTED_CSP
        assert asset.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        body = await asset.read()
        total += len(body)
        assert not re.search(rb"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", body), href  # no CDN, font or tracker
    assert not re.search(r'(?:href|src)="(?:https?:)?//', page)
    assert total < 60_000, total
    assert (await client.get("/i/assets/checkout.000000000000.css")).status == 404
    # the API itself still wants its token, whatever the path looks like
    assert (await client.get("/v1/invoices")).status == 401
    assert (await client.get("/i/../v1/invoices")).status in (401, 404)
    assert (await client.get(f"/v1/invoices/{invoice['id']}")).status == 401


async def test_xss_through_the_api_shows_as_text(ledger) -> None:
    """An order id and metadata of <script>alert(1)</script> from the billing system are text on the page."""
    client, _, _ = ledger
    created = await client.post("/v1/invoices", headers={"Authorization": f"Bearer {TOKEN}"}, json={
        "chain": "btc", "amount": "0.015", "order_id": XSS,
        "metadata": {"description": XSS, "redirect_url": "javascript:alert(1)", "note": XSS}})
    invoice = await created.json()
    page = await (await client.get(f"/i/{invoice['id']}")).text()
    assert page.count("<script") == 1 and "<script>alert" not in page and "javascript:" not in page
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") == 3  # title, order id, description


async def test_public_json_never_carries_metadata(ledger) -> None:
    """/status, the live stream and the activation answer carry a whitelist: no metadata, nothing internal."""
    client, processor, _ = ledger
    invoice = await processor.create_invoice("btc", 1_500_000, metadata={"secret": "customer-7-internal"})
    texts = [await (await client.get(f"/i/{invoice['id']}/status")).text(),
             await (await client.post(f"/i/{invoice['id']}/methods/btc",
                                      headers={"Accept": "application/json"})).text()]
    async with client.get(f"/i/{invoice['id']}/live") as stream:
        texts.append(await read_event(stream))
    for text in texts:
        shown = json.loads(text)
        assert "customer-7-internal" not in text and "metadata" not in shown
        assert set(shown) <= {*public.INVOICE_KEYS, "redirect_url", "payment_methods", "payments"}
        assert shown["payment_methods"][0]["address"] == invoice["address"]
        assert set(shown["payment_methods"][0]) == set(public.METHOD_KEYS)


async def test_live_stream_delivers_each_change_then_ends_when_paid(ledger) -> None:
    """A page rendered at version v opens /live?v=...: nothing is sent until the invoice changes; the mempool
    payment, each confirmation and the paid state each arrive as a message; the stream ends at paid."""
    client, processor, chain = ledger
    invoice = await processor.create_invoice("btc", 1_500_000)
    version = public.version(public.public_invoice(invoice))
    key = chain.derive(0)[1]
    async with client.get(f"/i/{invoice['id']}/live?v={version}") as stream:
        assert stream.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        assert stream.headers["Content-Security-Policy"] == EXPECTED_CSP
        assert await stream.content.readline() == b"retry: 3000\n"
        with pytest.raises(TimeoutError):
            await read_event(stream, within=0.3)  # unchanged: silence
        await processor.tx_seen("btc", ChainTx("t1", (Received(key, 0, 1_500_000),), (b"o1",)))
        seen = json.loads(await read_event(stream))
        assert seen["status"] == "processing" and seen["payments"][0]["confirmations"] == 0
        await processor.block_connected("btc", ChainBlock(101, "h101", "h100", (ChainTx("t1", (
            Received(key, 0, 1_500_000),), (b"o1",)),)))
        one = json.loads(await read_event(stream))
        assert one["status"] == "processing" and one["payments"][0]["confirmations"] == 1
        await processor.block_connected("btc", ChainBlock(102, "h102", "h101", ()))
        assert json.loads(await read_event(stream))["status"] == "paid"
        async with asyncio.timeout(5):
            assert await stream.content.read() == b""  # final: the server ended the stream
    paid = await processor.invoice_json(invoice["id"])
    # a client that already shows the final state is told to stop reconnecting (204)
    final = public.version(public.public_invoice(paid))
    again = await client.get(f"/i/{invoice['id']}/live", headers={"Last-Event-ID": final})
    assert again.status == 204
    assert processor.live.watching == 0


async def test_an_expired_page_stays_live_and_shows_a_late_payment(ledger) -> None:
    """A payment sent just before the expiry and seen just after it completes the invoice (paid_late): the page
    that says Expired must turn to it by itself, so the stream does not end at expired."""
    client, processor, chain = ledger
    invoice = await processor.create_invoice("btc", 1_500_000, expires_in=60)
    processor.clock.now += 120
    assert await processor.expire_due() == 1
    page = await (await client.get(f"/i/{invoice['id']}")).text()
    assert "<h2>Expired</h2>" in page and 'data-final="0"' in page and 'id="pay-address"' not in page
    async with client.get(f"/i/{invoice['id']}/live") as stream:
        assert json.loads(await read_event(stream))["status"] == "expired"
        await processor.tx_seen("btc", ChainTx("t1", (Received(chain.derive(0)[1], 0, 1_500_000),), (b"o1",)))
        late = json.loads(await read_event(stream))
        assert (late["status"], late["exception"]) == ("processing", "paid_late")


async def test_live_stream_heartbeats_and_ends_at_shutdown(ledger, monkeypatch) -> None:
    """Idle streams get a comment now and then (proxies keep them open), and stopping the daemon ends them
    at once instead of waiting out its shutdown timeout."""
    client, processor, _ = ledger
    monkeypatch.setattr(checkout, "HEARTBEAT_SECONDS", 0.05)
    invoice = await processor.create_invoice("btc", 1_500_000)
    async with client.get(f"/i/{invoice['id']}/live") as stream:
        await read_event(stream)
        async with asyncio.timeout(5):
            while (await stream.content.readline()) != b": heartbeat\n":
                pass
        await client.server.app.shutdown()
        async with asyncio.timeout(5):
            await stream.content.read()
    assert processor.live.watching == 0


async def test_status_polling_answers_304_while_unchanged(ledger) -> None:
    client, processor, _ = ledger
    invoice = await processor.create_invoice("btc", 1_500_000)
    first = await client.get(f"/i/{invoice['id']}/status")
    etag = first.headers["ETag"]
    assert first.status == 200 and etag == f'"{public.version(await first.json())}"'
    same = await client.get(f"/i/{invoice['id']}/status", headers={"If-None-Match": etag})
    assert same.status == 304
    await processor.cancel_invoice(invoice["id"])
    changed = await client.get(f"/i/{invoice['id']}/status", headers={"If-None-Match": etag})
    assert changed.status == 200 and (await changed.json())["status"] == "cancelled"


async def test_unknown_invoice_is_404_everywhere(ledger) -> None:
    client, _, _ = ledger
    page = await client.get("/i/inv_nope", headers={"Accept-Language": "es"})
    assert page.status == 404 and "Factura no encontrada" in await page.text()
    assert page.headers["Content-Security-Policy"] == EXPECTED_CSP
    for path in ("/i/inv_nope/status", "/i/inv_nope/live", "/i/inv_nope/qr/btc.svg", "/i/" + "x" * 300):
        response = await client.get(path)
        assert response.status == 404, path
    form = await client.post("/i/inv_nope/methods/btc", allow_redirects=False)
    assert form.status == 404 and "Invoice not found" in await form.text()
    js = await client.post("/i/inv_nope/methods/btc", headers={"Accept": "application/json"})
    assert js.status == 404 and (await js.json())["error"]["code"] == "not_found"


async def test_qr_svg_route_serves_the_payment_uri(ledger) -> None:
    client, processor, _ = ledger
    invoice = await processor.create_invoice("btc", 1_500_000)
    response = await client.get(f"/i/{invoice['id']}/qr/btc.svg")
    assert response.status == 200 and response.content_type == "image/svg+xml"
    assert (await response.read()).startswith(b"<?xml")
    assert (await client.get(f"/i/{invoice['id']}/qr/ltc.svg")).status == 404


@pytest.fixture
async def two_coins(store_location):
    """The real ledger with two fake coin chains: BTC (1 confirmation) and LTC (2), 8 decimals each."""
    store = await Store.open(store_location)
    chains = {}
    for name, asset, confirmations in (("btc", "BTC", 1), ("ltc", "LTC", 2)):
        chain = FakeChain(name, confirmations=confirmations)
        chain.asset, chain.decimals, chain.assets = asset, 8, {asset: 8}
        chains[name] = chain
    processor = Processor(store, chains, ["webhook"], clock=Clock())
    await processor.start()
    for name in chains:
        await processor.set_cursor(name, Cursor(100, "h100"))

    async def readiness():
        return {"ready": True}

    async with TestClient(TestServer(make_app(processor, TOKEN, readiness))) as client:
        yield client, processor, chains
    await store.close()


async def test_a_usd_invoice_paid_half_in_btc_and_the_rest_in_ltc_on_the_real_ledger(two_coins) -> None:
    """The browser journey of test_checkout_browser.py without a browser, on the real ledger: the page and the
    public JSON at each step of 49.00 USD paid 24.50 in BTC, then the rest in LTC (rates sent with the create)."""
    client, processor, chains = two_coins
    created = await client.post("/v1/invoices", headers={"Authorization": f"Bearer {TOKEN}"}, json={
        "currency": "USD", "amount": "49.00", "payment_methods": ["btc", "ltc"],
        "rates": {"BTC": "50000", "LTC": "70"}, "expires_in": 900})
    invoice_id = (await created.json())["id"]

    async def page(method: str) -> str:
        return await (await client.get(f"/i/{invoice_id}?method={method}")).text()

    async def shown() -> dict[str, Any]:
        return await (await client.get(f"/i/{invoice_id}/status")).json()

    first = await page("")
    assert "<strong>49.00 USD</strong>" in first and "0.00098 BTC" in first and "0.7 LTC" in first
    picked = await (await client.post(f"/i/{invoice_id}/methods/btc", headers={"Accept": "application/json"})).json()
    btc_address, btc_key = chains["btc"].derive(0)
    assert picked["payment_methods"][0]["due"] == "0.00098"
    await processor.tx_seen("btc", ChainTx("b1", (Received(btc_key, 0, 49_000),), (b"btc-o1",)))

    on_btc = await page("btc")
    assert "<h2>Underpaid</h2>" in on_btc and "<strong>24.50 USD</strong>" in on_btc
    assert "Send the remaining <strong>0.00049 BTC</strong> to the same address." in on_btc
    assert '<svg viewBox' in on_btc  # the QR asks for the rest: the daemon's URI carries it
    public_json = await shown()
    btc, ltc = public_json["payment_methods"]
    assert (btc["due"], btc["payment_uri"]) == ("0.00049", f"fake:{btc_address}?amount=49000")
    assert (ltc["activated"], ltc["due"], ltc["amount"]) == (False, "0.35", "0.7")  # the rest, at its locked rate
    assert "0.35 LTC" in on_btc and "whole amount" not in on_btc  # the coin list offers the rest in LTC too
    assert public_json["payments"] == [{
        "txid": "b1", "method": "btc", "asset": "BTC", "amount": "0.00049", "value": "24.50", "confirmations": 0,
        "status": "pending", "first_seen_at": "2027-01-15T08:00:00Z"}]
    assert (public_json["currency"], public_json["amount"], public_json["due"]) == ("USD", "49.00", "24.50")

    assert (await client.post(f"/i/{invoice_id}/methods/ltc", allow_redirects=False)).status == 303
    ltc_address, ltc_key = chains["ltc"].derive(0)
    on_ltc = await page("ltc")
    assert "We received part of the amount: <strong>0.35 LTC</strong> remains to be paid." in on_ltc
    assert f'<code id="pay-address" class="value wide">{ltc_address}</code>' in on_ltc and '<svg viewBox' in on_ltc
    ltc = (await shown())["payment_methods"][1]
    assert (ltc["due"], ltc["payment_uri"]) == ("0.35", f"fake:{ltc_address}?amount=35000000")

    await processor.tx_seen("ltc", ChainTx("l1", (Received(ltc_key, 0, 35_000_000),), (b"ltc-o1",)))
    processing = await page("ltc")
    assert "<h2>Processing</h2>" in processing and '<span class="confirmations">0 of 2 confirmations' in processing
    await processor.block_connected("btc", ChainBlock(101, "h101", "h100", (
        ChainTx("b1", (Received(btc_key, 0, 49_000),), (b"btc-o1",)),)))
    await processor.block_connected("ltc", ChainBlock(101, "h101", "h100", (
        ChainTx("l1", (Received(ltc_key, 0, 35_000_000),), (b"ltc-o1",)),)))
    processing = await page("ltc")
    assert '<span class="confirmations">1 of 2 confirmations' in processing  # BTC is confirmed, LTC is not
    await processor.block_connected("ltc", ChainBlock(102, "h102", "h101", ()))

    paid = await page("ltc")
    assert "<h2>Paid</h2>" in paid
    assert '<dd>24.50 USD <span class="unit">(0.00049 BTC)</span></dd>' in paid
    assert '<dd>24.50 USD <span class="unit">(0.35 LTC)</span></dd>' in paid
    assert "Crypto Payments (BTC)" in paid and "Crypto Payments (LTC)" in paid
    final = await shown()
    assert sum(Decimal(p["value"]) for p in final["payments"]) == Decimal("49.00") and final["due"] == "0.00"
    assert [(p["method"], p["status"]) for p in final["payments"]] == [("btc", "confirmed"), ("ltc", "confirmed")]


# ---- choosing a coin: a stub holding invoices of the coming shape ----------------------------------------------


STUB_ADDRESSES = {"btc": (BECH32, "bitcoin"), "ltc": ("ltc1qg82lunxgr0yhlv0n2xr4xzyd0zq6mykfv5a4kw", "litecoin"),
                  "eth:USDC": ("0x52908400098527886E0F7030069857D2E4169EE7", "ethereum"),
                  "xmr": ("88manyMoneroCharacters", "monero")}


class StubProcessor:
    """Just what the page uses of the ledger (invoice_json(s), activate_method, live, clock), over JSON kept here."""

    def __init__(self, invoices: list[dict[str, Any]]):
        self.invoices = {i["id"]: copy.deepcopy(i) for i in invoices}
        self.live = Live()
        self.broken = False

    def clock(self) -> float:
        return NOW

    async def invoice_json(self, invoice_id: str) -> dict[str, Any] | None:
        if self.broken:
            raise sqlite3.OperationalError("disk I/O error")
        return copy.deepcopy(self.invoices.get(invoice_id))

    async def invoice_jsons(self, invoice_ids: list[str]) -> dict[str, dict[str, Any]]:
        if self.broken:
            raise sqlite3.OperationalError("disk I/O error")
        return {i: copy.deepcopy(self.invoices[i]) for i in invoice_ids if i in self.invoices}

    async def activate_method(self, invoice_id: str, method: str) -> dict[str, Any]:
        if self.broken:
            raise sqlite3.OperationalError("database is locked")
        invoice = self.invoices[invoice_id]
        found = next((m for m in invoice["payment_methods"] if m["method"] == method), None)
        if found is None:
            raise InvoiceError("method", f"invoice {invoice_id} does not offer {method!r}")
        address, scheme = STUB_ADDRESSES[method]
        found.update(activated=True, address=address, due=found["amount"],
                     payment_uri=f"{scheme}:{address}?amount={found['amount']}", confirmations_required=2)
        self.live.touch([invoice_id])
        return copy.deepcopy(invoice)


@pytest.fixture
async def stub():
    processor = StubProcessor([usd_invoice()])

    async def readiness():
        return {"ready": True}

    async with TestClient(TestServer(make_app(processor, TOKEN, readiness))) as client:  # type: ignore[arg-type]
        yield client, processor


async def test_choosing_a_coin_by_form_post_and_by_json(stub) -> None:
    """Without JS the "Pay with" form posts and gets a 303 back to the page showing that coin; the page's
    script posts with Accept: application/json and gets the public invoice."""
    client, processor = stub
    invoice_id = usd_invoice()["id"]
    form = await client.post(f"/i/{invoice_id}/methods/ltc", allow_redirects=False)
    assert form.status == 303 and form.headers["Location"] == f"../../{invoice_id}?method=ltc"
    followed = await client.post(f"/i/{invoice_id}/methods/ltc")
    page = await followed.text()
    assert followed.status == 200 and followed.url.path == f"/i/{invoice_id}" and followed.url.query["method"] == "ltc"
    assert f'<code id="pay-address" class="value wide">{STUB_ADDRESSES["ltc"][0]}</code>' in page
    js = await client.post(f"/i/{invoice_id}/methods/eth:USDC", headers={"Accept": "application/json"})
    shown = await js.json()
    assert js.status == 200 and "metadata" not in shown
    assert [m["activated"] for m in shown["payment_methods"]] == [False, True, True, False]
    # a method the invoice does not offer: a clear message, as JSON or as a page
    bad = await client.post(f"/i/{invoice_id}/methods/doge", headers={"Accept": "application/json"})
    assert bad.status == 422 and "does not offer 'doge'" in (await bad.json())["error"]["message"]
    bad_form = await client.post(f"/i/{invoice_id}/methods/doge", headers={"Accept-Language": "de"})
    assert bad_form.status == 422 and "nicht mit doge bezahlt" in await bad_form.text()
    # the store cannot be read or written: 503, nothing half done
    processor.broken = True
    down = await client.post(f"/i/{invoice_id}/methods/btc", headers={"Accept": "application/json"})
    assert down.status == 503 and (await down.json())["error"]["code"] == "store_unavailable"
    assert (await client.post(f"/i/{invoice_id}/methods/btc")).status == 503
    page_down = await client.get(f"/i/{invoice_id}")
    assert page_down.status == 503 and page_down.headers["Retry-After"] == "30"
    assert (await client.get(f"/i/{invoice_id}/status")).status == 503


async def test_activation_reaches_an_open_live_stream(stub) -> None:
    client, processor = stub
    invoice_id = usd_invoice()["id"]
    async with client.get(f"/i/{invoice_id}/live") as stream:
        assert [m["activated"] for m in json.loads(await read_event(stream))["payment_methods"]] == [False] * 4
        await client.post(f"/i/{invoice_id}/methods/btc", headers={"Accept": "application/json"})
        shown = json.loads(await read_event(stream))
        assert shown["payment_methods"][0]["address"] == BECH32


def test_every_page_file_is_in_the_package_data() -> None:
    """pyproject's package-data globs cover every stylesheet, script and strings file the page reads: a file
    left out would only show on an operator's machine (a page without style, or no strings at import)."""
    import fnmatch
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    shipped = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    http = root / "watcherd" / "http"
    for folder, package in ((http / "page", "watcherd.http.page"), (http / "locales", "watcherd.http")):
        for path in folder.iterdir():
            if path.suffix in (".py", ".pyc") or path.name == "__pycache__":
                continue
            relative = path.relative_to(root / package.replace(".", "/")).as_posix()
            assert any(fnmatch.fnmatch(relative, pattern) for pattern in shipped[package]), relative


async def test_only_the_modal_view_may_be_framed_and_it_stays_modal_through_a_coin_choice(stub) -> None:
    """A plain page refuses every frame (clickjacking); ?view=modal lets the configured origins frame it (BTCPay's
    modal script), and a coin chosen there by form post comes back to the modal view."""
    client, processor = stub
    invoice_id = next(iter(processor.invoices))
    plain = await client.get(f"/i/{invoice_id}")
    assert plain.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in plain.headers["Content-Security-Policy"]
    assert "data-close" not in await plain.text()
    modal = await client.get(f"/i/{invoice_id}?view=modal")
    assert "X-Frame-Options" not in modal.headers
    assert modal.headers["Content-Security-Policy"].endswith("frame-ancestors *")
    text = await modal.text()
    assert 'data-modal-status="New"' in text and "data-close hidden" in text
    assert f'action="{invoice_id}/methods/btc?view=modal"' in text
    chosen = await client.post(f"/i/{invoice_id}/methods/btc?view=modal", allow_redirects=False)
    assert chosen.status == 303 and chosen.headers["Location"].endswith(f"{invoice_id}?method=btc&view=modal")
    await client.post(f"/i/{invoice_id}/methods/ltc?view=modal", allow_redirects=False)
    on_btc = await (await client.get(f"/i/{invoice_id}?view=modal&method=btc")).text()
    assert 'href="?method=ltc&amp;view=modal"' in on_btc and f'action="{invoice_id}/methods/xmr?view=modal"' in on_btc


async def test_the_operator_narrows_who_may_frame_the_modal_view() -> None:
    processor = StubProcessor([usd_invoice()])

    async def readiness():
        return {"ready": True}

    shops = ("https://shop.example", "https://b.example:8443")
    app = make_app(processor, TOKEN, readiness, embed_origins=shops)  # type: ignore[arg-type]
    async with TestClient(TestServer(app)) as client:
        modal = await client.get(f"/i/{next(iter(processor.invoices))}?view=modal")
    assert modal.headers["Content-Security-Policy"].endswith(f"frame-ancestors {' '.join(shops)}")
