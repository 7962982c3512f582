"""Invoices priced in a currency and paid in coins the customer picks: rates locked at creation, an address only
for a picked coin, payments across coins counted at their locked rates (unit level, on fake chains)."""

from __future__ import annotations

from fractions import Fraction

import pytest
from aiohttp.test_utils import TestClient, TestServer
from test_processor import Clock, block, tx

from testkit.fake import FakeChain
from watcherd.core.types import Cursor
from watcherd.exceptions import InvoiceError, RatesUnavailable
from watcherd.http.api import make_app
from watcherd.ledger import Processor
from watcherd.store import Store

TOKEN = "api-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def coin_chain(name: str, asset: str, decimals: int, confirmations: int) -> FakeChain:
    chain = FakeChain(name, confirmations=confirmations)
    chain.asset, chain.decimals, chain.assets = asset, decimals, {asset: decimals}
    return chain


class Book:
    """A rate book with fixed answers (the real one is tested in test_rates.py)."""

    def __init__(self, rates: dict[str, str] | None):
        self.rates = rates

    def quote(self, currency: str, asset: str) -> Fraction:
        if self.rates is None or asset not in self.rates:
            raise RatesUnavailable(f"no fresh {asset}/{currency} rate")
        return Fraction(self.rates[asset])


@pytest.fixture
async def shop(store_location):
    store = await Store.open(store_location)
    chains = {"btc": coin_chain("btc", "BTC", 8, 2), "xmr": coin_chain("xmr", "XMR", 12, 10)}
    clock = Clock()
    processor = Processor(store, chains, ["webhook"], clock=clock, public_url="https://pay.example")
    await processor.start()
    for name in chains:
        await processor.set_cursor(name, Cursor(100, "h100"))
    book = Book({"BTC": "50000", "XMR": "150"})

    async def readiness():
        return {"ready": True}

    async with TestClient(TestServer(make_app(processor, TOKEN, readiness, rates=lambda: book))) as client:
        yield processor, chains, clock, book, client
    await store.close()


async def create(client, **body):
    response = await client.post("/v1/invoices", json={"currency": "USD", "amount": "49.00", **body}, headers=AUTH)
    return response.status, await response.json()


async def test_a_usd_invoice_is_offered_in_every_coin_and_burns_no_address_until_one_is_picked(shop):
    processor, chains, _, _, client = shop
    status, invoice = await create(client, order_id="A-7")
    assert status == 201
    assert (invoice["currency"], invoice["amount"], invoice["amount_atomic"], invoice["due"]) == \
        ("USD", "49.00", "4900", "49.00")
    assert invoice["checkout_url"] == f"https://pay.example/i/{invoice['id']}"
    btc, xmr = invoice["payment_methods"]
    assert (btc["method"], btc["asset"], btc["rate"], btc["amount"], btc["activated"]) == \
        ("btc", "BTC", "50000", "0.00098", False)
    assert (xmr["method"], xmr["rate"], xmr["amount"]) == ("xmr", "150", "0.326666666667")  # rounded up
    assert (btc["address"], btc["payment_uri"], invoice["address"], invoice["chain"]) == (None, None, None, None)
    assert all(not c.watchlist.keys for c in chains.values())

    response = await client.post(f"/v1/invoices/{invoice['id']}/payment-methods/xmr", headers=AUTH)
    picked = await response.json()
    assert response.status == 200
    xmr = picked["payment_methods"][1]
    assert xmr["activated"] and xmr["address"] == chains["xmr"].derive(0)[0]
    assert (xmr["due"], xmr["payment_uri"]) == ("0.326666666667", f"fake:{xmr['address']}?amount=326666666667")
    assert len(chains["xmr"].watchlist.keys) == 1 and not chains["btc"].watchlist.keys
    again = await (await client.post(f"/v1/invoices/{invoice['id']}/payment-methods/xmr", headers=AUTH)).json()
    assert again["payment_methods"][1]["address"] == xmr["address"]  # picking again burns nothing
    assert (await processor.store._one("SELECT next_address_index FROM chains WHERE name = 'xmr'"))[0] == 1

    response = await client.post(f"/v1/invoices/{invoice['id']}/payment-methods/eth", headers=AUTH)
    assert response.status == 422 and (await response.json())["error"]["field"] == "method"


