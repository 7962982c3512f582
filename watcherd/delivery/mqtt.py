"""MQTT publishing from the same durable outbox as the webhooks.

Each event goes to `<prefix>/events/<chain>` (QoS 1), and the invoice's state as the API shows it to
`<prefix>/invoices/<id>` (QoS 1, retained), so a consumer that connects late reads every invoice's latest
state from the broker. A delivery row is marked done only after the broker acknowledged both (PUBACK); a broker
restart in between means the event is published again with the same event id (at-least-once, like webhooks).
While the store cannot record outcomes (disk full, read-only), publishing pauses and backs off, connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiomqtt

from watcherd import metrics
from watcherd.delivery.schedule import StoreOutage, Unrecorded, retry_delay, sleep_until_due
from watcherd.exceptions import STORE_ERRORS
from watcherd.retry import backoff, sleep_unless
from watcherd.store import Delivery, Store

if TYPE_CHECKING:
    from watcherd.config import MqttConfig

# named as before the package layout, so log filters on the logger name keep matching
log = logging.getLogger("watcherd.mqtt")

PUBLISH_TIMEOUT = 10.0


class MqttPublisher:
    transport = "mqtt"

    def __init__(
        self, store: Store, config: MqttConfig, wakeup: asyncio.Event,
        invoice_json: Callable[[str], Awaitable[dict[str, Any] | None]], clock: Callable[[], float] = time.time,
    ):
        self.store = store
        self.config = config
        self.wakeup = wakeup
        self.invoice_json = invoice_json
        self.clock = clock
        self.connected = False
        self._unrecorded = Unrecorded()

    def _client(self) -> aiomqtt.Client:
        url = urlsplit(self.config.url)
        tls = ssl.create_default_context() if url.scheme == "mqtts" else None
        return aiomqtt.Client(
            url.hostname or "127.0.0.1", url.port or (8883 if tls else 1883), username=self.config.username,
            password=self.config.password, identifier=self.config.client_id, tls_context=tls, timeout=10,
            clean_session=True,
        )

    async def run(self, stop: asyncio.Event) -> None:
        delays = backoff(first=1.0, cap=60.0)
        outage = StoreOutage(log, self.transport)
        while not stop.is_set():
            try:
                async with self._client() as client:
                    self.connected = True
                    metrics.RECONNECTS.labels("mqtt").inc()
                    log.info("MQTT connected to %s", self.config.url_without_credentials)
                    delays = backoff(first=1.0, cap=60.0)
                    while not stop.is_set():
                        try:
                            if not await self.publish_due(client):
                                await sleep_until_due(self.store, self.transport, self.clock, self.wakeup, stop)
                        except STORE_ERRORS as exc:
                            await outage.wait(exc, self.wakeup, stop)
                        else:
                            outage.ok()
            except aiomqtt.MqttError as exc:
                self.connected = False
                delay = next(delays)
                log.warning("MQTT %s: %s; reconnecting in %.1f s", self.config.url_without_credentials, exc, delay)
                await sleep_unless(delay, stop)
        self.connected = False

    async def drain(self, deadline: float) -> None:
        """Publish what is due now, for at most until `deadline` (graceful shutdown); nothing more once the
        store cannot record outcomes (what it could not record is published again after the restart)."""
        try:
            await self._unrecorded.flush()
            if not await self.store.due_deliveries(self.transport, self.clock(), limit=1):
                return
            with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                async with asyncio.timeout(max(0.1, deadline - self.clock())), self._client() as client:
                    while self.clock() < deadline and await self.publish_due(client):
                        pass
        except STORE_ERRORS as exc:
            log.warning("MQTT drain stopped: the store cannot record deliveries (%s); %d published but unrecorded "
                        "will be published again after the restart", exc, len(self._unrecorded))

    async def publish_due(self, client: aiomqtt.Client) -> int:
        """Publish what is due, one by one; a store error (an outcome it could not record) stops the batch."""
        await self._unrecorded.flush()
        due = await self.store.due_deliveries(self.transport, self.clock())
        for delivery in due:
            await self._publish(client, delivery)
        return len(due)

    async def _publish(self, client: aiomqtt.Client, delivery: Delivery) -> None:
        event = json.loads(delivery.payload)
        invoice = event["invoice"]
        prefix = self.config.topic_prefix
        try:
            # the retained state first: a consumer that hears the event and then subscribes finds a state at least
            # as new as the event
            current = await self.invoice_json(delivery.invoice_id) or invoice
            await client.publish(f"{prefix}/invoices/{delivery.invoice_id}", json.dumps(current), qos=1,
                                 retain=True, timeout=PUBLISH_TIMEOUT)
            # a priced invoice before any method is picked has no chain yet: "none"
            await client.publish(f"{prefix}/events/{invoice['chain'] or 'none'}", delivery.payload, qos=1,
                                 timeout=PUBLISH_TIMEOUT)
        except aiomqtt.MqttError as exc:
            metrics.DELIVERY_FAILURES.labels(self.transport).inc()
            error, retry_at = f"MQTT: {exc}", self.clock() + retry_delay(delivery.attempts + 1)
            with contextlib.suppress(*STORE_ERRORS):  # kept: recorded before anything is published again
                await self._unrecorded.record(lambda: self._record_failed(delivery, error, retry_at))
            raise
        now = self.clock()
        await self._unrecorded.record(lambda: self._record_delivered(delivery, now))

    async def _record_failed(self, delivery: Delivery, error: str, retry_at: float) -> None:
        async with self.store.transaction():
            await self.store.mark_attempt_failed(self.transport, delivery.event_seq, error, retry_at, None)

    async def _record_delivered(self, delivery: Delivery, now: float) -> None:
        async with self.store.transaction():
            await self.store.mark_delivered(self.transport, delivery.event_seq, int(now))
        metrics.DELIVERED.labels(self.transport).inc()
        metrics.DELIVERY_LATENCY.labels(self.transport).observe(max(0.0, now - delivery.created_at))

