"""The IPv6 frames the agent reads from a guest's tap and sends to it: neighbour discovery,
router advertisements, DHCPv6's UDP and ICMPv6 echo replies.

Pure: bytes in, bytes out.  ``parse_nd`` validates a router or neighbour solicitation or
advertisement (or a redirect) as RFC 4861 sections 6.1 and 7.1 ask before a node acts on
one: hop limit 255, code 0, a correct ICMPv6 checksum, a message long enough for its type
whose options each have a non-zero length and end inside it, an IPv6 payload length that is
the frame's, and the rules on targets, the unspecified source and the Solicited flag; else it
raises ``Malformed`` naming the rule broken.  The builders answer as the vRouter agent does
(tf-controller's ``icmpv6_handler.cc``): from the vRouter MAC 00:00:5e:00:01:00 and its
link-local address fe80::5e00:100, with IPv6 headers and checksums made here.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import NamedTuple

from dataplane.core.frames import ALL_NODES6, ALL_NODES_MAC, ETH_IP6, ROUTER_LL6, VROUTER_MAC, ethernet, mac_bytes
from dataplane.core.nat import internet_checksum
from dataplane.core.packet import ICMPV6, UDP, Malformed

RS, RA, NS, NA, REDIRECT = 133, 134, 135, 136, 137
MODES = ("none", "slaac", "dhcpv6-stateful", "dhcpv6-stateless")

ECHO_REQUEST6, ECHO_REPLY6 = 128, 129
NA_ROUTER, NA_SOLICITED, NA_OVERRIDE = 0x80, 0x40, 0x20
RA_MANAGED, RA_OTHER = 0x80, 0x40
PREFIX_ON_LINK, PREFIX_AUTONOMOUS = 0x80, 0x40
OPT_SOURCE_LLADDR, OPT_TARGET_LLADDR, OPT_PREFIX, OPT_MTU, OPT_RDNSS = 1, 2, 3, 5, 25
# radvd's defaults: AdvValidLifetime, AdvPreferredLifetime, AdvRDNSSLifetime (2 x MaxRtrAdvInterval)
VALID_LIFETIME, PREFERRED_LIFETIME, RDNSS_LIFETIME = 86400, 14400, 1200

UNSPECIFIED6 = bytes(16)
_SOLICITED_PREFIX = bytes.fromhex("ff0200000000000000000001ff")
_LINK_LOCAL_PREFIX = bytes.fromhex("fe80000000000000")
_ETH_LEN, _IP6_LEN = 14, 40
_IP6 = struct.Struct("!IHBB16s16s")
_UDP = struct.Struct("!HHHH")
# the fixed part of each message, before its options (RFC 4861 section 4)
_FIXED = {RS: 8, RA: 16, NS: 24, NA: 24, REDIRECT: 40}
# the link-layer address option each message's ``lladdr`` comes from
_LLADDR_OPTION = {RS: OPT_SOURCE_LLADDR, RA: OPT_SOURCE_LLADDR, NS: OPT_SOURCE_LLADDR, NA: OPT_TARGET_LLADDR, REDIRECT: OPT_TARGET_LLADDR}
_RA_FLAGS = {
    # mode: (the RA's M/O byte, the prefix option's flags)
    "none": (0, PREFIX_ON_LINK),
    "slaac": (0, PREFIX_ON_LINK | PREFIX_AUTONOMOUS),
    "dhcpv6-stateful": (RA_MANAGED | RA_OTHER, PREFIX_ON_LINK),
    "dhcpv6-stateless": (RA_OTHER, PREFIX_ON_LINK | PREFIX_AUTONOMOUS),
}


class Nd(NamedTuple):
    """A validated neighbour discovery message and the frame it came in."""

    kind: int  # RS, RA, NS, NA, REDIRECT
    src: bytes  # IPv6 source, 16 bytes
    dst: bytes  # IPv6 destination, 16 bytes
    target: bytes  # NS/NA/redirect target (16 bytes), b"" for RS/RA
    lladdr: bytes  # the source (RS/NS/RA) or target (NA/redirect) link-layer address option, 6 bytes, or b""
    flags: int  # NA: the R/S/O bits (the first byte of the reserved word); RA: M/O byte; else 0
    src_mac: bytes  # the Ethernet source


def is_multicast6(address: bytes) -> bool:
    return address[:1] == b"\xff"


def solicited_node(address: bytes) -> bytes:
    """The solicited-node multicast address of ``address``: ff02::1:ff and its last 3 bytes."""
    return _SOLICITED_PREFIX + address[13:16]


def multicast_mac(address: bytes) -> bytes:
    """The Ethernet address of an IPv6 multicast address: 33:33 and its last 4 bytes (RFC 2464)."""
    return b"\x33\x33" + address[12:16]


def _checksum6(src: bytes, dst: bytes, proto: int, message: bytes) -> int:
    return internet_checksum(src + dst + struct.pack("!I3xB", len(message), proto) + message)


def is_nd(frame: bytes) -> bool:
    """An Ethernet frame holding IPv6 whose next header is ICMPv6 (no extension headers) with a
    type of 133-137: cheap, no validation."""
    return (
        len(frame) > _ETH_LEN + _IP6_LEN
        and frame[12:14] == b"\x86\xdd"
        and frame[_ETH_LEN + 6] == ICMPV6
        and RS <= frame[_ETH_LEN + _IP6_LEN] <= REDIRECT
    )


def _lladdr(kind: int, message: bytes) -> bytes:
    """The message's link-layer address option, after checking that every option is well formed."""
    found = b""
    offset = _FIXED[kind]
    while offset < len(message):
        if offset + 2 > len(message):
            raise Malformed("ND option header past the end of the message")
        otype, olen = message[offset], message[offset + 1] * 8
        if olen == 0:
            raise Malformed("ND option %d of length 0" % otype)
        if offset + olen > len(message):
            raise Malformed("ND option %d runs past the end of the message" % otype)
        if otype == _LLADDR_OPTION[kind] and not found:
            if olen != 8:
                raise Malformed("ND link-layer address option of %d bytes, not 8 (Ethernet)" % olen)
            found = message[offset + 2 : offset + 8]
        offset += olen
    return found


