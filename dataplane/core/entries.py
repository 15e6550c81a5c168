"""Per-entry bookkeeping shared by the per-packet path, flow set-up and the lifecycle.

The shared-memory table holds what the vRouter's flow entry holds; what the
dataplane needs besides (the prepared NAT patch, the vif a flow leaves by,
the limits it is charged against, the reserved NAT port) is a ``FlowState``
per entry, kept here.  Rules:

* One writer: the dataplane that owns the table writes both the records and
  the states.  ``states[i]`` is set exactly while entry ``i`` is active and
  was set up by this dataplane; ``keep`` and ``delete`` change both together.
* The forward half of a pair carries the pair's bookkeeping (``charge``, the
  vifs whose flow counts include it; ``link_local``; ``port``); the reverse
  half's ``charge`` is empty.  A Drop entry has no reverse and carries its own.
* A pair counts against its vifs' limits from set-up until it is closed (FIN
  both ways, ``closed_at`` set on both halves) or removed, whichever is first;
  a pair restarted by a new SYN counts again.  A Drop entry counts as a pair.
* A trap entry (a packet for the agent's services: DHCP, DNS, ICMP to the
  gateway) has no reverse and counts like a Drop entry.
* Limits: a VM over ``max_vm_flows`` entries gets new flows refused until its
  use falls to 90% of the limit (the vRouter's hysteresis); link-local pairs to
  the fabric (each holds a NAT port bound on the node) are capped per VM and per
  node, metadata pairs not (the vRouter's agent caps only the pairs for which it
  binds a port, ``linklocal_bind_local_port``), and (for node caps of 16 and more) once three
  quarters of the node's cap are used a VM holding a quarter of it gets no more
  (one VM cannot take what the others need: the vRouter's defaults give one VM
  the whole node's cap).
* Rate: with ``vm_setup_rate``, a VM sets up at most that many flows a second
  (a token bucket per VM, a second's worth deep); refusals are counted as
  ``Flow Setup Rate Limit``.
* Several workers: each counts the flows of the entries it owns; with ``shares``
  it publishes its count of each vif (and of the node's link-local pairs, as vif
  0) and checks ``max_vm_flows`` and the node's link-local cap against the sum
  over every worker.  The rate and a VM's link-local cap are its owner's alone
  (its service queue is one worker's).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from dataplane.core.nat import Patch
from dataplane.core.overlay import Encap
from dataplane.core.traps import Trap
from dataplane.core.vif import Vif
from flows.layout import Action, DropReason
from flows.table import FlowTable

FAIR_SHARE_FROM = 16  # node link-local caps this large keep a quarter for the other VMs


@dataclass(frozen=True)
class Limits:
    """Flow limits. ``max_vm_flows``: entries one VM may hold (0: only the table's size)."""

    max_vm_flows: int = 0
    max_vm_linklocal_flows: int = 2048
    max_system_linklocal_flows: int = 2048
    vm_setup_rate: int = 0  # flows one VM may set up a second, with a second's worth of burst (0: no limit)


class PortAllocator(Protocol):
    """Reserves source ports for link-local NAT to the fabric (the agent binds real sockets)."""

    def reserve(self, proto: int, v6: bool = False) -> tuple[int, object]: ...

    def release(self, handle: object) -> None: ...


class FlowShares(Protocol):
    """Every worker's count of a vif's flow entries (vif 0: the node's link-local pairs)."""

    def publish(self, vif: int, count: int) -> None: ...

    def others(self, vif: int) -> int: ...


class FlowState:
    """What the dataplane does with the packets of one entry, prepared at flow set-up."""

    __slots__ = ("action", "patch", "out", "vin", "reason", "charge", "link_local", "capped", "port", "fresh", "closed_at", "trap", "deliver")

    def __init__(self, action: Action, patch: Patch | Encap | None, out: Vif | None, vin: int, reason: DropReason = DropReason.NONE) -> None:
        self.action = action
        self.patch = patch  # the NAT rewrite or the encapsulation of this direction, or None
        self.out = out  # the vif the packets leave by (counted as its TX), None for Drop
        self.vin = vin  # the vif index the packets come in on
        self.reason = reason  # for Drop
        self.charge: tuple[Vif, ...] = ()  # forward half: the vifs whose limits this pair counts against
        self.link_local = False  # forward half: a link-local pair
        # forward half: counted against the link-local caps (max_*_linklocal_flows): a pair to the
        # fabric, whose NAT port is a socket bound on the node; as in the vRouter's agent
        # (linklocal_bind_local_port), a metadata pair (to the local proxy) is not
        self.capped = False
        self.port: object = None  # forward half: the reserved NAT port, released with the pair
        self.fresh = False  # reverse half: no answer seen yet, the pair is still New
        self.closed_at: int | None = None  # both halves: when the second FIN was seen
        self.trap: Trap | None = None  # a trap entry: its packets go to the agent's services
        self.deliver = False  # sent down ``out``'s tap by the engine itself (``PacketPath.inject``), not routed by the kernel


class Entries:
    """The dataplane's state of each live entry, and the limits the entries count against."""

    def __init__(self, table: FlowTable, limits: Limits, ports: PortAllocator | None = None, shares: FlowShares | None = None) -> None:
        self.table = table
        self.limits = limits
        self.ports = ports
        self.shares = shares
        # by entry index: with 400K live flows a dict lookup of an index reads its hash slot, its
        # entry and its key object, each a cache miss; a list item is one read (5 MB of pointers
        # for the default table)
        self.states: list[FlowState | None] = [None] * table.capacity
        self.linklocal_flows = 0  # link-local pairs to the fabric on the node, counted against its cap (not metadata's)
        self.added = 0  # entries set up since start
        self._tokens: dict[int, list[float]] = {}  # vif index -> [flow set-ups left, when last looked (ns)]
        self.removed = 0  # entries removed since start

    def keep(self, index: int, state: FlowState) -> None:
        """Hold the state of a new entry (the benchmarks give generated entries theirs)."""
        self.states[index] = state
        self.added += 1

    def live(self) -> Iterator[tuple[int, FlowState]]:
        """Every live entry this dataplane set up, with its state (a walk of the table's flags)."""
        states = self.states
        for i in self.table.active_indices():
            st = states[i]
            if st is not None:
                yield i, st

    def carrier(self, index: int) -> FlowState | None:
        """The state that carries the bookkeeping of ``index``'s pair: its own or its reverse's."""
        st = self.states[index]
        if st is not None and st.charge:
            return st
        other = self.states[self.table.reverse_of(index)]
        return other if other is not None and other.charge else None

    # -- limits ---------------------------------------------------------------------------------

    def over_limit(self, vif: Vif, link_local: bool) -> DropReason:
        """Why one more flow of ``vif``'s (a pair: two entries) would be refused, or NONE."""
        limit = self.limits.max_vm_flows
        shares = self.shares
        if limit:
            flows = vif.flows if shares is None else vif.flows + shares.others(vif.index)
            if vif.flow_limited and flows <= limit * 9 // 10:
                vif.flow_limited = False
            if vif.flow_limited or flows + 2 > limit:
                vif.flow_limited = True
                return DropReason.FLOW_LIMIT
        if link_local:
            node_cap = self.limits.max_system_linklocal_flows
            used = self.linklocal_flows if shares is None else self.linklocal_flows + shares.others(0)
            if vif.linklocal_flows >= self.limits.max_vm_linklocal_flows or used >= node_cap:
                return DropReason.LINK_LOCAL_LIMIT
            if node_cap >= FAIR_SHARE_FROM and used >= node_cap * 3 // 4 and vif.linklocal_flows >= node_cap // 4:
                return DropReason.LINK_LOCAL_LIMIT  # near the node's cap: no VM takes more than a quarter of it
        return DropReason.NONE

    def over_rate(self, vif: Vif, now: int) -> bool:
        """Whether ``vif`` has used up its flow set-ups for now (and takes one if not)."""
        rate = self.limits.vm_setup_rate
        if not rate:
            return False
        bucket = self._tokens.get(vif.index)
        if bucket is None:
            bucket = self._tokens[vif.index] = [float(rate), float(now)]
        tokens = min(float(rate), bucket[0] + (now - bucket[1]) * rate / 1e9)
        bucket[1] = now
        if tokens < 1:
            bucket[0] = tokens
            return True
        bucket[0] = tokens - 1
        return False

    def forget_rate(self, vif_index: int) -> None:
        """A vif went: its set-up bucket with it."""
        self._tokens.pop(vif_index, None)

    def charge(self, st: FlowState) -> None:
        """Count a pair (or a Drop entry) against its vifs' limits."""
        for v in st.charge:
            v.flows += 2
            if st.capped:
                v.linklocal_flows += 1
        if st.capped:
            self.linklocal_flows += 1
        if self.shares is not None:
            self._publish(st)

    def uncharge(self, st: FlowState) -> None:
        """Stop counting a pair that was counted (not yet closed)."""
        if st.closed_at is not None:
            return  # closed pairs were uncharged when they closed
        for v in st.charge:
            v.flows -= 2
            if st.capped:
                v.linklocal_flows -= 1
        if st.capped:
            self.linklocal_flows -= 1
        if self.shares is not None:
            self._publish(st)

    def _publish(self, st: FlowState) -> None:
        shares = self.shares
        assert shares is not None
        for v in st.charge:
            shares.publish(v.index, v.flows)
        if st.capped:
            shares.publish(0, self.linklocal_flows)

    # -- removal --------------------------------------------------------------------------------

    def delete(self, indices: list[int]) -> int:
        """Remove the entries at ``indices`` with their reverses; return how many entries went."""
        n = 0
        for i in indices:
            removed = self.table.delete(i)
            self._forget(removed)
            n += len(removed)
        self.removed += n
        return n

    def _forget(self, indices: list[int]) -> None:
        states = self.states
        for j in indices:
            st = states[j]
            if st is None:
                continue
            states[j] = None
            if st.charge:
                self.uncharge(st)
                if st.port is not None and self.ports is not None:
                    self.ports.release(st.port)
