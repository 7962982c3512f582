"""The chain-agnostic core driven by a fake adapter: payments, blocks, reorgs, replacements, outbox rows."""

import asyncio
import json
import sqlite3

import pytest

from testkit.fake import FakeChain
from watcherd import metrics
from watcherd.core.invoices import FINALITY
from watcherd.core.types import ChainBlock, ChainTx, Cursor, Received
from watcherd.ledger import Processor
from watcherd.store import SCHEMA, Store


class Clock:
    def __init__(self, now: float = 1_700_000_000):
        self.now = now

    def __call__(self) -> float:
        return self.now


async def open_core(store_location, confirmations):
    """A ledger on a fresh store with one fake chain whose cursor is at block 100, and a clock to move."""
    store = await Store.open(store_location)
    chain = FakeChain(confirmations=confirmations)
    clock = Clock()
    processor = Processor(store, {"fake": chain}, ["webhook"], clock=clock)
    await processor.start()
    await processor.set_cursor("fake", Cursor(100, "h100"))
    return processor, chain, clock


@pytest.fixture
async def core(store_location):
    processor, chain, clock = await open_core(store_location, confirmations=2)
    yield processor, chain, clock
    await processor.store.close()


def block(height, txs, parent=None):
    return ChainBlock(height, f"h{height}", parent or f"h{height - 1}", tuple(txs))


def tx(txid, key, amount, spent=(b"o1",), vout=0):
    return ChainTx(txid, (Received(key, vout, amount),), spent)


async def events(processor, invoice_id):
    return [(e["type"], json.loads(e["payload"])["invoice"]["status"])
            for e in await processor.store.events_for(invoice_id)]


async def test_exact_payment_flow(core):
    """unpaid -> processing on the mempool tx -> paid after the required confirmations, one event each."""
    processor, chain, _ = core
    inv = await processor.create_invoice("fake", 1_500_000)
    key = chain.derive(0)[1]
    assert key in chain.watchlist.keys
    await processor.tx_seen("fake", tx("t1", key, 1_500_000))
    assert (await processor.invoice_json(inv["id"]))["status"] == "processing"
    await processor.block_connected("fake", block(101, [tx("t1", key, 1_500_000)]))
    assert (await processor.invoice_json(inv["id"]))["status"] == "processing"
    await processor.block_connected("fake", block(102, []))
    shown = await processor.invoice_json(inv["id"])
    assert shown["status"] == "paid"
    assert shown["payments"][0]["confirmations"] == 2 and shown["payments"][0]["status"] == "confirmed"
    assert await events(processor, inv["id"]) == [
        ("invoice.created", "unpaid"), ("invoice.processing", "processing"), ("invoice.paid", "paid"),
    ]
    assert await processor.store.cursor("fake") == Cursor(102, "h102")


async def test_reorg_takes_paid_back_and_remines(core):
    processor, chain, _ = core
    inv = await processor.create_invoice("fake", 1000)
    key = chain.derive(0)[1]
    await processor.block_connected("fake", block(101, [tx("t1", key, 1000)]))
    await processor.block_connected("fake", block(102, []))
    assert (await processor.invoice_json(inv["id"]))["status"] == "paid"
    await processor.block_disconnected("fake", 102, "h102", Cursor(101, "h101"))
    await processor.block_disconnected("fake", 101, "h101", Cursor(100, "h100"))
    shown = await processor.invoice_json(inv["id"])
    assert shown["status"] == "processing" and shown["payments"][0]["block_height"] is None
    await processor.block_connected("fake", block(101, [tx("t1", key, 1000)], parent="h100"))
    await processor.block_connected("fake", block(102, []))
    assert [t for t, _ in await events(processor, inv["id"])] == [
        "invoice.created", "invoice.processing", "invoice.paid", "invoice.processing", "invoice.paid"]


