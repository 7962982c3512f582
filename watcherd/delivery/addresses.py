"""Where a hook registered through an API (a Greenfield webhook, a BitPay `notificationURL`) may connect: never to
this host, its networks or a cloud's metadata service, unless the operator allows a network
(`[greenfield] hook_allow_networks`). The operator's own `[webhook] url` is trusted as configured.

An address is judged as it is connected to. A host name is resolved by `GuardedResolver`, which hands aiohttp only
the addresses allowed, so the check and the connection use the same address (a name that resolves elsewhere at
the next lookup, DNS rebinding, gains nothing); an IP literal, which aiohttp connects to without resolving it, is
judged by `literal` before the request. An IPv6 address that carries an IPv4 one (mapped, NAT64, 6to4) is judged
by that IPv4 address.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import TYPE_CHECKING

from aiohttp.abc import AbstractResolver
from aiohttp.resolver import DefaultResolver
from yarl import URL

if TYPE_CHECKING:
    from aiohttp.abc import ResolveResult

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network

# (network, what it is): every IPv4 address outside them is a public one
REFUSED_V4: tuple[tuple[IPv4Network, str], ...] = tuple((IPv4Network(net), what) for net, what in (
    ("0.0.0.0/8", "unspecified"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "carrier-grade NAT"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),  # 169.254.169.254: the cloud metadata service
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol assignment"),
    ("192.0.2.0/24", "documentation"),
    ("192.88.99.0/24", "6to4 relay"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved or broadcast"),
))
REFUSED_V6: tuple[tuple[IPv6Network, str], ...] = tuple((IPv6Network(net), what) for net, what in (
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("fc00::/7", "private (unique local)"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local"),
    ("ff00::/8", "multicast"),
    ("2001::/23", "IETF protocol assignment"),  # Teredo, benchmarking, ORCHID
    ("2001:db8::/32", "documentation"),
    ("3fff::/20", "documentation"),
))
GLOBAL_V6 = IPv6Network("2000::/3")  # global unicast: any IPv6 address outside it is refused too (::/96, 100::/64...)
MAPPED = IPv6Network("::ffff:0:0/96")
NAT64 = IPv6Network("64:ff9b::/96")
SIX_TO_FOUR = IPv6Network("2002::/16")

POLICY = "connection refused by policy"  # what a refused delivery reports: no host, port or address


class Refused(OSError):
    """The hook's host is, or resolves only to, addresses the policy refuses (the message is for the operator's
    log only: it names them)."""


def embedded_v4(address: IPv6Address) -> IPv4Address | None:
    """The IPv4 address a connection to `address` reaches: IPv4-mapped, NAT64 (64:ff9b::/96) or 6to4."""
    if address in MAPPED or address in NAT64:
        return IPv4Address(int(address) & 0xFFFFFFFF)
    if address in SIX_TO_FOUR:
        return IPv4Address((int(address) >> 80) & 0xFFFFFFFF)
    return None


def why_refused(address: Address) -> str | None:
    """What kind of internal address `address` is ("loopback", "private"...); None for a public one."""
    if isinstance(address, IPv4Address):
        return next((what for net, what in REFUSED_V4 if address in net), None)
    inner = embedded_v4(address)
    if inner is not None:
        return why_refused(inner)
    what = next((what for net, what in REFUSED_V6 if address in net), None)
    return what if what is not None or address in GLOBAL_V6 else "not global unicast"


def refusal(address: Address, allow: Iterable[Network]) -> str | None:
    """Why a hook may not connect to `address` ("127.0.0.1 is loopback"); None if it may: a public address, or
    one in a network the operator allows (an IPv6 form that carries an IPv4 address counts as that address)."""
    what = why_refused(address)
    if what is None:
        return None
    inner = embedded_v4(address) if isinstance(address, IPv6Address) else None
    if any(address in net or (inner is not None and inner in net) for net in allow):
        return None
    return f"{address} is {what}"


def literal(host: str) -> Address | None:
    """The address an IP-literal host names (aiohttp connects to one without resolving it); None for a name.
    A numeric host that is not a canonical address (`127.1`, `2130706433`, `0177.0.0.1`: the C library reads
    them as addresses) is refused."""
    if ":" not in host and not host.replace(".", "").isdigit():  # aiohttp's own test for a literal
        return None
    try:
        return ip_address(host.strip("[]"))
    except ValueError:
        raise Refused(f"{host!r} is not a canonical IP address") from None


def check_host(host: str | None, allow: Iterable[Network]) -> None:
    """Raise `Refused` unless a hook may connect to `host` as far as can be told before resolving it: a name
    (judged on each address it resolves to, by `GuardedResolver`) or an allowed IP literal."""
    if not host:
        raise Refused("the URL names no host")
    address = literal(host)
    why = None if address is None else refusal(address, allow)
    if why is not None:
        raise Refused(why)


def url_refusal(url: str, allow: Iterable[Network]) -> str | None:
    """Why a hook URL may not be registered, for an early 422 (an IP literal the policy refuses); None: it may
    (a name is judged at each connection). ValueError: it is no URL with a host."""
    host = URL(url).raw_host
    if not host:
        raise ValueError("the URL names no host")
    try:
        check_host(host, allow)
    except Refused as exc:
        return str(exc)
    return None


class GuardedResolver(AbstractResolver):
    """Resolves a hook's host and keeps only the addresses it may connect to; none left: `Refused`. aiohttp
    connects only to what a resolver returns (and caches that), so no refused address is ever connected to."""

    def __init__(self, allow: tuple[Network, ...], inner: AbstractResolver | None = None):
        self.allow = allow
        self._inner = inner

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        if self._inner is None:
            self._inner = DefaultResolver()
        kept, refused = [], []
        for result in await self._inner.resolve(host, port, family):
            try:
                why = refusal(ip_address(result["host"]), self.allow)
            except ValueError:
                why = f"{result['host']!r} is not an IP address"
            if why is None:
                kept.append(result)
            else:
                refused.append(why)
        if not kept:
            raise Refused(f"{host} resolves only to refused addresses: {', '.join(refused) or 'none'}")
        return kept

    async def close(self) -> None:
        if self._inner is not None:
            await self._inner.close()
