"""Fuzz a live compute node from a VM while the other VMs must be served throughout (make fuzz).

    sudo .venv/bin/python scripts/fuzz.py --seconds 60 --datapath nfqueue|ebpf|both [--prefix P] [--vms K] [--json FILE]

For each datapath it builds its own lab (prefix P plus n or e; a cloud of two nodes over etcd, so
that node 1 has a tunnel port: see scripts/fuzzing/campaign.py), and for --seconds:

* vm1, the attacker, sends from its namespace scapy's fuzz() of every protocol in turn (Ethernet,
  ARP, IPv4, IPv6, TCP, UDP, ICMP, ICMPv6, neighbour discovery, DHCP, DHCPv6, DNS, MPLS over UDP
  to vhost0, which a VM cannot reach), at most --pps frames a second, and malformed HTTP to
  169.254.169.254:80 (--http-rate connections a second, and --slowloris connections held open);
* the fabric namespace sends MPLS over UDP to node 1's tunnel port as node 2 would (fuzzed UDP,
  labels and inner packets), at most --tunnel-pps a second;
* the other VMs (--vms on node 1, one on node 2) read their own metadata (cloud-init's requests in
  turn, each answer checked to be theirs) and ping each other and their gateways, IPv4 and IPv6,
  one every --interval seconds each, from before the attack to after it;
* every agent's status is read every 2 s: a pid that changes (agent, dataplane worker, metadata
  proxy), a restart, an agent that does not answer is a crash; the logs' tracebacks, the
  dataplane's caught per-packet exceptions and the proxy's internal errors are exceptions.

It reports packets sent per protocol, HTTP requests, crashes and exceptions per node and process,
each node's drops, and the others' metadata reads (ok/failed) and pings (sent/lost); exits 1 if
anything crashed, any of the others' reads failed or pings were lost, or the attacker was ever
answered with another VM's metadata (2: could not run).  The labs are removed at the end, pass,
fail, error or signal (SIGINT, SIGTERM, SIGHUP).  Everything it sends stays in the namespaces it
made: every destination is an address of the lab.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import sys
from types import FrameType

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "scripts"), ROOT]

from fuzzing.campaign import Options, run  # noqa: E402 - after the path

from topology.errors import LabError  # noqa: E402


class Interrupted(Exception):
    pass


def on_signal(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


def say(text: str) -> None:
    print("fuzz: " + text, file=sys.stderr, flush=True)


def summary(r: dict) -> str:
    lines = ["", "== %s: %s ==" % (r["datapath"], "PASSED" if r["passed"] else "FAILED: " + "; ".join(r["problems"]))]
    lines.append("packets sent (%d in %.0f s, %.0f a second from vm1):" % (r["packets_total"], r["seconds"], r["packets_per_s"]))
    lines += ["  %-32s %7d" % (k, v) for k, v in r["packets_sent"].items()]
    if r["build_errors"] or r["send_errors"]:
        lines.append("  not built (scapy): %s; not sent (kernel): %s" % (r["build_errors"] or 0, r["send_errors"] or 0))
    h = r["http"]
    if h:
        lines.append("HTTP to 169.254.169.254:80: %d requests (%d slowloris connections), answers %s, %d leaks"
                     % (h["requests"], h["slowloris_connections"], h["answers"], h["leaks"]))  # fmt: skip
    lines.append("crashes: %d; exceptions: %d" % (r["crashes"], r["exceptions"]))
    for name, n in r["nodes"].items():
        lines.append("  %s: crashes %s, exceptions %s, pids %s" % (name, n["crashes"], n["exceptions"], n["pids"]))
        if n["drops"]:
            lines.append("    drops: %s" % ", ".join("%s %d" % kv for kv in sorted(n["drops"].items())))
        if n["counters"]:
            lines.append("    services and proxy: %s" % ", ".join("%s %d" % kv for kv in sorted(n["counters"].items())))
        lines += ["    log: " + e for e in n["log_errors"][:5]]
        if n["log_warnings"]:
            lines.append("    %d warnings logged, of these kinds: %s" % (n["log_warnings"], n["log_warning_kinds"]))
    if r["nova"]["log_tracebacks"]:
        lines.append("  nova-metadata (the fabric's): %d tracebacks in its log; the first:" % r["nova"]["log_tracebacks"])
        lines += ["    " + line for line in r["nova"]["tracebacks"][0].splitlines()]
    o = r["others"]
    lines.append("the other VMs' metadata reads: %d ok, %d failed" % (o["metadata_ok"], o["metadata_failed"]))
    for vm, m in o["metadata"].items():
        lines.append("  %-6s %5d ok %3d failed, worst %.3f s %s" % (vm, m["ok"], m["failed"], m.get("worst_s", 0), m["errors"] or ""))
    lines.append("their pings: %d sent, %d lost" % (o["pings_sent"], o["pings_lost"]))
    for label, p in o["pings"].items():
        lines.append("  %-28s %5d sent %3d lost %s" % (label, p["sent"], p["lost"], p.get("error", "")))
    a = r["attacker_served_after"]
    lines.append("vm1's own metadata after the attack: %d ok, %d failed" % (a["ok"], a["failed"]))
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60, help="of fuzzing, per datapath (default 60)")
    ap.add_argument("--datapath", choices=("nfqueue", "ebpf", "both"), default="both")
    ap.add_argument("--prefix", default="fz" + secrets.token_hex(2), help="the labs' prefix (P + n / e for each datapath; default fz + random)")
    ap.add_argument("--vms", type=int, default=2, help="the other VMs on the attacked node (at least 2; default 2)")
    ap.add_argument("--nodes", type=int, choices=(1, 2), default=2, help="2 (default): a cloud, MPLS over UDP from the fabric; 1: one node")
    ap.add_argument("--pps", type=float, default=150, help="vm1's fuzzed frames a second, at most (default 150)")
    ap.add_argument("--tunnel-pps", type=float, default=50, help="the fabric's MPLS over UDP a second, at most (default 50)")
    ap.add_argument("--http-rate", type=float, default=10, help="malformed HTTP connections a second (default 10)")
    ap.add_argument("--slowloris", type=int, default=48, help="connections held open trickling a head (default 48)")
    ap.add_argument("--interval", type=float, default=0.25, help="the others' reads and pings: one every so many seconds (default 0.25)")
    ap.add_argument("--seed", type=int, default=0, help="the senders' random seed (default: a random one, reported)")
    ap.add_argument("--json", metavar="FILE", help="write the reports there")
    ap.add_argument("--logs", metavar="DIR", help="copy the agents' and Nova's logs into DIR/DATAPATH before the labs are removed")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("fuzz: needs root (network namespaces)", file=sys.stderr)
        return 2
    if args.vms < 2 or args.seconds <= 0 or args.pps <= 0 or args.tunnel_pps <= 0 or args.http_rate <= 0:
        print("fuzz: --vms 2 at least; --seconds, --pps, --tunnel-pps, --http-rate above 0", file=sys.stderr)
        return 2
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)
    opts = Options(args.seconds, args.prefix, args.vms, args.nodes, args.pps, args.tunnel_pps, args.http_rate, args.slowloris, args.interval,
                   args.seed, args.logs or "")  # fmt: skip
    reports: list[dict] = []
    status = 0
    try:
        for datapath in ("nfqueue", "ebpf") if args.datapath == "both" else (args.datapath,):
            r = run(opts, datapath, say)
            reports.append(r)
            print(summary(r), flush=True)
            if not r["passed"]:
                status = 1
    except (LabError, ValueError) as e:
        say("could not run: %s" % e)
        status = 2
    except (KeyboardInterrupt, Interrupted) as e:
        say("interrupted (%s); the labs are removed" % (str(e) or "SIGINT"))
        status = 130
    finally:
        if args.json:
            os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
            with open(args.json, "w") as f:
                json.dump(reports, f, indent=2)
    if reports and status != 130:
        say("%s" % ", ".join("%s %s" % (r["datapath"], "PASSED" if r["passed"] else "FAILED") for r in reports))
    return status


if __name__ == "__main__":
    sys.exit(main())
