"""Connection exhaustion against the real `watcherd run` and bitcoind, the daemon at systemd's default file limit
(1,024): thousands of live streams can take no descriptor the API, the store or the node need."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import time
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from conftest import scaled
from harness import Daemon, chain_table

from watcherd.live import PER_INVOICE, total_for

DEFAULT_FILES = 1024  # systemd's soft limit for a service without LimitNOFILE=, and many shells'
ATTEMPTS = 1500


@pytest.fixture
def many_files() -> Iterator[None]:
    """This process opens the 1,500 client sockets: its soft limit up to its hard one for the test."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    if wanted < ATTEMPTS + 500:
        pytest.skip(f"the test process may open only {wanted} files")
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class Stream:
    """One raw HTTP/1.1 GET of a live stream: its status, how long the answer's head took after the request was
    sent, and the connection (closed at once unless the stream was admitted)."""

    def __init__(self, status: int, took: float, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.status, self.took, self.reader, self.writer = status, took, reader, writer

    @classmethod
    async def open(cls, port: int, path: str, last_event_id: str | None = None) -> Stream:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sent = time.monotonic()
        extra = f"Last-Event-ID: {last_event_id}\r\n" if last_event_id else ""
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n{extra}\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        stream = cls(int(head.split()[1]), time.monotonic() - sent, reader, writer)
        if stream.status != 200:
            writer.close()
        return stream

    async def wait_for(self, marker: bytes, within: float) -> None:
        seen = b""
        async with asyncio.timeout(within):
            while marker not in seen:
                chunk = await self.reader.read(65536)
                assert chunk, f"the stream ended before {marker!r}: {seen[-300:]!r}"
                seen += chunk


async def open_all(port: int, paths: list[str]) -> list[Stream]:
    """Every path at once, a hundred connections being set up at a time (the listen backlog is 128)."""
    connecting = asyncio.Semaphore(100)

    async def one(path: str) -> Stream:
        async with connecting:
            return await Stream.open(port, path)

    return await asyncio.gather(*(one(p) for p in paths))


def answered(daemon: Daemon) -> dict[str, float]:
    """/healthz, an authenticated GET and an invoice creation, each answered (seconds each took)."""
    took = {}
    started = time.monotonic()
    assert daemon.api("GET", "/healthz")["status"] == "ok"
    took["healthz"] = time.monotonic() - started
    started = time.monotonic()
    created = daemon.create_invoice("btc", "0.001")
    took["create"] = time.monotonic() - started
    started = time.monotonic()
    assert daemon.invoice(created["id"])["status"] == "unpaid"
    took["get"] = time.monotonic() - started
    return took


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_1500_live_streams_leave_the_api_the_store_and_the_node_answering(bsv_node, tmp_path, many_files):
    """At 1,024 files: 1,500 streams on one invoice get its 8 and 503 for the rest, each within 2 s, on
    connections the daemon closes; 1,500 more over 200 invoices fill the total (384 with the first 8) and no
    more. Meanwhile /healthz, an authenticated GET and an invoice creation answer, a payment reaches an open
    stream through the node, and the daemon never runs out of descriptors."""
    daemon = Daemon(tmp_path / "d", chain_table("btc", bsv_node, confirmations=1), files=DEFAULT_FILES).start()
    assert daemon.process is not None
    pid = daemon.process.pid
    try:
        total = total_for(DEFAULT_FILES)
        assert total == 384
        invoice = daemon.create_invoice("btc", "0.001")
        others = [daemon.create_invoice("btc", "0.001")["id"] for _ in range(200)]
        measured: dict[str, Any] = {"files_idle": open_files(pid)}

        async def scenario() -> None:
            one = await open_all(daemon.port, [f"/i/{invoice['id']}/live"] * ATTEMPTS)
            admitted = [s for s in one if s.status == 200]
            refused = [s for s in one if s.status != 200]
            assert len(admitted) == PER_INVOICE and {s.status for s in refused} == {503}
            measured["refused_slowest"] = max(s.took for s in refused)
            assert measured["refused_slowest"] < scaled(2)
            for stream in admitted:
                await stream.wait_for(b"retry: 3000", scaled(5))
            measured["one_invoice"] = await asyncio.to_thread(answered, daemon)

            spread = await open_all(daemon.port, [f"/i/{others[i % len(others)]}/live" for i in range(ATTEMPTS)])
            more = [s for s in spread if s.status == 200]
            assert len(more) == total - PER_INVOICE
            assert {s.status for s in spread if s.status != 200} == {503}
            measured["refused_slowest_spread"] = max(s.took for s in spread if s.status != 200)
            assert measured["refused_slowest_spread"] < scaled(2)
            assert await asyncio.to_thread(daemon.metric, "watcherd_live_streams") == total
            measured["files_full"] = open_files(pid)
            measured["all_invoices"] = await asyncio.to_thread(answered, daemon)

            # the node's sockets still work: a payment reaches the first invoice's open streams
            await asyncio.to_thread(bsv_node.pay, invoice["address"], Decimal(invoice["amount"]))
            for stream in admitted:
                await stream.wait_for(b'"status":"processing"', scaled(20))
            for stream in admitted + more:
                stream.writer.close()

        asyncio.run(scenario())
        assert measured["files_full"] < DEFAULT_FILES - 256, measured
        assert daemon.alive() and "Too many open files" not in daemon.log_path.read_text()
        print("measured:", measured)
    finally:
        daemon.stop()


def test_a_stream_ends_after_the_configured_lifetime_and_reconnecting_misses_nothing(bsv_node, tmp_path):
    """`[api] live_stream_seconds = 2`: the stream ends after 1.8-2 s though nothing changed (EventSource then
    reconnects); a payment made while the browser was away arrives at once on the reconnection that sends the
    version it last had."""
    daemon = Daemon(tmp_path / "d", chain_table("btc", bsv_node, confirmations=1))
    config = daemon.config_path.read_text()
    daemon.config_path.write_text(config.replace("[api]\n", "[api]\nlive_stream_seconds = 2\n", 1))
    daemon.start()
    try:
        invoice = daemon.create_invoice("btc", "0.001")
        with urllib.request.urlopen(f"http://127.0.0.1:{daemon.port}/i/{invoice['id']}/status", timeout=10) as r:
            version = r.headers["ETag"].strip('"')

        async def until_the_end() -> tuple[float, bytes]:
            stream = await Stream.open(daemon.port, f"/i/{invoice['id']}/live?v={version}")
            assert stream.status == 200
            started, rest = time.monotonic(), b""
            async with asyncio.timeout(scaled(10)):
                while not rest.endswith(b"\r\n0\r\n\r\n"):  # the response's last chunk: the stream ended
                    chunk = await stream.reader.read(65536)
                    assert chunk, rest
                    rest += chunk
            stream.writer.close()
            return time.monotonic() - started, rest

        lasted, sent = asyncio.run(until_the_end())
        assert lasted >= 1.5 and b"retry: 3000" in sent and b"data:" not in sent, (lasted, sent)
        bsv_node.pay(invoice["address"], Decimal(invoice["amount"]))
        daemon.wait_status(invoice["id"], "processing")

        async def reconnect() -> None:
            stream = await Stream.open(daemon.port, f"/i/{invoice['id']}/live?v={version}", last_event_id=version)
            with contextlib.closing(stream.writer):
                await stream.wait_for(b'"status":"processing"', scaled(1))

        asyncio.run(reconnect())
    finally:
        daemon.stop()
