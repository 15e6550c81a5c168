"""The ebpf datapath's program against the Python engine, packet by packet (BPF_PROG_TEST_RUN).

Two nodes' worth of state side by side, fed the same random packet sequences:

* ``nfqueue``: the Python engine alone on a table in memory (every packet through it);
* ``ebpf``: the kernel's program (run on each packet with BPF_PROG_TEST_RUN, as if the packet came
  in on a tap or vhost0 of a namespace of the test's own) on a table in its BPF map, and the same
  engine on that map for what the program hands up, as nftables would queue it.

After every packet both must have done the same (dropped, or let through the same bytes: a
redirect by the program is the engine's accept plus the kernel's routing, so TTL down by one and
the checksum fixed), and after each sequence the two tables must hold the same entries, counters,
flags and TCP flags, the kernel's drop counts added to the engine's.  The sequences mix hits and
misses, VM to VM over UDP, TCP (SYN, ACK, FIN, RST) and ICMP echo, over IPv4 and IPv6, metadata NAT
both ways over IPv4 and IPv6 (the proxy's replies through the program on the tap's egress), a
link-local service NATed to the fabric and its replies on vhost0, IPv6 packets with the extension
headers both walk (hop-by-hop options, destination options, a routing header with no segments
left, up to 4), and malformed packets (truncated, fragments, IP options, bad header lengths; IPv6
fragment headers, routing headers with segments left, truncated or too many extension headers, bad
payload lengths).  The namespace test of both datapaths end to end is tests/test_netns_datapath.py.
"""

from __future__ import annotations

import random
import struct
from collections import Counter
from collections.abc import Iterator

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    PadN,
)
from scapy.layers.l2 import Ether
from scapy.packet import Packet

from dataplane.core.dataplane import Dataplane, Limits
from dataplane.core.services import LinkLocalService
from dataplane.core.vif import Vif
from dataplane.linux.ringbuf import RingBuffer
from flows import bpfmap
from flows.layout import DropReason
from flows.table import FlowTable
from tests.helpers import unique_prefix
from topology import netns

pytestmark = pytest.mark.netns

VROUTER_MAC = "00:00:5e:00:01:00"
VHOST_IP = "10.10.0.2"
FABRIC_IP = "10.10.0.1"
ENTRIES, OVERFLOW = 1024, 204
TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = 0, 2, 7
EXT_HEADERS = (0, 43, 44, 60)  # IPv6 next headers: hop-by-hop, routing, fragment, destination options
VMS = {3: ("10.1.1.3", "fd00:10:1:1::3", "02:00:0a:01:01:03"), 4: ("10.1.1.4", "fd00:10:1:1::4", "02:00:0a:01:01:04")}
SERVICES = [
    LinkLocalService("metadata", "169.254.169.254", 80, (FABRIC_IP,), 8775),
    LinkLocalService("ntp", "169.254.169.123", 123, (FABRIC_IP,), 123),
]


class Ports:
    """Link-local NAT source ports, handed out in order (no sockets: the same in both engines)."""

    def __init__(self) -> None:
        self.free = list(range(61000, 61100))

    def reserve(self, proto: int, v6: bool = False) -> tuple[int, object]:
        port = self.free.pop(0)
        return port, port

    def release(self, handle: object) -> None:
        assert isinstance(handle, int)
        self.free.append(handle)


def engine(table: FlowTable, ifindex: dict[str, int]) -> Dataplane:
    d = Dataplane(table, VHOST_IP, 8097, Limits(), Ports())
    d.set_host_ifindex(ifindex["vhost0"])
    for vif, (ip, ip6, mac) in VMS.items():
        d.add_vif(Vif(vif, "tap%d" % vif, ifindex["tap%d" % vif], ip, mac, vrf=1, ip6=ip6))
    d.set_services(SERVICES)
    return d


