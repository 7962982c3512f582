"""Hooks registered through the APIs (Greenfield webhooks, BitPay `notificationURL`) are no port scanner: they never
connect to an internal address, judged on the address connected to, unless `[greenfield] hook_allow_networks`
holds it; a failure shows no host or port; answers are read 64 KB at most; a store has MAX_HOOKS webhooks; and one
slow endpoint holds up no other."""

import asyncio
import base64
import contextlib
import json
import re
import socket
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import IPv4Network, IPv6Network, ip_address
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver
from aiohttp.resolver import DefaultResolver
from aiohttp.test_utils import TestClient, TestServer
from conftest import async_wait_for, scaled

from testkit.fake import FakeChain
from tests.test_config import MINIMAL
from tests.test_greenfield_api import KEY, TOKEN, Rates, pay
from watcherd.compat.bitpay import BitPayNotifications
from watcherd.compat.greenfield import GreenfieldHooks
from watcherd.config import GreenfieldConfig, load
from watcherd.core.types import Cursor
from watcherd.delivery import dispatch
from watcherd.delivery.addresses import POLICY, GuardedResolver, Refused, literal, refusal, url_refusal, why_refused
from watcherd.delivery.dispatch import MAX_BODY
from watcherd.delivery.hooks import PER_HOOK, PER_URL, HookSender
from watcherd.delivery.webhook import WebhookSender
from watcherd.exceptions import ConfigError
from watcherd.http import bitpay, greenfield
from watcherd.http.api import make_app
from watcherd.ledger import Processor
from watcherd.store import Store
from watcherd.store.hooks import MAX_HOOKS

STORE = "shop-1"
GF = {"Authorization": f"token {KEY}"}
BASIC = {"Authorization": "Basic " + base64.b64encode(KEY.encode()).decode()}
BASE = f"/api/v1/stores/{STORE}"
LOOPBACK = (IPv4Network("127.0.0.0/8"),)
SECRET = "whsec_reach_0123456789"


# ---- the address classifier -----------------------------------------------------------------------------

@pytest.mark.parametrize(("address", "what"), [
    ("127.0.0.1", "loopback"), ("127.255.255.254", "loopback"),
    ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("172.31.255.255", "private"), ("192.168.1.1", "private"),
    ("169.254.169.254", "link-local"), ("100.64.0.1", "carrier-grade NAT"), ("100.127.255.255", "carrier-grade NAT"),
    ("0.0.0.0", "unspecified"), ("0.1.2.3", "unspecified"), ("224.0.0.1", "multicast"), ("239.1.2.3", "multicast"),
    ("255.255.255.255", "reserved or broadcast"), ("240.0.0.1", "reserved or broadcast"),
    ("192.0.2.1", "documentation"), ("198.51.100.7", "documentation"), ("203.0.113.9", "documentation"),
    ("198.18.0.1", "benchmarking"), ("192.0.0.8", "IETF protocol assignment"),
    ("::1", "loopback"), ("::", "unspecified"), ("fc00::1", "private (unique local)"),
    ("fd12:3456::1", "private (unique local)"), ("fe80::1", "link-local"), ("fe80::1%eth0", "link-local"),
    ("fec0::1", "site-local"), ("ff02::1", "multicast"), ("2001:db8::1", "documentation"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "IETF protocol assignment"),  # Teredo
    # IPv6 forms that carry an IPv4 address are judged by it
    ("::ffff:127.0.0.1", "loopback"), ("::ffff:7f00:1", "loopback"), ("::ffff:169.254.169.254", "link-local"),
    ("::ffff:10.0.0.1", "private"), ("64:ff9b::10.0.0.1", "private"), ("64:ff9b::a9fe:a9fe", "link-local"),
    ("2002:7f00:1::1", "loopback"), ("2002:a9fe:a9fe::", "link-local"), ("2002:c0a8:101::", "private"),
    # outside global unicast (IPv4-compatible, local-use NAT64, discard-only)
    ("::127.0.0.1", "not global unicast"), ("::10.0.0.1", "not global unicast"),
    ("64:ff9b:1::a00:1", "not global unicast"), ("100::1", "not global unicast"),
])
def test_internal_addresses_are_refused(address, what):
    """Every internal kind, in IPv4, IPv6 and the IPv6 forms that reach an IPv4 address, is named and refused."""
    parsed = ip_address(address)
    assert why_refused(parsed) == what
    assert refusal(parsed, ()) == f"{parsed} is {what}"


