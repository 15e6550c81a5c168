"""The link-local service table, as flow set-up reads it.

A link-local service maps (ip, port) in 169.254.0.0/16 to a service on the
fabric.  Rules kept here:

* any service whose name contains "metadata" (compared lowercased) is the
  metadata service: its flows go to the local proxy, not to its fabric address
  (which is where the proxy sends the request);
* over IPv6 the metadata service answers at fe80::a9fe:a9fe on its port;
* a service given by a DNS name uses what the name last resolved to; with
  several fabric addresses one is picked at random per flow; 127.0.0.1 means
  the compute node itself (vhost0's address: a VM's packet cannot be routed to
  loopback).
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass

from dataplane.core.packet import TCP, UDP
from dataplane.core.vif import METADATA_SERVICE_IP6

_MD6 = ipaddress.IPv6Address(METADATA_SERVICE_IP6).packed


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
        if len(dst) == 4:
            return self.by_key.get((dst, dport))
        if dst != _MD6:
            return None
        for s in self.by_key.values():
            if s.is_metadata and s.port == dport:
                return s
        return None

    def fabric_ips(self, service: LinkLocalService) -> tuple[str, ...]:
        """A service's fabric addresses: as configured, or what its DNS name resolved to."""
        return service.fabric_ips or self.resolved.get(service.fabric_dns_name, ())

    def pick_fabric_ip(self, service: LinkLocalService) -> str | None:
        """The fabric address for one new flow of ``service``, or None if it has none (yet)."""
        ips = self.fabric_ips(service)
        if not ips:
            return None
        ip = random.choice(ips) if len(ips) > 1 else ips[0]
        return self.vhost_ip if ip.startswith("127.") else ip