class Pair:
    """The two engines, the kernel's program and the namespace its packets come in from."""

    def __init__(self, ns: netns.Namespace) -> None:
        from dataplane.linux.ebpf import KernelDatapath

        self.ns = ns
        self.ifindex = {name: ns.index(name) for name in ("tap3", "tap4", "vhost0")}
        self.kernel = KernelDatapath.load(ENTRIES, OVERFLOW)
        self.ktable = FlowTable.in_map(self.kernel.table_memory, ENTRIES, OVERFLOW)
        self.ebpf = engine(self.ktable, self.ifindex)
        self.ebpf.flow_setup.hold = True  # as the agent's in ebpf mode; released below once "the queue" is empty
        self.nfq = engine(FlowTable.in_memory(ENTRIES, OVERFLOW), self.ifindex)
        self.closes = RingBuffer(self.kernel.close_rings[0])  # one writer: its ring
        self.kernel.configure(self.ebpf.host.index, VROUTER_MAC)
        self.kernel.set_vif(self.ebpf.host.index, self.ifindex["vhost0"], tap=False)
        for vif, (_ip, _ip6, mac) in VMS.items():
            self.kernel.set_vif(vif, self.ifindex["tap%d" % vif], mac)
        self.now = 1_800_000_000_000_000_000  # one instant for both engines: no grace runs out
        self.paths: Counter[str] = Counter()  # which way the ebpf side took, over the module

    def close(self) -> None:
        self.closes.close()
        self.ktable.close()
        self.kernel.close()

    def run(self, prog: int, frame: bytes, ifindex: int) -> tuple[int, bytes, int]:
        """The program on one frame; then the pairs it told closed are closed, as the agent's
        reader of the ring does as soon as it wakes."""
        result = self.ns.run(lambda: bpfmap.test_run(prog, frame, ifindex))

        def closed(data: bytes) -> None:
            index, gen = struct.unpack_from("=IB", data)
            self.paths["closed by the kernel"] += 1
            self.ebpf.lifecycle.fin_seen(index, gen, self.now)

        self.closes.drain(closed)
        return result

    def send(self, ip: bytes, indev: str) -> tuple[str, bytes]:
        """One packet through both; what each did, which must be the same."""
        ifindex = self.ifindex[indev] if indev else 0
        want = self.nfq.process(ip, ifindex, self.now)
        expect = ("accept", want.payload or ip) if want.accept else ("drop", b"")
        got = self._ebpf(ip, indev, ifindex)
        if got[0] == "forward":  # the engine accepted; the kernel's routing would do this
            assert expect[0] == "accept", "the program forwarded what the engine dropped"
            if ip[0] >> 4 == 6:
                routed6 = IPv6(expect[1])
                routed6.hlim -= 1
                expect = ("forward", bytes(routed6))
            else:
                routed = IP(expect[1])
                routed.ttl -= 1
                del routed.chksum
                expect = ("forward", bytes(routed))
        assert got == expect, "%s packet %r: ebpf %s, nfqueue %s" % (indev or "host", _summary(ip), got[0], expect[0])
        return got

    def _ebpf(self, ip: bytes, indev: str, ifindex: int) -> tuple[str, bytes]:
        ethertype = 0x86DD if ip[:1] and ip[0] >> 4 == 6 else 0x0800
        frame = bytes(Ether(src="02:00:00:00:00:01", dst=VROUTER_MAC, type=ethertype)) + ip
        v6 = (" v6 ext" if ip[6] in EXT_HEADERS else " v6") if ethertype == 0x86DD else ""
        if not indev:  # the node's own packet to a metadata IP: FIN, RST and the rest queued first
            pkt = IPv6(ip) if ethertype == 0x86DD else IP(ip)
            flags = int(pkt[TCP].flags) if pkt.haslayer(TCP) else 0xFF
            to_md = pkt.dst.startswith(("169.254.", "fd00:a9fe:a9fe:"))
            if not (flags & 0x06 == 0 or flags & 0x17 == 0x12) or not to_md:
                return self._engine(ip, 0)  # as nftables queues it: not TCP, or SYN or RST but a SYN-ACK
            rc, out, _mark = self.run(self.kernel.egress_fd, frame, self.ifindex["tap3"])
            assert rc in (TC_ACT_OK, TC_ACT_SHOT)
            self.paths["egress " + ("drop" if rc == TC_ACT_SHOT else "NAT" if out != frame else "pass") + v6] += 1
            return ("drop", b"") if rc == TC_ACT_SHOT else ("accept", out[14:])
        rc, out, mark = self.run(self.kernel.ingress_fd, frame, ifindex)
        if rc == TC_ACT_SHOT:
            self.paths["ingress drop" + v6] += 1
            return "drop", b""
        if rc == TC_ACT_REDIRECT:
            dst_mac = out[:6]
            assert dst_mac in {bytes.fromhex(m.replace(":", "")) for _ip, _ip6, m in VMS.values()}
            self.paths["ingress forward" + v6] += 1
            return "forward", out[14:]
        assert rc == TC_ACT_OK
        if mark:
            self.paths["ingress NAT" + v6] += 1
            return "accept", out[14:]
        assert out == frame, "a packet handed up must be unchanged"
        self.paths["engine" + v6] += 1
        return self._engine(ip, ifindex)

    def _engine(self, ip: bytes, ifindex: int) -> tuple[str, bytes]:
        v = self.ebpf.process(ip, ifindex, self.now)
        for index, gen in self.ebpf.flow_setup.held:  # one packet a drain: the queue is empty after it
            self.ktable.release(index, gen)
        self.ebpf.flow_setup.held.clear()
        return ("accept", v.payload or ip) if v.accept else ("drop", b"")

    def tables(self) -> tuple[list[tuple], list[tuple]]:
        return _entries(self.ktable), _entries(self.nfq.table)

    def drops(self) -> tuple[dict[DropReason, int], dict[DropReason, int]]:
        _vifs, _vif_drops, kernel = self.kernel.stats()
        total = dict(self.ebpf.drops)
        for r, n in kernel.items():
            total[r] = total.get(r, 0) + n
        return {r: n for r, n in total.items() if n}, {r: n for r, n in self.nfq.drops.items() if n}