async def test_rbf_replacement_counts_once(core):
    processor, chain, _ = core
    inv = await processor.create_invoice("fake", 1000)
    key = chain.derive(0)[1]
    await processor.tx_seen("fake", tx("orig", key, 1000, spent=(b"coin",)))
    await processor.tx_seen("fake", tx("bump", key, 1000, spent=(b"coin",)))
    shown = await processor.invoice_json(inv["id"])
    assert shown["amount_received_atomic"] == "1000"
    assert {p["txid"]: p["status"] for p in shown["payments"]} == {"orig": "replaced", "bump": "pending"}
    assert shown["status"] == "processing" and shown["exception"] is None


async def test_double_spend_away_from_us(core):
    processor, chain, _ = core
    inv = await processor.create_invoice("fake", 1000)
    key = chain.derive(0)[1]
    await processor.tx_seen("fake", tx("pay", key, 1000, spent=(b"coin",)))
    # the conflicting tx pays someone else: the adapter passes it on because it spends a watched outpoint
    assert chain.watchlist.conflicts("steal", [b"coin"]) == {"pay"}
    await processor.block_connected("fake", block(101, [ChainTx("steal", (), (b"coin",))]))
    shown = await processor.invoice_json(inv["id"])
    assert (shown["status"], shown["exception"]) == ("unpaid", "double_spent")


async def test_dropped_from_mempool(core):
    processor, chain, _ = core
    inv = await processor.create_invoice("fake", 1000)
    await processor.tx_seen("fake", tx("pay", chain.derive(0)[1], 1000))
    await processor.mempool_synced("fake", {"pay", "other"})
    assert (await processor.invoice_json(inv["id"]))["status"] == "processing"
    await processor.mempool_synced("fake", {"other"})
    assert (await processor.invoice_json(inv["id"]))["exception"] == "double_spent"


async def test_underpaid_topup_overpaid_and_late(core):
    processor, chain, clock = core
    under = await processor.create_invoice("fake", 1000)
    over = await processor.create_invoice("fake", 1000)
    late = await processor.create_invoice("fake", 1000, expires_in=60)
    k0, k1, k2 = (chain.derive(i)[1] for i in range(3))
    await processor.tx_seen("fake", tx("a", k0, 400, spent=(b"x",)))
    assert (await processor.invoice_json(under["id"]))["exception"] == "underpaid"
    await processor.tx_seen("fake", tx("b", k0, 600, spent=(b"y",)))
    await processor.tx_seen("fake", tx("c", k1, 1500, spent=(b"z",)))
    clock.now += 120
    assert await processor.expire_due() == 1
    assert (await processor.invoice_json(late["id"]))["status"] == "expired"
    await processor.tx_seen("fake", tx("d", k2, 1000, spent=(b"w",)))
    await processor.block_connected("fake", block(101, [tx(t, k, a, spent=(s,)) for t, k, a, s in
                                                        [("a", k0, 400, b"x"), ("b", k0, 600, b"y"),
                                                         ("c", k1, 1500, b"z"), ("d", k2, 1000, b"w")]]))
    await processor.block_connected("fake", block(102, []))
    result = {i["id"]: (s["status"], s["exception"]) for i in (under, over, late)
              if (s := await processor.invoice_json(i["id"]))}
    assert result == {under["id"]: ("paid", None), over["id"]: ("paid", "overpaid"),
                      late["id"]: ("paid", "paid_late")}


async def test_outbox_rows_written_with_the_change(core):
    processor, chain, _ = core
    inv = await processor.create_invoice("fake", 1000)
    await processor.tx_seen("fake", tx("pay", chain.derive(0)[1], 1000))
    due = await processor.store.due_deliveries("webhook", processor.clock())
    # per-invoice order: only the oldest undelivered event of the invoice is due
    assert [d.type for d in due] == ["invoice.created"]
    async with processor.store.transaction():
        await processor.store.mark_delivered("webhook", due[0].event_seq, 0)
    due = await processor.store.due_deliveries("webhook", processor.clock())
    assert [d.type for d in due] == ["invoice.processing"]
    body = json.loads(due[0].payload)
    assert body["id"] == due[0].event_id and body["invoice"]["id"] == inv["id"]
    assert body["invoice"]["payments"][0]["amount_atomic"] == "1000"


