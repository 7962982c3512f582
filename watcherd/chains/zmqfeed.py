"""ZMQ wake-ups with an RPC safety net, for the adapters of nodes that publish over ZMQ (bitcoind, monerod).

The feed only says "something happened"; the adapter's `reconcile` over RPC is the truth. It runs once the
subscription is set up, after every (re)connection of the socket (whatever was published meanwhile is lost),
whenever the adapter asks for it (`_resync`: a sequence gap, a malformed message), and every poll interval
even when the feed is silent. A session, and each (re)connection of the socket, checks the node's network
again before a message of it is matched (a node restarted on another network reconnects).
"""

from __future__ import annotations

import asyncio
import logging
import time

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from watcherd import metrics
from watcherd.chains.follow import Follower
from watcherd.core.chain import ChainSink

log = logging.getLogger("watcherd.chains.zmqfeed")

MEMPOOL_SAFETY_NET_SECONDS = 30.0  # diff the mempool this often even if the feed went quiet


class ZmqFollower(Follower):
    """A follower whose node publishes over ZMQ; the chain kind supplies `on_message(sink, frames)`."""

    async def on_message(self, sink: ChainSink, frames: list[bytes]) -> None:
        raise NotImplementedError

    def _on_zmq_connected(self) -> None:
        """Hook: forget per-connection feed state (sequence numbers)."""

    async def _follow_polling(self, sink: ChainSink) -> None:
        """Without a feed: the same reconcile, on the poll interval."""
        self.network_checked = False
        while True:
            await self.reconcile(sink)
            await asyncio.sleep(self.config.poll_interval_seconds)

    async def _follow_zmq_feed(self, sink: ChainSink, endpoints: set[str], topics: tuple[bytes, ...]) -> None:
        context = zmq.asyncio.Context.instance()
        socket = context.socket(zmq.SUB)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.RCVHWM, 0)  # never drop a notification on our side; the node's HWM still applies
        monitor = socket.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        self.network_checked = False
        try:
            for topic in topics:
                socket.setsockopt(zmq.SUBSCRIBE, topic)
            for endpoint in endpoints:
                socket.connect(endpoint)
            self._on_zmq_connected()
            poller = zmq.asyncio.Poller()
            poller.register(socket, zmq.POLLIN)
            poller.register(monitor, zmq.POLLIN)
            await self.reconcile(sink)
            interval = self.config.poll_interval_seconds
            next_check = time.monotonic() + interval
            next_mempool_read = time.monotonic() + MEMPOOL_SAFETY_NET_SECONDS
            while True:
                timeout_ms = max(0, int((next_check - time.monotonic()) * 1000))
                ready = dict(await poller.poll(timeout_ms))
                if monitor in ready:
                    self._on_monitor(await monitor.recv_multipart())
                    if not self.network_checked:
                        await self.reconcile(sink, full=False)  # checks it, before any message of the node
                if socket in ready:
                    await self.on_message(sink, await socket.recv_multipart())
                if time.monotonic() >= next_mempool_read:
                    self._pool_stale = True
                    next_mempool_read = time.monotonic() + MEMPOOL_SAFETY_NET_SECONDS
                if self._resync.is_set() or time.monotonic() >= next_check:
                    # the safety net: even a silent feed can't hide a block for longer than one interval
                    self._resync.clear()
                    await self.reconcile(sink, full=False)
                    next_check = time.monotonic() + interval
        finally:
            socket.disable_monitor()
            monitor.close(linger=0)
            socket.close(linger=0)

    def _on_monitor(self, frames: list[bytes]) -> None:
        event = parse_monitor_message(frames)
        endpoint = event["endpoint"].decode()
        if event["event"] == zmq.EVENT_CONNECTED:
            metrics.RECONNECTS.labels(self.name).inc()
            log.info("ZMQ connected to %s", endpoint, extra={"chain": self.name})
            self._on_zmq_connected()
            self.network_checked = False
        else:
            log.warning("ZMQ disconnected from %s", endpoint, extra={"chain": self.name})
        self._pool_stale = True  # whatever was published while we were away: read the mempool
        self._resync.set()