@pytest.mark.parametrize("address", [
    "8.8.8.8", "1.1.1.1", "93.184.216.34", "100.63.255.255", "100.128.0.1", "172.15.255.255", "172.32.0.1",
    "192.167.255.255", "192.169.0.1", "11.0.0.1", "223.255.255.254", "2606:4700:4700::1111", "2a00:1450:4001::200e",
    "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1",
])
def test_public_addresses_pass(address):
    """The public neighbours of every refused range, and public IPv4 addresses in their IPv6 forms, pass."""
    assert why_refused(ip_address(address)) is None
    assert refusal(ip_address(address), ()) is None


def test_allowed_networks_let_their_addresses_through_in_every_form():
    """The operator's networks pass, whichever form names their addresses; nothing beside them does."""
    allow = (IPv4Network("10.0.0.0/8"), IPv6Network("fd00::/8"))
    for address in ("10.1.2.3", "::ffff:10.1.2.3", "64:ff9b::a01:203", "2002:a01:203::1", "fd00::5"):
        assert refusal(ip_address(address), allow) is None, address
    for address in ("192.168.1.1", "127.0.0.1", "::ffff:127.0.0.1", "fc00::1", "169.254.169.254"):
        assert refusal(ip_address(address), allow) is not None, address


@pytest.mark.parametrize("host", ["127.1", "2130706433", "0177.0.0.1", "127.0.0.1.", "127.000.0.1", "1.2.3.4.5",
                                  "::ffff:127.0.0.1:80"])
def test_numeric_hosts_that_are_no_canonical_address_are_refused(host):
    """The legacy numeric forms the C library reads as addresses (127.1 is 127.0.0.1) are refused, not passed on."""
    with pytest.raises(Refused):
        literal(host)


def test_literals_and_names():
    assert literal("example.com") is None and literal("0x7f.1") is None  # names: judged as they resolve
    assert literal("::1") == ip_address("::1") and literal("[::1]") == ip_address("::1")
    assert literal("8.8.8.8") == ip_address("8.8.8.8")
    assert url_refusal("http://8.8.8.8/x", ()) is None and url_refusal("https://shop.example/ipn", ()) is None
    assert url_refusal("http://localhost:8080/", ()) is None  # a name: refused when it resolves
    for url in ("http://127.0.0.1/", "http://[::1]:80/", "http://[::ffff:169.254.169.254]/", "http://2130706433/",
                "http://10.0.0.1:8080/x", "https://[fe80::1%25eth0]/"):
        assert url_refusal(url, ()) is not None, url
    assert url_refusal("http://127.0.0.1/", LOOPBACK) is None
    for url in ("http://[::1/", "http:///x", "http://evil.example\\@127.0.0.1/"):
        with pytest.raises(ValueError):
            url_refusal(url, ())


async def test_urls_without_a_host_are_refused_as_no_url(store_location):
    """A URL the parser refuses, or one without a host, answers the field's plain error (not a 500)."""
    async with shop(store_location) as env:
        for url in ("http://[::1/", "http:///x", "http://evil.example\\@127.0.0.1/"):
            refused = await _json(await env.client.post(f"{BASE}/webhooks", json={"url": url}, headers=GF), 422)
            assert refused == [{"path": "url", "message": "must be an http(s) URL"}]
            refused = await _json(await env.client.post("/invoices", headers=BASIC, json={
                "price": 10, "currency": "USD", "notificationURL": url}), 400)
            assert refused == {"error": "notificationURL: must be an http(s) URL"}


