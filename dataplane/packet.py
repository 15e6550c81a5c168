"""IPv4 header parsing for the per-packet path: a few struct reads, no object trees.

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

ICMP_ECHO_REPLY = 0
ICMP_ECHO = 8

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_ACK = 0x10

_V4 = struct.Struct("!BxHHHBBH4s4s")
_PORTS = struct.Struct("!HH")


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
    """The key fields of an IPv4 packet, or Malformed."""
    n = len(pkt)
    if n < 20:
        raise Malformed("shorter than an IPv4 header")
    vihl, total, _ident, frag, _ttl, proto, _csum, src, dst = _V4.unpack_from(pkt, 0)
    if vihl >> 4 != 4:
        raise Malformed("not IPv4")
    ihl = (vihl & 0xF) * 4
    if ihl < 20 or ihl > n:
        raise Malformed("bad IHL")
    if total < ihl or total > n:
        raise Malformed("bad total length")
    if frag & 0x3FFF:
        # MF set or a non-zero offset: ports are not in every fragment, so the flow key is
        # unknown.  Documented rule: fragments are dropped (counted as Invalid Packet).
        raise Malformed("IP fragment")
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
