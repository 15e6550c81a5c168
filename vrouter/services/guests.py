"""The agent's services for guests, wired to the dataplane's traps and to pkt0.

What a guest learns from its node comes through here, as on a vRouter compute
node where the agent answers from pkt0: the dataplane traps DHCP, DNS to the
service address and ICMP echo to the gateway (``dataplane.core.traps``) and
hands them to ``on_trap``; ARP and IPv6 neighbour discovery come as frames
from the taps (``dataplane.linux.pkt0``) to ``on_frame``; the answers leave as
frames out of the VM's tap, from the vRouter MAC, counted as the vif's TX.
What each service answers is its own module's (``dhcp``, ``dns``, ``arp``, and
for IPv6 ``ipv6`` with ``dhcpv6``); this one finds the port and the network a
packet is about, counts, and sends.

Router advertisements go on each IPv6 port's tap every ``ra_interval``
seconds, when it is plugged, and when the guest solicits one.  DNS is answered
over IPv6 too, at a dual-stack network's IPv6 service address.  DNS queries for
names outside the network go to the fabric's resolvers, if the agent has some,
from vhost0; an answer that does not come within 3 s is SERVFAIL.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from dataplane.core.capture import RX, TX
from dataplane.core.dataplane import Dataplane
from dataplane.core.frames import ETH_ARP, icmp_echo_reply_frame, ipv4_udp_frame, mac_bytes, parse_arp
from dataplane.core.frames6 import NA, is_nd, udp6_frame
from dataplane.core.packet import Malformed
from dataplane.core.traps import Trap
from dataplane.core.vif import Vif
from flows.layout import DropReason
from infra.trace import TraceBuffer
from vrouter.messages.control import ServiceCounters
from vrouter.model import Network, Port
from vrouter.services import arp, dhcp, dns
from vrouter.services.ipv6 import Ipv6Services

log = logging.getLogger("vrouter.services")

DNS_TIMEOUT = 3.0
_DHCP_NAMES = {dhcp.DISCOVER: "discover", dhcp.REQUEST: "request", dhcp.INFORM: "inform", dhcp.RELEASE: "release", dhcp.DECLINE: "decline",
               dhcp.OFFER: "DHCP Offer", dhcp.ACK: "DHCP Ack", dhcp.NAK: "DHCP Nak"}  # fmt: skip
_DHCP_COUNTERS = {dhcp.DISCOVER: "dhcp_discover", dhcp.REQUEST: "dhcp_request", dhcp.INFORM: "dhcp_inform", dhcp.RELEASE: "dhcp_release",
                  dhcp.DECLINE: "dhcp_decline", dhcp.OFFER: "dhcp_offer", dhcp.ACK: "dhcp_ack", dhcp.NAK: "dhcp_nak"}  # fmt: skip


class Directory(Protocol):
    """What the services ask the agent: the port of a vif, a network's IPAM, a network's names."""

    def port_of(self, vif_index: int) -> Port | None: ...

    def network_of(self, vn_uuid: str) -> Network | None: ...

    def zone_of(self, vn_uuid: str) -> dns.Zone: ...


@dataclass
class Settings:
    """agent.conf's [SERVICES]."""

    dhcp_lease_time: int = dhcp.INFINITE
    dns_domain: str = "novalocal"
    dns_forwarders: tuple[str, ...] = ()
    ra_interval: float = 30.0


@dataclass
class _Pending:
    """A query forwarded to the fabric."""

    vif: Vif
    client_ip: bytes
    client_port: int
    service_ip: bytes
    query_id: int
    deadline: float
    query: bytes = field(repr=False, default=b"")


