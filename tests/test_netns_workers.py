"""The dataplane as several workers: each reads its own queues, both directions of a pair reach one
worker, the tools see one table and the node's counters, a dead worker is restarted with its
flows flushed.  A node of 4 VMs with ``dataplane_workers = 2`` (vif0/3 and vif0/5 are worker 1's,
vif0/4 and vif0/6 worker 0's, the agent's own loop)."""

import json
import os
import signal
import subprocess

import pytest

from tests.emulated_host import EmulatedHost
from tests.helpers import configure, metric, scrape, wait_until

pytestmark = pytest.mark.netns

WORKERS = 2


@pytest.fixture(scope="module")
def node(make_shared_node):
    h = make_shared_node(vms=4)
    configure(h, FLOWS={"dataplane_workers": WORKERS})
    return h


def counters(h: EmulatedHost) -> dict[str, float]:
    """The node's counters as vif, dropstats and the metrics give them (no gauge)."""
    out: dict[str, float] = {}
    for v in h.cli_json("vif", "--list"):
        for k in ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "drops"):
            out["vif%d %s" % (v["vif"], k)] = v[k]
    out.update(("dropstats " + k, n) for k, n in h.cli_json("dropstats").items())
    text = scrape(h)
    for vm in h.vms:
        for d in ("rx", "tx"):
            out["metric vif%d %s" % (vm["vif"], d)] = metric(text, "vrouter_vif_packets_total", vif=str(vm["vif"]), direction=d)
    out["metric flow setups"] = metric(text, "vrouter_flow_setups_total")
    return out


def worker_pids(h: EmulatedHost) -> list[int]:
    return h.cli_json("status")["dataplane_workers"]


def bound_queues(h: EmulatedHost) -> set[int]:
    r = h.in_compute("cat", "/proc/net/netfilter/nfnetlink_queue")
    return {int(line.split()[0]) for line in r.stdout.splitlines() if line.strip()}


def test_every_queue_of_every_vm_is_read_by_a_worker(node):
    pids = worker_pids(node)
    assert len(pids) == WORKERS and all(pids) and pids[0] == json.load(open(os.path.join(node.state_dir, "agent.pid")))
    bound = bound_queues(node)
    for vm in node.vms:
        rec = node.cli_json("vif", "--get", str(vm["vif"]))
        rec = rec[0] if isinstance(rec, list) else rec
        assert len(rec["queues"]) == WORKERS + 1  # a data queue a worker, and its service queue
        assert set(rec["queues"]) <= bound, (rec["queues"], bound)
    assert {0, 1} <= bound  # each worker's node queue


def test_metadata_and_forwarding_work_whichever_worker_owns_a_vm(node):
    for i, vm in enumerate(node.vms):
        status, body = node.metadata(i)
        assert status == 200 and json.loads(body)["uuid"] == vm["instance_uuid"], (vm["vif"], status, body)
        r = node.in_vm(i, "ping", "-c", "3", "-i", "0.2", "-W", "2", vm["gateway"])  # trapped, answered by the agent
        assert r.returncode == 0 and " 0% packet loss" in r.stdout, (vm["vif"], r.stdout)
    for i in range(len(node.vms)):
        for j in range(len(node.vms)):
            if i != j:
                r = node.in_vm(i, "ping", "-c", "2", "-i", "0.2", "-W", "2", "-w", "20", node.vms[j]["ip"])
                assert r.returncode == 0 and " 0% packet loss" in r.stdout, (i, j, r.stdout)


def test_both_halves_of_every_pair_are_one_workers_and_flow_l_sees_all(node):
    for i in range(len(node.vms)):
        assert node.in_vm(i, "ping", "-c", "1", "-W", "2", node.vms[(i + 1) % len(node.vms)]["ip"]).returncode == 0
    with node.open_connection(0, "169.254.169.254", 80), node.open_connection(1, "169.254.169.254", 80):
        flows = node.cli_json("flow", "-l")
        pairs = [(f["index"], f["rindex"]) for f in flows if f["rindex"] is not None]
        assert pairs
        assert all(a % WORKERS == b % WORKERS for a, b in pairs), pairs  # entry i is worker i % N's
        assert {a % WORKERS for a, _ in pairs} == set(range(WORKERS)), pairs  # and both workers hold flows
        status = node.cli_json("status")
        assert status["flows_active"] == len(flows)  # the node's count, every worker's added up


