"""``vrouter metadata log`` and ``vrouter metadata fault add|list|del``: the metadata path per
instance, its journal and the faults injected into it (formats: ``vrouter.tools.metadata``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from vrouter.agent.control import call
from vrouter.commands.output import UsageError, emit
from vrouter.commands.target import add_target_args, agent_call, paths
from vrouter.messages.control import FaultAdd, FaultDel
from vrouter.messages.proxy import FaultList


def add_parsers(sub: Any) -> None:
    m = sub.add_parser("metadata", help="the metadata path per instance: its journal, and faults to inject",
                       description="Read the metadata proxy's request journal, and inject faults into it.")  # fmt: skip
    msub = m.add_subparsers(dest="what", metavar="WHAT", required=True)
    lg = msub.add_parser("log", help="the requests each instance made and what it got",
                         description="The proxy's journal, oldest first: time, vif, instance, VM address, method, path, status, bytes "
                         "each way, Nova's and the whole request's milliseconds, and why the proxy answered itself (rate limit, "
                         "fault, timeout, bad request...). A ring per instance ([METADATA] metadata_journal_size).")  # fmt: skip
    who = lg.add_mutually_exclusive_group()
    who.add_argument("--instance", metavar="UUID", help="only this instance's requests")
    who.add_argument("--vif", type=int, metavar="N", help="only vif0/N's requests")
    lg.add_argument("-f", "--follow", action="store_true", help="then print new entries as they come, until Ctrl-C")
    lg.add_argument("--duration", type=float, metavar="S", help="with --follow: stop after S seconds")
    add_target_args(lg)
    lg.set_defaults(func=run)

    fl = msub.add_parser("fault", help="inject faults into chosen instances' metadata requests",
                         description="Make the proxy misbehave for chosen requests, live: the next request sees a change. The first "
                         "rule (by id) that matches a request applies; every faulted request is marked in the journal.")  # fmt: skip
    fsub = fl.add_subparsers(dest="oper", metavar="OPER", required=True)
    add = fsub.add_parser("add", help="add a rule", description="Add a fault rule: whose requests, which paths, what happens, how long.")
    target = add.add_argument_group("whose requests (one of)")
    target.add_argument("--instance", metavar="UUID", help="one instance's")
    target.add_argument("--vif", type=int, metavar="N", help="vif0/N's")
    target.add_argument("--all", action="store_true", help="every instance's")
    add.add_argument("--path", default="/*", metavar="GLOB", help="request paths it applies to (default /*: all), e.g. '/openstack/*/user_data'")
    effect = add.add_argument_group("what happens (one of)")
    effect.add_argument("--status", type=int, metavar="CODE", help="answered by the proxy with CODE and a body like Nova's")
    effect.add_argument("--delay", type=float, metavar="SECONDS", help="the request waits SECONDS before it goes to Nova")
    effect.add_argument("--throttle", type=int, metavar="BYTES_PER_S", help="the answer's body at BYTES_PER_S")
    effect.add_argument("--reset", action="store_true", help="the connection is reset half-way through the answer's body")
    effect.add_argument("--drop", action="store_true", help="no answer: the connection hangs until the VM gives up (at most 600 s)")
    effect.add_argument("--refuse", action="store_true", help="the connection reset as soon as a request comes: as if there were no metadata service")
    bound = add.add_argument_group("for how long (default: until deleted)")
    bound.add_argument("--count", type=int, metavar="N", help="the first N matching requests")
    bound.add_argument("--for", dest="for_s", type=float, metavar="SECONDS", help="SECONDS from now")
    bound.add_argument("--probability", type=float, metavar="P", help="each matching request with probability P")
    add_target_args(add)
    ls = fsub.add_parser("list", help="the rules in force", description="The rules in force, how often each applied and what is left of it.")
    add_target_args(ls)
    d = fsub.add_parser("del", aliases=["delete"], help="delete a rule", description="Delete a fault rule.")
    d.add_argument("id", type=int, help="the rule's ID (see fault list)")
    add_target_args(d)
    fl.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.what == "log":
        return _log(args)
    return _fault(args)


def _log(args: argparse.Namespace) -> int:
    from vrouter.tools.metadata import follow_log, print_log

    if args.instance is not None and args.vif is not None:
        raise UsageError("log: --instance or --vif, not both")
    if args.duration is not None and not args.follow:
        raise UsageError("log: --duration goes with --follow")
    path = paths(args).socket

    def ask(query: Any) -> Any:
        return call(path, query)

    if args.follow:
        return follow_log(ask, args.instance, args.vif, args.json, args.duration, sys.stdout)
    return print_log(ask, args.instance, args.vif, args.json, sys.stdout)


def _fault(args: argparse.Namespace) -> int:
    from vrouter.tools.metadata import format_faults

    if args.oper == "add":
        rule = agent_call(args, FaultAdd(
            args.instance, args.vif, args.all, args.path, args.status, args.delay, args.throttle, args.reset, args.drop, args.count,
            args.for_s, args.probability, args.refuse,
        ))  # fmt: skip
        emit(rule, args.json, "fault %d added\n%s" % (rule.id, format_faults([rule])))
    elif args.oper in ("del", "delete"):
        rule = agent_call(args, FaultDel(args.id))
        emit(rule, args.json, "fault %d deleted (it applied %d times)" % (rule.id, rule.applied))
    else:
        rules = agent_call(args, FaultList())
        emit(rules, args.json, format_faults(rules))
    return 0
