"""The Greenfield create request in the shapes plugins send it (BTCPay's PHP client, WooCommerce, the WHMCS and
FOSSBilling modules), bound as BTCPay binds it: every answer valid against BTCPay's schemas."""

import pytest

from tests.test_greenfield_api import BASE, GF, env, ok  # noqa: F401  (env: the fixture)


async def create(client, body):
    return await ok(await client.post(f"{BASE}/invoices", headers=GF, json=body), "InvoiceData")


async def test_plugin_shapes_are_accepted_and_echoed(env):  # noqa: F811
    """Payment method ids as BTC_CHAIN, BTC-CHAIN or BTC; an amount with 8 decimals (PreciseNumber::parseFloat);
    `posData` as a JSON string and `orderUrl` kept exactly; `taxIncluded` as BTCPay keeps it."""
    client, _, _ = env
    pos_data = '{"orderId": 17, "note": "th\\u00e9 \\/ caf\u00e9"}'
    for method in ("FAKE_CHAIN", "FAKE-CHAIN", "FAKE", "fake-chain"):
        created = await create(client, {
            "amount": "25.00000000", "currency": "USD",
            "metadata": {"orderId": "17", "orderUrl": "https://shop.example/?p=17&x=%2F", "posData": pos_data,
                         "taxIncluded": 4.17, "orderNumber": "17"},
            "checkout": {"paymentMethods": [method], "redirectURL": "https://shop.example/thanks"}})
        assert created["amount"] == "25.00" and created["checkout"]["paymentMethods"] == ["FAKE-CHAIN"]
        metadata = created["metadata"]
        assert (metadata["posData"], metadata["orderUrl"]) == (pos_data, "https://shop.example/?p=17&x=%2F")
        assert (metadata["orderId"], metadata["orderNumber"], metadata["taxIncluded"]) == ("17", "17", 4.17)
        shown = await ok(await client.get(f"{BASE}/invoices/{created['id']}", headers=GF), "InvoiceData")
        assert shown["metadata"] == metadata


@pytest.mark.parametrize(("sent", "amount"), [("33.33333333", "33.33"), (19.99, "19.99"), ("0.10000000", "0.10"),
                                              ("12.125", "12.13")])
async def test_amounts_round_as_btcpay_rounds_them(env, sent, amount):  # noqa: F811
    """More decimals than the currency has are rounded half away from zero, as BTCPay rounds a price."""
    client, _, _ = env
    assert (await create(client, {"amount": sent, "currency": "USD"}))["amount"] == amount


async def test_what_cannot_be_rounded_or_taxed_is_refused(env):  # noqa: F811
    """A price that rounding would move by 1% or more, and a taxIncluded that is no bounded decimal, answer 422
    naming the field; a tax above the price or below zero is kept within them, as BTCPay does."""
    client, _, _ = env
    for body, path in (({"amount": "0.004", "currency": "USD"}, "amount"),
                       ({"amount": "5", "currency": "USD", "metadata": {"taxIncluded": "1e5"}}, "metadata.taxIncluded"),
                       ({"amount": "5", "currency": "USD", "metadata": {"taxIncluded": True}}, "metadata.taxIncluded")):
        response = await client.post(f"{BASE}/invoices", headers=GF, json=body)
        assert response.status == 422 and (await response.json())[0]["path"] == path
    for tax, kept in (("99", 5.0), ("-1", 0.0), ("1.005", 1.01)):
        created = await create(client, {"amount": "5", "currency": "USD", "metadata": {"taxIncluded": tax}})
        assert created["metadata"]["taxIncluded"] == kept


async def test_names_bind_case_insensitively(env):  # noqa: F811
    """BTCPay binds the request's names case-insensitively, in checkout and for the metadata it knows too."""
    client, _, _ = env
    created = await create(client, {"Amount": "5.00", "CURRENCY": "USD", "Metadata": {"OrderId": "X-1", "mine": 1},
                                    "Checkout": {"SpeedPolicy": "HighSpeed", "PaymentMethods": ["FAKE"]}})
    assert (created["amount"], created["currency"]) == ("5.00", "USD")
    assert created["metadata"] == {"orderId": "X-1", "mine": 1}
    assert created["checkout"]["speedPolicy"] == "HighSpeed"
