"""How long a configuration change takes to reach every agent of a cluster (``make cluster-latency``).

Builds a cluster of ``--nodes`` compute nodes (one VM each) with its own etcd, then makes
``--changes`` changes of the global config through node 1's control socket, as ``vrouter linklocal
add`` and ``del`` make them (half adds of a service, then as many deletes), one after the other.
For each: the time from sending the request until every node's agent has it (its link-local
service list shows it, or no longer shows it), polled over their control sockets.  Node 1 applies
its own change before it answers; the others learn it from etcd's watch.  Prints the median and
the worst, per node and for all; ``--json FILE`` writes them.  Everything runs inside the
cluster's namespaces, which it removes at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from topology.lab import Lab  # noqa: E402
from topology.model import Topology  # noqa: E402
from vrouter.agent.control import call  # noqa: E402
from vrouter.messages import LinkLocalAdd, LinkLocalDel, LinkLocalList  # noqa: E402


def names(sock: str) -> set[str]:
    return {e.linklocal_service_name for e in call(sock, LinkLocalList())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--changes", type=int, default=100)
    ap.add_argument("--prefix", default="clat")
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("cluster.py: needs root (network namespaces)")
    if not 2 <= args.nodes <= 16 or not 2 <= args.changes <= 1000:
        sys.exit("cluster.py: --nodes 2..16, --changes 2..1000")
    lab = Lab(args.prefix, say=lambda text: None)
    if lab.is_up():
        sys.exit("cluster.py: prefix %s is up already (netns_setup.sh down --prefix %s)" % (args.prefix, args.prefix))
    topo = Topology.plan(args.prefix, args.nodes, lab.state, nodes=args.nodes)
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
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    finally:
        lab.down(quiet=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
