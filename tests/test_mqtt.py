"""MQTT publishing against a real mosquitto: events at QoS 1, retained invoice state, broker restarts."""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from conftest import wait_for
from harness import Daemon, chain_table, free_port


class Broker:
    def __init__(self, workdir: Path):
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            # as root mosquitto would switch to its own user, who cannot write our temp dir
            f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {workdir}/\nlog_dest file {workdir}/mosquitto.log\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(["mosquitto", "-c", str(self.conf)])
        wait_for(lambda: self._listening(), 10, "mosquitto listening")

    def _listening(self) -> bool:
        import socket

        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # mosquitto saves its persistence file on SIGTERM
            self.process.wait(10)


class Subscriber:
    """A billing-side consumer with a persistent session, collecting everything under the prefix."""

    def __init__(self, port: int, client_id: str, clean: bool = False):
        self.messages: list[tuple[str, dict, bool]] = []
        self.lock = threading.Lock()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean)
        self.client.on_connect = lambda c, *_: c.subscribe("watcherd/#", qos=1)
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.2, 1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client, userdata, message) -> None:
        with self.lock:
            self.messages.append((message.topic, json.loads(message.payload), bool(message.retain)))

    def events(self, invoice_id: str) -> list[dict]:
        with self.lock:
            return [m for t, m, _ in self.messages
                    if t.startswith("watcherd/events/") and m["invoice"]["id"] == invoice_id]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def broker(tmp_path):
    broker = Broker(tmp_path / "mosquitto")
    broker.start()
    yield broker
    broker.stop()


def mqtt_table(broker: Broker) -> str:
    return f'[mqtt]\nurl = "mqtt://127.0.0.1:{broker.port}"\ntopic_prefix = "watcherd"\n'


def comparable(invoice: dict) -> dict:
    """The invoice without what drifts with every block (confirmation counts)."""
    return {**invoice, "payments": [{k: v for k, v in p.items() if k != "confirmations"}
                                    for p in invoice["payments"]]}


def test_events_and_retained_state(tmp_path, broker, bsv_node):
    subscriber = Subscriber(broker.port, "billing-1")
    daemon = Daemon(tmp_path / "d", chain_table("btc", bsv_node, confirmations=1), extra=mqtt_table(broker)).start()
    try:
        invoice = daemon.create_invoice("btc", "0.02")
        bsv_node.pay(invoice["address"], "0.02")
        daemon.wait_status(invoice["id"], "processing")
        bsv_node.mine(1)
        paid = daemon.wait_status(invoice["id"], "paid")
        wait_for(lambda: [e["type"] for e in subscriber.events(invoice["id"])] ==
                 ["invoice.created", "invoice.processing", "invoice.paid"], 15, "the three events over MQTT")
        assert all(t == "watcherd/events/btc" for t, m, _ in subscriber.messages if t.startswith("watcherd/events"))
        # a consumer connecting now gets the latest state, retained, equal to what the API says
        late = Subscriber(broker.port, "billing-late", clean=True)
        try:
            retained = wait_for(lambda: next((m for t, m, r in late.messages
                                              if t == f"watcherd/invoices/{invoice['id']}" and r), None),
                                10, "the retained invoice state")
            assert comparable(retained) == comparable(paid)
        finally:
            late.close()
    finally:
        assert daemon.stop() == 0
        subscriber.close()


def test_broker_restart_mid_flow_loses_nothing(tmp_path, broker, bsv_node):
    subscriber = Subscriber(broker.port, "billing-2")
    daemon = Daemon(tmp_path / "d", chain_table("btc", bsv_node, confirmations=1), extra=mqtt_table(broker)).start()
    try:
        invoice = daemon.create_invoice("btc", "0.03")
        bsv_node.pay(invoice["address"], "0.03")
        wait_for(lambda: len(subscriber.events(invoice["id"])) == 2, 15, "created + processing over MQTT")
        broker.stop()
        bsv_node.mine(1)
        daemon.wait_status(invoice["id"], "paid")  # the state change commits while the broker is down
        time.sleep(1.0)
        pending = daemon.api("GET", "/v1/webhooks?state=pending&transport=mqtt")["deliveries"]
        assert [d["type"] for d in pending] == ["invoice.paid"]
        broker.start()
        wait_for(lambda: [e["type"] for e in subscriber.events(invoice["id"])][-1:] == ["invoice.paid"], 30,
                 "the paid event after the broker came back")
        stored = {e["id"] for e in daemon.api("GET", f"/v1/invoices/{invoice['id']}/events")["events"]}
        assert {e["id"] for e in subscriber.events(invoice["id"])} == stored
        late = Subscriber(broker.port, "billing-late-2", clean=True)
        try:
            retained = wait_for(lambda: next((m for t, m, r in late.messages
                                              if t == f"watcherd/invoices/{invoice['id']}" and r), None),
                                10, "the retained invoice state")
            assert retained["status"] == "paid"
        finally:
            late.close()
    finally:
        assert daemon.stop() == 0
        subscriber.close()
