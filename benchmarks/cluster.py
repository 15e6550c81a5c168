"""How long a configuration change takes to reach every agent of a cluster, and what the overlay
carries (``make cluster-latency``).

Builds a cluster of ``--nodes`` compute nodes (one VM each) with its own etcd, then makes
``--changes`` changes of the global config through node 1's control socket, as ``vrouter linklocal
add`` and ``del`` make them (half adds of a service, then as many deletes), one after the other.
For each: the time from sending the request until every node's agent has it (its link-local
service list shows it, or no longer shows it), polled over their control sockets.  Node 1 applies
its own change before it answers; the others learn it from etcd's watch.  Prints the median and
the worst, per node and for all.  Then VM-to-VM small UDP packets a second (iperf3 -u -l 64 -b
0) and TCP throughput (iperf3) between two VMs of node 1, and from node 1 to a VM of node 2
through the overlay, in turn, ``--rounds`` times each (medians, and the ratio across / within).
``--json FILE`` writes the figures.  Everything runs inside the cluster's namespaces, which it
removes at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.run import iperf3, iperf3_udp  # noqa: E402
from topology.lab import Lab  # noqa: E402
from topology.model import Topology  # noqa: E402
from vrouter.agent.control import call  # noqa: E402
from vrouter.messages.control import LinkLocalAdd, LinkLocalDel, LinkLocalList  # noqa: E402


def names(sock: str) -> set[str]:
    return {e.linklocal_service_name for e in call(sock, LinkLocalList())}


def iperf3_tcp(a: dict, b: dict, seconds: float) -> float:
    """TCP from VM ``a`` to VM ``b``, Mbit/s received."""
    end = iperf3(a, b, seconds, port=5202)
    return round(end.get("sum_received", {}).get("bits_per_second", 0) / 1e6, 1)


def throughput(vms: list[dict], rounds: int, seconds: float) -> dict:
    """Within node 1 (vm1 to vm2) and across the overlay (vm1 on node 1 to vm3 on node 2), in turn."""
    within, across = vms[0], vms[2]
    assert vms[0]["node"] == vms[1]["node"] == 1 and across["node"] == 2
    runs: dict[str, list[float]] = {"udp_within": [], "udp_across": [], "tcp_within": [], "tcp_across": []}
    for _ in range(rounds):
        runs["udp_within"].append(iperf3_udp(within, vms[1], seconds)["iperf3_udp_pps"])
        runs["udp_across"].append(iperf3_udp(within, across, seconds)["iperf3_udp_pps"])
        runs["tcp_within"].append(iperf3_tcp(within, vms[1], seconds))
        runs["tcp_across"].append(iperf3_tcp(within, across, seconds))
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {
        "udp_pps": {"within_node": med["udp_within"], "across_nodes": med["udp_across"],
                    "ratio": round(med["udp_across"] / med["udp_within"], 2) if med["udp_within"] else 0},
        "tcp_mbit": {"within_node": med["tcp_within"], "across_nodes": med["tcp_across"],
                     "ratio": round(med["tcp_across"] / med["tcp_within"], 2) if med["tcp_within"] else 0},
        "runs": runs,
    }  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--changes", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the throughput runs (0: none)")
    ap.add_argument("--seconds", type=float, default=5, help="length of each throughput run")
    ap.add_argument("--prefix", default="clat")
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("cluster.py: needs root (network namespaces)")
    if not 2 <= args.nodes <= 16 or not 2 <= args.changes <= 1000 or not 0 <= args.rounds <= 10 or not 1 <= args.seconds <= 60:
        sys.exit("cluster.py: --nodes 2..16, --changes 2..1000, --rounds 0..10, --seconds 1..60")
    if args.rounds and not shutil.which("iperf3"):
        sys.exit("cluster.py: the throughput runs need iperf3 (make bench-deps), or --rounds 0")
    lab = Lab(args.prefix, say=lambda text: None)
    if lab.is_up():
        sys.exit("cluster.py: prefix %s is up already (netns_setup.sh down --prefix %s)" % (args.prefix, args.prefix))
    topo = Topology.plan(args.prefix, args.nodes + 1, lab.state, nodes=args.nodes)  # two VMs on node 1, one on each other
    try:
        lab.up(topo)
        socks = [os.path.join(topo.state_of(n), "agent.sock") for n in range(1, args.nodes + 1)]
        per_node: list[list[float]] = [[] for _ in socks]
        overall: list[float] = []
        adds = args.changes // 2
        for i in range(args.changes):
            name = "lat%d" % (i % adds)
            adding = i < adds
            t0 = time.perf_counter()
            if adding:
                call(socks[0], LinkLocalAdd(name, "169.254.20.%d" % (1 + i % 250), str(1000 + i), ["10.10.0.1"], "7"))
            else:
                call(socks[0], LinkLocalDel(name))
            waiting = set(range(len(socks)))
            deadline = t0 + 30
            while waiting:
                for n in sorted(waiting):
                    if (name in names(socks[n])) == adding:
                        per_node[n].append(time.perf_counter() - t0)
                        waiting.discard(n)
                if time.perf_counter() > deadline:
                    sys.exit("cluster.py: change %d did not reach nodes %s within 30 s" % (i, sorted(w + 1 for w in waiting)))
            overall.append(max(per_node[n][-1] for n in range(len(socks))))
        ms = [x * 1000 for x in overall]
        out = {
            "nodes": args.nodes,
            "changes": args.changes,
            "every_node_ms": {"median": round(statistics.median(ms), 2), "worst": round(max(ms), 2)},
            "per_node_ms": {
                str(n + 1): {"median": round(statistics.median(v) * 1000, 2), "worst": round(max(v) * 1000, 2)} for n, v in enumerate(per_node)
            },
        }
        print("%d changes of the global config made on node 1, until every one of %d nodes had each:" % (args.changes, args.nodes))
        print("  all nodes: median %.1f ms, worst %.1f ms" % (out["every_node_ms"]["median"], out["every_node_ms"]["worst"]))
        for n, v in out["per_node_ms"].items():
            print("  node %s:    median %.1f ms, worst %.1f ms" % (n, v["median"], v["worst"]))
        if args.rounds:
            t = out["throughput"] = throughput(lab.layout()["vms"], args.rounds, args.seconds)
            print("VM to VM, medians of %d rounds of %g s (iperf3):" % (args.rounds, args.seconds))
            print("  small UDP packets/s: within node 1 %d, node 1 to node 2 over the overlay %d (%.2fx)"
                  % (t["udp_pps"]["within_node"], t["udp_pps"]["across_nodes"], t["udp_pps"]["ratio"]))  # fmt: skip
            print("  TCP Mbit/s:          within node 1 %.0f, node 1 to node 2 over the overlay %.0f (%.2fx)"
                  % (t["tcp_mbit"]["within_node"], t["tcp_mbit"]["across_nodes"], t["tcp_mbit"]["ratio"]))  # fmt: skip
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    finally:
        lab.down(quiet=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