class MappedResolver(AbstractResolver):
    """A DNS server the test controls: each name answers the next of its lists of addresses (the last again),
    unmapped names go to the system's resolver."""

    def __init__(self, names: dict[str, list[list[str]]]):
        self.names = names
        self.asked: list[str] = []

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> Any:
        self.asked.append(host)
        if host not in self.names:
            return await DefaultResolver().resolve(host, port, family)
        answers = self.names[host]
        addresses = answers.pop(0) if len(answers) > 1 else answers[0]
        return [{"hostname": host, "host": a, "port": port, "proto": 0, "flags": socket.AI_NUMERICHOST,
                 "family": socket.AF_INET6 if ":" in a else socket.AF_INET} for a in addresses]

    async def close(self) -> None:
        pass


async def test_the_resolver_keeps_only_allowed_addresses_at_each_lookup():
    """A name's internal addresses are dropped from what aiohttp may connect to; a name with nothing else is
    refused, also when it answered a public address the lookup before (DNS rebinding)."""
    inner = MappedResolver({"mixed.test": [["10.0.0.1", "93.184.216.34", "::1"]],
                            "rebind.test": [["93.184.216.34"], ["127.0.0.1"]],
                            "internal.test": [["192.168.0.10", "fd00::1"]]})
    guard = GuardedResolver((), inner)
    assert [r["host"] for r in await guard.resolve("mixed.test", 80, socket.AF_UNSPEC)] == ["93.184.216.34"]
    assert [r["host"] for r in await guard.resolve("rebind.test", 80)] == ["93.184.216.34"]
    with pytest.raises(Refused):
        await guard.resolve("rebind.test", 80)
    with pytest.raises(Refused):
        await guard.resolve("internal.test", 80)
    with pytest.raises(Refused):
        await GuardedResolver(()).resolve("localhost", 80, socket.AF_UNSPEC)  # the system's resolver, guarded
    allowed = GuardedResolver((IPv4Network("192.168.0.0/16"),), inner)
    assert [r["host"] for r in await allowed.resolve("internal.test", 80)] == ["192.168.0.10"]


# ---- [greenfield] hook_allow_networks --------------------------------------------------------------------

def _config(tmp_path: Path, line: str) -> Path:
    path = tmp_path / "watcherd.toml"
    path.write_text(MINIMAL + f'[greenfield]\nstore_id = "s"\napi_key = "{KEY}"\n{line}\n')
    return path


def test_hook_allow_networks_is_parsed_and_defaults_to_none(tmp_path):
    config = load(_config(tmp_path, ""))
    assert config.greenfield is not None and config.greenfield.hook_allow_networks == ()
    config = load(_config(tmp_path, 'hook_allow_networks = ["10.0.0.0/8", "fd00::/8", "192.168.5.7"]'))
    assert config.greenfield is not None and config.greenfield.hook_allow_networks == (
        IPv4Network("10.0.0.0/8"), IPv6Network("fd00::/8"), IPv4Network("192.168.5.7/32"))


@pytest.mark.parametrize(("value", "message"), [
    ('["10.0.0.1/8"]', "'10.0.0.1/8' has host bits set: did you mean '10.0.0.0/8'?"),
    ('["intranet"]', "'intranet' is not a network in CIDR form"),
    ('["10.0.0.0/33"]', "'10.0.0.0/33' is not a network in CIDR form"),
    ('"10.0.0.0/8"', "must be a list of networks in CIDR form"),
    ("[10]", "must be a list of networks in CIDR form"),
])
def test_a_bad_hook_allow_network_is_refused_by_name(tmp_path, value, message):
    with pytest.raises(ConfigError) as caught:
        load(_config(tmp_path, f"hook_allow_networks = {value}"))
    problems = [(key, m) for _, key, m in caught.value.problems]
    assert any(key == "greenfield.hook_allow_networks" and message in m for key, m in problems), problems


# ---- through the APIs, to a service on loopback ----------------------------------------------------------

