"""The dataplane workers' pure parts: which worker reads which queue, the configuration API that
changes every worker and what a restarted worker is given again, and the node's counters added up."""

import asyncio
from types import SimpleNamespace

import pytest

from dataplane.core.dataplane import Dataplane
from dataplane.core.overlay import Route
from dataplane.core.vif import Vif
from dataplane.linux.layout import QueueLayout
from dataplane.linux.totals import Totals, WorkerStats
from dataplane.linux.workers import CONFIGURE, Dataplanes, WorkerPool
from flows.layout import DropReason
from flows.table import FlowTable


def test_one_worker_keeps_the_layout_of_before():
    q = QueueLayout(100)
    assert q.node_queue(0) == 100 and q.tunnel_queue == 101
    assert q.queues_of(3) == (106, 107) and q.data_queues(3) == (106,) and q.service_queue(3) == 107
    assert q.read_by(3, 0) == (106, 107)
    assert q.nat_ports(0, 61000, 65535) == (61000, 65535)


@pytest.mark.parametrize("workers", [2, 3, 4])
@pytest.mark.parametrize("groups", [True, False])
def test_every_queue_is_read_by_exactly_one_worker(workers, groups):
    q = QueueLayout(0, workers, groups)
    seen: dict[int, int] = {}
    vifs = range(3, 300)
    for v in vifs:
        for w in range(workers):
            for n in q.read_by(v, w):
                assert n not in seen, (v, w, n)
                seen[n] = w
        assert q.service_queue(v) in q.read_by(v, q.owner(v))  # the owner reads its services
        assert set(q.queues_of(v)) == {n for w in range(workers) for n in q.read_by(v, w)}
        data = q.data_queues(v)
        assert len(data) == (workers if groups else 1)
        if groups:  # the kernel's hash picks one of the group: each worker has one
            assert [seen[n] for n in data] == list(range(workers))
        else:
            assert seen[data[0]] == 0  # a node of a cloud: a VM's data is worker 0's, with the tunnels
    nodes = {q.node_queue(w) for w in range(workers)} | {q.tunnel_queue}
    assert not nodes & set(seen) and len(nodes) == workers + 1
    ranges = [q.nat_ports(w, 61000, 65535) for w in range(workers)]
    assert ranges[0][0] == 61000 and ranges[-1][1] == 65535
    assert all(a[1] + 1 == b[0] for a, b in zip(ranges, ranges[1:], strict=False))  # disjoint, in order, the whole range


def test_a_restarted_worker_is_given_the_configuration_as_it_stands():
    pool = WorkerPool(lambda w: SimpleNamespace(node_queue=w), 3, lambda t: None)  # type: ignore[arg-type,return-value]
    dps = Dataplanes(Dataplane(FlowTable.in_memory(256), "10.10.0.2"), pool)
    v3, v4 = Vif(3, "tap3", 7, "10.1.1.3"), Vif(4, "tap4", 8, "10.1.1.4")
    routes = [Route(1, "10.1.1.9", "n2", "10.10.0.3", 25)]

    async def configure() -> list[int]:
        return [
            await f
            for f in (dps.add_vif(v3), dps.set_services([]), dps.add_vif(v4), dps.set_guest_addresses(1, None), dps.set_routes([]),
                      dps.remove_vif(3), dps.set_guest_addresses(1, (b"\n\1\1\1", b"\n\1\1\2")), dps.set_routes(routes), dps.add_vif(v3))
        ]  # fmt: skip

    assert asyncio.run(configure()) == [0] * 9  # no worker runs: worker 0's answers alone
    assert sorted(dps.local.vifs) == [0, 3, 4]  # worker 0's own dataplane (vhost0 its vif0/0) was changed at once
    v4.rx_packets = 99  # the agent's own vif counts on; what a restarted worker is given does not
    kept = list(pool._config.values())
    assert [m.method for m in kept] == ["set_services", "add_vif", "set_guest_addresses", "set_routes", "add_vif"]
    assert [m.args[0].index for m in kept if m.method == "add_vif"] == [4, 3]
    assert kept[1].args[0].rx_packets == 0
    assert kept[2].args == (1, (b"\n\1\1\1", b"\n\1\1\2")) and kept[3].args == (routes,)
    assert all(m.method in CONFIGURE for m in kept)


def test_totals_add_every_workers_counters():
    a = WorkerStats(vifs={3: (1, 100, 2, 200, 0, 2)}, vif_drops={(3, DropReason.NO_ROUTE): 1}, drops={DropReason.NO_ROUTE: 1},
                    setups=1, added=2, active=2, captures={1: (5, 0)})  # fmt: skip
    b = WorkerStats(vifs={3: (10, 1000, 0, 0, 1, 0), 4: (1, 1, 1, 1, 0, 0)}, vif_drops={(3, DropReason.NO_ROUTE): 2},
                    drops={DropReason.NO_ROUTE: 2, DropReason.INVALID_PACKET: 1}, setups=3, added=6, removed=2, active=4,
                    captures={1: (7, 1)})  # fmt: skip
    t = Totals.of(a, [b])
    assert t.vif(3) == [11, 1100, 2, 200, 1, 2] and t.vif(4) == [1, 1, 1, 1, 0, 0] and t.vif(9) == [0] * 6
    assert t.vif_drops == {(3, DropReason.NO_ROUTE): 3}
    assert t.drops == {DropReason.NO_ROUTE: 3, DropReason.INVALID_PACKET: 1}
    assert (t.setups, t.added, t.removed, t.active) == (4, 8, 2, 6)
    assert t.captures == {1: (12, 1)}
