"""What one caller may hold of the daemon: live streams (per invoice, in all, for how long), idle connections and
slow requests, and the addresses an invoice id's holder may have picked. Over HTTP, on the real ledger and
fake chains; tests/test_limits_e2e.py does the same against the real daemon at its default file limit."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from fractions import Fraction
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from conftest import async_wait_for
from harness import read_event

from testkit.fake import FakeChain
from watcherd.config import GreenfieldConfig
from watcherd.core.types import ChainTx, Cursor, Received
from watcherd.http import greenfield, limits
from watcherd.http.api import make_app
from watcherd.http.page import public
from watcherd.ledger import MAX_UNPAID_METHODS, Processor
from watcherd.live import PER_INVOICE, Crowded, Live, total_for
from watcherd.store import Store

TOKEN = "api-token-0123456789abcdef"
KEY = "gf-key-0123456789abcdef"
STORE = "shop-1"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
GF = {"Authorization": f"token {KEY}"}
JSON = {"Accept": "application/json"}
# two chains with a coin and a token each: four methods, a, a:AUSD, b, b:BUSD
ASSETS = {"a": ("AAA", "AUSD"), "b": ("BBB", "BUSD")}


class Rates:
    def quote(self, currency: str, asset: str) -> Fraction:
        return Fraction(50000) if asset in ("AAA", "BBB") else Fraction(1)


async def readiness() -> dict[str, Any]:
    return {"ready": True}


@pytest.fixture
async def shop(store_location) -> AsyncIterator[tuple[TestClient, Processor, dict[str, FakeChain], list[str]]]:
    """The native API, the payment page and the Greenfield API over the real ledger on two fake chains;
    `writes` lists a "transaction" each time the ledger opens a store transaction."""
    store = await Store.open(store_location)
    chains = {}
    for name, (coin, token) in ASSETS.items():
        chain = FakeChain(name, confirmations=1)
        chain.asset, chain.assets = coin, {coin: 8, token: 6}
        chains[name] = chain
    processor = Processor(store, chains, ["webhook"])
    await processor.start()
    for name in chains:
        await processor.set_cursor(name, Cursor(100, "h100"))
    writes: list[str] = []
    transaction = store.transaction

    @contextlib.asynccontextmanager
    async def counted() -> AsyncIterator[Any]:
        writes.append("transaction")
        async with transaction() as tx:
            yield tx

    store.transaction = counted  # type: ignore[method-assign]
    sub = greenfield.make_app(processor, GreenfieldConfig(store_id=STORE, store_name="Shop", api_key=KEY),
                              readiness, Rates)
    async with TestClient(TestServer(make_app(processor, TOKEN, readiness, Rates, [("/api/v1", sub)]))) as client:
        yield client, processor, chains, writes
    await store.close()


async def greenfield_invoice(client: TestClient) -> str:
    """A 49.00 USD invoice created through the Greenfield API (offered in all four methods, none picked)."""
    created = await client.post(f"/api/v1/stores/{STORE}/invoices", headers=GF,
                                json={"amount": "49.00", "currency": "USD"})
    assert created.status == 200, await created.text()
    return (await created.json())["id"]


def picked(invoice: dict[str, Any]) -> list[str]:
    return [m["method"] for m in invoice["payment_methods"] if m["activated"]]


# ---- live streams ------------------------------------------------------------------------------------------


def test_the_total_leaves_the_reserve_and_half_the_rest_to_everything_else() -> None:
    """Streams never take the descriptors the rest of the daemon needs: at systemd's default soft limit of
    1,024 they get 384, at the unit's 16,384 the most kept (4,096), and nothing below the reserve."""
    assert total_for(1024) == 384
    assert total_for(16384) == 4096
    assert total_for(200) == 0


def test_a_crowded_invoice_and_a_full_daemon_refuse_one_more_watcher() -> None:
    """The per-invoice and the total caps each refuse the one watcher too many, and a watcher leaving frees
    its place."""
    live = Live(max_total=3, max_per_invoice=2)
    with live.watch("a"), live.watch("a"):
        with pytest.raises(Crowded), live.watch("a"):
            pass
        with live.watch("b"):
            assert live.watching == 3
            with pytest.raises(Crowded), live.watch("c"):
                pass
        with live.watch("c"):
            assert live.watching == 3
    assert live.watching == 0
    with live.watch("a"), live.watch("a"):
        assert live.watching == 2
    with pytest.raises(Crowded), Live(max_per_invoice=0).watch("a"):  # nobody watches it yet: still refused
        pass


