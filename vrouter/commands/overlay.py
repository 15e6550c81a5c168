"""``vrouter rt --dump VRF``, ``nh --list|--get ID`` and ``mpls --dump``: the overlay's routes,
next hops and incoming labels (formats: ``vrouter.tools.overlay``, as tf-vrouter's utilities)."""

from __future__ import annotations

import argparse
from typing import Any

from vrouter.commands.output import emit
from vrouter.commands.target import add_target_args, agent_call
from vrouter.messages.control import MplsDump, NhGet, NhList, RouteDump
from vrouter.tools.overlay import format_mpls, format_nh, format_nh_list, format_rt


def add_parsers(sub: Any) -> None:
    rt = sub.add_parser("rt", help="the routes of a VRF (rt --dump VRF)", description="The routing table of a VRF: local VMs and, through "
                        "tunnels, the VMs of its network on other nodes.")  # fmt: skip
    rt.add_argument("--dump", type=int, required=True, metavar="VRF", help="the VRF (vrouter network list shows each network's)")
    rt.add_argument("--family", choices=["inet", "inet6"], default="inet", help="IPv4 routes (the default, as rt's) or IPv6 ones")
    add_target_args(rt)
    rt.set_defaults(func=run_rt)

    nh = sub.add_parser("nh", help="next hops (nh --list, nh --get ID)", description="Next hops: VM interfaces (Encap), tunnels to other "
                        "nodes (Tunnel, MPLS over UDP), vhost0 (Receive), Drop.")  # fmt: skip
    g = nh.add_mutually_exclusive_group(required=True)
    g.add_argument("--list", action="store_true", help="every next hop")
    g.add_argument("--get", type=int, metavar="ID", help="next hop ID")
    add_target_args(nh)
    nh.set_defaults(func=run_nh)

    mp = sub.add_parser("mpls", help="MPLS labels and their next hops (mpls --dump)", description="The MPLS input label map: each local VM "
                        "interface's label and its next hop.")  # fmt: skip
    mp.add_argument("--dump", action="store_true", required=True, help="every label")
    add_target_args(mp)
    mp.set_defaults(func=run_mpls)


def run_rt(args: argparse.Namespace) -> int:
    table = agent_call(args, RouteDump(args.dump))
    emit(table, args.json, format_rt(table, args.family))
    return 0


def run_nh(args: argparse.Namespace) -> int:
    if args.get is not None:
        nh = agent_call(args, NhGet(args.get))
        emit(nh, args.json, format_nh(nh))
    else:
        nhs = agent_call(args, NhList())
        emit(nhs, args.json, format_nh_list(nhs))
    return 0


def run_mpls(args: argparse.Namespace) -> int:
    labels = agent_call(args, MplsDump())
    emit(labels, args.json, format_mpls(labels))
    return 0
