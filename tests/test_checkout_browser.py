"""The payment page in a real browser: headless Chromium (Debian `chromium` + `chromium-driver`, driven by
selenium) against the real `watcherd run` and real regtest nodes.

The customer's journey: open the page, read the amount and the address from it, pay them from the node's
wallet, and watch the page go Processing (with its confirmations) and then Paid over Server-Sent Events, with no
reload. Along the way: no request ever leaves the daemon's origin (Chromium's performance log), no console
error (a CSP violation would be one), nothing wider than a 360 px phone screen, the copy buttons reachable by
keyboard, and the QR code in a screenshot decodes (zxing-cpp) to the payment URI. Screenshots of each state at
360 px and desktop width, light and dark, land in test-artifacts/checkout/.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from conftest import scaled
from harness import chain_table, free_port

# a browser is a whole program, like the nodes: deselected with the unit tests' -m "not nodes"
pytestmark = pytest.mark.nodes

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "checkout"
VIEWPORTS = {"360": (360, 780, True), "desktop": (1280, 900, False)}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the module; selenium is given both binaries, so it never fetches a driver."""
    assert CHROMIUM.exists() and CHROMEDRIVER.exists(), "Debian chromium + chromium-driver: run scripts/install-deps"
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium-manager: never look anything up online
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900", "--hide-scrollbars",
                     "--no-first-run", "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", "--disable-default-apps", "--lang=en-US"):
        options.add_argument(argument)
    options.add_experimental_option("prefs", {"intl.accept_languages": "en-US,en"})
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(scaled(30))
    try:
        yield driver
    finally:
        driver.quit()


