"""``vrouter flow -l|--match|-r``: the live flow table (``vrouter.tools.flow`` maps it and prints
it as the vRouter's ``flow`` does)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from dataplane.core.overlay import TUNNEL_NH_BASE
from vrouter.agent.control import AgentNotRunning, RequestFailed, call
from vrouter.commands.output import UsageError, emit
from vrouter.commands.target import add_target_args, paths
from vrouter.messages.control import NhList


def add_parsers(sub: Any) -> None:
    f = sub.add_parser("flow", help="inspect the flow table", description="Inspect the live flow table.")
    f.add_argument("-l", "--list", action="store_true", help="list every active flow")
    f.add_argument("--match", metavar="IP[:PORT]", help="only flows with this endpoint; terms joined by & must all match")
    f.add_argument("-r", "--follow", action="store_true", help="print new flows as they are set up, until Ctrl-C")
    f.add_argument("--duration", type=float, help="with -r: stop after this many seconds")
    add_target_args(f)
    f.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vrouter.tools.flow import MatchError, entry_dict, follow, format_table, matches, open_table, parse_match

    terms = None
    if args.match:
        try:
            terms = parse_match(args.match)
        except MatchError as e:
            raise UsageError(str(e)) from None
    agent = paths(args)
    if args.follow:
        return follow(agent.flows, 0.2, args.duration, args.json, terms, sys.stdout)
    if not (args.list or terms):
        raise UsageError("say what to do: flow -l, flow --match IP[:PORT] or flow -r (see vrouter flow --help)")
    table = open_table(agent.flows)
    try:
        entries = [e for e in table.dump() if terms is None or matches(e, terms)]
        tunnels = {}
        if any(e.src_nh >= TUNNEL_NH_BASE for e in entries):  # the table holds next hop ids: the agent knows their nodes
            try:
                tunnels = {nh.id: nh.dip for nh in call(agent.socket, NhList(), timeout=2) if nh.type == "Tunnel"}
            except (AgentNotRunning, RequestFailed):
                pass
        emit([entry_dict(e) for e in entries], args.json, format_table(table, entries, tunnels) if not args.json else "")
    finally:
        table.close()
    return 0
