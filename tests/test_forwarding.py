"""The per-packet decision, driven with packet bytes: flow setup, NAT, VM-to-VM, drops."""

import socket

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.packet import Raw

from dataplane.core.dataplane import Dataplane, Limits
from flows.layout import Action, DropReason, Flag
from tests.dataplanes import TAP1, TAP2, dataplane


@pytest.fixture
def dp():
    return dataplane(other_network=True)


def syn(src="10.1.1.3", dst="169.254.169.254", sport=40000, dport=80) -> bytes:
    return bytes(IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags="S"))


def test_metadata_flow_pair_and_nat(dp):
    v = dp.process(syn(), TAP1)
    assert v.accept and v.payload is not None
    out = IP(v.payload)
    assert (out.src, out.dst, out[TCP].sport, out[TCP].dport) == ("169.254.0.3", "10.10.0.2", 40000, 8097)
    entries = {e.index: e for e in dp.table.dump()}
    assert len(entries) == 2
    fwd = next(e for e in entries.values() if not e.reverse)
    rev = entries[fwd.rindex]
    assert fwd.action == rev.action == Action.NAT
    assert fwd.flags & Flag.SNAT and fwd.flags & Flag.DNAT and fwd.flags & Flag.DPAT and fwd.flags & Flag.LINK_LOCAL
    assert rev.flags & Flag.SPAT and rev.rindex == fwd.index
    assert (fwd.packets, fwd.bytes) == (1, 40)
    # the proxy's answer, sent by the compute node itself (indev 0), goes back as 169.254.169.254:80
    reply = bytes(IP(src="10.10.0.2", dst="169.254.0.3") / TCP(sport=8097, dport=40000, flags="SA"))
    v = dp.process(reply, 0)
    back = IP(v.payload)
    assert (back.src, back.dst, back[TCP].sport, back[TCP].dport) == ("169.254.169.254", "10.1.1.3", 80, 40000)
    assert dp.table.read(rev.index).packets == 1
    assert fwd.flags & Flag.NEW_FLOW and not dp.table.read(fwd.index).flags & Flag.NEW_FLOW  # answered: no longer new
    # the next packet of the flow hits the same entry
    dp.process(bytes(IP(src="10.1.1.3", dst="169.254.169.254") / TCP(sport=40000, dport=80, flags="A")), TAP1)
    assert dp.table.read(fwd.index).packets == 2
    assert dp.table.active == 2


def test_metadata_nat_is_the_rewrite_for_any_source_port(dp):
    # The checksum changes of metadata NAT are computed once per VM address and service, not per
    # set-up: the VM's source port is kept both ways, so it must not change them.  Each flow's
    # patches must equal what Rewrite makes from all four addresses and ports.
    import random

    from scapy.layers.inet6 import IPv6

    from dataplane.core.nat import Rewrite
    from flows.layout import make_key

    rnd = random.Random(7)
    cases = [("10.1.1.3", "169.254.169.254", "169.254.0.3", "10.10.0.2", 3, IP), ("fe80::ff:fe00:3", "fe80::a9fe:a9fe",
             "fd00:a9fe:a9fe::3", "fd00:a9fe:a9fe::1", 3, IPv6)]  # fmt: skip
    for src, dst, md, proxy, nh, ip in cases:
        for sport in [1, 80, 8097, 0xFFFE, 0xFFFF] + [rnd.randrange(1, 65536) for _ in range(100)]:
            v = dp.process(bytes(ip(src=src, dst=dst) / TCP(sport=sport, dport=80, flags="S")), TAP1)
            assert v.accept, v
            s, d, m, x = (socket.inet_pton(socket.AF_INET6 if ip is IPv6 else socket.AF_INET, a) for a in (src, dst, md, proxy))
            fi = dp.table.lookup(make_key(nh, s, d, 6, sport, 80))
            ri = dp.table.reverse_of(fi)
            assert dp.entries.states[fi].patch == Rewrite(6, s, d, sport, 80, m, x, sport, 8097).patch
            assert dp.entries.states[ri].patch == Rewrite(6, x, m, 8097, sport, d, s, 80, sport).patch
            dp.flush()
    for n in range(5000):  # sources a VM may vary (IPv6 link-local) do not grow it without bound
        dp.flow_setup.metadata_deltas(n.to_bytes(16, "big"), b"\xfe" * 16, 80, b"\1" * 16, b"\2" * 16)
    assert len(dp.flow_setup._md_deltas) <= 4096


def test_each_vm_gets_its_own_metadata_ip(dp):
    a = IP(dp.process(syn(), TAP1).payload)
    b = IP(dp.process(syn(src="10.1.1.4"), TAP2).payload)
    assert a.src == "169.254.0.3" and b.src == "169.254.0.4"


def test_forged_source_is_dropped(dp):
    v = dp.process(syn(src="10.1.1.4"), TAP1)  # vm1 claims vm2's address
    assert not v.accept and v.reason == DropReason.INVALID_SOURCE
    assert dp.drops[DropReason.INVALID_SOURCE] == 1
    assert dp.table.active == 0