def parse_nd(frame: bytes) -> Nd:
    """The neighbour discovery message in an Ethernet frame, validated per RFC 4861, or Malformed
    naming the rule it breaks."""
    if len(frame) < _ETH_LEN + _IP6_LEN + 4:
        raise Malformed("shorter than an IPv6 ICMPv6 frame")
    _dst_mac, src_mac, ethertype = struct.unpack_from("!6s6sH", frame)
    vtcfl, plen, nxt, hlim, src, dst = _IP6.unpack_from(frame, _ETH_LEN)
    if ethertype != ETH_IP6 or vtcfl >> 28 != 6:
        raise Malformed("not IPv6")
    if nxt != ICMPV6:
        raise Malformed("next header %d, not ICMPv6" % nxt)
    if plen != len(frame) - _ETH_LEN - _IP6_LEN:
        raise Malformed("IPv6 payload length %d, not the frame's %d" % (plen, len(frame) - _ETH_LEN - _IP6_LEN))
    message = frame[_ETH_LEN + _IP6_LEN :]
    kind, code = message[0], message[1]
    if kind not in _FIXED:
        raise Malformed("ICMPv6 type %d is not neighbour discovery" % kind)
    if hlim != 255:
        raise Malformed("ND hop limit %d, not 255" % hlim)
    if code != 0:
        raise Malformed("ND code %d, not 0" % code)
    if _checksum6(src, dst, ICMPV6, message) != 0:
        raise Malformed("ICMPv6 checksum wrong")
    if len(message) < _FIXED[kind]:
        raise Malformed("ICMPv6 type %d of %d bytes, shorter than %d" % (kind, len(message), _FIXED[kind]))
    lladdr = _lladdr(kind, message)
    target, flags = b"", 0
    if kind in (NS, NA, REDIRECT):
        target = message[8:24]
    if kind == NS:
        if is_multicast6(target):
            raise Malformed("NS target is multicast")
        if src == UNSPECIFIED6 and dst[:13] != _SOLICITED_PREFIX:
            raise Malformed("NS from :: not to a solicited-node address")
        if src == UNSPECIFIED6 and lladdr:
            raise Malformed("NS from :: with a source link-layer address option")
    elif kind == NA:
        flags = message[4] & (NA_ROUTER | NA_SOLICITED | NA_OVERRIDE)
        if is_multicast6(target):
            raise Malformed("NA target is multicast")
        if flags & NA_SOLICITED and is_multicast6(dst):
            raise Malformed("NA with Solicited set to a multicast destination")
    elif kind == RS:
        if src == UNSPECIFIED6 and lladdr:
            raise Malformed("RS from :: with a source link-layer address option")
    elif kind == RA:
        flags = message[5] & (RA_MANAGED | RA_OTHER)
    return Nd(kind, src, dst, target, lladdr, flags, src_mac)


