"""benchmarks/run.py's report: each figure's median over the rounds, and the table of the figures
beside their references and targets."""

from __future__ import annotations

import statistics


def median_figures(runs: list[dict]) -> dict:
    """Each figure's median over the rounds; errors are added up (any error fails the run)."""
    out: dict = {}
    for fig in runs[0]:
        out[fig] = {}
        for key in runs[0][fig]:
            values = [r[fig][key] for r in runs]
            out[fig][key] = sum(values) if key in ("errors", "n") else statistics.median(values)
    return out


def num(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.2f}"


def fmt_row(name: str, ours: float, ref: float | None, ref_name: str, target: str, met: bool | None, unit: str) -> str:
    ratio = "%.2fx" % (ours / ref) if ref else "-"
    reference = "%s %s (%s)" % (num(ref), unit, ref_name) if ref else "-"
    verdict = "-" if met is None else ("yes" if met else "**no**")
    return "| %s | %s %s | %s | %s | %s | %s |" % (name, num(ours), unit, reference, ratio, target, verdict)


def table(res: dict, rate: float) -> list[str]:
    """The report's table of the results of one run (what run.py's main gathered)."""
    p, p1, k, h = res["project"], res["project1"], res["kernel"], res["haproxy"]
    one = "one worker"
    spread = res["flows_400k"]["packet_spread_ns"] / res["flows_1k"]["packet_spread_ns"]
    rows = [
        "| figure | this project | reference | ratio | target | met |",
        "| --- | ---: | ---: | ---: | --- | --- |",
        fmt_row("metadata req/s, keep-alive, 1 VM", p["keepalive_1vm"]["rps"], h["keepalive_1vm"]["rps"], "haproxy", ">= 1.5x haproxy",
                p["keepalive_1vm"]["rps"] >= 1.5 * h["keepalive_1vm"]["rps"], "/s"),
        fmt_row("metadata req/s, keep-alive, 8 VMs", p["keepalive_8vm"]["rps"], h["keepalive_8vm"]["rps"], "haproxy", ">= 1.5x haproxy",
                p["keepalive_8vm"]["rps"] >= 1.5 * h["keepalive_8vm"]["rps"], "/s"),
        fmt_row("  (kernel DNAT, keep-alive, 8 VMs)", p["keepalive_8vm"]["rps"], k["keepalive_8vm"]["rps"], "kernel", "-", None, "/s"),
        fmt_row("  (%d dataplane workers against one, keep-alive, 8 VMs)" % res["workers"], p["keepalive_8vm"]["rps"],
                p1["keepalive_8vm"]["rps"], one, "-", None, "/s"),
        fmt_row("new metadata connections/s", p["new_conn"]["rps"], k["new_conn"]["rps"], "kernel", ">= 0.5x kernel",
                p["new_conn"]["rps"] >= 0.5 * k["new_conn"]["rps"], "/s"),
        fmt_row("  (haproxy, new connections/s)", p["new_conn"]["rps"], h["new_conn"]["rps"], "haproxy", ">= 1.0x haproxy",
                p["new_conn"]["rps"] >= h["new_conn"]["rps"], "/s"),
        fmt_row("  (%d dataplane workers against one, new connections/s)" % res["workers"], p["new_conn"]["rps"], p1["new_conn"]["rps"],
                one, "-", None, "/s"),
        fmt_row("latency p50 at %d req/s (ms)" % rate, p["latency"]["p50_ms"], h["latency"]["p50_ms"], "haproxy", "-", None, "ms"),
        fmt_row("latency p99 at %d req/s (ms)" % rate, p["latency"]["p99_ms"], h["latency"]["p99_ms"], "haproxy", "<= 1.0x haproxy",
                p["latency"]["p99_ms"] <= h["latency"]["p99_ms"], "ms"),
        fmt_row("VM-to-VM small UDP packets/s (iperf3 -u -l 64 -b 0)", res["project_vm2vm"]["iperf3_udp_pps"],
                res["kernel_vm2vm"]["iperf3_udp_pps"], "kernel", ">= 0.5x kernel",
                0 < res["project_vm2vm"]["iperf3_udp_pps"] >= 0.5 * res["kernel_vm2vm"]["iperf3_udp_pps"], "/s"),
        fmt_row("  (accept-only NFQUEUE consumer, no dataplane; iperf3)", res["project_vm2vm"]["iperf3_udp_pps"],
                res["floor_vm2vm"]["iperf3_udp_pps"], "floor", "-", None, "/s"),
        fmt_row("  (%d dataplane workers against one; iperf3)" % res["workers"], res["project_vm2vm"]["iperf3_udp_pps"],
                res["project1_vm2vm"]["iperf3_udp_pps"], one, "-", None, "/s"),
        fmt_row("VM-to-VM small UDP packets/s (Python sender)", res["project_vm2vm"]["udp_pps"], res["kernel_vm2vm"]["udp_pps"], "kernel",
                "-", None, "/s"),
        fmt_row("  (accept-only NFQUEUE consumer, no dataplane)", res["project_vm2vm"]["udp_pps"], res["floor_vm2vm"]["udp_pps"], "floor", "-",
                None, "/s"),
        fmt_row("VM-to-VM TCP throughput (Mbit/s)", res["project_vm2vm"]["tcp_mbit"], res["kernel_vm2vm"]["tcp_mbit"], "kernel", "-", None, "Mbit/s"),
        fmt_row("flow lookup, 400K live flows (ns)", res["flows_400k"]["lookup_ns"], res["flows_1k"]["lookup_ns"], "1K flows",
                "- (retired)", None, "ns"),
        fmt_row("  (lookup among the same 1,000 flows, 400K live)", res["flows_400k"]["lookup_same_set_ns"],
                res["flows_1k"]["lookup_same_set_ns"], "1K flows", "-", None, "ns"),
        fmt_row("per-packet path, packets spread over all live flows (ns)", res["flows_400k"]["packet_spread_ns"],
                res["flows_1k"]["packet_spread_ns"], "1K flows", "<= 1.5x 1K", spread <= 1.5, "ns"),
        fmt_row("flow setup (pair), 400K live flows (ns)", res["flows_400k"]["setup_ns"], res["flows_1k"]["setup_ns"], "1K flows", "-", None, "ns"),
        fmt_row("agent + proxy process memory, RSS (KiB)", res["agent_rss_kib"], None, "", "-", None, "KiB"),
    ]  # fmt: skip
    fair = res["fairness"]
    for kind, label in (("syn", "a SYN flood to 169.254.169.254"), ("udp", "a UDP flood to it"), ("ping", "a ping flood to it")):
        f = fair[kind]
        ok = f["failed"] == 0 and f["ping_lost"] == 0 and f["p99_ms"] < 100
        name = "another VM's metadata p99 (new connections) during %s (%d failed of %d, %d%% pings lost)" % (
            label, f["failed"], f["n"], f["ping_lost"])  # fmt: skip
        rows.append(fmt_row(name, f["p99_ms"], fair["none"]["p99_ms"], "no flood", "< 100 ms, none failed or lost", ok, "ms"))
    return rows


def cpu_line(res: dict) -> str:
    return "CPU during the keep-alive run from 1 VM, % of one core (2 cores in all; wrk has the rest; agent: with its workers): " + "; ".join(
        "%s: %s" % (name, ", ".join("%s %d" % kv for kv in res[name]["cpu_keepalive_1vm"].items()))
        for name in ("project", "project1", "haproxy", "kernel")
    )
