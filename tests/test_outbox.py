"""Webhook delivery: retries until the endpoint recovers, per-invoice order, signatures that verify."""

import asyncio
import json
import time
from types import SimpleNamespace

import pytest
from conftest import async_wait_for

from testkit.fake import FakeChain
from testkit.receiver import WebhookReceiver
from watcherd.core.types import ChainTx, Cursor, Received
from watcherd.delivery.signing import sign, verify
from watcherd.delivery.webhook import WebhookSender
from watcherd.ledger import Processor
from watcherd.store import Store

SECRET = "whsec_test_secret_0123456789"


def test_signature_recipe_matches_the_readme():
    """The README tells receivers: HMAC-SHA256(secret, "<t>.<raw body>") in hex, compared to v1."""
    import hashlib
    import hmac

    body = b'{"id":"evt_1"}'
    header = sign(SECRET, 1_700_000_000, body)
    t, v1 = (part.split("=", 1)[1] for part in header.split(","))
    assert v1 == hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert verify(SECRET, header, body, now=1_700_000_100)
    assert not verify(SECRET, header, body + b" ", now=1_700_000_100)
    assert not verify(SECRET, header, body, now=1_700_009_999)  # replayed much later
    assert not verify("other", header, body, now=1_700_000_100)


@pytest.fixture
async def core(store_location):
    store = await Store.open(store_location)
    chain = FakeChain(confirmations=1)
    processor = Processor(store, {"fake": chain}, ["webhook"])
    await processor.start()
    await processor.set_cursor("fake", Cursor(1, "h1"))
    yield processor, chain
    await store.close()


async def test_endpoint_down_then_up_delivers_everything_in_order(core):
    processor, chain = core
    with WebhookReceiver(SECRET) as receiver:
        receiver.fail_with = 500
        config = SimpleNamespace(url=receiver.url, secret=SECRET, timeout_seconds=5, max_retry_hours=72)
        sender = WebhookSender(processor.store, config, processor.outbox_listener())
        stop = asyncio.Event()
        task = asyncio.create_task(sender.run(stop))
        invoices = [await processor.create_invoice("fake", 1000) for _ in range(3)]
        for i in range(len(invoices)):
            key = chain.derive(i)[1]
            await processor.tx_seen("fake", ChainTx(f"t{i}", (Received(key, 0, 1000),), (f"o{i}".encode(),)))
        await asyncio.sleep(2.5)
        failing = await processor.store.deliveries(state="pending")
        assert len(failing) == 6 and all(d["last_error"] == "HTTP 500" for d in failing if d["attempts"])
        receiver.fail_with = None

        async def all_delivered():
            return not await processor.store.deliveries(state="pending")

        await async_wait_for(all_delivered, 15, "every event delivered after the endpoint recovered")
        stop.set()
        await task
    assert receiver.rejected == 0
    for inv in invoices:
        assert receiver.statuses(inv["id"]) == ["unpaid", "processing"]
        delivered = receiver.for_invoice(inv["id"])
        assert [e["type"] for e in delivered] == ["invoice.created", "invoice.processing"]
        assert all(e["_header_event_id"] == e["id"] for e in delivered)
        stored = [json.loads(e["payload"])["id"] for e in await processor.store.events_for(inv["id"])]
        assert [e["id"] for e in delivered] == stored


async def test_one_failing_invoice_does_not_block_others(core):
    processor, chain = core
    first = await processor.create_invoice("fake", 1000)
    async with processor.store.transaction():
        due = await processor.store.due_deliveries("webhook", processor.clock())
        await processor.store.mark_attempt_failed("webhook", due[0].event_seq, "HTTP 500", time.time() + 3600, None)
    second = await processor.create_invoice("fake", 1000)
    due = await processor.store.due_deliveries("webhook", processor.clock())
    assert [d.invoice_id for d in due] == [second["id"]]
    assert first["id"] != second["id"]


async def test_the_next_delivery_time_is_a_head_s_not_an_event_queued_behind_one(core):
    """An invoice whose first event waits out a backoff, with a later event queued behind it: the idle wait
    (MQTT's) must wait for the head, not spin on the queued event's past time."""
    processor, chain = core
    invoice = await processor.create_invoice("fake", 1000)
    retry_at = time.time() + 3600
    async with processor.store.transaction():
        (head,) = await processor.store.due_deliveries("webhook", processor.clock())
        await processor.store.mark_attempt_failed("webhook", head.event_seq, "HTTP 500", retry_at, None)
    await processor.tx_seen("fake", ChainTx("t0", (Received(chain.derive(0)[1], 0, 1000),), (b"o0",)))
    assert len(await processor.store.deliveries(invoice_id=invoice["id"], state="pending")) == 2
    assert await processor.store.due_deliveries("webhook", processor.clock()) == []
    assert await processor.store.next_delivery_time("webhook") == pytest.approx(retry_at)


