"""The PostgreSQL store: its configuration, migrations, `store copy` from SQLite, and the daemon on it end to
end with a real bitcoind, including the database going away under it. The store-level suites (processor,
outbox, group commit ...) run on both backends through the `store_location` fixture; this module holds what
only PostgreSQL has."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner
from harness import TOKEN, Daemon, chain_table, wait_delivered

from watcherd.cli import main
from watcherd.config import load
from watcherd.exceptions import ConfigError, StoreError
from watcherd.store import SCHEMA, Store
from watcherd.store.postgres import redact, translate
from watcherd.store.schema_postgres import POSTGRES_SCHEMA

# ---- configuration ------------------------------------------------------------------------------------------


def problems(tmp_path: Path, store: str) -> dict[str, str]:
    path = tmp_path / "watcherd.toml"
    path.write_text(f'[store]\n{store}\n[api]\ntoken = "{TOKEN}"\n')
    try:
        load(path)
    except ConfigError as exc:
        return {key: message for _, key, message in exc.problems}
    return {}


def test_a_store_url_with_its_options_is_read_and_the_password_comes_only_from_its_file(tmp_path):
    """url, password_file, ssl, pool_size and timeout_seconds reach the store; the password never shows in the
    config's repr (which a log line or a traceback may print)."""
    (tmp_path / "pw").write_text("s3cret-pw\n")
    path = tmp_path / "watcherd.toml"
    path.write_text('[store]\nurl = "postgresql://watcherd@db.example:5433/watcherd"\npassword_file = "pw"\n'
                    f'ssl = "require"\npool_size = 4\ntimeout_seconds = 2.5\n[api]\ntoken = "{TOKEN}"\n')
    store = load(path).store
    assert (store.location, store.path, store.password) == ("postgresql://watcherd@db.example:5433/watcherd", None,
                                                            "s3cret-pw")
    assert store.postgres_options() == {"password": "s3cret-pw", "ssl": "require", "ssl_root_cert": None,
                                        "pool_size": 4, "timeout_seconds": 2.5}
    assert "s3cret-pw" not in repr(store) and "s3cret-pw" not in store.shown


@pytest.mark.parametrize("store, key, message", [
    ('path = "s.sqlite3"\nurl = "postgresql://w@h/db"', "store.url", "set path (SQLite) or url (PostgreSQL), not both"),
    ('url = "mysql://w@h/db"', "store.url", "must be a PostgreSQL URL"),
    ('url = "postgresql://w:hunter22@h/db"', "store.url", "must not hold the password: put it in password_file"),
    ('url = "postgresql://h/db"', "store.url", "must name a user, a host and a database"),
    ('url = "postgresql://w@h/"', "store.url", "must name a user, a host and a database"),
    ('url = "postgresql://w@h/db?sslmode=disable"', "store.url", "must not carry options"),
    ('url = "postgresql://w@h/db"\nssl = "allow"', "store.ssl", "must be one of: disable, prefer, require"),
    ('url = "postgresql://w@h/db"\npool_size = 0', "store.pool_size", "must be an integer from 1 to 1000"),
    ('url = "postgresql://w@h/db"\ntimeout_seconds = 0', "store.timeout_seconds", "must be a number of seconds"),
    ('url = "postgresql://w@h/db"\nssl_root_cert = "ca.pem"', "store.ssl_root_cert",
     'is used only with ssl = "require"'),
    ('url = "postgresql://w@h/db"\nssl = "verify-full"\nssl_root_cert = "ca.pem"', "store.ssl_root_cert",
     "is not a readable file"),
    ('url = "postgresql://w@h/db"\npassword_file = "missing"', "store.password_file", "cannot read"),
    ('path = "s.sqlite3"\npool_size = 3', "store.pool_size", "is for PostgreSQL (url), not a SQLite path"),
])
def test_store_config_mistakes_are_named_by_key(tmp_path, store, key, message):
    found = problems(tmp_path, store)
    assert key in found and message in found[key], found
    assert "hunter22" not in str(found)


def test_placeholders_become_numbered_and_literals_casts_and_names_are_kept():
    assert translate("SELECT ? WHERE a = ? AND b = '?' AND c::text = ?") == (
        "SELECT $1 WHERE a = $2 AND b = '?' AND c::text = $3", ())
    assert translate("x = :tip - :final + :tip AND y = ':no'") == ("x = $1 - $2 + $1 AND y = ':no'", ("tip", "final"))


def test_a_url_is_shown_without_its_password():
    assert redact("postgresql://w:hunter22@h:5/db") == "postgresql://w:***@h:5/db"
    assert redact("postgresql://w@h/db") == "postgresql://w@h/db"


