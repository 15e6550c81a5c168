"""Property-based tests of what the dataplane reads from VMs and from the fabric: IPv4 and IPv6
headers with their options and extension headers, TCP, UDP, ICMP and ICMPv6, the flow key read
from them (``packet.parse``, ``packet.fast4``), the engine's per-packet entry point
(``Dataplane.process``, as the NFQUEUE shell calls it with a queue's bytes) and the tunnels' entry
point (``Dataplane.from_fabric``: MPLS over UDP from another node).

Properties: packets built with scapy parse to the fields they were built with; any bytes, and any
valid packet with bytes changed, cut or added, give a verdict and never an exception (a drop always
with a reason, counted once); every truncation of a valid packet is dropped as Invalid Packet;
what the engine accepts still parses; the encapsulation and the decapsulation are inverses."""

from __future__ import annotations

import ipaddress

from hypothesis import example, given
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.packet import Raw

from dataplane.core.overlay import OUTER, Encap, label_of
from dataplane.core.packet import Malformed, Parsed, fast4, parse
from flows.layout import DropReason
from tests.fuzz_helpers import (
    DESTINATIONS4,
    DESTINATIONS6,
    LL1,
    PEER_IP,
    REMOTE,
    TAP1,
    VHOST,
    VHOST_IP,
    VM1,
    VM1_6,
    Node,
    fuzz_settings,
    mutated,
    node,
    truncations,
)

ECHO = (0, 8)
ECHO6 = (128, 129)
PORTS = st.integers(0, 65535)
TCP_OPTIONS = [[], [("MSS", 1460)], [("NOP", None), ("NOP", None), ("Timestamp", (1, 2))], [("WScale", 7), ("SAckOK", b"")]]
# what each destination answers: (kind, port)
AIMED: dict[str, list[tuple[str, int]]] = {
    "169.254.169.254": [("tcp", 80)],
    "169.254.169.123": [("udp", 123), ("tcp", 123)],
    "fe80::a9fe:a9fe": [("tcp", 80), ("echo", 0)],
    "fe80::a9fe:a97b": [("udp", 123)],
    "10.1.1.2": [("udp", 53), ("icmp", 0)],
    "10.1.1.1": [("icmp", 0)],
    "255.255.255.255": [("udp", 67)],
    "fd00:10:1:1::2": [("udp", 53), ("echo", 0)],
    "fd00:10:1:1::1": [("echo", 0)],
    "ff02::1:2": [("udp", 547)],
    "fe80::5e00:100": [("echo", 0)],
    "10.1.1.4": [("tcp", 22), ("udp", 5000)],
    "10.1.1.9": [("tcp", 22), ("icmp", 0)],
    "fd00:10:1:1::4": [("tcp", 22), ("echo", 0)],
}
IP_OPTIONS = [b"", b"", b"", b"\x01\x01\x01\x00", b"\x07\x07\x04" + bytes(5), b"\x94\x04\x00\x00"]  # NOPs, record route, router alert


@st.composite
def ipv4(draw: st.DrawFn, src: str | None = None, dsts: list[str] = DESTINATIONS4) -> tuple[bytes, Parsed]:
    """A valid IPv4 packet, and the key fields it was built with."""
    s = src or draw(st.sampled_from([VM1] * 6 + ["0.0.0.0", "10.1.1.77"]))
    d = draw(st.sampled_from(dsts))
    aimed = draw(st.sampled_from([*AIMED.get(d, ()), None]))  # what the address answers, mostly
    options = draw(st.sampled_from(IP_OPTIONS))
    ip = IP(src=s, dst=d, options=options, ttl=draw(st.integers(1, 255)), tos=draw(st.integers(0, 255)), id=draw(PORTS))
    kind = aimed[0] if aimed else draw(st.sampled_from(["tcp", "udp", "icmp", "other"]))
    payload = Raw(draw(st.binary(max_size=48)))
    sport = dport = flags = 0
    if kind == "tcp":
        sport, dport, flags = (
            draw(PORTS),
            aimed[1] if aimed else draw(PORTS),
            draw(st.sampled_from([2, 2, 0x10, 0x18, 0x11, 4, 0x12]) | st.integers(0, 255)),
        )
        l4 = TCP(sport=sport, dport=dport, flags=flags, seq=draw(st.integers(0, 2**32 - 1)), options=draw(st.sampled_from(TCP_OPTIONS)))
        proto = 6
    elif kind == "udp":
        sport, dport = draw(PORTS), aimed[1] if aimed else draw(PORTS)
        l4 = UDP(sport=sport, dport=dport)
        proto = 17
    elif kind == "icmp":
        itype = draw(st.sampled_from([8, 8, 0, 3, 11]) | st.integers(0, 255))
        ident = draw(PORTS)
        l4 = ICMP(type=itype, code=draw(st.integers(0, 255)), id=ident, seq=draw(PORTS))
        sport = ident if itype in ECHO else 0
        proto = 1
    else:
        proto = draw(st.sampled_from([0, 2, 47, 50, 132, 255]))
        ip.proto = proto
        l4 = Raw(b"")
    raw = bytes(ip / l4 / payload)
    ihl = 20 + len(options)
    return raw, Parsed(ihl, proto, ipaddress.IPv4Address(s).packed, ipaddress.IPv4Address(d).packed, sport, dport, flags, len(raw))


