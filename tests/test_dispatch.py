"""Deliveries go out as a pipeline: a slot that frees takes the next due delivery at once, order is kept only per
invoice (never two of an invoice's events at the endpoint together, never one before the previous one's outcome
is recorded), and an idle sender does not keep asking the store."""

import asyncio
import contextlib
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from ipaddress import IPv4Network
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from conftest import async_wait_for, scaled

from watcherd.delivery.hooks import HookSender
from watcherd.delivery.signing import verify
from watcherd.delivery.webhook import WebhookSender
from watcherd.store import Store

SECRET = "whsec_dispatch_0123456789"
LOOPBACK = (IPv4Network("127.0.0.0/8"),)  # the test endpoints' network, which hooks may reach only when allowed


class Endpoint:
    """A webhook endpoint on loopback (aiohttp) that checks signatures, holds or fails answers as a test asks,
    and notes what it saw: arrivals, acknowledgements, and requests of one invoice overlapping."""

    def __init__(self, hold: Callable[[dict[str, Any]], float] = lambda event: 0.0,
                 fail: Callable[[dict[str, Any], int], int | None] = lambda event, attempt: None):
        self.hold = hold  # seconds to hold the answer to this event
        self.fail = fail  # an error status for this event's attempt number (1, 2 ...), None: 200
        self.arrived: dict[str, float] = {}  # event id -> when its first request came (monotonic)
        self.acked: list[dict[str, Any]] = []  # answered 2xx, in the order answered
        self.acked_at: dict[str, float] = {}
        self.attempts: Counter[str] = Counter()
        self.rejected = 0
        self.overlaps = 0  # requests that came while another of the same invoice was unanswered
        self.most_at_once = 0
        self._open: Counter[str] = Counter()
        self._released = asyncio.Event()  # ends every hold (at the end of a test)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        return app

    def release(self) -> None:
        self._released.set()

    def acked_ids(self) -> list[str]:
        return [e["id"] for e in self.acked]

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not verify(SECRET, request.headers.get("Watcherd-Signature", ""), body):
            self.rejected += 1
            return web.Response(status=400)
        event = json.loads(body)
        invoice = event["invoice"]["id"]
        self.attempts[event["id"]] += 1
        self.arrived.setdefault(event["id"], time.monotonic())
        self.overlaps += self._open[invoice] > 0
        self._open[invoice] += 1
        self.most_at_once = max(self.most_at_once, sum(self._open.values()))
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._released.wait(), self.hold(event))
            status = self.fail(event, self.attempts[event["id"]]) or 200
            if status == 200:
                self.acked.append(event)
                self.acked_at[event["id"]] = time.monotonic()
            return web.Response(status=status)
        finally:
            self._open[invoice] -= 1


@pytest.fixture
async def store(store_location):
    store = await Store.open(store_location)
    yield store
    await store.close()


def event_id(invoice_id: str, n: int) -> str:
    return f"evt_{invoice_id}_{n}"


async def commit(store: Store, wakeup: asyncio.Event, events: list[tuple[str, int]]) -> None:
    """One transaction adding the (invoice, n) events, then the wake-up the ledger gives after a commit."""
    now = time.time()
    async with store.transaction():
        for invoice_id, n in events:
            payload = json.dumps({"id": event_id(invoice_id, n), "type": "invoice.test", "n": n,
                                  "invoice": {"id": invoice_id}})
            await store.add_event(event_id(invoice_id, n), invoice_id, "fake", "invoice.test", int(now), payload,
                                  ["webhook"], now)
    wakeup.set()


def webhook_sender(store: Store, url: str, wakeup: asyncio.Event, **kw: Any) -> WebhookSender:
    config = SimpleNamespace(url=url, secret=SECRET, timeout_seconds=5, max_retry_hours=72)
    return WebhookSender(store, config, wakeup, **kw)  # type: ignore[arg-type]


async def test_a_slow_answer_holds_up_no_other_invoice(store):
    """One invoice's endpoint call hangs for 2 s: events of other invoices committed meanwhile go out at once on
    the free slots (sent in rounds, they waited for the slow call's round to end)."""
    endpoint = Endpoint(hold=lambda event: 2.0 if event["invoice"]["id"] == "slow" else 0.0)
    wakeup, stop = asyncio.Event(), asyncio.Event()
    async with TestServer(endpoint.app()) as server:
        sender = webhook_sender(store, str(server.make_url("/hook")), wakeup)
        task = asyncio.create_task(sender.run(stop))
        await commit(store, wakeup, [("slow", 0)])
        await async_wait_for(lambda: event_id("slow", 0) in endpoint.arrived, 5, "the slow event at the endpoint")
        others = [event_id(f"inv{i}", 0) for i in range(5)]
        committed = time.monotonic()
        await commit(store, wakeup, [(f"inv{i}", 0) for i in range(5)])
        await async_wait_for(lambda: all(e in endpoint.acked_at for e in others), 5,
                             "the other invoices' events acknowledged")
        assert max(endpoint.acked_at[e] for e in others) - committed < scaled(0.5)
        assert event_id("slow", 0) not in endpoint.acked_at  # still held: they did not wait for it
        assert len(await store.deliveries(state="delivered")) == 5  # and their outcomes are recorded

        async def all_delivered() -> bool:
            return not await store.deliveries(state="pending")

        await async_wait_for(all_delivered, 5, "the slow event delivered too")
        stop.set()
        await task
    assert endpoint.attempts[event_id("slow", 0)] == 1 and endpoint.rejected == 0