async def test_client_error_is_not_retried_but_kept_for_redelivery(core):
    processor, _ = core
    with WebhookReceiver(SECRET) as receiver:
        receiver.fail_with = 404
        config = SimpleNamespace(url=receiver.url, secret=SECRET, timeout_seconds=5, max_retry_hours=72)
        sender = WebhookSender(processor.store, config, processor.outbox_listener())
        inv = await processor.create_invoice("fake", 1000)
        assert await sender.deliver_due() == 1
        failed = await processor.store.deliveries(state="failed")
        assert [d["last_error"] for d in failed] == ["HTTP 404"]
        assert await processor.store.failed_deliveries() == {"webhook": 1}
        receiver.fail_with = None
        async with processor.store.transaction():
            assert await processor.store.redeliver(failed[0]["id"], time.time())
        assert await sender.deliver_due() == 1
    assert receiver.statuses(inv["id"]) == ["unpaid"]


async def test_redirect_is_not_followed_and_retried_until_the_url_is_right(core):
    """A 301 would make an HTTP client re-send the event as a GET and call it delivered: the sender does not
    follow it, says why, and keeps retrying until the endpoint answers the POST itself."""
    processor, _ = core
    with WebhookReceiver(SECRET) as receiver:
        receiver.redirect_to = receiver.url + "/moved"
        config = SimpleNamespace(url=receiver.url, secret=SECRET, timeout_seconds=5, max_retry_hours=72)
        sender = WebhookSender(processor.store, config, processor.outbox_listener())
        inv = await processor.create_invoice("fake", 1000)
        assert await sender.deliver_due() == 1
        pending = await processor.store.deliveries(state="pending")
        assert receiver.gets == 0 and receiver.events == []
        assert len(pending) == 1 and pending[0]["last_error"].startswith("HTTP 301 redirect to ")
        assert "/moved" in pending[0]["last_error"] and "webhook.url" in pending[0]["last_error"]
        receiver.redirect_to = None
        async with processor.store.transaction():  # the retry is due (instead of waiting out the backoff)
            assert await processor.store.redeliver(pending[0]["id"], time.time())
        assert await sender.deliver_due() == 1
    assert receiver.statuses(inv["id"]) == ["unpaid"]


async def test_an_event_rolled_back_never_goes_out(core):
    """A block's transaction queues an event, the webhook sender looks for due deliveries while that transaction
    is still open, then the transaction rolls back (a reload cancels the follower mid-block): the sender never
    saw the event, and the receiver never gets it."""
    processor, chain = core
    invoice = await processor.create_invoice("fake", 1000)
    with WebhookReceiver(SECRET) as receiver:
        config = SimpleNamespace(url=receiver.url, secret=SECRET, timeout_seconds=5, max_retry_hours=72)
        sender = WebhookSender(processor.store, config, processor.outbox_listener())
        assert await sender.deliver_due() == 1  # invoice.created
        looked_inside = asyncio.Event()

        async def outbox_looks_meanwhile() -> int:
            await looked_inside.wait()
            return await sender.deliver_due()

        look = asyncio.create_task(outbox_looks_meanwhile())
        with pytest.raises(RuntimeError, match="cancelled mid-block"):
            async with processor._transaction():
                await processor._apply_tx(chain, ChainTx("t1", (Received(chain.derive(0)[1], 0, 1000),)), None)
                await processor._reassess(invoice["id"])
                assert len(await processor.store.events_for(invoice["id"])) == 2  # the writer sees it
                looked_inside.set()
                assert await look == 0, "the sender saw an uncommitted event"
                raise RuntimeError("cancelled mid-block")
        assert await sender.deliver_due() == 0
    assert receiver.statuses(invoice["id"]) == ["unpaid"]
    assert [e["type"] for e in await processor.store.events_for(invoice["id"])] == ["invoice.created"]


async def test_a_task_cancelled_while_its_transaction_begins_leaves_none_open(store_location):
    """Shutdown cancels the store probe, a follower or a sender at any await, including the BEGIN itself (which
    still runs on the connection's thread). The next transaction must start, not find one already open."""
    store = await Store.open(store_location)
    try:
        for _ in range(50):  # the cancel lands at a different point each time; the BEGIN is the usual one
            probe = asyncio.create_task(store.writable())
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            probe.cancel()
            await asyncio.gather(probe, return_exceptions=True)
            assert await store.writable()
    finally:
        await store.close()


async def test_a_store_written_by_a_newer_watcherd_is_refused(tmp_path):
    """An older binary must not run on a schema it does not know (it would misread or corrupt it)."""
    import sqlite3

    from watcherd.exceptions import StoreError

    store = await Store.open(tmp_path / "w.sqlite3")
    await store.close()
    with sqlite3.connect(tmp_path / "w.sqlite3") as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match="schema is version 99, newer than this watcherd"):
        await Store.open(tmp_path / "w.sqlite3")
