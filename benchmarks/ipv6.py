"""IPv6 beside IPv4 between two VMs of one node, in each datapath (``make bench-ipv6``).

For each datapath: a node of two VMs (dual stack, static IPv6), then ``--rounds`` rounds of, in
turn, a TCP stream (iperf3) and small UDP packets (iperf3 -u -l 64 -b 0) from vm1 to vm2 over
IPv4 and over IPv6, in the same run; the medians and the ratio IPv6 / IPv4 (what the machine's
speed swings do not move much).  ``--json FILE`` writes the figures.  Everything runs inside the
lab's namespaces, which it removes at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.shell import iperf3_tcp, iperf3_udp  # noqa: E402
from topology.lab import Lab  # noqa: E402
from topology.model import Topology  # noqa: E402


def measure(datapath: str, prefix: str, rounds: int, seconds: float) -> dict[str, float]:
    lab = Lab(prefix, say=lambda text: None)
    if lab.is_up():
        sys.exit("ipv6.py: prefix %s is up already (netns_setup.sh down --prefix %s)" % (prefix, prefix))
    topo = Topology.plan(prefix, 2, lab.state)
    topo.datapath = datapath
    runs: dict[str, list[float]] = {}
    try:
        layout = lab.up(topo)
        a, b = layout["vms"][0], layout["vms"][1]
        for _ in range(rounds):
            for family, dst in (("ipv4", b), ("ipv6", dict(b, ip=b["ipv6"]))):
                runs.setdefault(family + "_tcp_mbit", []).append(iperf3_tcp(a, dst, seconds).get("iperf3_tcp_mbit", 0))
                runs.setdefault(family + "_udp_pps", []).append(iperf3_udp(a, dst, seconds).get("iperf3_udp_pps", 0))
    finally:
        lab.down(quiet=True)
    out = {k: statistics.median(v) for k, v in runs.items()}
    for kind in ("tcp_mbit", "udp_pps"):
        v4 = out["ipv4_" + kind]
        out["ratio_" + kind] = round(out["ipv6_" + kind] / v4, 2) if v4 else 0.0
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datapaths", default="nfqueue,ebpf")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=4)
    ap.add_argument("--prefix", default="bv6")
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("ipv6.py: needs root (network namespaces)")
    if not shutil.which("iperf3"):
        sys.exit("ipv6.py: needs iperf3 (make bench-deps)")
    if not 1 <= args.rounds <= 10 or not 1 <= args.seconds <= 60:
        sys.exit("ipv6.py: --rounds 1..10, --seconds 1..60")
    figures = {dp: measure(dp, args.prefix, args.rounds, args.seconds) for dp in args.datapaths.replace(",", " ").split()}
    print("| datapath | TCP IPv4 Mbit/s | TCP IPv6 Mbit/s | IPv6/IPv4 | 64 B UDP IPv4 pkt/s | IPv6 pkt/s | IPv6/IPv4 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for dp, f in figures.items():
        print("| %s | %.0f | %.0f | %.2fx | %.0f | %.0f | %.2fx |" % (dp, f["ipv4_tcp_mbit"], f["ipv6_tcp_mbit"], f["ratio_tcp_mbit"],
                                                                  f["ipv4_udp_pps"], f["ipv6_udp_pps"], f["ratio_udp_pps"]))  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
