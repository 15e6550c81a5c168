"""Both datapaths end to end, in namespaces (needs root).

* Equivalence: a node in each mode (nfqueue, then ebpf) gets the same seeded random packet
  sequences, sent as frames on its VMs' eth0 (AF_PACKET sockets made in the VMs' namespaces, the
  VMs' own kernels silenced): VM to VM over UDP, TCP (SYN, ACK, FIN, RST) and ICMP, hits and
  misses, malformed frames, a link-local UDP service NATed to the fabric and back, and metadata
  connections (IPv4 and IPv6) to the proxy through the NAT both ways.  What each VM received, the
  flow table afterwards, the drop counts and the vifs' counters must be the same in both modes.
  Each frame is played to its end before the next (``Node.fence``: no sleeps), so that neither
  mode's speed changes what the next frame meets.
* Cleanup: no program or map of an ebpf agent outlives it (stopped, or killed and replaced by the
  next), nor of a node after ``down``, and no device keeps a clsact qdisc.
* Garbage: a VM floods random frames at an ebpf node while another reads its metadata and pings a
  third; all are served, and the garbage is counted.
* Refused BPF: an agent without the capabilities BPF needs refuses ebpf mode, saying so.

tests/test_ebpf_program.py checks the program against the engine packet by packet (no namespaces,
BPF_PROG_TEST_RUN); this module checks the whole node, the kernel's own checks, routing and
nftables included.
"""

from __future__ import annotations

import difflib
import itertools
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet, Raw

from flows import bpfmap
from flows.entry import FlowEntry
from flows.layout import F1_REVERSE, F_EVICT_CANDIDATE, F_RFLOW_VALID, Action, DropReason, Flag
from flows.table import FlowTable
from tests.emulated_host import EmulatedHost
from tests.helpers import VROUTER, wait_until
from topology import netns

pytestmark = pytest.mark.netns

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SOL_PACKET, PACKET_AUXDATA, TP_STATUS_CSUMNOTREADY = 263, 8, 1 << 3
VROUTER_MAC = "00:00:5e:00:01:00"
GATEWAY = "10.1.1.1"
METADATA = "169.254.169.254"
METADATA6 = "fe80::a9fe:a9fe"
SERVICE = ("169.254.100.1", 7)  # a link-local UDP service ...
FABRIC = ("10.10.0.1", 7007)  # ... NATed to an echo on the fabric
PROXY_PORT = 8097
ELSEWHERE = ["10.1.1.9", "10.1.2.3", "8.8.8.8"]  # no VM: no route, a Drop entry

# The VMs' kernels take no part: every packet a VM sends is the test's frame, and nothing the VM
# receives is answered (no RST, no ICMP), as AF_PACKET sees it before; but neighbour discovery,
# by which the compute node's kernel finds a VM's IPv6 link-local address (the metadata service's
# answers over IPv6 in nfqueue mode)
SILENT = """table inet vrtest {
    chain i { type filter hook input priority -500; policy drop; icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept; }
    chain o { type filter hook output priority -500; policy drop; icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept; }
}"""

UDP_ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(65536)
    s.sendto(data, peer)
"""


# -- the wire: frames sent as a VM, and what each VM receives -------------------------------------


class Wire:
    """An AF_PACKET socket on each VM's eth0, made in the VM's namespace: frames sent as the VM,
    and every frame the VM receives (but ARP and neighbour discovery) kept in ``got``."""

    def __init__(self, host: EmulatedHost) -> None:
        self.host = host
        self.socks: list[socket.socket] = []
        self.got: list[list[bytes]] = [[] for _ in host.vms]
        self.arp: list[int] = [0 for _ in host.vms]
        try:
            for vm in host.vms:
                with netns.Namespace(vm["namespace"]) as ns:
                    s = ns.run(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)))
                self.socks.append(s)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
                s.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)  # whether a frame's checksum is still to be completed
                s.bind(("eth0", ETH_P_ALL))
                s.setblocking(False)
            self.drain()
            for got in self.got:
                got.clear()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for s in self.socks:
            s.close()

    def send(self, vm: int, frame: bytes) -> None:
        self.socks[vm].send(frame)

    def drain(self) -> None:
        """Read what every VM has received so far."""
        for i, s in enumerate(self.socks):
            while True:
                try:
                    frame, anc, _flags, addr = s.recvmsg(65535, socket.CMSG_SPACE(64))
                except BlockingIOError:
                    break
                if addr[2] == PACKET_OUTGOING:
                    continue
                kind = frame[12:14]
                if kind == b"\x08\x06":
                    self.arp[i] += 1
                elif kind == b"\x86\xdd" and (len(frame) < 54 or frame[20] not in (6, 17)):
                    continue  # the node's router advertisements, neighbour discovery and MLD: not the test's
                else:
                    status = next((struct.unpack_from("=I", d)[0] for lvl, t, d in anc if (lvl, t) == (SOL_PACKET, PACKET_AUXDATA)), 0)
                    self.got[i].append(_complete_checksum(frame) if status & TP_STATUS_CSUMNOTREADY else frame)

    def wait(self, vm: int, cond: Callable[[bytes], bool], what: str, timeout: float = 10) -> bytes:
        """The first frame VM ``vm`` received (or receives within ``timeout``) that ``cond`` holds for."""

        def seen() -> bytes | None:
            self.drain()
            return next((f for f in self.got[vm] if cond(f)), None)

        return wait_until(seen, timeout, what, interval=0.002)  # type: ignore[return-value]


@dataclass
class Node:
    """A node under test: its wire, the process whose /proc/net shows the node's queues."""

    host: EmulatedHost
    wire: Wire
    agent_pid: int

    def queues_empty(self) -> bool:
        with open("/proc/%d/net/netfilter/nfnetlink_queue" % self.agent_pid) as f:
            return all(int(line.split()[2]) == 0 for line in f if line.strip())

    def fence(self, vm: int) -> None:
        """Wait until everything VM ``vm`` sent went through the node: an ARP request for the
        gateway, sent after it from the same CPU, is answered by the agent (the kernel takes a
        CPU's frames in order, each to its end: the program, the kernel's checks, nftables and its
        queues), then no packet waits in any queue for the engine."""
        before = self.wire.arp[vm]
        vmrec = self.host.vms[vm]
        arp = Ether(src=vmrec["mac"], dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=vmrec["mac"], psrc=vmrec["ip"], pdst=GATEWAY)
        self.wire.send(vm, bytes(arp))

        def answered() -> bool:
            self.wire.drain()
            return self.wire.arp[vm] > before

        wait_until(answered, 10, "the agent's ARP answer to vm%d" % (vm + 1), interval=0.001)
        wait_until(self.queues_empty, 10, "the node's queues to drain", interval=0.001)
        self.wire.drain()


# -- the sequences ----------------------------------------------------------------------------