class Listener:
    """A service on 127.0.0.1 standing in for an internal one: counts the connections it accepts and the requests
    it reads; answers 200, or (`huge`) announces 10 MB, sends 200 KB of it and keeps the rest, or (`hold`)
    never answers, until the test ends."""

    def __init__(self, mode: str = "ok"):
        self.mode = mode
        self.connections = 0
        self.requests: list[bytes] = []
        self._released = asyncio.Event()

    async def __aenter__(self) -> "Listener":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._released.set()
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                body = await reader.readexactly(int(length[1]) if length else 0)
                self.requests.append(body)
                if self.mode == "hold":
                    await self._released.wait()
                    return
                if self.mode == "huge":
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10485760\r\n\r\n" + b"x" * 200_000)
                    await writer.drain()
                    await self._released.wait()
                    return
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def shop(store_location: Any, allow: tuple[Any, ...] = ()) -> AsyncIterator[Any]:
    """The Greenfield and BitPay APIs in process, with `allow` as [greenfield] hook_allow_networks."""
    store = await Store.open(store_location)
    chain = FakeChain("btc", confirmations=1)
    processor = Processor(store, {"btc": chain}, [])
    await processor.start()
    await processor.set_cursor("btc", Cursor(1, "h1"))
    processor.event_listeners += [GreenfieldHooks(STORE), BitPayNotifications(processor.clock)]
    config = GreenfieldConfig(store_id=STORE, store_name="Shop", api_key=KEY, hook_allow_networks=allow)

    async def readiness() -> dict[str, Any]:
        return {"ready": True, "chains": {}}

    subs = [("/api/v1", greenfield.make_app(processor, config, readiness, Rates)),
            ("/invoices", bitpay.make_app(processor, config, Rates))]
    try:
        async with TestClient(TestServer(make_app(processor, TOKEN, readiness, Rates, subs))) as client:
            yield SimpleNamespace(client=client, processor=processor, chain=chain, store=store)
    finally:
        await store.close()


async def _json(response: Any, status: int = 200) -> Any:
    assert response.status == status, await response.text()
    return await response.json()


async def _paid_bitpay_invoice(env: Any, notification_url: str) -> str:
    """A BitPay invoice with that notificationURL, paid in full (new -> paid: one IPN queued)."""
    data = (await _json(await env.client.post("/invoices", headers=BASIC, json={
        "price": 10, "currency": "USD", "notificationURL": notification_url})))["data"]
    await env.processor.activate_method(data["id"], "btc")
    await pay(env.processor, env.chain, next(iter(env.chain.watchlist.keys)), 20000, "cc" * 32)
    return str(data["id"])


async def test_a_greenfield_webhook_reaches_no_internal_service(store_location):
    """Webhooks aimed at a service on loopback: an IP literal in any form is refused at registration (422), and
    names that resolve to it (a name the test's DNS maps to 127.0.0.1, and localhost) are refused when the
    delivery connects. The service sees no connection, and the deliveries API says only "connection refused by
    policy": no host, port or address."""
    async with Listener() as service, shop(store_location) as env:
        port = service.port
        for url in (f"http://127.0.0.1:{port}/hook", f"http://[::ffff:127.0.0.1]:{port}/", f"http://2130706433:{port}/",
                    f"http://127.1:{port}/", "http://169.254.169.254/latest/meta-data/", f"http://[::1]:{port}/"):
            refused = await _json(await env.client.post(f"{BASE}/webhooks", json={"url": url}, headers=GF), 422)
            assert refused[0]["path"] == "url" and "hook_allow_networks" in refused[0]["message"], url
        hooks = [await _json(await env.client.post(f"{BASE}/webhooks", json={"url": url}, headers=GF))
                 for url in (f"http://internal.test:{port}/hook", f"http://localhost:{port}/hook")]
        moved = await env.client.put(f"{BASE}/webhooks/{hooks[0]['id']}", json={"url": f"http://10.0.0.1:{port}/"},
                                     headers=GF)
        assert moved.status == 422  # an update is judged the same
        async with env.store.transaction():  # literals stored before the check (or while the operator allowed them)
            for n, url in enumerate((f"http://127.0.0.1:{port}/", f"http://[::ffff:127.0.0.1]:{port}/")):
                await env.store.add_hook(f"old{n}", url, "s3cret-0123456789", enabled=True, automatic_redelivery=True,
                                         events=None, now=1)
        hooks += [{"id": "old0"}, {"id": "old1"}]
        await _json(await env.client.post(f"{BASE}/invoices", json={"amount": "1.00"}, headers=GF))
        dns = MappedResolver({"internal.test": [["127.0.0.1"]]})
        sender = HookSender(env.store, asyncio.Event(), resolver=dns)
        assert await sender.deliver_due() == 4
        assert "internal.test" in dns.asked  # resolved, then refused: the address judged is the one resolved
        assert service.connections == 0
        for hook in hooks:
            response = await env.client.get(f"{BASE}/webhooks/{hook['id']}/deliveries", headers=GF)
            text = await response.text()
            [delivery] = json.loads(text)
            assert (delivery["status"], delivery["httpCode"], delivery["errorMessage"]) == ("Failed", None, POLICY)
            shown = await env.client.get(f"{BASE}/webhooks/{hook['id']}/deliveries/{delivery['id']}", headers=GF)
            for leak in (f":{port}", "127.0.0.1", "::1", "internal.test", "localhost", "Refused"):
                assert leak not in text and leak not in await shown.text(), leak


