"""The IPv6 frames module, pure: neighbour discovery parsed and validated rule by rule against
frames scapy builds, and the frames the agent builds read back by scapy with right checksums."""

import ipaddress
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import UDP
from scapy.layers.inet6 import (
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6ND_Redirect,
    ICMPv6ND_RS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptMTU,
    ICMPv6NDOptPrefixInfo,
    ICMPv6NDOptRDNSS,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
    IPv6ExtHdrHopByHop,
    in6_chksum,
    in6_getnsma,
    in6_getnsmac,
)
from scapy.layers.l2 import Ether
from scapy.packet import Raw, raw

from dataplane.core.frames import ALL_NODES6, ALL_NODES_MAC, ROUTER_LL6, VROUTER_MAC, mac_bytes
from dataplane.core.frames6 import (
    MODES,
    NA,
    NS,
    RA,
    REDIRECT,
    RS,
    Nd,
    eui64_address,
    icmp6_echo_reply_frame,
    is_nd,
    link_local,
    multicast_mac,
    neighbor_advertisement_frame,
    parse_nd,
    router_advertisement_frame,
    solicited_node,
    udp6_frame,
)
from dataplane.core.packet import Malformed

GUEST_MAC = "02:aa:bb:cc:dd:01"
GUEST_LL = "fe80::aa:bbff:fecc:dd01"
GUEST = "2001:db8::3"
GATEWAY = "2001:db8::1"
OTHER_MAC = "02:aa:bb:cc:dd:99"


def a6(text):
    return ipaddress.IPv6Address(text).packed


def frame(icmp, src=GUEST_LL, dst=GATEWAY, hlim=255, mac=GUEST_MAC, dst_mac="33:33:ff:00:00:01"):
    return raw(Ether(src=mac, dst=dst_mac) / IPv6(src=src, dst=dst, hlim=hlim) / icmp)


def raw_message(message, src=GUEST_LL, dst=GATEWAY):
    """A frame holding ``message`` (ICMPv6 bytes, checksum field zero) checksummed by scapy."""
    ip = IPv6(src=src, dst=dst, hlim=255, nh=58)
    csum = in6_chksum(58, ip, message)
    return raw(Ether(src=GUEST_MAC, dst=GUEST_MAC) / ip / Raw(message[:2] + csum.to_bytes(2, "big") + message[4:]))


def checksums_right(f):
    """Scapy, told to recompute every length and checksum of ``f``, rebuilds ``f``."""
    p = Ether(f)
    layer = p
    while layer:
        for name in ("cksum", "chksum", "plen", "len"):
            if name in layer.fields and not (name == "len" and layer.name.startswith("ICMPv6 Neighbor Discovery Option")):
                delattr(layer, name)
        layer = layer.payload
    return raw(Ether(raw(p))) == f


GUEST_SNMA = str(ipaddress.IPv6Address(in6_getnsma(a6(GUEST))))  # ff02::1:ff00:3
NS_FRAME = frame(ICMPv6ND_NS(tgt=GATEWAY) / ICMPv6NDOptSrcLLAddr(lladdr=GUEST_MAC), src=GUEST)
DAD_FRAME = frame(ICMPv6ND_NS(tgt=GUEST), src="::", dst=GUEST_SNMA)
NA_FRAME = frame(ICMPv6ND_NA(tgt=GUEST, R=0, S=1, O=1) / ICMPv6NDOptDstLLAddr(lladdr=GUEST_MAC), src=GUEST, dst=GATEWAY)
RS_FRAME = frame(ICMPv6ND_RS() / ICMPv6NDOptSrcLLAddr(lladdr=GUEST_MAC), dst="ff02::2")
RA_FRAME = frame(ICMPv6ND_RA(M=1, O=1) / ICMPv6NDOptSrcLLAddr(lladdr=GUEST_MAC), dst="ff02::1")
REDIRECT_FRAME = frame(ICMPv6ND_Redirect(tgt="fe80::1", dst="2001:db8:5::1"), dst=GUEST)
VALID = [NS_FRAME, DAD_FRAME, NA_FRAME, RS_FRAME, RA_FRAME, REDIRECT_FRAME]
ANY_MAC = "33:33:00:00:00:02"
# neighbour discovery that is not: behind a hop-by-hop header, or in an IPv4 ethertype
HBH_NS = raw(Ether(dst=ANY_MAC) / IPv6(hlim=255) / IPv6ExtHdrHopByHop() / ICMPv6ND_NS(tgt=GATEWAY))
NOT_IP6 = raw(Ether(dst=ANY_MAC, type=0x0800) / Raw(NS_FRAME[14:]))


