"""The chaos soak's table (Markdown, so that docs/reliability.md can take it as it is) and its details."""

from __future__ import annotations


def _s(x: float | None) -> str:
    return "-" if x is None else "%.2f" % x


def table(out: dict) -> str:
    """One datapath's rows: fault | down | recovery | after put back | failed inside | outside | leaks."""
    smp = out.get("samples", {})
    lines = [
        "datapath %s: %d samples in %.0f s (%d metadata requests, %d TCP and %d UDP exchanges), %d failed"
        % (out["datapath"], smp.get("total", 0), out.get("seconds", 0), *[smp.get("by_kind", {}).get(k, 0) for k in "mtu"], smp.get("failed", 0)),
        "",
        "| fault | down (s) | recovery (s) | after put back (s) | failed inside: metadata/TCP/UDP | slow | failed outside | leaks |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in out["rows"]:
        inside = r.get("inside")
        leaks = len(r.get("leaks") or [])
        cells = [
            r["name"] + (" (FAILED: %s)" % r["error"][:60] if r.get("error") else ""),
            _s(r.get("down_s")),
            _s(r.get("recovery_s")) if "inside" in r else "-",
            _s(r.get("after_put_back_s")) if "inside" in r else "-",
            "%d/%d/%d" % (inside["m"], inside["t"], inside["u"]) if inside else "-",
            str(r.get("slow", "-")),
            str(len(r.get("outside", []))),
            str(leaks) if leaks else "none",
        ]
        if "inside" in r and r.get("recovery_s") is None:
            cells[2] = "NOT RECOVERED"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def details(out: dict) -> str:
    """What the table counts: targets, notes, leaks, counters that fell, the first failures."""
    lines = []
    for r in out["rows"]:
        said = []
        if r.get("targets"):
            said.append("on " + r["targets"])
        said += r.get("notes", [])
        if r.get("served_last"):
            said.append("served again last: %s" % r["served_last"])
        if r.get("not_served"):
            said.append("never served again: %s" % ", ".join(r["not_served"][:6]))
        said += ["failed inside: %s" % e for e in r.get("errors", [])]
        said += ["LEAK: %s" % x for x in r.get("leaks") or []]
        said += ["counter went down: %s" % x for x in r.get("counters_down") or []]
        said += ["finding: %s" % x for x in r.get("findings") or []]
        said += ["FAILED OUTSIDE a window at %.2f s: %s %s %s" % (o["at_s"], o["kind"], o["subject"], o["detail"]) for o in r.get("outside", [])[:5]]
        if said:
            lines.append("%s:" % r["name"])
            lines += ["  " + s for s in said]
    lines += ["ERROR: %s" % e for e in out.get("errors", [])]
    return "\n".join(lines)