async def test_cancel(core):
    processor, chain, _ = core
    inv = await processor.create_invoice("fake", 1000)
    assert (await processor.cancel_invoice(inv["id"]))["status"] == "cancelled"
    await processor.tx_seen("fake", tx("pay", chain.derive(0)[1], 1000))
    assert (await processor.invoice_json(inv["id"]))["status"] == "invalid"


async def test_addresses_never_reused_and_gap_warning(core, caplog):
    processor, chain, _ = core
    addresses = {(await processor.create_invoice("fake", 1))["address"] for _ in range(22)}
    assert len(addresses) == 22
    assert "22 consecutive issued addresses are unused" in caplog.text


async def test_token_invoice_and_wrong_asset_is_recorded_not_counted(core):
    processor, chain, _ = core
    token = await processor.create_invoice("fake", 5_000_000, asset="TOKEN")
    assert token["asset"] == "TOKEN" and token["amount"] == "5"  # 6 decimals
    key = chain.derive(0)[1]
    await processor.tx_seen("fake", ChainTx("native", (Received(key, 0, 10**8),), (b"n",)))
    shown = await processor.invoice_json(token["id"])
    assert (shown["status"], shown["exception"], shown["amount_received"]) == ("unpaid", "wrong_asset", "0")
    assert shown["payments"][0]["status"] == "wrong_asset" and shown["payments"][0]["amount"] == "1"
    assert (shown["payments"][0]["value"], shown["payments"][0]["rate"]) == ("0", None)  # worth nothing to it
    await processor.tx_seen("fake", ChainTx("tok", (Received(key, 3, 5_000_000, "TOKEN"),), (b"t",)))
    await processor.block_connected("fake", block(101, [ChainTx("tok", (Received(key, 3, 5_000_000, "TOKEN"),))]))
    await processor.block_connected("fake", block(102, []))
    shown = await processor.invoice_json(token["id"])
    assert (shown["status"], shown["exception"], shown["amount_received"]) == ("paid", "wrong_asset", "5")


async def test_finality_chain_confirms_at_the_final_height_not_a_depth(store_location):
    """On a chain with finality (Ethereum's `finalized`), a payment is confirmed only once the final height
    covers its block: however deep it already is, a stalled finality keeps the invoice processing."""
    store = await Store.open(store_location)
    chain = FakeChain(confirmations=FINALITY)
    processor = Processor(store, {"fake": chain}, [])
    await processor.start()
    await processor.set_cursor("fake", Cursor(100, "h100"))
    inv = await processor.create_invoice("fake", 1000)
    key = chain.derive(0)[1]
    processor.final_heights["fake"] = 100
    await processor.block_connected("fake", block(101, [tx("t1", key, 1000)]))
    for height in range(102, 110):  # eight blocks deep, finality stalled at 100
        await processor.block_connected("fake", block(height, []))
    shown = await processor.invoice_json(inv["id"])
    assert shown["status"] == "processing" and shown["payments"][0]["confirmations"] == 9
    assert shown["finality"] == "finalized" and shown["confirmations_required"] is None
    processor.final_heights["fake"] = 101
    await processor.block_connected("fake", block(110, []))
    assert (await processor.invoice_json(inv["id"]))["status"] == "paid"
    await store.close()


async def test_reorg_above_the_payment_block_takes_confirmations_back(core):
    """The payment's block stays in the chain but the blocks above it are disconnected: with fewer than the
    required confirmations the invoice goes back from paid to processing."""
    processor, chain, _ = core
    inv = await processor.create_invoice("fake", 1000)
    await processor.block_connected("fake", block(101, [tx("t1", chain.derive(0)[1], 1000)]))
    await processor.block_connected("fake", block(102, []))
    assert (await processor.invoice_json(inv["id"]))["status"] == "paid"
    await processor.block_disconnected("fake", 102, "h102", Cursor(101, "h101"))
    shown = await processor.invoice_json(inv["id"])
    assert shown["status"] == "processing" and shown["payments"][0]["status"] == "pending"
    assert shown["payments"][0]["block_height"] == 101 and shown["payments"][0]["confirmed_at"] is None
    await processor.block_connected("fake", block(102, [], parent="h101"))
    assert (await processor.invoice_json(inv["id"]))["status"] == "paid"


