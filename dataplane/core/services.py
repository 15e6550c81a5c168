"""The link-local service table, as flow set-up reads it.

A link-local service maps (ip, port) in 169.254.0.0/16 to a service on the
fabric.  Rules kept here:

* any service whose name contains "metadata" (compared lowercased) is the
  metadata service: its flows go to the local proxy, not to its fabric address
  (which is where the proxy sends the request);
* over IPv6 a service answers at its address in the low 32 bits of
  fe80::a9fe:0:0/96, as the metadata service at fe80::a9fe:a9fe (169.254.169.254):
  169.254.169.123 is fe80::a9fe:a97b; such a flow goes to one of the
  service's IPv6 fabric addresses (none: no route; there is no NAT between the
  families);
* a service given by a DNS name uses what the name last resolved to; with
  several fabric addresses one is picked at random per flow (of the flow's
  family); 127.0.0.1 means the compute node itself (vhost0's address: a VM's
  packet cannot be routed to loopback), as ::1 does for IPv6.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass

from dataplane.core.packet import TCP, UDP
from dataplane.core.vif import METADATA_SERVICE_IP6

_MD6 = ipaddress.IPv6Address(METADATA_SERVICE_IP6).packed
LL_SERVICE6 = _MD6[:12]  # fe80::a9fe:0:0/96 without its last 32 bits: a service's IPv4 address goes there


def service_ip4(dst: bytes) -> bytes | None:
    """The IPv4 link-local address an IPv6 destination stands for (fe80::a9fe:a97b: 169.254.169.123), or None."""
    if len(dst) == 4:
        return dst
    return dst[12:] if dst[:12] == LL_SERVICE6 and dst[12] == 169 and dst[13] == 254 else None


def service_ip6(ip: str) -> str:
    """A service's IPv6 address, as a VM reaches it over IPv6 (169.254.169.123: fe80::a9fe:a97b)."""
    return str(ipaddress.IPv6Address(LL_SERVICE6 + ipaddress.IPv4Address(ip).packed))


@dataclass(frozen=True)
class LinkLocalService:
    """A link-local service: (ip, port) in 169.254.0.0/16 mapped to a fabric service."""

    name: str
    ip: str
    port: int
    fabric_ips: tuple[str, ...] = ()
    fabric_port: int = 0
    fabric_dns_name: str = ""

    @property
    def is_metadata(self) -> bool:
        """Any service whose name contains "metadata" goes to the local proxy."""
        return "metadata" in self.name.lower()

    @property
    def key(self) -> tuple[bytes, int]:
        return ipaddress.IPv4Address(self.ip).packed, self.port


class LinkLocalTable:
    """Services by (link-local address, port), and what fabric DNS names resolved to."""

    def __init__(self, vhost_ip: str) -> None:
        self.vhost_ip = vhost_ip
        self.by_key: dict[tuple[bytes, int], LinkLocalService] = {}
        self.resolved: dict[str, tuple[str, ...]] = {}  # fabric DNS name -> addresses

    def replace(self, services: list[LinkLocalService]) -> set[tuple[bytes, int]]:
        """Take ``services`` as the whole table; return the keys whose service went or changed."""
        new = {s.key: s for s in services}
        gone = {k for k, s in self.by_key.items() if new.get(k) != s}
        self.by_key = new
        return gone

    def find(self, dst: bytes, proto: int, dport: int) -> LinkLocalService | None:
        """The service a VM's packet to ``dst``:``dport`` is for, if any (TCP and UDP only)."""
        if proto != TCP and proto != UDP:
            return None
        ip4 = service_ip4(dst)
        return None if ip4 is None else self.by_key.get((ip4, dport))

    def answers_at(self, ip4: bytes) -> bool:
        """Whether some service has this (IPv4) link-local address."""
        return any(k[0] == ip4 for k in self.by_key)

    def fabric_ips(self, service: LinkLocalService) -> tuple[str, ...]:
        """A service's fabric addresses: as configured, or what its DNS name resolved to."""
        return service.fabric_ips or self.resolved.get(service.fabric_dns_name, ())

    def pick_fabric_ip(self, service: LinkLocalService, v6: bool = False, vhost_ip6: str = "") -> str | None:
        """The fabric address (of the flow's family) for one new flow of ``service``, or None if
        it has none (yet)."""
        ips = [ip for ip in self.fabric_ips(service) if (":" in ip) == v6]
        if not ips:
            return None
        ip = random.choice(ips) if len(ips) > 1 else ips[0]
        if v6:
            return (vhost_ip6 or None) if ip == "::1" else ip
        return self.vhost_ip if ip.startswith("127.") else ip
