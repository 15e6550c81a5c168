"""``vrouter vifdump -i N``: the packets of one vif, as the dataplane sees them.

Like the vRouter's vifdump: the reader binds a datagram socket, asks the
agent to copy vif N's packets to it (``vifdump.start``), and prints each one
(one line, tcpdump-like) or writes them as pcap (``-w FILE``, ``-w -`` for
stdout), until ``-c COUNT`` packets, ``--duration S`` seconds, Ctrl-C or the
agent stops; then it asks the agent to stop and says how many packets the
agent could not hand over because this reader was too slow.

The pcap's link type is Ethernet: the IP packets the dataplane sees get the
header they had on the tap (the VM's MAC and the vRouter's, 00:00:5e:00:01:00),
the frames of the agent's services (ARP, router solicitations, DHCP, DNS and
ping answers) are as sent.  With ``--rewritten``, a NAT packet is followed by
itself as on the other side of the rewrite (RX: as rewritten towards the
proxy or the fabric; TX: as it came from there), which a pcap shows as one more
packet.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any, BinaryIO, TextIO

import dpkt

from dataplane.core import frames
from dataplane.core.capture import FRAME, OTHER_SIDE, RECORD, RX, SNAPLEN
from dataplane.core.frames import VROUTER_MAC
from flows.layout import DROP_NAMES, DropReason
from vrouter.messages.control import VifdumpStart, VifdumpStarted, VifdumpStop, VifdumpStopped

RCVBUF = 8 << 20
POLL = 0.5  # seconds between looks at whether the agent is still there
_ETH = struct.Struct("!6s6sH")


def mac_bytes(mac: str) -> bytes:
    """The VM's MAC for the frames' headers; zeros when the agent gave none (or one it cannot parse)."""
    try:
        return frames.mac_bytes(mac) if mac else b"\0" * 6
    except ValueError:
        return b"\0" * 6


class Record:
    __slots__ = ("time_ns", "vif", "direction", "kind", "reason", "trapped", "data")

    def __init__(self, datagram: bytes) -> None:
        self.time_ns, self.vif, self.direction, self.kind, self.reason, trapped = RECORD.unpack_from(datagram)
        self.trapped = bool(trapped)
        self.data = datagram[RECORD.size :]

    def frame(self, vm_mac: bytes) -> bytes:
        """As an Ethernet frame: IP packets get the header they had on the tap."""
        if self.kind == FRAME:
            return self.data
        ethertype = 0x86DD if self.data[:1] and self.data[0] >> 4 == 6 else 0x0800
        src, dst = (vm_mac, VROUTER_MAC) if self.direction == RX else (VROUTER_MAC, vm_mac)
        return _ETH.pack(dst, src, ethertype) + self.data


def describe(r: Record, name: str) -> str:
    """One line: time, vif, direction, what the packet is, and what became of it."""
    stamp = time.strftime("%H:%M:%S", time.localtime(r.time_ns / 1e9)) + ".%06d" % (r.time_ns // 1000 % 1_000_000)
    what = _summary(r.data, r.kind == FRAME)
    notes = []
    if r.kind == OTHER_SIDE:
        notes.append("as rewritten" if r.direction == RX else "before the rewrite")
    if r.reason:
        try:
            notes.append("dropped: " + DROP_NAMES[DropReason(r.reason)])
        except (ValueError, KeyError):
            notes.append("dropped: reason %d" % r.reason)
    if r.trapped:
        notes.append("to the agent")
    return "%s vif0/%d %s %s %s%s" % (stamp, r.vif, name, "rx" if r.direction == RX else "tx", what, " (%s)" % ", ".join(notes) if notes else "")


def _summary(data: bytes, frame: bool) -> str:
    try:
        if frame:
            eth = dpkt.ethernet.Ethernet(data)
            if isinstance(eth.data, dpkt.arp.ARP):
                return _arp(eth.data)
            pkt = eth.data
            if not isinstance(pkt, dpkt.ip.IP | dpkt.ip6.IP6):
                return "ethertype 0x%04x, %d bytes" % (eth.type, len(data))
        else:
            pkt = dpkt.ip6.IP6(data) if data[:1] and data[0] >> 4 == 6 else dpkt.ip.IP(data)
    except (dpkt.UnpackError, IndexError, ValueError):
        return "malformed, %d bytes" % len(data)
    return _ip(pkt, len(pkt))


def _arp(a: Any) -> str:
    spa, tpa = ipaddress.ip_address(a.spa), ipaddress.ip_address(a.tpa)
    if a.op == dpkt.arp.ARP_OP_REQUEST:
        return "ARP, Request who-has %s tell %s" % (tpa, spa)
    if a.op == dpkt.arp.ARP_OP_REPLY:
        return "ARP, Reply %s is-at %s" % (spa, frames.mac_text(a.sha))
    return "ARP, op %d" % a.op


_TCP_FLAGS = ((dpkt.tcp.TH_SYN, "S"), (dpkt.tcp.TH_FIN, "F"), (dpkt.tcp.TH_RST, "R"), (dpkt.tcp.TH_PUSH, "P"), (dpkt.tcp.TH_ACK, "."))


def _ip(pkt: Any, size: int) -> str:
    v6 = isinstance(pkt, dpkt.ip6.IP6)
    src, dst = ipaddress.ip_address(pkt.src), ipaddress.ip_address(pkt.dst)
    l4 = pkt.data
    family = "IP6" if v6 else "IP"
    if isinstance(l4, dpkt.tcp.TCP):
        flags = "".join(c for bit, c in _TCP_FLAGS if l4.flags & bit) or "none"
        return "%s %s.%d > %s.%d: Flags [%s], seq %d, length %d" % (family, src, l4.sport, dst, l4.dport, flags, l4.seq, len(l4.data))
    if isinstance(l4, dpkt.udp.UDP):
        return "%s %s.%d > %s.%d: UDP, length %d" % (family, src, l4.sport, dst, l4.dport, len(l4.data))
    if isinstance(l4, dpkt.icmp.ICMP):
        kinds = {8: "echo request", 0: "echo reply", 3: "unreachable", 11: "time exceeded"}
        extra = ""
        if l4.type in (0, 8) and isinstance(l4.data, dpkt.icmp.ICMP.Echo):
            extra = ", id %d, seq %d" % (l4.data.id, l4.data.seq)
        return "%s %s > %s: ICMP %s%s, length %d" % (family, src, dst, kinds.get(l4.type, "type %d" % l4.type), extra, size)
    if isinstance(l4, dpkt.icmp6.ICMP6):
        kinds6 = {128: "echo request", 129: "echo reply", 133: "router solicitation", 134: "router advertisement",
                  135: "neighbor solicitation", 136: "neighbor advertisement"}  # fmt: skip
        return "%s %s > %s: ICMP6, %s, length %d" % (family, src, dst, kinds6.get(l4.type, "type %d" % l4.type), size)
    proto = pkt.nxt if v6 else pkt.p
    return "%s %s > %s: proto %d, length %d" % (family, src, dst, proto, size)


class PcapOut:
    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.writer = dpkt.pcap.Writer(f, snaplen=SNAPLEN, linktype=dpkt.pcap.DLT_EN10MB)

    def write(self, frame: bytes, time_ns: int) -> None:
        self.writer.writepkt(frame, ts=time_ns / 1e9)
        self.f.flush()  # a capture cut short is readable as far as it went; a pipe sees each packet


def run(call: Callable[[Any], Any], agent_alive: Callable[[], bool], vif: int, write: str | None, count: int | None,
        duration: float | None, rewritten: bool, out: TextIO, err: TextIO) -> int:  # fmt: skip
    """Capture; the exit status.  ``call`` sends a request to the agent (its errors go up)."""
    if count is not None and count < 1:
        raise ValueError("-c %d: at least 1" % count)
    if duration is not None and duration <= 0:
        raise ValueError("--duration %s: above 0" % duration)
    workdir = tempfile.mkdtemp(prefix="vrouter-vifdump.")
    path = os.path.join(workdir, "sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    f: BinaryIO | None = None
    try:
        sock.bind(path)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, 33, RCVBUF)  # SO_RCVBUFFORCE: root may pass rmem_max
        started: VifdumpStarted = call(VifdumpStart(vif, path, rewritten))
        vm_mac = mac_bytes(started.mac)
        pcap = None
        if write is not None:
            f = sys.stdout.buffer if write == "-" else open(write, "wb")  # noqa: SIM115 - closed below
            pcap = PcapOut(f)
        err.write("vifdump: listening on vif0/%d (%s), link-type EN10MB (Ethernet), snapshot length %d bytes\n" % (started.vif, started.name,
                                                                                                                  SNAPLEN))  # fmt: skip
        err.flush()
        got, why = _loop(sock, pcap, vm_mac, started.name, count, duration, agent_alive, out)
        try:
            stopped: VifdumpStopped = call(VifdumpStop(path))
            lost = stopped.lost
        except Exception:  # the agent went: what it could not send is unknown
            lost = -1
        if lost < 0:
            lost_text = " (the agent went: how many it could not hand over is unknown)"
        else:
            lost_text = ", %d lost%s" % (lost, " (this reader was slower than the dataplane)" if lost else "")
        err.write("%d packets captured%s\n" % (got, lost_text))
        if why:
            err.write("vifdump: %s\n" % why)
        return 1 if why else 0
    finally:
        sock.close()
        shutil.rmtree(workdir, ignore_errors=True)
        if f is not None and f is not sys.stdout.buffer:
            f.close()


def _loop(sock: socket.socket, pcap: PcapOut | None, vm_mac: bytes, name: str, count: int | None, duration: float | None,
          agent_alive: Callable[[], bool], out: TextIO) -> tuple[int, str]:  # fmt: skip
    """Read records until done; (how many, why it ended early or "")."""
    deadline = None if duration is None else time.monotonic() + duration
    got = 0
    try:
        while count is None or got < count:
            wait = POLL if deadline is None else min(POLL, deadline - time.monotonic())
            if wait <= 0:
                break
            sock.settimeout(wait)
            try:
                datagram = sock.recv(SNAPLEN + RECORD.size)
            except TimeoutError:
                if not agent_alive():
                    return got, "the agent stopped"
                continue
            if len(datagram) < RECORD.size:
                continue
            r = Record(datagram)
            got += 1
            if pcap is not None:
                pcap.write(r.frame(vm_mac), r.time_ns)
            else:
                out.write(describe(r, name) + "\n")
                out.flush()
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        return got, "the output pipe closed"
    return got, ""
