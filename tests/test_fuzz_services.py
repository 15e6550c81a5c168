"""Property-based tests of what the agent's services for guests read from a VM: ARP and IPv6
neighbour discovery as frames from its tap (``GuestServices.on_frame``, as pkt0 hands them), and
DHCP, DNS, ICMP echo, DHCPv6 and ICMPv6 echo as the dataplane traps them (``Dataplane.process``
with the services wired to its traps, as the agent wires them).

Properties: a valid message built with scapy is parsed to what it was built with and answered by
the rules (the answer parses, with its checksums right, and carries the question's identifiers);
any bytes, and valid messages with bytes changed, cut or added, are answered, ignored or dropped
with a reason, never an exception; every truncation of a valid message is dropped as invalid."""

from __future__ import annotations

import ipaddress

from hypothesis import example, given
from hypothesis import strategies as st
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.dhcp6 import DHCP6_Solicit, DHCP6OptClientId, DHCP6OptElapsedTime, DHCP6OptIA_NA, DHCP6OptRapidCommit
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import (
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6ND_RS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptMTU,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
)
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet, Raw

from dataplane.core.frames import VROUTER_MAC, Arp, mac_bytes, mac_text, parse_arp
from dataplane.core.frames6 import NS, parse_nd, solicited_node
from dataplane.core.packet import Malformed
from flows.layout import DropReason
from tests.fuzz_helpers import (
    GATEWAY,
    GATEWAY6,
    LL1,
    MAC1,
    REMOTE,
    SERVICE,
    SERVICE6,
    TAP1,
    VM1,
    VM1_6,
    VM2,
    VM2_6,
    Node,
    fuzz_settings,
    mutated,
    node,
    truncations,
    udp_packet,
)

TAP_NAME = "tapaaaaaaaa-aa"
ROUTER_MAC = mac_text(VROUTER_MAC)
IDS = st.integers(0, 65535)


def answers(n: Node) -> list[Ether]:
    """The frames the services sent (all on vm1's tap), parsed."""
    assert all(ifname == TAP_NAME for ifname, _ in n.sent)
    return [Ether(frame) for _, frame in n.sent]


def checksums_right(frame: Ether) -> None:
    """Every checksum in ``frame`` is what scapy computes for its contents."""
    again = frame.copy()
    for layer in (IP, UDP, ICMP, ICMPv6EchoReply, ICMPv6ND_NA, ICMPv6ND_RA):
        if layer in again:
            for name in ("chksum", "cksum"):
                if name in again[layer].fields:
                    delattr(again[layer], name)
    assert bytes(again) == bytes(frame)


# -- ARP --------------------------------------------------------------------------------------------

ARP_TARGETS = [GATEWAY, SERVICE, VM2, REMOTE, VM1, "10.1.1.77", "0.0.0.0"]
ANSWERED = {GATEWAY, SERVICE, VM2, REMOTE}  # the vRouter has these for vm1


@st.composite
def arp_requests(draw: st.DrawFn) -> tuple[bytes, Arp]:
    op = draw(st.sampled_from([1, 1, 1, 2]))
    psrc = draw(st.sampled_from([VM1, VM1, "0.0.0.0", VM2]))
    pdst = draw(st.sampled_from(ARP_TARGETS))
    hwsrc = draw(st.sampled_from([MAC1, "02:00:0a:01:00:99"]))
    hwdst = draw(st.sampled_from(["00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff"]))
    frame = Ether(src=hwsrc, dst="ff:ff:ff:ff:ff:ff") / ARP(op=op, hwsrc=hwsrc, psrc=psrc, hwdst=hwdst, pdst=pdst)
    raw = bytes(frame) + draw(st.sampled_from([b"", bytes(18)]))  # padded to the Ethernet minimum, or not
    a4 = ipaddress.IPv4Address
    return raw, Arp(op, mac_bytes(hwsrc), a4(psrc).packed, mac_bytes(hwdst), a4(pdst).packed)


