"""benchmarks/run.py's report: each figure's median over the rounds, and the tables of the figures
beside their references and targets: the nfqueue datapath's (``table``, with the targets of the
dataplane issue) and the two datapaths side by side (``datapaths_table``, with the ebpf
datapath's targets).

A figure that is not a positive, finite number is a measurement that failed (a reference whose
tool printed nothing, a load that got no answer, a p99 with failed requests in it): its row's
target is not met, whatever the other side measured, and the run lists it and fails.  The agent's
CPU time is the one figure that may be zero (the ebpf datapath forwards live flows without it):
only a figure that is missing or not finite fails there."""

from __future__ import annotations

import math
import statistics

from benchmarks.clients import FLOOD_MIN_PPS


def median_figures(runs: list[dict]) -> dict:
    """Each figure's median over the rounds; errors are added up (any error fails the run)."""
    out: dict = {}
    for fig in runs[0]:
        out[fig] = {}
        for key in runs[0][fig]:
            values = [r[fig][key] for r in runs]
            out[fig][key] = sum(values) if key in ("errors", "n") else statistics.median(values)
    return out


def measured(x: float | None) -> bool:
    """Whether ``x`` is a figure at all: a positive, finite number."""
    return x is not None and math.isfinite(x) and x > 0


def meets(ours: float, ref: float, factor: float, at_most: bool = False) -> bool:
    """``ours >= factor x ref`` (``<=`` with ``at_most``); never met when either side failed."""
    if not (measured(ours) and measured(ref)):
        return False
    return ours <= factor * ref if at_most else ours >= factor * ref


def num(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.2f}"


def fmt_row(name: str, ours: float, ref: float | None, ref_name: str, target: str, met: bool | None, unit: str) -> str:
    ratio = "%.2fx" % (ours / ref) if measured(ours) and measured(ref) else "-"
    reference = "%s %s (%s)" % (num(ref), unit, ref_name) if ref is not None else "-"
    verdict = "-" if met is None else ("yes" if met else "**no**")
    return "| %s | %s %s | %s | %s | %s | %s |" % (name, num(ours), unit, reference, ratio, target, verdict)


class Table:
    """The rows of the report, and the measurements that failed in them."""

    def __init__(self) -> None:
        self.rows = ["| figure | this project | reference | ratio | target | met |", "| --- | ---: | ---: | ---: | --- | --- |"]
        self.failed: list[str] = []

    def row(self, name: str, ours: float, ref: float | None, ref_name: str, target: str, met: bool | None, unit: str) -> None:
        for side, x in (("this project", ours), (ref_name, ref)):
            if x is not None and not measured(x):
                self.failed.append("%s: %s measured %s" % (name.strip(), side, x))
        self.rows.append(fmt_row(name, ours, ref, ref_name, target, met, unit))


