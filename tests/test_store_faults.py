"""Store faults: a store that cannot be written (disk full, a file system gone read-only) stops every commit, but
never the daemon. While it lasts nothing advances past what was committed, /readyz is 503 and
`watcherd_store_writable` is 0 (the WatcherdStoreUnwritable alert), writes through the API answer 503; once the
store takes writes again everything resumes by itself and every event is delivered exactly once.

The senders are driven in-process with a store whose writes fail; the daemon runs against a real regtest node with
its store on a tiny file system the test mounts itself (tmpfs filled to ENOSPC; ext4 on a loop device that the
kernel turns read-only after an error). Mounting needs root: those tests are skipped without it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import async_wait_for, scaled, wait_for
from harness import Daemon, chain_table

from testkit.fake import FakeChain
from testkit.receiver import WebhookReceiver
from watcherd.core.types import Cursor
from watcherd.delivery.mqtt import MqttPublisher
from watcherd.delivery.webhook import WebhookSender
from watcherd.exceptions import StoreUnavailable
from watcherd.ledger import Processor
from watcherd.store import Store

SECRET = "whsec_store_faults_0123456789"
ROOT = Path(__file__).resolve().parent.parent

# ---- the senders, in-process: a store whose writes fail --------------------------------------------------


class FailingWrites:
    """While on, every store write fails as SQLite does on a full disk, or PostgreSQL when its connection is cut
    (the transaction then rolls back)."""

    def __init__(self, store: Store, monkeypatch: pytest.MonkeyPatch):
        self.on = False
        self.refused = 0
        write = store._write

        async def failing_write(sql: str, params: Any = ()) -> int:
            if self.on:
                self.refused += 1
                if store.dialect == "postgres":
                    raise StoreUnavailable("store postgresql://...: ConnectionResetError")
                raise sqlite3.OperationalError("database or disk is full")
            return await write(sql, params)

        monkeypatch.setattr(store, "_write", failing_write)


@pytest.fixture
async def ledger(store_location, monkeypatch):
    store = await Store.open(store_location)
    processor = Processor(store, {"fake": FakeChain(confirmations=1)}, ["webhook", "mqtt"])
    await processor.start()
    await processor.set_cursor("fake", Cursor(1, "h1"))
    yield processor, FailingWrites(store, monkeypatch)
    await store.close()


async def pending(processor: Processor, transport: str) -> list[dict[str, Any]]:
    return await processor.store.deliveries(transport=transport, state="pending")


async def test_webhooks_sent_while_the_store_is_full_are_recorded_later_and_never_sent_twice(ledger, caplog):
    """Events committed before the fault are POSTed, but their outcome cannot be recorded: the sender keeps it,
    backs off without dying and without sending anything again, logs the outage once, and records it when the
    store recovers: each event reaches the endpoint exactly once."""
    processor, fault = ledger
    caplog.set_level(logging.INFO, "watcherd.outbox")
    invoices = [await processor.create_invoice("fake", 1000) for _ in range(5)]
    fault.on = True
    with WebhookReceiver(SECRET) as receiver:
        config = SimpleNamespace(url=receiver.url, secret=SECRET, timeout_seconds=5, max_retry_hours=72)
        sender = WebhookSender(processor.store, config, processor.outbox_listener())
        stop = asyncio.Event()
        task = asyncio.create_task(sender.run(stop))
        await async_wait_for(lambda: len(receiver.events) == 5, 10, "the five events sent")
        await asyncio.sleep(scaled(2.5))  # backoff rounds with the store still failing
        assert not task.done()
        assert len(receiver.events) == 5 and fault.refused >= 7  # the 5 outcomes, then retries of the oldest
        assert len(await pending(processor, "webhook")) == 5  # nothing recorded: nothing was committed
        fault.on = False

        async def all_recorded() -> bool:
            return not await pending(processor, "webhook")

        await async_wait_for(all_recorded, 10, "the kept outcomes recorded once the store takes writes")
        await asyncio.sleep(0.5)
        stop.set()
        await task
    ids = [e["id"] for e in receiver.events]
    assert len(ids) == len(set(ids)) == 5
    assert {e["invoice"]["id"] for e in receiver.events} == {i["id"] for i in invoices}
    paused = [r for r in caplog.records if "deliveries paused" in r.getMessage()]
    resumed = [r for r in caplog.records if "deliveries resumed" in r.getMessage()]
    assert len(paused) == 1 and len(resumed) == 1, [r.getMessage() for r in caplog.records]


async def test_webhook_failures_unrecordable_and_a_drain_on_a_full_store_end_cleanly(ledger):
    """An endpoint failing while the store is full: the failed attempts cannot be recorded either; the sender
    stays up, and a shutdown drain during the fault returns instead of raising (the daemon exits 0)."""
    processor, fault = ledger
    await processor.create_invoice("fake", 1000)
    fault.on = True
    with WebhookReceiver(SECRET) as receiver:
        receiver.fail_with = 503
        config = SimpleNamespace(url=receiver.url, secret=SECRET, timeout_seconds=5, max_retry_hours=72)
        sender = WebhookSender(processor.store, config, processor.outbox_listener())
        stop = asyncio.Event()
        task = asyncio.create_task(sender.run(stop))
        await asyncio.sleep(scaled(2.0))
        assert not task.done()
        stop.set()
        await task
        await sender.drain(time.time() + 2)
        receiver.fail_with = None
        fault.on = False
        await sender.drain(time.time() + 5)  # the kept failure is recorded first, then the event goes out
    assert [e["type"] for e in receiver.events] == ["invoice.created"]
    [delivery] = await processor.store.deliveries(transport="webhook")
    assert delivery["delivered_at"] is not None and delivery["attempts"] >= 2


async def test_webhook_pipeline_pauses_while_outcomes_are_unrecorded_and_keeps_each_invoice_in_order(ledger):
    """Sends go out concurrently, but an invoice's next event waits for its previous one's outcome to be recorded:
    with the store full, the heads of two invoices are sent once each, the second event of the first invoice is
    not sent at all, and nothing is sent again; once the store recovers, everything goes out exactly once, in
    order."""
    processor, fault = ledger
    now = time.time()
    order = [("inv_a", 0), ("inv_b", 0), ("inv_a", 1)]
    async with processor.store.transaction():
        for invoice_id, n in order:
            payload = json.dumps({"id": f"evt_{invoice_id}_{n}", "type": "invoice.test",
                                  "invoice": {"id": invoice_id, "status": f"s{n}"}})
            await processor.store.add_event(f"evt_{invoice_id}_{n}", invoice_id, "fake", "invoice.test", int(now),
                                            payload, ["webhook"], now)
    fault.on = True
    with WebhookReceiver(SECRET) as receiver:
        config = SimpleNamespace(url=receiver.url, secret=SECRET, timeout_seconds=5, max_retry_hours=72)
        sender = WebhookSender(processor.store, config, processor.outbox_listener())
        stop = asyncio.Event()
        task = asyncio.create_task(sender.run(stop))
        await async_wait_for(lambda: len(receiver.events) == 2, 10, "both invoices' first events sent")
        await asyncio.sleep(scaled(2.5))  # backoff rounds with the store still failing
        assert sorted(e["id"] for e in receiver.events) == ["evt_inv_a_0", "evt_inv_b_0"]
        fault.on = False

        async def all_recorded() -> bool:
            return not await pending(processor, "webhook")

        await async_wait_for(all_recorded, 10, "every event sent and recorded once the store takes writes")
        stop.set()
        await task
    ids = [e["id"] for e in receiver.events]
    assert len(ids) == len(set(ids)) == 3
    assert receiver.statuses("inv_a") == ["s0", "s1"] and receiver.statuses("inv_b") == ["s0"]


@pytest.mark.nodes
async def test_mqtt_publishes_while_the_store_is_full_are_recorded_later_and_never_repeated(ledger, tmp_path):
    """The same for MQTT against a real mosquitto: the publisher stays connected through the fault, publishes
    each event once, and records the PUBACKed ones when the store recovers."""
    from test_mqtt import Broker, Subscriber

    processor, fault = ledger
    broker = Broker(tmp_path / "mosquitto")
    broker.start()
    subscriber = Subscriber(broker.port, "billing-store-faults")
    try:
        invoices = [await processor.create_invoice("fake", 1000) for _ in range(3)]
        fault.on = True
        config = SimpleNamespace(url=f"mqtt://127.0.0.1:{broker.port}", url_without_credentials="mqtt://broker",
                                 topic_prefix="watcherd", username=None, password=None, client_id=None)
        publisher = MqttPublisher(processor.store, config, processor.outbox_listener(), processor.invoice_json)
        stop = asyncio.Event()
        task = asyncio.create_task(publisher.run(stop))

        def published() -> list[str]:
            with subscriber.lock:
                return [m["id"] for t, m, _ in subscriber.messages if t.startswith("watcherd/events/")]

        # one published, its PUBACK unrecordable: the batch stops there until the store takes writes
        await async_wait_for(lambda: len(published()) == 1, 10, "the first event published")
        await asyncio.sleep(scaled(2.5))
        assert not task.done() and publisher.connected and len(published()) == 1
        assert len(await pending(processor, "mqtt")) == 3
        fault.on = False

        async def all_recorded() -> bool:
            return not await pending(processor, "mqtt")

        await async_wait_for(all_recorded, 10, "every event published and recorded")
        await asyncio.sleep(0.5)
        stop.set()
        await task
        ids = published()
        assert len(ids) == len(set(ids)) == 3
        assert {e["invoice_id"] for e in await processor.store.deliveries(transport="mqtt")} == \
            {i["id"] for i in invoices}
    finally:
        subscriber.close()
        broker.stop()


# ---- the daemon against a real node, its store on a file system the test mounts ----------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a file system for the store needs root")
INVOICES = 6


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def unmount(mountpoint: Path) -> None:
    if run("mountpoint", "-q", str(mountpoint)).returncode == 0:
        done = run("umount", str(mountpoint))
        if done.returncode != 0:  # a process of ours still holds it: detach now, freed when it lets go
            run("umount", "-l", str(mountpoint))


@pytest.fixture
def tmpfs_store(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs for the store: small enough to fill in a moment."""
    mountpoint = tmp_path / "tmpfs"
    mountpoint.mkdir()
    mounted = run("mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mountpoint))
    assert mounted.returncode == 0, mounted.stderr
    try:
        yield mountpoint
    finally:
        unmount(mountpoint)


@pytest.fixture
def ext4_store(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB ext4 on a loop device, mounted errors=remount-ro: an ext4 error makes the kernel turn it
    read-only under the running daemon (a plain `mount -o remount,ro` is refused while files are open for
    writing), and only an unmount undoes that."""
    image, mountpoint = tmp_path / "ext4.img", tmp_path / "ext4"
    mountpoint.mkdir()
    with image.open("wb") as file:
        file.truncate(16 * 1024 * 1024)
    made = run("mkfs.ext4", "-q", "-F", str(image))
    assert made.returncode == 0, made.stderr
    mounted = run("mount", "-o", "loop,errors=remount-ro", str(image), str(mountpoint))
    assert mounted.returncode == 0, mounted.stderr
    try:
        yield mountpoint
    finally:
        unmount(mountpoint)


def daemon_with_store_in(workdir: Path, store_dir: Path, bsv_node: Any, receiver: WebhookReceiver) -> Daemon:
    """A daemon (config and log in `workdir`) whose store lives in `store_dir`; not started."""
    daemon = Daemon(workdir, chain_table("btc", bsv_node, confirmations=1), receiver.url)
    config = daemon.config_path.read_text().replace(str(workdir / "watcherd.sqlite3"),
                                                     str(store_dir / "watcherd.sqlite3"))
    daemon.config_path.write_text(config)
    return daemon


def answer(daemon: Daemon, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    """(status, JSON body) of an API call, error statuses included."""
    try:
        return 200, daemon.api(method, path, body)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read() or b"null")


def readiness(daemon: Daemon) -> tuple[int, Any]:
    return daemon.readiness()


def ready_and_delivered(daemon: Daemon) -> bool:
    """Ready, and no delivery pending: every outcome is recorded, so none can be sent again."""
    return readiness(daemon)[0] == 200 and not daemon.api("GET", "/v1/webhooks?state=pending")["deliveries"]


def wait_unwritable(daemon: Daemon) -> dict[str, Any]:
    """The probe saw it: /readyz 503 saying why, the alert's metric 0."""
    status, report = wait_for(lambda: (r := readiness(daemon))[0] == 503 and not r[1]["store_writable"] and r,
                              10, "/readyz 503 with store_writable false")
    assert daemon.metric("watcherd_store_writable") == 0
    return report


def assert_nothing_advances(daemon: Daemon, invoices: list[dict], receiver: WebhookReceiver, height: int,
                            seconds: float, following: bool = True) -> None:
    """Paid and mined, yet for `seconds` nothing shows it: every invoice unpaid, the cursor where it was, no
    webhook; reads still answer, writes answer a clear 503, the daemon lives. `following`: the chain's
    follower runs (and meets the store's error)."""
    delivered = len(receiver.events)
    deadline = time.monotonic() + scaled(seconds)
    while time.monotonic() < deadline:
        assert daemon.alive(), daemon.log_tail()
        assert {daemon.invoice(i["id"])["status"] for i in invoices} == {"unpaid"}
        status, report = readiness(daemon)
        assert status == 503 and not report["store_writable"]
        assert report["chains"]["btc"]["processed_height"] == height
        time.sleep(0.25)
    assert len(receiver.events) == delivered
    status, body = answer(daemon, "POST", "/v1/invoices", {"chain": "btc", "amount": "0.01"})
    assert status == 503 and body["error"]["code"] == "store_unavailable", (status, body)
    status, body = answer(daemon, "POST", f"/v1/invoices/{invoices[0]['id']}/cancel")
    assert status == 503 and body["error"]["code"] == "store_unavailable", (status, body)
    assert daemon.metric("watcherd_store_writable") == 0
    if following:  # it saw the blocks it could not commit
        assert report["chains"]["btc"]["node_tip"] >= height + 2
        assert daemon.metric("watcherd_chain_failures_total", chain="btc", kind="store") >= 1
    assert "Traceback" not in daemon.log_path.read_text(), daemon.log_tail()


def assert_all_paid_and_delivered_once(daemon: Daemon, invoices: list[dict], receiver: WebhookReceiver) -> None:
    for invoice in invoices:
        daemon.wait_status(invoice["id"], "paid", timeout=scaled(30))
    expected = {e["id"] for i in invoices for e in daemon.api("GET", f"/v1/invoices/{i['id']}/events")["events"]}
    wait_for(lambda: {e["id"] for e in receiver.events} >= expected, 10, "every event delivered")
    wait_for(lambda: ready_and_delivered(daemon), 10, "ready, nothing pending")
    ids = [e["id"] for e in receiver.events]
    assert len(ids) == len(set(ids)) == len(expected)  # exactly once each (no other invoice in this test)
    for invoice in invoices:
        assert receiver.statuses(invoice["id"])[0] == "unpaid" and receiver.statuses(invoice["id"])[-1] == "paid"


def pay_and_mine(bsv_node: Any, invoices: list[dict]) -> None:
    for invoice in invoices:
        bsv_node.pay(invoice["address"], "0.01")
    bsv_node.mine(1)
    bsv_node.mine(1)


@needs_root
def test_disk_full_stops_commits_not_the_daemon_and_it_resumes_by_itself(tmp_path, bsv_node, receiver,
                                                                        tmpfs_store):
    """The store's file system filled to ENOSPC while webhooks are being retried and payments arrive and are
    mined: nothing advances, /readyz 503 and the metric 0, API writes 503, no exit; a webhook the endpoint
    acknowledged but the store could not record is not sent again; once space is freed the daemon resumes by
    itself: ready again, every invoice paid, every event delivered exactly once, and it stops with exit 0."""
    daemon = daemon_with_store_in(tmp_path / "d", tmpfs_store, bsv_node, receiver).start()
    try:
        half = INVOICES // 2
        invoices = [daemon.create_invoice("btc", "0.01") for _ in range(half)]
        wait_for(lambda: len(receiver.events) == half and ready_and_delivered(daemon), 15, "the created events")
        receiver.fail_with = 503  # the other half's events wait for a retry when the disk fills up
        invoices += [daemon.create_invoice("btc", "0.01") for _ in range(INVOICES - half)]
        wait_for(lambda: [d["attempts"] > 0 for d in daemon.api("GET", "/v1/webhooks?state=pending")["deliveries"]]
                 == [True] * (INVOICES - half), 10, "a failed first attempt recorded for each")
        height = readiness(daemon)[1]["chains"]["btc"]["processed_height"]
        # every free page taken; SQLite's WAL only grows in a test this short, so its next commit needs one
        filler = tmpfs_store / "filler"
        full = run("dd", "if=/dev/zero", f"of={filler}", "bs=64k")
        assert "No space left on device" in full.stderr, full.stderr
        receiver.fail_with = None  # the next retry is acknowledged, and its outcome cannot be recorded
        wait_for(lambda: len(receiver.events) > half, 10, "a retried webhook acknowledged during the fault")
        wait_unwritable(daemon)
        pay_and_mine(bsv_node, invoices)
        assert_nothing_advances(daemon, invoices, receiver, height, seconds=3)
        filler.unlink()
        freed = time.monotonic()
        wait_for(lambda: readiness(daemon)[1]["store_writable"] and daemon.metric("watcherd_store_writable") == 1,
                 10, "the probe to see the store writable again")
        assert_all_paid_and_delivered_once(daemon, invoices, receiver)
        print(f"resumed: all paid and delivered {time.monotonic() - freed:.1f} s after the space was freed")
        log = daemon.log_path.read_text()
        assert "is writable again" in log and "Traceback" not in log
        assert log.count("webhook deliveries paused") == 1 and log.count("webhook deliveries resumed") == 1
    finally:
        assert daemon.stop() == 0, daemon.log_tail()


@needs_root
def test_file_system_turned_read_only_by_the_kernel(tmp_path, bsv_node, receiver, ext4_store):
    """The store's ext4 hits an error and the kernel remounts it read-only under the daemon: the same
    guarantees while it lasts, and SIGTERM still exits 0 (the shutdown drain sends nothing it cannot record).
    Only an unmount undoes such a remount: after fsck and a restart, every invoice is paid and every event
    delivered exactly once."""
    daemon = daemon_with_store_in(tmp_path / "d", ext4_store, bsv_node, receiver).start()
    image = tmp_path / "ext4.img"
    try:
        invoices = [daemon.create_invoice("btc", "0.01") for _ in range(INVOICES)]
        wait_for(lambda: len(receiver.events) == INVOICES and ready_and_delivered(daemon), 15, "the created events")
        height = readiness(daemon)[1]["chains"]["btc"]["processed_height"]
        device = Path(run("findmnt", "-n", "-o", "SOURCE", str(ext4_store)).stdout.strip()).name
        Path(f"/sys/fs/ext4/{device}/trigger_fs_error").write_text("1")
        with pytest.raises(OSError, match="Read-only file system"):
            (ext4_store / "probe").write_text("x")
        wait_unwritable(daemon)
        pay_and_mine(bsv_node, invoices)
        assert_nothing_advances(daemon, invoices, receiver, height, seconds=3)
        assert daemon.stop() == 0, daemon.log_tail()
        assert len(receiver.events) == INVOICES  # the drain sent nothing
        # the operator's repair: unmount, check, mount again, start
        assert run("umount", str(ext4_store)).returncode == 0
        fsck = run("e2fsck", "-f", "-y", str(image))
        assert fsck.returncode in (0, 1), fsck.stdout + fsck.stderr  # 1: errors corrected
        mounted = run("mount", "-o", "loop,errors=remount-ro", str(image), str(ext4_store))
        assert mounted.returncode == 0, mounted.stderr
        restarted = time.monotonic()
        daemon.start()
        assert_all_paid_and_delivered_once(daemon, invoices, receiver)
        print(f"after the restart, all paid and delivered in {time.monotonic() - restarted:.1f} s")
    finally:
        assert daemon.stop() == 0, daemon.log_tail()


@needs_root
def test_a_reload_during_the_fault_keeps_the_chain_followed(tmp_path, bsv_node, receiver, tmpfs_store):
    """SIGHUP with a changed chain table while the disk is full: the reconfigured chain cannot load its state
    yet, and must still be followed once the store takes writes (not left stopped until the next reload)."""
    daemon = daemon_with_store_in(tmp_path / "d", tmpfs_store, bsv_node, receiver).start()
    try:
        invoices = [daemon.create_invoice("btc", "0.01") for _ in range(2)]
        wait_for(lambda: len(receiver.events) == 2 and ready_and_delivered(daemon), 15, "the created events")
        height = readiness(daemon)[1]["chains"]["btc"]["processed_height"]
        filler = tmpfs_store / "filler"
        assert "No space left on device" in run("dd", "if=/dev/zero", f"of={filler}", "bs=64k").stderr
        wait_unwritable(daemon)
        config = daemon.config_path.read_text()
        daemon.config_path.write_text(config.replace("confirmations = 1", "confirmations = 2"))
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGHUP)
        pay_and_mine(bsv_node, invoices)
        assert_nothing_advances(daemon, invoices, receiver, height, seconds=2, following=False)
        filler.unlink()
        assert_all_paid_and_delivered_once(daemon, invoices, receiver)
        wait_for(lambda: "configuration reloaded" in daemon.log_path.read_text(), 10, "the reload applied")
        assert daemon.create_invoice("btc", "0.01")["confirmations_required"] == 2
    finally:
        assert daemon.stop() == 0, daemon.log_tail()


def test_the_store_unwritable_alert_ships_on_the_probed_metric():
    """The alert the README promises: on `watcherd_store_writable == 0`, paging (promtool validity and the
    metric's existence are checked by test_operator's alert rules test)."""
    rules = (ROOT / "config" / "prometheus-alerts.yml").read_text()
    block = rules.split("- alert: WatcherdStoreUnwritable", 1)[1].split("- alert:", 1)[0]
    assert "expr: watcherd_store_writable == 0" in block and "severity: page" in block