def test_vm_cannot_reach_proxy_or_other_metadata_ip_directly(dp):
    assert dp.process(syn(dst="10.10.0.2", dport=8097), TAP1).reason == DropReason.NO_ROUTE
    assert dp.process(syn(dst="169.254.0.4", dport=8097, sport=40001), TAP1).reason == DropReason.NO_ROUTE


def test_host_packet_without_reverse_flow_is_dropped(dp):
    v = dp.process(bytes(IP(src="10.10.0.2", dst="169.254.0.3") / TCP(sport=8097, dport=1)), 0)
    assert not v.accept and v.reason == DropReason.FLOW_NAT_NO_RFLOW


def test_unknown_interface_and_malformed(dp):
    assert dp.process(syn(), 99).reason == DropReason.UNKNOWN_INTERFACE
    assert dp.process(b"\x45\x00", TAP1).reason == DropReason.INVALID_PACKET


def test_vm_to_vm_forward_pair(dp):
    ping = bytes(IP(src="10.1.1.3", dst="10.1.1.4") / ICMP(type=8, id=7, seq=1))
    v = dp.process(ping, TAP1)
    assert v.accept and v.payload is None
    pong = bytes(IP(src="10.1.1.4", dst="10.1.1.3") / ICMP(type=0, id=7, seq=1))
    assert dp.process(pong, TAP2).accept
    assert dp.table.active == 2
    fwd = next(e for e in dp.table.dump() if not e.reverse)
    assert fwd.action == Action.FORWARD and dp.table.read(fwd.rindex).packets == 1
    tcp = bytes(IP(src="10.1.1.3", dst="10.1.1.4") / TCP(sport=5555, dport=22, flags="S"))
    assert dp.process(tcp, TAP1).accept
    assert dp.process(bytes(IP(src="10.1.1.4", dst="10.1.1.3") / TCP(sport=22, dport=5555, flags="SA")), TAP2).accept
    assert dp.table.active == 4
    assert dp.vifs[4].tx_packets == 2 and dp.vifs[3].tx_packets == 2


def test_other_network_and_unknown_destination_drop(dp):
    v = dp.process(bytes(IP(src="10.1.1.3", dst="10.1.1.5") / UDP(sport=1, dport=2)), TAP1)
    assert not v.accept and v.reason == DropReason.NO_ROUTE
    e = dp.table.dump()[0]
    assert e.action == Action.DROP and e.drop_reason == DropReason.NO_ROUTE
    # the drop flow is hit again, without a new setup
    dp.process(bytes(IP(src="10.1.1.3", dst="10.1.1.5") / UDP(sport=1, dport=2)), TAP1)
    assert dp.table.active == 1 and dp.drops[DropReason.NO_ROUTE] == 2


def test_udp_to_metadata_is_not_trapped(dp):
    v = dp.process(bytes(IP(src="10.1.1.3", dst="169.254.169.254") / UDP(sport=1, dport=80)), TAP1)
    assert not v.accept


def test_removing_a_port_removes_its_flows(dp):
    dp.process(syn(), TAP1)
    dp.process(bytes(IP(src="10.1.1.3", dst="10.1.1.4") / ICMP(type=8, id=1)), TAP1)
    dp.process(syn(src="10.1.1.4"), TAP2)
    assert dp.table.active == 6
    assert dp.remove_vif(3) == 4
    assert dp.table.active == 2
    assert dp.process(syn(), TAP1).reason == DropReason.UNKNOWN_INTERFACE


def test_removing_a_service_removes_its_flows_and_stops_the_trap(dp):
    dp.process(syn(), TAP1)
    assert dp.set_services([]) == 2
    assert dp.table.active == 0
    assert not dp.process(syn(sport=40002), TAP1).accept


def test_metadata_payload_survives(dp):
    req = b"GET /openstack HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n"
    v = dp.process(bytes(IP(src="10.1.1.3", dst="169.254.169.254") / TCP(sport=40000, dport=80, flags="PA") / Raw(req)), TAP1)
    assert bytes(IP(v.payload)[TCP].payload) == req


def test_aging(dp):
    dp.process(syn(), TAP1, now=0)
    assert dp.age(idle_s=1, now=2_000_000_000) == 2
    assert dp.table.active == 0 and not any(dp.entries.states)


