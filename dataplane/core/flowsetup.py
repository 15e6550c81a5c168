"""Flow set-up on a miss: what the vRouter's agent decides for a new flow, here in the dataplane.

The per-packet path hands on a packet whose key is not in the table, with the
key it has already made.  Rules kept here:

* The compute node's own packets (and the fabric's, on vhost0) reach the queue
  only as the reverse half of a NAT flow: a miss from there is dropped (Flow
  NAT no rflow), never set up.
* A VM's packet whose source is not its port's address (or, for IPv6, its
  port's IPv6 address, or a link-local fe80::/64 one to a link-local or
  multicast destination) is dropped before any flow is made (Invalid Source);
  only DHCP may come from 0.0.0.0.
* The VM's limits are checked before anything is written; a refused flow makes
  no entry (a flood would otherwise fill the table it is being kept out of).
* The pair comes from, in order: the agent's services for guests (DHCP, DNS and
  ICMP echo at the network's addresses: a trap entry, ``traps``); the link-local services (metadata: NAT to the
  local proxy from the port's metadata IP; others: NAT straight to the fabric
  from vhost0 with a port reserved by a real socket, over IPv6 from vhost0's
  IPv6 address to an IPv6 fabric address, the pair the engine's alone in the
  ebpf datapath: its replies go to the VM's link-local address, which only the
  engine can send to the right tap); the VM ports of the same
  VRF (Forward); a VM of the same VRF on another node (Forward through its
  node's tunnel: the forward half encapsulates, ``overlay``); else a Drop
  entry (No L3 Route).  TCP and UDP only to
  link-local addresses; other protocols there get a Drop entry (Invalid
  Protocol).
* A packet from a tunnel (``from_tunnel``) sets up a pair only for the local
  VM its label names, addressed to that VM, from a route of the VM's VRF
  through the tunnel it came by; otherwise nothing is set up (No L3 Route,
  Invalid Source).
* Forward and reverse entries are written together (``FlowTable.add_pair``);
  a stale entry with the new reverse key (left by an earlier flow) is removed
  first.
* Each new flow takes up to two closed pairs whose grace is over out of the
  table, so that eviction keeps pace with set-up spread over the packets.
* Every set-up and every refusal goes on ``trace``, a ring of the last
  ``FLOW_TRACE`` (the vRouter agent's ``Flow`` trace buffer, read by the
  introspect's ``Snh_SandeshTraceRequest?x=Flow``): a tuple, made into text only
  when someone reads it.
"""

from __future__ import annotations

import ipaddress
import logging
import struct
import time
from collections import deque

from dataplane.core.entries import Entries, FlowState, PortAllocator
from dataplane.core.lifecycle import Lifecycle
from dataplane.core.nat import Patch, Rewrite
from dataplane.core.overlay import Decapped, Overlay, Route, Tunnel
from dataplane.core.packet import ICMP, ICMPV6, TCP, UDP, Parsed
from dataplane.core.services import LinkLocalService, LinkLocalTable
from dataplane.core.traps import ANY_SOURCE, Trap, TrapTable
from dataplane.core.vif import LINK_LOCAL6, PROXY_IP6, Vif, VifTable
from flows.layout import HEADER_SIZE, OFF_ACTION, RECORD_SIZE, Action, DropReason, Flag, make_key
from flows.table import FlowSpec, FlowTable, TableFull

log = logging.getLogger("vrouter.dataplane")

MD_FWD_FLAGS = int(Flag.SNAT | Flag.DNAT | Flag.DPAT | Flag.LINK_LOCAL)
MD_REV_FLAGS = int(Flag.SNAT | Flag.SPAT | Flag.DNAT | Flag.LINK_LOCAL)
_NONE = DropReason.NONE
_PORTS = struct.Struct("!HH")

Outcome = tuple[int, DropReason]  # (index of the new entry, NONE) or (-1, why nothing was set up)
_REFUSED: dict[DropReason, Outcome] = {r: (-1, r) for r in DropReason}