async def test_each_invoice_in_order_and_exactly_once_under_concurrency(store):
    """Ten invoices with eight events each, committed in interleaved batches while the sender runs, the endpoint
    answering after random short delays and failing some first attempts: every invoice's events are acknowledged
    in seq order, each exactly once, never two of one invoice at the endpoint together, several invoices at once
    but never more than the slots."""
    rng = random.Random(7)
    flaky = {event_id(f"inv{i}", n) for i in range(10) for n in range(8) if rng.random() < 0.1}
    endpoint = Endpoint(hold=lambda event: rng.uniform(0.0, 0.02),
                        fail=lambda event, attempt: 500 if attempt == 1 and event["id"] in flaky else None)
    wakeup, stop = asyncio.Event(), asyncio.Event()
    async with TestServer(endpoint.app()) as server:
        sender = webhook_sender(store, str(server.make_url("/hook")), wakeup, concurrency=8)
        task = asyncio.create_task(sender.run(stop))
        for batch in range(4):
            await commit(store, wakeup, [(f"inv{i}", 2 * batch + k) for k in range(2) for i in range(10)])
            await asyncio.sleep(0.05)
        await async_wait_for(lambda: len(endpoint.acked) >= 80, 20, "all 80 events acknowledged")
        await asyncio.sleep(0.2)  # nothing is sent twice after the last one
        stop.set()
        await task
    assert flaky and all(endpoint.attempts[e] == 2 for e in flaky)
    ids = endpoint.acked_ids()
    assert len(ids) == len(set(ids)) == 80
    for i in range(10):
        assert [e["n"] for e in endpoint.acked if e["invoice"]["id"] == f"inv{i}"] == list(range(8))
    assert endpoint.overlaps == 0
    assert 2 <= endpoint.most_at_once <= 8
    assert not await store.deliveries(state="pending")


async def test_a_waiting_retry_with_events_behind_it_keeps_the_sender_idle(store, monkeypatch):
    """An invoice whose head event fails has events queued behind it: the sender retries the head when its
    backoff ends and otherwise leaves the store alone (the old idle wait took the queued events' past due time
    for the next one and asked the store thousands of times a second)."""
    endpoint = Endpoint(fail=lambda event, attempt: 500 if event["n"] == 0 else None)
    wakeup, stop = asyncio.Event(), asyncio.Event()
    await commit(store, wakeup, [("inv", 0), ("inv", 1), ("inv", 2)])
    reads = 0
    due_deliveries = store.due_deliveries

    async def counted(*args: Any, **kw: Any) -> Any:
        nonlocal reads
        reads += 1
        return await due_deliveries(*args, **kw)

    monkeypatch.setattr(store, "due_deliveries", counted)
    async with TestServer(endpoint.app()) as server:
        sender = webhook_sender(store, str(server.make_url("/hook")), wakeup)
        task = asyncio.create_task(sender.run(stop))
        await asyncio.sleep(2.5)
        stop.set()
        await task
    assert endpoint.attempts[event_id("inv", 0)] >= 2  # retried when due, not only at the 5 s idle read
    assert endpoint.acked == [] and set(endpoint.attempts) == {event_id("inv", 0)}
    assert reads <= 2 + endpoint.attempts[event_id("inv", 0)], reads