async def test_one_stream_too_many_answers_503_closes_its_connection_and_the_others_go_on(shop) -> None:
    """The invoice's ninth stream answers 503 (Retry-After, the API's error shape) on a connection closed
    behind it, without reading the invoice; the eight still receive the invoice's changes; another invoice
    still streams until the total is reached, and a place freed is taken again."""
    client, processor, chains, _ = shop
    invoice = await processor.create_invoice("a", 1_500_000)
    other = await processor.create_invoice("b", 1_500_000)
    async with contextlib.AsyncExitStack() as streams:
        opened = [await streams.enter_async_context(client.get(f"/i/{invoice['id']}/live"))
                  for _ in range(PER_INVOICE)]
        assert [s.status for s in opened] == [200] * PER_INVOICE
        for stream in opened:
            await read_event(stream)
        refused = await client.get(f"/i/{invoice['id']}/live")
        assert refused.status == 503 and refused.headers["Retry-After"] == "30"
        assert refused.headers["Connection"] == "close"
        assert (await refused.json())["error"]["code"] == "too_many_streams"
        assert processor.live.watching == PER_INVOICE
        await processor.tx_seen("a", ChainTx("t1", (Received(chains["a"].derive(0)[1], 0, 1_500_000),), (b"o1",)))
        for stream in opened:
            assert json.loads(await read_event(stream))["status"] == "processing"

        processor.live.max_total = PER_INVOICE + 1
        last = await streams.enter_async_context(client.get(f"/i/{other['id']}/live"))
        assert last.status == 200
        assert (await client.get(f"/i/{other['id']}/live")).status == 503  # the total, on an invoice with room
        last.close()  # the test server cancels the stream's handler: its place is freed
        await async_wait_for(lambda: processor.live.watching == PER_INVOICE, 5, "the closed stream's place")
        async with client.get(f"/i/{other['id']}/live") as again:
            assert again.status == 200 and json.loads(await read_event(again))["status"] == "unpaid"


async def test_a_stream_ends_after_its_lifetime_and_the_reconnection_misses_nothing(shop) -> None:
    """After `max_seconds` the server ends the stream (EventSource reconnects); a change committed while the
    browser was away arrives at once on the reconnection that names the last version it got."""
    client, processor, chains, _ = shop
    processor.live.max_seconds = 0.5
    invoice = await processor.create_invoice("a", 1_500_000)
    version = public.version(public.public_invoice(invoice))
    async with client.get(f"/i/{invoice['id']}/live?v={version}") as stream:
        assert await stream.content.readline() == b"retry: 3000\n"
        async with asyncio.timeout(5):
            assert await stream.content.read() == b"\n"  # nothing but the end: the invoice did not change
    assert processor.live.watching == 0
    await processor.tx_seen("a", ChainTx("t1", (Received(chains["a"].derive(0)[1], 0, 1_500_000),), (b"o1",)))
    processor.live.max_seconds = 60
    async with client.get(f"/i/{invoice['id']}/live?v={version}", headers={"Last-Event-ID": version}) as again:
        assert json.loads(await read_event(again, within=1))["status"] == "processing"


# ---- connections and requests ------------------------------------------------------------------------------


async def test_an_idle_connection_and_a_slow_request_head_are_closed(monkeypatch) -> None:
    """The daemon's runner (limits.runner) closes a connection that sends nothing, and one that sends its
    request head too slowly, KEEPALIVE_SECONDS after it connected; a prompt request is answered."""
    monkeypatch.setattr(limits, "KEEPALIVE_SECONDS", 0.5)

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = limits.runner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        writer.close()
        await writer.wait_closed()
        idle, waiting = await asyncio.open_connection("127.0.0.1", port)
        slow, trickling = await asyncio.open_connection("127.0.0.1", port)
        trickling.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")

        async def trickle() -> None:  # one byte of a header value every 50 ms, until the server hangs up
            with contextlib.suppress(ConnectionError):
                while not trickling.is_closing():
                    trickling.write(b"y")
                    await trickling.drain()
                    await asyncio.sleep(0.05)

        task = asyncio.create_task(trickle())
        async with asyncio.timeout(5):
            assert await idle.read() == b""
            assert await slow.read() == b""  # no answer, not even a 400: closed for its time
        task.cancel()
        waiting.close()
        trickling.close()
    finally:
        await runner.cleanup()