EXTENSIONS = [
    (),
    (),
    (),
    (IPv6ExtHdrHopByHop(),),
    (IPv6ExtHdrDestOpt(),),
    (IPv6ExtHdrRouting(segleft=0),),
    (IPv6ExtHdrHopByHop(), IPv6ExtHdrDestOpt(), IPv6ExtHdrRouting(segleft=0)),
]


@st.composite
def ipv6(draw: st.DrawFn, src: str | None = None, dsts: list[str] = DESTINATIONS6) -> tuple[bytes, Parsed]:
    """A valid IPv6 packet (extension headers the engine walks included), and its key fields."""
    d = draw(st.sampled_from(dsts))
    link = d.startswith(("fe80", "ff02"))
    s = src or draw(st.sampled_from([LL1 if link else VM1_6] * 6 + [VM1_6 if link else LL1, "fd00:10:1:1::77"]))
    ext = draw(st.sampled_from(EXTENSIONS))
    aimed = draw(st.sampled_from([*AIMED.get(d, ()), None]))
    kind = aimed[0] if aimed else draw(st.sampled_from(["tcp", "udp", "echo", "icmp6", "none"]))
    payload = Raw(draw(st.binary(max_size=48)))
    sport = dport = flags = 0
    if kind == "tcp":
        sport, dport, flags = draw(PORTS), aimed[1] if aimed else draw(PORTS), draw(st.sampled_from([2, 0x10, 0x11, 4]) | st.integers(0, 255))
        l4, proto = TCP(sport=sport, dport=dport, flags=flags, options=draw(st.sampled_from(TCP_OPTIONS))), 6
    elif kind == "udp":
        sport, dport = draw(PORTS), aimed[1] if aimed else draw(PORTS)
        l4, proto = UDP(sport=sport, dport=dport), 17
    elif kind == "echo":
        ident = draw(PORTS)
        l4, proto = draw(st.sampled_from([ICMPv6EchoRequest, ICMPv6EchoRequest, ICMPv6EchoReply]))(id=ident, seq=draw(PORTS)), 58
        sport = ident
    elif kind == "icmp6":
        l4, proto = ICMPv6DestUnreach(code=draw(st.integers(0, 255))), 58
    else:
        l4, proto, payload = Raw(b""), 59, Raw(b"")
    pkt = IPv6(src=s, dst=d, hlim=draw(st.integers(0, 255)), tc=draw(st.integers(0, 255)), fl=draw(st.integers(0, 0xFFFFF)))
    for h in ext:
        pkt = pkt / h.copy()
    pkt = pkt / l4 / payload
    raw = bytes(pkt)
    ihl = 40 + sum(len(bytes(h)) for h in ext)
    return raw, Parsed(ihl, proto, ipaddress.IPv6Address(s).packed, ipaddress.IPv6Address(d).packed, sport, dport, flags, len(raw))


PACKETS = ipv4() | ipv6()


def verdict_ok(n: Node, raw: bytes, indev: int) -> None:
    """``raw`` from ``indev`` gets a verdict and no exception: a drop has a reason and is counted once;
    a packet trapped for the agent's services is not counted as dropped by the engine (the services
    may drop it themselves, once); what is accepted with new bytes still parses."""
    before = n.drops()
    v = n.dataplane.process(raw, indev)
    counted = n.drops() - before
    if not v.accept and v.reason != DropReason.NONE:
        assert counted == 1
    elif not v.accept:
        assert counted <= 1  # trapped (the services' own drop, if the message is bad) or sent by ``inject``
    else:
        assert counted == 0
        if v.payload is not None:
            parse(v.payload)
            assert len(v.payload) in (len(raw), len(raw) + OUTER)  # NAT in place, or MPLS over UDP before it


# -- the key fields ---------------------------------------------------------------------------------


@fuzz_settings(300)
@given(PACKETS)
def test_a_valid_packet_parses_to_what_it_was_built_with(built):
    raw, fields = built
    assert parse(raw) == fields
    fast = fast4(raw)
    assert fast is None or fast == fields  # the one-struct read agrees where it reads at all