def test_both_backends_are_at_the_same_schema_version():
    """A migration added to one backend only would make `store copy` and `run` disagree about a store."""
    assert POSTGRES_SCHEMA[-1][0] == len(SCHEMA)
    assert [v for v, _ in POSTGRES_SCHEMA] == sorted({v for v, _ in POSTGRES_SCHEMA})


# ---- migrations ---------------------------------------------------------------------------------------------


def config_for(tmp_path: Path, store: str) -> Path:
    path = tmp_path / "watcherd.toml"
    path.write_text(f'[store]\n{store}\n[api]\ntoken = "{TOKEN}"\n')
    return path


def test_migrate_applies_the_schema_and_prints_the_version(tmp_path, store_location):
    """`watcherd migrate` on an empty store brings it to the current version, and a second run has nothing
    to do; on both backends."""
    key = "url" if isinstance(store_location, str) else "path"
    config = config_for(tmp_path, f'{key} = "{store_location}"')
    first = CliRunner().invoke(main, ["--config", str(config), "migrate"])
    assert first.exit_code == 0, first.output
    assert first.output.strip().endswith(f"schema version {len(SCHEMA)} (migrated from version 0)")
    again = CliRunner().invoke(main, ["--config", str(config), "migrate"])
    assert again.output.strip().endswith(f"schema version {len(SCHEMA)} (already up to date)")


async def test_a_postgres_store_written_by_a_newer_watcherd_is_refused(postgres_server):
    """An older binary must not run on a schema it does not know: the same refusal as on SQLite."""
    url = postgres_server.new_database()
    store = await Store.open(url)
    await store.close()
    postgres_server.sql("UPDATE schema_version SET version = 99", database=url.rsplit("/", 1)[1])
    with pytest.raises(StoreError, match="schema is version 99, newer than this watcherd"):
        await Store.open(url)


async def test_an_unreachable_database_is_a_store_error_without_the_password(postgres_server):
    from watcherd.store.db import Database

    with pytest.raises(StoreError) as raised:
        await Database.open(f"postgresql://w@127.0.0.1:{postgres_server.port + 1}/x", password="hunter22",
                            timeout_seconds=2)
    assert "hunter22" not in str(raised.value)


# ---- store copy, then a daemon on PostgreSQL -------------------------------------------------------------


def watcherd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "watcherd", *args], capture_output=True, text=True, timeout=120)


def test_store_copy_refuses_a_database_that_is_not_empty(tmp_path, postgres_server):
    url = postgres_server.new_database()
    config = config_for(tmp_path, 'path = "s.sqlite3"')
    assert CliRunner().invoke(main, ["--config", str(config), "migrate"]).exit_code == 0
    with sqlite3.connect(tmp_path / "s.sqlite3") as db:
        db.execute("INSERT INTO chains (name) VALUES ('btc')")
    first = watcherd("store", "copy", "--from", str(tmp_path / "s.sqlite3"), "--to", url)
    assert first.returncode == 0, first.stderr
    again = watcherd("store", "copy", "--from", str(tmp_path / "s.sqlite3"), "--to", url)
    assert again.returncode != 0 and "not empty" in again.stderr and "chains" not in again.stdout


def test_a_copied_store_goes_on_on_postgres_paid_invoices_and_pending_deliveries(bsv_node, receiver,
                                                                                     postgres_server, tmp_path):
    """A SQLite instance with a paid invoice whose webhooks could not be delivered yet and an unpaid one is
    stopped and copied; the instance on PostgreSQL delivers the pending webhooks (each event once, same ids),
    follows the unpaid invoice to paid, and numbers new events after the copied ones."""
    chains = chain_table("btc", bsv_node, confirmations=1)
    receiver.fail_with = 503
    before = Daemon(tmp_path / "sqlite", chains, receiver.url).start()
    try:
        paid = before.create_invoice("btc", "0.01")
        waiting = before.create_invoice("btc", "0.02")
        bsv_node.pay(paid["address"], Decimal("0.01"))
        before.wait_status(paid["id"], "processing", timeout=10)
        bsv_node.mine(1)
        before.wait_status(paid["id"], "paid")
        time.sleep(1)  # one more failed attempt recorded
    finally:
        assert before.stop() == 0
    assert receiver.statuses(paid["id"]) == []

    url = postgres_server.new_database()
    copied = watcherd("store", "copy", "--from", str(tmp_path / "sqlite" / "watcherd.sqlite3"), "--to", url)
    assert copied.returncode == 0, copied.stderr
    counts = {line.split()[0]: int(line.split()[1]) for line in copied.stdout.splitlines()[1:]}
    assert counts["invoices"] == 2 and counts["payments"] == 1 and counts["events"] >= 4, copied.stdout
    assert counts["deliveries"] == counts["events"]

    receiver.fail_with = None
    after = Daemon(tmp_path / "postgres", chains, receiver.url, store=f'url = "{url}"').start()
    try:
        assert after.invoice(paid["id"])["status"] == "paid"
        events = wait_delivered(receiver, paid["id"], ["unpaid", "processing", "paid"], timeout=40)
        assert len({e["id"] for e in events}) == 3
        bsv_node.pay(waiting["address"], Decimal("0.02"))
        bsv_node.mine(1)
        after.wait_status(waiting["id"], "paid")
        wait_delivered(receiver, waiting["id"], ["unpaid", "processing", "paid"], timeout=40)
        fresh = after.create_invoice("btc", "0.03")  # new rows get ids past the copied ones
        assert fresh["status"] == "unpaid" and fresh["address"] not in (paid["address"], waiting["address"])
        wait_delivered(receiver, fresh["id"], ["unpaid"], timeout=40)
    finally:
        assert after.stop() == 0


