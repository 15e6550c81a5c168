"""MPLS over UDP between two pure dataplanes: node A (vhost0 10.10.0.2) with vm1 10.1.1.3, node B
(10.10.0.3) with vm2 10.1.1.4, both in their node's VRF 1; the routes as the agents would set
them from the cluster's store."""

from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.packet import Raw

from dataplane.core.dataplane import Dataplane
from dataplane.core.overlay import MPLS_UDP_PORT, TUNNEL_NH_BASE, Encap, Route, label_of
from dataplane.core.vif import Vif
from flows.layout import DropReason
from flows.table import FlowTable

A_IP, B_IP = "10.10.0.2", "10.10.0.3"
TAP = 11
VHOST = 2


def node(vhost_ip: str, vm_ip: str, vif: int) -> Dataplane:
    d = Dataplane(FlowTable.in_memory(1024), vhost_ip, 8097)
    d.set_host_ifindex(VHOST)
    d.add_vif(Vif(vif, "tap%d" % vif, TAP, vm_ip, "02:00:0a:01:00:%02x" % vif, vrf=1))
    return d


@pytest.fixture
def pair() -> tuple[Dataplane, Dataplane]:
    a, b = node(A_IP, "10.1.1.3", 3), node(B_IP, "10.1.1.4", 3)  # the same vif index on both nodes
    a.set_routes([Route(1, "10.1.1.4", "b", B_IP, label_of(3))])
    b.set_routes([Route(1, "10.1.1.3", "a", A_IP, label_of(3))])
    return a, b


def outer_ok(pkt: bytes, src: str, dst: str, label: int) -> bytes:
    """Check the outer headers as the kernel and a packet parser would; return the inner packet."""
    ip = IP(pkt)
    assert ip.src == src and ip.dst == dst and ip.proto == 17 and ip.ttl == 64
    assert ip.len == len(pkt)
    fresh = IP(pkt)
    del fresh.chksum
    assert IP(bytes(fresh)).chksum == ip.chksum  # the checksum is right
    udp = ip[UDP]
    assert udp.dport == MPLS_UDP_PORT and 49152 <= udp.sport <= 65535 and udp.len == len(pkt) - 20
    word = int.from_bytes(pkt[28:32], "big")
    assert word >> 12 == label and word & 0x100
    return pkt[32:]


def test_vm_to_vm_across_nodes_both_ways(pair):
    a, b = pair
    req = bytes(IP(src="10.1.1.3", dst="10.1.1.4") / TCP(sport=40000, dport=22, flags="S") / Raw(b"hi"))
    v = a.process(req, TAP)
    assert v.accept and v.payload is not None
    inner = outer_ok(v.payload, A_IP, B_IP, label_of(3))
    assert inner == req
    w = b.from_fabric(v.payload, VHOST)
    assert w.accept and w.payload == req
    reply = bytes(IP(src="10.1.1.4", dst="10.1.1.3") / TCP(sport=22, dport=40000, flags="SA"))
    v2 = b.process(reply, TAP)
    assert outer_ok(v2.payload, B_IP, A_IP, label_of(3)) == reply
    w2 = a.from_fabric(v2.payload, VHOST)
    assert w2.accept and w2.payload == reply
    # one pair on each node, keyed by the tunnel's next hop on the tunnel side
    for d in (a, b):
        nhs = sorted(e.nh for e in (d.table.read(i) for i, _ in d.entries.live()))
        assert nhs[0] == 3 and nhs[1] >= TUNNEL_NH_BASE
    # the same flow's packets keep their outer source port (one path through the fabric)
    again = a.process(req, TAP)
    assert again.payload[20:22] == v.payload[20:22]


def test_icmp_echo_across_nodes(pair):
    a, b = pair
    echo = bytes(IP(src="10.1.1.3", dst="10.1.1.4") / ICMP(id=7, seq=1) / Raw(b"x" * 56))
    w = b.from_fabric(a.process(echo, TAP).payload, VHOST)
    assert w.payload == echo
    back = bytes(IP(src="10.1.1.4", dst="10.1.1.3") / ICMP(type=0, id=7, seq=1) / Raw(b"x" * 56))
    assert a.from_fabric(b.process(back, TAP).payload, VHOST).payload == back


def test_unknown_destination_is_no_route(pair):
    a, _ = pair
    v = a.process(bytes(IP(src="10.1.1.3", dst="10.1.1.9") / UDP(sport=1, dport=2)), TAP)
    assert not v.accept and v.reason == DropReason.NO_ROUTE


def test_tunnel_packets_checked(pair):
    a, b = pair
    req = bytes(IP(src="10.1.1.3", dst="10.1.1.4") / UDP(sport=5000, dport=53) / Raw(b"q"))
    good = a.process(req, TAP).payload
    # from a node no route names
    stranger = Encap(bytes([10, 10, 0, 9]), bytes([10, 10, 0, 3]), label_of(3), 50000).apply4(req)
    assert b.from_fabric(stranger, VHOST).reason == DropReason.INVALID_PACKET
    # a label of no local vif
    bad_label = Encap(bytes([10, 10, 0, 2]), bytes([10, 10, 0, 3]), label_of(9), 50000).apply4(req)
    assert b.from_fabric(bad_label, VHOST).reason == DropReason.INVALID_PACKET
    # an inner source that is not a route through that tunnel
    forged = bytes(IP(src="10.1.1.77", dst="10.1.1.4") / UDP(sport=5000, dport=53))
    f = Encap(bytes([10, 10, 0, 2]), bytes([10, 10, 0, 3]), label_of(3), 50000).apply4(forged)
    assert b.from_fabric(f, VHOST).reason == DropReason.INVALID_SOURCE
    # truncated, and not MPLS over UDP
    assert b.from_fabric(good[:40], VHOST).reason == DropReason.INVALID_PACKET
    assert b.from_fabric(req, VHOST).reason == DropReason.INVALID_PACKET
    assert b.from_fabric(good, VHOST).accept