class Page:
    """The browser on one payment page, with the network requests it made kept as they are read."""

    def __init__(self, driver: Any, origin: str):
        self.driver = driver
        self.origin = origin
        self.requests: list[dict[str, Any]] = []
        self.console: list[dict[str, Any]] = []
        self.drain()  # what an earlier test's page left in the shared browser's logs is not this page's
        self.requests.clear()
        self.console.clear()

    def drain(self) -> None:
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                self.requests.append({"url": message["params"]["request"]["url"],
                                      "type": message["params"].get("type")})
        self.console.extend(e for e in self.driver.get_log("browser") if e["level"] == "SEVERE")

    def open(self, path: str, accept_language: str = "en-US,en") -> None:
        self.driver.execute_cdp_cmd("Network.enable", {})
        self.driver.execute_cdp_cmd("Network.setUserAgentOverride", {
            "userAgent": self.driver.execute_script("return navigator.userAgent"), "acceptLanguage": accept_language})
        self.driver.get(f"{self.origin}{path}")
        self.wait(lambda d: d.execute_script("return document.readyState") == "complete", "the page to load")

    def wait(self, condition: Any, what: str, timeout: float = 20) -> Any:
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            return WebDriverWait(self.driver, scaled(timeout), poll_frequency=0.05).until(condition)
        except TimeoutException:
            raise AssertionError(f"timed out waiting for {what}; page shows:\n{self.text('main')}") from None

    def text(self, selector: str) -> str:
        """The rendered text of the first match, read in one script call (the live update swaps <main>, so an
        element found in one call may be gone in the next)."""
        return self.driver.execute_script(
            "const e = document.querySelector(arguments[0]); return e ? e.innerText.trim() : ''", selector)

    def headline(self) -> str:
        return self.text(".status h2")

    def screenshot(self, name: str) -> dict[str, Path]:
        """Full-page screenshots at each viewport, light and dark; returns them by "<viewport>-<scheme>"."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shots = {}
        for viewport, (width, height, mobile) in VIEWPORTS.items():
            self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
                "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile})
            for scheme in ("light", "dark"):
                self.driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {
                    "features": [{"name": "prefers-color-scheme", "value": scheme}]})
                assert self.driver.execute_script(
                    "return matchMedia('(prefers-color-scheme: dark)').matches") == (scheme == "dark")
                if mobile:  # nothing wider than the phone: no sideways scrolling
                    assert self.driver.execute_script("return document.documentElement.scrollWidth") <= width
                size = self.driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
                png = self.driver.execute_cdp_cmd("Page.captureScreenshot", {
                    "format": "png", "captureBeyondViewport": True,
                    "clip": {"x": 0, "y": 0, "width": width, "height": max(height, size["height"]), "scale": 1}})
                path = ARTIFACTS / f"{name}-{viewport}-{scheme}.png"
                path.write_bytes(base64.b64decode(png["data"]))
                shots[f"{viewport}-{scheme}"] = path
        self.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        self.driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})
        return shots

    def assert_only_own_origin(self) -> None:
        self.drain()
        assert self.requests, "the performance log recorded no request"
        outside = [r["url"] for r in self.requests if not (r["url"].startswith(f"{self.origin}/")
                                                          or r["url"].startswith("data:"))]
        assert outside == [], f"requests outside the daemon: {outside}"
        assert self.console == [], f"console errors (a CSP violation shows here): {self.console}"


def decode_qr(path: Path) -> list[str]:
    import zxingcpp
    from PIL import Image

    return [result.text for result in zxingcpp.read_barcodes(Image.open(path))]


def same_payment_uri(decoded: str, uri: str) -> bool:
    """Exact equality, except that BIP21 lets a BTC QR carry `BITCOIN:<BECH32 ADDRESS>` in upper case (the
    alphanumeric-mode trick): scheme and address compare case-insensitively there, the query exactly."""
    if decoded == uri:
        return True
    head, _, query = decoded.partition("?")
    uri_head, _, uri_query = uri.partition("?")
    return (uri_head.lower().startswith(("bitcoin:bc1", "bitcoin:tb1", "bitcoin:bcrt1")) and head == head.upper()
            and head.lower() == uri_head.lower() and query == uri_query)


def test_customer_pays_and_the_page_goes_processing_then_paid_without_reload(bsv_node, daemon_factory, browser):
    """The acceptance journey on the real daemon and bitcoind (ZMQ), confirmations 2: amount and address read
    from the page are paid; the page shows Processing with 0 then 1 of 2 confirmations, then Paid with the
    ledger line and the way back to the shop, all in the same document (one navigation, a marker set on the
    window survives), through the SSE stream."""
    daemon = daemon_factory(chain_table("btc", bsv_node, confirmations=2))
    invoice = daemon.create_invoice("btc", "0.015", order_id="ORDER-77", expires_in=3600, metadata={
        "description": "2 × Widget, blue", "redirect_url": "https://shop.example/orders/ORDER-77"})
    page = Page(browser, f"http://127.0.0.1:{daemon.port}")
    page.open(f"/i/{invoice['id']}")
    assert page.headline() == "Waiting for payment" and "ORDER-77" in page.text("h1")
    page.wait(lambda d: page.text('button[data-copy="pay-address"]') == "Copy", "the script to reveal copy buttons")
    address, amount = page.text("#pay-address"), page.text("#pay-amount")
    assert (address, amount) == (invoice["address"], "0.015")
    assert page.text(".pay .test-network") == "Test network"  # a regtest address: never real money
    method = invoice["payment_methods"][0]

    shots = page.screenshot("1-unpaid")
    for variant, path in shots.items():
        decoded = decode_qr(path)
        assert len(decoded) == 1 and same_payment_uri(decoded[0], method["payment_uri"]), (variant, decoded)
    # this node's addresses are legacy base58 (case-sensitive): the QR must carry the URI byte for byte
    assert decode_qr(shots["360-light"]) == [method["payment_uri"]]

    # keyboard: Tab reaches the copy buttons and the wallet link in document order
    from selenium.webdriver.common.keys import Keys

    reached = []
    for _ in range(4):
        browser.switch_to.active_element.send_keys(Keys.TAB)
        reached.append(browser.execute_script(
            "const e = document.activeElement; return e.dataset.copy || e.getAttribute('href') || e.tagName"))
        if reached[-1] == "pay-address":  # Enter on the focused copy button copies the address
            browser.switch_to.active_element.send_keys(Keys.ENTER)
            page.wait(lambda d: page.text("#copy-status") == "Copied", "the copy to be confirmed")
    assert reached[:3] == ["pay-amount", "pay-address", method["payment_uri"]], reached
    assert browser.execute_script("return window.getSelection().toString()") in ("", address)
    browser.execute_script("window.__sameDocument = true")

    txid = bsv_node.pay(address, Decimal(amount))
    page.wait(lambda d: page.headline() == "Processing", "Processing")
    page.wait(lambda d: "0 of 2 confirmations" in page.text(".ledger"), "0 of 2 confirmations")
    assert txid in page.text(".ledger")
    bsv_node.mine(1)
    page.wait(lambda d: "1 of 2 confirmations" in page.text(".ledger"), "1 of 2 confirmations")
    page.screenshot("2-processing")
    bsv_node.mine(1)
    page.wait(lambda d: page.headline() == "Paid", "Paid")
    ledger = page.text(".ledger")
    assert "Crypto Payments (BTC)" in ledger and txid in ledger and "0.015 BTC" in ledger
    back = browser.find_element("css selector", ".actions a")
    assert back.get_attribute("href") == "https://shop.example/orders/ORDER-77" and back.text == "Back to the shop"
    assert browser.execute_script("return window.__sameDocument") is True, "the page was reloaded"
    page.screenshot("3-paid")

    page.assert_only_own_origin()
    documents = [r["url"] for r in page.requests if r["type"] == "Document"]
    assert documents == [f"{page.origin}/i/{invoice['id']}"], documents  # no reload, no navigation
    assert any("/live?v=" in r["url"] and r["type"] == "EventSource" for r in page.requests)
    assert daemon.wait_status(invoice["id"], "paid")["payments"][0]["txid"] == txid


RATES = {"BTC": "50000", "LTC": "70"}  # 49.00 USD = 0.00098 BTC = 0.7 LTC; half of each is 24.50 USD


def test_usd_invoice_paid_half_in_btc_and_the_rest_in_ltc(bsv_node, ltc_node, daemon_factory, browser):
    """A 49.00 USD invoice offered in BTC and LTC at the rates the billing system sent, on the real daemon and
    both nodes. The customer chooses BTC on the page, pays half of what it shows; the page turns Underpaid and
    asks for the remaining BTC; the customer switches to LTC ("Pay with another currency"), which asks for the
    rest in LTC, and pays that. BTC needs 1 confirmation, LTC 2: Processing shows the least confirmed pending
    payment against its own method's requirement (LTC's "n of 2"), then Paid, with one ledger line per payment
    in USD and in the coin, adding up to 49.00 USD. One document throughout, nothing outside the origin."""
    daemon = daemon_factory(chain_table("btc", bsv_node, confirmations=1) + chain_table("ltc", ltc_node,
                                                                                        confirmations=2))
    invoice = daemon.api("POST", "/v1/invoices", {
        "currency": "USD", "amount": "49.00", "payment_methods": ["btc", "ltc"], "rates": RATES,
        "order_id": "USD-49", "expires_in": 3600, "redirect_url": "https://shop.example/orders/USD-49"})
    page = Page(browser, f"http://127.0.0.1:{daemon.port}")
    page.open(f"/i/{invoice['id']}")
    assert page.headline() == "Waiting for payment" and "49.00 USD" in page.text("header")
    methods = page.text(".methods")
    assert "0.00098 BTC" in methods and "0.7 LTC" in methods
    page.screenshot("usd-1-choose-coin")
    browser.execute_script("window.__sameDocument = true")

    def api_method(name: str) -> dict[str, Any]:
        return next(m for m in daemon.invoice(invoice["id"])["payment_methods"] if m["method"] == name)

    # BTC, chosen on the page: its address and amount are read from it
    browser.find_element("css selector", 'form[action$="/methods/btc"] button').click()
    page.wait(lambda d: page.text("#pay-address") != "", "the BTC address")
    btc = api_method("btc")
    address, amount = page.text("#pay-address"), page.text("#pay-amount")
    assert (address, amount) == (btc["address"], "0.00098")
    shots = page.screenshot("usd-2-btc-chosen")
    assert decode_qr(shots["360-light"]) == [btc["payment_uri"]]  # base58: byte for byte
    left = page.text("time[data-countdown]")  # the countdown to the expiry ticks: 59:5x, m:ss
    assert left.startswith("59:") or left == "1:00:00", left
    page.wait(lambda d: page.text("time[data-countdown]") not in ("", left), "the countdown to tick")

    btc_txid = bsv_node.pay(address, Decimal(amount) / 2)
    page.wait(lambda d: page.headline() == "Underpaid", "Underpaid")
    page.wait(lambda d: page.text("#pay-amount") == "0.00049", "the remaining BTC")
    btc = api_method("btc")
    assert btc["due"] == "0.00049" and btc["payment_uri"].endswith("?amount=0.00049")
    assert "Send the remaining 0.00049 BTC to the same address" in page.text(".status")
    assert "24.50 USD" in page.text("header")
    shots = page.screenshot("usd-3-btc-underpaid")
    assert decode_qr(shots["360-dark"]) == [btc["payment_uri"]]

    # the rest in LTC: its own address, asking for the rest (24.50 USD at 70), not for "the same address"
    browser.find_element("css selector", "details.methods summary").click()
    listed = page.text(".methods")  # every coin asks for what remains: 24.50 USD, in BTC and at LTC's 70
    assert "0.00049 BTC" in listed and "0.35 LTC" in listed and "for the whole invoice" not in listed
    page.screenshot("usd-4-other-currency")
    browser.find_element("css selector", 'form[action$="/methods/ltc"] button').click()
    page.wait(lambda d: page.text("#pay-address").startswith("rltc1"), "the LTC address")
    assert browser.current_url.endswith(f"/i/{invoice['id']}?method=ltc")
    ltc = api_method("ltc")
    ltc_address, ltc_due = page.text("#pay-address"), page.text("#pay-amount")
    assert (ltc_address, ltc_due) == (ltc["address"], "0.35") and ltc["due"] == "0.35"
    assert "0.35 LTC remains to be paid" in page.text(".status") and "same address" not in page.text(".status")
    shots = page.screenshot("usd-5-ltc-rest")
    assert ltc["payment_uri"] == f"litecoin:{ltc_address}?amount=0.35"
    assert decode_qr(shots["360-light"]) == [ltc["payment_uri"]] == decode_qr(shots["desktop-dark"])

    ltc_txid = ltc_node.pay(ltc_address, ltc_due)
    page.wait(lambda d: page.headline() == "Processing", "Processing")
    # both pending with 0 confirmations: the status names the one that needs more, LTC's 0 of 2 (not BTC's 0 of 1)
    page.wait(lambda d: "0 of 2 confirmations" in page.text(".status"), "LTC's 0 of 2 confirmations")
    bsv_node.mine(1)
    ltc_node.mine(1)
    page.wait(lambda d: "1 of 2 confirmations" in page.text(".status"), "LTC's 1 of 2 confirmations")
    statuses = browser.execute_script(
        "return [...document.querySelectorAll('.ledger .line > div:last-child dd')].map(dd => dd.innerText.trim())")
    assert statuses == ["confirmed", "1 of 2 confirmations"], statuses  # BTC done, LTC on its way
    page.screenshot("usd-6-processing")
    ltc_node.mine(1)
    page.wait(lambda d: page.headline() == "Paid", "Paid")
    page.screenshot("usd-7-paid")

    # the ledger: one line per payment, in USD and in the coin, adding up to the invoice
    lines = browser.execute_script(
        "return [...document.querySelectorAll('.ledger li')].map(li => li.innerText.replace(/\\s+/g, ' '))")
    assert len(lines) == 2, lines
    by_txid = {txid: next(line for line in lines if txid in line) for txid in (btc_txid, ltc_txid)}
    assert "Crypto Payments (BTC)" in by_txid[btc_txid] and "24.50 USD (0.00049 BTC)" in by_txid[btc_txid]
    assert "Crypto Payments (LTC)" in by_txid[ltc_txid] and "24.50 USD (0.35 LTC)" in by_txid[ltc_txid]
    values = [Decimal(line.split(" USD (")[0].rsplit(" ", 1)[1]) for line in lines]
    assert sum(values) == Decimal("49.00"), lines
    back = browser.find_element("css selector", ".actions a")
    assert back.get_attribute("href") == "https://shop.example/orders/USD-49"
    status = json.loads(browser.execute_script(
        "return fetch(document.getElementById('checkout').dataset.status).then(r => r.text())"))
    assert sorted((p["method"], p["value"], p["amount"]) for p in status["payments"]) == \
        [("btc", "24.50", "0.00049"), ("ltc", "24.50", "0.35")]
    assert (status["currency"], status["amount"], status["due"]) == ("USD", "49.00", "0.00")
    assert browser.execute_script("return window.__sameDocument") is True, "the page was reloaded"
    page.assert_only_own_origin()
    documents = [r["url"] for r in page.requests if r["type"] == "Document"]
    assert documents == [f"{page.origin}/i/{invoice['id']}"], documents  # no reload, no navigation
    assert any("/live?v=" in r["url"] and r["type"] == "EventSource" for r in page.requests)


def test_litecoin_qr_keeps_its_bech32_lowercase_and_the_page_speaks_german(ltc_node, daemon_factory, browser):
    """The uppercase trick is BTC's only: an LTC bech32 QR decodes to the URI exactly as given. Accept-Language
    de picks German; the page turns Expired by itself when the daemon expires the invoice, and then offers no
    address."""
    daemon = daemon_factory(chain_table("ltc", ltc_node, confirmations=1))
    # expires long enough after the page opens for the screenshots, soon enough to watch it expire
    invoice = daemon.create_invoice("ltc", "0.25", order_id="B-2", expires_in=round(scaled(6)))
    page = Page(browser, f"http://127.0.0.1:{daemon.port}")
    page.open(f"/i/{invoice['id']}", accept_language="de-DE,de;q=0.9")
    assert page.headline() == "Warten auf Zahlung"
    shots = page.screenshot("4-ltc-unpaid-de")
    uri = invoice["payment_methods"][0]["payment_uri"]
    assert uri.startswith("litecoin:rltc1q")
    assert decode_qr(shots["360-light"]) == [uri] and decode_qr(shots["desktop-dark"]) == [uri]
    # the page learns of the expiry by itself
    page.wait(lambda d: page.headline() == "Abgelaufen", "Abgelaufen", timeout=30)
    assert page.text("#pay-address") == ""
    page.screenshot("5-expired-de")
    page.assert_only_own_origin()


@contextmanager
def served(app: Any) -> Iterator[tuple[str, asyncio.AbstractEventLoop]]:
    """An aiohttp application on a free loopback port, run by its own event loop in a thread."""
    from aiohttp import web

    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    port = free_port()
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="stub-daemon", daemon=True)
    thread.start()
    assert started.wait(10), "the stub server did not start"
    try:
        yield f"http://127.0.0.1:{port}", loop
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_choosing_a_coin_on_a_usd_invoice_without_leaving_the_page(browser):
    """The invoice shape coming next (49.00 USD offered in four coins, none activated), served by the real
    routes over a stub ledger: the list shows each coin's amount (XMR's 12 decimals rounded up to 8), the token
    on its chain's display name ("USDC on Ethereum"); pressing "Pay with LTC" activates it through the script
    (no navigation) and the page shows the LTC address and QR, with its test network's badge; a later
    underpayment arrives live and asks for the rest."""
    from test_checkout import LABELS, STUB_ADDRESSES, StubProcessor, payment, usd_invoice

    from watcherd.config import ChainLabel
    from watcherd.http.api import make_app

    async def readiness() -> dict[str, Any]:
        return {"ready": True}

    invoice = usd_invoice(expires_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 900)))
    invoice["payment_methods"][3]["amount"] = "0.326666666667"  # XMR's 12 decimals, as the daemon gives them
    stub = StubProcessor([invoice])
    stub.clock = time.time
    labels = {**LABELS, "ltc": ChainLabel("Litecoin", True)}  # the stub's rltc1 address is a regtest one
    with served(make_app(stub, "token", readiness, labels=lambda: labels)) as (origin, loop):
        page = Page(browser, origin)
        page.open(f"/i/{invoice['id']}", accept_language="en")
        assert page.headline() == "Waiting for payment"
        methods = page.text(".methods")
        for amount in ("0.00098 BTC", "0.7 LTC", "49 USDC", "0.32666667 XMR"):
            assert amount in methods
        assert "USDC on Ethereum" in methods and "0.326666666667" not in methods
        page.screenshot("6-usd-choose-coin")
        browser.execute_script("window.__sameDocument = true")
        browser.find_element("css selector", 'form[action$="/methods/ltc"] button').click()
        page.wait(lambda d: page.text("#pay-address") == STUB_ADDRESSES["ltc"][0], "the LTC address")
        assert browser.current_url.endswith(f"/i/{invoice['id']}?method=ltc")
        assert browser.execute_script("return window.__sameDocument") is True
        assert browser.execute_script("return document.activeElement.id") == "pay-title"
        assert page.text(".pay .test-network") == "Test network"
        shots = page.screenshot("7-usd-ltc-chosen")
        ltc = next(m for m in stub.invoices[invoice["id"]]["payment_methods"] if m["method"] == "ltc")
        assert decode_qr(shots["360-light"]) == [ltc["payment_uri"]]

        # 0.3 of 0.7 LTC (21.00 USD) arrives: the page turns Underpaid by itself, its QR asks for the remaining
        # 0.4 (the daemon's shape: the picked method's URI asks for its due), the ledger books it in USD
        def underpay() -> None:
            changed = stub.invoices[invoice["id"]]
            changed.update(exception="underpaid", due="28.00", amount_received="21.00", payments=[
                payment(0, "pending", asset="LTC", amount="0.3", value="21.00", method="ltc")])
            for method in changed["payment_methods"]:
                if method["method"] == "ltc":
                    method.update(due="0.4", payment_uri=f"litecoin:{STUB_ADDRESSES['ltc'][0]}?amount=0.4")
            stub.live.touch([invoice["id"]])

        loop.call_soon_threadsafe(underpay)  # the stub's state belongs to the server's loop
        page.wait(lambda d: page.headline() == "Underpaid", "Underpaid")
        assert "Send the remaining 0.4 LTC to the same address" in page.text(".status")
        assert page.text("#pay-amount") == "0.4" and "21.00 USD (0.3 LTC)" in " ".join(page.text(".ledger").split())
        shots = page.screenshot("8-usd-underpaid")
        assert decode_qr(shots["360-dark"]) == [f"litecoin:{STUB_ADDRESSES['ltc'][0]}?amount=0.4"]
        page.assert_only_own_origin()
        documents = [r["url"] for r in page.requests if r["type"] == "Document"]
        assert documents == [f"{origin}/i/{invoice['id']}"], documents


def test_without_javascript_a_coin_is_chosen_by_form_post(browser):
    """Scripts off: the page still works. "Pay with BTC" is a plain form post answered with a 303 back to the
    page, which then shows the BTC address and QR; the copy buttons (script-only) stay hidden."""
    from selenium.webdriver.common.by import By
    from test_checkout import STUB_ADDRESSES, StubProcessor, usd_invoice

    from watcherd.http.api import make_app

    async def readiness() -> dict[str, Any]:
        return {"ready": True}

    invoice = usd_invoice(expires_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 900)))
    stub = StubProcessor([invoice])
    stub.clock = time.time
    with served(make_app(stub, "token", readiness)) as (origin, _):
        page = Page(browser, origin)
        browser.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": True})
        try:
            page.open(f"/i/{invoice['id']}")
            browser.find_element(By.CSS_SELECTOR, 'form[action$="/methods/btc"] button').click()
            page.wait(lambda d: d.current_url.endswith(f"/i/{invoice['id']}?method=btc"), "the 303 back to the page")
            address = browser.find_element(By.ID, "pay-address")
            assert address.text == STUB_ADDRESSES["btc"][0]
            assert not browser.find_element(By.CSS_SELECTOR, 'button[data-copy="pay-address"]').is_displayed()
            assert browser.find_element(By.CSS_SELECTOR, ".qr svg").is_displayed()
        finally:
            browser.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": False})
        page.assert_only_own_origin()


def test_modal_checkout_in_a_shop_overlay_tells_the_shop_what_happens(browser):
    """BTCPay's modal mode, as the WooCommerce plugin uses it: the shop's page (another origin) loads
    /modal/btcpay.js from the daemon and calls showInvoice; the payment page opens in an overlay iframe
    (?view=modal, the one view that may be framed) and posts 'loaded', then {invoiceId, status} in Greenfield's
    words as the invoice changes, and 'close' when the customer closes it, which removes the overlay."""
    from aiohttp import web
    from selenium.webdriver.common.by import By
    from test_checkout import STUB_ADDRESSES, StubProcessor, usd_invoice

    from watcherd.http import greenfield
    from watcherd.http.api import make_app

    async def readiness() -> dict[str, Any]:
        return {"ready": True}

    invoice = usd_invoice(expires_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 900)))
    stub = StubProcessor([invoice])
    stub.clock = time.time
    daemon_app = make_app(stub, "token", readiness, compat=[("/modal", greenfield.make_modal_app())])
    with served(daemon_app) as (daemon, loop):
        async def shop_page(request: web.Request) -> web.Response:
            return web.Response(content_type="text/html", text=f"""<!doctype html><html><head><title>Shop</title>
                <meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">
                </head><body><h1>Checkout at the shop</h1><script src="{daemon}/modal/btcpay.js"></script><script>
                window.received = [];
                window.btcpay.onModalReceiveMessage(function (event) {{ window.received.push(event.data); }});
                window.btcpay.showInvoice("{invoice['id']}");
                </script></body></html>""")

        shop_app = web.Application()
        shop_app.router.add_get("/checkout", shop_page)
        with served(shop_app) as (shop, _):
            page = Page(browser, shop)
            page.open("/checkout")

            def received() -> list[Any]:
                return browser.execute_script("return window.received")

            page.wait(lambda d: {"invoiceId": invoice["id"], "status": "New"} in received(), "'loaded' and New")
            assert received()[0] == "loaded"
            frame = browser.find_element(By.CSS_SELECTOR, "iframe")
            assert frame.is_displayed() and frame.get_attribute("src") == f"{daemon}/i/{invoice['id']}?view=modal"

            browser.switch_to.frame(frame)
            browser.find_element(By.CSS_SELECTOR, 'form[action$="/methods/ltc?view=modal"] button').click()
            page.wait(lambda d: page.text("#pay-address") == STUB_ADDRESSES["ltc"][0], "the LTC address in the modal")
            assert browser.execute_script("return location.search") == "?view=modal&method=ltc"
            assert browser.find_element(By.CSS_SELECTOR, "button[data-close]").is_displayed()
            browser.switch_to.default_content()
            page.screenshot("9-modal-ltc-chosen")

            def pay() -> None:
                stub.invoices[invoice["id"]].update(status="paid", due="0.00", amount_received="49.00")
                stub.live.touch([invoice["id"]])

            loop.call_soon_threadsafe(pay)
            page.wait(lambda d: {"invoiceId": invoice["id"], "status": "Settled"} in received(), "Settled")
            browser.switch_to.frame(browser.find_element(By.CSS_SELECTOR, "iframe"))
            page.wait(lambda d: page.headline() == "Paid", "Paid in the modal")
            browser.find_element(By.CSS_SELECTOR, "button[data-close]").click()
            browser.switch_to.default_content()
            page.wait(lambda d: d.execute_script("return document.querySelector('iframe') === null"),
                      "the overlay gone")
            statuses = [m["status"] for m in received() if isinstance(m, dict)]
            assert received()[-1] == "close" and statuses == ["New", "Settled"], received()
            page.drain()
            assert page.console == [], f"console errors (a frame refused by CSP shows here): {page.console}"