def _summary(ip: bytes) -> str:
    return (IPv6(ip) if ip[:1] and ip[0] >> 4 == 6 else IP(ip)).summary()


def _entries(table: FlowTable) -> list[tuple]:
    return sorted(
        (e.index, e.nh, e.src, e.dst, e.sport, e.dport, e.proto, e.flags, e.action, e.drop_reason, e.rindex, e.tcp_flags, e.nat_sport,
         e.packets, e.bytes, e.vif, e.flags1)
        for e in table.dump()
    )  # fmt: skip


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    name = unique_prefix() + "-bpf"
    netns.create(name)
    try:
        with netns.Namespace(name) as ns:
            for dev in ("tap3", "tap4", "vhost0"):  # (no dummy devices in every kernel: veths)
                ns.ipr.link("add", ifname=dev, kind="veth", peer=dev + "p")
                # the vRouter's MAC, as the agent gives its taps: a frame to it is this host's
                ns.ipr.link("set", index=ns.index(dev), address=VROUTER_MAC)
            p = Pair(ns)
            try:
                yield p
            finally:
                p.close()
    finally:
        netns.delete(name)


# -- the packets ----------------------------------------------------------------------------------


def vm_packet(rng: random.Random, pair: Pair) -> tuple[bytes, str]:
    """A packet some VM sends, or the answer to one (from a VM, the proxy or the fabric)."""
    src_vif = rng.choice([3, 4])
    dst_vif = 7 - src_vif
    src, dst = VMS[src_vif][0], rng.choice([VMS[dst_vif][0]] * 5 + ["10.1.1.9"])  # .9: no route, a Drop entry
    sport = rng.choice([40000, 40001, 40002])
    kind = rng.random()
    flags = rng.choice(["S", "A", "PA", "FA", "R", "SA", "A", "PA"])
    payload = b"x" * rng.choice([0, 1, 100, 1000])
    if kind < 0.28:
        l4 = rng.choice([UDP(sport=sport, dport=5000), TCP(sport=sport, dport=5001, flags=flags), ICMP(id=sport, type=rng.choice([8, 0]))])
        return bytes(IP(src=src, dst=dst, ttl=rng.choice([64, 2, 1])) / l4 / payload), "tap%d" % src_vif
    if kind < 0.43:  # a VM to the metadata service
        return bytes(IP(src=src, dst="169.254.169.254") / TCP(sport=sport, dport=80, flags=flags) / payload), "tap%d" % src_vif
    if kind < 0.5:  # ... and to the NTP service on the fabric
        return bytes(IP(src=src, dst="169.254.169.123") / UDP(sport=sport, dport=123) / payload), "tap%d" % src_vif
    if kind < 0.6:  # IPv6: the metadata service from the VM's link-local or own address, or no route
        src6 = rng.choice(["fe80::%d" % src_vif, VMS[src_vif][1]])
        dst6, l4 = rng.choice([("fe80::a9fe:a9fe", TCP(sport=sport, dport=80, flags=flags))] * 3 + [("fd00::9", UDP(sport=sport, dport=7))])
        return ip6(src6, dst6, extensions(rng), l4 / payload, rng.choice([64, 1])), "tap%d" % src_vif
    if kind < 0.74:  # IPv6 VM to VM (::9: no route) or its answer, over UDP, TCP or ICMPv6 echo
        src6, dst6 = VMS[src_vif][1], rng.choice([VMS[dst_vif][1]] * 5 + ["fd00:10:1:1::9"])
        ports = rng.choice([(sport, 5000), (5000, sport)])
        l4 = rng.choice([UDP(sport=ports[0], dport=ports[1]), TCP(sport=ports[0], dport=ports[1] + 1, flags=flags),
                         rng.choice([ICMPv6EchoRequest, ICMPv6EchoReply])(id=sport)])  # fmt: skip
        return ip6(src6, dst6, extensions(rng), l4 / payload, rng.choice([64, 2, 1])), "tap%d" % src_vif
    if kind < 0.87:  # an answer: the proxy's or the fabric's, to whatever a VM opened
        return answer(rng, pair, src, sport, flags, payload)
    if kind < 0.94:
        return malformed(rng, src, dst), "tap%d" % src_vif
    return malformed6(rng, VMS[src_vif][1], VMS[dst_vif][1], sport), "tap%d" % src_vif


