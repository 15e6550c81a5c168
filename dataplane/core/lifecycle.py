"""The life of flows after set-up: TCP close, eviction of closed pairs, aging of idle ones.

Rules kept here:

* TCP: an RST removes its pair at once (after the RST itself passes).  A FIN
  each way closes the pair: it is marked evict-candidate, stops counting
  against the VM's limits at once (as the vRouter's evicted flows do), and
  leaves the table ``CLOSE_GRACE_NS`` later, so that the last ACKs, which may
  cross, still pass.  A SYN on a closed pair (the VM reused its port at once)
  starts it afresh, if the VM's limits allow another flow.
* Closed pairs leave oldest first, in bounded steps, so that no step stalls the
  packets behind it.
* Aging: a pair (or a Drop entry) idle on both halves for longer than the aging
  timeout goes.  The walk looks at the table a slice at a time, never more than
  a given number of flows (and of slots) a step, and starts a new pass at most
  once a second: with N flows each is looked at every N/(flows per second) s.
"""

from __future__ import annotations

import time
from collections import deque

from dataplane.core.entries import Entries, FlowState
from dataplane.core.packet import TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN
from flows.layout import F_EVICT_CANDIDATE, F_RFLOW_VALID, DropReason
from flows.table import FlowTable

AGE_CYCLE_NS = 1_000_000_000  # aging looks at each live flow at most once in this time
CLOSE_GRACE_NS = 1_000_000_000  # both FINs seen: the pair goes this long after (the last ACKs pass)
WALK_SLICE = 65_536  # slots whose flags one look of the aging walk copies at once