def test_ipv6_metadata_nat_pair(dp):
    from scapy.layers.inet6 import IPv6

    syn6 = bytes(IPv6(src="fe80::ff:fe00:3", dst="fe80::a9fe:a9fe") / TCP(sport=40000, dport=80, flags="S"))
    v = dp.process(syn6, TAP1)
    out = IPv6(v.payload)
    assert (out.src, out.dst, out[TCP].dport) == ("fd00:a9fe:a9fe::3", "fd00:a9fe:a9fe::1", 8097)
    reply = bytes(IPv6(src="fd00:a9fe:a9fe::1", dst="fd00:a9fe:a9fe::3") / TCP(sport=8097, dport=40000, flags="SA"))
    back = IPv6(dp.process(reply, 0).payload)
    assert (back.src, back.dst, back[TCP].sport, back[TCP].dport) == ("fe80::a9fe:a9fe", "fe80::ff:fe00:3", 80, 40000)
    fwd = next(e for e in dp.table.dump() if not e.reverse)
    assert fwd.family == 6 and fwd.action == Action.NAT and len(fwd.src) == 16
    # a global source that is not the port's is refused; other IPv6 destinations have no route
    assert dp.process(bytes(IPv6(src="2001:db8::9", dst="fe80::a9fe:a9fe") / TCP(sport=1, dport=80)), TAP1).reason == DropReason.INVALID_SOURCE
    assert dp.process(bytes(IPv6(src="fe80::ff:fe00:3", dst="fe80::1") / TCP(sport=1, dport=80)), TAP1).reason == DropReason.NO_ROUTE


def _dataplane() -> Dataplane:
    # tight limits, so that the random mix also meets refused set-ups and refused restarts
    return dataplane(limits=Limits(max_vm_flows=16))


def test_fast_path_decides_as_the_general_path_randomised():
    # Dataplane.process answers most packets of live flows itself, and sends the rest to the
    # general path (PacketPath.general).  Over a random mix of set-ups, answers, NAT in both directions,
    # FINs and RSTs, IP options, fragments and truncated packets, a dataplane fed through
    # process must give the same verdicts, table and counters as one fed only through the general path.
    import random

    rnd = random.Random(5)
    fast, general = _dataplane(), _dataplane()
    ports = [40000 + i for i in range(6)]
    flags = ["S", "SA", "A", "PA", "FA", "R", "A", "PA"]

    def packet() -> tuple[bytes, int]:
        kind = rnd.randrange(6)
        sport, fl = rnd.choice(ports), rnd.choice(flags)
        data = Raw(b"x" * rnd.randrange(0, 40))
        if kind == 0:  # VM to the metadata service
            p, dev = IP(src="10.1.1.3", dst="169.254.169.254") / TCP(sport=sport, dport=80, flags=fl) / data, TAP1
        elif kind == 1:  # the proxy's answer, from the compute node
            p, dev = IP(src="10.10.0.2", dst="169.254.0.3") / TCP(sport=8097, dport=sport, flags=fl) / data, 0
        elif kind == 2:  # VM to VM, TCP both ways
            if rnd.random() < 0.5:
                p, dev = IP(src="10.1.1.3", dst="10.1.1.4") / TCP(sport=sport, dport=22, flags=fl) / data, TAP1
            else:
                p, dev = IP(src="10.1.1.4", dst="10.1.1.3") / TCP(sport=22, dport=sport, flags=fl) / data, TAP2
        elif kind == 3:  # VM to VM, UDP both ways, some without a checksum
            csum = 0 if rnd.random() < 0.3 else None
            if rnd.random() < 0.5:
                p, dev = IP(src="10.1.1.3", dst="10.1.1.4") / UDP(sport=sport, dport=53, chksum=csum) / data, TAP1
            else:
                p, dev = IP(src="10.1.1.4", dst="10.1.1.3") / UDP(sport=53, dport=sport, chksum=csum) / data, TAP2
        elif kind == 4:  # IP options: a 24-byte header
            p, dev = IP(src="10.1.1.3", dst="10.1.1.4", options=b"\x01\x01\x01\x00") / UDP(sport=sport, dport=53) / data, TAP1
        else:  # damaged: a fragment, or cut short
            p, dev = IP(src="10.1.1.3", dst="10.1.1.4", flags="MF") / UDP(sport=sport, dport=53) / data, TAP1
            if rnd.random() < 0.5:
                return bytes(IP(src="10.1.1.3", dst="10.1.1.4") / TCP(sport=sport, dport=22))[: rnd.randrange(20, 40)], TAP1
        return bytes(p), dev

    hits = 0
    for step in range(3000):
        pkt, dev = packet()
        now = 1_000_000_000 + step * 1_000_000
        before = fast.table.active
        v1 = fast.process(pkt, dev, now)
        vif = general.vif_table.by_ifindex[dev] if dev else general.host
        v2 = general.path.general(pkt, vif, now)
        assert v1 == v2, (step, pkt)
        hits += fast.table.active == before and v1.accept
        if step % 100 == 0:  # every active entry has its state, and only those
            for dp in (fast, general):
                assert {i for i, st in enumerate(dp.entries.states) if st is not None} == set(dp.table.active_indices())
    assert hits > 1000  # most packets were of live flows
    assert fast.drops[DropReason.FLOW_LIMIT]  # the limit was met (metadata pairs meet no link-local cap)
    assert fast.table.dump() == general.table.dump()
    counters = ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "drops", "flows", "linklocal_flows")
    for i in fast.vifs:
        assert [getattr(fast.vifs[i], c) for c in counters] == [getattr(general.vifs[i], c) for c in counters]
    assert fast.drops == general.drops and fast.lifecycle.closing() == general.lifecycle.closing()