async def test_blocks_only_recheck_invoices_whose_payments_they_confirm(core, monkeypatch):
    """A new block re-assesses only the invoices it can change, not every invoice still maturing."""
    processor, chain, _ = core
    invoices = [await processor.create_invoice("fake", 1000) for _ in range(3)]
    for i in range(3):
        await processor.block_connected("fake", block(101 + i, [tx(f"t{i}", chain.derive(i)[1], 1000,
                                                                     spent=(f"o{i}".encode(),))]))
    reassessed: list[str] = []
    original = processor._reassess

    async def spy(invoice_id, force_type=None, **context):
        reassessed.append(invoice_id)
        await original(invoice_id, force_type, **context)

    monkeypatch.setattr(processor, "_reassess", spy)
    await processor.block_connected("fake", block(104, []))  # confirms the payment of block 103 only
    assert reassessed == [invoices[2]["id"]]
    assert [(await processor.invoice_json(i["id"]))["status"] for i in invoices] == ["paid"] * 3


async def test_reused_one_time_output_key_counts_once_even_after_restart(core, tmp_path):
    """Monero's burning bug: a second output with an already-paid one-time key pays nothing, also when it
    arrives after a restart; once the first payment is gone (replaced), the key is free again."""
    processor, chain, _ = core
    inv = await processor.create_invoice("fake", 1_000)
    key = chain.derive(0)[1]

    def paying(txid, output_key):
        return ChainTx(txid, (Received(key, 0, 600, output_key=output_key),), ())

    await processor.block_connected("fake", block(101, [paying("t1", b"P1")]))
    await processor.block_connected("fake", block(102, [paying("t2", b"P1")]))  # same P: ignored
    assert (await processor.invoice_json(inv["id"]))["amount_received_atomic"] == "600"

    restarted = Processor(processor.store, {"fake": FakeChain(confirmations=2)}, ["webhook"], clock=Clock())
    await restarted.start()
    await restarted.block_connected("fake", block(103, [paying("t3", b"P1"), paying("t4", b"P2")]))
    shown = await restarted.invoice_json(inv["id"])
    assert shown["amount_received_atomic"] == "1200"
    assert sorted(p["txid"] for p in shown["payments"]) == ["t1", "t4"]

    await restarted.block_disconnected("fake", 103, "h103", Cursor(102, "h102"))
    await restarted.block_disconnected("fake", 102, "h102", Cursor(101, "h101"))
    await restarted.block_disconnected("fake", 101, "h101", Cursor(100, "h100"))
    await restarted.mempool_synced("fake", set())  # t1 and t4 are gone for good
    await restarted.block_connected("fake", block(101, [paying("t3", b"P1")]))
    shown = await restarted.invoice_json(inv["id"])
    assert [p["txid"] for p in shown["payments"] if p["status"] != "replaced"] == ["t3"]


async def test_a_version_1_store_is_migrated_in_place(tmp_path):
    """A store written by the first schema opens with the output-key column added and its payments kept."""
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(f"BEGIN; {SCHEMA[0]}; PRAGMA user_version=1; COMMIT;")
        db.execute("""INSERT INTO invoices (id, chain, asset, address, watch_key, derivation_index, amount,
                          confirmations_required, tolerance_percent, status, created_at, expires_at, updated_at)
                      VALUES ('inv_1', 'fake', 'FAKE', 'addr0', x'00', 0, '5', 1, '0', 'paid', 1, 2, 1)""")
        db.execute("""INSERT INTO payments (chain, txid, vout, invoice_id, asset, amount, first_seen_at)
                      VALUES ('fake', 't1', 0, 'inv_1', 'FAKE', '5', 1)""")
    store = await Store.open(path)
    try:
        assert (await store._one("PRAGMA user_version"))[0] == len(SCHEMA)
        assert await store.payment_with_output_key("fake", b"P1") is None
        async with store.transaction():
            await store.upsert_payment("fake", "inv_1", "FAKE", "t2", 0, 7, 3, output_key=b"P1")
        assert await store.payment_with_output_key("fake", b"P1") == ("t2", 0, None)
        async with store.transaction():  # a payment from before the upgrade gets its key when seen again
            await store.upsert_payment("fake", "inv_1", "FAKE", "t1", 0, 5, 4, 101, "h101", output_key=b"P0")
        assert await store.payment_with_output_key("fake", b"P0") == ("t1", 0, 101)
        assert [(p.payment.txid, p.payment.amount) for p in await store.payments_for("inv_1")] == [("t1", 5), ("t2", 7)]
    finally:
        await store.close()


