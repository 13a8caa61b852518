"""The address guard: webhooks go to public addresses only (no SSRF into the gateway's own network).

A URL is refused unless its scheme is http or https and every address its host resolves to is global: not
private, loopback, link-local (which holds the cloud metadata service, 169.254.169.254), unique-local (fd00:ec2::254),
multicast, unspecified or reserved. `webhook_allow_hosts` names hosts or networks to let through anyway. The check
runs when a webhook is created and again before each delivery, and the delivery connects to the very addresses
checked (`PinnedResolver`), so a name that resolves elsewhere the second time (DNS rebinding) gains nothing.
POST /v1/x402/fetch goes through the same guard with its own allow-list, `x402_fetch_allow_hosts`
(finance/outbound_http.py).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Lookup = Callable[[str, int], Awaitable[list[str]]]
# Named for the message; `is_global` refuses them anyway.
METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}


class AddressRefused(ValueError):
    """The URL may not be delivered to; the message says why."""


@dataclass(frozen=True, slots=True)
class AllowList:
    hosts: frozenset[str] = frozenset()
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @classmethod
    def parse(cls, values: Iterable[str]) -> AllowList:
        """Hostnames, addresses and CIDRs (comma-separated in the setting)."""
        hosts: set[str] = set()
        networks = []
        for raw in values:
            value = raw.strip().lower().strip("[]")
            if not value:
                continue
            try:
                networks.append(ipaddress.ip_network(value, strict=False))
            except ValueError:
                hosts.add(value.rstrip("."))
        return cls(frozenset(hosts), tuple(networks))

    def allows(self, host: str, ip: IPAddress | None = None) -> bool:
        if host in self.hosts:
            return True
        return ip is not None and any(ip in net for net in self.networks)


def forbidden(ip: IPAddress) -> str | None:
    """Why `ip` is no place to deliver to, or None when it is global."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return forbidden(ip.ipv4_mapped)
    if ip in METADATA:
        return "a cloud metadata address"
    for what, flag in (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
    ):
        if flag:
            return f"a {what} address"
    return None if ip.is_global else "not a public address"


@dataclass(frozen=True, slots=True)
class Target:
    """A checked URL: where to connect (`ips`, in resolver order) for its `host` and `port`."""

    url: str
    host: str
    port: int
    ips: tuple[str, ...]


def split(url: str) -> tuple[str, int]:
    """The host (lowercase, without brackets) and port of an http(s) URL, or AddressRefused."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise AddressRefused(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise AddressRefused("the scheme must be http or https")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise AddressRefused("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise AddressRefused("the URL may not carry credentials")
    return host, port or (443 if parts.scheme == "https" else 80)


async def system_lookup(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def check(
    url: str, allow: AllowList, lookup: Lookup = system_lookup, *, setting: str = "webhook_allow_hosts"
) -> Target:
    """The URL's target when every address of its host may be delivered to, else AddressRefused. `setting`: the
    allow-list a refusal tells the admin to add the host to (webhooks and outbound x402 fetches have their own)."""
    host, port = split(url)
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        names = [str(literal)]
    else:
        try:
            names = await lookup(host, port)
        except OSError as exc:
            raise AddressRefused(f"the host {host!r} does not resolve ({exc})") from None
        if not names:
            raise AddressRefused(f"the host {host!r} does not resolve")
    for name in names:
        ip = ipaddress.ip_address(name.split("%")[0])  # a scoped IPv6 address names its interface after %
        why = forbidden(ip)
        if why is not None and not allow.allows(host, ip):
            shown = host if literal is not None else f"{host!r} resolves to {ip}, which"
            raise AddressRefused(f"{shown} is {why}; add it to {setting} to allow it")
    return Target(url, host, port, tuple(names))


class PinnedResolver(AbstractResolver):
    """aiohttp's resolver for one delivery: the checked target's host answers its checked addresses, and any other
    name (there is none: redirects are not followed) resolves to nothing."""

    def __init__(self, target: Target) -> None:
        self.target = target

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host.rstrip(".").lower() != self.target.host:
            raise OSError(f"{host!r} was not checked by the address guard")
        out: list[ResolveResult] = []
        for ip in self.target.ips:
            fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
            out.append(_result(host, ip, port or self.target.port, fam))
        return out

    async def close(self) -> None:
        return None


def _result(host: str, ip: str, port: int, family: socket.AddressFamily) -> ResolveResult:
    entry: dict[str, Any] = {
        "hostname": host,
        "host": ip,
        "port": port,
        "family": family,
        "proto": 0,
        "flags": socket.AI_NUMERICHOST,
    }
    return entry  # type: ignore[return-value]