async def test_half_in_one_coin_and_the_rest_in_another_is_paid_once_both_are_confirmed(shop):
    processor, chains, _, _, client = shop
    _, invoice = await create(client)
    for method in ("btc", "xmr"):
        await client.post(f"/v1/invoices/{invoice['id']}/payment-methods/{method}", headers=AUTH)
    btc_key, xmr_key = chains["btc"].derive(0)[1], chains["xmr"].derive(0)[1]
    await processor.block_connected("btc", block(101, [tx("b1", btc_key, 49_000)]))  # 24.50 USD
    shown = await processor.invoice_json(invoice["id"])
    assert (shown["status"], shown["exception"], shown["amount_received"], shown["due"]) == \
        ("unpaid", "underpaid", "24.50", "24.50")
    assert shown["payments"][0]["value"] == "24.50" and shown["payments"][0]["rate"] == "50000"
    xmr = shown["payment_methods"][1]
    assert xmr["due_atomic"] == "163333333334"  # 24.50 USD at 150 USD/XMR, rounded up to the piconero
    await processor.block_connected("xmr", block(101, [tx("x1", xmr_key, int(xmr["due_atomic"]))]))
    assert (await processor.invoice_json(invoice["id"]))["status"] == "processing"  # BTC has 1 of 2
    await processor.block_connected("btc", block(102, []))
    assert (await processor.invoice_json(invoice["id"]))["status"] == "processing"  # XMR has 1 of 10
    for height in range(102, 111):
        await processor.block_connected("xmr", block(height, []))
    paid = await processor.invoice_json(invoice["id"])
    assert (paid["status"], paid["exception"], paid["due"]) == ("paid", None, "0.00")  # rounding is not overpaying
    assert [(p["method"], p["value"], p["status"]) for p in paid["payments"]] == \
        [("btc", "24.50", "confirmed"), ("xmr", "24.50", "confirmed")]


async def test_a_create_without_a_fresh_rate_is_refused_and_creates_nothing(shop):
    processor, _, _, book, client = shop
    book.rates = None
    status, body = await create(client)
    assert status == 503 and body["error"]["code"] == "rates_unavailable" and "retry" in body["error"]["message"]
    assert await processor.store.invoices() == []
    # a billing system without outbound access passes its own rates
    status, invoice = await create(client, payment_methods=["btc"], rates={"BTC": "49000.00"})
    assert status == 201 and invoice["payment_methods"][0]["amount"] == "0.001"
    # an invoice priced in the coin itself needs no rate
    status, invoice = await create(client, currency="BTC", amount="0.01", payment_methods=["btc"])
    assert status == 201 and invoice["payment_methods"][0]["amount"] == "0.01"


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"currency": "XYZ"}, 422, "currency"),
        ({"amount": "49.001"}, 422, "amount"),  # USD has 2 decimals: too_many_decimals
        ({"amount": 49}, 400, "amount"),
        ({"payment_methods": ["doge"]}, 422, "payment_methods"),
        ({"payment_methods": []}, 400, "payment_methods"),
        ({"payment_methods": ["btc", "btc"]}, 400, "payment_methods"),
        ({"rates": {"BTC": "-1"}, "payment_methods": ["btc"]}, 400, "rates"),
        ({"redirect_url": "javascript:alert(1)"}, 400, "redirect_url"),
        ({"chain": "btc"}, 400, "chain"),
    ],
)
async def test_bad_priced_requests_name_the_field(shop, body, status, field):
    _, _, _, _, client = shop
    got, answer = await create(client, **body)
    assert (got, answer["error"].get("field")) == (status, field)


async def test_the_jpy_has_no_minor_unit_and_an_expired_invoice_gets_no_new_address(shop):
    processor, _, clock, _, client = shop
    status, invoice = await create(client, currency="JPY", amount="7500", payment_methods=["btc"],
                                   rates={"BTC": "7500000"}, expires_in=60)
    assert status == 201 and invoice["payment_methods"][0]["amount"] == "0.001"
    clock.now += 61
    assert await processor.expire_due() == 1
    with pytest.raises(InvoiceError, match="expired"):
        await processor.activate_method(invoice["id"], "btc")