def table(res: dict, rate: float) -> Table:
    """The report's table of the results of one run (what run.py's main gathered)."""
    p, p1, k, h = res["project"], res["project1"], res["kernel"], res["haproxy"]
    vm2vm, kvm2vm, floor, one_vm2vm = res["project_vm2vm"], res["kernel_vm2vm"], res["floor_vm2vm"], res["project1_vm2vm"]
    # iperf3's figures are measured each round (medians); the Python senders', the floor's and
    # one worker's in the first round only
    vm2vm = {**vm2vm, **p["vm2vm"]}
    kvm2vm = {**kvm2vm, **k["vm2vm"]}
    f1k, f400k = res["flows_1k"], res["flows_400k"]
    one = "one worker"
    workers = res["workers"]
    spread = f400k["packet_spread_ns"] / f1k["packet_spread_ns"] if measured(f1k["packet_spread_ns"]) else math.inf
    t = Table()
    # fmt: off
    t.row("metadata req/s, keep-alive, 1 VM", p["keepalive_1vm"]["rps"], h["keepalive_1vm"]["rps"], "haproxy", ">= 1.5x haproxy",
          meets(p["keepalive_1vm"]["rps"], h["keepalive_1vm"]["rps"], 1.5), "/s")
    t.row("metadata req/s, keep-alive, 8 VMs", p["keepalive_8vm"]["rps"], h["keepalive_8vm"]["rps"], "haproxy", ">= 1.5x haproxy",
          meets(p["keepalive_8vm"]["rps"], h["keepalive_8vm"]["rps"], 1.5), "/s")
    t.row("  (kernel DNAT, keep-alive, 8 VMs)", p["keepalive_8vm"]["rps"], k["keepalive_8vm"]["rps"], "kernel", "-", None, "/s")
    t.row("  (%d dataplane workers against one, keep-alive, 8 VMs)" % workers, p["keepalive_8vm"]["rps"],
          p1["keepalive_8vm"]["rps"], one, "-", None, "/s")
    t.row("new metadata connections/s", p["new_conn"]["rps"], k["new_conn"]["rps"], "kernel", ">= 0.5x kernel",
          meets(p["new_conn"]["rps"], k["new_conn"]["rps"], 0.5), "/s")
    t.row("  (haproxy, new connections/s)", p["new_conn"]["rps"], h["new_conn"]["rps"], "haproxy", ">= 1.0x haproxy",
          meets(p["new_conn"]["rps"], h["new_conn"]["rps"], 1.0), "/s")
    t.row("  (%d dataplane workers against one, new connections/s)" % workers, p["new_conn"]["rps"], p1["new_conn"]["rps"],
          one, "-", None, "/s")
    t.row("latency p50 at %d req/s (ms)" % rate, p["latency"]["p50_ms"], h["latency"]["p50_ms"], "haproxy", "-", None, "ms")
    t.row("latency p99 at %d req/s (ms)" % rate, p["latency"]["p99_ms"], h["latency"]["p99_ms"], "haproxy", "<= 1.0x haproxy",
          meets(p["latency"]["p99_ms"], h["latency"]["p99_ms"], 1.0, at_most=True), "ms")
    t.row("VM-to-VM small UDP packets/s (iperf3 -u -l 64 -b 0)", vm2vm["iperf3_udp_pps"], kvm2vm["iperf3_udp_pps"], "kernel",
          ">= 0.5x kernel", meets(vm2vm["iperf3_udp_pps"], kvm2vm["iperf3_udp_pps"], 0.5), "/s")
    t.row("  (accept-only NFQUEUE consumer, no dataplane; iperf3)", vm2vm["iperf3_udp_pps"], floor["iperf3_udp_pps"], "floor", "-",
          None, "/s")
    t.row("  (%d dataplane workers against one; iperf3)" % workers, vm2vm["iperf3_udp_pps"], one_vm2vm["iperf3_udp_pps"], one, "-",
          None, "/s")
    t.row("VM-to-VM small UDP packets/s (Python sender)", vm2vm["udp_pps"], kvm2vm["udp_pps"], "kernel", "-", None, "/s")
    t.row("  (accept-only NFQUEUE consumer, no dataplane)", vm2vm["udp_pps"], floor["udp_pps"], "floor", "-", None, "/s")
    t.row("VM-to-VM TCP throughput (Mbit/s, Python sender)", vm2vm["tcp_mbit"], kvm2vm["tcp_mbit"], "kernel", "-", None, "Mbit/s")
    t.row("flow lookup, 400K live flows (ns)", f400k["lookup_ns"], f1k["lookup_ns"], "1K flows", "- (retired)", None, "ns")
    t.row("  (lookup among the same 1,000 flows, 400K live)", f400k["lookup_same_set_ns"], f1k["lookup_same_set_ns"], "1K flows", "-",
          None, "ns")
    t.row("per-packet path, packets spread over all live flows (ns)", f400k["packet_spread_ns"], f1k["packet_spread_ns"], "1K flows",
          "<= 1.5x 1K", measured(f400k["packet_spread_ns"]) and spread <= 1.5, "ns")
    t.row("flow setup (pair), 400K live flows (ns)", f400k["setup_ns"], f1k["setup_ns"], "1K flows", "-", None, "ns")
    t.row("agent + proxy process memory, RSS (KiB)", res["agent_rss_kib"], None, "", "-", None, "KiB")
    fair = res["fairness"]
    for kind, label in (("syn", "a SYN flood to 169.254.169.254"), ("udp", "a UDP flood to it"), ("ping", "a ping flood to it")):
        f = fair[kind]
        flood_ran = f["flood_running"] and f["flood_pps"] >= FLOOD_MIN_PPS
        if not flood_ran:
            t.failed.append("the %s flood did not run (%s; %d packets/s at vm1's vif)" % (
                kind, "hping3 was still flooding" if f["flood_running"] else "hping3 had exited", f["flood_pps"]))
        ok = flood_ran and f["failed"] == 0 and f["ping_lost"] == 0 and f["p99_ms"] < 100
        name = "another VM's metadata p99 (new connections) during %s of %s packets/s (%d failed of %d, %d%% pings lost)" % (
            label, num(f["flood_pps"]), f["failed"], f["n"], f["ping_lost"])
        t.row(name, f["p99_ms"], fair["none"]["p99_ms"], "no flood", "< 100 ms, none failed or lost", ok, "ms")
    # fmt: on
    return t


# The vRouter agent's published flow set-up rates (flows a second), beside the engine's
PUBLISHED_NAT = (4200, 7500)
PUBLISHED_POLICY = (6000, 10000)


