"""The forwarding decision for one packet: flow lookup, flow setup on a miss, NAT, counters.

Pure code: ``Dataplane.process`` takes the bytes of an IPv4 packet and the
ifindex it arrived on (0 for packets the compute node itself sends) and
returns a verdict with, for NAT, the rewritten bytes.  The NFQUEUE shell
(``dataplane.nfqueue_shell``) is the only caller that touches the kernel;
unit tests drive this class with byte strings.

On a miss the flow pair comes from, in order: the link-local service table
(metadata services are NATed to the local proxy), then the VM port table
(VM to VM in the same VRF: Forward), else a Drop flow (no route).
"""

from __future__ import annotations

import ipaddress
import time
from collections import Counter
from dataclasses import dataclass

from dataplane.nat import Rewrite
from dataplane.packet import ICMP, TCP, UDP, Malformed, Parsed, parse
from dataplane.vif import HOST_VIF, LinkLocalService, Vif
from flows.layout import Action, DropReason, Flag, make_key
from flows.table import FlowSpec, FlowTable, TableFull

ACCEPT = 1
DROP = 0

MD_FWD_FLAGS = Flag.SNAT | Flag.DNAT | Flag.DPAT | Flag.LINK_LOCAL
MD_REV_FLAGS = Flag.SNAT | Flag.SPAT | Flag.DNAT | Flag.LINK_LOCAL


@dataclass(frozen=True)
class Verdict:
    accept: bool
    payload: bytes | None = None  # rewritten packet, for NAT
    reason: DropReason = DropReason.NONE


_ACCEPT = Verdict(True)


