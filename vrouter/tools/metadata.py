"""``vrouter metadata log`` and ``vrouter metadata fault``: the metadata path per instance.

The journal and the fault rules live in the agent's metadata proxy process;
these read them through the agent's control socket.  ``log --follow`` asks
for the entries after the last it printed, four times a second.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import TextIO

from vrouter.messages.proxy import FaultRecord, JournalEntry, JournalPage, JournalQuery
from vrouter.messages.wire import to_json
from vrouter.services.metadata.faults import effect_text

PAGE = 1000
FOLLOW_INTERVAL = 0.25
HEADER = "%-23s %-7s %-36s %-15s %-6s %-44s %6s %6s %7s %8s %8s  %s" % (
    "time", "vif", "instance", "vm ip", "method", "path", "status", "in", "out", "nova ms", "total ms", "note",
)  # fmt: skip


def format_entry(e: JournalEntry) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.time)) + ".%03d" % (e.time % 1 * 1000)
    note = e.reason
    if e.fault:
        note = "fault %d" % e.fault if note in ("", "fault") else "fault %d, %s" % (e.fault, note)
    return "%-23s %-7s %-36s %-15s %-6s %-44s %6s %6d %7d %7s %8.1f  %s" % (
        stamp, "vif0/%d" % e.vif if e.vif else "-", e.instance or "(unknown)", e.vm_ip, e.method, e.path,
        e.status or "-", e.bytes_in, e.bytes_out, "%.1f" % e.nova_ms if e.nova_ms >= 0 else "-", e.total_ms, note,
    )  # fmt: skip


Ask = Callable[[JournalQuery], JournalPage]


def print_log(ask: Ask, instance: str | None, vif: int | None, as_json: bool, out: TextIO) -> int:
    """The whole journal (of one instance or vif), oldest first."""
    since, n = 0, 0
    if not as_json:
        out.write(HEADER + "\n")
    entries: list[JournalEntry] = []
    while True:
        page = ask(JournalQuery(since, instance, vif, PAGE))
        entries.extend(page.entries)
        n += len(page.entries)
        if not as_json:
            for e in page.entries:
                out.write(format_entry(e) + "\n")
        if len(page.entries) < PAGE:
            break
        since = page.entries[-1].seq
    if as_json:
        out.write(json.dumps(to_json(entries), indent=2) + "\n")
    elif page.dropped:
        out.write("(%d older entries were dropped from full rings: [METADATA] metadata_journal_size, metadata_journal_node_size)\n" % page.dropped)
    return 0


def follow_log(ask: Ask, instance: str | None, vif: int | None, as_json: bool, duration: float | None, out: TextIO) -> int:
    """What is in the journal, then each new entry as it comes (JSON: one object a line), until
    ``duration`` seconds pass or Ctrl-C."""
    deadline = None if duration is None else time.monotonic() + duration
    since = 0
    if not as_json:
        out.write(HEADER + "\n")
    try:
        while True:
            page = ask(JournalQuery(since, instance, vif, PAGE))
            if page.last < since:  # the proxy process restarted: its journal is new
                sys.stderr.write("(the metadata proxy process restarted: its journal starts again)\n")
                since = 0
                continue
            for e in page.entries:
                out.write(json.dumps(to_json(e)) + "\n" if as_json else format_entry(e) + "\n")
            if page.entries:
                since = page.entries[-1].seq
                out.flush()
                if len(page.entries) == PAGE:
                    continue
            else:  # none of ours up to the newest: the next look starts there
                since = max(since, page.last)
            if deadline is not None and time.monotonic() >= deadline:
                return 0
            time.sleep(FOLLOW_INTERVAL if deadline is None else max(0.0, min(FOLLOW_INTERVAL, deadline - time.monotonic())))
    except KeyboardInterrupt:
        return 0


def format_faults(rules: list[FaultRecord]) -> str:
    if not rules:
        return "no metadata faults in force"
    rows = ["%-4s %-45s %-40s %-18s %-8s %s" % ("id", "target", "path", "effect", "applied", "bound")]
    for r in rules:
        rows.append("%-4d %-45s %-40s %-18s %-8d %s" % (r.id, r.target, r.path, effect_text(r), r.applied, bound_text(r)))
    return "\n".join(rows)


def bound_text(r: FaultRecord) -> str:
    bounds = []
    if r.count:
        bounds.append("%d of %d" % (r.applied, r.count))
    if r.left_s is not None:
        bounds.append("%.0f s left of %g" % (r.left_s, r.for_s))
    if r.probability < 1:
        bounds.append("probability %g" % r.probability)
    return ", ".join(bounds) or "until deleted"
