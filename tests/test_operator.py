"""The operator surface: systemd unit, sd_notify, signals, alert rules and dashboard, structured logs."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

from conftest import wait_for
from harness import TOKEN, WEBHOOK_SECRET, Daemon, chain_table

from testkit.receiver import WebhookReceiver
from watcherd import metrics
from watcherd.live import MAX_TOTAL, total_for

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "watcherd.service"


def test_systemd_unit_is_hardened_and_verifies(tmp_path):
    """The unit the README tells operators to install: exposure <= 1.5 and `systemd-analyze verify` passes."""
    security = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(UNIT)],
                              capture_output=True, text=True, timeout=60)
    exposure = re.search(r"Overall exposure level for watcherd.service: ([0-9.]+)", security.stdout)
    assert exposure, security.stdout + security.stderr
    assert float(exposure.group(1)) <= 1.5
    unit = UNIT.read_text()
    for directive in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "LoadCredential=", "StateDirectory=",
                      "ProtectSystem=strict", "NoNewPrivileges=yes", "PrivateTmp=yes", "RestrictAddressFamilies=",
                      "SystemCallFilter=@system-service"):
        assert directive in unit
    # every connection is a descriptor: the unit's limit lets the live streams reach their cap with room to spare
    files = re.search(r"^LimitNOFILE=(\d+)$", unit, re.MULTILINE)
    assert files and total_for(int(files.group(1))) == MAX_TOTAL < int(files.group(1)) // 2
    # verify checks that ExecStart exists: point it at this checkout's installed watcherd, nothing else changes
    installed = Path(sys.executable).parent / "watcherd"
    assert installed.exists()
    copy = tmp_path / "watcherd.service"
    copy.write_text(unit.replace("/opt/watcherd/venv/bin/watcherd", str(installed)))
    verify = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0, verify.stderr


def test_alert_rules_load_and_reference_real_metrics():
    rules = ROOT / "config" / "prometheus-alerts.yml"
    promtool = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert promtool.returncode == 0 and "SUCCESS" in promtool.stdout, promtool.stdout + promtool.stderr
    exported = {name for collector in vars(metrics).values() if hasattr(collector, "_name")
                for name in (collector._name, f"{collector._name}_total", f"{collector._name}_bucket",
                             f"{collector._name}_sum")}
    dashboard = json.loads((ROOT / "config" / "grafana-dashboard.json").read_text())
    expressions = [t["expr"] for p in dashboard["panels"] for t in p["targets"]] + [rules.read_text()]
    used = {m for e in expressions for m in re.findall(r"\bwatcherd_[a-z_]+", e)}
    assert used and used <= exported, used - exported


class NotifySocket:
    """Plays systemd's side of sd_notify."""

    def __init__(self, path: Path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                return self.messages


def test_sd_notify_ready_status_and_watchdog(tmp_path, bsv_node):
    notify = NotifySocket(tmp_path / "notify.sock")
    daemon = Daemon(tmp_path / "d", chain_table("btc", bsv_node, confirmations=1),
                    env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "2000000"})
    daemon.start()
    try:
        wait_for(lambda: any("READY=1" in m for m in notify.drain()), 10, "READY=1")
        wait_for(lambda: sum("WATCHDOG=1" in m for m in notify.drain()) >= 2, 10, "two watchdog pings")
        wait_for(lambda: any(re.search(r"STATUS=btc: height \d+, lag 0", m) for m in notify.drain()), 10,
                 "a STATUS line with the chain's height")
        # READY comes only once the API answers: the first message carries it together with a STATUS line
        assert daemon.stop() == 0
        assert any("STOPPING=1" in m for m in notify.drain())
    finally:
        daemon.stop()
        notify.sock.close()


def test_sighup_refuses_bad_config_and_applies_good_one(tmp_path, bsv_node):
    daemon = Daemon(tmp_path / "d", chain_table("btc", bsv_node, confirmations=1)).start()
    try:
        good = daemon.config_path.read_text()
        daemon.config_path.write_text(good.replace(f'token = "{TOKEN}"', 'token = "short"'))
        daemon.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload refused" in daemon.log_tail(200), 10, "the refusal in the log")
        assert daemon.alive() and daemon.create_invoice("btc", "1")["confirmations_required"] == 1
        daemon.config_path.write_text(good.replace("confirmations = 1", "confirmations = 3"))
        daemon.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "configuration reloaded" in daemon.log_tail(200), 10, "the reload in the log")
        invoice = wait_for(lambda: (i := daemon.create_invoice("btc", "1"))["confirmations_required"] == 3 and i,
                           10, "new invoices with the reloaded confirmations")
        bsv_node.pay(invoice["address"], "1")
        daemon.wait_status(invoice["id"], "processing")  # the reconfigured follower still watches
    finally:
        assert daemon.stop() == 0