@dataclass
class Step:
    """A frame a VM sends, or an exchange that reacts to what comes back (metadata, link-local)."""

    kind: str  # frame, metadata, linklocal
    vm: int
    frame: bytes = b""
    sport: int = 0
    how: str = ""  # metadata: "fin" or "rst", "6" appended for IPv6; linklocal: "", "badsum", "nosum"
    what: str = ""


@dataclass
class TcpState:
    seq: list[int]
    fins: set[int] = field(default_factory=set)


class Sequence:
    """A seeded random sequence of steps among the VMs (3 of them: vm1..vm3 of one network)."""

    def __init__(self, seed: int, vms: list[dict], steps: int, malformed: tuple[str, ...], malformed_share: float = 0.18) -> None:
        self.rng = random.Random(seed)
        self.vms = vms
        self.malformed = malformed
        self.malformed_share = malformed_share
        self._kinds: list[str] = []
        self.on_live: set[str] = set()  # the malformed kinds sent on a flow set up before
        self.ports = itertools.count(20000 + 1000 * (seed % 40))
        self.live: list[tuple[int, int, int, int, int]] = []  # (src vm, dst vm, proto, sport, dport) of flows sent
        self.tcp: dict[tuple[int, int, int, int], TcpState] = {}  # by (low vm, high vm, low vm's port, other port)
        self.ttl_expiring = 0
        self.steps = [self._step() for _ in range(steps)]

    # ... the choices

    def _step(self) -> Step:
        rng = self.rng
        r = rng.random()
        if r < 0.03:
            how = rng.choice(["fin", "rst", "fin6", "rst6"])
            return Step("metadata", rng.randrange(3), sport=next(self.ports), how=how, what="metadata " + how)
        if r < 0.08:
            vm = rng.randrange(3)
            sport = rng.choice([next(self.ports), 33000 + vm])  # a new flow, or the VM's usual one (a hit)
            how = rng.choice(["", "", "", "badsum", "nosum"])
            return Step("linklocal", vm, sport=sport, how=how, what="link-local %s" % (how or "echo"))
        if r < 0.45 and self.live:
            src, dst, proto, sport, dport = rng.choice(self.live)
            if rng.random() < 0.5:  # the answer
                src, dst, sport, dport = dst, src, dport, sport
            return self._frame(src, dst, proto, sport, dport)
        if r < 1 - self.malformed_share:
            src = rng.randrange(3)
            dst = rng.choice([x for x in range(3) if x != src] * 4 + [-1])
            proto = rng.choice([6, 6, 17, 17, 1])
            sport = rng.choice([1000, 1001, 1002]) if proto != 1 else rng.choice([7, 8])
            dport = rng.choice([2000, 2001]) if proto != 1 else 0
            if proto == 6:
                sport = next(self.ports) if rng.random() < 0.5 else sport
            return self._frame(src, dst, proto, sport, dport)
        return self._malformed()

    def _ip(self, vm: int) -> str:
        return self.vms[vm]["ip"] if vm >= 0 else self.rng.choice(ELSEWHERE)

    def _eth(self, src: int) -> Ether:
        return Ether(src=self.vms[src]["mac"], dst=VROUTER_MAC, type=0x0800)

    def _frame(self, src: int, dst: int, proto: int, sport: int, dport: int) -> Step:
        rng = self.rng
        dst_ip = self._ip(dst)
        ttl = 64
        if self.ttl_expiring < 2 and rng.random() < 0.03:  # the kernel's Time Exceeded: rate limited, so few
            ttl = 1
            self.ttl_expiring += 1
        payload = rng.randbytes(rng.choice([0, 1, 16, 100, 600, 1400]))
        what = "%s vm%d -> %s" % ({1: "icmp", 6: "tcp", 17: "udp"}[proto], src + 1, dst_ip)
        l4: Packet
        if proto == 17:
            l4 = UDP(sport=sport, dport=dport) / payload
        elif proto == 1:
            kind = rng.choice([8, 8, 0, 3])
            if kind == 3:  # an error, quoting a datagram
                l4 = ICMP(type=3, code=3) / bytes(IP(src=dst_ip, dst=self._ip(src)) / UDP(sport=dport, dport=sport))
            else:
                l4 = ICMP(type=kind, id=sport, seq=rng.randrange(100)) / payload
            what += " type %d" % kind
        else:
            flags = self._tcp_flags(src, dst, sport, dport)
            st = self._tcp_state(src, dst, sport, dport)
            me = 0 if src < dst else 1
            seq = st.seq[me]
            ack = st.seq[1 - me] if "A" in flags else 0
            if "S" in flags or "F" in flags:
                st.seq[me] += 1
            st.seq[me] += len(payload) if "S" not in flags and "R" not in flags else 0
            if "S" in flags or "R" in flags:
                payload = b""
            l4 = TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, window=4096) / payload
            what += " %s" % flags
        if proto in (6, 17) and dst >= 0 and (src, dst, proto, sport, dport) not in self.live and (dst, src, proto, dport, sport) not in self.live:
            self.live.append((src, dst, proto, sport, dport))
        if proto == 1 and dst >= 0 and (src, dst, 1, sport, 0) not in self.live:
            self.live.append((src, dst, 1, sport, 0))
        return Step("frame", src, bytes(self._eth(src) / IP(src=self.vms[src]["ip"], dst=dst_ip, id=7, ttl=ttl) / l4), what=what)

    def _tcp_state(self, src: int, dst: int, sport: int, dport: int) -> TcpState:
        key = (src, dst, sport, dport) if src < dst else (dst, src, dport, sport)
        if key not in self.tcp:
            self.tcp[key] = TcpState([1000 * (len(self.tcp) + 1), 500_000 + 1000 * len(self.tcp)])
        return self.tcp[key]

    def _tcp_flags(self, src: int, dst: int, sport: int, dport: int) -> str:
        """Flags for the next segment of a TCP flow.  A pair the datapath may have closed (a FIN
        each way) is never used again: it is evicted a second later, and whether a segment comes
        before or after that would depend on the machine's speed, not on the datapath."""
        flags = self.rng.choice(["S", "SA", "A", "PA", "PA", "FA", "R", "RA", "A"])
        if dst < 0:
            return flags
        st = self._tcp_state(src, dst, sport, dport)
        me = 0 if src < dst else 1
        if "R" in flags:
            st.fins.clear()  # an RST removes the pair at once: the next segment is a new flow
        elif "F" in flags:
            st.fins.add(me)
            if len(st.fins) == 2:  # closed: retire the ports
                self.live = [f for f in self.live if not (f[2] == 6 and {(f[0], f[3]), (f[1], f[4])} == {(src, sport), (dst, dport)})]
        return flags

    def _malformed(self) -> Step:
        """A frame the datapath must not take for a good one, often of a live flow (where the
        program would forward it)."""
        rng = self.rng
        flows = [f for f in self.live if f[2] in (6, 17)]
        src, dst, proto, sport, dport = rng.choice(flows) if flows and rng.random() < 0.8 else (0, 1, 17, 1000, 2000)
        s_ip, d_ip = self.vms[src]["ip"], self.vms[dst]["ip"]
        l4 = TCP(sport=sport, dport=dport, flags="A", seq=1, ack=1, window=4096) if proto == 6 else UDP(sport=sport, dport=dport)
        good = IP(src=s_ip, dst=d_ip, id=9) / l4 / b"payload!"
        eth = self._eth(src)
        if not self._kinds:  # every kind in turn, in a random order: each is sent, most on a live flow
            self._kinds = list(self.malformed)
            rng.shuffle(self._kinds)
        kind = self._kinds.pop()
        if (src, dst, proto, sport, dport) in flows:
            self.on_live.add(kind if proto == 6 or not kind.startswith("dataofs") else "udplen")
        raw = bytearray(bytes(good))
        if kind == "ipsum":
            raw[10] ^= 0x5A  # the IP header's checksum wrong
        elif kind == "mac":
            return Step("frame", src, bytes(Ether(src=self.vms[src]["mac"], dst="02:00:00:00:00:99") / good), what="malformed mac")
        elif kind == "trailer":
            raw += b"TRAILER!"  # bytes past the IP packet's length (as Ethernet padding would be)
        elif kind == "long":
            struct.pack_into("!H", raw, 2, len(raw) + 20)  # a total length past the frame
            raw[10:12] = b"\0\0"
            raw[10:12] = struct.pack("!H", _ipsum(bytes(raw[:20])))
        elif kind == "options":
            raw = bytearray(bytes(IP(src=s_ip, dst=d_ip, id=9, options=b"\x01\x01\x01\x00") / l4 / b"payload!"))
        elif kind in ("ihl", "ihl4"):
            raw[0] = 0x4F if kind == "ihl" else 0x44
        elif kind == "frag":
            raw = bytearray(bytes(IP(src=s_ip, dst=d_ip, id=9, frag=185) / b"fragment"))
            raw[9] = proto
            raw[10:12] = struct.pack("!H", _ipsum(bytes(raw[:10]) + b"\0\0" + bytes(raw[12:20])))
        elif kind == "mf":
            raw = bytearray(bytes(IP(src=s_ip, dst=d_ip, id=9, flags="MF") / l4 / b"payload!"))
        elif kind.startswith("dataofs") and proto == 6:  # a TCP header shorter than its minimum, or longer than the packet
            tcp = TCP(sport=sport, dport=dport, flags="A", dataofs=4 if kind == "dataofs" else 15)
            raw = bytearray(bytes(IP(src=s_ip, dst=d_ip, id=9) / tcp / b"x"))
        elif kind.startswith(("udplen", "dataofs")):
            raw = bytearray(bytes(IP(src=s_ip, dst=d_ip, id=9) / UDP(sport=sport, dport=dport, len=rng.choice([0, 4, 9999])) / b"x"))
        elif kind == "cut":
            cut = bytes(IP(src=s_ip, dst=d_ip, id=9, proto=proto) / Raw(bytes(l4)[:4]))
            raw = bytearray(cut)  # a header cut short, the IP length saying so
        elif kind == "v6in4":
            raw[0] = 0x65
        elif kind == "proto":
            raw = bytearray(bytes(IP(src=s_ip, dst=d_ip, id=9, proto=rng.choice([47, 132])) / b"other protocol"))
        elif kind == "runt":
            raw = raw[: rng.choice([1, 10, 19])]
        elif kind == "icmpcut":
            raw = bytearray(bytes(IP(src=s_ip, dst=d_ip, id=9, proto=1) / b"\x08\x00"))
        return Step("frame", src, bytes(eth) + bytes(raw), what="malformed %s" % kind)