async def test_a_greenfield_webhook_reaches_it_once_the_operator_allows_loopback(store_location):
    """The same service, with hook_allow_networks = ["127.0.0.0/8"]: a literal is accepted at registration and
    the deliveries arrive, by literal and by name."""
    async with Listener() as service, shop(store_location, LOOPBACK) as env:
        for url in (f"http://127.0.0.1:{service.port}/hook", f"http://internal.test:{service.port}/hook"):
            await _json(await env.client.post(f"{BASE}/webhooks", json={"url": url}, headers=GF))
        await _json(await env.client.post(f"{BASE}/invoices", json={"amount": "1.00"}, headers=GF))
        sender = HookSender(env.store, asyncio.Event(), allow_networks=LOOPBACK,
                            resolver=MappedResolver({"internal.test": [["127.0.0.1"]]}))
        assert await sender.deliver_due() == 2
        assert await env.store.pending_hook_deliveries() == 0
    assert service.connections >= 1
    assert [json.loads(body)["type"] for body in service.requests] == ["InvoiceCreated"] * 2


async def test_a_bitpay_notification_url_reaches_no_internal_service(store_location):
    """An invoice's notificationURL aimed at the service: a literal is refused at creation (400, the BitPay
    API's error shape), a name resolving to loopback when the IPN connects; the paid invoice's IPN never reaches
    the service and is recorded with the generic reason only."""
    async with Listener() as service, shop(store_location) as env:
        refused = await _json(await env.client.post("/invoices", headers=BASIC, json={
            "price": 10, "currency": "USD", "notificationURL": f"http://[::ffff:7f00:1]:{service.port}/ipn"}), 400)
        assert refused["error"].startswith("notificationURL: must not point at an internal address")
        url = f"http://internal.test:{service.port}/ipn"
        await _paid_bitpay_invoice(env, url)
        sender = HookSender(env.store, asyncio.Event(), resolver=MappedResolver({"internal.test": [["127.0.0.1"]]}))
        assert await sender.deliver_due() == 1
        assert service.connections == 0
        [ipn] = await env.store.hook_deliveries_for_url(url)
        assert (ipn["type"], ipn["last_error"], ipn["delivered_at"]) == ("paid", POLICY, None)


async def test_a_bitpay_notification_url_reaches_it_once_the_operator_allows_loopback(store_location):
    async with Listener() as service, shop(store_location, LOOPBACK) as env:
        url = f"http://127.0.0.1:{service.port}/ipn"
        invoice_id = await _paid_bitpay_invoice(env, url)
        assert await HookSender(env.store, asyncio.Event(), allow_networks=LOOPBACK).deliver_due() == 1
        [ipn] = await env.store.hook_deliveries_for_url(url)
        assert ipn["delivered_at"] is not None and ipn["http_code"] == 200
    assert service.connections == 1
    [body] = service.requests
    assert (json.loads(body)["id"], json.loads(body)["status"]) == (invoice_id, "paid")