async def test_a_token_with_the_same_symbol_on_two_chains_is_priced_with_each_chains_decimals(store_location):
    """USDC has 6 decimals on Ethereum and 18 on BSC: each method's amount uses its own chain's."""
    store = await Store.open(store_location)
    chains = {"bsc": coin_chain("bsc", "BNB", 18, 1), "eth": coin_chain("eth", "ETH", 18, 1)}
    chains["bsc"].assets["USDC"], chains["eth"].assets["USDC"] = 18, 6
    processor = Processor(store, chains, [])
    await processor.start()

    async def readiness():
        return {"ready": True}

    try:
        async with TestClient(TestServer(make_app(processor, TOKEN, readiness))) as client:
            status, invoice = await create(client, amount="100.00", payment_methods=["bsc:USDC", "eth:USDC"],
                                           rates={"USDC": "1"})
            assert status == 201
            assert [(m["method"], m["amount"], m["amount_atomic"]) for m in invoice["payment_methods"]] == \
                [("bsc:USDC", "100", str(100 * 10**18)), ("eth:USDC", "100", str(100 * 10**6))]
            status, refused = await create(client, currency="USDC", amount="5", payment_methods=["eth:USDC"])
            assert status == 422 and refused["error"]["code"] == "ambiguous_currency"
    finally:
        await store.close()


@pytest.mark.parametrize("rate", ["1e10000000", "1e30", "1e-30", "NaN", "-5", "0", "Infinity", "1" * 60])
async def test_a_rate_of_absurd_size_is_refused_at_once(shop, rate):
    _, _, _, _, client = shop
    status, body = await create(client, payment_methods=["btc"], rates={"BTC": rate})
    assert (status, body["error"]["field"]) == (400, "rates")


async def test_idempotency_for_priced_invoices(shop):
    processor, _, _, book, client = shop
    key = {"Idempotency-Key": "order-77-attempt"}
    body = {"currency": "USD", "amount": "49.00", "payment_methods": ["btc"]}
    first = await client.post("/v1/invoices", json=body, headers={**AUTH, **key})
    assert first.status == 201
    book.rates = None  # the retry comes while rates are stale: it still gets its invoice, not a 503
    again = await client.post("/v1/invoices", json=body, headers={**AUTH, **key})
    assert again.status == 200 and (await again.json())["id"] == (await first.json())["id"]
    other = await client.post("/v1/invoices", json={**body, "rates": {"BTC": "5"}}, headers={**AUTH, **key})
    assert other.status == 409  # other rates are another request


async def test_a_payment_on_a_chain_that_left_the_config_keeps_its_confirmation(shop):
    """A reassessment triggered by another chain must not take back what it cannot judge now."""
    processor, chains, _, _, client = shop
    _, invoice = await create(client)
    for method in ("btc", "xmr"):
        await client.post(f"/v1/invoices/{invoice['id']}/payment-methods/{method}", headers=AUTH)
    btc_key, xmr_key = chains["btc"].derive(0)[1], chains["xmr"].derive(0)[1]
    await processor.block_connected("btc", block(101, [tx("b1", btc_key, 49_000)]))
    await processor.block_connected("btc", block(102, []))
    await processor.block_connected("xmr", block(101, [tx("x1", xmr_key, 163_333_333_334)]))
    for height in range(102, 111):
        await processor.block_connected("xmr", block(height, []))
    assert (await processor.invoice_json(invoice["id"]))["status"] == "paid"
    chains.pop("xmr")  # a restart without the chain in the config: its payment stays as last judged
    processor.tips.pop("xmr")
    await processor.block_connected("btc", block(103, [tx("b2", btc_key, 1_000, spent=(b"o2",))]))
    await processor.block_connected("btc", block(104, []))
    shown = await processor.invoice_json(invoice["id"])
    assert (shown["status"], [p["status"] for p in shown["payments"]]) == ("paid", ["confirmed"] * 3)
    events = [e["type"] for e in await processor.store.events_for(invoice["id"])]
    assert events.count("invoice.paid") == 1 and "invoice.processing" in events


async def test_no_address_for_an_invoice_past_its_expiry(shop):
    processor, _, clock, _, client = shop
    _, invoice = await create(client, payment_methods=["btc"], expires_in=60)
    clock.now += 61  # expired, though the expiry loop has not run yet
    response = await client.post(f"/v1/invoices/{invoice['id']}/payment-methods/btc", headers=AUTH)
    assert response.status == 422 and "expired" in (await response.json())["error"]["message"]