def ip6(src: str, dst: str, exts: list[Packet], l4: Packet | bytes, hlim: int = 64) -> bytes:
    """An IPv6 packet with these extension headers before its transport header."""
    pkt = IPv6(src=src, dst=dst, hlim=hlim)
    for h in exts:
        pkt = pkt / h
    return bytes(pkt / l4)


def extensions(rng: random.Random) -> list[Packet]:
    """IPv6 extension headers both datapaths walk to the transport header: none (the most often),
    hop-by-hop options (first), destination options (8 or 16 bytes), a routing header with no
    segments left; 4 at most."""
    return rng.choice(
        [
            [],
            [],
            [],
            [IPv6ExtHdrHopByHop()],
            [IPv6ExtHdrDestOpt(options=[PadN(optdata=bytes(10))])],
            [IPv6ExtHdrRouting(segleft=0)],
            [IPv6ExtHdrHopByHop(), IPv6ExtHdrDestOpt()],
            [IPv6ExtHdrHopByHop(), IPv6ExtHdrDestOpt(), IPv6ExtHdrRouting(segleft=0), IPv6ExtHdrDestOpt()],
        ]
    )


def answer(rng: random.Random, pair: Pair, vm: str, sport: int, flags: str, payload: bytes) -> tuple[bytes, str]:
    table = pair.nfq.table
    for e in table.dump():
        if e.reverse and e.vif == 0 and rng.random() < 0.5:  # a NAT pair's reverse: node or fabric side
            l4 = TCP(sport=e.sport, dport=e.dport, flags=flags) if e.proto == 6 else UDP(sport=e.sport, dport=e.dport)
            if e.family == 6:
                return ip6(_ip6(e.src), _ip6(e.dst), extensions(rng), l4 / payload), ""
            src, dst = ".".join(map(str, e.src)), ".".join(map(str, e.dst))
            indev = "" if dst.startswith("169.254.") else "vhost0"
            return bytes(IP(src=src, dst=dst) / l4 / payload), indev
    # none (or not chosen): an answer to nothing, from the proxy to a metadata IP
    return bytes(IP(src=VHOST_IP, dst="169.254.0.3") / TCP(sport=8097, dport=sport, flags=flags)), ""


def _ip6(b: bytes) -> str:
    import ipaddress

    return str(ipaddress.IPv6Address(b))


