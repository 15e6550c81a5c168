"""The agent's IPv6 services for a dual-stack network's guests: neighbour discovery, router
advertisements, DHCPv6 and ICMPv6 echo, as the vRouter agent's ``icmpv6_handler`` and
``dhcpv6_handler`` answer them.

Rules kept here:

* Neighbour solicitations (read as frames by pkt0, never queued) are answered
  with the vRouter MAC for the network's IPv6 gateway and service address, for
  any other VM of the VRF, on this node or behind a tunnel, and for the
  link-local services' addresses (fe80::a9fe:x:y); a VM's own address and
  other link-local addresses are not (the kernel on the tap answers for the
  router's fe80::5e00:100 and the metadata service's fe80::a9fe:a9fe).  At
  most ``ND_RATE`` answers a second per VM (a burst of ``ND_BURST``), to
  neighbour and router solicitations together: the rest are dropped and counted
  (ND Rate Limit), so that a flood of solicitations costs the node little and
  moves nobody else's traffic.
* What a VM may not say is dropped and counted (``nd_forged``, Invalid
  Source): a router advertisement or a redirect, and a neighbour advertisement
  for an address that is not its own (the gateway's, another VM's).  Nothing a
  VM advertises changes the node's neighbour entries (they are permanent).
* A malformed message (RFC 4861's validation, ``frames6.parse_nd``) is dropped
  and counted (Invalid ND); so is a malformed DHCPv6 message (Invalid DHCPv6).
* Router advertisements carry the flags of the network's address mode
  (``frames6.router_advertisement_frame``): every ``ra_interval``, when a port is
  plugged, and at once for a solicitation.  A port with an IPv6 address in a
  network without an IPv6 subnet gets its address's /64 in mode ``none``.
* DHCPv6 (``dhcpv6``) is answered from the router's link-local address, only in
  the dhcpv6-stateful and dhcpv6-stateless modes.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable
from typing import Protocol

from dataplane.core.dataplane import Dataplane
from dataplane.core.frames import ALL_NODES6, ALL_NODES_MAC, ROUTER_LL6, VROUTER_MAC, mac_bytes
from dataplane.core.frames6 import (
    NA,
    NS,
    RA,
    REDIRECT,
    RS,
    Nd,
    icmp6_echo_reply_frame,
    neighbor_advertisement_frame,
    parse_nd,
    router_advertisement_frame,
)
from dataplane.core.packet import Malformed
from dataplane.core.services import service_ip4
from dataplane.core.traps import METADATA_LL6
from dataplane.core.vif import Vif
from flows.layout import DropReason
from infra.trace import TraceBuffer
from vrouter.messages.control import ServiceCounters
from vrouter.model import Network, Port
from vrouter.services import dhcpv6

log = logging.getLogger("vrouter.services")

ND_RATE = 100.0  # answers to solicitations a second, per VM
ND_BURST = 200
_LINK_LOCAL = bytes.fromhex("fe80000000000000")
_DHCP6_COUNTERS = {dhcpv6.SOLICIT: "dhcp6_solicit", dhcpv6.REQUEST: "dhcp6_request", dhcpv6.CONFIRM: "dhcp6_confirm", dhcpv6.RENEW: "dhcp6_renew",
                   dhcpv6.REBIND: "dhcp6_rebind", dhcpv6.RELEASE: "dhcp6_release", dhcpv6.DECLINE: "dhcp6_decline",
                   dhcpv6.INFORMATION_REQUEST: "dhcp6_information_request", dhcpv6.ADVERTISE: "dhcp6_advertise",
                   dhcpv6.REPLY: "dhcp6_reply"}  # fmt: skip


class Directory(Protocol):
    def port_of(self, vif_index: int) -> Port | None: ...

    def network_of(self, vn_uuid: str) -> Network | None: ...


class Services(Protocol):
    """What the IPv6 half asks of ``guests.GuestServices``: its sending, counters and lookups."""

    @property
    def dataplane(self) -> Dataplane: ...

    @property
    def directory(self) -> Directory: ...

    @property
    def stats(self) -> ServiceCounters: ...

    @property
    def traces(self) -> dict[str, TraceBuffer]: ...

    def out(self, vif: Vif, frame: bytes) -> None: ...

    def drop(self, reason: DropReason, vif: Vif) -> None: ...

    def udp_frame(self, dst_mac: bytes, src: bytes, dst: bytes, sport: int, dport: int, data: bytes) -> bytes: ...


class _Bucket:
    __slots__ = ("tokens", "at")

    def __init__(self, now: float) -> None:
        self.tokens, self.at = float(ND_BURST), now

    def take(self, now: float) -> bool:
        self.tokens = min(float(ND_BURST), self.tokens + (now - self.at) * ND_RATE)
        self.at = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class Ipv6Services:
    """The IPv6 half of ``GuestServices`` (which owns the sending, the counters and the lookups)."""

    def __init__(self, services: Services, lease_time: int, domain: str) -> None:
        self.s = services
        self.dhcp = dhcpv6.Dhcp6Server(VROUTER_MAC, lease_time, domain)
        self._buckets: dict[int, _Bucket] = {}
        self.clock: Callable[[], float] = time.monotonic

    # -- neighbour discovery --------------------------------------------------------------------

    def on_nd(self, frame: bytes, vif: Vif, port: Port) -> None:
        """A neighbour discovery frame from ``vif``'s tap."""
        s = self.s
        try:
            nd = parse_nd(frame)
        except Malformed as e:
            s.drop(DropReason.INVALID_ND, vif)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("vif0/%d: ND: %s", vif.index, e)
            return
        if nd.kind == RS:
            s.stats.router_solicitations += 1
            if self._take(vif):
                self.advertise(vif)
        elif nd.kind == NS:
            s.stats.neighbor_solicitations += 1
            self._solicited(nd, vif, port)
        elif nd.kind == NA:
            # its own address, or a link-local one but the router's and the metadata service's
            # (fe80::5e00:100, fe80::a9fe:a9fe: interface ids that no MAC makes)
            own = nd.target == vif.ip6_bytes or (nd.target[:8] == _LINK_LOCAL and nd.target[8:12] != bytes(4))
            if not own:
                self._forged(vif)
        elif nd.kind in (RA, REDIRECT):
            self._forged(vif)

    def _forged(self, vif: Vif) -> None:
        self.s.stats.nd_forged += 1
        self.s.drop(DropReason.INVALID_SOURCE, vif)

    def _solicited(self, nd: Nd, vif: Vif, port: Port) -> None:
        target = nd.target
        if target == vif.ip6_bytes:
            return  # its own (a duplicate address probe)
        if target[:8] == _LINK_LOCAL:  # link-local: only a link-local service's (fe80::a9fe:x:y) is the agent's
            ip4 = service_ip4(target)
            if target == METADATA_LL6 or ip4 is None or not self.s.dataplane.services.answers_at(ip4):
                return  # (the kernel on the tap answers for the metadata service's and the router's)
            self._answer(nd, vif)
            return
        net = self.s.directory.network_of(port.vn_uuid)
        if self._answers_for(target, vif, net):
            self._answer(nd, vif)

    def _take(self, vif: Vif) -> bool:
        """One answer of the VM's rate (solicitations of either kind); False, counted, past it."""
        bucket = self._buckets.get(vif.index)
        now = self.clock()
        if bucket is None:
            bucket = self._buckets[vif.index] = _Bucket(now)
        if bucket.take(now):
            return True
        self.s.drop(DropReason.ND_RATE, vif)
        return False

    def _answer(self, nd: Nd, vif: Vif) -> None:
        if not self._take(vif):
            return
        self.s.stats.neighbor_advertisements += 1
        self.s.out(vif, neighbor_advertisement_frame(nd, VROUTER_MAC, True))

    def _answers_for(self, target: bytes, vif: Vif, net: Network | None) -> bool:
        if net is not None and net.subnet6 and target in (ipaddress.IPv6Address(net.gateway6).packed, ipaddress.IPv6Address(net.dns_server6).packed):
            return True
        dp = self.s.dataplane
        other = dp.vif_table.by_ip.get((vif.vrf, target))
        return (other is not None and other is not vif) or (vif.vrf, target) in dp.overlay.routes

    # -- router advertisements ------------------------------------------------------------------

    def advertise(self, vif: Vif) -> None:
        """A router advertisement on ``vif``'s tap, if its port is dual stack."""
        if not vif.ifindex:
            return
        port = self.s.directory.port_of(vif.index)
        net = self.s.directory.network_of(port.vn_uuid) if port is not None else None
        if net is not None and net.subnet6:
            prefix, mode = ipaddress.IPv6Network(net.subnet6), net.ipv6_mode
            dns: tuple[bytes, ...] = (ipaddress.IPv6Address(net.dns_server6).packed,)
        elif vif.ip6:
            prefix, mode, dns = ipaddress.IPv6Network(vif.ip6 + "/64", strict=False), "none", ()
        else:
            return
        ra = router_advertisement_frame(ALL_NODES_MAC, ALL_NODES6, prefix.network_address.packed, prefix.prefixlen, mode,
                                        net.mtu if net is not None else 0, dns_servers=dns)  # fmt: skip
        self.s.stats.router_advertisements += 1
        self.s.out(vif, ra)

    # -- trapped packets ------------------------------------------------------------------------

    def dhcp6(self, pkt: bytes, l4: int, vif: Vif, port: Port) -> None:
        """A DHCPv6 message (``pkt`` the IPv6 packet, UDP at ``l4``) from ``vif``."""
        s = self.s
        net = s.directory.network_of(port.vn_uuid)
        subnet = None
        if net is not None and net.subnet6:
            subnet = dhcpv6.Subnet6(net.ipv6_mode, net.subnet6, (net.dns_server6,), net.domain)
        end = 40 + int.from_bytes(pkt[4:6], "big")
        sport = int.from_bytes(pkt[l4 : l4 + 2], "big")
        client = dhcpv6.Client6(port.uuid, mac_bytes(port.mac), port.ipv6_address, port.vm_name)
        try:
            kind, reply = self.dhcp.handle(pkt[l4 + 8 : end], client, subnet, self.clock())
        except Malformed as e:
            s.drop(DropReason.INVALID_DHCP6, vif)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("vif0/%d: DHCPv6: %s", vif.index, e)
            return
        self._count(kind)
        trace = s.traces["Dhcpv6"]
        trace.add("DHCPv6 %s received on interface : %s Mac : %s" % (_DHCP6_COUNTERS.get(kind, "dhcp6_%d" % kind)[6:], vif.name, port.mac))
        if reply is None:
            return
        self._count(reply[0])
        trace.add("DHCPv6 response sent; message = %s; ip = %s" % (_DHCP6_COUNTERS.get(reply[0], "dhcp6_?")[6:], port.ipv6_address or "-"))
        if reply[0] == dhcpv6.REPLY and kind in (dhcpv6.REQUEST, dhcpv6.SOLICIT):
            log.info("DHCPv6: %s (vif0/%d) has %s", port.vm_name or port.uuid, vif.index, port.ipv6_address or "no address (stateless)")
        s.out(vif, s.udp_frame(mac_bytes(port.mac), ROUTER_LL6, pkt[8:24], dhcpv6.SERVER_PORT, sport, reply))

    def _count(self, kind: int) -> None:
        name = _DHCP6_COUNTERS.get(kind)
        if name:
            setattr(self.s.stats, name, getattr(self.s.stats, name) + 1)

    def echo(self, pkt: bytes, l4: int, vif: Vif, port: Port) -> None:
        self.s.stats.icmp_echo_replies += 1
        self.s.out(vif, icmp6_echo_reply_frame(mac_bytes(port.mac), pkt, l4))