async def test_output_key_of_a_pool_payment_follows_it_into_its_block_and_a_mined_duplicate_wins(core):
    """The same tx seen in the pool then mined keeps its key (and gets its block); a duplicate mined while
    the key's holder is still unmined takes the key over, and the pool one no longer counts."""
    processor, chain, _ = core
    first = await processor.create_invoice("fake", 1_000)
    second = await processor.create_invoice("fake", 1_000)
    key1, key2 = chain.derive(0)[1], chain.derive(1)[1]

    def paying(txid, key, output_key):
        return ChainTx(txid, (Received(key, 0, 1_000, output_key=output_key),), ())

    duplicates = metrics.MALFORMED.labels("fake", "duplicate_output_key")
    before = duplicates._value.get()
    await processor.tx_seen("fake", paying("t1", key1, b"P1"))
    await processor.tx_seen("fake", paying("t1", key1, b"P1"))
    await processor.block_connected("fake", block(101, [paying("t1", key1, b"P1")]))
    payment = (await processor.invoice_json(first["id"]))["payments"][0]
    assert payment["block_height"] == 101 and payment["status"] != "replaced"
    assert duplicates._value.get() == before, "the same output seen again is not a duplicate"

    await processor.tx_seen("fake", paying("a", key2, b"P2"))
    assert (await processor.invoice_json(second["id"]))["status"] == "processing"
    await processor.block_connected("fake", block(102, [paying("b", key2, b"P2")]))
    shown = await processor.invoice_json(second["id"])
    assert {p["txid"]: p["status"] for p in shown["payments"]} == {"a": "replaced", "b": "pending"}
    assert shown["amount_received_atomic"] == "1000"
    await processor.tx_seen("fake", paying("a", key2, b"P2"))  # seen again: still the duplicate
    assert duplicates._value.get() == before + 1
    shown = await processor.invoice_json(second["id"])
    assert {p["txid"]: p["status"] for p in shown["payments"]} == {"a": "replaced", "b": "pending"}


async def test_a_page_watching_an_invoice_is_woken_by_its_committed_changes_and_by_blocks(core):
    processor, chain, _ = core
    watched = await processor.create_invoice("fake", 1000)
    other = await processor.create_invoice("fake", 1000)
    with processor.live.watch(watched["id"]) as woken:
        await processor.tx_seen("fake", tx("t9", chain.derive(1)[1], 1000))  # the other invoice
        assert not woken.is_set()
        await processor.tx_seen("fake", tx("t1", chain.derive(0)[1], 1000))
        assert woken.is_set()
        woken.clear()
        await processor.block_connected("fake", block(101, []))  # confirmations moved, no event
        assert woken.is_set()
        woken.clear()
        woken.chains = frozenset({"btc"})  # as the page narrows it once it has read the invoice's methods
        await processor.block_connected("fake", block(102, []))
        assert not woken.is_set(), "a block on a chain the invoice cannot be paid on woke its page"
        woken.chains = frozenset({"fake"})
        await processor.block_connected("fake", block(103, []))
        assert woken.is_set()
    assert processor.live.watching == 0
    assert other["id"] != watched["id"]