def malformed(rng: random.Random, src: str, dst: str) -> bytes:
    good = bytes(IP(src=src, dst=dst) / UDP(sport=1, dport=2) / b"abcd")
    choice = rng.randrange(5)
    if choice == 0:
        return good[: rng.randrange(20, 28)]  # truncated (shorter than a header: ip_rcv drops it before either datapath)
    if choice == 1:
        return bytes(IP(src=src, dst=dst, flags="MF") / UDP(sport=1, dport=2) / b"abcd")  # a fragment
    if choice == 2:
        return bytes(IP(src=src, dst=dst, options=b"\x01\x01\x01\x00") / UDP(sport=1, dport=2))  # options
    if choice == 3:
        return bytes([0x4F]) + good[1:]  # a header length past the packet
    return bytes(IP(src=src, dst=dst, len=200) / TCP(sport=1, dport=2))  # a total length past it


def malformed6(rng: random.Random, src: str, dst: str, sport: int) -> bytes:
    """IPv6 from a VM to another that neither datapath forwards by a flow (the engine drops the
    malformed as Invalid Packet), with the addresses and ports of the VMs' UDP flows: the program
    must not take one of them for that flow's packet."""
    udp = UDP(sport=sport, dport=5000) / b"abcd"
    hbh, dopt, rt0 = IPv6ExtHdrHopByHop, IPv6ExtHdrDestOpt, IPv6ExtHdrRouting
    choice = rng.randrange(9)
    if choice == 0:  # a fragment header, first fragment or not
        return ip6(src, dst, [IPv6ExtHdrFragment(m=rng.choice([0, 1]), offset=rng.choice([0, 8]), id=7)], udp)
    if choice == 1:  # ... behind headers that are walked
        return ip6(src, dst, [hbh(), dopt(), IPv6ExtHdrFragment(m=1, id=8)], udp)
    if choice == 2:  # a routing header with a segment left (this node is not its last hop)
        return ip6(src, dst, [rt0(addresses=[dst], segleft=1)], udp)
    if choice == 3:  # 5 extension headers
        return ip6(src, dst, [hbh(), dopt(), rt0(segleft=0), dopt(), dopt()], udp)
    if choice == 4:  # hop-by-hop options not first
        return ip6(src, dst, [dopt(), hbh()], udp)
    if choice == 5:  # an extension header longer than the payload (its length: 40 bytes, 20 left)
        pkt = bytearray(ip6(src, dst, [dopt()], udp))
        pkt[41] = 4
        return bytes(pkt)
    if choice == 6:  # the payload ends inside an extension header (payload length 4, or 12 of 16)
        cut = rng.choice([4, 12])
        pkt = bytearray(ip6(src, dst, [hbh(), dopt(options=[PadN(optdata=bytes(10))])], udp)[: 40 + 8 + cut])
        struct.pack_into("!H", pkt, 4, 8 + cut)
        return bytes(pkt)
    if choice == 7:  # a payload length that is not the packet's: longer, or shorter
        pkt = bytearray(ip6(src, dst, rng.choice([[], [hbh()]]), udp))
        struct.pack_into("!H", pkt, 4, len(pkt) - 40 + rng.choice([8, -4]))
        return bytes(pkt)
    # not malformed, but no transport header after the walked ones (no next header): the engine's
    return ip6(src, dst, [hbh(), dopt(nh=59)], b"")


def run_sequence(pair: Pair, seed: int, packets: int = 150) -> None:
    """One random sequence through both sides; then the tables and drop counts must be equal."""
    rng = random.Random(seed)
    for _ in range(packets):
        ip, indev = vm_packet(rng, pair)
        pair.send(ip, indev)
    ebpf, nfq = pair.tables()
    assert ebpf == nfq
    assert pair.drops()[0] == pair.drops()[1]
    for d in (pair.ebpf, pair.nfq):  # the next sequence starts from an empty table
        d.age(0.0, pair.now + 10**12)


@pytest.mark.parametrize("seed", range(24))
def test_the_program_does_what_the_engine_does(pair: Pair, seed: int) -> None:
    run_sequence(pair, seed)