async def test_failures_show_no_host_or_port(store_location):
    """A hook the operator allows but nothing listens on, and a row recorded before these reasons existed (with
    the connect error's host:port): the deliveries API shows "connection failed" for both."""
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    async with shop(store_location, LOOPBACK) as env:
        hook = await _json(await env.client.post(f"{BASE}/webhooks", json={"url": f"http://127.0.0.1:{closed}/"},
                                                 headers=GF))
        created = await _json(await env.client.post(f"{BASE}/invoices", json={"amount": "1.00"}, headers=GF))
        assert await HookSender(env.store, asyncio.Event(), allow_networks=LOOPBACK).deliver_due() == 1
        async with env.store.transaction():  # of an invoice in the key's scope, or the list would leave it out
            await env.store.add_hook_delivery("old", hook["id"], "x", created["id"], "InvoiceCreated", "{}", 1)
            [row] = [r for r in await env.store.hook_deliveries(hook["id"]) if r["id"] == "old"]
            await env.store.mark_hook_attempt_failed(
                row["seq"], f"ClientConnectorError: Cannot connect to host 127.0.0.1:{closed} ssl:default", None,
                time.time() + 3600, None, 2)
        text = await (await env.client.get(f"{BASE}/webhooks/{hook['id']}/deliveries", headers=GF)).text()
    assert [d["errorMessage"] for d in json.loads(text)] == ["connection failed", "connection failed"]
    assert f":{closed}" not in text and "127.0.0.1" not in text


# ---- caps ---------------------------------------------------------------------------------------------

async def test_an_answer_bigger_than_64_kb_is_not_read_whole(store_location):
    """The endpoint announces 10 MB, sends 200 KB and keeps the rest: a registered hook's delivery and the
    operator's webhook are recorded delivered (200) after reading 64 KB; read whole, each would wait for the
    rest until its timeout and fail."""
    assert MAX_BODY == 64 * 1024
    store = await Store.open(store_location)
    try:
        async with Listener("huge") as service:
            url = f"http://127.0.0.1:{service.port}/"
            async with store.transaction():
                await store.add_hook("h1", url, "s3cret-0123456789", enabled=True, automatic_redelivery=True,
                                     events=None, now=1)
                await store.add_hook_delivery("d1", "h1", url, "inv_1", "InvoiceCreated", "{}", int(time.time()))
                await store.add_event("evt_1", "inv_1", "fake", "invoice.test", int(time.time()),
                                      json.dumps({"id": "evt_1", "invoice": {"id": "inv_1"}}), ["webhook"], time.time())
            hooks = HookSender(store, asyncio.Event(), allow_networks=LOOPBACK, timeout_seconds=scaled(3))
            config = SimpleNamespace(url=url, secret=SECRET, timeout_seconds=scaled(3), max_retry_hours=72)
            webhook = WebhookSender(store, config, asyncio.Event())  # type: ignore[arg-type]
            assert await hooks.deliver_due() == 1 and await webhook.deliver_due() == 1
            assert len(service.requests) == 2
        row = await store.hook_delivery("h1", "d1")
        assert (row["http_code"], row["last_error"]) == (200, None) and row["delivered_at"] is not None
        [event] = await store.deliveries(state="delivered")
        assert event["id"] == "evt_1"
    finally:
        await store.close()