class SideBySide:
    """The two datapaths side by side: each figure beside its reference, with the ebpf
    datapath's target; a datapath that was not measured has "-" in its columns.

    Figures are medians over the rounds.  A ratio to a reference measured in the same rounds is
    the median of each round's ratio (the datapath's figure over the reference's of that round:
    the machine's speed drifts between rounds, and a median of each side alone can pair a fast
    round with a slow one); the target is checked on that ratio."""

    def __init__(self, datapaths: list[str]) -> None:
        self.datapaths = datapaths
        self.rows = [
            "| figure | reference | nfqueue | ratio | ebpf | ratio | target (ebpf) | met |",
            "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
        ]
        self.failed: list[str] = []

    def row(self, name: str, ref: float | tuple[int, int] | None, ref_name: str, ours: dict[str, float | None], unit: str,
            target: str = "-", factor: float = 0.0, at_most: bool = False, cpu: bool = False,
            ratios: dict[str, float | None] | None = None, bad_rounds: dict[str, list[int]] | None = None) -> None:  # fmt: skip
        """``ours``: datapath -> figure (None: not measured in this run). ``ref``: a figure, a
        published range (low, high), or None.  ``ratios``: datapath -> the median of the rounds'
        ratios to ``ref`` (else the ratio of the figures), ``bad_rounds``: datapath -> the rounds
        in which either side measured nothing.  With ``factor`` the ebpf datapath's ratio must be
        ``>= factor`` (``<=`` with ``at_most``); ``cpu``: the figure may be zero."""
        failed = len(self.failed)
        if isinstance(ref, tuple):
            reference = "%s-%s %s (%s)" % (num(ref[0]), num(ref[1]), unit, ref_name)
        elif ref is not None:
            reference = "%s %s (%s)" % (num(ref), unit, ref_name)
            if not measured(ref):
                self.failed.append("%s: %s measured %s" % (name, ref_name, ref))
        else:
            reference = "-"
        cells = []
        ebpf_ratio = None
        for dp in ("nfqueue", "ebpf"):
            x = ours.get(dp)
            if dp not in self.datapaths or x is None:
                cells += ["-", "-"]
                continue
            ok = x is not None and math.isfinite(x) and (x >= 0 if cpu else x > 0)
            if not ok:
                self.failed.append("%s: %s measured %s" % (name, dp, x))
            bad = (bad_rounds or {}).get(dp)
            if bad:
                self.failed.append("%s: %s or %s measured nothing in round %s" % (name, dp, ref_name, ", ".join(map(str, bad))))
            if ratios is not None:
                r = ratios.get(dp)
            else:
                r = x / ref if isinstance(ref, (int, float)) and measured(x) and measured(ref) else None
            if isinstance(ref, tuple) and measured(x):
                ratio = "%.2f-%.2fx" % (x / ref[1], x / ref[0])
            else:
                ratio = "%.2fx" % r if r is not None else "-"
            if dp == "ebpf":
                ebpf_ratio = r
            cells += ["%.1f%s" % (x, unit) if cpu else "%s %s" % (num(x), unit), ratio]
        if len(self.failed) > failed:  # a measurement of this row failed: so does the row
            verdict = "**no**" if factor else "**failed**"
        elif not factor:
            verdict = "-"
        elif "ebpf" not in self.datapaths:
            verdict = "- (not measured)"
        else:
            met = ebpf_ratio is not None and (ebpf_ratio <= factor if at_most else ebpf_ratio >= factor)
            verdict = "yes" if met else "**no**"
        self.rows.append("| %s | %s | %s | %s | %s |" % (name, reference, " | ".join(cells), target, verdict))


def paired(ours: list[dict], refs: list[dict], group: str, key: str) -> tuple[float | None, list[int]]:
    """The median over the rounds of ``ours``' figure over ``refs``' of the same round, and the
    rounds (from 1) in which either side measured nothing (then no ratio)."""
    pairs = [(o[group][key], f[group][key]) for o, f in zip(ours, refs, strict=True)]
    bad = [i + 1 for i, (x, y) in enumerate(pairs) if not (measured(x) and measured(y))]
    if bad or not pairs:
        return None, bad
    return statistics.median(x / y for x, y in pairs), []


