"""The log lines of one payment as an operator reads them: amounts with their unit, what changed rather than
`x -> x`, the payment's own chain, and lines short enough to take in at once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import time
from fractions import Fraction

import pytest
from conftest import async_wait_for, scaled

from testkit.fake import FakeChain
from watcherd.core.types import ChainBlock, ChainTx, Cursor, Received
from watcherd.ledger import Processor
from watcherd.logs import PlainFormatter
from watcherd.store import Store

TXID = "ab" * 32  # a real txid's length: the context must not repeat it


@pytest.fixture
async def two_coins(store_location):
    """The real ledger with two fake chains, btc (BTC) and ltc (LTC), 8 decimals each, cursors at block 100."""
    store = await Store.open(store_location)
    chains = {}
    for name, asset in (("btc", "BTC"), ("ltc", "LTC")):
        chain = FakeChain(name, confirmations=1)
        chain.asset, chain.decimals, chain.assets = asset, 8, {asset: 8}
        chains[name] = chain
    processor = Processor(store, chains, ["webhook"], clock=lambda: 1_700_000_000)
    await processor.start()
    for name in chains:
        await processor.set_cursor(name, Cursor(100, "h100"))
    yield processor, chains
    await store.close()


async def test_a_usd_invoice_paid_in_ltc_after_picking_btc_reads_well(two_coins, caplog):
    """49.00 USD offered in BTC and LTC, BTC picked then LTC, paid and mined in LTC: creation and picks say so (no
    `unpaid -> unpaid`), the payment shows 0.7 LTC (not 70000000) and every line of it is tagged chain=ltc (not
    the first picked method's btc); no plain line repeats the txid or the invoice id, and none says more than 160
    characters after its time, level and logger."""
    processor, chains = two_coins
    with caplog.at_level(logging.INFO, logger="watcherd"):
        invoice = await processor.create_priced_invoice(
            "USD", 4900, {"btc": Fraction(5_000_000, 10**8), "ltc": Fraction(7_000, 10**8)}, decimals=2)
        invoice_id = invoice["id"]
        await processor.activate_method(invoice_id, "btc")
        await processor.activate_method(invoice_id, "ltc")
        paying = ChainTx(TXID, (Received(chains["ltc"].derive(0)[1], 0, 70_000_000),), (b"ltc-o1",))
        await processor.tx_seen("ltc", paying)
        await processor.block_connected("ltc", ChainBlock(101, "h101", "h100", (paying,)))
    records = [r for r in caplog.records if getattr(r, "invoice_id", None) == invoice_id]
    said = [(r.getMessage(), getattr(r, "chain", None)) for r in records]
    assert said == [
        (f"invoice {invoice_id}: created, 49.00 USD in btc, ltc", None),
        (f"invoice {invoice_id}: method btc picked", "btc"),
        (f"invoice {invoice_id}: method ltc picked", "ltc"),
        (f"payment {TXID}:0 of 0.7 LTC to {invoice_id} (unconfirmed)", "ltc"),
        (f"invoice {invoice_id}: unpaid -> processing", "ltc"),
        (f"payment {TXID}:0 of 0.7 LTC to {invoice_id} in block 101", "ltc"),
        (f"invoice {invoice_id}: processing -> paid", "ltc"),
    ]
    assert not [m for m, _ in said if re.search(r"\b(\w+) -> \1\b", m)]
    formatter = PlainFormatter()
    for record in records:
        line = formatter.format(record)
        assert line.count(TXID) <= 1 and line.count(invoice_id) == 1, line
        assert len(line.split(": ", 1)[1]) <= 160, line


async def test_an_unreachable_node_is_told_within_seconds_and_down_only_later(tmp_path, caplog):
    """A wrong RPC port: one warning within a few seconds naming the node's host and port (never its path) and
    the cause, saying when the chain will count as down; the chain's failure (the outage line, the failure
    counter) only after node_down_after_seconds."""
    from test_config import MINIMAL, write

    from watcherd import metrics
    from watcherd.chains.bitcoin.adapter import BitcoinAdapter
    from watcherd.config import load

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, not listening: every connection is refused
        text = MINIMAL.replace("http://127.0.0.1:8332", f"http://127.0.0.1:{port}/wallet/secret-path").replace(
            'rpc_cookie_file = "bitcoind/.cookie"', 'rpc_user = "u"\nrpc_password = "p"')
        adapter = BitcoinAdapter(load(write(tmp_path, text + "node_down_after_seconds = 30\n")).chains["btc"])
        failures = metrics.CHAIN_FAILURES.labels("btc", "node")
        before = failures._value.get()
        caplog.set_level(logging.DEBUG, logger="watcherd")
        started = time.monotonic()
        task = asyncio.create_task(adapter.run(sink=None))  # type: ignore[arg-type]  # no call gets through
        try:
            await async_wait_for(lambda: [r for r in caplog.records if r.levelno == logging.WARNING], 8,
                                 "the warning")
            told = time.monotonic() - started
            await asyncio.sleep(1)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await adapter.close()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and told < scaled(6), (told, [r.getMessage() for r in warnings])
    message = warnings[0].getMessage()
    assert f"http://127.0.0.1:{port}/... unreachable" in message and "secret-path" not in message
    assert "Connect" in message and re.search(r"retrying: the chain counts as down in 2\d s$", message), message
    assert warnings[0].chain == "btc"
    assert failures._value.get() == before  # not down yet


async def test_a_stalled_call_tells_the_follower_once_and_again_when_it_answers():
    """The retry loop of a node call tells whoever follows the chain (STALLED) once after a few seconds of
    transient errors, with the seconds left, and once more (None) when the call then succeeds."""
    from watcherd.chains import rpc
    from watcherd.chains.rpc import STALLED, NodeBusy

    told: list[tuple[str | None, float]] = []
    calls = 0
    started = time.monotonic()

    async def call() -> int:
        nonlocal calls
        calls += 1
        if time.monotonic() - started < rpc.NOTICE_AFTER_SECONDS + 2.5:  # past one backoff step (2 s at most)
            raise NodeBusy("getblockcount: the node is busy (HTTP 503: 'Work queue depth exceeded')")
        return 7

    STALLED.set(lambda exc, left: told.append((None if exc is None else str(exc), left)))
    assert await rpc.retrying(call, "getblockcount", give_up_after=30) == 7
    assert calls > 3 and [t[0] for t in told] == [
        "getblockcount: the node is busy (HTTP 503: 'Work queue depth exceeded')", None]
    assert 30 - rpc.NOTICE_AFTER_SECONDS - 2.5 <= told[0][1] <= 30 - rpc.NOTICE_AFTER_SECONDS