# parsing what is valid


def test_neighbor_solicitation():
    assert parse_nd(NS_FRAME) == Nd(NS, a6(GUEST), a6(GATEWAY), a6(GATEWAY), mac_bytes(GUEST_MAC), 0, mac_bytes(GUEST_MAC))


def test_dad_probe_from_unspecified():
    nd = parse_nd(DAD_FRAME)
    assert nd.kind == NS and nd.src == bytes(16) and nd.dst == solicited_node(a6(GUEST)) and nd.lladdr == b""


def test_neighbor_advertisement_flags_and_target_lladdr():
    nd = parse_nd(NA_FRAME)
    assert (nd.kind, nd.target, nd.lladdr, nd.flags) == (NA, a6(GUEST), mac_bytes(GUEST_MAC), 0x60)
    router = parse_nd(frame(ICMPv6ND_NA(tgt=GUEST, R=1, S=0, O=0), src=GUEST, dst="ff02::1"))
    assert router.flags == 0x80 and router.lladdr == b""


def test_router_solicitation_and_advertisement():
    rs = parse_nd(RS_FRAME)
    assert (rs.kind, rs.target, rs.lladdr, rs.flags) == (RS, b"", mac_bytes(GUEST_MAC), 0)
    assert parse_nd(frame(ICMPv6ND_RS(), src="::", dst="ff02::2")).lladdr == b""
    ra = parse_nd(RA_FRAME)
    assert (ra.kind, ra.target, ra.lladdr, ra.flags) == (RA, b"", mac_bytes(GUEST_MAC), 0xC0)


def test_redirect():
    nd = parse_nd(REDIRECT_FRAME)
    assert (nd.kind, nd.target, nd.lladdr) == (REDIRECT, a6("fe80::1"), b"")


def test_unknown_options_are_skipped():
    nonce = Raw(bytes([14, 1]) + b"\x01" * 6)  # RFC 3971 nonce option before the source link-layer address
    nd = parse_nd(frame(ICMPv6ND_NS(tgt=GATEWAY) / nonce / ICMPv6NDOptSrcLLAddr(lladdr=GUEST_MAC), src=GUEST))
    assert nd.lladdr == mac_bytes(GUEST_MAC)


def test_is_nd():
    assert all(is_nd(f) for f in VALID)
    assert not is_nd(frame(ICMPv6EchoRequest()))
    assert not is_nd(HBH_NS) and not is_nd(NOT_IP6)
    assert not is_nd(NS_FRAME[:54]) and not is_nd(b"")


# each rule broken in turn


