"""The supervisor: opens the store, starts the API, the chain followers and the outbox; stops them on purpose.

One TaskGroup owns every long-running task. A task that dies of an unexpected error takes the daemon down
(exit non-zero, systemd restarts it, the cursor and the outbox make that lossless) rather than limping on
with a chain silently unwatched. SIGTERM sets a stop event: chain followers are cancelled between
transactions, in-flight notifications get a bounded time to drain, the store is closed, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from typing import Any

from aiohttp import web

from . import __version__, metrics
from .api import make_app
from .chains.base import ChainAdapter
from .chains.bitcoin import BitcoinAdapter
from .config import Config
from .outbox import WebhookSender
from .processor import Processor
from .store import Store

log = logging.getLogger(__name__)

DRAIN_SECONDS = 10.0
READY_LAG_BLOCKS = 3


def make_adapter(chain_config: Any) -> ChainAdapter:
    if chain_config.kind == "bitcoin":
        return BitcoinAdapter(chain_config)
    raise ValueError(f"chain kind {chain_config.kind!r} is not supported")


class Daemon:
    def __init__(self, config: Config):
        self.config = config
        self.stop = asyncio.Event()
        self.chains: dict[str, ChainAdapter] = {name: make_adapter(c) for name, c in config.chains.items()}

    async def readiness(self) -> dict[str, Any]:
        chains = {}
        for name, chain in self.chains.items():
            cursor = await self.processor.store.cursor(name)
            node_tip = getattr(chain, "node_tip", None)
            lag = None if node_tip is None or cursor is None else max(0, node_tip - cursor.height)
            connected = bool(getattr(chain, "connected", False))
            chains[name] = {
                "connected": connected, "node_tip": node_tip, "processed_height": cursor.height if cursor else None,
                "lag": lag, "ready": connected and lag is not None and lag <= READY_LAG_BLOCKS,
            }
        writable = await self.processor.store.writable()
        return {"ready": writable and all(c["ready"] for c in chains.values()), "store_writable": writable,
                "chains": chains}

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        store = await Store.open(self.config.store.path)
        transports = ["webhook"] if self.config.webhook else []
        self.processor = Processor(store, self.chains, transports)
        await self.processor.start()
        host, port = self.config.api.host, self.config.api.port
        runner = web.AppRunner(make_app(self.processor, self.config.api.token, self.readiness),
                               access_log=None, handle_signals=False)
        await runner.setup()
        metrics_runner = web.AppRunner(metrics.make_app(store, tuple(transports)), access_log=None,
                                       handle_signals=False)
        await metrics_runner.setup()
        sender = None
        if self.config.webhook is not None:
            sender = WebhookSender(store, self.config.webhook, self.processor.outbox_wakeup)
        try:
            await web.TCPSite(runner, host, port).start()
            if self.config.metrics is not None:
                await web.TCPSite(metrics_runner, self.config.metrics.host, self.config.metrics.port).start()
                log.info("metrics on http://%s/metrics", self.config.metrics.listen)
            log.info("watcherd %s: API on http://%s:%d, chains: %s", __version__, host, port,
                     ", ".join(self.chains) or "none")
            async with asyncio.TaskGroup() as group:
                followers = [group.create_task(chain.run(self.processor), name=f"chain:{name}")
                             for name, chain in self.chains.items()]
                expiry = group.create_task(self._expire_loop(), name="expiry")
                delivery = group.create_task(sender.run(self.stop), name="webhooks") if sender else None
                await self.stop.wait()
                log.info("stopping: no new work; draining notifications for up to %.0f s", DRAIN_SECONDS)
                for task in [*followers, expiry]:
                    task.cancel()
                if delivery is not None:
                    await delivery
            if sender is not None:
                await sender.drain(time.time() + DRAIN_SECONDS)
        finally:
            await runner.cleanup()
            await metrics_runner.cleanup()
            for chain in self.chains.values():
                with contextlib.suppress(Exception):
                    await chain.close()  # type: ignore[attr-defined]
            await store.close()
        log.info("stopped cleanly")

    def _on_signal(self, signum: int) -> None:
        log.info("received %s", signal.Signals(signum).name)
        self.stop.set()

    async def _expire_loop(self) -> None:
        while True:
            await self.processor.expire_due()
            await asyncio.sleep(1.0)
