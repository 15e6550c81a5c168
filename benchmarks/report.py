"""benchmarks/run.py's report: each figure's median over the rounds, and the table of the figures
beside their references and targets.

A figure that is not a positive, finite number is a measurement that failed (a reference whose
tool printed nothing, a load that got no answer, a p99 with failed requests in it): its row's
target is not met, whatever the other side measured, and the run lists it and fails."""

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
    t.row("VM-to-VM TCP throughput (Mbit/s)", vm2vm["tcp_mbit"], kvm2vm["tcp_mbit"], "kernel", "-", None, "Mbit/s")
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


def cpu_line(res: dict) -> str:
    return "CPU during the keep-alive run from 1 VM, % of one core (2 cores in all; wrk has the rest; agent: with its workers): " + "; ".join(
        "%s: %s" % (name, ", ".join("%s %d" % kv for kv in res[name]["cpu_keepalive_1vm"].items()))
        for name in ("project", "project1", "haproxy", "kernel")
    )
