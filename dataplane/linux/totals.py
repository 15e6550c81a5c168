"""The dataplane's counters: one worker's (``WorkerStats``, what it answers a ``StatsRequest``)
and the node's (``Totals``, every worker's added up), as the tools and the metrics show them."""

from __future__ import annotations

from dataclasses import dataclass, field

from dataplane.core.dataplane import Dataplane
from dataplane.linux.nfqueue import QueueShell
from flows.layout import DropReason


@dataclass
class WorkerStats:
    """One worker's counters (the answer to ``StatsRequest``)."""

    vifs: dict[int, tuple[int, int, int, int, int, int]] = field(default_factory=dict)  # rx p, rx b, tx p, tx b, drops, flows
    vif_drops: dict[tuple[int, DropReason], int] = field(default_factory=dict)  # (vif, reason) -> packets
    drops: dict[DropReason, int] = field(default_factory=dict)  # reason -> packets
    setups: int = 0
    added: int = 0
    removed: int = 0
    active: int = 0
    errors: int = 0
    verdict_writes: int = 0
    verdict_errors: int = 0
    nat_in_use: int = 0
    captures: dict[int, tuple[int, int]] = field(default_factory=dict)  # id -> sent, lost


def stats_of(dp: Dataplane, shell: QueueShell, nat_in_use: int, captures: dict[int, tuple[int, int]]) -> WorkerStats:
    """A dataplane's counters, as a worker reports them."""
    return WorkerStats(
        vifs={v.index: (v.rx_packets, v.rx_bytes, v.tx_packets, v.tx_bytes, v.drops, v.flows) for v in dp.vifs.values()},
        vif_drops=dict(dp.path.vif_drops),
        drops=dict(dp.drops),
        setups=dp.setups,
        added=dp.entries.added,
        removed=dp.entries.removed,
        active=dp.table.active,
        errors=shell.errors,
        verdict_writes=shell.verdict_writes,
        verdict_errors=shell.verdict_errors,
        nat_in_use=nat_in_use,
        captures=captures,
    )


@dataclass
class Totals:
    """The node's counters: the agent's own dataplane (worker 0) and every worker's, added up."""

    vifs: dict[int, list[int]]  # vif -> rx packets, rx bytes, tx packets, tx bytes, drops, flows
    vif_drops: dict[tuple[int, DropReason], int]
    drops: dict[DropReason, int]
    setups: int
    added: int
    removed: int
    active: int
    errors: int
    verdict_writes: int
    verdict_errors: int
    nat_in_use: int
    captures: dict[int, tuple[int, int]]  # capture id -> sent, lost by the workers

    @classmethod
    def of(cls, local: WorkerStats, remote: list[WorkerStats]) -> Totals:
        t = cls({}, {}, {}, 0, 0, 0, 0, 0, 0, 0, 0, {})
        for s in (local, *remote):
            for i, counts in s.vifs.items():
                have = t.vifs.setdefault(i, [0] * 6)
                for k, n in enumerate(counts):
                    have[k] += n
            for key, n in s.vif_drops.items():
                t.vif_drops[key] = t.vif_drops.get(key, 0) + n
            for r, n in s.drops.items():
                t.drops[r] = t.drops.get(r, 0) + n
            for c, (sent, lost) in s.captures.items():
                was = t.captures.get(c, (0, 0))
                t.captures[c] = (was[0] + sent, was[1] + lost)
            t.setups += s.setups
            t.added += s.added
            t.removed += s.removed
            t.active += s.active
            t.errors += s.errors
            t.verdict_writes += s.verdict_writes
            t.verdict_errors += s.verdict_errors
            t.nat_in_use += s.nat_in_use
        return t

    def vif(self, index: int) -> list[int]:
        return self.vifs.get(index, [0] * 6)


def retired(before: WorkerStats | None, last: WorkerStats) -> WorkerStats:
    """What a worker's processes that are gone counted: ``before`` (the earlier ones) plus ``last``
    (what the process that died last answered), its counters only (its flows went with it: no
    active entries, NAT ports or per-vif flows)."""
    total = Totals.of(last, [before] if before is not None else [])
    return WorkerStats(
        vifs={i: (c[0], c[1], c[2], c[3], c[4], 0) for i, c in total.vifs.items()},
        vif_drops=total.vif_drops,
        drops=total.drops,
        setups=total.setups,
        added=total.added,
        removed=total.removed,
        errors=total.errors,
        verdict_writes=total.verdict_writes,
        verdict_errors=total.verdict_errors,
        captures=total.captures,
    )
