"""Chaos soak: VMs running cloud-init's metadata sequence and VM-to-VM streams while the node's
processes are killed one after the other, Nova is slowed and a node of a cloud is removed and added
back; how long until every VM is served again, what failed, and what leaked.

    sudo .venv/bin/python scripts/chaos.py [--datapath nfqueue|ebpf|both] [--prefix P] [--json FILE]
                                           [--fault-seconds N] [--quiet-seconds N]      (make chaos)

Builds, under prefix P (at most 7 characters; ``ch`` and 4 random ones by default), a single node
``Pn`` with 16 VMs and 2 dataplane workers, and a cloud ``Pc`` of 3 nodes over its own etcd with 2
VMs a node, with ``topology.lab`` as ``scripts/netns_setup.sh`` does.  Every VM runs cloud-init's
OpenStack datasource requests in a loop, and TCP and UDP streams run between VMs of a node and
across the cloud's nodes, every request and exchange a timestamped sample (``chaosrun.load``).
Then, in turn, with a quiet time after each: SIGKILL of a dataplane worker, of the proxy process
and of the agent (on the single node and on the cloud's node 2), of nova-metadata and of etcd,
each restarted as the lab restarts it; every proxy delaying Nova's requests by fault injection;
the cloud's node 3 removed and a node added in its place.  For each: the time until every VM is
served again, the failures inside that window and outside any; then the leak checks (processes,
taps, NFQUEUE queues, nftables, BPF programs and maps, flows, NAT ports, etcd keys) and the
counters.  Everything is removed at the end, on failure and on SIGINT/SIGTERM too.

Exit status: 0 if every VM was served again after every fault, nothing failed outside a window
and nothing leaked; 1 otherwise; 2 for a usage error.  Counters that went down are reported, not
failed (a restarted worker's or agent's counters start from zero: see docs/reliability.md).
All traffic stays in the labs' namespaces.  About 2 to 3 minutes a datapath (docs/reliability.md#chaos).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import signal
import sys
import time
from types import FrameType

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from scripts.chaosrun.faults import FAULTS  # noqa: E402 - after the path
from scripts.chaosrun.report import details, table  # noqa: E402
from scripts.chaosrun.run import Options, run  # noqa: E402


class Interrupted(BaseException):
    """SIGINT, SIGTERM or SIGHUP: the run stops, and its labs are removed (a BaseException, as
    KeyboardInterrupt is, so that no ``except Exception`` of a fault or a check takes it for a
    failure of its own and goes on)."""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datapath", choices=("nfqueue", "ebpf", "both"), default="both")
    ap.add_argument("--prefix", default="ch" + secrets.token_hex(2), help="at most 7 lowercase letters and digits (default: ch + 4 random)")
    ap.add_argument("--json", help="write the report to this file")
    ap.add_argument("--fault-seconds", type=float, default=5.0, help="how long a restarted daemon stays down, Nova slow, the node away (5)")
    ap.add_argument("--quiet-seconds", type=float, default=5.0, help="after each recovery, seconds in which nothing may fail (5)")
    ap.add_argument("--vms", type=int, default=16, help="VMs of the single node (16)")
    ap.add_argument("--faults", default=",".join(n for n, _ in FAULTS), help="which faults, in their order (default: all)")
    args = ap.parse_args()
    if not re.fullmatch(r"[a-z][a-z0-9]{0,6}", args.prefix):
        ap.error("--prefix %s: 1 to 7 lowercase letters and digits, starting with a letter" % args.prefix)
    faults = tuple(f.strip() for f in args.faults.split(",") if f.strip())
    unknown = set(faults) - {n for n, _ in FAULTS}
    if unknown:
        ap.error("--faults: unknown %s (known: %s)" % (", ".join(sorted(unknown)), ", ".join(n for n, _ in FAULTS)))
    if not 1 <= args.fault_seconds <= 60 or not 1 <= args.quiet_seconds <= 60 or not 2 <= args.vms <= 64:
        ap.error("--fault-seconds and --quiet-seconds: 1 to 60; --vms: 2 to 64")
    if os.geteuid() != 0:
        print("chaos: needs root (network namespaces)", file=sys.stderr)
        return 2

    stopping: list[int] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        if not stopping:  # once: the labs' removal must not be interrupted in its turn
            stopping.append(signum)
            raise Interrupted("signal %d" % signum)

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, stop)

    def say(text: str) -> None:
        print("%s %s" % (time.strftime("%H:%M:%S"), text), file=sys.stderr, flush=True)

    opts = Options(fault_seconds=args.fault_seconds, quiet=args.quiet_seconds, vms=args.vms, faults=faults)
    reports = []
    failed = False
    try:
        for datapath in ("nfqueue", "ebpf") if args.datapath == "both" else (args.datapath,):
            out = run(datapath, args.prefix, opts, say)
            reports.append(out)
            failed |= out["failed"]
            print(table(out) + "\n", flush=True)
            print(details(out) + "\n", flush=True)
            if stopping:
                break
    except Interrupted as e:
        print("chaos: interrupted (%s); the labs were removed" % e, file=sys.stderr)
        failed = True
    finally:
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"reports": reports, "failed": failed}, f, indent=2)
    print("chaos %s" % ("FAILED" if failed else "PASSED"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