@fuzz_settings(200)
@given(arp_requests(), st.booleans())
def test_arp_is_parsed_as_built_and_answered_by_the_rules(built, configured):
    raw, arp = built
    assert parse_arp(raw) == arp
    n = node(configured)
    before = n.drops()
    n.services.on_frame(TAP_NAME, raw)
    sent = answers(n)
    psrc, pdst = str(ipaddress.IPv4Address(arp.sender_ip)), str(ipaddress.IPv4Address(arp.target_ip))
    forged = arp.op == 1 and psrc not in (VM1, "0.0.0.0")
    assert n.drops() == before + forged
    if forged:
        assert n.dataplane.drops[DropReason.INVALID_SOURCE] == 1
    # not configured yet: every address but its own is answered, as proxy ARP did
    asked = pdst in ANSWERED if configured else pdst != VM1
    if arp.op == 1 and not forged and pdst != psrc and asked:
        (reply,) = sent
        assert reply.dst == mac_text(arp.sender_mac) and reply.src == ROUTER_MAC
        assert (reply[ARP].op, reply[ARP].hwsrc, reply[ARP].psrc, reply[ARP].hwdst, reply[ARP].pdst) == (
            2,
            ROUTER_MAC,
            pdst,
            mac_text(arp.sender_mac),
            psrc,
        )
    else:
        assert sent == []


ARP_HEADER = bytes.fromhex("ffffffffffff02000a0100030806")


@fuzz_settings(300)
@given(arp_requests().flatmap(lambda b: mutated(b[0])) | st.binary(max_size=60).map(lambda b: ARP_HEADER + b))
@example(ARP_HEADER + bytes(27))  # one byte short of an ARP message
def test_broken_arp_is_answered_or_dropped(raw):
    n = node()
    before = n.drops()
    n.services.on_frame(TAP_NAME, raw)
    try:
        parse_arp(raw)
    except Malformed:
        assert raw[12:14] != b"\x08\x06" or n.dataplane.drops[DropReason.INVALID_ARP] == 1
        assert n.sent == []
    assert n.drops() - before <= 1
    for f in answers(n):
        assert f[ARP].op == 2 and f[ARP].hwsrc == ROUTER_MAC


@fuzz_settings(50)
@given(arp_requests())
def test_every_truncation_of_an_arp_request_is_dropped(built):
    raw, _ = built
    n = node()
    for cut in truncations(raw[:42], 14):
        before = n.drops()
        n.services.on_frame(TAP_NAME, cut)
        assert n.drops() == before + 1 and n.sent == []
    assert n.dataplane.drops[DropReason.INVALID_ARP] == 42 - 14


# -- neighbour discovery ----------------------------------------------------------------------------

ND_TARGETS = [GATEWAY6, SERVICE6, VM2_6, VM1_6, "fd00:10:1:1::77", "fe80::a9fe:a97b", "fe80::a9fe:a9fe", "fe80::5e00:100"]
ND_ANSWERED = {GATEWAY6, SERVICE6, VM2_6, "fe80::a9fe:a97b"}  # the gateway, the service address, vm2, the NTP service


@st.composite
def nd_frames(draw: st.DrawFn) -> tuple[bytes, Packet]:
    """A valid solicitation (neighbour or router) or advertisement from vm1, and its ICMPv6 message."""
    kind = draw(st.sampled_from(["ns", "ns", "ns", "dad", "rs", "na", "ra"]))
    target = draw(st.sampled_from(ND_TARGETS))
    options: list[Packet] = []
    if draw(st.booleans()) and kind != "dad":
        options.append(ICMPv6NDOptDstLLAddr(lladdr=MAC1) if kind == "na" else ICMPv6NDOptSrcLLAddr(lladdr=MAC1))
    if draw(st.booleans()):
        options.append(ICMPv6NDOptMTU(mtu=draw(st.integers(1280, 9000))))
    src, dst = LL1, "ff02::1:ff" + "%02x:%02x%02x" % tuple(ipaddress.IPv6Address(target).packed[13:])
    if kind in ("ns", "dad"):
        msg: Packet = ICMPv6ND_NS(tgt=target)
        src = "::" if kind == "dad" else src
    elif kind == "rs":
        msg, dst = ICMPv6ND_RS(), "ff02::2"
    elif kind == "na":
        msg, dst = ICMPv6ND_NA(tgt=target, R=0, S=0, O=1), "ff02::1"
    else:
        msg, dst = ICMPv6ND_RA(), "ff02::1"
    for o in options:
        msg = msg / o
    frame = Ether(src=MAC1, dst="33:33:00:00:00:01") / IPv6(src=src, dst=dst, hlim=255) / msg
    return bytes(frame), frame[IPv6].payload


