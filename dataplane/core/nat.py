"""NAT rewrites of IPv4 and IPv6 TCP/UDP packets, prepared once per flow and applied per packet.

A ``Rewrite`` is built when a flow is set up, from the original and the new
addresses and ports.  Because those are fixed for the life of the flow, the
change each checksum needs (RFC 1624: HC' = ~(~HC + ~m + m')) is a constant
too, computed once; per packet the rewrite copies 12 bytes and adds two
constants into two checksums.  What the packets need is the rewrite's
``Patch``, which is all the dataplane keeps per flow.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import NamedTuple

from dataplane.core.packet import TCP, UDP

_H = struct.Struct("!H")
_HH = struct.Struct("!HH")
# IPv4 with a 20-byte header: the IP checksum (10) and the TCP (36) or UDP (26) checksum
_CSUMS_TCP4 = struct.Struct("!10xH24xH")
_CSUMS_UDP4 = struct.Struct("!10xH14xH")
_CSUM_ADDRS_PORTS4 = struct.Struct("!H8s4s")  # bytes 10-24: IP checksum, addresses, ports


def _words(data: bytes) -> list[int]:
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


def _fold(x: int) -> int:
    while x >> 16:
        x = (x & 0xFFFF) + (x >> 16)
    return x


def csum_delta(old: bytes, new: bytes) -> int:
    """The ones'-complement sum of ~old + new over 16-bit words (same, even length), folded to
    16 bits (1..0xFFFF; 0 only when every ~old and new word is 0).

    Computed on the whole strings at once: as 2**16 = 1 (mod 0xFFFF), a string read as one big
    number is congruent to the sum of its words, and each ~o is 0xFFFF - o."""
    if len(old) != len(new) or len(old) % 2:
        raise ValueError("csum_delta needs two strings of the same, even length")
    if not old.strip(b"\xff") and not new.strip(b"\0"):
        return 0  # every term is 0
    return (int.from_bytes(new, "big") - int.from_bytes(old, "big") - 1) % 0xFFFF + 1


def apply_delta(checksum: int, delta: int) -> int:
    """RFC 1624 eqn. 3: the checksum after words changed by ``delta``."""
    return ~_fold((~checksum & 0xFFFF) + delta) & 0xFFFF


def internet_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    return ~_fold(sum(_words(data))) & 0xFFFF


class Patch(NamedTuple):
    """What each packet of a NAT flow needs: the new addresses and ports and the constant changes
    of the checksums.  The dataplane keeps this per flow, not the ``Rewrite`` it came from (nine
    fields more, with their own ints and bytes): it halves the memory of a NAT entry."""

    proto: int
    ip_delta: int
    l4_delta: int
    addrs: bytes  # new source + destination address
    ports: bytes  # new source + destination port

    def apply4(self, pkt: bytes) -> bytes:
        """The rewritten copy of ``pkt``, an IPv4 packet of this rewrite's protocol (TCP or UDP)
        whose header is 20 bytes, long enough for its L4 header: ``apply`` for the common case
        of the per-packet path, two struct reads and two writes.  The checksum arithmetic is
        ``apply_delta``'s with one fold, which is enough: both terms are at most 0xFFFF."""
        buf = bytearray(pkt)
        if self.proto == TCP:
            ipc, l4c = _CSUMS_TCP4.unpack_from(pkt)
            x = (~l4c & 0xFFFF) + self.l4_delta
            _H.pack_into(buf, 36, ~((x & 0xFFFF) + (x >> 16)) & 0xFFFF)
        else:
            ipc, l4c = _CSUMS_UDP4.unpack_from(pkt)
            if l4c:  # 0: the sender computed no checksum; leave it so
                x = (~l4c & 0xFFFF) + self.l4_delta
                _H.pack_into(buf, 26, (~((x & 0xFFFF) + (x >> 16)) & 0xFFFF) or 0xFFFF)
        x = (~ipc & 0xFFFF) + self.ip_delta
        _CSUM_ADDRS_PORTS4.pack_into(buf, 10, ~((x & 0xFFFF) + (x >> 16)) & 0xFFFF, self.addrs, self.ports)
        return bytes(buf)

    def apply(self, pkt: bytearray, ihl: int) -> None:
        """Rewrite ``pkt`` (an IPv4 packet whose header is ``ihl`` bytes, or IPv6: 40) in place."""
        if len(self.addrs) == 8:
            pkt[12:20] = self.addrs
            pkt[10:12] = _H.pack(apply_delta(_H.unpack_from(pkt, 10)[0], self.ip_delta))
        else:  # IPv6: no header checksum
            pkt[8:40] = self.addrs
        pkt[ihl : ihl + 4] = self.ports
        if self.proto == TCP:
            c = ihl + 16
            pkt[c : c + 2] = _H.pack(apply_delta(_H.unpack_from(pkt, c)[0], self.l4_delta))
        elif self.proto == UDP:
            c = ihl + 6
            old = _H.unpack_from(pkt, c)[0]
            if old or len(self.addrs) == 32:  # IPv4 0: the sender computed no checksum; leave it so
                new = apply_delta(old, self.l4_delta)
                pkt[c : c + 2] = _H.pack(new or 0xFFFF)


@dataclass(slots=True)  # not frozen: a frozen dataclass sets its fields through object.__setattr__,
class Rewrite:  # and two are made for every NAT flow set up; nothing changes one once made
    """Turn (src, dst, sport, dport) into (nsrc, ndst, nsport, ndport) for protocol ``proto``;
    made at flow set-up, and ``patch`` is what is kept for the flow's packets."""

    proto: int
    src: bytes
    dst: bytes
    sport: int
    dport: int
    nsrc: bytes
    ndst: bytes
    nsport: int
    ndport: int
    patch: Patch = field(init=False)

    def __post_init__(self) -> None:
        old_a, new_a = self.src + self.dst, self.nsrc + self.ndst
        new_p = _HH.pack(self.nsport, self.ndport)
        ip_delta = csum_delta(old_a, new_a)
        # TCP/UDP checksums cover the pseudo-header addresses and the ports
        l4_delta = _fold(ip_delta + csum_delta(_HH.pack(self.sport, self.dport), new_p))
        self.patch = Patch(self.proto, ip_delta, l4_delta, new_a, new_p)

    def apply4(self, pkt: bytes) -> bytes:
        return self.patch.apply4(pkt)

    def apply(self, pkt: bytearray, ihl: int) -> None:
        self.patch.apply(pkt, ihl)

    def inverse(self) -> Rewrite:
        """The rewrite for the reply direction: undoes this one."""
        return Rewrite(self.proto, self.ndst, self.nsrc, self.ndport, self.nsport, self.dst, self.src, self.dport, self.sport)