async def test_many_invoices_read_at_once_render_exactly_as_one_at_a_time(core):
    processor, chain, _ = core
    paid = await processor.create_invoice("fake", 1000)
    half = await processor.create_invoice("fake", 1000)
    untouched = await processor.create_invoice("fake", 1000)
    await processor.tx_seen("fake", tx("t1", chain.derive(0)[1], 1000))
    await processor.block_connected("fake", block(101, [tx("t2", chain.derive(1)[1], 400, spent=(b"o2",))]))
    ids = [paid["id"], half["id"], untouched["id"], "no-such-invoice"]
    many = await processor.invoice_jsons(ids)
    assert set(many) == set(ids[:3])
    for invoice_id in ids[:3]:
        assert many[invoice_id] == await processor.invoice_json(invoice_id)
    assert [many[i]["status"] for i in ids[:3]] == ["processing", "unpaid", "unpaid"]
    assert many[half["id"]]["exception"] == "underpaid" and len(many[half["id"]]["payments"]) == 1


async def test_a_version_3_store_is_migrated_and_its_invoices_read_and_judge_as_before(tmp_path):
    """An invoice of the one-coin era becomes one priced in its coin with its one method picked; it renders the
    same amounts, starts with the chain, and a reassessment with nothing new emits no event."""
    path = tmp_path / "v3.sqlite3"
    with sqlite3.connect(path) as db:
        for number, script in enumerate(SCHEMA[:3], start=1):
            db.executescript(f"BEGIN; {script}; PRAGMA user_version={number}; COMMIT;")
        db.execute("""INSERT INTO invoices (id, chain, asset, address, watch_key, derivation_index, amount,
                          confirmations_required, tolerance_percent, status, created_at, expires_at, updated_at,
                          digest, idempotency_key, request_digest)
                      VALUES ('inv_1', 'fake', 'FAKE', 'addr0', x'00', 0, '1500000', 1, '0', 'processing', 1, 2, 1,
                              '["processing", null, [["t1", 0, "pending"]]]', 'k1', 'd1')""")
        db.execute("""INSERT INTO payments (chain, txid, vout, invoice_id, asset, amount, first_seen_at)
                      VALUES ('fake', 't1', 0, 'inv_1', 'FAKE', '1500000', 1)""")
        db.execute("INSERT INTO assets (chain, asset, decimals) VALUES ('fake', 'FAKE', 8)")
        db.execute("INSERT INTO events (id, invoice_id, chain, type, created_at, payload) "
                   "VALUES ('evt_1', 'inv_1', 'fake', 'invoice.processing', 1, '{}')")
    store = await Store.open(path)
    try:
        processor = Processor(store, {"fake": FakeChain(confirmations=1)}, ["webhook"], clock=Clock())
        await processor.start()
        shown = await processor.invoice_json("inv_1")
        assert (shown["currency"], shown["amount"], shown["amount_received"], shown["address"], shown["chain"]) == \
            ("FAKE", "0.015", "0.015", "addr0", "fake")
        assert [(m["method"], m["activated"], m["rate"]) for m in shown["payment_methods"]] == [("fake", True, "1")]
        async with store.transaction():
            await processor._reassess("inv_1")
        assert [e["id"] for e in await store.events_for("inv_1")] == ["evt_1"]  # nothing new to say
        assert (await store.invoice_by_idempotency_key("k1")).id == "inv_1"
        assert [key for _, key in await store.keys_from("fake", 0)] == [b"\x00"]
    finally:
        await store.close()


async def test_invoices_created_together_are_all_watched_and_all_logged(core, caplog):
    """Group commit runs concurrent creates (and a follower's cursor write) in one transaction: each keeps its
    own addresses and log lines, so every address handed out is watched and a payment to it is seen."""
    processor, chain, _ = core
    with caplog.at_level("INFO", logger="watcherd.processor"):
        created = await asyncio.gather(*(processor.create_invoice("fake", 1_000 + n) for n in range(8)),
                                       processor.set_cursor("fake", Cursor(100, "h100")))
    invoices = created[:8]
    keys = [chain.derive(n)[1] for n in range(8)]
    assert set(keys) <= chain.watchlist.keys
    created = [r for r in caplog.records if "created, " in r.getMessage()]
    assert sorted(r.invoice_id for r in created) == sorted(i["id"] for i in invoices)
    assert {r.getMessage() for r in created} == {f"invoice {i['id']}: created, {i['amount']} {i['currency']} in fake"
                                                 for i in invoices}
    await processor.block_connected("fake", block(101, [tx(f"t{n}", key, 1_000 + n, spent=(f"o{n}".encode(),))
                                                        for n, key in enumerate(keys)]))
    assert {(await processor.invoice_json(i["id"]))["status"] for i in invoices} == {"processing"}


