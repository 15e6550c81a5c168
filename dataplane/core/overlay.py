"""The overlay between compute nodes: routes, next hops, MPLS labels, and MPLS over UDP.

Pure, as tf-vrouter's ``vr_route``, ``vr_nexthop`` and ``vr_mpls``.  A VM on
another compute node is reached through a tunnel between the two nodes' vhost0
addresses: its packets leave in an outer IPv4/UDP header to port 6635 with one
MPLS label, the label that the VM's own node gave its interface.  Rules kept
here:

* Next hops: an interface next hop per local VM port (its id is the vif index,
  as the flow keys' K(nh) already are: Encap), vhost0's (id 0: Receive), one
  Drop next hop (id 1), and a Tunnel next hop per other node, with ids from
  ``TUNNEL_NH_BASE`` (past every vif index, which is 16 bits).
* Labels: each local VM interface has one, ``LABEL_BASE`` + its vif index (the
  labels 0-15 are reserved by MPLS), stable across restarts of the agent; a
  label names a local vif, and a packet whose label names none is dropped
  (Invalid Label: counted as Invalid Packet here).
* Routes: per VRF, a local VM's address is a route to its interface next hop;
  a VM on another node is a route to that node's Tunnel next hop with the
  label its node published.  A route is replaced whole (``set_routes``):
  the dataplane then removes the flows of every route that changed or went.
* A tunnel's packets are taken from the fabric only from a node the routes
  name (the outer source is a known vhost0) and only if the inner source is a
  route of the label's VRF through that same tunnel: another node cannot inject
  into a VRF it has no VM in (Invalid Source).
* Encapsulation is a prepared header per flow direction (``Encap``): outer
  IPv4 (TTL 64, DF clear: the fabric's MTU is the operator's, 9000 in the
  emulated cloud), UDP from a source port hashed from the flow (entropy for the
  fabric's ECMP, as the vRouter does) to 6635 with checksum 0, and the label
  with bottom of stack set and TTL 64; per packet only the lengths and the IP
  checksum change.  IPv6 inside too (a dual-stack VM's address is a route
  of its own): the engine sends those through raw sockets, as a queue's
  verdict cannot change a packet's IP family (``fastpath.PacketPath.inject``).
"""

from __future__ import annotations

import ipaddress
import struct
import zlib
from dataclasses import dataclass, field
from typing import NamedTuple

from dataplane.core.vif import Vif

MPLS_UDP_PORT = 6635
LABEL_BASE = 16
RECEIVE_NH = 0
DROP_NH = 1
TUNNEL_NH_BASE = 0x10000
OUTER = 32  # bytes of outer IPv4 (20), UDP (8) and one label (4)
_HEAD = struct.Struct("!BBHHHBBH4s4sHHHHI")  # IPv4, UDP, MPLS
_OUTER = struct.Struct("!2xH2xH1xB2x4s4s2xH4xI")  # total length, fragment field, protocol, addresses, UDP port, label word
_PARTS = struct.Struct("!2sH6sH12sH6s")  # the same, as constant parts around the lengths and the checksum
_IP_CSUM_AT = 10


def label_of(vif_index: int) -> int:
    """The MPLS label of a local VM interface."""
    return LABEL_BASE + vif_index


class Encap:
    """MPLS over UDP to one node with one label: ``apply4`` (and ``apply``, for the general path)
    put the outer headers before a packet, as a NAT ``Patch`` rewrites one.  Per packet, one
    struct call puts the two lengths and the IP checksum between the prepared constant parts."""

    __slots__ = ("src", "dst", "label", "sport", "_base", "_a", "_b", "_c", "_tail")

    def __init__(self, src: bytes, dst: bytes, label: int, sport: int) -> None:
        self.src, self.dst, self.label, self.sport = src, dst, label, sport
        whole = _HEAD.pack(0x45, 0, 0, 0, 0, 64, 17, 0, src, dst, sport, MPLS_UDP_PORT, 0, 0, (label << 12) | 0x100 | 64)
        # the IPv4 header's words with total length and checksum 0: per packet, add the length
        self._base = sum(int.from_bytes(whole[i : i + 2], "big") for i in range(0, 20, 2))
        # the constant parts around the total length (2-3), the IP checksum (10-11) and the UDP length (24-25)
        self._a, self._b, self._c, self._tail = whole[:2], whole[4:10], whole[12:24], whole[26:]

    def header(self, inner_len: int) -> bytes:
        total = inner_len + OUTER
        x = self._base + total
        x = (x & 0xFFFF) + (x >> 16)  # folded twice: ~(x + carry) keeps the low 16 bits right
        return _PARTS.pack(self._a, total, self._b, ~(x + (x >> 16)) & 0xFFFF, self._c, total - 20, self._tail)

    def apply4(self, pkt: bytes) -> bytes:
        total = len(pkt) + OUTER
        x = self._base + total
        x = (x & 0xFFFF) + (x >> 16)
        return _PARTS.pack(self._a, total, self._b, ~(x + (x >> 16)) & 0xFFFF, self._c, total - 20, self._tail) + pkt

    def apply(self, buf: bytearray, ihl: int) -> None:
        buf[:0] = self.header(len(buf))