class GuestServices:
    def __init__(self, dataplane: Dataplane, directory: Directory, settings: Settings, send: Callable[[str, bytes], bool]) -> None:
        self.dataplane = dataplane
        self.directory = directory
        self.settings = settings
        self._send = send
        self.captures = dataplane.captures
        self.stats = ServiceCounters()
        # the exchanges, as the vRouter agent's Dhcp and Dhcpv6 trace buffers keep them (introspect)
        self.traces = {"Dhcp": TraceBuffer("Dhcp", 1000, "DhcpTrace"), "Dhcpv6": TraceBuffer("Dhcpv6", 1000, "Dhcpv6Trace")}
        self.dhcp = dhcp.DhcpServer(settings.dhcp_lease_time, settings.dns_domain)
        self.v6 = Ipv6Services(self, settings.dhcp_lease_time, settings.dns_domain)
        self._pending: dict[int, _Pending] = {}
        self._dns_sock: socket.socket | None = None
        dataplane.path.on_trap = self.on_trap

    # -- sending --------------------------------------------------------------------------------

    def out(self, vif: Vif, frame: bytes) -> None:
        if vif.ifindex and self._send(vif.name, frame):
            vif.tx_packets += 1
            vif.tx_bytes += len(frame) - 14  # as the dataplane counts: IP bytes
            if self.captures.by_vif:
                self.captures.frame(vif, TX, frame)

    def drop(self, reason: DropReason, vif: Vif) -> None:
        self.dataplane.path.drop(reason, vif)

    @staticmethod
    def udp_frame(dst_mac: bytes, src: bytes, dst: bytes, sport: int, dport: int, data: bytes) -> bytes:
        """A UDP datagram from the vRouter to a guest, over IPv4 or IPv6 as its addresses are."""
        if len(src) == 16:
            return udp6_frame(dst_mac, src, dst, sport, dport, data)
        return ipv4_udp_frame(dst_mac, src, dst, sport, dport, data)

    # -- trapped packets ------------------------------------------------------------------------

    def on_trap(self, trap: Trap, pkt: bytes, vif: Vif, ihl: int) -> None:
        """A packet the dataplane trapped for us (counted as the vif's RX already)."""
        port = self.directory.port_of(vif.index)
        if port is None:
            return
        try:
            if trap is Trap.DHCP:
                self._dhcp(pkt, ihl, vif, port)
            elif trap is Trap.DNS:
                self._dns(pkt, ihl, vif, port)
            elif trap is Trap.DHCP6:
                self.v6.dhcp6(pkt, ihl, vif, port)
            elif trap is Trap.ICMP and pkt[0] >> 4 == 6:
                self.v6.echo(pkt, ihl, vif, port)
            elif trap is Trap.ICMP:
                self.stats.icmp_echo_replies += 1
                self.out(vif, icmp_echo_reply_frame(mac_bytes(port.mac), pkt, ihl))
        except Malformed as e:
            reason = {Trap.DHCP: DropReason.INVALID_DHCP, Trap.DNS: DropReason.INVALID_DNS, Trap.DHCP6: DropReason.INVALID_DHCP6}.get(
                trap, DropReason.INVALID_PACKET
            )
            self.drop(reason, vif)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("vif0/%d: %s", vif.index, e)

    def _dhcp(self, pkt: bytes, ihl: int, vif: Vif, port: Port) -> None:
        net = self.directory.network_of(port.vn_uuid)
        if net is not None and not net.dhcp:
            return  # DHCP off in this network: the agent answers nothing
        client = dhcp.Client(port.uuid, mac_bytes(port.mac), port.ip_address, port.vm_name)
        kind, reply = self.dhcp.handle(pkt[ihl + 8 :], client, net, time.monotonic())
        self._count_dhcp(kind)
        trace = self.traces["Dhcp"]
        trace.add("DHCP %s received on interface : %s Mac : %s" % (_DHCP_NAMES.get(kind, "message %d" % kind), vif.name, port.mac))
        if reply is None:
            return
        self._count_dhcp(reply.kind)
        trace.add("DHCP response sent; message = %s; ip = %s" % (_DHCP_NAMES.get(reply.kind, "?"), port.ip_address))
        if reply.kind == dhcp.ACK and kind == dhcp.REQUEST:
            log.info("DHCP: %s (vif0/%d) has %s", port.vm_name or port.uuid, vif.index, port.ip_address)
        self.out(vif, ipv4_udp_frame(reply.dst_mac, reply.src, reply.dst, 67, 68, reply.payload))

    def _count_dhcp(self, kind: int) -> None:
        name = _DHCP_COUNTERS.get(kind)
        if name:
            setattr(self.stats, name, getattr(self.stats, name) + 1)

    def _dns(self, pkt: bytes, ihl: int, vif: Vif, port: Port) -> None:
        sport = struct.unpack_from("!H", pkt, ihl)[0]
        if pkt[0] >> 4 == 6:
            end, src, dst = 40 + struct.unpack_from("!H", pkt, 4)[0], pkt[8:24], pkt[24:40]
        else:
            end, src, dst = struct.unpack_from("!H", pkt, 2)[0], pkt[12:16], pkt[16:20]
        payload = pkt[ihl + 8 : end]
        query = dns.parse(payload)
        self.stats.dns_queries += 1
        outcome, response = dns.answer(query, self.directory.zone_of(port.vn_uuid), bool(self.settings.dns_forwarders))
        self._count_dns(outcome)
        if outcome is dns.Outcome.FORWARD:
            self._forward(payload, query.id, vif, src, sport, dst)
            return
        self.out(vif, self.udp_frame(mac_bytes(port.mac), dst, src, 53, sport, response))

    def _count_dns(self, outcome: dns.Outcome) -> None:
        name = "dns_" + {dns.Outcome.ANSWERED: "answered", dns.Outcome.NXDOMAIN: "nxdomain", dns.Outcome.REFUSED: "refused",
                         dns.Outcome.NOTIMP: "notimp", dns.Outcome.FORWARD: "forwarded"}[outcome]  # fmt: skip
        setattr(self.stats, name, getattr(self.stats, name) + 1)

    # -- DNS forwarding -------------------------------------------------------------------------

    def _forward(self, payload: bytes, query_id: int, vif: Vif, client_ip: bytes, client_port: int, service_ip: bytes) -> None:
        sock = self._dns_sock
        if sock is None:
            return
        new_id = random.getrandbits(16)
        while new_id in self._pending:
            new_id = random.getrandbits(16)
        self._pending[new_id] = _Pending(vif, client_ip, client_port, service_ip, query_id, time.monotonic() + DNS_TIMEOUT, payload)
        server = random.choice(self.settings.dns_forwarders)
        try:
            sock.sendto(struct.pack("!H", new_id) + payload[2:], (server, 53))
        except OSError as e:
            log.warning("DNS: cannot forward to %s: %s", server, e)

    def _from_forwarder(self) -> None:
        assert self._dns_sock is not None
        while True:
            try:
                data, _ = self._dns_sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if len(data) < 12:
                continue
            p = self._pending.pop(struct.unpack_from("!H", data)[0], None)
            if p is None:
                continue
            self._relay(p, struct.pack("!H", p.query_id) + data[2:])

    def _relay(self, p: _Pending, response: bytes) -> None:
        port = self.directory.port_of(p.vif.index)
        if port is not None:
            self.out(p.vif, self.udp_frame(mac_bytes(port.mac), p.service_ip, p.client_ip, 53, p.client_port, response))

    def _expire(self, now: float) -> None:
        for qid in [q for q, p in self._pending.items() if p.deadline < now]:
            p = self._pending.pop(qid)
            # SERVFAIL: the query's header and question, with QR and RA set and rcode 2
            flags = struct.unpack_from("!H", p.query, 2)[0] | 0x8080
            self._relay(p, struct.pack("!HH", p.query_id, (flags & ~0xF) | dns.SERVFAIL) + p.query[4:])

    # -- frames from the taps -------------------------------------------------------------------

    def on_frame(self, ifname: str, frame: bytes) -> None:
        """ARP or neighbour discovery from a tap."""
        vif = self.dataplane.vif_table.by_name.get(ifname)
        if vif is None or vif is self.dataplane.host:
            return
        nd = is_nd(frame)
        # A neighbour advertisement answers the compute kernel's own solicitation (which only the
        # nfqueue datapath makes: the ebpf one rewrites after the kernel chose the MAC), not the
        # agent: not the vif's RX, so that both datapaths count alike.  A forged one is a drop.
        if not (nd and frame[54] == NA):
            vif.rx_packets += 1
            vif.rx_bytes += max(0, len(frame) - 14)
        if self.captures.by_vif:
            self.captures.frame(vif, RX, frame)
        port = self.directory.port_of(vif.index)
        if port is None:
            return
        if len(frame) >= 14 and frame[12:14] == ETH_ARP.to_bytes(2, "big"):
            self._arp(frame, vif, port)
        elif nd:
            self.v6.on_nd(frame, vif, port)

    def _arp(self, frame: bytes, vif: Vif, port: Port) -> None:
        try:
            msg = parse_arp(frame)
        except Malformed:
            self.drop(DropReason.INVALID_ARP, vif)
            return
        self.stats.arp_requests += msg.op == 1
        net = self.directory.network_of(port.vn_uuid)
        vm_ip = vif.ip_bytes
        by_ip = self.dataplane.vif_table.by_ip
        remote = self.dataplane.overlay.routes

        def answers_for(ip: bytes) -> bool:
            if net is None:
                return True  # not configured yet: every address but the VM's own, as proxy ARP did
            other = by_ip.get((vif.vrf, ip))
            return (
                ip in (ipaddress.IPv4Address(net.gateway).packed, ipaddress.IPv4Address(net.dns_server).packed)
                or (other is not None and other is not vif)
                or (vif.vrf, ip) in remote  # a VM of the network on another node: behind the tunnel
            )

        outcome, reply = arp.answer(msg, vm_ip, answers_for)
        if outcome is arp.Outcome.FORGED:
            self.drop(DropReason.INVALID_SOURCE, vif)
        elif reply is not None:
            self.stats.arp_replies += 1
            self.out(vif, reply)

    # -- router advertisements ------------------------------------------------------------------

    def advertise(self, vif: Vif) -> None:
        """A router advertisement on ``vif``'s tap, if its port has IPv6."""
        self.v6.advertise(vif)

    # -- running --------------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop, vhost_ip: str) -> None:
        if self.settings.dns_forwarders:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setblocking(False)
            s.bind((vhost_ip, 0))
            self._dns_sock = s
            loop.add_reader(s.fileno(), self._from_forwarder)

    async def run(self) -> None:
        """Router advertisements every ra_interval; forwarded queries that time out."""
        next_ra = 0.0
        while True:
            now = time.monotonic()
            if now >= next_ra:
                for vif in list(self.dataplane.vifs.values()):
                    if vif is not self.dataplane.host:
                        self.advertise(vif)
                next_ra = now + self.settings.ra_interval
            self._expire(now)
            await asyncio.sleep(1.0)

    def stop(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._dns_sock is not None:
            loop.remove_reader(self._dns_sock.fileno())
            self._dns_sock.close()
            self._dns_sock = None