def _ipsum(header: bytes) -> int:
    s = sum(struct.unpack("!%dH" % (len(header) // 2), header))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


# -- one node's run ---------------------------------------------------------------------------


HTTP_REQUEST = b"GET /latest/meta-data/local-ipv4 HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n\r\n"


class Runner:
    """Plays steps on a node and notes what the VMs received."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.host = node.host
        self.wire = node.wire
        self.isn: dict[tuple[int, int], int] = {}  # the proxy's initial sequence number, by (vm, the VM's port)

    def play(self, step: Step) -> None:
        getattr(self, "_" + step.kind)(step)

    def _frame(self, step: Step) -> None:
        self.wire.send(step.vm, step.frame)
        self.node.fence(step.vm)

    def _linklocal(self, step: Step) -> None:
        vm = self.host.vms[step.vm]
        payload = b"echo %d %s" % (step.sport, step.how.encode())
        pkt = IP(src=vm["ip"], dst=SERVICE[0], id=11) / UDP(sport=step.sport, dport=SERVICE[1], chksum=0 if step.how == "nosum" else None) / payload
        raw = bytearray(bytes(pkt))
        if step.how == "badsum":
            raw[26] ^= 0x33  # the UDP checksum wrong
        n = self._answers(step)
        self.wire.send(step.vm, bytes(Ether(src=vm["mac"], dst=VROUTER_MAC, type=0x0800)) + bytes(raw))
        self.node.fence(step.vm)
        if step.how != "badsum":  # the fabric's kernel drops a datagram with a wrong checksum: no answer to wait for
            wait_until(lambda: self._answers(step) > n, 10, "the echo's answer to vm%d:%d" % (step.vm + 1, step.sport), interval=0.002)
        self.node.fence(step.vm)

    def _answers(self, step: Step) -> int:
        self.wire.drain()
        return len([f for f in self.wire.got[step.vm] if _is_from(f, SERVICE[0], SERVICE[1], step.sport)])

    def _metadata(self, step: Step) -> None:
        """A metadata connection by hand: SYN, the proxy's SYN-ACK, the request (or, with "rst",
        half of it, which the proxy acknowledges at once), the answer and its FIN, our ACK and FIN
        and the proxy's last ACK (or, with "rst", an RST)."""
        vm = self.host.vms[step.vm]
        v6 = step.how.endswith("6")
        if v6:
            mine, theirs = _link_local(vm["mac"]), METADATA6

            def ip() -> IPv6:
                return IPv6(src=mine, dst=theirs)
        else:
            mine, theirs = vm["ip"], METADATA

            def ip() -> IP:  # type: ignore[misc]
                return IP(src=mine, dst=theirs, id=13)

        eth = Ether(src=vm["mac"], dst=VROUTER_MAC)
        sport, seq = step.sport, 7000

        def from_proxy(flags: int) -> Callable[[bytes], bool]:
            return lambda f: _is_from(f, theirs, 80, sport) and _tcp_flags(f) & flags == flags

        def send(flags: str, ack: int, payload: bytes = b"") -> None:
            self.wire.send(step.vm, bytes(eth / ip() / TCP(sport=sport, dport=80, flags=flags, seq=seq, ack=ack, window=8192) / payload))
            self.node.fence(step.vm)

        send("S", 0)
        synack = self.wire.wait(step.vm, from_proxy(0x12), "the proxy's SYN-ACK to vm%d:%d" % (step.vm + 1, sport))
        isn = _tcp_seq(synack)
        self.isn[step.vm, sport] = isn
        seq += 1
        if step.how.startswith("rst"):
            part = HTTP_REQUEST[:20]
            send("PA", isn + 1, part)
            seq += len(part)
            self.wire.wait(step.vm, lambda f: from_proxy(0x10)(f) and _tcp_ack(f) == seq, "the proxy's ACK of the partial request")
            send("R", 0)
            return
        send("PA", isn + 1, HTTP_REQUEST)
        seq += len(HTTP_REQUEST)
        fin = self.wire.wait(step.vm, from_proxy(0x01), "the proxy's answer and FIN")
        end = _tcp_seq(fin) + _tcp_len(fin) + 1
        send("FA", end)
        seq += 1
        self.wire.wait(step.vm, lambda f: from_proxy(0x10)(f) and _tcp_ack(f) == seq, "the proxy's ACK of our FIN")


def _complete_checksum(frame: bytes) -> bytes:
    """A TCP or UDP frame whose checksum the sender left to the device to complete (CHECKSUM_PARTIAL:
    the field holds the pseudo-header's sum; veth never completes it, and a VM's kernel takes it as
    it is), completed as a NIC would.  The node's own packets (the proxy's, the fabric's) come so
    when the program rewrites them, which updates the pseudo-header's sum only; the engine hands the
    kernel whole packets.  Completed, both are the packet on a wire, and a wrong update shows."""
    l3 = _l3(frame)
    if l3 is None or l3[1] not in (6, 17):
        return frame
    end = 14 + (struct.unpack_from("!H", frame, 16)[0] if l3[0] == 4 else 40 + struct.unpack_from("!H", frame, 18)[0])
    field = l3[2] + (16 if l3[1] == 6 else 6)
    b = bytearray(frame)
    segment = bytes(b[l3[2] : end]) + b"\0" * ((end - l3[2]) & 1)
    total = _ipsum(segment)  # the one's complement of the sum, the partial sum in the field included
    struct.pack_into("!H", b, field, total if total or l3[1] == 6 else 0xFFFF)
    return bytes(b)


def _link_local(mac: str) -> str:
    b = bytes.fromhex(mac.replace(":", ""))
    eui = bytes([b[0] ^ 2]) + b[1:3] + b"\xff\xfe" + b[3:]
    return "fe80::" + ":".join("%x" % int.from_bytes(eui[i : i + 2], "big") for i in range(0, 8, 2))


# -- frames as bytes: the few fields the runner reads ----------------------------------------------


def _l3(frame: bytes) -> tuple[int, int, int] | None:
    """(family, protocol, offset of L4) of a well-formed IPv4 or IPv6 frame, or None."""
    if frame[12:14] == b"\x08\x00" and len(frame) >= 34 and frame[14] >> 4 == 4:
        return 4, frame[23], 14 + (frame[14] & 15) * 4
    if frame[12:14] == b"\x86\xdd" and len(frame) >= 54:
        return 6, frame[20], 54
    return None


def _src(frame: bytes) -> str:
    fam, _, _ = _l3(frame) or (0, 0, 0)
    if fam == 4:
        return socket.inet_ntop(socket.AF_INET, frame[26:30])
    if fam == 6:
        return socket.inet_ntop(socket.AF_INET6, frame[22:38])
    return ""


def _is_from(frame: bytes, ip: str, port: int, dport: int) -> bool:
    l3 = _l3(frame)
    if l3 is None or l3[1] not in (6, 17) or len(frame) < l3[2] + 4 or _src(frame) != ip:
        return False
    return struct.unpack_from("!HH", frame, l3[2]) == (port, dport)


def _tcp_flags(frame: bytes) -> int:
    l3 = _l3(frame)
    return frame[l3[2] + 13] if l3 and l3[1] == 6 and len(frame) >= l3[2] + 20 else 0


def _tcp_seq(frame: bytes) -> int:
    l3 = _l3(frame)
    assert l3 is not None
    return int(struct.unpack_from("!I", frame, l3[2] + 4)[0])


def _tcp_ack(frame: bytes) -> int:
    l3 = _l3(frame)
    assert l3 is not None
    return int(struct.unpack_from("!I", frame, l3[2] + 8)[0])


def _tcp_len(frame: bytes) -> int:
    l3 = _l3(frame)
    assert l3 is not None
    if l3[0] == 4:
        total = struct.unpack_from("!H", frame, 16)[0] + 14
    else:
        total = struct.unpack_from("!H", frame, 18)[0] + 54
    return int(total - l3[2] - (frame[l3[2] + 12] >> 4) * 4)


# -- what a run gives, made comparable --------------------------------------------------------------


def _closing(entries: list[FlowEntry]) -> list[FlowEntry]:
    """Entries of closed pairs (evict candidates, or a FIN seen each way) that are still there."""
    by_index = {e.index: e for e in entries}
    out = []
    for e in entries:
        rev = by_index.get(e.rindex) if e.flags & F_RFLOW_VALID else None
        if e.flags & F_EVICT_CANDIDATE or (rev is not None and e.tcp_flags & rev.tcp_flags & 0x01):
            out.append(e)
    return out


def _ip_end(frame: bytes) -> int:
    """Where the IP packet of a well-formed frame ends (what follows is not the packet's)."""
    l3 = _l3(frame)
    assert l3 is not None
    return 14 + (struct.unpack_from("!H", frame, 16)[0] if l3[0] == 4 else 40 + struct.unpack_from("!H", frame, 18)[0])


def _checksums_right(frame: bytes) -> bool:
    """The IPv4 header's checksum and the TCP, UDP or ICMP checksum of a well-formed frame."""
    l3 = _l3(frame)
    if l3 is None:
        return False
    fam, proto, l4 = l3
    end = _ip_end(frame)
    if fam == 4 and _ipsum(frame[14:l4]) != 0:
        return False
    seg = frame[l4:end]
    if proto == 1:
        return _ipsum(seg + b"\0" * (len(seg) & 1)) == 0
    if proto == 17 and fam == 4 and seg[6:8] == b"\0\0":
        return True  # no checksum
    pseudo = frame[26:34] + bytes([0, proto]) + struct.pack("!H", len(seg)) if fam == 4 else frame[22:54] + struct.pack("!IxxxB", len(seg), proto)
    data = pseudo + seg
    return _ipsum(data + b"\0" * (len(data) & 1)) == 0


def _is_proxys(frame: bytes) -> bool:
    """A segment of the metadata proxy (from a metadata address's port 80, after the NAT)."""
    l3 = _l3(frame)
    return l3 is not None and l3[1] == 6 and _src(frame) in (METADATA, METADATA6) and struct.unpack_from("!H", frame, l3[2])[0] == 80


def _delivered(frames: list[bytes], isn: dict[tuple[int, int], int], vm: int) -> list[str]:
    """What VM ``vm`` received, as text to compare, with what is neither datapath's choice made
    equal.  Every byte of every frame is kept but for:

    * the proxy's segments: the proxy is a real TCP stack, whose initial sequence number, IP
      identification and IPv6 flow label are its kernel's random choices, and the HTTP Date header
      the time.  They are shown field by field (their checksums checked, not shown), sequence
      numbers relative to the proxy's first.  And it writes an answer's head and body apart and
      holds the last write for the FIN (TCP_CORK): whether the head left alone or with the rest is
      a race in the proxy, in either mode; so a data segment and the next one of the same
      connection are shown as one; and whether its kernel acknowledged a request at once (a bare
      ACK) or with the answer is its delayed-ACK timer's race: a bare ACK that the proxy's next
      segment of the connection repeats (the same acknowledgement number) is left out;
    * the link-local service's answers: the fabric's kernel chose their IP identification, so it
      and the header's checksum (checked first) are zeroed;
    * ICMP errors the compute node's kernel makes (Time Exceeded): likewise.
    """
    out: list[str] = []
    held: Held | None = None  # a proxy segment that may go on
    for frame in _without_repeated_acks(frames):
        if not _is_proxys(frame):
            if held is not None:
                out.append(held.text())
                held = None
            out.append(_frame_text(frame))
            continue
        assert _checksums_right(frame), "a proxy segment with a wrong checksum: %s" % Ether(frame).summary()
        l3 = _l3(frame)
        assert l3 is not None
        fam, _, l4 = l3
        dport, seq, ack, off, flags, win = struct.unpack_from("!2xHII2B H", frame, l4)
        data = frame[l4 + (off >> 4) * 4 : _ip_end(frame)]
        data = re.sub(rb"Date: [^\r]*\r", lambda m: b"Date: " + b"X" * (len(m.group(0)) - 7) + b"\r", data)
        if fam == 4:
            ip = "tos %d df %d ttl %d" % (frame[15], frame[20] >> 6 & 1, frame[22])
        else:
            ip = "tc %d hlim %d" % ((frame[14] & 15) << 4 | frame[15] >> 4, frame[21])
        head = "proxy > vm%d:%d %s seq +%d ack %d win %d opts %s" % (vm + 1, dport, ip, (seq - isn.get((vm, dport), seq)) & 0xFFFFFFFF, ack, win,
                                                                     frame[l4 + 20 : l4 + (off >> 4) * 4].hex())  # fmt: skip
        if held is not None and held.dport == dport and data:
            held.data += data
            held.flags |= flags
        else:
            if held is not None:
                out.append(held.text())
            held = Held(dport, head, data, flags)
        if not data or flags & 0x01:
            out.append(held.text())
            held = None
    if held is not None:
        out.append(held.text())
    return out


def _without_repeated_acks(frames: list[bytes]) -> list[bytes]:
    """``frames`` without the proxy's bare ACKs whose acknowledgement its next segment to the same
    port repeats (see _delivered)."""
    keep = []
    for i, frame in enumerate(frames):
        if _is_proxys(frame) and _bare_ack(frame):
            port, ack = _port_ack(frame)
            later = next((f for f in frames[i + 1 :] if _is_proxys(f) and _port_ack(f)[0] == port), None)
            if later is not None and _port_ack(later)[1] == ack:
                continue
        keep.append(frame)
    return keep


def _port_ack(frame: bytes) -> tuple[int, int]:
    """A TCP segment's destination port and acknowledgement number."""
    l3 = _l3(frame)
    assert l3 is not None
    dport, ack = struct.unpack_from("!2xH4xI", frame, l3[2])
    return dport, ack


def _bare_ack(frame: bytes) -> bool:
    l3 = _l3(frame)
    assert l3 is not None
    off, flags = struct.unpack_from("!12x2B", frame, l3[2])
    return flags == 0x10 and l3[2] + (off >> 4) * 4 == _ip_end(frame)


@dataclass
class Held:
    """A segment of the proxy's, and the data of the ones of the same connection right after it."""

    dport: int
    head: str
    data: bytes
    flags: int

    def text(self) -> str:
        return "%s flags %s data %r" % (self.head, TCP(flags=self.flags).sprintf("%TCP.flags%"), self.data)


def _frame_text(frame: bytes) -> str:
    b = bytearray(frame)
    l3 = _l3(frame)
    note = ""
    if l3 is not None and l3[0] == 4:
        from_service = l3[1] == 17 and _src(frame) == SERVICE[0]
        kernels_error = l3[1] == 1 and len(b) > l3[2] and b[l3[2]] in (3, 11) and _src(frame) not in ("10.1.1.3", "10.1.1.4", "10.1.1.5")
        if from_service or kernels_error:
            assert _checksums_right(frame), "a wrong checksum in %s" % Ether(frame).summary()
            b[18:20] = b"\0\0"
            b[24:26] = b"\0\0"
            note = " (IP id and checksum zeroed)"
    return "%s%s\n    %s" % (Ether(bytes(b)).summary(), note, bytes(b).hex())


def _proxy_counts(frames: list[bytes]) -> tuple[int, int]:
    """The proxy's segments among ``frames``: how many, and their IP lengths (as the vifs count)."""
    mine = [f for f in frames if _is_proxys(f)]
    return len(mine), sum(_ip_end(f) - 14 for f in mine)


def _addr(b: bytes, family: int) -> str:
    return socket.inet_ntop(socket.AF_INET if family == 4 else socket.AF_INET6, b[:4] if family == 4 else b[:16])


def _normal_flows(entries: list[FlowEntry]) -> list[str]:
    """The table as sorted text: every field but the index, the generation and the times; a pair
    by its reverse's key instead of its index.  A link-local flow's NAT port is the kernel's
    choice of a free port (a reserved socket), so it is shown as NATPORT wherever it is.  The
    proxy's half of a metadata pair counts the proxy's segments, as many as its race gives (see
    _delivered): its packets and bytes are not shown.  (A GSO packet is one packet in the ebpf
    program's counts and several in the engine's; the sequences send none: every frame is one
    packet of less than the MTU.)"""
    by_index = {e.index: e for e in entries}
    nat_ports = {e.nat_sport for e in entries if e.flags & Flag.LINK_LOCAL and e.nat_sport}

    def port(p: int) -> str:
        return "NATPORT" if p in nat_ports else str(p)

    def key(e: FlowEntry) -> str:
        return "nh%d %s:%s > %s:%s p%d" % (e.nh, _addr(e.src, e.family), port(e.sport), _addr(e.dst, e.family), port(e.dport), e.proto)

    out = []
    for e in entries:
        if e.family == 6 and e.proto == 58:
            continue  # the VMs' neighbour discovery before they were silenced: not the test's
        rev = by_index.get(e.rindex) if e.flags & F_RFLOW_VALID else None
        proxys = e.flags1 & F1_REVERSE and e.sport == PROXY_PORT and e.proto == 6
        counts = "proxy's" if proxys else "%d pkts %d bytes" % (e.packets, e.bytes)
        out.append(
            "%s | %s flags %s flags1 %d drop %s tcp %#04x vrf %d dvrf %d nat %s src_nh %d vif %d | %s | reverse %s"
            % (key(e), Action(e.action).name, _flag_names(e.flags), e.flags1, DropReason(e.drop_reason).name, e.tcp_flags, e.vrf, e.dvrf,
               port(e.nat_sport), e.src_nh, e.vif, counts, key(rev) if rev else "-")
        )  # fmt: skip
    return sorted(out)


def _flag_names(flags: int) -> str:
    return "|".join(f.name or "" for f in Flag if flags & f) or "0"


@dataclass
class Result:
    delivered: list[list[str]]
    flows: list[str]
    drops: dict[str, int]
    vifs: dict[str, dict[str, int]]
    queued: int  # packets from the taps that nftables queued to the engine (not compared: the point of ebpf mode)
    fast: int  # packets the program NATed, which nftables let by

    def parts(self) -> dict[str, list[str]]:
        out = {"delivered to vm%d" % (i + 1): frames for i, frames in enumerate(self.delivered)}
        out["flow table"] = self.flows
        out["dropstats (what the run added)"] = ["%s %d" % kv for kv in sorted(self.drops.items())]
        out["vif counters (what the run added)"] = ["%s %s" % (k, json.dumps(v, sort_keys=True)) for k, v in sorted(self.vifs.items())]
        return out


def _nft_counts(host: EmulatedHost) -> tuple[int, int]:
    """(packets from the taps nftables queued to the engine, packets it let by with the program's mark)."""
    queued = fast = 0
    for family in ("ip", "ip6"):
        text = host.in_compute("nft", "list", "table", family, "vrouter").stdout
        queued += sum(int(n) for n in re.findall(r'iif "tap[^"]*"[^\n]* counter packets (\d+)', text))
        fast += sum(int(n) for n in re.findall(r"meta mark 0x76720001 counter packets (\d+)", text))
    return queued, fast


def _vif_counts(host: EmulatedHost) -> dict[str, dict[str, int]]:
    out = {}
    for v in _list(host.cli_json("vif", "--list")):
        out["vif%d %s" % (v["vif"], v["type"])] = {k: v[k] for k in ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "drops")}
        out["vif%d %s" % (v["vif"], v["type"])].update({"drop " + r: n for r, n in v["drop_reasons"].items()})
    return out


def _dict(x: object) -> dict[str, Any]:
    """What ``cli_json`` gave, which is an object."""
    assert isinstance(x, dict), x
    return x


def _list(x: object) -> list[dict[str, Any]]:
    assert isinstance(x, list), x
    return x


def _delta(after: dict, before: dict) -> dict:
    out = {}
    for k, v in after.items():
        if isinstance(v, dict):
            d = _delta(v, before.get(k, {}))
            if d:
                out[k] = d
        elif v != before.get(k, 0):
            out[k] = v - before.get(k, 0)
    return out


class Trial:
    """A node of 3 VMs (silenced), a link-local echo service on its fabric, the wire to its VMs:
    ``run`` plays steps on it and says what they did."""

    def __init__(self, h: EmulatedHost) -> None:
        self.h = h
        self.echo: subprocess.Popen | None = None
        self.wire: Wire | None = None
        try:
            for i in range(len(h.vms)):
                r = subprocess.run(["ip", "netns", "exec", h.vm_ns(i), "nft", "-f", "-"], input=SILENT, capture_output=True, text=True, timeout=10)
                assert r.returncode == 0, r.stderr
                # no neighbour reachability probes during the run: one came at random times, counted
                # on the VM's vif in one mode and not the other (a 72-byte solicitation)
                r = subprocess.run(["ip", "netns", "exec", h.vm_ns(i), "sysctl", "-q", "-w", "net.ipv6.neigh.eth0.delay_first_probe_time=3600",
                                    "net.ipv6.neigh.eth0.base_reachable_time_ms=3600000"], capture_output=True, text=True, timeout=10)  # fmt: skip
                assert r.returncode == 0, r.stderr
            r = h.cli("linklocal", "add", "--linklocal_service_name", "echo", "--linklocal_service_ip", SERVICE[0], "--linklocal_service_port",
                      str(SERVICE[1]), "--ipfabric_service_ip", FABRIC[0], "--ipfabric_service_port", str(FABRIC[1]))  # fmt: skip
            assert r.returncode == 0, r.stderr
            fabric = h.layout["namespaces"]["fabric"]
            echo = ["ip", "netns", "exec", fabric, sys.executable, "-c", UDP_ECHO, *map(str, FABRIC)]
            self.echo = subprocess.Popen(echo, stdout=subprocess.PIPE, text=True)
            assert self.echo.stdout is not None and self.echo.stdout.readline().strip() == "ready"
            self.wire = Wire(h)
            self.node = Node(h, self.wire, int(open(os.path.join(h.state_dir, "agent.pid")).read()))
            self.runner = Runner(self.node)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.wire is not None:
            self.wire.close()
        if self.echo is not None:
            self.echo.kill()
            self.echo.wait(10)

    def run(self, steps: list[Step]) -> Result:
        """Play ``steps``; what the VMs received meanwhile, the table after, and what the steps
        added to the drop counts and the vifs' counters."""
        h, wire, node = self.h, self.wire, self.node
        assert wire is not None
        for got in wire.got:
            got.clear()
        drops0, vifs0, nft0 = _dict(h.cli_json("dropstats")), _vif_counts(h), _nft_counts(h)
        cpus = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {min(cpus)})  # this thread sends every frame from one CPU: the kernel takes them in order (Node.fence)
        try:
            for k, step in enumerate(steps):
                try:
                    self.runner.play(step)
                except AssertionError as e:
                    raise AssertionError("step %d (%s from vm%d): %s" % (k, step.what, step.vm + 1, e)) from None
            for i in range(len(h.vms)):
                node.fence(i)
        finally:
            os.sched_setaffinity(0, cpus)
        table = FlowTable.open_readonly(os.path.join(h.state_dir, "flows.shm"))
        try:
            # closed pairs leave a second after their second FIN (in ebpf mode the program tells the
            # engine of a second FIN on a ring, which it reads when it will): wait for that, not for a time
            wait_until(lambda: not _closing(table.dump()), 15, "the closed pairs to be evicted")
            flows = _normal_flows(table.dump())
        finally:
            table.close()
        for i in range(len(h.vms)):
            node.fence(i)
        drops = _delta(_dict(h.cli_json("dropstats")), drops0)
        vifs = _delta(_vif_counts(h), vifs0)
        delivered = [_delivered(got, self.runner.isn, i) for i, got in enumerate(wire.got)]
        # The proxy's segments are counted on vhost0 (what the node sends) and on the VM's vif;
        # how many there are is the proxy's race (see _delivered): the counts are compared
        # without them.
        for i, got in enumerate(wire.got):
            n, size = _proxy_counts(got)
            for vif, (pk, by) in ((h.vms[i]["vif"], ("tx_packets", "tx_bytes")), (0, ("rx_packets", "rx_bytes"))):
                counts: dict[str, int] = next((v for k, v in vifs.items() if k.startswith("vif%d " % vif)), {})
                counts[pk] = counts.get(pk, 0) - n
                counts[by] = counts.get(by, 0) - size
        nft = _nft_counts(h)
        return Result(delivered, flows, drops, vifs, nft[0] - nft0[0], nft[1] - nft0[1])