NS_GW = ICMPv6ND_NS(tgt=GATEWAY)
BROKEN = [
    # rule broken, the frame breaking it, what the Malformed says
    ("hop limit", frame(NS_GW, src=GUEST, hlim=64), "hop limit 64, not 255"),
    ("code", frame(ICMPv6ND_NS(tgt=GATEWAY, code=1), src=GUEST), "code 1, not 0"),
    ("checksum", frame(ICMPv6ND_NS(tgt=GATEWAY, cksum=0x1234), src=GUEST), "checksum wrong"),
    ("NS too short", raw_message(bytes([NS, 0, 0, 0]) + bytes(16)), "type 135 of 20 bytes, shorter than 24"),
    ("RA too short", raw_message(bytes([RA, 0, 0, 0, 64, 0]) + bytes(6)), "type 134 of 12 bytes, shorter than 16"),
    ("option length 0", frame(NS_GW / ICMPv6NDOptSrcLLAddr(len=0, lladdr=GUEST_MAC), src=GUEST), "option 1 of length 0"),
    ("option past the end", frame(NS_GW / Raw(bytes([1, 2]) + mac_bytes(GUEST_MAC)), src=GUEST), "option 1 runs past the end"),
    ("option header past the end", frame(NS_GW / Raw(b"\x01"), src=GUEST), "option header past the end"),
    ("lladdr not Ethernet", frame(NS_GW / Raw(bytes([1, 2]) + bytes(14)), src=GUEST), "of 16 bytes, not 8"),
    ("payload length short", NS_FRAME[:18] + (31).to_bytes(2, "big") + NS_FRAME[20:], "payload length 31, not the frame's 32"),
    ("frame longer", NS_FRAME + b"\0", "payload length 32, not the frame's 33"),
    ("frame shorter", NS_FRAME[:-1], "payload length 32, not the frame's 31"),
    ("NS target multicast", frame(ICMPv6ND_NS(tgt="ff02::1"), src=GUEST), "NS target is multicast"),
    ("NS from :: to all nodes", frame(ICMPv6ND_NS(tgt=GUEST), src="::", dst="ff02::1"), "not to a solicited-node"),
    ("NS from :: to unicast", frame(ICMPv6ND_NS(tgt=GUEST), src="::", dst=GUEST), "not to a solicited-node"),
    ("NS from :: with lladdr", frame(ICMPv6ND_NS(tgt=GUEST) / ICMPv6NDOptSrcLLAddr(lladdr=GUEST_MAC), src="::", dst=GUEST_SNMA), "NS from :: with"),
    ("NA target multicast", frame(ICMPv6ND_NA(tgt="ff02::1", S=1), src=GUEST), "NA target is multicast"),
    ("NA solicited to multicast", frame(ICMPv6ND_NA(tgt=GUEST, S=1), src=GUEST, dst="ff02::1"), "Solicited set to a multicast"),
    ("RS from :: with lladdr", frame(ICMPv6ND_RS() / ICMPv6NDOptSrcLLAddr(lladdr=GUEST_MAC), src="::", dst="ff02::2"), "RS from :: with"),
    ("extension header", HBH_NS, "next header 0, not ICMPv6"),
    ("not ND", frame(ICMPv6EchoRequest()), "type 128 is not neighbour discovery"),
    ("not IPv6", NOT_IP6, "not IPv6"),
    ("too short", NS_FRAME[:57], "shorter than"),
]


@pytest.mark.parametrize("f, message", [pytest.param(f, message, id=rule) for rule, f, message in BROKEN])
def test_each_rule_broken_is_malformed(f, message):
    with pytest.raises(Malformed, match=re.escape(message)):
        parse_nd(f)


# the frames the agent builds


def test_solicited_node_and_multicast_mac():
    for address in (GUEST, GATEWAY, "fe80::216:3eff:fe33:4455"):
        assert solicited_node(a6(address)) == in6_getnsma(a6(address))
        assert multicast_mac(solicited_node(a6(address))) == mac_bytes(in6_getnsmac(in6_getnsma(a6(address))))
    assert multicast_mac(ALL_NODES6) == ALL_NODES_MAC


def test_neighbor_advertisement_answers_the_solicitor():
    f = neighbor_advertisement_frame(parse_nd(NS_FRAME))
    assert checksums_right(f)
    p = Ether(f)
    assert (p.src, p.dst, p[IPv6].src, p[IPv6].dst, p[IPv6].hlim) == (VROUTER_MAC.hex(":"), GUEST_MAC, GATEWAY, GUEST, 255)
    na = p[ICMPv6ND_NA]
    assert (na.tgt, na.R, na.S, na.O, p[ICMPv6NDOptDstLLAddr].lladdr) == (GATEWAY, 1, 1, 1, VROUTER_MAC.hex(":"))
    assert parse_nd(f).kind == NA