@fuzz_settings(200)
@given(st.binary(max_size=80) | PACKETS.flatmap(lambda b: mutated(b[0])))
@example(b"\x45" + bytes(27))  # total length 0
@example(bytes(IP(dst=VM1) / TCP(dataofs=15)))  # a data offset past the packet
def test_parse_raises_nothing_but_malformed_and_fast4_agrees(raw):
    try:
        p = parse(raw)
    except Malformed:
        assert fast4(raw) is None
        return
    assert p.ihl <= p.length <= len(raw)
    fast = fast4(raw)
    assert fast is None or fast == p


@fuzz_settings(60)
@given(PACKETS)
def test_every_truncation_of_a_valid_packet_is_malformed(built):
    raw, _ = built
    for cut in truncations(raw):
        try:
            parse(cut)
        except Malformed:
            continue
        raise AssertionError("a packet cut to %d of its %d bytes parsed" % (len(cut), len(raw)))


# -- the engine's entry point -----------------------------------------------------------------------


@fuzz_settings(100)
@given(st.lists(PACKETS, min_size=1, max_size=6))
def test_valid_packets_from_a_vm_get_a_verdict(pkts):
    n = node()
    for raw, _ in pkts:
        verdict_ok(n, raw, TAP1)
    n.well_behaved()


@fuzz_settings(120)
@given(
    st.lists(
        st.tuples(PACKETS.flatmap(lambda b: mutated(b[0])) | st.binary(max_size=100), st.sampled_from([TAP1, VHOST, 0, 99])), min_size=1, max_size=6
    )
)
def test_broken_packets_from_vms_the_fabric_and_the_node_get_a_verdict(pkts):
    """vm1's tap, vhost0 (the fabric's packets), the node itself (0), an interface that is no vif."""
    n = node()
    for raw, indev in pkts:
        verdict_ok(n, raw, indev)
    n.well_behaved()


@fuzz_settings(40)
@given(PACKETS, st.sampled_from([TAP1, VHOST]))
def test_every_truncation_of_a_valid_packet_is_dropped_as_invalid(built, indev):
    raw, _ = built
    n = node()
    for cut in truncations(raw):
        before = n.drops()
        v = n.dataplane.process(cut, indev)
        assert (v.accept, v.reason) == (False, DropReason.INVALID_PACKET), len(cut)
        assert n.drops() == before + 1
    assert n.sent == []


# -- MPLS over UDP from another node ----------------------------------------------------------------

PEER_ENCAP = Encap(ipaddress.IPv4Address(PEER_IP).packed, ipaddress.IPv4Address(VHOST_IP).packed, label_of(3), 50000)


def from_remote() -> st.SearchStrategy[tuple[bytes, Parsed]]:
    """What the other node's VM sends to vm1."""
    return ipv4(src=REMOTE, dsts=[VM1])


@fuzz_settings(150)
@given(from_remote())
def test_a_tunnel_packet_delivers_exactly_its_inner_packet(built):
    inner, _ = built
    n = node()
    d = n.dataplane.overlay.decap(PEER_ENCAP.apply4(inner))
    assert d is not None and d.inner == inner and d.vif.index == 3 and d.tunnel.dst == PEER_IP
    before = n.drops()
    v = n.dataplane.from_fabric(PEER_ENCAP.apply4(inner), VHOST)
    if v.accept:
        assert v.payload == inner
    else:
        assert v.reason != DropReason.NONE and n.drops() == before + 1


@fuzz_settings(200)
@given(st.binary(max_size=120))
def test_encapsulation_and_decapsulation_are_inverses(inner):
    n = node()
    outer = PEER_ENCAP.apply4(inner)
    assert outer == PEER_ENCAP.header(len(inner)) + inner
    d = n.dataplane.overlay.decap(outer)
    if len(inner) < 20:
        assert d is None  # too short to hold an IP header: dropped before a lookup
    else:
        assert d is not None and d.inner == inner


@fuzz_settings(120)
@given(st.lists(from_remote().flatmap(lambda b: mutated(PEER_ENCAP.apply4(b[0]))) | st.binary(max_size=100), min_size=1, max_size=6))
def test_broken_tunnel_packets_get_a_verdict(pkts):
    n = node()
    for raw in pkts:
        before = n.drops()
        v = n.dataplane.from_fabric(raw, VHOST)
        if v.accept:
            assert n.drops() == before and (v.payload is None or parse(v.payload))
        else:
            assert n.drops() == before + 1 and v.reason != DropReason.NONE
    n.well_behaved()


@fuzz_settings(40)
@given(from_remote())
def test_every_truncation_of_a_tunnel_packet_is_dropped_as_invalid(built):
    outer = PEER_ENCAP.apply4(built[0])
    n = node()
    for cut in truncations(outer):
        v = n.dataplane.from_fabric(cut, VHOST)
        assert (v.accept, v.reason) == (False, DropReason.INVALID_PACKET), len(cut)