def _diff(a: Result, b: Result) -> str:
    out = []
    pa, pb = a.parts(), b.parts()
    for name in pa:
        if pa[name] != pb[name]:
            lines = difflib.unified_diff(pa[name], pb[name], "nfqueue", "ebpf", lineterm="", n=2)
            out.append("== %s differs:\n%s" % (name, "\n".join(lines)))
    return "\n".join(out)


# The malformed frames, each kind in turn, most on a live flow (where the program acts), among them
# what the compute node's kernel refuses before nftables and the engine see it: a wrong IPv4 header
# checksum ("ipsum"), a frame to another host's MAC ("mac"), bytes past the IP packet's length
# ("trailer", trimmed); and a TCP header longer than the packet ("dataofs15", the engine's Invalid
# Packet).  The program forwarded those four on a live flow before f6f823f.
MALFORMED = ("ipsum", "mac", "trailer", "long", "options", "ihl", "ihl4", "frag", "mf", "dataofs", "dataofs15", "udplen", "cut", "v6in4",
             "proto", "runt", "icmpcut")  # fmt: skip


@dataclass
class Equivalence:
    results: dict[str, Result]  # by mode
    on_live: set[str]  # the malformed kinds sent on a live flow


@pytest.fixture(scope="module")
def equivalence(make_shared_node: Callable[..., EmulatedHost]) -> Equivalence:
    """Each mode's node, one after the other, given the same sequences."""
    seeds, steps = [11, 12], 130
    results, on_live = {}, set()
    for mode in ("nfqueue", "ebpf"):
        h = make_shared_node(vms=3, datapath=mode)
        trial = Trial(h)
        try:
            sequences = [Sequence(seed, h.vms, steps, MALFORMED) for seed in seeds]
            results[mode] = trial.run([st for seq in sequences for st in seq.steps])
            on_live = set().union(*(seq.on_live for seq in sequences))
        finally:
            trial.close()
            h.down()
    return Equivalence(results, on_live)