async def test_a_store_has_at_most_max_hooks_webhooks(store_location):
    """The 51st webhook is refused with 422 (Greenfield's validation shape); deleting one makes room."""
    async with shop(store_location) as env:
        hooks = [await _json(await env.client.post(f"{BASE}/webhooks", json={"url": f"https://b.example/{i}"},
                                                   headers=GF)) for i in range(MAX_HOOKS)]
        beyond = await _json(await env.client.post(f"{BASE}/webhooks", json={"url": "https://b.example/x"},
                                                   headers=GF), 422)
        assert beyond[0]["message"] == f"a store has at most {MAX_HOOKS} webhooks: delete one first"
        assert len(await env.store.hooks()) == MAX_HOOKS
        await _json(await env.client.delete(f"{BASE}/webhooks/{hooks[0]['id']}", headers=GF))
        await _json(await env.client.post(f"{BASE}/webhooks", json={"url": "https://b.example/x"}, headers=GF))
        # five places free, thirty creates at once: the count is taken in the transaction that adds one, so a
        # burst cannot pass the cap together
        for hook in hooks[1:6]:
            await _json(await env.client.delete(f"{BASE}/webhooks/{hook['id']}", headers=GF))
        burst = await asyncio.gather(*(env.client.post(f"{BASE}/webhooks", json={"url": f"https://b.example/r{i}"},
                                                       headers=GF) for i in range(30)))
        assert sorted(r.status for r in burst) == [200] * 5 + [422] * 25
        assert len(await env.store.hooks()) == MAX_HOOKS


