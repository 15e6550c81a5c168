"""``vrouter vifdump -i N``: the packets of one vif as the dataplane sees them, printed or as pcap
(the capture itself: ``vrouter.tools.vifdump``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from infra.procinfo import alive
from vrouter.agent.control import call
from vrouter.commands.output import UsageError
from vrouter.commands.target import add_target_args, paths


def add_parsers(sub: Any) -> None:
    vd = sub.add_parser("vifdump", help="the packets of one vif, printed or as pcap",
                        description="Packets of vif N as the dataplane sees them (both directions, and the agent's ARP, DHCP, DNS "
                        "and ping answers), printed one a line or written as pcap; until -c packets, --duration seconds or Ctrl-C. "
                        "A reader too slow for the dataplane loses packets (counted at the end); it never slows the VMs.")  # fmt: skip
    vd.add_argument("-i", "--interface", type=int, required=True, metavar="N", help="vif0/N")
    vd.add_argument("-w", "--write", metavar="FILE", help="write pcap to FILE (- for stdout) instead of printing")
    vd.add_argument("-c", "--count", type=int, help="stop after this many packets")
    vd.add_argument("--duration", type=float, metavar="S", help="stop after this many seconds")
    vd.add_argument("--rewritten", action="store_true", help="also each NAT packet as on the other side of its rewrite")
    add_target_args(vd)
    vd.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vrouter.tools.vifdump import run as capture

    agent = paths(args)

    def agent_alive() -> bool:
        try:
            with open(agent.pid) as f:
                return alive(int(f.read().strip()))
        except (OSError, ValueError):
            return False

    try:
        return capture(lambda req: call(agent.socket, req), agent_alive, args.interface, args.write, args.count, args.duration, args.rewritten,
                       sys.stdout, sys.stderr)  # fmt: skip
    except ValueError as e:
        raise UsageError(str(e)) from None
    except OSError as e:
        raise UsageError("%s" % e) from None
