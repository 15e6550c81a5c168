"""``vrouter dropstats``: dropped packets by reason, as the vRouter's ``dropstats`` prints them."""

from __future__ import annotations

from vrouter.messages.control import DropStats


def format_dropstats(drops: DropStats) -> str:
    return "\n".join("%-35s %d" % (name, n) for name, n in drops.counts.items())