def _icmp6_frame(dst_mac: bytes, src_mac: bytes, src: bytes, dst: bytes, message: bytes, hop_limit: int) -> bytes:
    """An ICMPv6 message (its checksum field zero), checksummed, in IPv6 in a frame."""
    message = message[:2] + struct.pack("!H", _checksum6(src, dst, ICMPV6, message)) + message[4:]
    return ethernet(dst_mac, src_mac, ETH_IP6, _IP6.pack(6 << 28, len(message), ICMPV6, hop_limit, src, dst) + message)


def neighbor_advertisement_frame(ns: Nd, target_mac: bytes = VROUTER_MAC, router: bool = True) -> bytes:
    """The answer to a validated NS (RFC 4861 section 7.2.4): from ns.target and ``target_mac``,
    to the solicitor with Solicited and Override set, or, when the NS came from :: (duplicate
    address detection), to all nodes (ff02::1) with Solicited clear; a target link-layer address
    option with ``target_mac``, the Router flag when ``router``."""
    flags = NA_OVERRIDE | (NA_ROUTER if router else 0)
    if ns.src == UNSPECIFIED6:
        dst, dst_mac = ALL_NODES6, ALL_NODES_MAC
    else:
        dst, dst_mac, flags = ns.src, ns.lladdr or ns.src_mac, flags | NA_SOLICITED
    message = struct.pack("!BBHB3x16sBB6s", NA, 0, 0, flags, ns.target, OPT_TARGET_LLADDR, 1, target_mac)
    return _icmp6_frame(dst_mac, target_mac, ns.target, dst, message, 255)


def router_advertisement_frame(
    dst_mac: bytes,
    dst: bytes,
    prefix: bytes,
    prefix_len: int,
    mode: str,
    mtu: int = 0,
    router_lifetime: int = 1800,
    dns_servers: tuple[bytes, ...] = (),
) -> bytes:
    """A router advertisement from ROUTER_LL6 and VROUTER_MAC for a subnet in one of MODES
    (Neutron's ipv6_ra_mode): the M and O flags and the prefix's autonomous flag as the mode has
    them, the prefix on-link, valid 86400 s and preferred 14400 s; the source link-layer address,
    the MTU when ``mtu``, the DNS servers (RFC 8106 RDNSS, 1200 s) when ``dns_servers``."""
    if mode not in _RA_FLAGS:
        raise ValueError("IPv6 address mode %r is not one of %s" % (mode, ", ".join(MODES)))
    if len(prefix) != 16 or not 0 <= prefix_len <= 128:
        raise ValueError("an IPv6 prefix is 16 bytes and 0-128 bits long")
    ra_flags, prefix_flags = _RA_FLAGS[mode]
    masked = (int.from_bytes(prefix, "big") >> (128 - prefix_len) << (128 - prefix_len)).to_bytes(16, "big")
    out = struct.pack("!BBHBBHII", RA, 0, 0, 64, ra_flags, router_lifetime, 0, 0)
    out += struct.pack("!BB6s", OPT_SOURCE_LLADDR, 1, VROUTER_MAC)
    out += struct.pack("!BBBBIII16s", OPT_PREFIX, 4, prefix_len, prefix_flags, VALID_LIFETIME, PREFERRED_LIFETIME, 0, masked)
    if mtu:
        out += struct.pack("!BBHI", OPT_MTU, 1, 0, mtu)
    if dns_servers:
        out += struct.pack("!BBHI", OPT_RDNSS, 1 + 2 * len(dns_servers), 0, RDNSS_LIFETIME) + b"".join(dns_servers)
    return _icmp6_frame(dst_mac, VROUTER_MAC, ROUTER_LL6, dst, out, 255)