def test_the_sequences_take_every_way(pair: Pair) -> None:
    """The sequences go every way the program has, IPv4 and IPv6, IPv6 with extension headers too,
    and up to the engine."""
    pair.paths.clear()
    for seed in range(100, 106):
        run_sequence(pair, seed)
    ways = (
        "ingress forward",
        "ingress NAT",
        "ingress drop",
        "egress NAT",
        "egress drop",
        "engine",
        "ingress forward v6",
        "ingress NAT v6",
        "egress NAT v6",
        "ingress drop v6",
        "engine v6",
        "ingress forward v6 ext",
        "ingress NAT v6 ext",
        "egress NAT v6 ext",
        "ingress drop v6 ext",
        "engine v6 ext",
    )
    for way in ways:
        assert pair.paths[way] > 0, "no packet went %s: %s" % (way, dict(pair.paths))


def test_a_held_flow_goes_up_until_the_engine_releases_it(pair: Pair) -> None:
    """Packets of a flow the engine has just set up go up to it (after those it still holds) until
    its queue is empty: none overtakes another in the kernel."""
    ip = bytes(IP(src="10.1.1.3", dst="10.1.1.4") / UDP(sport=34444, dport=5000) / b"first")
    assert pair.ebpf.process(ip, pair.ifindex["tap3"], pair.now).accept  # set up; not released yet
    assert pair.nfq.process(ip, pair.ifindex["tap3"], pair.now).accept
    ((index, gen),) = pair.ebpf.flow_setup.held
    frame = bytes(Ether(src="02:00:00:00:00:01", dst=VROUTER_MAC, type=0x0800)) + ip
    rc, out, mark = pair.run(pair.kernel.ingress_fd, frame, pair.ifindex["tap3"])
    assert (rc, mark, out) == (TC_ACT_OK, 0, frame)  # handed up, as the queue still holds the first
    pair.ebpf.flow_setup.held.clear()
    pair.ktable.release(index, gen)  # the queue is empty
    rc, out, mark = pair.run(pair.kernel.ingress_fd, frame, pair.ifindex["tap3"])
    assert rc == TC_ACT_REDIRECT
    for d in (pair.ebpf, pair.nfq):
        d.age(0.0, pair.now + 10**12)


def test_a_live_flow_stays_in_the_kernel(pair: Pair) -> None:
    """The point of it: after the first packet, a VM-to-VM flow's packets never reach the engine."""
    seen_before = pair.ebpf.table.active
    ip = bytes(IP(src="10.1.1.3", dst="10.1.1.4") / UDP(sport=33333, dport=5000) / b"hello")
    assert pair.send(ip, "tap3")[0] == "accept"  # the miss: the engine sets it up
    assert pair.ebpf.table.active == seen_before + 2
    before = sum(v.rx_packets for v in pair.ebpf.vifs.values())
    for _ in range(20):
        assert pair.send(ip, "tap3")[0] == "forward"
    assert sum(v.rx_packets for v in pair.ebpf.vifs.values()) == before  # the engine saw none of them
    reply = bytes(IP(src="10.1.1.4", dst="10.1.1.3") / UDP(sport=5000, dport=33333))
    assert pair.send(reply, "tap4")[0] == "forward"  # the first answer too (New flow cleared in the kernel)
    ebpf, nfq = pair.tables()
    assert ebpf == nfq
    entry = [e for e in pair.ktable.dump() if e.sport == 33333][0]
    assert entry.packets == 21 and entry.bytes == 21 * len(ip)
    assert struct.unpack("!H", bytes(IP(ip))[2:4])[0] == len(ip)


def _checksum_ok(ip: bytes) -> bool:
    """The TCP or UDP checksum of an IPv6 packet is right (scapy's, computed again), extension
    headers or not: a test of the NAT's checksum offsets that does not lean on the engine."""
    pkt = IPv6(ip)
    l4 = pkt[TCP] if pkt.haslayer(TCP) else pkt[UDP]
    sent = l4.chksum
    del l4.chksum
    again = IPv6(bytes(pkt))
    return sent == (again[TCP] if again.haslayer(TCP) else again[UDP]).chksum


WALKED = [IPv6ExtHdrHopByHop(), IPv6ExtHdrDestOpt(options=[PadN(optdata=bytes(10))]), IPv6ExtHdrRouting(segleft=0), IPv6ExtHdrDestOpt()]


