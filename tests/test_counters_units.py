"""Counters that survive a restart: a dataplane worker's (``totals.retired``), the metadata proxy
process's (``add_reports``) and the kernel's queue drops (``QueueDrops``) add what the process
that died had counted, and keep no gauge of it."""

from __future__ import annotations

import vrouter.agent.kernel_stats as kernel_stats
from dataplane.linux.totals import Totals, WorkerStats, retired
from flows.layout import DropReason
from vrouter.messages.proxy import Histogram, ProxyCounters, ProxyLoad, ProxyReport, VifMetadataCounters, add_reports


def stats(n: int) -> WorkerStats:
    return WorkerStats(vifs={3: (n, 10 * n, n, 10 * n, 1, 4)}, vif_drops={(3, DropReason.FLOW_LIMIT): n}, drops={DropReason.FLOW_LIMIT: n},
                       setups=n, added=n, removed=n - 1, active=2, errors=1, verdict_writes=n, verdict_errors=0, nat_in_use=5)  # fmt: skip


def test_a_dead_workers_counts_stay_and_its_gauges_go():
    gone = retired(retired(None, stats(7)), stats(5))  # two processes died, having counted 7 and 5
    t = Totals.of(stats(3), [gone])  # the third counts 3
    assert t.vif(3) == [15, 150, 15, 150, 3, 4]  # the flows are the live process's only
    assert t.drops[DropReason.FLOW_LIMIT] == 15 and t.vif_drops[(3, DropReason.FLOW_LIMIT)] == 15
    assert (t.setups, t.added, t.removed, t.errors) == (15, 15, 12, 3)
    assert (t.active, t.nat_in_use) == (2, 5)


def report(pid: int, n: int) -> ProxyReport:
    return ProxyReport(ProxyCounters(requests=n, responses=n, status={200: n, 404: 1}), ProxyLoad(pid, 1), {"rss": pid}, pid,
                       per_vif={3: VifMetadataCounters(n, n, 1, 0)}, by_instance={"i": {200: n}},
                       request_seconds=Histogram([0.1, 1.0], [n, n], 0.5 * n, n), journal_dropped=1)  # fmt: skip


def test_a_dead_proxys_counts_are_added_to_the_new_ones():
    r = add_reports(report(100, 4), report(200, 3))
    assert (r.stats.requests, r.stats.status, r.journal_dropped) == (7, {200: 7, 404: 2}, 2)
    assert r.per_vif[3] == VifMetadataCounters(7, 7, 2, 0) and r.by_instance == {"i": {200: 7}}
    assert r.request_seconds == Histogram([0.1, 1.0], [7, 7], 3.5, 7) and r.nova_seconds is None
    assert (r.pid, r.load, r.memory) == (200, ProxyLoad(200, 1), {"rss": 200})  # the live process's


def test_queue_drops_never_go_down_when_a_queue_is_bound_anew(monkeypatch):
    kernel = {10: (111, 5), 11: (112, 0)}  # queue -> (the port id of its socket, drops)
    monkeypatch.setattr(kernel_stats, "queue_rows", lambda: dict(kernel))
    drops = kernel_stats.QueueDrops()
    assert drops.read() == {10: 5, 11: 0}
    del kernel[10]  # its worker died: the queue is bound by none
    assert drops.read()[10] == 5
    kernel[10] = (222, 9)  # bound again by the new process, which already counted more than the old
    assert drops.read()[10] == 14
    assert drops.forget(10) == 14  # unbound for good: its count is handed over (to the node's ``gone``)
    assert 10 not in drops.read()  # ... not counted again while the worker still holds it
    kernel[10] = (333, 2)  # another VM at the same index: counts anew
    assert drops.read()[10] == 2
