"""What the dataplane hands to the agent's services for guests, as the vRouter traps to pkt0.

Rules kept here:

* DHCP: any UDP to port 67 from a VM (its source may be 0.0.0.0, the only
  packet that may have it);
* DNS: UDP to port 53 of the VM's network's service address;
* ICMP: an echo request to the network's gateway or service address;
* IPv6 (a dual-stack network): DHCPv6, UDP to port 547 of All DHCP Relay
  Agents and Servers (ff02::1:2) or of the router's link-local address; DNS to
  the IPv6 service address; an ICMPv6 echo request to the IPv6 gateway,
  service address, the router's link-local address fe80::5e00:100 or the
  metadata service's fe80::a9fe:a9fe.
  Neighbour discovery is not trapped here: it never reaches the queues (pkt0).

A trapped packet gets a flow entry of its own (no reverse: the answer leaves
by the agent's frame path, not by the queue), Forward to the agent (VRF 0 in
``flow -l``), counted against the VM's limits like a Drop entry; every packet
of it goes to the services and none to the kernel.  What a VM sends to those
addresses otherwise is not forwarded (No L3 Route).
"""

from __future__ import annotations

import enum
import ipaddress

from dataplane.core.frames import ROUTER_LL6
from dataplane.core.packet import ICMP, ICMP_ECHO, ICMPV6, UDP, Parsed
from dataplane.core.vif import METADATA_SERVICE_IP6, Vif

ANY_SOURCE = bytes(4)
ALL_DHCP6 = bytes.fromhex("ff020000000000000000000000010002")
METADATA_LL6 = ipaddress.IPv6Address(METADATA_SERVICE_IP6).packed
ICMP6_ECHO = 128

Addresses = tuple[bytes, ...]  # (gateway, service address) and, dual stack, (IPv6 gateway, IPv6 service address)


class Trap(enum.IntEnum):
    DHCP = 1
    DNS = 2
    ICMP = 3
    DHCP6 = 4


class TrapTable:
    """Per VRF, the gateway and service addresses the agent answers for."""

    def __init__(self) -> None:
        self.by_vrf: dict[int, Addresses] = {}

    def set(self, vrf: int, *addresses: bytes) -> None:
        self.by_vrf[vrf] = addresses

    def clear(self, vrf: int) -> None:
        self.by_vrf.pop(vrf, None)

    def classify(self, vif: Vif, p: Parsed, pkt: bytes) -> Trap | None:
        """The service ``p`` (from ``vif``) is for, if any."""
        addresses = self.by_vrf.get(vif.vrf)
        if len(p.src) != 4:
            if p.proto == UDP and p.dport == 547 and p.dst in (ALL_DHCP6, ROUTER_LL6):
                return Trap.DHCP6
            if p.proto == ICMPV6 and pkt[p.ihl] == ICMP6_ECHO and p.dst in (ROUTER_LL6, METADATA_LL6):
                return Trap.ICMP
            if addresses is None or len(addresses) < 4:
                return None
            if p.proto == UDP and p.dport == 53 and p.dst == addresses[3]:
                return Trap.DNS
            if p.proto == ICMPV6 and pkt[p.ihl] == ICMP6_ECHO and p.dst in addresses[2:]:
                return Trap.ICMP
            return None
        if p.proto == UDP and p.dport == 67:
            return Trap.DHCP
        if addresses is None:
            return None
        if p.proto == UDP and p.dport == 53 and p.dst == addresses[1]:
            return Trap.DNS
        if p.proto == ICMP and p.dst in addresses[:2] and pkt[p.ihl] == ICMP_ECHO:
            return Trap.ICMP
        return None
