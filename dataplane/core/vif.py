"""The vif table and the link-local service table, as the dataplane sees them.

A vif is one interface of the vRouter: vif0/0 is vhost0 (in this emulation
both the compute node's own stack and its link to the fabric), VM ports start
at vif0/3 as on a real compute node (1 and 2 are vhost0 and pkt0 there).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

HOST_VIF = 0
FIRST_VM_VIF = 3
METADATA_SERVICE_IP = "169.254.169.254"
METADATA_SERVICE_IP6 = "fe80::a9fe:a9fe"
# IPv6 metadata addresses: the proxy listens on ::1 of this prefix, each port's is ::<vif index>
METADATA_NET6 = ipaddress.IPv6Network("fd00:a9fe:a9fe::/64")
PROXY_IP6 = str(METADATA_NET6.network_address + 1)
LINK_LOCAL6 = bytes.fromhex("fe80000000000000")


def metadata_ip(vif_index: int) -> str:
    """The per-port metadata IP: 169.254.0.0 + (interface id & 0xFFFF)."""
    return str(ipaddress.IPv4Address(int(ipaddress.IPv4Address("169.254.0.0")) + (vif_index & 0xFFFF)))


def metadata_ip6(vif_index: int) -> str:
    """The per-port IPv6 metadata address: fd00:a9fe:a9fe:: + interface id."""
    return str(METADATA_NET6.network_address + (vif_index & 0xFFFF))


@dataclass
class Vif:
    """One vRouter interface. ``nh`` is the interface nexthop used in flow keys (K(nh))."""

    index: int
    name: str  # OS name, e.g. tap0f1e2d3c4b5
    ifindex: int = 0  # kernel ifindex in the compute namespace; 0 while the tap is absent
    ip: str = ""
    mac: str = ""
    vrf: int = 0
    kind: str = "Virtual"  # Virtual (a VM port) or Host (vhost0)
    port_uuid: str = ""
    rx_packets: int = 0
    rx_bytes: int = 0
    tx_packets: int = 0
    tx_bytes: int = 0
    drops: int = 0
    flows: int = 0  # flow entries this vif holds (a pair counts 2 for each VM in it)
    linklocal_flows: int = 0  # link-local flow pairs this vif holds
    flow_limited: bool = False  # over max_vm_flows: new flows dropped until use falls to 90%
    ip6: str = ""  # the port's IPv6 address, if it has one (its link-local fe80::/64 is always allowed)
    ip_bytes: bytes = field(default=b"", repr=False)
    ip6_bytes: bytes = field(default=b"", repr=False)
    metadata_ip_bytes: bytes = field(default=b"", repr=False)
    metadata_ip6_bytes: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        self.ip_bytes = ipaddress.IPv4Address(self.ip).packed if self.ip else b""
        self.ip6_bytes = ipaddress.IPv6Address(self.ip6).packed if self.ip6 else b""
        self.metadata_ip_bytes = ipaddress.IPv4Address(self.metadata_ip).packed
        self.metadata_ip6_bytes = ipaddress.IPv6Address(self.metadata_ip6).packed

    def copy_counters(self, old: Vif) -> None:
        """Carry counters over when the same port is plugged again (a re-created tap)."""
        for name in ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "drops", "flows", "linklocal_flows", "flow_limited"):
            setattr(self, name, getattr(old, name))

    @property
    def nh(self) -> int:
        return self.index

    @property
    def metadata_ip(self) -> str:
        return metadata_ip(self.index)

    @property
    def metadata_ip6(self) -> str:
        return metadata_ip6(self.index)


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
