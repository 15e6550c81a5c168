"""The forwarding decision for one packet: flow lookup, flow setup on a miss, NAT, counters.

Pure code: ``Dataplane.process`` takes the bytes of an IPv4 packet and the
ifindex it arrived on (0 for packets the compute node itself sends) and
returns a verdict with, for NAT, the rewritten bytes.  The NFQUEUE shell
(``dataplane.linux.nfqueue``) is the only caller that touches the kernel;
unit tests drive this class with byte strings.

On a miss the flow pair comes from, in order: the link-local service table
(metadata services are NATed to the local proxy, other services straight to
the fabric with a source port reserved by a real socket), then the VM port
table (VM to VM in the same VRF: Forward), else a Drop flow (no route).

Lifecycle: a TCP pair goes at an RST, or a second after a FIN each way (so
that the last ACKs, which may cross, still pass); every pair goes when idle
for longer than the aging timeout.  Limits:
per-VM flow entries (with the vRouter's hysteresis: once over, new flows are
dropped until use falls to 90%), link-local flows per VM and per host.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import struct
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from dataplane.core.nat import Patch, Rewrite
from dataplane.core.packet import ICMP, TCP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, UDP, Malformed, Parsed, parse
from dataplane.core.vif import HOST_VIF, LINK_LOCAL6, METADATA_SERVICE_IP6, PROXY_IP6, LinkLocalService, Vif
from flows.layout import F_EVICT_CANDIDATE, F_NEW_FLOW, F_RFLOW_VALID, KEY, Action, DropReason, Flag, make_key
from flows.table import FlowSpec, FlowTable, TableFull

log = logging.getLogger("vrouter.dataplane")

MD_FWD_FLAGS = int(Flag.SNAT | Flag.DNAT | Flag.DPAT | Flag.LINK_LOCAL)
MD_REV_FLAGS = int(Flag.SNAT | Flag.SPAT | Flag.DNAT | Flag.LINK_LOCAL)
AGE_CYCLE_NS = 1_000_000_000  # aging looks at each live flow at most once in this time
CLOSE_GRACE_NS = 1_000_000_000  # both FINs seen: the pair goes this long after (the last ACKs pass)


class Verdict(NamedTuple):  # a tuple: made for every packet, and cheaper than a frozen dataclass
    accept: bool
    payload: bytes | None = None  # rewritten packet, for NAT
    reason: DropReason = DropReason.NONE


_ACCEPT = Verdict(True)
_DROP = Action.DROP
_FIN_RST = TCP_FIN | TCP_RST
# The per-packet fast path: an IPv4 header of 20 bytes and the ports after it (total length,
# fragment field, protocol, addresses, ports) in one read, and the flow key in one write
_FAST4 = struct.Struct("!2xH2xH1xB2x4s4sHH")
_PORTS = struct.Struct("!HH")


@dataclass(frozen=True)
class Limits:
    """Flow limits. ``max_vm_flows``: entries one VM may hold (0: only the table's size)."""

    max_vm_flows: int = 0
    max_vm_linklocal_flows: int = 2048
    max_system_linklocal_flows: int = 2048


class PortAllocator(Protocol):
    """Reserves source ports for link-local NAT to the fabric (the agent binds real sockets)."""

    def reserve(self, proto: int) -> tuple[int, object]: ...

    def release(self, handle: object) -> None: ...


class Prepared:
    """What the dataplane does with packets of one entry, prepared at flow setup.

    The forward entry of a pair also carries the bookkeeping of the pair: the vifs whose flow
    counts include it, whether it is a link-local flow, the reserved port to release.
    """

    __slots__ = ("action", "rewrite", "out", "vin", "reason", "charge", "charged", "link_local", "port", "fresh")

    def __init__(self, action: Action, rewrite: Patch | None, out: Vif | None, vin: int, reason: DropReason = DropReason.NONE) -> None:
        self.action = action
        self.rewrite = rewrite
        self.out = out
        self.vin = vin
        self.reason = reason
        self.charge: tuple[Vif, ...] = ()
        self.charged = False  # counted against the limits: from setup until closed or removed
        self.link_local = False
        self.port: object = None
        self.fresh = False  # on a reverse entry: no answer seen yet, the pair is still New


class Dataplane:
    """Flow table plus the tables a flow setup reads (vifs, link-local services)."""

    def __init__(
        self,
        table: FlowTable,
        vhost_ip: str,
        proxy_port: int = 8097,
        limits: Limits | None = None,
        ports: PortAllocator | None = None,
    ) -> None:
        self.table = table
        self.vhost_ip = vhost_ip
        self.vhost_ip_bytes = ipaddress.IPv4Address(vhost_ip).packed
        self.proxy_port = proxy_port
        self.proxy_ip6_bytes = ipaddress.IPv6Address(PROXY_IP6).packed
        self.limits = limits or Limits()
        self.port_allocator = ports
        self.host = Vif(HOST_VIF, "vhost0", ip=vhost_ip, kind="Host")
        self.vifs: dict[int, Vif] = {HOST_VIF: self.host}  # vif index -> Vif
        self.by_ifindex: dict[int, Vif] = {}
        self.by_ip: dict[tuple[int, bytes], Vif] = {}  # (vrf, ip) -> Vif
        self.services: dict[tuple[bytes, int], LinkLocalService] = {}
        self.resolved: dict[str, tuple[str, ...]] = {}  # fabric DNS name -> addresses
        self.drops: Counter[DropReason] = Counter()
        self.prepared: dict[int, Prepared] = {}
        # the same, by entry index, for the per-packet path: with 400K live flows a dict lookup of
        # an index reads its hash slot, its entry and its key object, each a cache miss; a list
        # item is one read (5 MB of pointers for the default table)
        self._prep_at: list[Prepared | None] = [None] * table.capacity
        self.closing: dict[int, int] = {}  # both indices of a pair -> when both FINs were seen
        # the same, in the order pairs closed (entries whose pair restarted or went are skipped):
        # a dict emptied from the front would make every look at its oldest item slower
        self._closing_order: deque[tuple[int, int]] = deque()
        self._age_queue: list[int] = []  # flows still to look at in this aging cycle
        self._age_cycle = -AGE_CYCLE_NS  # when it began
        self.linklocal_flows = 0
        self.setups = 0
        self._md_deltas: dict[tuple[bytes, bytes, int, bytes, bytes], tuple[int, int, bytes, int, int, bytes]] = {}

    # -- tables ---------------------------------------------------------------------------------

    def set_host_ifindex(self, ifindex: int) -> None:
        """vhost0's ifindex: replies from the fabric to NATed link-local flows come in there."""
        if self.host.ifindex:
            self.by_ifindex.pop(self.host.ifindex, None)
        self.host.ifindex = ifindex
        if ifindex:
            self.by_ifindex[ifindex] = self.host

    def add_vif(self, vif: Vif) -> None:
        old = self.vifs.get(vif.index)
        if old is not None:
            self._unindex(old)
            if old.ip_bytes != vif.ip_bytes or old.vrf != vif.vrf:
                self.remove_vif(vif.index)
            else:  # the same port again (a re-created tap): keep its flows and counters
                for p in self.prepared.values():
                    if p.out is old:
                        p.out = vif
                    p.charge = tuple(vif if c is old else c for c in p.charge)
                vif.copy_counters(old)
        self.vifs[vif.index] = vif
        if vif.ifindex:
            self.by_ifindex[vif.ifindex] = vif
        if vif.ip:
            self.by_ip[(vif.vrf, vif.ip_bytes)] = vif

    def _unindex(self, vif: Vif) -> None:
        if self.by_ifindex.get(vif.ifindex) is vif:
            del self.by_ifindex[vif.ifindex]
        if self.by_ip.get((vif.vrf, vif.ip_bytes)) is vif:
            del self.by_ip[(vif.vrf, vif.ip_bytes)]

    def remove_vif(self, index: int) -> int:
        """Forget a vif and remove every flow to or from it; return how many entries went."""
        vif = self.vifs.pop(index, None)
        if vif is None:
            return 0
        self._unindex(vif)
        doomed = [i for i, p in self.prepared.items() if p.vin == index or p.out is vif]
        return self._delete_flows(doomed)

    def set_services(self, services: list[LinkLocalService]) -> int:
        """Replace the link-local service table; flows of removed or changed services go."""
        new = {s.key: s for s in services}
        gone = {k for k, s in self.services.items() if new.get(k) != s}
        self.services = new
        if not gone:
            return 0
        doomed = []
        for i, p in self.prepared.items():
            if p.link_local:
                e = self.table.read(i)
                if (e.dst, e.dport) in gone:
                    doomed.append(i)
        return self._delete_flows(doomed)

    def set_resolved(self, name: str, addresses: tuple[str, ...]) -> None:
        self.resolved[name] = addresses

    def _delete_flows(self, indices: list[int]) -> int:
        n = 0
        for i in indices:
            removed = self.table.delete(i)
            self._forget(removed)
            n += len(removed)
        return n

    def _forget(self, indices: list[int]) -> None:
        for j in indices:
            p = self.prepared.pop(j, None)
            self.closing.pop(j, None)
            if p is None:
                continue
            self._prep_at[j] = None
            self._uncharge(p)
            if p.port is not None and self.port_allocator is not None:
                self.port_allocator.release(p.port)

    def _charge(self, p: Prepared) -> None:
        for v in p.charge:
            v.flows += 2
            if p.link_local:
                v.linklocal_flows += 1
        if p.link_local:
            self.linklocal_flows += 1
        p.charged = True

    def _uncharge(self, p: Prepared) -> None:
        if not p.charged:
            return
        for v in p.charge:
            v.flows -= 2
            if p.link_local:
                v.linklocal_flows -= 1
        if p.link_local:
            self.linklocal_flows -= 1
        p.charged = False

    def _over_limit(self, vif: Vif, link_local: bool) -> DropReason | None:
        """Whether one more flow of this VM's (a pair: two entries) is over its limits."""
        limit = self.limits.max_vm_flows
        if limit:
            if vif.flow_limited and vif.flows <= limit * 9 // 10:
                vif.flow_limited = False
            if vif.flow_limited or vif.flows + 2 > limit:
                vif.flow_limited = True
                return DropReason.FLOW_LIMIT
        if link_local and (
            vif.linklocal_flows >= self.limits.max_vm_linklocal_flows or self.linklocal_flows >= self.limits.max_system_linklocal_flows
        ):
            return DropReason.LINK_LOCAL_LIMIT
        return None

    def flush(self) -> int:
        return self._delete_flows(list(self.prepared))

    def age(self, idle_s: float, now: int | None = None) -> int:
        """Remove flows idle for longer than ``idle_s``, and closed TCP pairs; return the number of
        entries removed."""
        now = now if now is not None else time.time_ns()
        removed = self.table.age(now, int(idle_s * 1e9))
        self._forget(removed)
        return len(removed) + self.evict_closed(now)

    def age_step(self, idle_s: float, budget: int, now: int | None = None, evict_limit: int = 0) -> int:
        """Look at no more than ``budget`` live flows for idleness, taking up where the last step
        left off, and remove the idle ones; also remove closed TCP pairs whose grace is over (at
        most ``evict_limit`` pairs, 0: all).  The agent calls it many times a second, each time
        with a share of its budget, so that no single step stalls the packets and the proxy
        behind it: with N live flows, each is looked at every N/(budget a second) seconds."""
        now = now if now is not None else time.time_ns()
        idle_ns = int(idle_s * 1e9)
        if not self._age_queue and now - self._age_cycle >= AGE_CYCLE_NS:
            # a new cycle, at most once a second: with few flows, looking again sooner finds nothing
            self._age_queue = list(self.prepared)  # a C-speed copy; reverse halves are skipped below
            self._age_cycle = now
        table = self.table
        doomed = []
        queue, prepared = self._age_queue, self.prepared
        looked = 0
        while queue and looked < budget:
            i = queue.pop()
            p = prepared.get(i)
            if p is None or not p.charge:
                continue  # gone meanwhile, or a reverse half (the forward half carries the pair)
            looked += 1
            if now - table.pair_last_used(i) > idle_ns:
                doomed.append(i)
        return self._delete_flows(doomed) + self.evict_closed(now, evict_limit)

    def evict_closed(self, now: int | None = None, limit: int = 0) -> int:
        """Remove TCP pairs that saw a FIN each way more than CLOSE_GRACE_NS ago, oldest first,
        at most ``limit`` pairs (0: all); return the number of entries removed.  ``closing`` is
        in the order pairs closed, so this looks at no pair whose grace is not over."""
        now = now if now is not None else time.time_ns()
        n = pairs = 0
        closing, order = self.closing, self._closing_order
        while order:
            i, since = order[0]
            if closing.get(i) != since:
                order.popleft()  # restarted or removed since
                continue
            if now - since <= CLOSE_GRACE_NS:
                break
            order.popleft()
            n += self._delete_flows([i])
            closing.pop(i, None)  # in case its pair was already gone
            pairs += 1
            if pairs == limit:
                break
        return n

    # -- the per-packet path --------------------------------------------------------------------

    def drop(self, reason: DropReason, vif: Vif | None = None) -> Verdict:
        self.drops[reason] += 1
        if vif is not None:
            vif.drops += 1
        return Verdict(False, None, reason)

    def process(self, pkt: bytes, indev: int, now: int | None = None) -> Verdict:
        """The verdict for one packet that arrived on ``indev`` (0: sent by the compute node).

        Most packets are IPv4 with a 20-byte header, of a live TCP or UDP flow: for those the
        header is read with one struct call and the NAT rewrite is ``Patch.apply4``.  Every
        other packet (a flow's first, IPv6, IP options, anything this first look is unsure of)
        takes the general path, ``_process``, before anything is counted.  Both end in ``_hit``;
        a test checks that they decide alike."""
        if now is None:
            now = time.time_ns()
        if indev:
            vif = self.by_ifindex.get(indev)
            if vif is None:
                return self.drop(DropReason.UNKNOWN_INTERFACE)
        else:
            vif = self.host
        n = len(pkt)
        if n >= 28 and pkt[0] == 0x45:
            total, frag, proto, src, dst, sport, dport = _FAST4.unpack_from(pkt)
            if frag & 0x3FFF or total > n:
                return self._process(pkt, vif, now)
            if proto == TCP:
                if total < 40:
                    return self._process(pkt, vif, now)
                doff = pkt[32] >> 4
                if doff < 5 or 20 + doff * 4 > total:
                    return self._process(pkt, vif, now)
                tcp_flags = pkt[33]
            elif proto == UDP and total >= 28:
                tcp_flags = 0
            else:
                return self._process(pkt, vif, now)
            index = self.table.lookup(KEY.pack(vif.index, src, dst, sport, dport, proto, 4))
            if index < 0:
                return self._process(pkt, vif, now)
            vif.rx_packets += 1
            vif.rx_bytes += n
            return self._hit(pkt, vif, index, now, proto, tcp_flags, 20)
        return self._process(pkt, vif, now)

    def _process(self, pkt: bytes, vif: Vif, now: int) -> Verdict:
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
            index = self._setup(vif, p, key, now)
            if isinstance(index, Verdict):
                return index
        return self._hit(pkt, vif, index, now, p.proto, p.tcp_flags, p.ihl)

    def _hit(self, pkt: bytes, vif: Vif, index: int, now: int, proto: int, tcp_flags: int, ihl: int) -> Verdict:
        """A packet of the flow at ``index`` (counted in on ``vif`` already): the entry's
        counters, the pair's first answer, TCP state, the verdict.  Both paths end here."""
        table = self.table
        prep = self._prep_at[index]
        n = len(pkt)
        table.hit(index, n, now, tcp_flags)
        if prep.fresh:  # the first answer: the pair is no longer a new flow
            prep.fresh = False
            table.update_pair_flags(index, clear_bits=F_NEW_FLOW)
        if prep.action == _DROP:
            return self.drop(prep.reason, vif)
        out = prep.out
        if out is not None:
            out.tx_packets += 1
            out.tx_bytes += n
        # (for other packets _tcp_state does nothing: only a SYN can restart a closed pair)
        if proto == TCP and (tcp_flags & _FIN_RST or (tcp_flags & TCP_SYN and index in self.closing)):
            refused = self._tcp_state(index, tcp_flags, now)
            if refused is not None:
                return self.drop(refused, vif)
        rewrite = prep.rewrite
        if rewrite is None:
            return _ACCEPT
        if ihl == 20:  # IPv4 without options (NAT flows are TCP or UDP)
            return Verdict(True, rewrite.apply4(pkt))
        buf = bytearray(pkt)
        rewrite.apply(buf, ihl)
        return Verdict(True, bytes(buf))

    def _tcp_state(self, index: int, tcp_flags: int, now: int) -> DropReason | None:
        """RST: the pair goes.  FIN both ways: the pair is closed.  It stops counting against the
        VM's limits at once (as the vRouter's evicted flows do) and leaves the table a second
        later, so that the last ACKs still pass.  A new SYN on a closed pair (the VM reused its
        port at once) starts it afresh, if the VM's limits allow another flow."""
        if tcp_flags & TCP_RST:
            self._delete_flows([index])
            return None
        flags = self.table.flags(index)
        other = self.table.reverse_of(index)
        if index in self.closing:
            if tcp_flags & TCP_SYN and not tcp_flags & TCP_ACK:
                fwd = self._forward_prep(index, other)
                if fwd is not None and fwd.charge:
                    refused = self._over_limit(fwd.charge[0], fwd.link_local)
                    if refused is not None:
                        return refused
                    self._charge(fwd)
                for i in (index, other):
                    self.closing.pop(i, None)
                    self.table.set_flags(i, self.table.flags(i) & ~F_EVICT_CANDIDATE)
                    self.table.set_tcp_flags(i, tcp_flags if i == index else 0)
            return None
        if tcp_flags & TCP_FIN and flags & F_RFLOW_VALID:
            if self.table.tcp_flags(other) & TCP_FIN:
                self.table.update_pair_flags(index, set_bits=F_EVICT_CANDIDATE)
                for i in (index, other):
                    self.closing[i] = now
                    self._closing_order.append((i, now))
                fwd = self._forward_prep(index, other)
                if fwd is not None:
                    self._uncharge(fwd)
        return None

    def _forward_prep(self, index: int, other: int) -> Prepared | None:
        """The half of a pair that carries its bookkeeping."""
        for i in (index, other):
            p = self.prepared.get(i)
            if p is not None and p.charge:
                return p
        return None

    # -- flow setup -----------------------------------------------------------------------------

    def _setup(self, vif: Vif, p: Parsed, key: bytes, now: int) -> int | Verdict:
        order = self._closing_order
        if order and now - order[0][1] > CLOSE_GRACE_NS:
            # each new flow takes up to two closed pairs out: eviction keeps pace with set-up
            # spread over the packets, instead of in a burst every aging step
            self.evict_closed(now, 2)
        if vif is self.host:
            # The compute node's own packets, and the fabric's, reach the queue only as the
            # reverse half of a NAT flow; anything else is not ours to set up.
            if log.isEnabledFor(logging.DEBUG):
                log.debug("no reverse flow for %s:%d -> %s:%d proto %d flags 0x%02x", ipaddress.ip_address(p.src), p.sport,
                          ipaddress.ip_address(p.dst), p.dport, p.proto, p.tcp_flags)  # fmt: skip
            return self.drop(DropReason.FLOW_NAT_NO_RFLOW)
        v6 = len(p.src) == 16
        if p.src != vif.ip_bytes and not (v6 and (p.src[:8] == LINK_LOCAL6 or p.src == vif.ip6_bytes)):
            return self.drop(DropReason.INVALID_SOURCE, vif)
        refused = self._over_limit(vif, False)
        if refused is not None:
            return self.drop(refused, vif)
        if v6:
            service = self._metadata6(p)
        else:
            service = self.services.get((p.dst, p.dport)) if p.proto in (TCP, UDP) else None
        try:
            if service is not None:
                refused = self._over_limit(vif, True)
                if refused is not None:
                    return self.drop(refused, vif)
                if service.is_metadata:
                    if p.proto != TCP:
                        return self._drop_flow(vif, key, DropReason.INVALID_PROTOCOL, now)
                    return self._setup_metadata(vif, p, key, now)
                if v6:
                    return self._drop_flow(vif, key, DropReason.NO_ROUTE, now)
                return self._setup_fabric(vif, p, key, now, service)
            if p.dst[0] == 169 and p.dst[1] == 254 and p.proto not in (TCP, UDP):
                return self._drop_flow(vif, key, DropReason.INVALID_PROTOCOL, now)
            dst = self.by_ip.get((vif.vrf, p.dst))
            if dst is None or dst is vif:
                return self._drop_flow(vif, key, DropReason.NO_ROUTE, now)
            return self._setup_forward(vif, dst, p, key, now)
        except TableFull:
            return self.drop(DropReason.FLOW_TABLE_FULL, vif)

    def _drop_flow(self, vif: Vif, key: bytes, reason: DropReason, now: int) -> int:
        spec = FlowSpec(Action.DROP, vrf=vif.vrf, dvrf=vif.vrf, src_nh=vif.nh, vif=vif.index, drop_reason=reason)
        index = self.table.add_single(key, spec, now)
        prep = Prepared(Action.DROP, None, None, vif.index, reason)
        prep.charge = (vif,)
        self._charge(prep)  # a drop flow costs one entry; counted as a pair, released as a pair
        self._keep(index, prep)
        return index

    def _clear(self, rkey: bytes) -> None:
        stale = self.table.lookup(rkey)
        if stale >= 0:
            self._delete_flows([stale])

    def _pair(self, key: bytes, fspec: FlowSpec, fprep: Prepared, rkey: bytes, rspec: FlowSpec, rprep: Prepared,
              charge: tuple[Vif, ...], link_local: bool, now: int) -> int:  # fmt: skip
        self._clear(rkey)
        fi, ri = self.table.add_pair(key, fspec, rkey, rspec, now)
        rprep.fresh = True
        fprep.charge = charge
        fprep.link_local = link_local
        self._charge(fprep)
        self._keep(fi, fprep)
        self._keep(ri, rprep)
        self.setups += 1
        return fi

    def _keep(self, index: int, prep: Prepared) -> None:
        """Hold the dataplane state of a new entry (the benchmarks give generated entries theirs)."""
        self.prepared[index] = prep
        self._prep_at[index] = prep

    def _setup_forward(self, vif: Vif, dst: Vif, p: Parsed, key: bytes, now: int) -> int:
        rports = (p.sport, p.dport) if p.proto == ICMP else (p.dport, p.sport)
        rkey = make_key(dst.index, p.dst, p.src, p.proto, *rports)
        fspec = FlowSpec(Action.FORWARD, vrf=vif.vrf, dvrf=dst.vrf, src_nh=vif.nh, vif=vif.index)
        rspec = FlowSpec(Action.FORWARD, vrf=dst.vrf, dvrf=vif.vrf, src_nh=dst.nh, vif=dst.index)
        fprep = Prepared(Action.FORWARD, None, dst, vif.index)
        rprep = Prepared(Action.FORWARD, None, vif, dst.index)
        return self._pair(key, fspec, fprep, rkey, rspec, rprep, (vif, dst), False, now)

    _MD6 = ipaddress.IPv6Address(METADATA_SERVICE_IP6).packed

    def _metadata6(self, p: Parsed) -> LinkLocalService | None:
        """IPv6: the metadata service answers at fe80::a9fe:a9fe on the metadata service's port."""
        if p.dst != self._MD6 or p.proto not in (TCP, UDP):
            return None
        for s in self.services.values():
            if s.is_metadata and s.port == p.dport:
                return s
        return None

    def _metadata_deltas(self, src: bytes, dst: bytes, dport: int, md: bytes, proxy: bytes) -> tuple[int, int, bytes, int, int, bytes]:
        """What a metadata NAT pair's patches share: the checksum changes and the new addresses,
        forward (ip, l4, addresses) then reverse.  The VM's source port is kept both ways, so the
        changes do not depend on it (its words cancel): they are computed once per VM address and
        service, not at every set-up, and the pairs share the address strings.  A test checks
        the patches against ``Rewrite``'s for random ports."""
        k = (src, dst, dport, md, proxy)
        d = self._md_deltas.get(k)
        if d is None:
            if len(self._md_deltas) >= 4096:  # IPv6 link-local sources are many: stay bounded
                self._md_deltas.clear()
            fwd = Rewrite(TCP, src, dst, 0, dport, md, proxy, 0, self.proxy_port).patch
            rev = Rewrite(TCP, proxy, md, self.proxy_port, 0, dst, src, dport, 0).patch
            d = self._md_deltas[k] = (fwd.ip_delta, fwd.l4_delta, fwd.addrs, rev.ip_delta, rev.l4_delta, rev.addrs)
        return d

    def _setup_metadata(self, vif: Vif, p: Parsed, key: bytes, now: int) -> int:
        if len(p.src) == 16:
            md, proxy = vif.metadata_ip6_bytes, self.proxy_ip6_bytes
        else:
            md, proxy = vif.metadata_ip_bytes, self.vhost_ip_bytes
        sport, pport = p.sport, self.proxy_port
        fip, fl4, faddrs, rip, rl4, raddrs = self._metadata_deltas(p.src, p.dst, p.dport, md, proxy)
        # the VM's (src, dst, sport, dport) becomes (md, proxy, sport, proxy port), and back
        fwd = Patch(TCP, fip, fl4, faddrs, _PORTS.pack(sport, pport))
        rev = Patch(TCP, rip, rl4, raddrs, _PORTS.pack(p.dport, sport))
        rkey = make_key(self.host.index, proxy, md, TCP, pport, sport)
        fspec = FlowSpec(Action.NAT, MD_FWD_FLAGS, vif.vrf, 0, sport, vif.nh, vif.index)
        rspec = FlowSpec(Action.NAT, MD_REV_FLAGS, 0, vif.vrf, sport, self.host.nh, self.host.index)
        fprep = Prepared(Action.NAT, fwd, self.host, vif.index)
        rprep = Prepared(Action.NAT, rev, vif, self.host.index)
        return self._pair(key, fspec, fprep, rkey, rspec, rprep, (vif,), True, now)

    def service_ips(self, service: LinkLocalService) -> tuple[str, ...]:
        """A service's fabric addresses: as configured, or what its DNS name resolved to."""
        return service.fabric_ips or self.resolved.get(service.fabric_dns_name, ())

    def _fabric_ip(self, service: LinkLocalService) -> str | None:
        ips = self.service_ips(service)
        if not ips:
            return None
        ip = random.choice(ips) if len(ips) > 1 else ips[0]
        # 127.0.0.1 means the compute node itself; a VM's packet cannot be routed to loopback,
        # so it goes to vhost0's address, where a service bound to 0.0.0.0 answers.
        return self.vhost_ip if ip.startswith("127.") else ip

    def _setup_fabric(self, vif: Vif, p: Parsed, key: bytes, now: int, service: LinkLocalService) -> int | Verdict:
        fabric = self._fabric_ip(service)
        if fabric is None or self.port_allocator is None:
            return self._drop_flow(vif, key, DropReason.NO_ROUTE, now)
        try:
            port, handle = self.port_allocator.reserve(p.proto)
        except OSError:
            return self.drop(DropReason.FLOW_UNUSABLE, vif)
        fabric_b = ipaddress.IPv4Address(fabric).packed
        fwd = Rewrite(p.proto, p.src, p.dst, p.sport, p.dport, self.vhost_ip_bytes, fabric_b, port, service.fabric_port)
        rev = fwd.inverse()
        rkey = make_key(self.host.index, rev.src, rev.dst, p.proto, rev.sport, rev.dport)
        dpat = service.fabric_port != p.dport
        fflags = int(Flag.SNAT | Flag.SPAT | Flag.DNAT | Flag.LINK_LOCAL | (Flag.DPAT if dpat else 0))
        rflags = int(Flag.SNAT | Flag.DNAT | Flag.DPAT | Flag.LINK_LOCAL | (Flag.SPAT if dpat else 0))
        fspec = FlowSpec(Action.NAT, fflags, vif.vrf, 0, port, vif.nh, vif.index)
        rspec = FlowSpec(Action.NAT, rflags, 0, vif.vrf, port, self.host.nh, self.host.index)
        fprep = Prepared(Action.NAT, fwd.patch, self.host, vif.index)
        rprep = Prepared(Action.NAT, rev.patch, vif, self.host.index)
        fprep.port = handle
        try:
            return self._pair(key, fspec, fprep, rkey, rspec, rprep, (vif,), True, now)
        except TableFull:
            self.port_allocator.release(handle)
            raise