def test_both_datapaths_deliver_and_count_the_same(equivalence: Equivalence) -> None:
    nfq, ebpf = equivalence.results["nfqueue"], equivalence.results["ebpf"]
    assert sum(len(d) for d in nfq.delivered) > 100 and len(nfq.flows) > 40  # the sequences did something
    assert nfq.drops.get("Invalid Packet", 0) > 0 and nfq.drops.get("No L3 Route", 0) > 0 and nfq.drops.get("Kernel IP Header Errors", 0) > 0
    assert equivalence.on_live == set(MALFORMED), set(MALFORMED) - equivalence.on_live  # every kind met the program on a live flow
    # ... and the program took its part: it forwarded and NATed packets that nfqueue mode queued
    assert nfq.fast == 0 and ebpf.fast > 10 and ebpf.queued < 0.8 * nfq.queued, (nfq.queued, ebpf.queued, ebpf.fast)
    diff = _diff(nfq, ebpf)
    assert not diff, "the datapaths differ:\n" + diff


# -- cleanup -------------------------------------------------------------------------------------


def _gone(progs: set[int], maps: set[int]) -> bool:
    return not any(bpfmap.prog_exists(p) for p in progs) and not any(bpfmap.map_exists(m) for m in maps)


def _on_device(h: EmulatedHost, dev: str) -> set[int]:
    """The programs attached to a device of the compute namespace."""
    r = h.in_compute("bpftool", "-j", "net", "show", "dev", dev)
    assert r.returncode == 0, r.stderr
    return {tc["id"] for d in json.loads(r.stdout) for tc in d.get("tc", [])}


