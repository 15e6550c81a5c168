"""``vrouter vif --list|--get N`` and ``vrouter dropstats``: the vRouter's interfaces and the
packets it dropped, by reason (formats: ``vrouter.tools.vif``, ``vrouter.tools.dropstats``)."""

from __future__ import annotations

import argparse
from typing import Any

from vrouter.commands.output import UsageError, emit
from vrouter.commands.target import add_target_args, agent_call
from vrouter.messages.control import DropStatsRequest, VifList
from vrouter.tools.dropstats import format_dropstats
from vrouter.tools.vif import format_vifs


def add_parsers(sub: Any) -> None:
    v = sub.add_parser("vif", help="list the vRouter interfaces", description="List the vRouter interfaces.")
    g = v.add_mutually_exclusive_group(required=True)
    g.add_argument("--list", action="store_true", help="every interface")
    g.add_argument("--get", type=int, metavar="N", help="interface vif0/N")
    add_target_args(v)
    v.set_defaults(func=run_vif)

    d = sub.add_parser("dropstats", help="drop counters by reason", description="Dropped packets, by reason.")
    add_target_args(d)
    d.set_defaults(func=run_dropstats)


def run_vif(args: argparse.Namespace) -> int:
    vifs = agent_call(args, VifList())
    if args.get is not None:
        vifs = [v for v in vifs if v.vif == args.get]
        if not vifs:
            raise UsageError("vif --get %d: no such interface" % args.get)
    emit(vifs if args.get is None else vifs[0], args.json, format_vifs(vifs))
    return 0


def run_dropstats(args: argparse.Namespace) -> int:
    drops = agent_call(args, DropStatsRequest())
    emit(drops.counts, args.json, format_dropstats(drops))
    return 0
