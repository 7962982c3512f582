"""Two daemons on one store and one bitcoind: both serve the API, one at a time follows the chain and sends the
outbox (leases), and killing that one hands its work to the other from the durable cursor."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from typing import Any

import pytest
from conftest import scaled
from harness import Daemon, chain_table

pytestmark = pytest.mark.nodes

PAYMENTS = 40
KILL_EVERY = 8  # five kills during the stream


def readiness(daemon: Daemon) -> dict[str, Any]:
    return daemon.readiness()[1]


def leader(daemons: dict[str, Daemon], lease: str = "chain:btc") -> str:
    """The instance whose /readyz says it holds `lease` (waited for)."""
    deadline = time.monotonic() + scaled(15)
    while time.monotonic() < deadline:
        for name, daemon in daemons.items():
            if daemon.alive() and readiness(daemon).get("leases", {}).get(lease, {}).get("mine"):
                return name
        time.sleep(0.05)
    raise AssertionError(f"nobody holds {lease}:\n" + "\n".join(d.log_tail(30) for d in daemons.values()))


def test_a_killed_leader_is_taken_over_and_nothing_is_lost_or_said_twice(bsv_node, receiver, tmp_path,
                                                                         store_location):
    """On either backend: a SQLite file both instances open, or one PostgreSQL database."""
    chains = chain_table("btc", bsv_node, confirmations=1)  # the same key for both: one wallet
    key = "url" if isinstance(store_location, str) else "path"
    shared = f'{key} = "{store_location}"\nlease_seconds = 2\n'
    daemons = {name: Daemon(tmp_path / name, chains, receiver.url, store=f'{shared}instance = "{name}"')
               for name in ("a", "b")}
    failovers: list[float] = []
    try:
        daemons["a"].start()
        assert leader(daemons) == "a" and leader(daemons, "outbox") == "a"
        daemons["b"].start()
        time.sleep(1.5)  # b has read the leases once
        shown = readiness(daemons["b"])
        assert shown["instance"] == "b" and shown["chains"]["btc"]["followed_by"] == "a", shown
        assert not shown["leases"]["chain:btc"]["mine"] and shown["leases"]["chain:btc"]["holder"] == "a"
        told = subprocess.run([sys.executable, "-m", "watcherd", "status", "--config", str(daemons["b"].config_path)],
                              capture_output=True, text=True, timeout=30, check=True).stdout
        assert "instance b: ready" in told and re.search(r"^btc .* followed by instance a$", told, re.M), told
        assert re.search(r"^chain:btc +a +1 +renewed, ", told, re.M) and re.search(r"^outbox +a +", told, re.M), told

        invoices = []
        for n in range(PAYMENTS):
            # the instances take turns creating: the leader must watch addresses the other one hands out
            creator = next(d for name, d in sorted(daemons.items(), key=lambda i: (i[0] != "ab"[n % 2]))
                           if d.alive())
            invoice = creator.create_invoice("btc", "0.001", order_id=f"o{n}")
            invoices.append(invoice)
            bsv_node.pay(invoice["address"], "0.001")
            if n % KILL_EVERY == KILL_EVERY - 1:
                dead = leader(daemons)
                other = next(name for name in daemons if name != dead)
                killed = time.monotonic()
                daemons[dead].kill()
                bsv_node.mine(1)
                height = bsv_node.rpc("getblockcount")
                deadline = killed + scaled(15)
                while True:  # the other one holds the lease and has processed the block mined after the kill
                    shown = readiness(daemons[other])
                    if (shown.get("leases", {}).get("chain:btc", {}).get("mine")
                            and shown["chains"]["btc"].get("processed_height") == height):
                        break
                    assert time.monotonic() < deadline, daemons[other].log_tail(80)
                    time.sleep(0.05)
                failovers.append(time.monotonic() - killed)
                daemons[dead].start()  # back as the one that waits
            elif n % 4 == 3:
                bsv_node.mine(1)
        bsv_node.mine(1)

        survivor = daemons[leader(daemons)]
        for invoice in invoices:
            shown = survivor.wait_status(invoice["id"], "paid", timeout=scaled(30))
            assert len(shown["payments"]) == 1 and shown["amount_received"] == "0.001", shown  # counted once
        deadline = time.monotonic() + scaled(30)
        while any(receiver.statuses(i["id"])[-1:] != ["paid"] for i in invoices):
            assert time.monotonic() < deadline, [receiver.statuses(i["id"]) for i in invoices]
            time.sleep(0.1)
        for invoice in invoices:
            # a delivery may repeat after a kill (same event id); a transition never comes under two event ids
            events = {e["id"]: e["invoice"]["status"] for e in receiver.for_invoice(invoice["id"])}
            statuses = list(events.values())
            assert statuses[0] == "unpaid" and statuses[-1] == "paid", statuses
            assert len(statuses) == len(set(statuses)), statuses
        print(f"failover (kill -9 -> the other instance processed the next block): "
              f"{', '.join(f'{s:.1f}' for s in failovers)} s")
        assert len(failovers) == PAYMENTS // KILL_EVERY and max(failovers) <= 10, failovers
    finally:
        for daemon in daemons.values():
            daemon.stop()