def _reaped(pid: int) -> bool:
    """Whether process ``pid`` is gone; reaped here if it is a child of this process (the lab that
    the fixture built started its first agent from here)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass  # another's child: its parent reaps it
    return not os.path.exists("/proc/%d" % pid)


def _clsact(h: EmulatedHost) -> list[str]:
    """The compute namespace's devices that have a clsact qdisc (where TC programs are attached)."""
    r = h.in_compute("tc", "-j", "qdisc", "show")
    assert r.returncode == 0, r.stderr
    return sorted(q["dev"] for q in json.loads(r.stdout) if q.get("kind") == "clsact")


def test_no_program_or_map_of_an_ebpf_node_outlives_it(make_node: Callable[..., EmulatedHost]) -> None:
    h = make_node(vms=2, datapath="ebpf")
    progs, maps = h.bpf_objects()
    st = _dict(h.cli_json("status"))
    assert st["datapath"] == "ebpf" and set(st["bpf_programs"]) == progs and len(progs) == 2, (st, progs)
    assert st["bpf_flow_map"] in maps and len(maps) >= 6, maps
    assert _clsact(h) == sorted([vm["tap"] for vm in h.vms] + ["vhost0"])
    # a port unplugged takes its tap's programs with it; plugged again, they are back
    vm = h.vms[1]
    assert h.cli("port", "del", "--uuid", vm["port_uuid"]).returncode == 0
    wait_until(lambda: not _on_device(h, vm["tap"]), 10, "the unplugged tap's programs to go")
    r = h.cli("port", "add", "--uuid", vm["port_uuid"], "--instance-uuid", vm["instance_uuid"], "--vn-uuid", vm["vn_uuid"],
              "--vm-project-uuid", vm["project_id"], "--ip-address", vm["ip"], "--mac", vm["mac"], "--tap-name", vm["tap"])  # fmt: skip
    assert r.returncode == 0, r.stderr
    wait_until(lambda: _on_device(h, vm["tap"]) == progs, 10, "the programs on the tap plugged again")
    # an agent killed leaves them attached (they forward the live flows without it): the next agent replaces them
    pid = int(open(os.path.join(h.state_dir, "agent.pid")).read())
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: _reaped(pid), 10, "the agent to die")
    assert all(bpfmap.prog_exists(p) for p in progs) and _on_device(h, h.vms[0]["tap"]) == progs
    r = h.setup("start-agent")
    assert r.returncode == 0, r.stderr
    wait_until(lambda: _gone(progs, maps), 10, "the killed agent's programs and maps to go")
    again, again_maps = h.bpf_objects()
    assert len(again) == 2 and not again & progs and not again_maps & maps
    # an agent stopped leaves nothing: no program, no map, no clsact qdisc on any device
    assert h.setup("stop-agent").returncode == 0
    wait_until(lambda: _gone(again, again_maps), 10, "the stopped agent's programs and maps to go")
    assert _clsact(h) == [] and h.bpf_objects() == (set(), set())
    # and down, its agent running, neither
    r = h.setup("start-agent")
    assert r.returncode == 0, r.stderr
    last, last_maps = h.bpf_objects()
    assert len(last) == 2 and last_maps
    h.down()
    wait_until(lambda: _gone(last, last_maps), 10, "the node's programs and maps to go with it")