@fuzz_settings(200)
@given(nd_frames())
def test_neighbour_discovery_is_parsed_as_built_and_answered_by_the_rules(built):
    raw, msg = built
    nd = parse_nd(raw)
    assert nd.kind == msg.type and nd.src_mac == mac_bytes(MAC1)
    option = ICMPv6NDOptDstLLAddr if nd.kind == 136 else ICMPv6NDOptSrcLLAddr
    assert nd.lladdr == (mac_bytes(MAC1) if option in msg else b"")
    if nd.kind == NS:
        assert nd.target == ipaddress.IPv6Address(msg.tgt).packed
        assert nd.dst == solicited_node(nd.target)
    n = node()
    before = n.drops()
    n.services.on_frame(TAP_NAME, raw)
    sent = answers(n)
    for f in sent:
        checksums_right(f)
        assert f.src == ROUTER_MAC and f[IPv6].hlim == 255
    target = str(ipaddress.IPv6Address(nd.target)) if nd.target else ""
    if nd.kind == NS and target in ND_ANSWERED:
        (na,) = sent
        assert na[ICMPv6ND_NA].tgt == target and na[ICMPv6ND_NA].S == (nd.src != bytes(16)) and na[ICMPv6ND_NA].O == 1
        assert na[IPv6].dst == ("ff02::1" if nd.src == bytes(16) else LL1)
    elif nd.kind == 133:  # a router solicitation: the advertisement of the network's mode, at once
        (ra,) = sent
        assert ra[ICMPv6ND_RA].M == 1 and ra[IPv6].src == "fe80::5e00:100"
    else:
        assert sent == []
    forged = nd.kind == 134 or (nd.kind == 136 and target != VM1_6)  # a router of its own, another's address
    assert n.drops() - before == forged


ND_HEADER = bytes.fromhex("333300000001" + "02000a010003" + "86dd" + "6000000000203aff") + ipaddress.IPv6Address(LL1).packed * 2


@fuzz_settings(300)
@given(nd_frames().flatmap(lambda b: mutated(b[0], 14)) | st.binary(min_size=1, max_size=60).map(lambda b: ND_HEADER + b))
def test_broken_neighbour_discovery_is_answered_ignored_or_dropped(raw):
    n = node()
    before = n.drops()
    n.services.on_frame(TAP_NAME, raw)
    assert n.drops() - before <= 1
    try:
        parse_nd(raw)
    except Malformed:
        assert n.sent == []
    for f in answers(n):
        checksums_right(f)


@fuzz_settings(50)
@given(nd_frames())
def test_every_truncation_of_neighbour_discovery_is_dropped_as_invalid(built):
    raw, _ = built
    n = node()
    for cut in truncations(raw, 14):
        with_nd = len(cut) > 54  # shorter is no ND message at all (the kernel's filter lets none through)
        before = n.drops()
        n.services.on_frame(TAP_NAME, cut)
        assert n.drops() == before + with_nd and n.sent == []
        if with_nd:
            try:
                parse_nd(cut)
            except Malformed:
                continue
            raise AssertionError("ND cut to %d of %d bytes parsed" % (len(cut), len(raw)))


