"""The vif table: the vRouter's interfaces, as the dataplane sees them.

A vif is one interface of the vRouter: vif0/0 is vhost0 (in this emulation
both the compute node's own stack and its link to the fabric), VM ports start
at vif0/3 as on a real compute node (1 and 2 are vhost0 and pkt0 there).

Rules kept here:

* a vif is found by its index, by the kernel ifindex of its tap (the interface
  a packet came in on: 0 is the compute node itself, that is vhost0), and by
  (VRF, address) for forwarding between VMs;
* a port plugged again with the same address and VRF (a re-created tap) is the
  same vif: it keeps its object, counters and flows, and only its ifindex,
  name and MACs change.
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


@dataclass(eq=False)  # compared by identity: flows hold their vifs
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
    linklocal_flows: int = 0  # link-local flow pairs to the fabric this vif holds (not metadata's)
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

    @property
    def nh(self) -> int:
        return self.index

    @property
    def metadata_ip(self) -> str:
        return metadata_ip(self.index)

    @property
    def metadata_ip6(self) -> str:
        return metadata_ip6(self.index)


class VifTable:
    """The vifs by index, by the ifindex of their tap, and by (VRF, address): IPv4 and IPv6."""

    def __init__(self, vhost_ip: str) -> None:
        self.host = Vif(HOST_VIF, "vhost0", ip=vhost_ip, kind="Host")
        self.by_index: dict[int, Vif] = {HOST_VIF: self.host}
        self.by_ifindex: dict[int, Vif] = {}
        self.by_name: dict[str, Vif] = {}  # tap name -> vif (the frames of pkt0 come named)
        self.by_ip: dict[tuple[int, bytes], Vif] = {}

    def set_host_ifindex(self, ifindex: int) -> None:
        """vhost0's ifindex: replies from the fabric to NATed link-local flows come in there."""
        self.by_ifindex.pop(self.host.ifindex, None)
        self.host.ifindex = ifindex
        if ifindex:
            self.by_ifindex[ifindex] = self.host

    def add(self, vif: Vif) -> None:
        """A new vif (its index must be free)."""
        self.by_index[vif.index] = vif
        self._index(vif)

    def replug(self, old: Vif, new: Vif) -> None:
        """The same port plugged again (same address and VRF): ``old`` takes ``new``'s tap."""
        self._unindex(old)
        old.ifindex, old.name, old.mac, old.port_uuid = new.ifindex, new.name, new.mac, new.port_uuid
        old.ip6, old.ip6_bytes = new.ip6, new.ip6_bytes
        self._index(old)

    def remove(self, index: int) -> Vif | None:
        vif = self.by_index.pop(index, None)
        if vif is not None:
            self._unindex(vif)
        return vif

    def _index(self, vif: Vif) -> None:
        self.by_name[vif.name] = vif
        if vif.ifindex:
            self.by_ifindex[vif.ifindex] = vif
        if vif.ip:
            self.by_ip[(vif.vrf, vif.ip_bytes)] = vif
        if vif.ip6:
            self.by_ip[(vif.vrf, vif.ip6_bytes)] = vif

    def _unindex(self, vif: Vif) -> None:
        if self.by_name.get(vif.name) is vif:
            del self.by_name[vif.name]
        if self.by_ifindex.get(vif.ifindex) is vif:
            del self.by_ifindex[vif.ifindex]
        for ip in (vif.ip_bytes, vif.ip6_bytes):
            if ip and self.by_ip.get((vif.vrf, ip)) is vif:
                del self.by_ip[(vif.vrf, ip)]