async def test_stop_lets_a_send_in_flight_finish_and_records_it(store):
    """SIGTERM (the stop event) while an endpoint takes its time: the sender starts nothing new, waits for the
    answer and records it, so the drain after it does not send the event again."""
    endpoint = Endpoint(hold=lambda event: 0.5)
    wakeup, stop = asyncio.Event(), asyncio.Event()
    await commit(store, wakeup, [("inv", 0)])
    async with TestServer(endpoint.app()) as server:
        sender = webhook_sender(store, str(server.make_url("/hook")), wakeup)
        task = asyncio.create_task(sender.run(stop))
        await async_wait_for(lambda: endpoint.arrived, 5, "the event at the endpoint")
        stop.set()
        await commit(store, wakeup, [("inv", 1), ("other", 0)])
        await asyncio.wait_for(task, scaled(5))
        assert [d["id"] for d in await store.deliveries(state="delivered")] == [event_id("inv", 0)]
        assert set(endpoint.arrived) == {event_id("inv", 0)}  # nothing new started after the stop
        await sender.drain(time.time() + 5)
    first, *rest = endpoint.acked_ids()
    assert first == event_id("inv", 0) and sorted(rest) == [event_id("inv", 1), event_id("other", 0)]
    assert endpoint.attempts.total() == 3 and not await store.deliveries(state="pending")


async def test_a_cancelled_sender_records_nothing_it_did_not_see_acknowledged(store):
    """The sender's task cancelled while a send is unanswered: it ends at once, the send is cut, and the event
    stays due (not recorded as delivered) for the next run."""
    endpoint = Endpoint(hold=lambda event: 5.0)
    wakeup, stop = asyncio.Event(), asyncio.Event()
    await commit(store, wakeup, [("inv", 0)])
    async with TestServer(endpoint.app()) as server:
        sender = webhook_sender(store, str(server.make_url("/hook")), wakeup)
        task = asyncio.create_task(sender.run(stop))
        await async_wait_for(lambda: endpoint.arrived, 5, "the event at the endpoint")
        task.cancel()
        started = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - started < scaled(1.0)
        endpoint.release()
    [delivery] = await store.deliveries(state="pending")
    assert delivery["attempts"] == 0 and delivery["delivered_at"] is None
    assert endpoint.acked == []


async def test_drain_sends_what_is_due_and_waits_for_what_is_in_flight(store):
    """The shutdown drain: everything due goes out through the slots, a slow answer included, and every outcome
    is recorded before it returns."""
    endpoint = Endpoint(hold=lambda event: 0.5 if event["invoice"]["id"] == "inv0" else 0.01)
    wakeup = asyncio.Event()
    await commit(store, wakeup, [(f"inv{i}", n) for n in range(3) for i in range(12)])
    async with TestServer(endpoint.app()) as server:
        sender = webhook_sender(store, str(server.make_url("/hook")), wakeup, concurrency=4)
        started = time.monotonic()
        await sender.drain(time.time() + 10)
        took = time.monotonic() - started
    assert not await store.deliveries(state="pending")
    assert len(endpoint.acked) == 36 and endpoint.overlaps == 0
    assert endpoint.most_at_once <= 4
    assert took < scaled(3.0)  # inv0's three slow answers one after the other, the rest beside them
    for i in range(12):
        assert [e["n"] for e in endpoint.acked if e["invoice"]["id"] == f"inv{i}"] == [0, 1, 2]


async def test_hook_deliveries_share_the_pipeline(store):
    """Registered webhooks: a hook that answers slowly for one invoice holds up neither that invoice's
    notifications to another hook nor other invoices', and each invoice's deliveries to one hook go in order."""
    arrived: list[tuple[str, str, float]] = []

    async def endpoint(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        if request.path == "/slow" and body["invoiceId"] == "inv0":
            await asyncio.sleep(1.5)
        arrived.append((request.path, body["deliveryId"], time.monotonic()))
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/slow", endpoint)
    app.router.add_post("/fast", endpoint)
    async with TestServer(app) as server:
        async with store.transaction():
            for hook in ("slow", "fast"):
                await store.add_hook(hook, str(server.make_url(f"/{hook}")), "s3cret-0123456789", enabled=True,
                                     automatic_redelivery=True, events=None, now=1)
            now = int(time.time())
            for n in range(2):
                for invoice in ("inv0", "inv1"):
                    for hook in ("slow", "fast"):
                        delivery = f"{hook}-{invoice}-{n}"
                        body = json.dumps({"deliveryId": delivery, "invoiceId": invoice, "type": "InvoiceCreated"})
                        await store.add_hook_delivery(delivery, hook, "unused", invoice, "InvoiceCreated", body, now)
        sender = HookSender(store, asyncio.Event(), allow_networks=LOOPBACK)
        started = time.monotonic()
        assert await sender.deliver_due() == 8
    quick = [d for _, d, at in arrived if at - started < 1.0]
    assert sorted(quick) == sorted(["fast-inv0-0", "fast-inv0-1", "fast-inv1-0", "fast-inv1-1",
                                    "slow-inv1-0", "slow-inv1-1"])
    order = [d for _, d, _ in arrived]
    assert order.index("slow-inv0-0") < order.index("slow-inv0-1")
    assert order.index("fast-inv0-0") < order.index("fast-inv0-1")
    assert await store.pending_hook_deliveries() == 0