# -- DHCP -------------------------------------------------------------------------------------------

KINDS = {"discover": 1, "request": 3, "decline": 4, "release": 7, "inform": 8}


@st.composite
def dhcp_requests(draw: st.DrawFn) -> tuple[bytes, dict]:
    """A DHCP message from vm1's client (its UDP payload), and what it asks."""
    kind = draw(st.sampled_from(sorted(KINDS)))
    asked = draw(st.sampled_from([None, VM1, "10.1.1.99"]))
    server = draw(st.sampled_from([None, SERVICE, "10.9.9.9"]))
    options: list = [("message-type", kind)]
    if asked:
        options.append(("requested_addr", asked))
    if server:
        options.append(("server_id", server))
    options += draw(
        st.lists(
            st.sampled_from(
                [
                    ("param_req_list", [1, 3, 6, 15, 121]),
                    ("hostname", b"vm1"),
                    ("max_dhcp_size", 1500),
                    ("client_id", b"\x01" + mac_bytes(MAC1)),
                    ("vendor_class_id", b"x" * 40),
                ]
            ),
            max_size=3,
        )
    )
    options.append("end")
    xid = draw(st.integers(0, 2**32 - 1))
    msg = BOOTP(
        op=1, xid=xid, flags=draw(st.sampled_from([0, 0x8000])), ciaddr=draw(st.sampled_from(["0.0.0.0", VM1])), chaddr=mac_bytes(MAC1) + bytes(10)
    ) / DHCP(options=options)
    return bytes(msg), {"kind": KINDS[kind], "asked": asked, "server": server, "xid": xid}


def dhcp_packet(payload: bytes) -> bytes:
    return udp_packet("0.0.0.0", "255.255.255.255", 68, 67, payload)


@fuzz_settings(200)
@given(dhcp_requests(), st.booleans())
def test_dhcp_through_the_trap_is_answered_by_the_rules(built, configured):
    payload, req = built
    n = node(configured)
    v = n.dataplane.process(dhcp_packet(payload), TAP1)
    assert (v.accept, v.reason) == (False, DropReason.NONE) and n.drops() == 0  # trapped, answered or ignored
    sent = answers(n)
    kind = req["kind"]
    if kind in (4, 7) or (kind == 3 and configured and req["server"] not in (None, SERVICE)):
        assert sent == []  # release and decline get nothing; a request for another server is not ours
        return
    (reply,) = sent
    checksums_right(reply)
    options = dict(o for o in reply[DHCP].options if isinstance(o, tuple))
    assert reply[UDP].sport == 67 and reply[UDP].dport == 68 and reply[BOOTP].xid == req["xid"] and reply[BOOTP].op == 2
    assert reply[BOOTP].chaddr[:6] == mac_bytes(MAC1)
    expected = {1: 2, 8: 5}.get(kind) or (6 if req["asked"] not in (None, VM1) else 5)  # offer, ack, or nak
    assert options["message-type"] == expected
    assert reply[BOOTP].yiaddr == (VM1 if expected in (2, 5) and kind != 8 else "0.0.0.0")


UDP_PORTS = {
    "dhcp": (68, 67, "0.0.0.0", "255.255.255.255"),
    "dns": (5353, 53, VM1, SERVICE),
    "dns6": (5353, 53, VM1_6, SERVICE6),
    "dhcp6": (546, 547, LL1, "ff02::1:2"),
}


def udp_to(service: str, payload: bytes) -> bytes:
    sport, dport, src, dst = UDP_PORTS[service]
    return udp_packet(src, dst, sport, dport, payload)


def trapped_ok(n: Node, raw: bytes, invalid: DropReason) -> None:
    """``raw`` from vm1, trapped: answered, ignored, or dropped by the services as ``invalid``."""
    before = n.drops()
    v = n.dataplane.process(raw, TAP1)
    assert (v.accept, v.reason) == (False, DropReason.NONE)
    if n.drops() != before:
        assert n.drops() == before + 1 and n.dataplane.drops[invalid] >= 1 and n.sent == []
    for f in answers(n):
        checksums_right(f)