FLOW_TRACE = 5000  # set-ups the trace keeps, as the vRouter agent's Flow trace buffer
# (µs since the epoch, vif (0: a tunnel's), flow key, the new entry's index or -1, its action or -1, the refusal's reason)
TraceEntry = tuple[int, int, bytes, int, int, int]


def _link_scope(dst: bytes) -> bool:
    """An IPv6 destination of link scope: fe80::/10 or multicast."""
    return dst[0] == 0xFF or (dst[0] == 0xFE and dst[1] & 0xC0 == 0x80)


class _NoPort(Exception):
    """No NAT source port could be reserved for a fabric flow."""


class FlowSetup:
    """Sets up the flow of a packet that missed: a pair, a Drop entry, or nothing."""

    def __init__(
        self,
        table: FlowTable,
        entries: Entries,
        lifecycle: Lifecycle,
        vifs: VifTable,
        services: LinkLocalTable,
        traps: TrapTable,
        vhost_ip: str,
        proxy_port: int,
        ports: PortAllocator | None,
        overlay: Overlay,
    ) -> None:
        self.table = table
        self.entries = entries
        self.lifecycle = lifecycle
        self.vifs = vifs
        self.services = services
        self.traps = traps
        self.vhost_ip = vhost_ip
        self.vhost_ip_bytes = ipaddress.IPv4Address(vhost_ip).packed
        self.vhost_ip6 = ""  # vhost0's IPv6 address, for link-local services over IPv6 ("": none)
        self.proxy_ip6_bytes = ipaddress.IPv6Address(PROXY_IP6).packed
        self.proxy_port = proxy_port
        self.ports = ports
        self.overlay = overlay
        self.setups = 0  # pairs set up since start
        # ebpf datapath: a new pair's forward entry is Held (the kernel's program hands its packets
        # up, so that none overtakes those this engine still holds); its (index, generation) go on
        # ``held`` (the queue being drained), and the queue releases them once it is empty.
        self.hold = False
        self.held: list[tuple[int, int]] = []
        self._md_deltas: dict[tuple[bytes, bytes, int, bytes, bytes], tuple[int, int, bytes, int, int, bytes]] = {}
        self.trace: deque[TraceEntry] = deque(maxlen=FLOW_TRACE)

    def _traced(self, vif: int, key: bytes, out: Outcome) -> Outcome:
        index = out[0]
        action = self.table.buf[HEADER_SIZE + index * RECORD_SIZE + OFF_ACTION] if index >= 0 else -1
        self.trace.append((time.time_ns() // 1000, vif, key, index, action, int(out[1])))
        return out

    def setup(self, vif: Vif, p: Parsed, key: bytes, now: int, pkt: bytes) -> Outcome:
        """Set up the flow of ``p`` (``key`` is its flow key, ``pkt`` its bytes), which arrived on ``vif``."""
        return self._traced(vif.index, key, self._setup(vif, p, key, now, pkt))

    def _setup(self, vif: Vif, p: Parsed, key: bytes, now: int, pkt: bytes) -> Outcome:
        if self.lifecycle.evict_due(now):
            self.lifecycle.evict_closed(now, 2)
        if vif is self.vifs.host:
            if log.isEnabledFor(logging.DEBUG):
                log.debug("no reverse flow for %s:%d -> %s:%d proto %d flags 0x%02x", ipaddress.ip_address(p.src), p.sport,
                          ipaddress.ip_address(p.dst), p.dport, p.proto, p.tcp_flags)  # fmt: skip
            return _REFUSED[DropReason.FLOW_NAT_NO_RFLOW]
        v6 = len(p.src) == 16
        trap = self.traps.classify(vif, p, pkt)
        # IPv6: the port's address, or a link-local one to a link-local or multicast destination
        # (the metadata and link-local services, the router, DHCPv6): never to another VM or beyond
        if p.src != vif.ip_bytes and not (v6 and (p.src == vif.ip6_bytes or (p.src[:8] == LINK_LOCAL6 and _link_scope(p.dst)))):
            if not (trap is Trap.DHCP and p.src == ANY_SOURCE):
                return _REFUSED[DropReason.INVALID_SOURCE]
        refused = self.entries.over_limit(vif, False)
        if refused:
            return _REFUSED[refused]
        if self.entries.over_rate(vif, now):
            return _REFUSED[DropReason.FLOW_SETUP_RATE]
        if trap is not None:
            try:
                return self._trap_entry(vif, key, trap, now), _NONE
            except TableFull:
                return _REFUSED[DropReason.FLOW_TABLE_FULL]
        service = self.services.find(p.dst, p.proto, p.dport)
        try:
            if service is not None:
                refused = self.entries.over_limit(vif, not service.is_metadata)
                if refused:
                    return _REFUSED[refused]
                if service.is_metadata:
                    return self._metadata(vif, p, key, now), _NONE
                return self._fabric(vif, p, key, now, service), _NONE
            if not v6 and p.dst[0] == 169 and p.dst[1] == 254 and p.proto not in (TCP, UDP):
                return self._drop_entry(vif, key, DropReason.INVALID_PROTOCOL, now), _NONE
            dst = self.vifs.by_ip.get((vif.vrf, p.dst))
            if dst is None:
                remote = self.overlay.route(vif.vrf, p.dst)
                if remote is not None:
                    return self._to_tunnel(vif, *remote, p, key, now), _NONE
            if dst is None or dst is vif:
                return self._drop_entry(vif, key, DropReason.NO_ROUTE, now), _NONE
            return self._forward(vif, dst, p, key, now), _NONE
        except TableFull:
            return _REFUSED[DropReason.FLOW_TABLE_FULL]
        except _NoPort:
            return _REFUSED[DropReason.FLOW_UNUSABLE]

    # -- kinds of flow --------------------------------------------------------------------------

    def _drop_entry(self, vif: Vif, key: bytes, reason: DropReason, now: int) -> int:
        spec = FlowSpec(Action.DROP, vrf=vif.vrf, dvrf=vif.vrf, src_nh=vif.nh, vif=vif.index, drop_reason=reason)
        index = self.table.add_single(key, spec, now)
        st = FlowState(Action.DROP, None, None, vif.index, reason)
        st.charge = (vif,)
        self.entries.charge(st)  # a Drop entry costs one entry; counted as a pair, released as a pair
        self.entries.keep(index, st)
        return index

    def _trap_entry(self, vif: Vif, key: bytes, trap: Trap, now: int) -> int:
        spec = FlowSpec(Action.FORWARD, vrf=vif.vrf, dvrf=0, src_nh=vif.nh, vif=vif.index)
        index = self.table.add_single(key, spec, now)
        st = FlowState(Action.FORWARD, None, None, vif.index)
        st.trap = trap
        st.charge = (vif,)
        self.entries.charge(st)  # like a Drop entry: one entry, counted as a pair
        self.entries.keep(index, st)
        return index

    def _pair(self, key: bytes, fspec: FlowSpec, fst: FlowState, rkey: bytes, rspec: FlowSpec, rst: FlowState,
              charge: tuple[Vif, ...], link_local: bool, now: int, slow: bool = False, capped: bool | None = None) -> int:  # fmt: skip
        stale = self.table.lookup(rkey)
        if stale >= 0:
            self.entries.delete([stale])
        fi, ri = self.table.add_pair(key, fspec, rkey, rspec, now, self.hold, slow)
        if self.hold:
            self.held.append((fi, self.table.generation(fi)))
        rst.fresh = True
        fst.charge = charge
        fst.link_local = link_local
        fst.capped = link_local if capped is None else capped
        self.entries.charge(fst)
        self.entries.keep(fi, fst)
        self.entries.keep(ri, rst)
        self.setups += 1
        return fi

    def _forward(self, vif: Vif, dst: Vif, p: Parsed, key: bytes, now: int) -> int:
        rports = (p.sport, p.dport) if p.proto in (ICMP, ICMPV6) else (p.dport, p.sport)
        rkey = make_key(dst.index, p.dst, p.src, p.proto, *rports)
        fspec = FlowSpec(Action.FORWARD, vrf=vif.vrf, dvrf=dst.vrf, src_nh=vif.nh, vif=vif.index)
        rspec = FlowSpec(Action.FORWARD, vrf=dst.vrf, dvrf=vif.vrf, src_nh=dst.nh, vif=dst.index)
        fst = FlowState(Action.FORWARD, None, dst, vif.index)
        rst = FlowState(Action.FORWARD, None, vif, dst.index)
        return self._pair(key, fspec, fst, rkey, rspec, rst, (vif, dst), False, now)

    def _to_tunnel(self, vif: Vif, route: Route, tunnel: Tunnel, p: Parsed, key: bytes, now: int) -> int:
        rports = (p.sport, p.dport) if p.proto in (ICMP, ICMPV6) else (p.dport, p.sport)
        rkey = make_key(tunnel.nh, p.dst, p.src, p.proto, *rports)
        fspec = FlowSpec(Action.FORWARD, vrf=vif.vrf, dvrf=vif.vrf, src_nh=vif.nh, vif=vif.index)
        rspec = FlowSpec(Action.FORWARD, vrf=vif.vrf, dvrf=vif.vrf, src_nh=tunnel.nh, vif=0)
        fst = FlowState(Action.FORWARD, self.overlay.encap_to(route, tunnel, key), tunnel.vif, vif.index)
        rst = FlowState(Action.FORWARD, None, vif, tunnel.nh)
        return self._pair(key, fspec, fst, rkey, rspec, rst, (vif,), False, now)

    def from_tunnel(self, d: Decapped, p: Parsed, key: bytes, now: int) -> Outcome:
        """Set up the flow of a packet that came by a tunnel (``key``: of its inner packet, keyed
        by the tunnel's next hop) for the local vif its label names."""
        return self._traced(d.vif.index, key, self._from_tunnel(d, p, key, now))

    def _from_tunnel(self, d: Decapped, p: Parsed, key: bytes, now: int) -> Outcome:
        vif, tunnel = d.vif, d.tunnel
        if self.lifecycle.evict_due(now):
            self.lifecycle.evict_closed(now, 2)
        if p.dst != vif.ip_bytes and (not vif.ip6 or p.dst != vif.ip6_bytes):
            return _REFUSED[DropReason.NO_ROUTE]
        remote = self.overlay.route(vif.vrf, p.src)
        if remote is None or remote[1] is not tunnel:
            return _REFUSED[DropReason.INVALID_SOURCE]
        refused = self.entries.over_limit(vif, False)
        if refused:
            return _REFUSED[refused]
        if self.entries.over_rate(vif, now):  # flows set up towards the VM count as its own
            return _REFUSED[DropReason.FLOW_SETUP_RATE]
        route = remote[0]
        rports = (p.sport, p.dport) if p.proto in (ICMP, ICMPV6) else (p.dport, p.sport)
        rkey = make_key(vif.index, p.dst, p.src, p.proto, *rports)
        fspec = FlowSpec(Action.FORWARD, vrf=vif.vrf, dvrf=vif.vrf, src_nh=tunnel.nh, vif=0)
        rspec = FlowSpec(Action.FORWARD, vrf=vif.vrf, dvrf=vif.vrf, src_nh=vif.nh, vif=vif.index)
        fst = FlowState(Action.FORWARD, None, vif, tunnel.nh)
        rst = FlowState(Action.FORWARD, self.overlay.encap_to(route, tunnel, rkey), tunnel.vif, vif.index)
        try:
            return self._pair(key, fspec, fst, rkey, rspec, rst, (vif,), False, now), _NONE
        except TableFull:
            return _REFUSED[DropReason.FLOW_TABLE_FULL]

    def metadata_deltas(self, src: bytes, dst: bytes, dport: int, md: bytes, proxy: bytes) -> tuple[int, int, bytes, int, int, bytes]:
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

    def _metadata(self, vif: Vif, p: Parsed, key: bytes, now: int) -> int:
        if p.proto != TCP:
            return self._drop_entry(vif, key, DropReason.INVALID_PROTOCOL, now)
        if len(p.src) == 16:
            md, proxy = vif.metadata_ip6_bytes, self.proxy_ip6_bytes
        else:
            md, proxy = vif.metadata_ip_bytes, self.vhost_ip_bytes
        sport, pport = p.sport, self.proxy_port
        fip, fl4, faddrs, rip, rl4, raddrs = self.metadata_deltas(p.src, p.dst, p.dport, md, proxy)
        # the VM's (src, dst, sport, dport) becomes (md, proxy, sport, proxy port), and back
        fwd = Patch(TCP, fip, fl4, faddrs, _PORTS.pack(sport, pport))
        rev = Patch(TCP, rip, rl4, raddrs, _PORTS.pack(p.dport, sport))
        host = self.vifs.host
        rkey = make_key(host.index, proxy, md, TCP, pport, sport)
        fspec = FlowSpec(Action.NAT, MD_FWD_FLAGS, vif.vrf, 0, sport, vif.nh, vif.index)
        rspec = FlowSpec(Action.NAT, MD_REV_FLAGS, 0, vif.vrf, sport, host.nh, host.index)
        fst = FlowState(Action.NAT, fwd, host, vif.index)
        rst = FlowState(Action.NAT, rev, vif, host.index)
        return self._pair(key, fspec, fst, rkey, rspec, rst, (vif,), True, now, capped=False)

    def _fabric(self, vif: Vif, p: Parsed, key: bytes, now: int, service: LinkLocalService) -> int:
        v6 = len(p.src) == 16
        fabric = self.services.pick_fabric_ip(service, v6, self.vhost_ip6)
        if fabric is None or self.ports is None or (v6 and not self.vhost_ip6):
            return self._drop_entry(vif, key, DropReason.NO_ROUTE, now)
        try:
            port, handle = self.ports.reserve(p.proto, True) if v6 else self.ports.reserve(p.proto)
        except OSError:
            raise _NoPort() from None
        vhost = ipaddress.IPv6Address(self.vhost_ip6).packed if v6 else self.vhost_ip_bytes
        fwd = Rewrite(p.proto, p.src, p.dst, p.sport, p.dport, vhost, ipaddress.ip_address(fabric).packed, port, service.fabric_port)
        rev = fwd.inverse()
        host = self.vifs.host
        rkey = make_key(host.index, rev.src, rev.dst, p.proto, rev.sport, rev.dport)
        dpat = service.fabric_port != p.dport
        fflags = int(Flag.SNAT | Flag.SPAT | Flag.DNAT | Flag.LINK_LOCAL | (Flag.DPAT if dpat else 0))
        rflags = int(Flag.SNAT | Flag.DNAT | Flag.DPAT | Flag.LINK_LOCAL | (Flag.SPAT if dpat else 0))
        fspec = FlowSpec(Action.NAT, fflags, vif.vrf, 0, port, vif.nh, vif.index)
        rspec = FlowSpec(Action.NAT, rflags, 0, vif.vrf, port, host.nh, host.index)
        fst = FlowState(Action.NAT, fwd.patch, host, vif.index)
        rst = FlowState(Action.NAT, rev.patch, vif, host.index)
        rst.deliver = v6  # the fabric's reply to the VM's (link-local) address: the kernel would route it back out of vhost0
        fst.port = handle
        try:
            return self._pair(key, fspec, fst, rkey, rspec, rst, (vif,), True, now, slow=v6)
        except TableFull:
            self.ports.release(handle)
            raise