def datapaths_table(res: dict, rate: float) -> SideBySide:
    """Both datapaths (those measured) beside the references, with the ebpf datapath's targets."""
    dps = res["datapaths"]
    runs = res["runs"]
    config = {"nfqueue": "project", "ebpf": "ebpf"}
    of = {dp: res.get(c) for dp, c in config.items()}

    def fig(group: str, key: str) -> dict[str, float | None]:
        return {dp: (r[group].get(key) if r else None) for dp, r in of.items()}

    t = SideBySide(dps)

    def against(name: str, ref_config: str, ref_name: str, group: str, key: str, unit: str, target: str = "-", factor: float = 0.0,
                at_most: bool = False) -> None:  # fmt: skip
        ratios: dict[str, float | None] = {}
        bad: dict[str, list[int]] = {}
        for dp, c in config.items():
            if c in runs:
                ratios[dp], bad[dp] = paired(runs[c], runs[ref_config], group, key)
        t.row(name, res[ref_config][group][key], ref_name, fig(group, key), unit, target, factor, at_most, ratios=ratios, bad_rounds=bad)

    fs = res.get("flow_setup", {})
    idle = res.get("idle_cpu", {})
    # fmt: off
    against("VM-to-VM small UDP packets/s (iperf3 -u -l 64 -b 0)", "kernel", "kernel", "vm2vm", "iperf3_udp_pps", "/s", ">= 0.9x kernel", 0.9)
    against("VM-to-VM TCP throughput (iperf3)", "kernel", "kernel", "vm2vm", "iperf3_tcp_mbit", "Mbit/s", ">= 0.7x kernel", 0.7)
    t.row("agent CPU during the small UDP run (% of one core)", None, "", fig("vm2vm", "agent_cpu_udp"), "%", "near zero (reported)", cpu=True)
    t.row("agent CPU during the TCP run (% of one core)", None, "", fig("vm2vm", "agent_cpu_tcp"), "%", "near zero (reported)", cpu=True)
    t.row("  (agent CPU with no traffic, % of one core)", None, "", {dp: idle.get(dp) for dp in of}, "%", cpu=True)
    against("metadata req/s, keep-alive, 1 VM", "haproxy", "haproxy", "keepalive_1vm", "rps", "/s", ">= 1.5x haproxy", 1.5)
    against("metadata req/s, keep-alive, 8 VMs", "haproxy", "haproxy", "keepalive_8vm", "rps", "/s", ">= 1.5x haproxy", 1.5)
    against("new metadata connections/s", "haproxy", "haproxy", "new_conn", "rps", "/s", ">= 1.0x haproxy", 1.0)
    against("new metadata connections/s, against kernel DNAT", "kernel", "kernel DNAT", "new_conn", "rps", "/s", ">= 0.6x kernel DNAT", 0.6)
    for who in ("agent", "proxy"):
        per_conn = {dp: r["cpu_new_conn"][who] / 100 / r["new_conn"]["rps"] * 1e6 if r and measured(r["new_conn"]["rps"]) else None
                    for dp, r in of.items()}  # fmt: skip
        t.row("  (%s CPU per new connection, µs)" % who, None, "", per_conn, "µs")
    against("latency p50 at %d req/s" % rate, "haproxy", "haproxy", "latency", "p50_ms", "ms")
    against("latency p99 at %d req/s" % rate, "haproxy", "haproxy", "latency", "p99_ms", "ms", "<= 1.0x haproxy", 1.0, at_most=True)
    t.row("flows set up/s by the Python engine, a VM's new UDP 5-tuples to another VM (pairs)", PUBLISHED_POLICY,
          "vRouter agent, policy flows", {dp: fs[dp]["setups_per_s"] if dp in fs else None for dp in of}, "/s")
    t.row("  (agent CPU meanwhile, % of one core)", None, "", {dp: fs[dp]["agent_cpu"] if dp in fs else None for dp in of}, "%",
          cpu=True)
    t.row("metadata NAT flows set up/s over the new-connection run (pairs)", PUBLISHED_NAT, "vRouter agent, NAT flows",
          fig("new_conn", "nat_setups_per_s"), "/s")
    t.row("agent + proxy process memory, RSS", None, "", {"nfqueue": res.get("agent_rss_kib"), "ebpf": res.get("ebpf_rss_kib")}, "KiB")
    # fmt: on
    return t


def cpu_line(res: dict) -> str:
    """CPU of the processes on the metadata path, % of one core, during the keep-alive run from 1
    VM and during the new-connection run from 4 (agent: with its dataplane workers)."""
    names = [n for n in ("project", "project1", "ebpf", "haproxy", "kernel") if n in res]
    label = {"project": "nfqueue", "project1": "nfqueue, one worker"}
    lines = []
    for key, what in (("cpu_keepalive_1vm", "the keep-alive run from 1 VM"), ("cpu_new_conn", "the new-connection run from 4 VMs")):
        lines.append("CPU during %s, %% of one core (2 cores in all; wrk has the rest; agent: with its workers): " % what + "; ".join(
            "%s: %s" % (label.get(name, name), ", ".join("%s %d" % kv for kv in res[name][key].items())) for name in names))  # fmt: skip
    return "\n".join(lines)
