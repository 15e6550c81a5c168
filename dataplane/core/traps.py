"""What the dataplane hands to the agent's services for guests, as the vRouter traps to pkt0.

Rules kept here:

* DHCP: any UDP to port 67 from a VM (its source may be 0.0.0.0, the only
  packet that may have it);
* DNS: UDP to port 53 of the VM's network's service address;
* ICMP: an echo request to the network's gateway or service address.

A trapped packet gets a flow entry of its own (no reverse: the answer leaves
by the agent's frame path, not by the queue), Forward to the agent (VRF 0 in
``flow -l``), counted against the VM's limits like a Drop entry; every packet
of it goes to the services and none to the kernel.  What a VM sends to those
addresses otherwise is not forwarded (No L3 Route).
"""

from __future__ import annotations

import enum

from dataplane.core.packet import ICMP, ICMP_ECHO, UDP, Parsed
from dataplane.core.vif import Vif

ANY_SOURCE = bytes(4)


class Trap(enum.IntEnum):
    DHCP = 1
    DNS = 2
    ICMP = 3


class TrapTable:
    """Per VRF, the gateway and service addresses the agent answers for."""

    def __init__(self) -> None:
        self.by_vrf: dict[int, tuple[bytes, bytes]] = {}  # vrf -> (gateway, service address)

    def set(self, vrf: int, gateway: bytes, service: bytes) -> None:
        self.by_vrf[vrf] = (gateway, service)

    def clear(self, vrf: int) -> None:
        self.by_vrf.pop(vrf, None)

    def classify(self, vif: Vif, p: Parsed, pkt: bytes) -> Trap | None:
        """The service ``p`` (from ``vif``) is for, if any.  IPv4 only."""
        if len(p.src) != 4:
            return None
        if p.proto == UDP and p.dport == 67:
            return Trap.DHCP
        addresses = self.by_vrf.get(vif.vrf)
        if addresses is None:
            return None
        if p.proto == UDP and p.dport == 53 and p.dst == addresses[1]:
            return Trap.DNS
        if p.proto == ICMP and p.dst in addresses and pkt[p.ihl] == ICMP_ECHO:
            return Trap.ICMP
        return None