def test_neighbor_advertisement_without_lladdr_goes_to_the_ethernet_source():
    unicast = frame(ICMPv6ND_NS(tgt=GATEWAY), src=GUEST, mac=OTHER_MAC)
    target = mac_bytes("02:00:00:00:00:07")
    p = Ether(neighbor_advertisement_frame(parse_nd(unicast), target, router=False))
    assert (p.dst, p.src, p[ICMPv6ND_NA].R, p[ICMPv6NDOptDstLLAddr].lladdr) == (OTHER_MAC, "02:00:00:00:00:07", 0, "02:00:00:00:00:07")


def test_neighbor_advertisement_for_a_dad_probe_goes_to_all_nodes():
    f = neighbor_advertisement_frame(parse_nd(DAD_FRAME))
    assert checksums_right(f)
    p = Ether(f)
    assert (p.dst, p[IPv6].src, p[IPv6].dst, p[ICMPv6ND_NA].S, p[ICMPv6ND_NA].O) == ("33:33:00:00:00:01", GUEST, "ff02::1", 0, 1)
    assert parse_nd(f).flags == 0xA0


@pytest.mark.parametrize(
    "mode, m, o, a",
    [("dhcpv6-stateful", 1, 1, 0), ("dhcpv6-stateless", 0, 1, 1), ("slaac", 0, 0, 1), ("none", 0, 0, 0)],
)
def test_router_advertisement_flags_by_mode(mode, m, o, a):
    f = router_advertisement_frame(mac_bytes(GUEST_MAC), a6(GUEST_LL), a6("2001:db8::"), 64, mode)
    assert checksums_right(f)
    p = Ether(f)
    assert (p.src, p.dst, p[IPv6].src, p[IPv6].dst, p[IPv6].hlim) == (VROUTER_MAC.hex(":"), GUEST_MAC, "fe80::5e00:100", GUEST_LL, 255)
    ra, pi = p[ICMPv6ND_RA], p[ICMPv6NDOptPrefixInfo]
    assert (ra.M, ra.O, ra.chlim, ra.routerlifetime) == (m, o, 64, 1800)
    assert (pi.L, pi.A, pi.prefix, pi.prefixlen, pi.validlifetime, pi.preferredlifetime) == (1, a, "2001:db8::", 64, 86400, 14400)
    assert p[ICMPv6NDOptSrcLLAddr].lladdr == VROUTER_MAC.hex(":")
    assert ICMPv6NDOptMTU not in p and ICMPv6NDOptRDNSS not in p
    assert parse_nd(f).src == ROUTER_LL6


def test_router_advertisement_mtu_rdnss_and_masked_prefix():
    dns = (a6("2001:db8::1"), a6("2001:db8::2"))
    f = router_advertisement_frame(ALL_NODES_MAC, ALL_NODES6, a6("2001:db8:0:7::9"), 48, "slaac", 1450, 0, dns)
    assert checksums_right(f)
    p = Ether(f)
    assert p[ICMPv6NDOptMTU].mtu == 1450 and p[ICMPv6ND_RA].routerlifetime == 0
    assert p[ICMPv6NDOptPrefixInfo].prefix == "2001:db8::"
    rdnss = p[ICMPv6NDOptRDNSS]
    assert (rdnss.type, rdnss.len, rdnss.dns, rdnss.lifetime) == (25, 5, ["2001:db8::1", "2001:db8::2"], 1200)
    assert parse_nd(f).kind == RA


def test_router_advertisement_unknown_mode():
    with pytest.raises(ValueError, match="dhcpv6-stateful"):
        router_advertisement_frame(ALL_NODES_MAC, ALL_NODES6, a6("2001:db8::"), 64, "stateful")
    assert "slaac" in MODES


@pytest.mark.parametrize("dst, hlim", [("fe80::1", 255), ("ff02::1:2", 255), ("2001:db8::3", 64)])
def test_udp6_frame(dst, hlim):
    f = udp6_frame(mac_bytes(GUEST_MAC), a6("fe80::5e00:100"), a6(dst), 547, 546, b"dhcpv6 reply")
    assert checksums_right(f)
    p = Ether(f)
    assert (p[IPv6].hlim, p[IPv6].nh, p[UDP].sport, p[UDP].dport, p[UDP].load) == (hlim, 17, 547, 546, b"dhcpv6 reply")
    assert p.src == VROUTER_MAC.hex(":")