def test_sigterm_during_a_burst_loses_nothing(tmp_path, bsv_node):
    """SIGTERM while payments stream in: exit 0; after restart every event is delivered exactly once."""
    with WebhookReceiver(WEBHOOK_SECRET) as receiver:
        daemon = Daemon(tmp_path / "d", chain_table("btc", bsv_node, confirmations=1), receiver.url).start()
        invoices = [daemon.create_invoice("btc", "0.01") for _ in range(12)]
        for n, invoice in enumerate(invoices):
            bsv_node.pay(invoice["address"], "0.01")
            if n == 5:
                daemon.process.send_signal(signal.SIGTERM)
        assert daemon.process.wait(30) == 0
        bsv_node.mine(1)
        daemon.start()
        try:
            for invoice in invoices:
                daemon.wait_status(invoice["id"], "paid", timeout=30)
            expected = {e["id"] for inv in invoices for e in daemon.api("GET", f"/v1/invoices/{inv['id']}/events")
                        ["events"]}
            wait_for(lambda: {e["id"] for e in receiver.events} == expected, 20, "every event delivered")
            ids = [e["id"] for e in receiver.events]
            assert len(ids) == len(set(ids)) == len(expected)  # exactly once each
            for invoice in invoices:
                assert receiver.statuses(invoice["id"])[-1] == "paid"
        finally:
            assert daemon.stop() == 0


def test_json_logs_carry_fields_and_never_secrets(tmp_path, bsv_node):
    with WebhookReceiver(WEBHOOK_SECRET) as receiver:
        daemon = Daemon(tmp_path / "d", chain_table("btc", bsv_node, confirmations=1), receiver.url,
                        log_format="json").start()
        try:
            invoice = daemon.create_invoice("btc", "0.01")
            txid = bsv_node.pay(invoice["address"], "0.01")
            daemon.wait_status(invoice["id"], "processing")
            wait_for(lambda: receiver.statuses(invoice["id"]) == ["unpaid", "processing"], 10, "webhooks")
        finally:
            assert daemon.stop() == 0
    text = daemon.log_path.read_text()
    entries = [json.loads(line) for line in text.splitlines()]
    assert all({"ts", "level", "logger", "msg"} <= set(e) for e in entries)
    assert any(e.get("invoice_id") == invoice["id"] and e.get("txid") == txid for e in entries)
    assert any(e.get("chain") == "btc" for e in entries)
    for secret in (TOKEN, WEBHOOK_SECRET, bsv_node.rpc_password):
        assert secret not in text


def test_readme_install_steps_name_the_shipped_unit():
    readme = (ROOT / "README.md").read_text()
    assert "systemd/watcherd.service" in readme and "systemctl enable --now watcherd" in readme


def test_a_burst_of_sighups_reloads_one_at_a_time(tmp_path, bsv_node):
    """Five SIGHUPs in a row while the config changes: reloads run one after the other (never two restarting the
    same chain at once), nothing is lost, the daemon stays up, and an invoice created meanwhile is still watched
    by the restarted follower (its address is in the watch list the new follower inherits)."""
    daemon = Daemon(tmp_path / "d", chain_table("btc", bsv_node, confirmations=1)).start()
    try:
        good = daemon.config_path.read_text()
        daemon.config_path.write_text(good.replace("confirmations = 1", "confirmations = 2"))
        created = []
        for _ in range(5):
            daemon.process.send_signal(signal.SIGHUP)
            created.append(daemon.create_invoice("btc", "0.5"))
        wait_for(lambda: daemon.log_tail(400).count("configuration reloaded") >= 1, 15, "the reloads")
        assert daemon.alive()
        log = daemon.log_tail(400)
        assert "Traceback" not in log and "reload failed" not in log, log
        for invoice in created:
            bsv_node.pay(invoice["address"], "0.5")
        for invoice in created:
            daemon.wait_status(invoice["id"], "processing")
    finally:
        assert daemon.stop() == 0