def test_ipv6_behind_extension_headers_stays_in_the_kernel(pair: Pair) -> None:
    """An IPv6 flow between two VMs whose packets carry 4 extension headers the program walks:
    after the first, the program forwards them; the same flow's packets behind headers neither
    walks (a fragment header, a routing header with a segment left, 5 headers) go up to the
    engine, which drops them as Invalid Packet."""
    vm3, vm4 = VMS[3][1], VMS[4][1]
    ip = ip6(vm3, vm4, WALKED, UDP(sport=33335, dport=5000) / b"hello")
    assert pair.send(ip, "tap3")[0] == "accept"  # the miss: the engine sets it up
    pair.paths.clear()
    for _ in range(5):
        assert pair.send(ip, "tap3")[0] == "forward"
    reply = ip6(vm4, vm3, [IPv6ExtHdrDestOpt()], UDP(sport=5000, dport=33335))
    assert pair.send(reply, "tap4")[0] == "forward"
    assert pair.paths == Counter({"ingress forward v6 ext": 6})
    udp = UDP(sport=33335, dport=5000) / b"hello"
    invalid = [
        ip6(vm3, vm4, [IPv6ExtHdrFragment(m=1, id=9)], udp),
        ip6(vm3, vm4, WALKED[:2] + [IPv6ExtHdrFragment(id=9)], udp),
        ip6(vm3, vm4, [IPv6ExtHdrRouting(addresses=[vm4], segleft=1)], udp),
        ip6(vm3, vm4, WALKED + [IPv6ExtHdrDestOpt()], udp),
        ip6(vm3, vm4, [IPv6ExtHdrDestOpt(), IPv6ExtHdrHopByHop()], udp),
    ]
    dropped = pair.ebpf.drops[DropReason.INVALID_PACKET]
    for bad in invalid:
        assert pair.send(bad, "tap3")[0] == "drop"
    assert pair.paths["engine v6 ext"] == len(invalid)
    assert pair.ebpf.drops[DropReason.INVALID_PACKET] == dropped + len(invalid)
    ebpf, nfq = pair.tables()
    assert ebpf == nfq
    entry = [e for e in pair.ktable.dump() if e.sport == 33335][0]
    assert (entry.proto, entry.packets, entry.bytes) == (17, 6, 6 * len(ip))
    for d in (pair.ebpf, pair.nfq):
        d.age(0.0, pair.now + 10**12)


def test_ipv6_metadata_nat_behind_extension_headers(pair: Pair) -> None:
    """The metadata NAT of a VM's IPv6 request behind extension headers, both ways: the program
    rewrites the ports where the TCP header is, after the headers, and the checksums are right."""
    ll = "fe80::3"
    syn = ip6(ll, "fe80::a9fe:a9fe", WALKED, TCP(sport=41000, dport=80, flags="S"))
    assert pair.send(syn, "tap3")[0] == "accept"  # the engine sets the pair up
    pair.paths.clear()
    ack = ip6(ll, "fe80::a9fe:a9fe", WALKED[1:3], TCP(sport=41000, dport=80, flags="A") / b"GET / HTTP/1.0\r\n\r\n")
    verdict, out = pair.send(ack, "tap3")
    assert verdict == "accept" and pair.paths == Counter({"ingress NAT v6 ext": 1})
    sent = IPv6(out)
    assert (sent.src, sent.dst, sent[TCP].sport, sent[TCP].dport) == ("fd00:a9fe:a9fe::3", "fd00:a9fe:a9fe::1", 41000, 8097)
    assert _checksum_ok(out)
    reply = ip6("fd00:a9fe:a9fe::1", "fd00:a9fe:a9fe::3", [IPv6ExtHdrDestOpt()], TCP(sport=8097, dport=41000, flags="A") / b"ok")
    verdict, out = pair.send(reply, "")
    assert verdict == "accept" and pair.paths["egress NAT v6 ext"] == 1
    back = IPv6(out)
    assert (back.src, back.dst, back[TCP].sport, back[TCP].dport) == ("fe80::a9fe:a9fe", ll, 80, 41000)
    assert _checksum_ok(out)
    ebpf, nfq = pair.tables()
    assert ebpf == nfq
    for d in (pair.ebpf, pair.nfq):
        d.age(0.0, pair.now + 10**12)
