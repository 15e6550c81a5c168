"""The per-packet path: a packet of a live flow, from its bytes to its verdict.

``PacketPath.process`` takes the bytes of an IPv4 or IPv6 packet and the
ifindex it arrived on (0 for packets the compute node itself sends) and
returns a ``Verdict``: accept, accept with new bytes (NAT), or drop with a
reason.  Rules kept here:

* The key is the vif the packet came in on (K(nh)), its addresses, protocol
  and ports (ICMP echo: the identifier); identity never comes from the packet's
  own source address.
* Most packets are IPv4 with a 20-byte header, of a live TCP or UDP flow: the
  fast path reads the header with one struct call, looks the key up and, on a
  hit, counts and rewrites.  Every other packet takes the general path
  (``general``), before anything is counted: IPv6, IP options, fragments,
  anything truncated or unsure.  A miss on the fast path goes to flow set-up
  with the key and fields already read, not parsed again.
* Both paths end in ``hit``: the entry's counters, the pair's first answer
  (New flow cleared), Drop entries, trap entries (to ``on_trap``), the TCP lifecycle (FIN, RST, a SYN on a
  closed pair), the NAT rewrite.  A test checks that both decide alike.
* A malformed packet is dropped (Invalid Packet) and counted on its vif; a
  packet from an interface that is no vif is dropped (Unknown Interface).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import NamedTuple

from dataplane.core.entries import Entries
from dataplane.core.flowsetup import FlowSetup
from dataplane.core.lifecycle import Lifecycle
from dataplane.core.packet import FAST4, TCP, TCP_FIN, TCP_RST, TCP_SYN, UDP, Malformed, Parsed, parse
from dataplane.core.traps import Trap
from dataplane.core.vif import Vif, VifTable
from flows.layout import F_NEW_FLOW, KEY, Action, DropReason, make_key
from flows.table import FlowTable


class Verdict(NamedTuple):  # a tuple: made for every packet, and cheaper than a frozen dataclass
    accept: bool
    payload: bytes | None = None  # rewritten packet, for NAT
    reason: DropReason = DropReason.NONE


_ACCEPT = Verdict(True)
_TRAPPED = Verdict(False)  # handed to the agent's services: the kernel drops its copy, nothing is counted as dropped
_SENT = Verdict(False)  # sent on by ``inject`` (another IP family than the queue's): the kernel drops its copy
_DROP = Action.DROP
_FIN_RST = TCP_FIN | TCP_RST
_FAST4 = FAST4  # an IPv4 header of 20 bytes and the ports after it, in one read


TrapHandler = Callable[[Trap, bytes, Vif, int], None]  # (service, IP packet, vif it came in on, IP header length)


def _ignore(trap: Trap, pkt: bytes, vif: Vif, ihl: int) -> None:
    pass


def _no_inject(pkt: bytes, ifindex: int = 0) -> bool:
    return False


class PacketPath:
    """The verdict for each packet: the fast path, the general path, and what both end in."""

    SENT = _SENT

    def __init__(self, table: FlowTable, entries: Entries, vifs: VifTable, flow_setup: FlowSetup, lifecycle: Lifecycle) -> None:
        self.table = table
        self.states = entries.states
        self.vifs = vifs
        self.flow_setup = flow_setup
        self.lifecycle = lifecycle
        self.drops: Counter[DropReason] = Counter()
        # (vif index, reason) -> packets; not on the Vif, whose attributes the fast path reads (one
        # more on it made every packet about 2% dearer)
        self.vif_drops: Counter[tuple[int, DropReason]] = Counter()
        self.on_trap: TrapHandler = _ignore  # the agent's services
        # Sends an IP packet through the compute node's own stack (out of the interface of
        # ``ifindex`` when given), for what changes family on the way: an IPv6 packet into an
        # IPv4 tunnel, and out of one (a queue's verdict cannot change a packet's family); and
        # for the fabric's IPv6 replies to a VM's link-local address, which the kernel would
        # route back out of vhost0: the Linux layer's raw sockets (``dataplane.linux.raw``)
        self.inject: Callable[[bytes, int], bool] = _no_inject

    def drop(self, reason: DropReason, vif: Vif | None = None) -> Verdict:
        self.drops[reason] += 1
        if vif is not None:
            vif.drops += 1
            self.vif_drops[vif.index, reason] += 1
        return Verdict(False, None, reason)

    def process(self, pkt: bytes, indev: int, now: int | None = None) -> Verdict:
        """The verdict for one packet that arrived on ``indev`` (0: sent by the compute node)."""
        if now is None:
            now = time.time_ns()
        if indev:
            vif = self.vifs.by_ifindex.get(indev)
            if vif is None:
                return self.drop(DropReason.UNKNOWN_INTERFACE)
        else:
            vif = self.vifs.host
        n = len(pkt)
        if n >= 28 and pkt[0] == 0x45:
            total, frag, proto, src, dst, sport, dport = _FAST4.unpack_from(pkt)
            if frag & 0x3FFF or total > n:
                return self.general(pkt, vif, now)
            if proto == TCP:
                if total < 40:
                    return self.general(pkt, vif, now)
                doff = pkt[32] >> 4
                if doff < 5 or 20 + doff * 4 > total:
                    return self.general(pkt, vif, now)
                tcp_flags = pkt[33]
            elif proto == UDP and total >= 28:
                tcp_flags = 0
            else:
                return self.general(pkt, vif, now)
            key = KEY.pack(vif.index, src, dst, sport, dport, proto, 4)
            vif.rx_packets += 1
            vif.rx_bytes += n
            index = self.table.lookup(key)
            if index < 0:
                return self._miss(pkt, vif, Parsed(20, proto, src, dst, sport, dport, tcp_flags, total), key, now)
            return self.hit(pkt, vif, index, now, proto, tcp_flags, 20)
        return self.general(pkt, vif, now)

    def general(self, pkt: bytes, vif: Vif, now: int) -> Verdict:
        """The general path: any packet, any flow state."""
        try:
            p = parse(pkt)
        except Malformed:
            return self.drop(DropReason.INVALID_PACKET, vif)
        vif.rx_packets += 1
        vif.rx_bytes += len(pkt)
        key = make_key(vif.index, p.src, p.dst, p.proto, p.sport, p.dport)
        index = self.table.lookup(key)
        if index < 0:
            return self._miss(pkt, vif, p, key, now)
        return self.hit(pkt, vif, index, now, p.proto, p.tcp_flags, p.ihl)

    def _miss(self, pkt: bytes, vif: Vif, p: Parsed, key: bytes, now: int) -> Verdict:
        index, refused = self.flow_setup.setup(vif, p, key, now, pkt)
        if refused:
            return self.drop(refused, None if vif is self.vifs.host else vif)
        return self.hit(pkt, vif, index, now, p.proto, p.tcp_flags, p.ihl)

    def hit(self, pkt: bytes, vif: Vif, index: int, now: int, proto: int, tcp_flags: int, ihl: int) -> Verdict:
        """A packet of the flow at ``index`` (counted in on ``vif`` already): the entry's
        counters, the pair's first answer, TCP state, the verdict.  Both paths end here."""
        table = self.table
        st = self.states[index]
        assert st is not None  # every entry this dataplane's table holds has its state
        n = len(pkt)
        table.hit(index, n, now, tcp_flags)
        if st.fresh:  # the first answer: the pair is no longer a new flow
            st.fresh = False
            table.update_pair_flags(index, clear_bits=F_NEW_FLOW)
        if st.action == _DROP:
            return self.drop(st.reason, vif)
        if st.trap is not None:  # for the agent's services, not for the kernel
            self.on_trap(st.trap, pkt, vif, ihl)
            return _TRAPPED
        out = st.out
        if out is not None:
            out.tx_packets += 1
            out.tx_bytes += n
        # only a SYN can restart a closed pair: other packets need no TCP state
        if proto == TCP and (tcp_flags & _FIN_RST or (tcp_flags & TCP_SYN and st.closed_at is not None)):
            refused = self.lifecycle.tcp(index, st, tcp_flags, now)
            if refused:
                return self.drop(refused, vif)
        patch = st.patch
        if patch is None:
            return _ACCEPT
        if ihl == 20:  # IPv4 without options (NAT flows are TCP or UDP)
            return Verdict(True, patch.apply4(pkt))
        buf = bytearray(pkt)
        patch.apply(buf, ihl)
        if st.deliver:
            assert out is not None
            return _SENT if self.inject(bytes(buf), out.ifindex) else self.drop(DropReason.FLOW_UNUSABLE, vif)
        if buf[0] >> 4 != pkt[0] >> 4:  # an IPv6 packet now in an IPv4 tunnel
            return _SENT if self.inject(bytes(buf), 0) else self.drop(DropReason.FLOW_UNUSABLE, vif)
        return Verdict(True, bytes(buf))
