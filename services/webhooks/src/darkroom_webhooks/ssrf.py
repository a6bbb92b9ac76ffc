"""SSRF guard: webhook targets must be public addresses, checked at connect time.

aiohttp connects to the addresses the resolver returns, so vetting them in the resolver pins the
connection to the vetted address: a DNS answer that changes between check and connect (rebinding)
cannot slip through.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Beyond what ipaddress flags as private/reserved: carrier-grade NAT and cloud metadata services.
_EXTRA_BLOCKED = [
    ipaddress.ip_network(n)
    for n in (
        "100.64.0.0/10",
        "169.254.169.254/32",
        "fd00:ec2::254/128",
        "192.0.0.0/24",
        "198.18.0.0/15",
    )
]


class BlockedAddress(OSError):
    """The target resolves only to addresses webhooks may not reach."""


def parse_networks(items: list[str]) -> list[Network]:
    return [ipaddress.ip_network(item, strict=False) for item in items]


# IPv6 prefixes that carry an IPv4 address a router will reach (NAT64 well-known prefix).
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# Teredo hides the client address it tunnels to: never a webhook target.
_TEREDO = ipaddress.ip_network("2001::/32")


def is_blocked(address: str, allowed: list[Network]) -> bool:
    ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if any(net.version == 6 and ip in net for net in allowed):
            return False
        if ip in _TEREDO:
            return True
        # The IPv4 address inside decides: 2002:7f00:1::/48 (6to4) is 127.0.0.1.
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip.sixtofour is not None:
            ip = ip.sixtofour
        elif ip in _NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if any(ip.version == net.version and ip in net for net in allowed):
        return False
    return (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global
        or any(ip.version == n.version and ip in n for n in _EXTRA_BLOCKED)
    )


def check_literal(host: str, allowed: list[Network]) -> None:
    """aiohttp skips the resolver for IP literals, so those are checked before connecting."""
    try:
        ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return
    if is_blocked(host.strip("[]"), allowed):
        raise BlockedAddress(f"{host} is not a public address")


class GuardedResolver(AbstractResolver):
    def __init__(self, allowed: list[Network]) -> None:
        self._inner = DefaultResolver()
        self._allowed = allowed

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        # One answer whether the name does not resolve or resolves only to addresses webhooks
        # may not reach: telling them apart would let a token probe internal names.
        refused = BlockedAddress(f"{host} does not resolve to a public address")
        try:
            results = await self._inner.resolve(host, port, family)
        except OSError:
            raise refused from None
        vetted = [r for r in results if not is_blocked(r["host"], self._allowed)]
        if not vetted:
            raise refused
        return vetted

    async def close(self) -> None:
        await self._inner.close()


def blocked_cause(exc: BaseException) -> BlockedAddress | None:
    seen: set[int] = set()
    current: Any = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, BlockedAddress):
            return current
        seen.add(id(current))
        current = getattr(current, "os_error", None) or current.__cause__ or current.__context__
    return None