def entropy_port(key: bytes) -> int:
    """The outer UDP source port of a flow: 49152-65535, from its key."""
    return 49152 | (zlib.crc32(key) & 0x3FFF)


@dataclass(eq=False)
class Tunnel:
    """A next hop to another compute node; ``vif`` stands for the tunnel in flow keys and counts
    (its index is the next hop's id)."""

    nh: int
    node: str
    dst: str  # the other node's vhost0
    vif: Vif = field(repr=False, default=None)  # type: ignore[assignment]
    dst_bytes: bytes = b""

    def __post_init__(self) -> None:
        self.dst_bytes = ipaddress.IPv4Address(self.dst).packed
        if self.vif is None:
            self.vif = Vif(self.nh, "tunnel %s" % self.dst, ip=self.dst, kind="Tunnel")


@dataclass(frozen=True)
class Route:
    """A VM on another node, in a VRF of this one."""

    vrf: int
    ip: str
    node: str
    node_ip: str  # that node's vhost0
    label: int
    mac: str = ""
    port_uuid: str = ""

    @property
    def ip_bytes(self) -> bytes:
        return ipaddress.ip_address(self.ip).packed


class Decapped(NamedTuple):  # a tuple: made for every packet a tunnel brings
    """What a tunnel packet carried: the inner packet, the tunnel it came by, the local vif its label names."""

    inner: bytes
    tunnel: Tunnel
    vif: Vif


class Overlay:
    """Remote routes and the tunnels they use; the labels of the local vifs."""

    def __init__(self, vhost_ip: str) -> None:
        self.vhost_ip = vhost_ip
        self.vhost_bytes = ipaddress.IPv4Address(vhost_ip).packed
        self.routes: dict[tuple[int, bytes], tuple[Route, Tunnel]] = {}
        self.tunnels: dict[bytes, Tunnel] = {}  # by the other node's vhost0
        self.by_nh: dict[int, Tunnel] = {}
        self.by_label: dict[int, Vif] = {}  # the local vifs, by label
        self._next_nh = TUNNEL_NH_BASE

    # -- labels ---------------------------------------------------------------------------------

    def add_vif(self, vif: Vif) -> None:
        self.by_label[label_of(vif.index)] = vif

    def remove_vif(self, vif: Vif) -> None:
        if self.by_label.get(label_of(vif.index)) is vif:
            del self.by_label[label_of(vif.index)]

    # -- routes ---------------------------------------------------------------------------------

    def set_routes(self, routes: list[Route]) -> set[tuple[int, bytes]]:
        """Replace the remote routes; return the (VRF, address) of each route that changed or
        went (their flows must go).  Tunnels no route uses any more go too; a tunnel keeps its
        next hop id while some route uses it."""
        new: dict[tuple[int, bytes], Route] = {}
        for r in routes:
            if r.node_ip == self.vhost_ip:
                continue  # this node's own, published by itself: its routes are its vifs
            new[(r.vrf, r.ip_bytes)] = r
        changed = {k for k, (r, _) in self.routes.items() if new.get(k) != r}
        changed |= {k for k in new if k not in self.routes}
        wanted = {ipaddress.IPv4Address(r.node_ip).packed: r.node for r in new.values()}
        for ip in [ip for ip in self.tunnels if ip not in wanted]:
            del self.by_nh[self.tunnels.pop(ip).nh]
        for ip, node in wanted.items():
            old = self.tunnels.get(ip)
            if old is None:
                t = Tunnel(self._free_nh(), node, str(ipaddress.IPv4Address(ip)))
                self.tunnels[ip] = self.by_nh[t.nh] = t
            else:
                old.node = node
        self.routes = {k: (r, self.tunnels[ipaddress.IPv4Address(r.node_ip).packed]) for k, r in new.items()}
        return changed

    def _free_nh(self) -> int:
        while self._next_nh in self.by_nh:
            self._next_nh += 1
        nh, self._next_nh = self._next_nh, self._next_nh + 1
        return nh

    def route(self, vrf: int, ip: bytes) -> tuple[Route, Tunnel] | None:
        return self.routes.get((vrf, ip))

    def encap_to(self, route: Route, tunnel: Tunnel, key: bytes) -> Encap:
        return Encap(self.vhost_bytes, tunnel.dst_bytes, route.label, entropy_port(key))

    # -- the fabric's packets ---------------------------------------------------------------------

    def decap(self, pkt: bytes) -> Decapped | None:
        """An MPLS over UDP packet from the fabric: what it carries, or None (dropped: not from a
        known node, not to our port, a label stack of more than one, a label of no local vif,
        or truncated)."""
        if len(pkt) < OUTER + 20 or pkt[0] != 0x45:
            return None
        total, frag, proto, src, dst, dport, word = _OUTER.unpack_from(pkt)
        if proto != 17 or frag & 0x3FFF or dport != MPLS_UDP_PORT or dst != self.vhost_bytes or not word & 0x100 or total > len(pkt):
            return None  # not MPLS over UDP to us, a fragment, or not one label (bottom of stack)
        tunnel = self.tunnels.get(src)
        if tunnel is None:
            return None
        vif = self.by_label.get(word >> 12)
        if vif is None:
            return None
        return Decapped(pkt[OUTER:total], tunnel, vif)