@fuzz_settings(200)
@given(dhcp_requests().flatmap(lambda b: mutated(b[0])) | st.binary(max_size=300), st.booleans())
@example(b"\x01" + bytes(239), True)  # a header and no magic cookie
def test_broken_dhcp_is_answered_ignored_or_dropped(payload, configured):
    n = node(configured)
    trapped_ok(n, udp_to("dhcp", payload), DropReason.INVALID_DHCP)


@fuzz_settings(20)
@given(dhcp_requests())
def test_every_truncation_of_a_dhcp_message_is_dropped_as_invalid(built):
    payload, _ = built
    n = node()
    for cut in truncations(payload):
        n.dataplane.process(dhcp_packet(cut), TAP1)
    assert n.dataplane.drops[DropReason.INVALID_DHCP] == len(payload) and n.sent == []


# -- DNS --------------------------------------------------------------------------------------------

PTR6 = ".".join(reversed(ipaddress.IPv6Address(VM1_6).exploded.replace(":", ""))) + ".ip6.arpa"
NAMES = [
    "vm1",
    "VM2",
    "vm1.novalocal",
    "vm2.novalocal.",
    "nobody",
    "nobody.novalocal",
    "novalocal",
    "www.example.com",
    "a.b.novalocal",
    "3.1.1.10.in-addr.arpa",
    "9.9.9.10.in-addr.arpa",
    PTR6,
]
QTYPES = [1, 28, 12, 255, 15, 16]  # A, AAAA, PTR, ANY, MX, TXT


@st.composite
def dns_queries(draw: st.DrawFn) -> tuple[bytes, Packet]:
    name = draw(st.sampled_from(NAMES) | st.from_regex(r"[a-z0-9-]{1,20}(\.[a-z0-9-]{1,20}){0,3}", fullmatch=True))
    q = DNS(
        id=draw(IDS),
        rd=draw(st.integers(0, 1)),
        opcode=draw(st.sampled_from([0, 0, 0, 1, 2])),
        qd=DNSQR(qname=name, qtype=draw(st.sampled_from(QTYPES))),
    )
    return bytes(q), q


@fuzz_settings(200)
@given(dns_queries(), st.sampled_from(["dns", "dns6"]), st.booleans())
def test_dns_through_the_trap_answers_the_question_asked(built, service, forwarders):
    raw, q = built
    n = node(dns_forwarders=("10.10.0.1",) if forwarders else ())
    v = n.dataplane.process(udp_to(service, raw), TAP1)
    assert (v.accept, v.reason) == (False, DropReason.NONE) and n.drops() == 0
    sent = answers(n)
    if not sent:  # forwarded to the fabric's resolvers (no socket here): nothing yet
        assert forwarders and n.services.stats.dns_forwarded == 1
        return
    (reply,) = sent
    checksums_right(reply)
    r = reply[DNS]
    assert reply[UDP].sport == 53 and reply[UDP].dport == UDP_PORTS[service][0]
    assert (r.id, r.qr, r.opcode, r.rd) == (q.id, 1, q.opcode, q.rd)
    if q.opcode == 0:
        assert (r.qd[0].qname.lower(), r.qd[0].qtype) == (q.qd[0].qname.lower(), q.qd[0].qtype)
    else:
        assert r.rcode == 4  # NOTIMP
    if q.opcode == 0 and r.rcode == 0 and q.qd[0].qtype == 1:
        assert [a.rdata for a in r.an] in ([], [VM1], [VM2])


@fuzz_settings(250)
@given(dns_queries().flatmap(lambda b: mutated(b[0])) | st.binary(max_size=80), st.sampled_from(["dns", "dns6"]))
@example(bytes(12), "dns")  # a header with no question
@example(bytes.fromhex("1234010000010000000000000c0000010001"), "dns")  # a label of length 12 with no bytes
def test_broken_dns_is_answered_or_dropped(payload, service):
    n = node()
    trapped_ok(n, udp_to(service, payload), DropReason.INVALID_DNS)
    for f in answers(n):
        assert f[UDP].sport == 53 and bytes(f[UDP].payload)[:2] == payload[:2]  # the query's id


