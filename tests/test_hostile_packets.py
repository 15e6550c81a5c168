"""Property-based tests: nothing a VM sends crashes the dataplane, and what cannot be forwarded is
dropped and counted with a reason while the other VMs' flows keep working."""

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.packet import Raw

from dataplane.core.dataplane import Limits
from dataplane.core.packet import Malformed, parse
from flows.layout import DropReason
from tests.dataplanes import TAP1, TAP2, dataplane

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def make():
    return dataplane(4096, Limits(max_vm_flows=200))


def well_behaved(d):
    """vm2's metadata SYN and a VM-to-VM packet: must keep working whatever vm1 sent."""
    syn = bytes(IP(src="10.1.1.4", dst="169.254.169.254") / TCP(sport=50000, dport=80, flags="S"))
    v = d.process(syn, TAP2)
    assert v.accept and IP(v.payload).src == "169.254.0.4"
    assert d.process(bytes(IP(src="10.1.1.4", dst="10.1.1.3") / UDP(sport=5, dport=6)), TAP2).accept


@SETTINGS
@given(st.binary(max_size=120))
def test_random_bytes_never_crash(data):
    d = make()
    v = d.process(data, TAP1)
    if not v.accept:
        assert v.reason != DropReason.NONE and sum(d.drops.values()) == 1
    well_behaved(d)


@st.composite
def mangled_ipv4(draw):
    """A real packet of some kind, then a few of its header bytes broken."""
    kind = draw(st.sampled_from(["tcp", "udp", "icmp", "other"]))
    dst = draw(st.sampled_from(["169.254.169.254", "10.1.1.4", "10.9.9.9", "169.254.0.4"]))
    payload = Raw(draw(st.binary(max_size=40)))
    ip = IP(src="10.1.1.3", dst=dst, flags=draw(st.sampled_from([0, 1, 2])), frag=draw(st.sampled_from([0, 0, 0, 1, 185])),
            options=draw(st.sampled_from([[], b"\x01\x01\x01\x00", b"\x07\x07\x04" + b"\x00" * 5])))  # fmt: skip
    if kind == "tcp":
        l4 = TCP(sport=draw(st.integers(0, 65535)), dport=draw(st.sampled_from([80, 22, 0])), flags=draw(st.integers(0, 255)),
                 dataofs=draw(st.sampled_from([None, 0, 4, 5, 15])))  # fmt: skip
    elif kind == "udp":
        l4 = UDP(sport=draw(st.integers(0, 65535)), dport=draw(st.sampled_from([80, 53])), len=draw(st.sampled_from([None, 0, 3, 9999])))
    elif kind == "icmp":
        l4 = ICMP(type=draw(st.integers(0, 255)), code=draw(st.integers(0, 255)))
    else:
        ip.proto = draw(st.sampled_from([0, 2, 47, 50, 132, 255]))
        l4 = Raw(b"")
    raw = bytearray(bytes(ip / l4 / payload))
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, len(raw) - 1))
        raw[i] = draw(st.integers(0, 255))
    cut = draw(st.sampled_from([None, None, 0, 1, 19, 20, 21, 27, 33, 39]))
    return bytes(raw[:cut] if cut is not None else raw)


@SETTINGS
@given(st.lists(mangled_ipv4(), min_size=1, max_size=8))
def test_mangled_packets_are_dropped_with_a_reason_or_forwarded_consistently(pkts):
    d = make()
    for raw in pkts:
        before = sum(d.drops.values())
        v = d.process(raw, TAP1)
        if v.accept:
            p = parse(raw)  # only what parses is forwarded: to the other VM (any protocol), or NATed
            if v.payload is None:
                assert p.dst == bytes([10, 1, 1, 4])
            else:
                assert p.proto in (6, 17) and p.dst == bytes([169, 254, 169, 254])
                assert len(v.payload) == len(raw)  # NAT rewrites in place, never truncates or pads
        else:
            assert v.reason != DropReason.NONE
            assert sum(d.drops.values()) == before + 1
    well_behaved(d)


@SETTINGS
@given(st.integers(0, 0x3FFF).filter(lambda f: f & 0x3FFF))
def test_every_fragment_is_dropped_as_invalid(frag):
    """Documented rule: fragments (MF set or an offset) have no usable ports; they are dropped."""
    raw = bytearray(bytes(IP(src="10.1.1.3", dst="169.254.169.254") / TCP(sport=40000, dport=80, flags="S")))
    struct.pack_into("!H", raw, 6, frag)
    d = make()
    assert d.process(bytes(raw), TAP1).reason == DropReason.INVALID_PACKET


@SETTINGS
@given(st.binary(min_size=0, max_size=60))
def test_parse_never_raises_anything_but_malformed(data):
    try:
        parse(data)
    except Malformed:
        pass


def test_syn_flood_from_one_vm_hits_its_own_limit_only():
    d = make()  # max_vm_flows = 200 entries
    drops = 0
    for sport in range(1, 3001):
        for dst in ("169.254.169.254", "10.9.9.9"):
            v = d.process(bytes(IP(src="10.1.1.3", dst=dst) / TCP(sport=sport, dport=80, flags="S")), TAP1)
            drops += not v.accept
    assert d.vifs[3].flows <= 200
    assert d.drops[DropReason.FLOW_LIMIT] > 5000
    well_behaved(d)