def test_a_route_that_goes_takes_its_flows(pair):
    a, _ = pair
    req = bytes(IP(src="10.1.1.3", dst="10.1.1.4") / UDP(sport=5000, dport=53))
    assert a.process(req, TAP).accept
    assert len(list(a.entries.live())) == 2
    assert a.set_routes([]) == 2
    assert not a.overlay.tunnels and not list(a.entries.live())
    assert a.process(req, TAP).reason == DropReason.NO_ROUTE


def test_a_moved_route_goes_to_its_new_node(pair):
    a, _ = pair
    req = bytes(IP(src="10.1.1.3", dst="10.1.1.4") / UDP(sport=5000, dport=53))
    a.process(req, TAP)
    a.set_routes([Route(1, "10.1.1.4", "c", "10.10.0.4", label_of(5))])
    v = a.process(req, TAP)
    assert outer_ok(v.payload, A_IP, "10.10.0.4", label_of(5)) == req
    assert len(a.overlay.tunnels) == 1


def test_own_routes_and_other_vrfs_are_ignored(pair):
    a, _ = pair
    a.set_routes([Route(1, "10.1.1.3", "a", A_IP, label_of(3)), Route(2, "10.1.2.4", "b", B_IP, label_of(4))])
    assert list(a.overlay.routes) == [(2, bytes([10, 1, 2, 4]))]
    v = a.process(bytes(IP(src="10.1.1.3", dst="10.1.2.4") / UDP(sport=1, dport=2)), TAP)
    assert v.reason == DropReason.NO_ROUTE  # vm1 is in VRF 1


def test_removing_the_vif_takes_its_tunnel_flows_and_label(pair):
    a, b = pair
    req = bytes(IP(src="10.1.1.3", dst="10.1.1.4") / UDP(sport=5000, dport=53))
    b.from_fabric(a.process(req, TAP).payload, VHOST)
    assert b.remove_vif(3) == 2
    assert b.from_fabric(a.process(req, TAP).payload, VHOST).reason == DropReason.INVALID_PACKET


def test_a_flow_that_found_no_route_finds_the_route_that_comes():
    a = node(A_IP, "10.1.1.3", 3)
    echo = bytes(IP(src="10.1.1.3", dst="10.1.1.4") / ICMP(id=9, seq=1))
    for _ in range(3):  # every packet keeps its Drop entry alive
        assert a.process(echo, TAP).reason == DropReason.NO_ROUTE
    a.set_routes([Route(1, "10.1.1.4", "b", B_IP, label_of(3))])
    assert a.process(echo, TAP).accept
    # and the same for a VM plugged on this node
    a.set_routes([])
    assert a.process(echo, TAP).reason == DropReason.NO_ROUTE
    a.add_vif(Vif(4, "tap4", TAP + 1, "10.1.1.4", "02:00:0a:01:00:04", vrf=1))
    v = a.process(echo, TAP)
    assert v.accept and v.payload is None  # forwarded on this node, not encapsulated


def test_a_gone_tunnel_takes_its_drop_counts():
    a, b = node(A_IP, "10.1.1.3", 3), node(B_IP, "10.1.1.4", 3)
    a.set_routes([Route(1, "10.1.1.4", "b", B_IP, label_of(3))])
    b.set_routes([Route(1, "10.1.1.3", "a", A_IP, label_of(3))])
    forged = Encap(bytes([10, 10, 0, 2]), bytes([10, 10, 0, 3]), label_of(3), 50000).apply4(
        bytes(IP(src="10.1.1.77", dst="10.1.1.4") / UDP(sport=1, dport=2))
    )
    assert b.from_fabric(forged, VHOST).reason == DropReason.INVALID_SOURCE
    assert any(k[0] >= TUNNEL_NH_BASE for k in b.path.vif_drops)
    b.set_routes([])
    assert not any(k[0] >= TUNNEL_NH_BASE for k in b.path.vif_drops)


def test_the_inner_packets_fast_read_agrees_with_parse():
    import random

    from dataplane.core.packet import Malformed, fast4, parse

    rnd = random.Random(7)
    shapes = [
        IP(src="10.1.1.3", dst="10.1.1.4") / TCP(sport=1, dport=2, flags="S"),
        IP(src="10.1.1.3", dst="10.1.1.4") / TCP(sport=1, dport=2, flags="PA", options=[("MSS", 1460)]) / Raw(b"x" * 30),
        IP(src="10.1.1.3", dst="10.1.1.4") / UDP(sport=3, dport=4) / Raw(b"y" * 9),
        IP(src="10.1.1.3", dst="10.1.1.4") / ICMP(id=5),
        IP(src="10.1.1.3", dst="10.1.1.4", options=[b"\x01" * 4]) / UDP(sport=3, dport=4),
        IP(src="10.1.1.3", dst="10.1.1.4", flags="MF") / UDP(sport=3, dport=4),
    ]
    for shape in shapes:
        raw = bytes(shape)
        for cut in [len(raw)] + [rnd.randrange(len(raw)) for _ in range(20)]:
            pkt = raw[:cut]
            fast = fast4(pkt)
            try:
                slow = parse(pkt)
            except Malformed:
                slow = None
            assert fast is None or fast == slow, (shape.summary(), cut)
    assert fast4(bytes(shapes[1])) is not None and fast4(bytes(shapes[2])) is not None  # the common ones take it
