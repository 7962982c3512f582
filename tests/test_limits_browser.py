"""The payment page's script in headless Chromium when the live stream is bounded: a stream refused (503) is
replaced by polling /status, and a stream ended for its age is reconnected by EventSource; either way the page
still turns by itself. The real routes over test_checkout's stub ledger (no node needed, but a browser: marked
`nodes` like tests/test_checkout_browser.py)."""

from __future__ import annotations

import copy
import time
from typing import Any

import pytest
from test_checkout import StubProcessor, coin_invoice, payment
from test_checkout_browser import Page, browser, served  # noqa: F401 (browser: the fixture)

from watcherd.http.api import make_app

pytestmark = pytest.mark.nodes


async def readiness() -> dict[str, Any]:
    return {"ready": True}


def open_invoice() -> dict[str, Any]:
    return coin_invoice(expires_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 900)))


def seen(page: Page, part: str, kind: str) -> int:
    page.drain()
    return sum(1 for r in page.requests if part in r["url"] and r["type"] == kind)


def test_a_refused_stream_falls_back_to_polling_and_the_page_still_turns(browser):  # noqa: F811
    """Every stream answered 503 (the invoice has its streams already): EventSource does not retry, the script
    polls /status, and a payment arriving shows Processing without a reload."""
    invoice = open_invoice()
    stub = StubProcessor([invoice])
    stub.clock = time.time
    stub.live.max_per_invoice = 0
    with served(make_app(stub, "token", readiness)) as (origin, loop):
        page = Page(browser, origin)
        page.open(f"/i/{invoice['id']}")
        assert page.headline() == "Waiting for payment"
        browser.execute_script("window.__sameDocument = true")
        page.wait(lambda d: seen(page, "/status", "Fetch") >= 1, "a poll of /status", timeout=15)
        assert seen(page, "/live", "EventSource") == 1  # refused once, never retried

        def pay() -> None:
            stub.invoices[invoice["id"]] = copy.deepcopy(coin_invoice(
                "processing", payments=[payment(0, "pending")], expires_at=invoice["expires_at"]))

        loop.call_soon_threadsafe(pay)
        page.wait(lambda d: page.headline() == "Processing", "Processing, by polling", timeout=15)
        assert browser.execute_script("return window.__sameDocument") is True, "the page was reloaded"
        errors = [e["message"] for e in page.console]
        assert all("/live" in message for message in errors), errors  # only the refused stream's 503


def test_a_stream_ended_for_its_age_reconnects_and_the_next_change_arrives_on_it(browser):  # noqa: F811
    """Streams live 1 s here: the browser reconnects each time (no polling), and a payment after a few of them
    arrives over the stream."""
    invoice = open_invoice()
    stub = StubProcessor([invoice])
    stub.clock = time.time
    stub.live.max_seconds = 1.0
    with served(make_app(stub, "token", readiness)) as (origin, loop):
        page = Page(browser, origin)
        page.open(f"/i/{invoice['id']}")
        page.wait(lambda d: seen(page, "/live", "EventSource") >= 3, "two reconnections")

        def pay() -> None:
            stub.invoices[invoice["id"]] = copy.deepcopy(coin_invoice(
                "processing", payments=[payment(0, "pending")], expires_at=invoice["expires_at"]))
            stub.live.touch([invoice["id"]])

        loop.call_soon_threadsafe(pay)
        page.wait(lambda d: page.headline() == "Processing", "Processing, over the stream")
        assert seen(page, "/status", "Fetch") == 0
        page.assert_only_own_origin()