def test_counters_add_up_every_workers_share(node):
    a, b = node.vms[0], node.vms[1]  # worker 1's and worker 0's
    before = {v["vif"]: v for v in node.cli_json("vif", "--list")}
    assert node.in_vm(0, "ping", "-c", "10", "-i", "0.05", "-W", "2", "-w", "20", b["ip"]).returncode == 0
    assert node.in_vm(0, "ping", "-c", "10", "-i", "0.05", "-W", "2", "-w", "20", a["gateway"]).returncode == 0
    assert node.metadata(0)[0] == 200
    after = {v["vif"]: v for v in node.cli_json("vif", "--list")}
    # vm1's echoes to vm2 (the worker the kernel's hash picks), to its gateway (its owner's, answered
    # by the agent) and its metadata connection (its owner's): all on its vif
    assert after[a["vif"]]["rx_packets"] - before[a["vif"]]["rx_packets"] >= 10 + 10 + 5
    assert after[b["vif"]]["tx_packets"] - before[b["vif"]]["tx_packets"] >= 10
    assert metric(scrape(node), "vrouter_vif_packets_total", vif=str(a["vif"]), direction="rx") >= after[a["vif"]]["rx_packets"]


def test_a_dead_worker_is_restarted_with_its_flows_flushed(node):
    vm = node.vms[0]  # vif0/3: worker 1's services
    old = worker_pids(node)[1]
    assert node.metadata(0)[0] == 200  # worker 1 counts vm1's packets
    with node.open_connection(0, "169.254.169.254", 80) as (port, _):
        counted = counters(node)
        held = [f for f in node.cli_json("flow", "-l") if f["sport"] == port and f["src"] == vm["ip"]]
        assert held and held[0]["index"] % WORKERS == 1
        os.kill(old, signal.SIGKILL)
        wait_until(lambda: worker_pids(node)[1] not in (0, old), 20, "worker 1 restarted")
        assert node.cli_json("status")["dataplane_worker_restarts"] >= 1
        flows = node.cli_json("flow", "-l")
        assert not [f for f in flows if f["index"] == held[0]["index"] and f["sport"] == port], "the dead worker's flow stayed"
        after = counters(node)
        # what the dead process counted stays in the totals: none goes down
        assert {k: v for k, v in after.items() if v < counted[k]} == {}, (counted, after)
    for i, v in enumerate(node.vms):  # every VM served again, those of the new worker too
        status, body = wait_until(lambda i=i: (lambda r: r if r[0] == 200 else None)(node.metadata(i)), 10, "vm%d's metadata" % (i + 1))
        assert json.loads(body)["uuid"] == v["instance_uuid"]
    assert "dataplane worker 1 is gone" in open(os.path.join(node.state_dir, "agent.log")).read()


def test_a_vms_flow_limit_holds_within_its_bound_under_a_flood_from_every_worker(node):
    """Each worker checks a VM's limit against its own count and the others' published ones, so
    workers that set up the VM's flows at the same moment may pass it: by at most one pair each
    but the last, ``max_vm_flows + 2 * (workers - 1)`` entries (docs/dataplane-workers.md)."""
    configure(node, FLOWS={"dataplane_workers": WORKERS, "flow_entries": 4096, "max_vm_flows": 2})
    vm = node.vms[0]
    r = node.cli("introspect", "Snh_ItfReq?name=" + vm["tap"], "--columns", "name,max_flows")
    limit = int(next(line.split()[-1] for line in r.stdout.splitlines() if vm["tap"] in line))
    assert 50 < limit < 200, r.stdout
    # new flows to three VMs over two protocols: the kernel balances a VM's data queues by its
    # addresses and protocol, so they reach both workers, each setting up flows at once (2,000 a
    # second from each sender: a flood as fast as hping3 goes starves the agent's tools on 2 cores)
    floods = [
        subprocess.Popen(
            ["ip", "netns", "exec", node.vm_ns(0), "hping3", "-i", "u500", "-q", *proto, "-p", "9", node.vms[j]["ip"]],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        for j in (1, 2, 3)
        for proto in (["--udp"], ["-S"])
    ]
    try:
        wait_until(lambda: node.cli_json("dropstats")["Flow Limit"] > 3000, 60, "the flood refused by vm1's limit")
        # its count moves: refused from the limit on until it falls to 90% (TCP pairs close on RST)
        flows = max(node.cli_json("vif", "--get", str(vm["vif"]))["flows"] for _ in range(8))
        entries = [f for f in node.cli_json("flow", "-l") if vm["ip"] in (f["src"], f["dst"])]
    finally:
        for p in floods:
            p.kill()
            p.wait(10)
    assert {f["index"] % WORKERS for f in entries} == set(range(WORKERS))  # both workers set up vm1's flows
    assert limit * 9 // 10 - 2 <= flows <= limit + 2 * (WORKERS - 1), (flows, limit)
