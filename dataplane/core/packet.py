"""IPv4 and IPv6 header parsing for the per-packet path: a few struct reads, no object trees.

``parse`` returns the flow key fields of a packet or raises ``Malformed``
naming what is wrong.  Checksums are not verified here: the kernel verifies
what is delivered locally, and a VM's corrupt packet to another VM is the
other VM's business, as on a real wire.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

TCP = 6
UDP = 17
ICMP = 1
ICMPV6 = 58

ICMP_ECHO_REPLY = 0
ICMP_ECHO = 8

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_ACK = 0x10

_V4 = struct.Struct("!BxHHHBBH4s4s")
_V6 = struct.Struct("!IHBB16s16s")
_PORTS = struct.Struct("!HH")
# an IPv4 header of 20 bytes and the ports after it (total length, fragment field, protocol, addresses, ports)
FAST4 = struct.Struct("!2xH2xH1xB2x4s4sHH")


class Malformed(ValueError):
    """The packet cannot be forwarded as it is; the message says why."""


class Parsed(NamedTuple):
    ihl: int  # IP header length in bytes: where the L4 header starts
    proto: int
    src: bytes
    dst: bytes
    sport: int  # ICMP echo: the identifier
    dport: int
    tcp_flags: int
    length: int  # IP total length


def parse(pkt: bytes) -> Parsed:
    """The key fields of an IPv4 or IPv6 packet, or Malformed."""
    n = len(pkt)
    if n < 20:
        raise Malformed("shorter than an IPv4 header")
    vihl, total, _ident, frag, _ttl, proto, _csum, src, dst = _V4.unpack_from(pkt, 0)
    if vihl >> 4 != 4:
        if vihl >> 4 == 6:
            return parse6(pkt)
        raise Malformed("not IPv4 or IPv6")
    ihl = (vihl & 0xF) * 4
    if ihl < 20 or ihl > n:
        raise Malformed("bad IHL")
    if total < ihl or total > n:
        raise Malformed("bad total length")
    if frag & 0x3FFF:
        # MF set or a non-zero offset: ports are not in every fragment, so the flow key is
        # unknown.  Documented rule: fragments are dropped (counted as Invalid Packet).
        raise Malformed("IP fragment")
    return _l4(pkt, ihl, proto, src, dst, total)


def fast4(pkt: bytes) -> Parsed | None:
    """The key fields of the common packet, IPv4 with a 20-byte header carrying TCP or UDP, in one
    struct call; None for any other (``parse`` then decides, and says what is wrong)."""
    n = len(pkt)
    if n < 28 or pkt[0] != 0x45:
        return None
    total, frag, proto, src, dst, sport, dport = FAST4.unpack_from(pkt)
    if frag & 0x3FFF or total > n:
        return None
    if proto == TCP:
        if total < 40 or not 5 <= pkt[32] >> 4 <= (total - 20) // 4:
            return None
        return Parsed(20, TCP, src, dst, sport, dport, pkt[33], total)
    if proto == UDP and total >= 28:
        return Parsed(20, UDP, src, dst, sport, dport, 0, total)
    return None


# IPv6 extension headers walked to find the transport header: hop-by-hop options (only first),
# destination options, and a routing header with no segments left (this node is its destination's
# last hop: a VM beyond it is the packet's destination); a fragment header, a routing header with
# segments left, or more than MAX_EXT of them are Malformed (dropped, Invalid Packet), as IPv4
# fragments are.  The ebpf program walks the same (tests/test_ebpf_program.py compares them).
HOP_BY_HOP, ROUTING, FRAGMENT, DEST_OPTS = 0, 43, 44, 60
MAX_EXT = 4


def parse6(pkt: bytes) -> Parsed:
    """The key fields of an IPv6 packet, its extension headers walked (``ihl`` is where the
    transport header starts); a packet whose last next header is not TCP, UDP or ICMPv6 keeps
    ports 0."""
    n = len(pkt)
    if n < 40:
        raise Malformed("shorter than an IPv6 header")
    _vtf, plen, proto, _hlim, src, dst = _V6.unpack_from(pkt, 0)
    total = 40 + plen
    if total > n:
        raise Malformed("bad payload length")
    off = 40
    if proto in (HOP_BY_HOP, ROUTING, FRAGMENT, DEST_OPTS):
        for i in range(MAX_EXT + 1):
            if proto == FRAGMENT:
                raise Malformed("IPv6 fragment")
            if proto not in (HOP_BY_HOP, ROUTING, DEST_OPTS):
                break
            if i == MAX_EXT:
                raise Malformed("more than %d IPv6 extension headers" % MAX_EXT)
            if proto == HOP_BY_HOP and i:
                raise Malformed("hop-by-hop options not first")
            if off + 8 > total:
                raise Malformed("truncated IPv6 extension header")
            if proto == ROUTING and pkt[off + 3]:
                raise Malformed("IPv6 routing header with segments left")
            proto, off = pkt[off], off + (pkt[off + 1] + 1) * 8
        if off > total:
            raise Malformed("truncated IPv6 extension header")
    if proto == ICMPV6:
        if total - off < 8:
            raise Malformed("truncated ICMPv6 header")
        if pkt[off] in (128, 129):  # echo request / reply
            (ident,) = struct.unpack_from("!H", pkt, off + 4)
            return Parsed(off, proto, src, dst, ident, 0, 0, total)
        return Parsed(off, proto, src, dst, 0, 0, 0, total)
    return _l4(pkt, off, proto, src, dst, total)


def _l4(pkt: bytes, ihl: int, proto: int, src: bytes, dst: bytes, total: int) -> Parsed:
    if proto == TCP:
        if total - ihl < 20:
            raise Malformed("truncated TCP header")
        sport, dport = _PORTS.unpack_from(pkt, ihl)
        doff = pkt[ihl + 12] >> 4
        if doff < 5 or ihl + doff * 4 > total:
            raise Malformed("bad TCP data offset")
        return Parsed(ihl, proto, src, dst, sport, dport, pkt[ihl + 13], total)
    if proto == UDP:
        if total - ihl < 8:
            raise Malformed("truncated UDP header")
        sport, dport = _PORTS.unpack_from(pkt, ihl)
        return Parsed(ihl, proto, src, dst, sport, dport, 0, total)
    if proto == ICMP:
        if total - ihl < 8:
            raise Malformed("truncated ICMP header")
        itype = pkt[ihl]
        if itype in (ICMP_ECHO, ICMP_ECHO_REPLY):
            (ident,) = struct.unpack_from("!H", pkt, ihl + 4)
            return Parsed(ihl, proto, src, dst, ident, 0, 0, total)
        return Parsed(ihl, proto, src, dst, 0, 0, 0, total)
    return Parsed(ihl, proto, src, dst, 0, 0, 0, total)