# ---- the daemon on PostgreSQL, and the database going away under it ----------------------------------------


def ready(daemon: Daemon) -> bool:
    try:
        daemon.api("GET", "/readyz")
        return True
    except urllib.error.HTTPError as exc:
        exc.close()
        return False


def test_the_daemon_on_postgres_pays_and_survives_the_database_restarting(bsv_node, daemon_factory, receiver,
                                                                          postgres_server):
    """End to end on PostgreSQL: a payment seen in the mempool, confirmed, delivered. Then PostgreSQL stops:
    /readyz says not ready, the metrics still answer, an invoice create fails cleanly; once it is back, without
    a restart of the daemon, invoices are created again and paid."""
    url = postgres_server.new_database()
    daemon = daemon_factory(chain_table("btc", bsv_node, confirmations=1), store=f'url = "{url}"')
    invoice = daemon.create_invoice("btc", "0.015")
    bsv_node.pay(invoice["address"], Decimal("0.015"))
    daemon.wait_status(invoice["id"], "processing", timeout=5)
    bsv_node.mine(1)
    daemon.wait_status(invoice["id"], "paid")
    wait_delivered(receiver, invoice["id"], ["unpaid", "processing", "paid"])
    assert ready(daemon)

    postgres_server.stop()
    try:
        deadline = time.monotonic() + 30
        while ready(daemon):
            assert time.monotonic() < deadline, "still ready with the database down"
            time.sleep(0.2)
        while daemon.metric("watcherd_store_writable") != 0:  # the metrics answer, and say why
            assert time.monotonic() < deadline, "the store probe still finds the database writable"
            time.sleep(0.2)
        with pytest.raises(urllib.error.HTTPError) as refused:
            daemon.create_invoice("btc", "0.01")
        assert refused.value.code == 503
        refused.value.close()
        bsv_node.mine(1)  # a block while the database is away: followed once it is back
        time.sleep(6)  # longer than the supervisor's and the probes' periods: nothing gives up meanwhile
        assert daemon.alive() and not ready(daemon)
    finally:
        postgres_server.start()
    deadline = time.monotonic() + 30
    while not ready(daemon):
        assert time.monotonic() < deadline, f"not ready again:\n{daemon.log_tail()}"
        time.sleep(0.2)
    assert daemon.alive()
    later = daemon.create_invoice("btc", "0.02")
    bsv_node.pay(later["address"], Decimal("0.02"))
    bsv_node.mine(1)
    daemon.wait_status(later["id"], "paid", timeout=30)
    wait_delivered(receiver, later["id"], ["unpaid", "processing", "paid"], timeout=30)
    assert daemon.metric("watcherd_processed_height", chain="btc") == bsv_node.tip()[0]


async def test_the_json_kept_for_the_compatible_apis_is_searched_alike_on_both_backends(store_location):
    """BitPay's `complete` notifications find their invoices by fields of the JSON kept in `compat`: the one
    query that reads JSON, spelled per dialect."""
    from watcherd.core.invoices import Status
    from watcherd.store import InvoiceRow

    store = await Store.open(store_location)
    try:
        async with store.transaction():
            for invoice_id, compat in (("a", {"api": "bitpay", "notificationURL": "https://shop/ipn"}),
                                       ("b", {"api": "bitpay"}), ("c", {"api": "greenfield"}),
                                       ("d", {"api": "bitpay", "notificationURL": "https://shop/ipn"})):
                await store.insert_invoice(InvoiceRow(
                    id=invoice_id, currency="BTC", amount=1, tolerance_percent=Decimal(0), status=Status.PAID,
                    exception=None, order_id=None, metadata={}, created_at=1, expires_at=2, cancelled_at=None,
                    paid_at=1, updated_at=1, compat=compat), [])
            await store.add_hook_delivery("del_1", None, "https://shop/ipn", "d", "complete", "{}", 1)
        assert await store.invoices_awaiting_delivery("paid", "bitpay", "complete") == ["a"]
    finally:
        await store.close()