def test_udp6_checksum_zero_is_sent_as_ffff():
    args = (mac_bytes(GUEST_MAC), a6("fe80::1"), a6("fe80::2"), 547, 546)
    csum = Ether(udp6_frame(*args, b"\0\0"))[UDP].chksum
    data = csum.to_bytes(2, "big")  # makes the sum 0xffff: a computed checksum of 0
    f = udp6_frame(*args, data, src_mac=mac_bytes(OTHER_MAC))
    assert Ether(f)[UDP].chksum == 0xFFFF and Ether(f).src == OTHER_MAC


@pytest.mark.parametrize("ext", [False, True])
def test_echo_reply(ext):
    ip = IPv6(src=GUEST, dst=GATEWAY, hlim=7)
    request = raw((ip / IPv6ExtHdrHopByHop() if ext else ip) / ICMPv6EchoRequest(id=77, seq=3, data=b"ping data"))
    f = icmp6_echo_reply_frame(mac_bytes(GUEST_MAC), request, 48 if ext else 40)
    assert checksums_right(f)
    p = Ether(f)
    assert (p.dst, p.src, p[IPv6].src, p[IPv6].dst, p[IPv6].hlim, p[IPv6].nh) == (GUEST_MAC, VROUTER_MAC.hex(":"), GATEWAY, GUEST, 64, 58)
    reply = p[ICMPv6EchoReply]
    assert (reply.id, reply.seq, reply.data) == (77, 3, b"ping data")


def test_echo_reply_to_something_else():
    with pytest.raises(Malformed):
        icmp6_echo_reply_frame(ALL_NODES_MAC, raw(IPv6() / ICMPv6EchoReply()), 40)
    with pytest.raises(Malformed):
        icmp6_echo_reply_frame(ALL_NODES_MAC, raw(IPv6() / ICMPv6EchoRequest())[:44], 40)


# SLAAC addresses


@pytest.mark.parametrize(
    "prefix, mac, address",
    [
        ("2001:db8::/64", "00:16:3e:33:44:55", "2001:db8::216:3eff:fe33:4455"),
        ("2001:db8:1:2::/64", "fa:16:3e:33:44:55", "2001:db8:1:2:f816:3eff:fe33:4455"),
        ("2001:db8:1:2::99/64", "02:00:00:00:00:01", "2001:db8:1:2:0:ff:fe00:1"),
        ("fe80::/64", "00-00-5e-00-01-00", "fe80::200:5eff:fe00:100"),
    ],
)
def test_eui64_address(prefix, mac, address):
    assert eui64_address(prefix, mac) == address


@pytest.mark.parametrize(
    "prefix, mac",
    [
        ("10.0.8.0/24", "00:16:3e:33:44:55"),
        ("bb", "00:16:3e:33:44:55"),
        ("2001:db8::/48", "00:16:3e:33:44:55"),
        ("2001:db8::/64", "00:16:3e:33:44:5Z"),
    ],
)
def test_eui64_address_refuses(prefix, mac):
    with pytest.raises(ValueError):
        eui64_address(prefix, mac)


def test_link_local():
    assert link_local(mac_bytes("00:16:3e:33:44:55")) == a6("fe80::216:3eff:fe33:4455")
    assert link_local(mac_bytes(GUEST_MAC)) == a6(GUEST_LL)


# nothing a guest sends crashes the parser

SETTINGS = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(st.binary(max_size=140))
def test_arbitrary_bytes(data):
    is_nd(data)
    try:
        parse_nd(data)
    except Malformed:
        pass


@SETTINGS
@given(
    st.sampled_from(VALID),
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=4),
    st.integers(0, 200),
    st.binary(max_size=16),
)
def test_mutated_valid_frames(f, changes, cut, tail):
    f = bytearray(f)
    for at, value in changes:
        if at < len(f):
            f[at] = value
    mutated = bytes(f[: max(cut, 14)]) + tail
    is_nd(mutated)
    try:
        nd = parse_nd(mutated)
    except Malformed:
        return
    assert len(nd.src) == len(nd.dst) == 16 and len(nd.lladdr) in (0, 6)
