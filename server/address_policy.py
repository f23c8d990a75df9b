"""Which network addresses keystate may connect to when it registers a deployment (SSRF guard).

A deployment's address is classified as one of `ADDRESS_CLASSES`; the policy allows whole classes
(by name) and any CIDR ranges. The default, `loopback,public`, serves local development and
deployments on public addresses; private networks, link-local addresses (cloud metadata at
169.254.169.254) and everything else need an explicit entry. `GuardedResolver` checks every address
a hostname resolves to, so the address checked is the address aiohttp connects to.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp.abc import AbstractResolver, ResolveResult

from .errors import MetaError

__all__ = [
    "ADDRESS_CLASSES",
    "ALLOW_ENV",
    "DEFAULT_ALLOW",
    "AddressNotAllowed",
    "AddressPolicy",
    "GuardedResolver",
    "address_class",
    "literal_address",
]

ALLOW_ENV = "KEYSTATE_DEPLOYMENT_ALLOW"
DEFAULT_ALLOW = "loopback,public"
ADDRESS_CLASSES = ("loopback", "private", "link-local", "unspecified", "multicast", "reserved", "public")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Checked in order; the first match names the class. Anything else that is not globally routable is
# "reserved" (documentation, benchmarking, 240/4, broadcast, ...).
_CLASS_NETWORKS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # 0.0.0.0/8: Linux connects "this network" addresses to the local host.
    ("unspecified", ("0.0.0.0/8", "::/128")),
    ("loopback", ("127.0.0.0/8", "::1/128")),
    ("link-local", ("169.254.0.0/16", "fe80::/10")),
    ("multicast", ("224.0.0.0/4", "ff00::/8")),
    # RFC 1918, carrier-grade NAT (internal in many clouds), unique-local and deprecated site-local IPv6.
    ("private", ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7", "fec0::/10")),
)
_NETWORKS = tuple((name, tuple(ipaddress.ip_network(n) for n in nets)) for name, nets in _CLASS_NETWORKS)


def address_class(address: IPAddress) -> str:
    """The class of `address`: one of `ADDRESS_CLASSES`. An IPv4-mapped IPv6 address counts as its IPv4."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for name, networks in _NETWORKS:
        if any(address.version == net.version and address in net for net in networks):
            return name
    return "public" if address.is_global else "reserved"


class AddressNotAllowed(MetaError):
    """A deployment address is outside the allowed classes and ranges."""

    def __init__(self, message: str, address: IPAddress, klass: str) -> None:
        super().__init__(message)
        self.address = address
        self.klass = klass


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """Allowed address classes (names from `ADDRESS_CLASSES`) and CIDR ranges."""

    classes: frozenset[str] = frozenset({"loopback", "public"})
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, text: str) -> AddressPolicy:
        """From `CLASS|CIDR[,CLASS|CIDR...]`, e.g. `loopback,10.1.0.0/16`; `none` allows nothing."""
        classes: set[str] = set()
        networks: list[IPNetwork] = []
        for item in (part.strip() for part in text.split(",")):
            if not item or item == "none":
                continue
            if item in ADDRESS_CLASSES:
                classes.add(item)
                continue
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError as exc:
                raise MetaError(
                    f"{ALLOW_ENV} / --deployment-allow entry {item!r} is neither an address class "
                    f"({', '.join(ADDRESS_CLASSES)}) nor a CIDR range like 10.1.0.0/16; "
                    f"give a comma-separated list such as {DEFAULT_ALLOW},10.1.0.0/16"
                ) from exc
        return cls(frozenset(classes), tuple(networks))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AddressPolicy:
        """`$KEYSTATE_DEPLOYMENT_ALLOW`, or `loopback,public` when unset or empty."""
        text = (os.environ if environ is None else environ).get(ALLOW_ENV, "").strip()
        return cls.parse(text or DEFAULT_ALLOW)

    def check(self, address: IPAddress, target: str) -> None:
        """Raise `AddressNotAllowed` unless `address` (that `target` resolved to) is allowed."""
        klass = address_class(address)
        plain = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped else address
        if klass in self.classes or any(plain.version == n.version and plain in n for n in self.networks):
            return
        raise AddressNotAllowed(
            f"the deployment at {target} is at {address}, {'an' if klass[0] in 'aeiou' else 'a'} {klass} address, which this server does not "
            f"connect to for registration; if that deployment is yours, allow it with --deployment-allow or "
            f"{ALLOW_ENV} (a comma-separated list of classes and CIDR ranges, default {DEFAULT_ALLOW}; "
            f"e.g. {DEFAULT_ALLOW},{_suggested_range(plain)})",
            address,
            klass,
        )

    def describe(self) -> str:
        """The policy as the setting would spell it."""
        items = [c for c in ADDRESS_CLASSES if c in self.classes] + [str(n) for n in self.networks]
        return ",".join(items) or "none"


def _suggested_range(address: IPAddress) -> str:
    return str(ipaddress.ip_network(f"{address}/{32 if address.version == 4 else 128}"))


def literal_address(host: str) -> IPAddress | None:
    """The address `host` spells (brackets of IPv6 URLs removed), or None for a name."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


class GuardedResolver(AbstractResolver):
    """Resolves once and returns only addresses the policy allows; refuses the name if any is not.

    aiohttp connects to exactly the addresses a connector's resolver returns, so a name that
    resolves to another address on a second lookup (DNS rebinding) is never connected to unchecked.
    """

    def __init__(self, policy: AddressPolicy, target: str) -> None:
        self._policy = policy
        self._target = target

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, family=family, flags=socket.AI_ADDRCONFIG)
        results: list[ResolveResult] = []
        for fam, _, proto, _, sockaddr in infos:
            address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
            self._policy.check(address, self._target)
            results.append(
                ResolveResult(hostname=host, host=str(sockaddr[0]), port=int(sockaddr[1]), family=fam, proto=proto,
                              flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV)
            )
        if not results:
            raise OSError(f"{host} resolved to no address")
        return results

    async def close(self) -> None:
        return None