async def test_one_slow_hook_holds_up_no_other(store_location, monkeypatch):
    """A hook and a notification URL that never answer, each with a delivery for 150 invoices queued before
    everything else: every delivery to another hook and another notification URL is acknowledged while none of
    the slow ones has even timed out, and the slow endpoints never had more than their caps of sends at once.
    (Sharing slots, the slow ones took them all and the others waited for their timeouts; and the pages full of
    the slow ones' rows are read past at once, not at the next idle read, which is put off here for an hour.)"""
    monkeypatch.setattr(dispatch, "IDLE_READ_SECONDS", 3600.0)
    fast: list[str] = []
    held = {"/slow-hook": 0, "/slow-ipn": 0}
    most = dict(held)
    released = asyncio.Event()

    async def endpoint(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        if request.path in held:
            held[request.path] += 1
            most[request.path] = max(most[request.path], held[request.path])
            await released.wait()
        else:
            fast.append(body["deliveryId"])
        return web.Response(status=200)

    app = web.Application()
    for path in ("/slow-hook", "/fast-hook", "/slow-ipn", "/fast-ipn"):
        app.router.add_post(path, endpoint)
    store = await Store.open(store_location)
    async with TestServer(app) as server, contextlib.AsyncExitStack() as cleanup:
        cleanup.push_async_callback(store.close)
        async with store.transaction():
            for hook in ("slow", "fast"):
                await store.add_hook(hook, str(server.make_url(f"/{hook}-hook")), "s3cret-0123456789", enabled=True,
                                     automatic_redelivery=True, events=None, now=1)
            now = int(time.time())
            for target in ("slow", "fast"):
                for i in range(150):
                    delivery = f"{target}-hook-{i}"
                    body = json.dumps({"deliveryId": delivery})
                    await store.add_hook_delivery(delivery, target, "unused", f"inv{i}", "InvoiceCreated", body, now)
                for i in range(150):
                    delivery = f"{target}-ipn-{i}"
                    await store.add_hook_delivery(delivery, None, str(server.make_url(f"/{target}-ipn")), f"inv{i}",
                                                  "paid", json.dumps({"deliveryId": delivery}), now)
        stop = asyncio.Event()
        sender = HookSender(store, asyncio.Event(), allow_networks=LOOPBACK, timeout_seconds=scaled(30))
        task = asyncio.create_task(sender.run(stop))
        try:
            await async_wait_for(lambda: len(fast) == 300, 25, "every delivery to the fast hook and URL")
            slow = await store.hook_deliveries("slow", limit=1000)
            assert len(slow) == 150 and all(r["attempts"] == 0 for r in slow)  # none timed out yet: nobody waited
            assert most == {"/slow-hook": PER_HOOK, "/slow-ipn": PER_URL}
            assert sorted(fast) == sorted(f"fast-{kind}-{i}" for kind in ("hook", "ipn") for i in range(150))
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            released.set()


# ---- the real daemon ----------------------------------------------------------------------------------

@contextmanager
def internal_service() -> Iterator[Any]:
    """A service on 127.0.0.1 (threads, for the real daemon's tests): notes each connection and each request's
    path and body."""
    seen: dict[str, Any] = {"connections": 0, "requests": []}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            seen["requests"].append((self.path, json.loads(self.rfile.read(int(self.headers["Content-Length"])))))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        def verify_request(self, request: Any, client_address: Any) -> bool:
            seen["connections"] += 1
            return True

    server = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_port, seen
    finally:
        server.shutdown()
        server.server_close()


def _call(daemon: Any, method: str, path: str, body: Any, auth: str) -> Any:
    request = urllib.request.Request(f"http://127.0.0.1:{daemon.port}{path}", method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json", "Authorization": auth})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.mark.parametrize("allowed", [False, True], ids=["default", "allowed"])
def test_the_daemon_reaches_a_loopback_service_only_once_allowed(bsv_node, tmp_path, allowed):
    """The real daemon on a regtest node: a Greenfield webhook and a BitPay notificationURL aimed at
    localhost:<port> (a name: accepted at registration, judged on the address it resolves to), and the invoice
    paid. By default the service on 127.0.0.1 receives no connection, the deliveries API shows only "connection
    refused by policy" and the operator's log names the refused address; with hook_allow_networks =
    ["127.0.0.0/8"] both notifications arrive."""
    from harness import Daemon, chain_table

    allow = 'hook_allow_networks = ["127.0.0.0/8"]\n' if allowed else ""
    extra = (f'[greenfield]\nstore_id = "{STORE}"\nstore_name = "Shop"\napi_key = "{KEY}"\n{allow}'
             '[rates]\nsources = []\ncurrencies = ["USD"]\n[rates.fixed]\nBTC_USD = "50000"\n')
    with internal_service() as (port, seen):
        daemon = Daemon(tmp_path / "d", chain_table("btc", bsv_node, confirmations=1), None, extra=extra).start()
        try:
            hook = _call(daemon, "POST", f"{BASE}/webhooks", {"url": f"http://localhost:{port}/hook"},
                         GF["Authorization"])
            created = _call(daemon, "POST", "/invoices", {"price": 10, "currency": "USD",
                                                         "notificationURL": f"http://localhost:{port}/ipn"},
                            BASIC["Authorization"])["data"]
            picked = daemon.api("POST", f"/v1/invoices/{created['id']}/payment-methods/btc")
            btc = next(m for m in picked["payment_methods"] if m["method"] == "btc")
            bsv_node.pay(btc["address"], btc["due"])
            daemon.wait_status(created["id"], "processing", timeout=scaled(30))
            deliveries = f"{BASE}/webhooks/{hook['id']}/deliveries"
            deadline = time.monotonic() + scaled(30)
            if allowed:
                while {path for path, _ in seen["requests"]} != {"/hook", "/ipn"}:
                    assert time.monotonic() < deadline, (seen, daemon.log_tail())
                    time.sleep(0.1)
                ipn = next(body for path, body in seen["requests"] if path == "/ipn")
                assert (ipn["id"], ipn["status"]) == (created["id"], "paid")
                return
            while ("connection refused by policy" not in (shown := json.dumps(
                    _call(daemon, "GET", deliveries, None, GF["Authorization"])))
                   or "paid delivery" not in daemon.log_tail(500)):
                assert time.monotonic() < deadline, (shown, daemon.log_tail())
                time.sleep(0.1)
            # the first is retried with backoff, the invoice's later ones wait behind it (not attempted yet)
            assert {d["errorMessage"] for d in json.loads(shown)} - {""} == {"connection refused by policy"}
            assert f":{port}" not in shown and "127.0.0.1" not in shown and "localhost" not in shown
            assert "refused: localhost resolves only to refused addresses" in daemon.log_tail(500)
            assert "127.0.0.1 is loopback" in daemon.log_tail(500)  # the operator's log says what to allow
            assert seen == {"connections": 0, "requests": []}
        finally:
            daemon.stop()