class Dataplane:
    """Flow table plus the tables a flow setup reads (vifs, link-local services)."""

    def __init__(self, table: FlowTable, vhost_ip: str, proxy_port: int = 8097) -> None:
        self.table = table
        self.vhost_ip = vhost_ip
        self.vhost_ip_bytes = ipaddress.IPv4Address(vhost_ip).packed
        self.proxy_port = proxy_port
        self.host = Vif(HOST_VIF, "vhost0", ip=vhost_ip, kind="Host")
        self.vifs: dict[int, Vif] = {HOST_VIF: self.host}  # vif index -> Vif
        self.by_ifindex: dict[int, Vif] = {}
        self.by_ip: dict[tuple[int, bytes], Vif] = {}  # (vrf, ip) -> Vif
        self.services: dict[tuple[bytes, int], LinkLocalService] = {}
        self.drops: Counter[DropReason] = Counter()
        # index -> (action, rewrite or None, out vif or None, in vif index); prepared at setup
        self.prepared: dict[int, tuple[Action, Rewrite | None, Vif | None, int]] = {}

    # -- tables ---------------------------------------------------------------------------------

    def add_vif(self, vif: Vif) -> None:
        self.remove_vif(vif.index)
        self.vifs[vif.index] = vif
        if vif.ifindex:
            self.by_ifindex[vif.ifindex] = vif
        if vif.ip:
            self.by_ip[(vif.vrf, vif.ip_bytes)] = vif

    def remove_vif(self, index: int) -> int:
        """Forget a vif and remove every flow to or from it; return how many entries went."""
        vif = self.vifs.pop(index, None)
        if vif is None:
            return 0
        if self.by_ifindex.get(vif.ifindex) is vif:
            del self.by_ifindex[vif.ifindex]
        if self.by_ip.get((vif.vrf, vif.ip_bytes)) is vif:
            del self.by_ip[(vif.vrf, vif.ip_bytes)]
        doomed = [i for i, (_a, _r, out, vin) in self.prepared.items() if vin == index or out is vif]
        return self._delete_flows(doomed)

    def set_services(self, services: list[LinkLocalService]) -> int:
        """Replace the link-local service table; flows of removed or changed services go."""
        new = {s.key: s for s in services}
        gone = {k for k, s in self.services.items() if new.get(k) != s}
        self.services = new
        if not gone:
            return 0
        doomed = []
        for i in list(self.prepared):
            e = self.table.read(i)
            if e.flags & Flag.LINK_LOCAL and not e.flags & Flag.REVERSE and (e.dst, e.dport) in gone:
                doomed.append(i)
        return self._delete_flows(doomed)

    def _delete_flows(self, indices: list[int]) -> int:
        n = 0
        for i in indices:
            for j in self.table.delete(i):
                self.prepared.pop(j, None)
                n += 1
        return n

    def flush(self) -> int:
        return self._delete_flows(list(self.prepared))

    def age(self, idle_s: float, now: int | None = None) -> int:
        """Remove flows idle for longer than ``idle_s``; return the number of entries removed."""
        removed = self.table.age(now if now is not None else time.time_ns(), int(idle_s * 1e9))
        for j in removed:
            self.prepared.pop(j, None)
        return len(removed)

    # -- the per-packet path --------------------------------------------------------------------

    def drop(self, reason: DropReason, vif: Vif | None = None) -> Verdict:
        self.drops[reason] += 1
        if vif is not None:
            vif.drops += 1
        return Verdict(False, None, reason)

    def process(self, pkt: bytes, indev: int, now: int | None = None) -> Verdict:
        if now is None:
            now = time.time_ns()
        if indev:
            vif = self.by_ifindex.get(indev)
            if vif is None:
                return self.drop(DropReason.UNKNOWN_INTERFACE)
        else:
            vif = self.host
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
        action, rewrite, out, _vin = self.prepared[index]
        self.table.hit(index, len(pkt), now, p.tcp_flags)
        if action == Action.DROP:
            return self.drop(DropReason(self.table.read(index).drop_reason), vif)
        if out is not None:
            out.tx_packets += 1
            out.tx_bytes += len(pkt)
        if rewrite is None:
            return _ACCEPT
        buf = bytearray(pkt)
        rewrite.apply(buf, p.ihl)
        return Verdict(True, bytes(buf))

    def _setup(self, vif: Vif, p: Parsed, key: bytes, now: int) -> int | Verdict:
        if vif is self.host:
            # The compute node's own packets reach the queue only towards metadata IPs, and only
            # the reverse half of a metadata flow may carry them.
            return self.drop(DropReason.FLOW_NAT_NO_RFLOW)
        if p.src != vif.ip_bytes:
            return self.drop(DropReason.INVALID_SOURCE, vif)
        service = self.services.get((p.dst, p.dport)) if p.proto in (TCP, UDP) else None
        try:
            if service is not None:
                if service.is_metadata and p.proto == TCP:
                    return self._setup_metadata(vif, p, key, now)
                # Other link-local services (NAT to the fabric) and UDP to a metadata service.
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
        self.prepared[index] = (Action.DROP, None, None, vif.index)
        return index

    def _clear(self, rkey: bytes) -> None:
        stale = self.table.lookup(rkey)
        if stale >= 0:
            self._delete_flows([stale])

    def _setup_forward(self, vif: Vif, dst: Vif, p: Parsed, key: bytes, now: int) -> int:
        rports = (p.sport, p.dport) if p.proto == ICMP else (p.dport, p.sport)
        rkey = make_key(dst.index, p.dst, p.src, p.proto, *rports)
        self._clear(rkey)
        fspec = FlowSpec(Action.FORWARD, vrf=vif.vrf, dvrf=dst.vrf, src_nh=vif.nh, vif=vif.index)
        rspec = FlowSpec(Action.FORWARD, vrf=dst.vrf, dvrf=vif.vrf, src_nh=dst.nh, vif=dst.index)
        fi, ri = self.table.add_pair(key, fspec, rkey, rspec, now)
        self.prepared[fi] = (Action.FORWARD, None, dst, vif.index)
        self.prepared[ri] = (Action.FORWARD, None, vif, dst.index)
        return fi

    def _setup_metadata(self, vif: Vif, p: Parsed, key: bytes, now: int) -> int:
        md = ipaddress.IPv4Address(vif.metadata_ip).packed
        fwd = Rewrite(TCP, p.src, p.dst, p.sport, p.dport, md, self.vhost_ip_bytes, p.sport, self.proxy_port)
        rev = fwd.inverse()
        rkey = make_key(self.host.index, rev.src, rev.dst, TCP, rev.sport, rev.dport)
        self._clear(rkey)
        fspec = FlowSpec(Action.NAT, MD_FWD_FLAGS, vif.vrf, 0, p.sport, vif.nh, vif.index)
        rspec = FlowSpec(Action.NAT, MD_REV_FLAGS, 0, vif.vrf, p.sport, self.host.nh, self.host.index)
        fi, ri = self.table.add_pair(key, fspec, rkey, rspec, now)
        self.prepared[fi] = (Action.NAT, fwd, self.host, vif.index)
        self.prepared[ri] = (Action.NAT, rev, vif, self.host.index)
        return fi
