"""The supervisor: opens the store, starts the API, the chain followers and the outbox; stops them on purpose.

One TaskGroup owns every long-running task. A chain whose node misbehaves backs off on its own (see
chains/follow.py) and shows as not ready; a task that dies of an unexpected error takes the daemon down (exit
non-zero, systemd restarts it, the cursor and the outbox make that lossless). SIGTERM sets a stop event: chain
followers are cancelled between transactions, in-flight notifications get a bounded time to drain, the store
is closed, exit 0. SIGHUP reloads the configuration, one reload at a time; an invalid one is refused with a
log line and the running one stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import signal
import sys
import time
from typing import Any

from aiohttp import web

from watcherd import __version__, logs, metrics, sdnotify
from watcherd.chains.registry import make_adapter
from watcherd.compat.bitpay import BitPayNotifications, notify_completed
from watcherd.compat.greenfield import GreenfieldHooks
from watcherd.config import ChainConfig, Config, load
from watcherd.core.chain import ChainAdapter
from watcherd.delivery.hooks import HookSender
from watcherd.delivery.mqtt import MqttPublisher
from watcherd.delivery.webhook import WebhookSender
from watcherd.exceptions import STORE_ERRORS, ConfigError
from watcherd.http import bitpay, greenfield, limits
from watcherd.http import metrics as metrics_http
from watcherd.http.api import make_app
from watcherd.leases import Leaseholder, watch_others
from watcherd.ledger import Processor
from watcherd.live import own_file_limit
from watcherd.rates import RateBook
from watcherd.store import Store

log = logging.getLogger("watcherd.daemon")

DRAIN_SECONDS = 10.0
PRUNE_FIRST_SECONDS = 60.0  # pruning waits until start-up work (catch-up) had its turn
READY_LAG_BLOCKS = 3
STORE_PROBE_SECONDS = 2.0
LAG_PROBE_SECONDS = 0.25


class Daemon:
    def __init__(self, config: Config):
        self.config = config
        self.stop = asyncio.Event()
        self.chains: dict[str, ChainAdapter] = {name: make_adapter(c) for name, c in config.chains.items()}
        self._followers: dict[str, asyncio.Task[None]] = {}
        self._senders: list[WebhookSender | MqttPublisher | HookSender] = []
        self._sending: asyncio.Event | None = None  # set to stop the senders started when the outbox lease came
        self._group: asyncio.TaskGroup | None = None
        self.webhooks: WebhookSender | None = None
        self.mqtt: MqttPublisher | None = None
        self.hooks: HookSender | None = None  # webhooks registered through the Greenfield API, BitPay IPNs
        self.rates: RateBook | None = None  # [rates]: priced invoices take their rates from it
        self._rates_task: asyncio.Task[None] | None = None
        self.store_writable = True  # the last probe's answer: /readyz must not take the write lock itself
        self._reload_requested = asyncio.Event()

    async def readiness(self) -> dict[str, Any]:
        chains: dict[str, dict[str, Any]] = {}
        try:
            cursors = {name: await self.processor.store.cursor(name) for name in self.chains}
        except STORE_ERRORS:
            cursors = {}  # the database is away (PostgreSQL restarting): not ready, and say so without an error
        for name, chain in self.chains.items():
            if name in self.processor.elsewhere:  # followed by another instance: ready as it last said
                chains[name] = {"followed_by": self.leases.holder(f"chain:{name}"),
                                "ready": self.processor.elsewhere[name]}
                continue
            cursor = cursors.get(name)
            node_tip = chain.node_tip
            lag = None if node_tip is None or cursor is None else max(0, node_tip - cursor.height)
            connected = chain.connected
            chains[name] = {
                "connected": connected, "node_tip": node_tip, "processed_height": cursor.height if cursor else None,
                "lag": lag, "ready": connected and lag is not None and lag <= READY_LAG_BLOCKS,
            }
            if chain.stopped:
                chains[name]["stopped"] = chain.stopped
        writable = self.store_writable and (bool(cursors) or not self.chains)
        shown: dict[str, Any] = {"ready": writable and all(c["ready"] for c in chains.values()),
                                 "store_writable": writable, "chains": chains, "instance": self.leases.instance,
                                 "leases": self.leases.shown()}
        if self.rates is not None:
            # shown, not judged: without fresh rates only priced invoices wait (503), everything else works
            shown["rates_stale"] = self.rates.status()["stale"]
        return shown

    async def run(self) -> None:
        tune_interpreter()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_stop_signal, signum)
        # a SIGHUP only asks: the reload loop (started with the other tasks) applies it, one at a time, so one
        # arriving during startup waits for it and two in a row never interleave
        loop.add_signal_handler(signal.SIGHUP, self._reload_requested.set)
        store = await Store.open(self.config.store.location, **self.config.store.postgres_options())
        store.max_batch = self.config.store.max_batch
        transports = [t for t, on in (("webhook", self.config.webhook), ("mqtt", self.config.mqtt)) if on]
        self.processor = Processor(store, self.chains, transports, public_url=self.config.api.public_url)
        self.leases = Leaseholder(store, self.config.store.instance, self.config.store.lease_seconds,
                                  self._lease_gained, self._lease_lost, self._lease_caught_up)
        await self.processor.start()
        settle_heap()
        self._new_rates()
        compat = []
        if self.config.greenfield is not None:
            compat.append(("/api/v1", greenfield.make_app(self.processor, self.config.greenfield, self.readiness,
                                                          lambda: self.rates)))
            compat.append(("/invoices", bitpay.make_app(self.processor, self.config.greenfield, lambda: self.rates)))
            compat.append(("/modal", greenfield.make_modal_app()))
            self.processor.event_listeners.append(GreenfieldHooks(self.config.greenfield.store_id,
                                                                  self.config.greenfield.scope))
            self.processor.event_listeners.append(BitPayNotifications(self.processor.clock))
            self.hooks = HookSender(store, self.processor.outbox_listener(),
                                    max_retry_hours=self.config.webhook.max_retry_hours if self.config.webhook else 72,
                                    allow_networks=self.config.greenfield.hook_allow_networks)
        runner = limits.runner(make_app(self.processor, self.config.api.token, self.readiness, lambda: self.rates,
                                        compat, self.config.api.embed_origins, lambda: self.config.labels))
        watched = (*transports, *((HookSender.transport,) if self.hooks is not None else ()))
        metrics_runner = limits.runner(metrics_http.make_app(store, watched))
        self.processor.live.max_seconds = self.config.api.live_stream_seconds
        log.info("live streams: at most %d (%d per invoice) with a file limit of %d, each for at most %.0f s",
                 self.processor.live.max_total, self.processor.live.max_per_invoice, own_file_limit(),
                 self.processor.live.max_seconds)
        await runner.setup()
        await metrics_runner.setup()
        if self.config.webhook is not None:
            self.webhooks = WebhookSender(store, self.config.webhook, self.processor.outbox_listener())
        if self.config.mqtt is not None:
            self.mqtt = MqttPublisher(store, self.config.mqtt, self.processor.outbox_listener(),
                                      self.processor.invoice_json)
        self._senders = [s for s in (self.webhooks, self.mqtt, self.hooks) if s is not None]
        try:
            await web.TCPSite(runner, self.config.api.host, self.config.api.port).start()
            if self.config.metrics is not None:
                await web.TCPSite(metrics_runner, self.config.metrics.host, self.config.metrics.port).start()
            log.info("watcherd %s: API on http://%s, metrics %s, store %s", __version__, self.config.api.listen,
                     f"on http://{self.config.metrics.listen}/metrics" if self.config.metrics else "off",
                     self.config.store.shown)
            log.info("chains: %s; events to %s", ", ".join(self.chains) or "none", self._targets())
            async with asyncio.TaskGroup() as group:
                self._group = group
                # followers and senders start as their leases come (at the first tick when alone on the store)
                await self.leases.tick(self._wanted_leases())
                background = [group.create_task(self.leases.run(self._wanted_leases), name="leases"),
                              group.create_task(watch_others(self.leases, self.processor), name="cluster"),
                              group.create_task(self._expire_loop(), name="expiry"),
                              group.create_task(self._supervise(), name="supervisor"),
                              group.create_task(self._reload_loop(), name="reload"),
                              group.create_task(self._probe_store(), name="store-probe"),
                              group.create_task(self._measure_loop_lag(), name="loop-lag"),
                              group.create_task(self._prune_loop(), name="prune")]
                self._run_rates()
                if self.config.greenfield is not None:
                    background.append(group.create_task(self._complete_loop(), name="bitpay-complete"))
                sdnotify.notify("READY=1", f"STATUS={await self._status()}")
                await self.stop.wait()
                sdnotify.notify("STOPPING=1", "STATUS=stopping: draining notifications")
                log.info("stopping: no new work; draining notifications for up to %.0f s", DRAIN_SECONDS)
                for task in [*self._followers.values(), *background, *filter(None, [self._rates_task])]:
                    task.cancel()
                if self._sending is not None:
                    self._sending.set()  # the senders finish what they are sending and return
            if self.leases.holds("outbox"):
                deadline = time.time() + DRAIN_SECONDS
                await asyncio.gather(*(s.drain(deadline) for s in self._senders))
            await self.leases.release_all()
        finally:
            await runner.cleanup()
            await metrics_runner.cleanup()
            for chain in self.chains.values():
                with contextlib.suppress(Exception):
                    await chain.close()
            await store.close()
        log.info("stopped cleanly")

    def _start_follower(self, name: str) -> None:
        assert self._group is not None
        self._followers[name] = self._group.create_task(self.chains[name].run(self.processor.sink(name)),
                                                        name=f"chain:{name}")

    async def _stop_follower(self, name: str) -> None:
        """Cancel the chain's follower and close its node connections."""
        follower = self._followers.pop(name, None)
        if follower is None:
            return
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
        with contextlib.suppress(Exception):
            await self.chains[name].close()

    def _fresh_adapter(self, name: str, config: ChainConfig) -> None:
        """A new adapter for the chain, so that its next follower starts from the durable cursor with nothing
        left from before; the same watched set (an invoice created meanwhile adds its address to it)."""
        previous = self.chains.get(name)
        adapter = make_adapter(config)
        if previous is not None:
            adapter.watchlist = previous.watchlist
        self.chains[name] = adapter

    def _targets(self) -> str:
        """Where events go, as the start line says it: hosts only (a webhook URL may carry a token)."""
        targets = [f"webhook {logs.redact_url(self.config.webhook.url)}"] if self.config.webhook else []
        targets += [f"MQTT {logs.redact_url(self.config.mqtt.url)}"] if self.config.mqtt else []
        targets += ["the BTCPay/BitPay plugins' URLs"] if self.config.greenfield else []
        return ", ".join(targets) or "no one (no [webhook] nor [mqtt]: the billing system polls the API)"

    def _wanted_leases(self) -> list[str]:
        return [*(f"chain:{name}" for name in self.chains), "outbox"]

    async def _lease_gained(self, lease: str, token: int) -> None:
        self.processor.fences[lease] = (self.leases.instance, token)
        if lease == "outbox":
            assert self._group is not None
            self._sending = asyncio.Event()
            for sender in self._senders:
                self._group.create_task(sender.run(self._sending), name=sender.transport)
            return
        name = lease.removeprefix("chain:")
        self.processor.elsewhere.pop(name, None)
        await self._load_chain(name)  # what another instance committed while it followed the chain
        self._start_follower(name)

    async def _lease_lost(self, lease: str) -> None:
        if lease == "outbox":
            if self._sending is not None:
                self._sending.set()
            return
        name = lease.removeprefix("chain:")
        await self._stop_follower(name)
        if name in self.chains and name in self.config.chains:  # still configured (a reload may remove it)
            self._fresh_adapter(name, self.config.chains[name])

    def _lease_caught_up(self, lease: str) -> bool:
        name = lease.removeprefix("chain:")
        return lease != "outbox" and name in self._followers and self.processor.caught_up(name)

    def _on_stop_signal(self, signum: int) -> None:
        log.info("received %s", signal.Signals(signum).name)
        self.stop.set()

    async def reload(self) -> bool:
        """SIGHUP: apply a new configuration if it is valid; otherwise log why and keep the running one."""
        sdnotify.notify("RELOADING=1")
        try:
            new = await asyncio.to_thread(load, self.config.path)
        except ConfigError as exc:
            for file, key, message in exc.problems:
                log.error("reload refused, the running configuration stays: %s: %s: %s", file, key, message)
            sdnotify.notify("READY=1")
            return False
        old = self.config
        for part in ("store", "api", "metrics", "greenfield"):
            if getattr(new, part) != getattr(old, part):
                log.warning("[%s] changed: that takes effect at the next restart", part)
        if (new.webhook is None) != (old.webhook is None) or (new.mqtt is None) != (old.mqtt is None):
            log.warning("adding or removing [webhook] or [mqtt] takes effect at the next restart")
        if self.webhooks is not None and new.webhook is not None:
            self.webhooks.config = new.webhook
        if self.mqtt is not None and new.mqtt is not None:
            self.mqtt.config = new.mqtt  # used from the next (re)connection
        logs.setup(new.log.level, new.log.format)
        for file, key, message in new.warnings:
            log.warning("%s: %s: %s", file, key, message)
        for name in sorted(set(old.chains) | set(new.chains)):
            if old.chains.get(name) == new.chains.get(name):
                continue
            await self._stop_follower(name)
            if name not in new.chains:
                self.chains.pop(name, None)
            else:
                self._fresh_adapter(name, new.chains[name])
                await self._load_chain(name)
                if self.leases.holds(f"chain:{name}"):
                    self._start_follower(name)  # a new chain starts when its lease comes
            log.info("chain %s %s", name, "reconfigured" if name in new.chains else "removed",
                     extra={"chain": name})
        self.config = dataclasses.replace(new, store=old.store, api=old.api, metrics=old.metrics,
                                          greenfield=old.greenfield,
                                          webhook=new.webhook if old.webhook else None,
                                          mqtt=new.mqtt if old.mqtt else None)
        if new.rates != old.rates or self._rated_assets() != (self.rates.assets if self.rates else set()):
            self._new_rates()  # another spread, fixed pair or source, or coins a reconfigured chain brought
            self._run_rates()
            log.info("exchange rates %s", "reconfigured" if new.rates is not None else "off")
        settle_heap()
        log.info("configuration reloaded from %s", new.path)
        sdnotify.notify("READY=1", f"STATUS={await self._status()}")
        return True

    def _rated_assets(self) -> set[str]:
        return {asset for chain in self.chains.values() for asset in chain.assets}

    def _new_rates(self) -> None:
        """The rate book for [rates] and the configured chains' coins (None without [rates]); its refresh loop
        starts with _run_rates. Until its first round lands, priced invoices answer 503."""
        if self._rates_task is not None:
            self._rates_task.cancel()
            self._rates_task = None
        self.rates = RateBook(self.config.rates, self._rated_assets()) if self.config.rates is not None else None

    def _run_rates(self) -> None:
        if self.rates is not None and self._group is not None:
            self._rates_task = self._group.create_task(self.rates.run(), name="rates")

    async def _load_chain(self, name: str) -> None:
        """Load a (re)configured chain's state for its new follower, waiting for the store if it cannot be
        written: the old follower is already stopped, and giving up would leave the chain unfollowed until the
        next reload."""
        waiting = False
        while True:
            try:
                await self.processor.load_chain(name)
                return
            except STORE_ERRORS as exc:
                if not waiting:
                    log.warning("chain %s waits for the store to take writes before it restarts: %s", name, exc,
                                extra={"chain": name})
                    waiting = True
                await asyncio.sleep(STORE_PROBE_SECONDS)

    async def _status(self) -> str:
        parts = []
        try:
            cursors = {name: await self.processor.store.cursor(name) for name in self.chains}
            pending = sum(count for _, count, _ in await self.processor.store.pending_deliveries())
        except STORE_ERRORS:  # the supervisor must outlive a database that is away
            return "store unavailable"
        for name, chain in self.chains.items():
            cursor = cursors[name]
            tip = chain.node_tip
            if name in self.processor.elsewhere:
                parts.append(f"{name}: followed by {self.leases.holder(f'chain:{name}')}")
            elif chain.stopped:
                parts.append(f"{name}: stopped (see the log)")
            elif not chain.connected:
                parts.append(f"{name}: node unreachable")
            elif cursor is None or tip is None:
                parts.append(f"{name}: syncing")
            else:
                parts.append(f"{name}: height {cursor.height}, lag {max(0, tip - cursor.height)}")
        return "; ".join(parts + [f"{pending} notification(s) pending"])

    async def _supervise(self) -> None:
        """Ping the systemd watchdog only while every chain follower is alive; refresh STATUS=."""
        interval = sdnotify.watchdog_interval()
        while True:
            alive = all(not task.done() for task in self._followers.values())
            states = [f"STATUS={await self._status()}"]
            if interval is not None and alive:
                states.append("WATCHDOG=1")
            sdnotify.notify(*states)
            await asyncio.sleep(min(interval or 5.0, 5.0))

    async def _reload_loop(self) -> None:
        while True:
            await self._reload_requested.wait()
            self._reload_requested.clear()
            try:
                await self.reload()
            except Exception:  # a reload must never take the running daemon down
                log.exception("reload failed; the running configuration stays where it was not yet replaced")
                sdnotify.notify("READY=1")

    async def _expire_loop(self) -> None:
        while True:
            try:
                if self.leases.holds("outbox"):
                    await self.processor.expire_due()
            except STORE_ERRORS as exc:
                log.debug("expiry waits for the store: %s", exc)
            await asyncio.sleep(1.0)

    async def _complete_loop(self) -> None:
        """BitPay's `complete` (payments 6 deep) is no watcherd event: look for it every 2 s."""
        while True:
            try:
                if self.leases.holds("outbox"):
                    await notify_completed(self.processor)
            except STORE_ERRORS as exc:
                log.debug("BitPay completion waits for the store: %s", exc)
            await asyncio.sleep(2.0)

    async def _prune_loop(self) -> None:
        """A minute after start, then hourly: forget what can no longer matter (see Processor.prune)."""
        await asyncio.sleep(PRUNE_FIRST_SECONDS)
        while True:
            try:
                if not self.leases.holds("outbox"):
                    await asyncio.sleep(60)
                    continue
                events, spends = await self.processor.prune(self.config.store.retention_days * 86400 or None)
                if events or spends:
                    log.info("pruned %d event(s) of settled invoices and %d spent outpoint(s) of buried payments",
                             events, spends)
            except STORE_ERRORS as exc:
                log.debug("pruning waits for the store: %s", exc)
            await asyncio.sleep(3600)

    async def _probe_store(self) -> None:
        """Whether the store takes writes (disk full, read-only, gone): for /readyz, a metric and one log line
        per change. While it does not, chain followers and deliveries back off and commit nothing."""
        while True:
            writable = await self.processor.store.writable()
            if writable != self.store_writable:
                if writable:
                    log.info("store %s is writable again", self.config.store.shown)
                    for chain in self.chains.values():  # a chain backing off after a failed commit goes on now
                        chain.retry_now()
                else:
                    log.error("store %s cannot be written (disk full? read-only? database down?): nothing advances "
                              "until it can", self.config.store.shown)
            self.store_writable = writable
            metrics.STORE_WRITABLE.set(1 if writable else 0)
            await asyncio.sleep(STORE_PROBE_SECONDS)

    async def _measure_loop_lag(self) -> None:
        """How late the event loop wakes us: CPU-heavy work on it delays every API answer and every feed."""
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time()
            await asyncio.sleep(LAG_PROBE_SECONDS)
            metrics.LOOP_LAG.observe(max(0.0, loop.time() - asked - LAG_PROBE_SECONDS))


def tune_interpreter() -> None:
    """Scanning threads (blocks, the Monero pool, large node answers) hold the GIL while the event loop waits for
    it, and CPython hands it over every 5 ms: the loop's lag (every API answer, every feed) reached 10-14 ms at
    p99 in scripts/bench. Handing it over every 1 ms keeps it at 5-6 ms."""
    sys.setswitchinterval(0.001)


def settle_heap() -> None:
    """What start-up (or a reload) loaded stays for the process's life, the watch sets above all (a million keys
    per million addresses issued): move it out of the collector's reach, or each full collection walks it all
    (55-60 ms per million keys) on whichever thread triggers it, often the event loop's."""
    gc.collect()
    gc.freeze()

