"""The proxy's request journal: what each instance asked for and what it got.

Every request the proxy handles leaves one entry: when, from which vif,
instance and VM address, the method and path, the status, the bytes each way,
Nova's latency (to its answer's head) and the whole request's, and why the
proxy answered itself when it did (rate limit, fault, timeout, bad request,
...).  Bounded: a ring per instance (``[METADATA] metadata_journal_size``
entries; a full ring drops its oldest), so that a chatty VM cannot push the
others' entries out; and on the node (``metadata_journal_node_size``, an
entry being about 450 bytes): when the rings together would hold more, every
ring is cut to an equal share of it (at least ``MIN_PER_RING``), so that a
thousand instances do not hold 500 entries each.  Entries are numbered in the order they were made, so a
reader follows the journal by asking for what came after the last it saw.

The counters by instance and status, the responses per vif and the latency
histograms (Nova's, and the whole request's) are tallied from the same
entries (``Tally``), for ``vrouter status`` and the Prometheus metrics.

Rules: recording a request costs one tuple and two appends (its ring, and the
entries not yet tallied); nothing is decoded or formatted until asked, and the
tally is brought up to date when it is read, or every ``TALLY_EVERY`` entries,
with C loops over the batch (``map``, ``Counter``) rather than Python code per
request.  That keeps the journal's cost to a few per cent of a keep-alive
request's.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import time
from collections import Counter, deque
from collections.abc import Iterator
from itertools import repeat
from operator import itemgetter
from typing import NamedTuple

from vrouter.messages.proxy import Histogram, JournalEntry

UNKNOWN = ""  # the ring of requests whose source is no instance
TALLY_EVERY = 1024  # entries between two tallies, when nobody reads them sooner
MIN_PER_RING = 16  # what an instance keeps however many there are


class Entry(NamedTuple):
    seq: int
    time: float  # seconds since the epoch, when the request began
    vif: int
    instance: str
    vm_ip: str
    method: str
    path: str
    status: int  # 0: no answer (the connection was cut or dropped)
    bytes_in: int
    bytes_out: int
    nova_ms: float  # -1: Nova was not asked
    total_ms: float
    reason: str  # why the proxy answered itself, or ""
    fault: int  # the fault rule that changed the answer, or 0

    def message(self) -> JournalEntry:
        return JournalEntry(*self)


# What a ring holds: a plain tuple, made at the end of every request, turned into an Entry only
# when read: (seq, began [monotonic s], vif, instance, vm ip, method [bytes], target [bytes],
# status, bytes in, bytes out, Nova's seconds [-1: not asked], total seconds, reason, fault id)
Raw = tuple[int, float, int, str, str, bytes, bytes, int, int, int, float, float, str, int]


def _entry(raw: Raw, wall_offset: float) -> Entry:
    seq, began, vif, instance, vm_ip, method, target, status, bytes_in, bytes_out, nova_s, total_s, reason, fault = raw
    return Entry(seq, began + wall_offset, vif, instance, vm_ip, method.decode("latin-1"), target.decode("latin-1"), status, bytes_in,
                 bytes_out, nova_s * 1000 if nova_s >= 0 else -1.0, total_s * 1000, reason, fault)  # fmt: skip


class Journal:
    def __init__(self, size: int = 500, node_size: int = 50_000) -> None:
        self.size = size  # entries kept per instance; 0: no journal
        self.node_size = node_size  # entries kept in all (but MIN_PER_RING an instance at least)
        self.per_ring = size  # what a ring keeps now: less once there are many
        self.count = 0  # entries in the rings
        self.rings: dict[str, deque[Raw]] = {}
        self.last = 0  # the last entry's number
        self.dropped = 0  # entries pushed out of full rings
        self.pending: list[Raw] = []  # entries not yet tallied
        self.tally = Tally()

    def add(self, began: float, vif: int, instance: str, vm_ip: str, method: bytes, target: bytes, status: int, bytes_in: int,
            bytes_out: int, nova_s: float, total_s: float, reason: str = "", fault: int = 0) -> None:  # fmt: skip
        """One request done with; ``began`` is time.monotonic() when it began."""
        self.last = seq = self.last + 1
        raw = (seq, began, vif, instance, vm_ip, method, target, status, bytes_in, bytes_out, nova_s, total_s, reason, fault)
        pending = self.pending
        pending.append(raw)
        if len(pending) >= TALLY_EVERY:
            self.bring_up_to_date()
        if not self.size:
            return
        ring = self.rings.get(instance)
        if ring is None:
            ring = self.rings[instance] = deque()
        elif len(ring) >= self.per_ring:
            ring.popleft()
            self.dropped += 1
            self.count -= 1
        ring.append(raw)
        self.count += 1
        if self.count > self.node_size and self.count > MIN_PER_RING * len(self.rings):
            self._share()  # (not again while every ring is at its floor: that would cost each request)

    def mark(self, when: float, vif: int, instance: str, what: str, note: str) -> None:
        """An event of the instance's life between its requests (method LAB, path /WHAT, status 0,
        ``note`` as the reason); not a request, so not tallied."""
        self.last = seq = self.last + 1
        if not self.size:
            return
        ring = self.rings.setdefault(instance, deque())
        if len(ring) >= self.per_ring:
            ring.popleft()
            self.dropped += 1
            self.count -= 1
        ring.append((seq, when, vif, instance, "", b"LAB", b"/" + what.encode(), 0, 0, 0, -1.0, 0.0, note, 0))
        self.count += 1

    def _share(self) -> None:
        """More entries than the node keeps: every ring to an equal share (once per new instance
        at most: until then each ring keeps to its share as it goes)."""
        self.per_ring = max(MIN_PER_RING, min(self.size, self.node_size // len(self.rings)))
        for ring in self.rings.values():
            while len(ring) > self.per_ring:
                ring.popleft()
                self.dropped += 1
                self.count -= 1

    def bring_up_to_date(self) -> Tally:
        """The tally, with every entry made so far."""
        pending, self.pending = self.pending, []
        if pending:
            self.tally.add(pending)
        return self.tally

    def query(self, since: int = 0, instance: str | None = None, vif: int | None = None, limit: int = 1000) -> list[Entry]:
        """Entries after number ``since``, oldest first, of one instance or vif if named; at most
        ``limit`` (the oldest of them).  Costs what it returns (and a binary search a ring), so
        that a reader following a full journal does not hold the proxy up."""
        rings = [self.rings.get(instance, deque())] if instance is not None else list(self.rings.values())
        merged: Iterator[Raw] = heapq.merge(*(_after(ring, since) for ring in rings), key=lambda e: e[0])
        if vif is not None:
            merged = (e for e in merged if e[2] == vif)
        offset = time.time() - time.monotonic()  # to the wall clock as it is now
        return [_entry(e, offset) for e in itertools.islice(merged, limit)]


def _after(ring: deque[Raw], since: int) -> Iterator[Raw]:
    """The entries of ``ring`` (in order of their numbers) after number ``since``."""
    lo, hi = 0, len(ring)
    while lo < hi:
        mid = (lo + hi) // 2
        if ring[mid][0] <= since:
            lo = mid + 1
        else:
            hi = mid
    n = len(ring) - lo
    if lo > n:  # nearer the end (a reader following): from the right, without walking the rest
        return reversed(list(itertools.islice(reversed(ring), n)))
    return itertools.islice(ring, lo, None)


BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Latency:
    """A histogram of durations in seconds, with Prometheus' default-like buckets."""

    def __init__(self, bounds: tuple[float, ...] = BOUNDS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds

    def observe_all(self, values: list[float]) -> None:
        counts = self.counts
        for i, n in Counter(map(bisect.bisect_left, repeat(self.bounds, len(values)), values)).items():
            counts[i] += n
        self.sum += sum(values)

    def message(self) -> Histogram:
        cumulative = list(itertools.accumulate(self.counts))
        return Histogram(list(self.bounds), cumulative[:-1], self.sum, cumulative[-1])


_ANSWER, _NOVA, _TOTAL = itemgetter(2, 3, 7), itemgetter(10), itemgetter(11)


class Tally:
    """What the entries add up to: answers by vif, instance and status, and the latencies."""

    def __init__(self) -> None:
        self.answers: Counter[tuple[int, str, int]] = Counter()  # (vif, instance, status) -> entries; status 0: no answer
        self.nova = Latency()
        self.request = Latency()

    def add(self, entries: list[Raw]) -> None:
        self.answers.update(map(_ANSWER, entries))
        self.request.observe_all(list(map(_TOTAL, entries)))
        self.nova.observe_all([s for s in map(_NOVA, entries) if s >= 0])

    def statuses(self) -> dict[str, dict[int, int]]:
        """instance -> status -> answers (requests that got none are left out)."""
        out: dict[str, dict[int, int]] = {}
        for (_, instance, status), n in self.answers.items():
            if status:
                by_status = out.setdefault(instance, {})
                by_status[status] = by_status.get(status, 0) + n
        return out

    def responses(self) -> Counter[int]:
        """vif -> requests answered."""
        out: Counter[int] = Counter()
        for (vif, _, status), n in self.answers.items():
            if status:
                out[vif] += n
        return out