def _hop_limit(dst: bytes) -> int:
    """255 for a link-local or multicast destination (it stays on the link), else 64."""
    return 255 if is_multicast6(dst) or (dst[0] == 0xFE and dst[1] & 0xC0 == 0x80) else 64


def udp6_frame(dst_mac: bytes, src: bytes, dst: bytes, sport: int, dport: int, data: bytes, src_mac: bytes = VROUTER_MAC) -> bytes:
    """A UDP datagram in IPv6 (its checksum over the IPv6 pseudo-header, never 0), as a frame."""
    length = 8 + len(data)
    csum = _checksum6(src, dst, UDP, _UDP.pack(sport, dport, length, 0) + data) or 0xFFFF
    ip = _IP6.pack(6 << 28, length, UDP, _hop_limit(dst), src, dst)
    return ethernet(dst_mac, src_mac, ETH_IP6, ip + _UDP.pack(sport, dport, length, csum) + data)


def icmp6_echo_reply_frame(dst_mac: bytes, request: bytes, l4: int) -> bytes:
    """The echo reply to the IPv6 echo request ``request`` (the IP packet, ICMPv6 at offset
    ``l4``; extension headers before it are left out of the reply): addresses swapped, type 129,
    the request's identifier, sequence and data, hop limit 64.  Malformed if it is no echo request."""
    if len(request) < _IP6_LEN:
        raise Malformed("shorter than an IPv6 header")
    end = _IP6_LEN + struct.unpack_from("!H", request, 4)[0]
    if end > len(request) or l4 < _IP6_LEN or end - l4 < 8 or request[l4] != ECHO_REQUEST6:
        raise Malformed("not an ICMPv6 echo request")
    src, dst = request[8:24], request[24:40]
    message = bytes([ECHO_REPLY6, 0, 0, 0]) + request[l4 + 4 : end]
    return _icmp6_frame(dst_mac, VROUTER_MAC, dst, src, message, 64)


def _interface_id(mac: bytes) -> bytes:
    """The modified EUI-64 interface identifier of a MAC (RFC 4291 appendix A): ff:fe in the
    middle, the universal/local bit flipped."""
    if len(mac) != 6:
        raise ValueError("a MAC address is 6 bytes, not %d" % len(mac))
    return bytes([mac[0] ^ 0x02]) + mac[1:3] + b"\xff\xfe" + mac[3:6]


def link_local(mac: bytes) -> bytes:
    """The link-local address fe80::/64 of a MAC, by EUI-64."""
    return _LINK_LOCAL_PREFIX + _interface_id(mac)


def eui64_address(prefix: str, mac: str) -> str:
    """The SLAAC address of ``mac`` ("00:16:3e:33:44:55") in the /64 ``prefix``, as Neutron's
    ipv6_utils.get_ipv6_addr_by_EUI64 computes it; ValueError for a prefix that is not an IPv6
    /64 or a MAC that is not six hex octets."""
    network = ipaddress.IPv6Network(prefix, strict=False)
    if network.prefixlen != 64:
        raise ValueError("SLAAC needs a /64 prefix, not %s" % prefix)
    octets = mac.replace("-", ":").split(":")
    if len(octets) != 6 or not all(len(o) == 2 for o in octets):
        raise ValueError("MAC address %r is not six hex octets" % mac)
    interface_id = _interface_id(mac_bytes(":".join(octets)))
    return str(ipaddress.IPv6Address(network.network_address.packed[:8] + interface_id))
