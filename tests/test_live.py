"""The live channel's plumbing: batched reads for pages woken together, and the QR cache built off the loop."""

import asyncio

import pytest

from watcherd.http.page import qr
from watcherd.live import Coalescer


class Reads:
    def __init__(self, fail: bool = False):
        self.calls: list[list[str]] = []
        self.fail = fail

    async def __call__(self, keys):
        self.calls.append(list(keys))
        await asyncio.sleep(0)
        if self.fail:
            raise OSError("disk I/O error")
        return {k: k.upper() for k in keys if k != "gone"}


async def test_readers_woken_together_share_one_read_and_each_get_their_own_answer():
    reads = Reads()
    coalescer = Coalescer(reads)
    answers = await asyncio.gather(*(coalescer.read(k) for k in ["a", "b", "a", "gone"]))
    assert answers == ["A", "B", "A", None]
    assert reads.calls == [["a", "b", "gone"]]
    assert await coalescer.read("c") == "C" and reads.calls[-1] == ["c"]  # a later turn reads again


async def test_a_failed_read_reaches_every_reader_and_a_reader_leaving_does_not_cancel_the_others():
    failing = Coalescer(Reads(fail=True))
    results = await asyncio.gather(failing.read("a"), failing.read("b"), return_exceptions=True)
    assert [type(r) for r in results] == [OSError, OSError]

    reads = Reads()
    coalescer = Coalescer(reads)
    leaving = asyncio.ensure_future(coalescer.read("a"))
    staying = asyncio.ensure_future(coalescer.read("a"))
    await asyncio.sleep(0)
    leaving.cancel()
    assert await staying == "A"
    with pytest.raises(asyncio.CancelledError):
        await leaving


def test_a_qr_is_built_once_and_the_cache_keeps_the_most_recently_used(monkeypatch):
    monkeypatch.setattr(qr, "_CODES", type(qr._CODES)())
    monkeypatch.setattr(qr, "_CODES_KEPT", 2)
    uri = "bitcoin:bcrt1qexample?amount=0.01"
    assert not qr.built(uri, "BTC")
    first = qr.build(uri, "BTC")
    assert qr.built(uri, "BTC") and qr.build(uri, "BTC") is first
    qr.build("monero:4abc?tx_amount=1", "XMR")
    qr.build(uri, "BTC")  # used again: now the most recent
    qr.build("litecoin:rltc1qexample", "LTC")
    assert qr.built(uri, "BTC") and not qr.built("monero:4abc?tx_amount=1", "XMR")