async def test_a_payment_announced_again_changes_nothing_and_costs_no_transaction(core, caplog):
    """Nodes announce a block's transactions again once they connect it: a payment already recorded (and
    counting) is not taken again; one that was replaced and comes back still counts again."""
    processor, chain, _ = core
    inv = await processor.create_invoice("fake", 1_000)
    key = chain.derive(0)[1]
    seen = tx("t1", key, 1_000)
    await processor.tx_seen("fake", seen)
    await processor.block_connected("fake", block(101, [seen]))
    await processor.block_connected("fake", block(102, []))
    with caplog.at_level("INFO", logger="watcherd.processor"):
        await processor.tx_seen("fake", seen)
    assert not [r for r in caplog.records if "payment t1" in r.getMessage()]
    shown = await processor.invoice_json(inv["id"])
    assert shown["status"] == "paid" and shown["payments"][0]["confirmations"] == 2
    assert [e["type"] for e in await processor.store.events_for(inv["id"])] == [
        "invoice.created", "invoice.processing", "invoice.paid"]


def mined(height, txs, parent=None):
    """A block whose transactions are the truth about what they pay (an EVM block, judged from its logs)."""
    return ChainBlock(height, f"h{height}", parent or f"h{height - 1}", tuple(txs), authoritative=True)


def token_tx(txid, key, amount, vout=1):
    return ChainTx(txid, (Received(key, vout, amount, "TOKEN"),) if amount is not None else (), (b"sender/7",))


async def test_a_pending_transfer_its_mined_transaction_does_not_pay_is_taken_back(core):
    """A transfer() seen pending (credited from its calldata) that reverts when mined pays nothing: the payment
    is replaced, the invoice goes back to unpaid with an event, and a reorg of that block gives no credit back;
    mined again with its log, it pays."""
    processor, chain, _ = core
    inv = await processor.create_invoice("fake", 5_000_000, asset="TOKEN")
    key = chain.derive(0)[1]
    await processor.tx_seen("fake", token_tx("t1", key, 5_000_000))
    assert (await processor.invoice_json(inv["id"]))["status"] == "processing"
    await processor.block_connected("fake", mined(101, [token_tx("t1", key, None)]))
    shown = await processor.invoice_json(inv["id"])
    assert (shown["status"], shown["amount_received_atomic"]) == ("unpaid", "0")
    assert [(p["txid"], p["vout"], p["status"]) for p in shown["payments"]] == [("t1", 1, "replaced")]
    assert await events(processor, inv["id"]) == [
        ("invoice.created", "unpaid"), ("invoice.processing", "processing"), ("invoice.unpaid", "unpaid")]
    await processor.block_disconnected("fake", 101, "h101", Cursor(100, "h100"))
    assert (await processor.invoice_json(inv["id"]))["amount_received_atomic"] == "0"
    await processor.block_connected("fake", mined(101, [token_tx("t1", key, 5_000_000)], parent="h100"))
    await processor.block_connected("fake", mined(102, []))
    shown = await processor.invoice_json(inv["id"])
    assert (shown["status"], shown["exception"], shown["amount_received_atomic"]) == ("paid", None, "5000000")
    assert len(shown["payments"]) == 1