class Lifecycle:
    """TCP state of live pairs, the queue of closed pairs, and the aging walk."""

    def __init__(self, table: FlowTable, entries: Entries) -> None:
        self.table = table
        self.entries = entries
        # closed pairs in the order they closed: (forward index, its state, when).  An item whose
        # state is no longer at its index, or whose pair closed again since, is stale and skipped.
        self._closed: deque[tuple[int, FlowState, int]] = deque()
        self._cursor = table.capacity  # the aging walk's next slot; capacity: the pass is over
        self._pass_began = -AGE_CYCLE_NS

    # -- TCP ------------------------------------------------------------------------------------

    def tcp(self, index: int, st: FlowState, tcp_flags: int, now: int) -> DropReason:
        """A FIN, an RST, or a SYN on a closed pair, on the entry at ``index`` (state ``st``), which
        has been counted; NONE, or why the packet must be dropped (a refused restart)."""
        if tcp_flags & TCP_RST:
            self.entries.delete([index])
            return DropReason.NONE
        table, states = self.table, self.entries.states
        other = table.reverse_of(index)
        if st.closed_at is not None:
            if tcp_flags & TCP_SYN and not tcp_flags & TCP_ACK:
                return self._restart(index, other, tcp_flags)
            return DropReason.NONE
        if tcp_flags & TCP_FIN and table.flags(index) & F_RFLOW_VALID and table.tcp_flags(other) & TCP_FIN:
            table.update_pair_flags(index, set_bits=F_EVICT_CANDIDATE)
            carrier = self.entries.carrier(index)
            if carrier is not None:
                self.entries.uncharge(carrier)
            for i in (index, other):
                s = states[i]
                if s is not None:
                    s.closed_at = now
            fwd = index if st.charge else other
            fst = states[fwd]
            if fst is not None:
                self._closed.append((fwd, fst, now))
        return DropReason.NONE

    def fin_seen(self, index: int, gen: int, now: int) -> None:
        """The kernel's program forwarded a FIN on the entry at ``index`` (generation ``gen``), the
        pair's second (both FINs are in the entries' TCP flags already): the pair closes as if
        this engine had seen the FIN.  An entry removed or reused since is left alone."""
        st = self.entries.states[index]
        if st is not None and self.table.generation(index) == gen and self.table.flags(index) & 1:
            self.tcp(index, st, TCP_FIN, now)

    def _restart(self, index: int, other: int, tcp_flags: int) -> DropReason:
        carrier = self.entries.carrier(index)
        if carrier is not None:
            refused = self.entries.over_limit(carrier.charge[0], carrier.capped)
            if refused:
                return refused
        states, table = self.entries.states, self.table
        for i in (index, other):
            s = states[i]
            if s is not None:
                s.closed_at = None
            table.set_flags(i, table.flags(i) & ~F_EVICT_CANDIDATE)
            table.set_tcp_flags(i, tcp_flags if i == index else 0)
        if carrier is not None:
            self.entries.charge(carrier)
        return DropReason.NONE

    def closing(self) -> dict[int, int]:
        """Both entries of every closed pair still in the table, with when it closed."""
        out = {}
        states = self.entries.states
        for i, st, since in self._closed:
            if states[i] is st and st.closed_at == since:
                out[i] = since
                out[self.table.reverse_of(i)] = since
        return out

    # -- eviction of closed pairs ---------------------------------------------------------------

    def evict_due(self, now: int) -> bool:
        """Whether the oldest closed pair's grace is over (flow set-up then evicts a few)."""
        closed = self._closed
        return bool(closed) and now - closed[0][2] > CLOSE_GRACE_NS

    def evict_closed(self, now: int | None = None, limit: int = 0) -> int:
        """Remove closed pairs whose grace is over, oldest first, at most ``limit`` pairs (0: all);
        return the number of entries removed.  The queue is in closing order, so this looks at
        no pair whose grace is not over."""
        now = now if now is not None else time.time_ns()
        n = pairs = 0
        closed, states = self._closed, self.entries.states
        while closed:
            i, st, since = closed[0]
            if states[i] is not st or st.closed_at != since:
                closed.popleft()  # restarted or removed since
                continue
            if now - since <= CLOSE_GRACE_NS:
                break
            closed.popleft()
            n += self.entries.delete([i])
            pairs += 1
            if pairs == limit:
                break
        return n

    # -- aging ----------------------------------------------------------------------------------

    def age_step(self, idle_s: float, budget: int, now: int | None = None, evict_limit: int = 0, slots: int = 0) -> int:
        """Look at no more than ``budget`` live flows (and, if ``slots``, no more than that many
        table slots) for idleness, taking up where the last step left off, and remove the idle
        ones; also remove closed pairs whose grace is over (at most ``evict_limit`` pairs, 0:
        all).  The agent calls it many times a second with a share of its budget each time."""
        now = now if now is not None else time.time_ns()
        table, states = self.table, self.entries.states
        capacity = table.capacity
        if self._cursor >= capacity and now - self._pass_began >= AGE_CYCLE_NS:
            self._cursor = 0  # a new pass, at most once a second: sooner would find nothing
            self._pass_began = now
        idle_ns = int(idle_s * 1e9)
        doomed = []
        looked = 0
        cursor = self._cursor
        stop = min(capacity, cursor + slots) if slots else capacity
        while cursor < stop and looked < budget:
            end = min(cursor + WALK_SLICE, stop)
            for i in table.active_between(cursor, end):
                st = states[i]
                if st is None or not st.charge:
                    continue  # not ours, or a reverse half (the forward half carries the pair)
                looked += 1
                if now - table.pair_last_used(i) > idle_ns:
                    doomed.append(i)
                if looked == budget:
                    end = i + 1
                    break
            cursor = end
        self._cursor = cursor
        return self.entries.delete(doomed) + self.evict_closed(now, evict_limit)

    def age(self, idle_s: float, now: int | None = None) -> int:
        """Remove every idle flow and every closed pair whose grace is over, in one go (tests and
        tools; the agent ages in steps)."""
        now = now if now is not None else time.time_ns()
        self._cursor, self._pass_began = 0, now
        return self.age_step(idle_s, self.table.capacity, now)
