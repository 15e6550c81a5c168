"""Soak: many VMs booting at once, each running cloud-init's metadata sequence again and again.

    sudo .venv/bin/python scripts/soak.py [--vms 16] [--nodes 1] [--seconds 180] [--prefix soak]   (make soak)

Builds its own emulated host (with --nodes K, a cloud of K nodes over etcd, the VMs spread over
them; removed at the end, pass or fail), with flows aging after 10 s so
that the end state is reached quickly. Every VM loops over cloud-init's OpenStack datasource
requests (version list, meta_data.json, user_data, vendor_data*.json, network_data.json, then the
EC2 tree), a new connection per request as cloud-init's url_helper makes them, checking each
answer is the VM's own. Then the traffic stops, the flows age out, and it checks: no failed
request, no VM connection left open in the proxy, and the heap (anonymous memory: RSS also counts
the shared flow table's touched pages) of the agent and its proxy process, flow count, NAT ports
and open files back where they were after warm-up.
Bounded: --seconds of traffic, one request at a time a VM, from one process that makes each
VM's sockets in its namespace (so a thousand VMs need no thousand clients). Reports the agent's
memory (agent and proxy process together) per VM. With several nodes every figure is the sum
over the nodes' agents (memory per VM: all the agents' over all the VMs).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
VROUTER = os.path.join(ROOT, ".venv", "bin", "vrouter")

from topology.clients import CloudInitClients  # noqa: E402 - after the path
from vrouter.agent.config import MetadataSettings  # noqa: E402


def run(*cmd: str, **kw) -> subprocess.CompletedProcess:  # noqa: ANN003
    return subprocess.run(list(cmd), capture_output=True, text=True, **kw)


def agent_state(state_dirs: list[str]) -> dict:
    """The agents' figures, summed over the nodes (``proxy``: the VM connections summed)."""
    each = [one_agent(d) for d in state_dirs]
    out: dict = {k: sum(e[k] for e in each) for k in ("rss_kib", "anon_kib", "fds", "flows", "nat_ports", "upstream_idle")}
    out["proxy"] = {"vm_connections": sum(e["proxy"]["vm_connections"] for e in each)}
    return out


def one_agent(state_dir: str) -> dict:
    st = json.loads(run(VROUTER, "status", "--json", "--state-dir", state_dir).stdout)
    mem = st["memory"]
    # RSS also counts the pages of the shared flow table that flows have touched so far (it grows
    # towards the table's 77 MiB as hashing spreads new flows over it); the heap is what can leak.
    # The proxy's idle keep-alive connections to Nova are a bounded pool (64), not a leak: not counted.
    # The proxy runs in a process of its own: its heap and open files are added to the agent's.
    fds = mem["open_files"] + mem.get("proxy_open_files", 0) - st["proxy"]["upstream_idle"]
    return {
        "rss_kib": mem["rss_kib"] + mem.get("proxy_rss_kib", 0),
        "anon_kib": mem["heap_kib"] + mem.get("proxy_heap_kib", 0),
        "fds": fds,
        "flows": st["flows_active"],
        "nat_ports": st["linklocal_nat_ports_in_use"],
        "upstream_idle": st["proxy"]["upstream_idle"],
        "proxy": st["proxy"],
    }


def drops(state_dirs: list[str]) -> dict[str, int]:
    """dropstats summed over the nodes, the reasons that counted."""
    total: dict[str, int] = {}
    for d in state_dirs:
        for k, v in json.loads(run(VROUTER, "dropstats", "--json", "--state-dir", d).stdout).items():
            total[k] = total.get(k, 0) + v
    return {k: v for k, v in total.items() if v}