async def test_a_mined_amount_corrects_the_pending_one(core):
    """A fee-on-transfer token credits less than the calldata said: the mined log's amount is the payment's
    (the invoice is underpaid, with an event), it stays so when the tx is announced again, and after a reorg
    of its block."""
    processor, chain, _ = core
    inv = await processor.create_invoice("fake", 5_000_000, asset="TOKEN")
    key = chain.derive(0)[1]
    await processor.tx_seen("fake", token_tx("t1", key, 5_000_000))
    await processor.block_connected("fake", mined(101, [token_tx("t1", key, 4_950_000)]))
    shown = await processor.invoice_json(inv["id"])
    assert (shown["status"], shown["exception"], shown["amount_received_atomic"]) == (
        "unpaid", "underpaid", "4950000")
    assert [(p["vout"], p["amount_atomic"], p["block_height"]) for p in shown["payments"]] == [(1, "4950000", 101)]
    await processor.tx_seen("fake", token_tx("t1", key, 5_000_000))
    await processor.block_disconnected("fake", 101, "h101", Cursor(100, "h100"))
    await processor.tx_seen("fake", token_tx("t1", key, 5_000_000))
    shown = await processor.invoice_json(inv["id"])
    assert (shown["amount_received_atomic"], shown["payments"][0]["block_height"]) == ("4950000", None)
    assert [t for t, _ in await events(processor, inv["id"])] == [
        "invoice.created", "invoice.processing", "invoice.unpaid"]


async def test_only_a_block_that_is_the_truth_takes_pending_outputs_back(core):
    """On a UTXO chain (a block not marked authoritative) a mined tx reported with nothing received, as for a
    watched spend, leaves its recorded outputs counting: a txid fixes its outputs there."""
    processor, chain, _ = core
    inv = await processor.create_invoice("fake", 1000)
    key = chain.derive(0)[1]
    await processor.tx_seen("fake", tx("t1", key, 1000, spent=(b"coin",)))
    await processor.block_connected("fake", block(101, [ChainTx("t1", (), (b"coin",))]))
    shown = await processor.invoice_json(inv["id"])
    assert (shown["status"], shown["payments"][0]["status"]) == ("processing", "pending")


async def test_an_id_paid_to_another_invoice_is_not_moved_by_a_block(core, caplog):
    """A mined output under the id a pending payment of another invoice holds is not counted for either:
    the block says that id does not pay the first invoice, and the id is taken."""
    processor, chain, _ = core
    first = await processor.create_invoice("fake", 1000, asset="TOKEN")
    second = await processor.create_invoice("fake", 1000, asset="TOKEN")
    await processor.tx_seen("fake", token_tx("t1", chain.derive(0)[1], 1000))
    with caplog.at_level("WARNING", logger="watcherd.processor"):
        await processor.block_connected("fake", mined(101, [token_tx("t1", chain.derive(1)[1], 1000)]))
    assert [(await processor.invoice_json(i["id"]))["amount_received_atomic"] for i in (first, second)] == ["0", "0"]
    assert any("that id was a payment to invoice" in r.getMessage() for r in caplog.records)


async def test_zero_value_outputs_are_no_payments_and_set_no_wrong_asset(core):
    """A zero-value output of the invoice's asset or of another one, pending or mined, on any chain, records
    no payment, raises no wrong_asset and sends no event; a non-zero one of another asset does."""
    processor, chain, _ = core
    inv = await processor.create_invoice("fake", 5_000_000, asset="TOKEN")
    key = chain.derive(0)[1]
    zero = ChainTx("z1", (Received(key, 0, 0), Received(key, 1, 0, "TOKEN")), (b"z",))
    await processor.tx_seen("fake", zero)
    await processor.block_connected("fake", block(101, [zero]))
    await processor.block_connected("fake", mined(102, [ChainTx("z2", (Received(key, 0, 0),), (b"y",))]))
    shown = await processor.invoice_json(inv["id"])
    assert (shown["status"], shown["exception"], shown["payments"]) == ("unpaid", None, [])
    assert await events(processor, inv["id"]) == [("invoice.created", "unpaid")]
    await processor.block_connected("fake", block(103, [ChainTx("n1", (Received(key, 0, 1),), (b"x",))]))
    assert (await processor.invoice_json(inv["id"]))["exception"] == "wrong_asset"