# -- garbage --------------------------------------------------------------------------------------

GARBAGE = r"""
import random, select, socket, struct, sys, time
rng = random.Random(int(sys.argv[1]))
seconds, mac, src = float(sys.argv[2]), bytes.fromhex(sys.argv[3].replace(":", "")), socket.inet_aton(sys.argv[4])
dsts = [socket.inet_aton(a) for a in sys.argv[5:]]

def csum(h):
    s = sum(struct.unpack("!10H", h))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF

frames = []
for i in range(4000):
    eth = b"\x00\x00\x5e\x00\x01\x00" + mac
    kind = rng.randrange(4)
    if kind == 0:  # anything at all
        frames.append(eth + rng.randbytes(2 + rng.randrange(200)))
    elif kind == 1:  # IPv4 of random bytes
        frames.append(eth + b"\x08\x00" + rng.randbytes(rng.randrange(100)))
    else:  # an IPv4 header the kernel takes (its checksum and length right), random or cut behind it
        proto = rng.choice([6, 17, 1, 6, 17, rng.randrange(256)])
        body = bytearray(rng.randbytes(rng.randrange(60)))
        if proto == 6 and len(body) > 13:
            body[12] = rng.choice([0x00, 0x40, 0xF0])  # TCP data offsets the engine refuses
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), i, 0, 64, proto, 0, src, rng.choice(dsts))
        frames.append(eth + b"\x08\x00" + hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:] + bytes(body))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
print("ready", flush=True)
n, end = 0, time.monotonic() + seconds
while n & 255 or (time.monotonic() < end and not select.select([sys.stdin], [], [], 0)[0]):  # until told (stdin closed), or at most that long
    try:
        s.send(frames[n % len(frames)])
    except OSError:
        pass  # the device's queue full: the flood goes on
    n += 1
print(n, "stopped" if time.monotonic() < end else "timed out", flush=True)
"""

