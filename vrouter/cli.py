"""The ``vrouter`` command line.

    vrouter agent            run the agent and dataplane (in the compute namespace)
    vrouter nova-metadata    run the Nova-compatible metadata API
    vrouter port add|del|list
    vrouter linklocal add|del|list
    vrouter network add|del|list   a virtual network's IPAM (DHCP, DNS, gateway)
    vrouter flow -l          list the flow table
    vrouter vif --list       list the interfaces
    vrouter dropstats        drop counters by reason
    vrouter status           is the agent up, and how is it doing
    vrouter introspect PATH  a page of the agent's introspect (port 8085) as text
    vrouter metadata log     what each instance asked the metadata service, and got
    vrouter metadata fault add|list|del   make the metadata path misbehave, per instance
    vrouter instance set     change an instance's metadata while its node runs
    vrouter vifdump -i N     the packets of one vif, printed or as pcap
    vrouter rt --dump VRF    the routes of a VRF (local VMs, and VMs on other nodes by tunnel)
    vrouter nh --list|--get ID   next hops (interfaces, tunnels)
    vrouter mpls --dump      MPLS labels to next hops

Every command but ``agent``, ``nova-metadata`` and ``instance`` acts on a running agent,
found through its state directory: ``--state-dir``, ``--prefix P`` for
``/run/vrouter/P`` (with ``--node I``: node I of a cluster; without, run inside
node I's namespace ``P-computeI``: node I), $VROUTER_STATE_DIR, else the node whose
namespace the command runs in (``P-compute``, ``P-computeI``), else the one node that
is up (see ``vrouter.tools.locate``).

Each command family is a module of ``vrouter.commands`` (its parser, its run and its
output); this module builds the parser from them and dispatches.
"""

from __future__ import annotations

import argparse
import signal
import sys

from vrouter import __version__
from vrouter.agent.agent import AgentError
from vrouter.agent.config import ConfigError
from vrouter.agent.control import AgentNotRunning, RequestFailed
from vrouter.commands import daemons, flow, instance, introspect, linklocal, metadata, network, overlay, port, status, vif, vifdump
from vrouter.commands.output import UsageError
from vrouter.tools.flow import NoTable
from vrouter.tools.locate import Ambiguous

# in the order ``vrouter --help`` lists their commands
FAMILIES = (daemons, port, linklocal, network, flow, vif, overlay, status, introspect, metadata, instance, vifdump)

# what a command raises for a failure the user can act on: printed as one line, exit status 1
EXPECTED = (AgentNotRunning, RequestFailed, AgentError, ConfigError, UsageError, NoTable, Ambiguous)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vrouter", description="Tungsten Fabric vRouter compute node emulator.")
    parser.add_argument("--version", action="version", version="vrouter " + __version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for family in FAMILIES:
        family.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        # SIGINT ends a capture or a --follow (as it does tcpdump's), even where a non-interactive
        # shell started this command in the background, which ignores SIGINT for it
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return args.func(args)
    except EXPECTED as e:
        print("vrouter %s: %s" % (args.command, e), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