def wait_flows_gone(state_dirs: list[str], timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        s = agent_state(state_dirs)
        if s["flows"] == 0 or time.monotonic() > deadline:
            return s
        time.sleep(1)  # polling the agent's state with a deadline


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vms", type=int, default=16)
    ap.add_argument("--nodes", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=180)
    ap.add_argument("--prefix", default="soak")
    ap.add_argument("--datapath", choices=("nfqueue", "ebpf"), default="nfqueue")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "soak.json"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("soak needs root (network namespaces)", file=sys.stderr)
        return 2
    from topology.lab import Lab, LabError
    from topology.model import Topology

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # a namespace handle and a socket a VM
    lab = Lab(args.prefix)
    try:
        topo = Topology.plan(args.prefix, args.vms, lab.state, nodes=args.nodes)
        topo.flow_cache_timeout = 10  # the end state (every flow aged out) comes quickly
        topo.datapath = args.datapath
        layout = lab.up(topo)
    except (LabError, ValueError) as e:
        print("soak: %s" % e, file=sys.stderr)
        return 1
    state = [n["state_dir"] for n in layout["nodes"]]
    driver = None
    try:
        driver = CloudInitClients(layout["vms"])
        wave = driver.wave
        before = agent_state(state)
        on = " on %d nodes" % args.nodes if args.nodes > 1 else ""
        print("warm-up: %d VMs%s boot at once, 10 s" % (args.vms, on), flush=True)
        warm = wave(10)
        settled = wait_flows_gone(state, 60)
        print("after warm-up, flows aged out: %s" % {k: v for k, v in settled.items() if k != "proxy"}, flush=True)
        print("soak: %d VMs for %.0f s" % (args.vms, args.seconds), flush=True)
        t0 = time.monotonic()
        results = wave(args.seconds)
        elapsed = time.monotonic() - t0
        busy = agent_state(state)
        end = wait_flows_gone(state, 60)
        ok = sum(r["ok"] for r in results + warm)
        failed = sum(r["failed"] for r in results + warm)
        report = {
            "vms": args.vms,
            "nodes": args.nodes,
            "seconds": round(elapsed, 1),
            "requests_ok": ok,
            "requests_failed": failed,
            "requests_per_s": round(sum(r["ok"] for r in results) / elapsed, 1),
            "rounds_per_vm": {"min": min(r["rounds"] for r in results), "max": max(r["rounds"] for r in results)},
            "worst_latency_s": max(r["worst_s"] for r in results),
            "errors": [e for r in results + warm for e in r["errors"]][:10],
            "failed_in": {k: sum(r["failed_in"].get(k, 0) for r in results + warm) for k in ("connect", "answer")},
            "agent_memory_per_vm_kib": {
                "rss": round(settled["rss_kib"] / args.vms, 1),
                "heap": round(settled["anon_kib"] / args.vms, 1),
                "rss_under_load": round(busy["rss_kib"] / args.vms, 1),
            },
            "drops": drops(state),
            "agent_before_traffic": before,
            "agent_after_warmup": settled,
            "agent_under_load": busy,
            "agent_after_aging": end,
        }
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
        growth = end["anon_kib"] - settled["anon_kib"]
        # The request journal fills up to its bound as the soak goes (a ring per instance, a bound on
        # the node): growth, but bounded, not a leak; allowed for at half a KiB an entry.
        journal = min(MetadataSettings.journal_size * args.vms, MetadataSettings.journal_node_size * args.nodes)
        allowed = 8192 * args.nodes + journal // 2  # 8 MiB a node
        verdict = (
            failed == 0
            and end["flows"] == 0
            and end["fds"] <= settled["fds"]
            and end["nat_ports"] == 0
            and growth < allowed
            and end["proxy"]["vm_connections"] == 0
        )
        print(json.dumps({k: v for k, v in report.items() if not k.startswith("agent_")}, indent=2))
        for name, st in (("after warm-up", settled), ("under load", busy), ("after aging", end)):
            print("agent %-14s RSS %d KiB (heap %d KiB), %d fds (+%d idle Nova connections), %d flows, %d NAT ports"
                  % (name + ":", st["rss_kib"], st["anon_kib"], st["fds"], st["upstream_idle"], st["flows"], st["nat_ports"]))  # fmt: skip
        print("heap growth since warm-up: %+d KiB (allowed: %d KiB, 8 MiB a node and the request journal's bound of %d entries)"
              % (growth, allowed, journal))  # fmt: skip
        per = report["agent_memory_per_vm_kib"]
        print("agent and proxy memory per VM (fixed part included): RSS %.0f KiB, heap %.0f KiB; under load RSS %.0f KiB"
              % (per["rss"], per["heap"], per["rss_under_load"]))  # fmt: skip
        print("soak %s" % ("PASSED" if verdict else "FAILED"))
        return 0 if verdict else 1
    finally:
        if driver is not None:
            driver.close()
        lab.down()


if __name__ == "__main__":
    sys.exit(main())