@fuzz_settings(40)
@given(dns_queries())
def test_every_truncation_of_a_dns_query_is_dropped_as_invalid(built):
    raw, _ = built
    n = node()
    for cut in truncations(raw):
        n.dataplane.process(udp_to("dns", cut), TAP1)  # (IPv4 and IPv6 take the same path to the parser)
    assert n.dataplane.drops[DropReason.INVALID_DNS] == len(raw) and n.sent == []


# -- ICMP echo --------------------------------------------------------------------------------------


@fuzz_settings(150)
@given(IDS, IDS, st.binary(max_size=100), st.sampled_from([GATEWAY, SERVICE, GATEWAY6, SERVICE6, "fe80::5e00:100"]))
def test_an_echo_to_the_gateway_is_answered_with_its_identifier_sequence_and_data(ident, seq, data, dst):
    n = node()
    if ":" in dst:
        src = LL1 if dst.startswith("fe80") else VM1_6
        req = IPv6(src=src, dst=dst) / ICMPv6EchoRequest(id=ident, seq=seq, data=data)
    else:
        req = IP(src=VM1, dst=dst) / ICMP(type=8, id=ident, seq=seq) / Raw(data)
    n.dataplane.process(bytes(req), TAP1)
    (reply,) = answers(n)
    checksums_right(reply)
    assert reply.dst == MAC1 and reply.src == ROUTER_MAC
    if ":" in dst:
        e = reply[ICMPv6EchoReply]
        assert (reply[IPv6].src, reply[IPv6].dst, e.id, e.seq, e.data) == (dst, src, ident, seq, data)
    else:
        assert (reply[IP].src, reply[IP].dst, reply[ICMP].type, reply[ICMP].id, reply[ICMP].seq) == (dst, VM1, 0, ident, seq)
        assert bytes(reply[ICMP].payload) == data


@fuzz_settings(200)
@given(st.sampled_from([GATEWAY, GATEWAY6]).flatmap(lambda dst: st.binary(max_size=40).map(lambda b: (dst, b))))
def test_any_echo_body_is_answered_or_dropped(dst_body):
    dst, body = dst_body
    n = node()
    head = bytes(IPv6(src=VM1_6, dst=dst) / ICMPv6EchoRequest()) if ":" in dst else bytes(IP(src=VM1, dst=dst) / ICMP(type=8))
    raw = bytearray(head + body)
    if ":" in dst:
        raw[4:6] = (len(raw) - 40).to_bytes(2, "big")
    else:
        raw[2:4] = len(raw).to_bytes(2, "big")
    trapped_ok(n, bytes(raw), DropReason.INVALID_PACKET)


# -- DHCPv6, through the trap -----------------------------------------------------------------------


def solicit(trid: int) -> bytes:
    return bytes(
        DHCP6_Solicit(trid=trid)
        / DHCP6OptClientId(duid=b"\x00\x03\x00\x01" + mac_bytes(MAC1))
        / DHCP6OptElapsedTime()
        / DHCP6OptRapidCommit()
        / DHCP6OptIA_NA(iaid=7)
    )


@fuzz_settings(200)
@given(st.integers(0, 0xFFFFFF).flatmap(lambda t: mutated(solicit(t))) | st.binary(max_size=80))
def test_broken_dhcpv6_through_the_trap_is_answered_or_dropped(payload):
    n = node()
    trapped_ok(n, udp_to("dhcp6", payload), DropReason.INVALID_DHCP6)
    for f in answers(n):
        assert f[IPv6].src == "fe80::5e00:100" and f[UDP].sport == 547 and bytes(f[UDP].payload)[1:4] == payload[1:4]