async def test_a_request_body_that_does_not_arrive_answers_408_and_the_connection_closes(shop, monkeypatch) -> None:
    """A create whose body trickles in answers 408 after BODY_SECONDS, closing the connection (once aiohttp's
    bounded lingering read is over), and creates nothing; a whole body is read as before."""
    client, processor, _, _ = shop
    monkeypatch.setattr(limits, "BODY_SECONDS", 0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(f"POST /v1/invoices HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                 "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"chain\"".encode())
    async with asyncio.timeout(5):
        head = (await reader.readuntil(b"\r\n\r\n")).decode().lower()
        length = int(head.split("content-length: ")[1].split("\r\n")[0])
        body = json.loads(await reader.readexactly(length))
    assert head.startswith("http/1.1 408") and "connection: close" in head
    assert body["error"]["code"] == "request_timeout"
    writer.close()
    listed = await client.get("/v1/invoices", headers=BEARER)
    assert (await listed.json())["invoices"] == []
    created = await client.post("/v1/invoices", headers=BEARER, json={"chain": "a", "amount": "0.01"})
    assert created.status == 201


# ---- picking payment methods -------------------------------------------------------------------------------


async def test_picking_a_method_already_picked_takes_no_transaction_from_any_door(shop) -> None:
    """The page's script, its form post, the native API and Greenfield's activate each answer a method that has
    its address from what is committed: no store transaction (so never the writer's lock), the same address."""
    client, processor, chains, writes = shop
    invoice_id = await greenfield_invoice(client)
    first = await client.post(f"/i/{invoice_id}/methods/a", headers=JSON)
    assert first.status == 200 and writes.count("transaction") >= 1
    address = (await first.json())["payment_methods"][0]["address"]
    assert address == chains["a"].derive(0)[0]
    writes.clear()
    again = await client.post(f"/i/{invoice_id}/methods/a", headers=JSON)
    assert again.status == 200 and (await again.json())["payment_methods"][0]["address"] == address
    form = await client.post(f"/i/{invoice_id}/methods/a", allow_redirects=False)
    assert form.status == 303
    native = await client.post(f"/v1/invoices/{invoice_id}/payment-methods/a", headers=BEARER)
    assert native.status == 200 and picked(await native.json()) == ["a"]
    gf = await client.post(f"/api/v1/stores/{STORE}/invoices/{invoice_id}/payment-methods/AAA-CHAIN/activate",
                           headers=GF)
    assert gf.status == 200, await gf.text()
    assert writes == []
    assert chains["a"].watchlist.keys == {chains["a"].derive(0)[1]}  # the one address, handed out once


async def test_a_fourth_method_with_nothing_paid_is_refused_and_burns_no_address(shop) -> None:
    """With MAX_UNPAID_METHODS picked and nothing paid, the page (JSON 409, a 409 page in the customer's
    language) and Greenfield (422) refuse another method with a clear message, and no derivation index is
    taken and no store transaction opened (a refusal is judged on what is committed): once a payment arrives the
    fourth method gets the next address of its chain. The native API (the billing system's token) is not
    capped."""
    client, processor, chains, writes = shop
    assert MAX_UNPAID_METHODS == 3
    invoice_id = await greenfield_invoice(client)
    for method in ("a", "a:AUSD"):
        assert (await client.post(f"/i/{invoice_id}/methods/{method}", headers=JSON)).status == 200
    gf_base = f"/api/v1/stores/{STORE}/invoices/{invoice_id}/payment-methods"
    assert (await client.post(f"{gf_base}/BBB-CHAIN/activate", headers=GF)).status == 200
    writes.clear()
    for _ in range(20):  # a refused pick, repeated by whoever holds the id, never takes the writer
        assert (await client.post(f"/i/{invoice_id}/methods/b:BUSD", headers=JSON)).status == 409
    assert writes == []
    refused = await client.post(f"/i/{invoice_id}/methods/b:BUSD", headers=JSON)
    assert refused.status == 409
    error = (await refused.json())["error"]
    assert error["code"] == "methods_limit" and "3 payment methods picked and nothing paid yet" in error["message"]
    page = await client.post(f"/i/{invoice_id}/methods/b:BUSD", headers={"Accept-Language": "de"})
    assert page.status == 409 and "bereits Adressen in 3 Währungen" in await page.text()
    gf = await client.post(f"{gf_base}/BUSD-CHAIN/activate", headers=GF)
    assert gf.status == 422 and "nothing paid yet" in json.dumps(await gf.json())
    shown = await processor.invoice_json(invoice_id)
    assert shown is not None and picked(shown) == ["a", "a:AUSD", "b"]
    assert processor.chains["b"].watchlist.keys == {chains["b"].derive(0)[1]}

    # a payment (in part) lifts the cap: the fourth method gets b's second address, the one not burnt
    await processor.tx_seen("a", ChainTx("t1", (Received(chains["a"].derive(0)[1], 0, 1_000),), (b"o1",)))
    now = await client.post(f"/i/{invoice_id}/methods/b:BUSD", headers=JSON)
    assert now.status == 200
    assert (await now.json())["payment_methods"][3]["address"] == chains["b"].derive(1)[0]

    # the billing system with its token picks what it wants
    other = await greenfield_invoice(client)
    for method in ("a", "a:AUSD", "b", "b:BUSD"):
        answer = await client.post(f"/v1/invoices/{other}/payment-methods/{method}", headers=BEARER)
        assert answer.status == 200, await answer.text()
    assert picked(await answer.json()) == ["a", "a:AUSD", "b", "b:BUSD"]


async def test_a_burst_of_activations_of_one_method_takes_one_address(shop) -> None:
    """Fifty clicks at once on the same coin (or a script hammering it): one address is handed out, and once
    it is committed the rest are answered without a transaction."""
    client, processor, chains, writes = shop
    invoice_id = await greenfield_invoice(client)
    answers = await asyncio.gather(*(client.post(f"/i/{invoice_id}/methods/b", headers=JSON) for _ in range(50)))
    assert {a.status for a in answers} == {200}
    addresses = {(await a.json())["payment_methods"][2]["address"] for a in answers}
    assert addresses == {chains["b"].derive(0)[0]}
    writes.clear()
    for _ in range(20):
        assert (await client.post(f"/i/{invoice_id}/methods/b", headers=JSON)).status == 200
    assert writes == []