READER = r"""
import http.client, json, sys
codes = []
for i in range(int(sys.argv[1])):
    try:
        c = http.client.HTTPConnection("169.254.169.254", 80, timeout=10)
        c.request("GET", "/openstack/latest/meta_data.json")
        r = c.getresponse()
        body = r.read()
        codes.append(json.loads(body)["uuid"] if r.status == 200 else r.status)
        c.close()
    except Exception as e:
        codes.append(type(e).__name__)
print(json.dumps(codes))
"""


def test_a_vm_flooding_garbage_does_not_stop_the_others(make_node: Callable[..., EmulatedHost]) -> None:
    """vm1 floods random frames (random bytes, IPv4 of random bytes, IPv4 headers the kernel takes
    with random or cut transport headers) at an ebpf node, from before vm2 begins to read its
    metadata again and again and to ping vm3 until both are done (60 s at most): every request
    answered, no ping lost, the agent alive, and the garbage counted."""
    h = make_node(vms=3, datapath="ebpf")
    a, b, c = h.vms
    before = _dict(h.cli_json("dropstats"))
    pid = _dict(h.cli_json("status"))["pid"]
    targets = ["169.254.169.254", c["ip"], "10.1.1.1", "10.1.1.9", "10.10.0.1", "169.254.0.4"]
    flood = subprocess.Popen(["ip", "netns", "exec", a["namespace"], sys.executable, "-c", GARBAGE, "5", "60", a["mac"], a["ip"], *targets],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    reader = ping = None
    try:
        assert flood.stdout is not None and flood.stdout.readline().strip() == "ready"
        t0 = time.monotonic()
        wait_until(lambda: _dict(h.cli_json("dropstats"))["Invalid Packet"] > before["Invalid Packet"], 10, "the garbage to reach the engine")
        reader = subprocess.Popen(["ip", "netns", "exec", b["namespace"], sys.executable, "-c", READER, "20"], stdout=subprocess.PIPE, text=True)
        ping = subprocess.Popen(["ip", "netns", "exec", b["namespace"], "ping", "-c", "20", "-i", "0.1", "-W", "2", "-w", "20", c["ip"]],
                                stdout=subprocess.PIPE, text=True)  # fmt: skip
        codes = json.loads(reader.communicate(timeout=120)[0])
        pinged = ping.communicate(timeout=60)[0]
        out = flood.communicate("", timeout=30)[0].split()  # stdin closed: the flood stops
        took = time.monotonic() - t0
    finally:
        for p in (flood, reader, ping):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(10)
    assert codes == [b["instance_uuid"]] * 20, codes
    assert " 0% packet loss" in pinged, pinged
    sent = int(out[0])
    assert out[1] == "stopped" and sent > 10_000, out  # it flooded all along
    after = _dict(h.cli_json("dropstats"))
    st = _dict(h.cli_json("status"))
    assert st["pid"] == pid and st["datapath"] == "ebpf"
    assert after["Invalid Packet"] > before["Invalid Packet"] and after["Kernel IP Header Errors"] > before["Kernel IP Header Errors"]
    assert after["Dataplane Error"] == before["Dataplane Error"]
    assert h.metadata(0)[0] == 200 and h.metadata(2)[0] == 200  # the flooder too, once it asks properly
    print("\nvm1 sent %d garbage frames in %.1f s; dropstats added %s" % (sent, took, {k: v - before[k] for k, v in after.items() if v != before[k]}))


# -- BPF refused ----------------------------------------------------------------------------------


def test_an_agent_refused_bpf_says_what_is_missing(make_node: Callable[..., EmulatedHost]) -> None:
    """The agent of an ebpf node started without CAP_BPF, CAP_SYS_ADMIN and CAP_PERFMON (setpriv
    takes them from its bounding set and inheritable set: root keeps the rest) fails at once, saying
    that the kernel refused BPF and what it needs, with no traceback; the node's usual agent starts
    again after it."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is not installed")
    h = make_node(vms=1, datapath="ebpf")
    assert h.setup("stop-agent").returncode == 0
    agent = [str(VROUTER), "agent", "--config", os.path.join(h.state_dir, "agent.conf"), "--state-dir", h.state_dir]
    r = subprocess.run(["ip", "netns", "exec", h.compute, setpriv, "--inh-caps=-all", "--bounding-set=-bpf,-sys_admin,-perfmon", *agent],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode != 0
    assert "Traceback" not in r.stderr and "datapath = ebpf" in r.stderr, r.stderr
    assert "refused BPF" in r.stderr and "CAP_BPF" in r.stderr, r.stderr
    assert not h.in_compute("bpftool", "-j", "net", "show").stdout.count('"id"')  # it attached nothing
    r = h.setup("start-agent")
    assert r.returncode == 0, r.stderr
    assert h.metadata(0)[0] == 200
