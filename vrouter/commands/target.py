"""Which agent a command acts on, and a request to it.

Every command that acts on a running agent takes the "which agent" options
(``--state-dir``, ``--prefix``, ``--node``) and ``--json``; ``vrouter.tools.locate``
turns them into the agent's state directory, where its control socket, flow table
and pid file are.
"""

from __future__ import annotations

import argparse
from typing import Any

from vrouter.agent.control import call
from vrouter.agent.paths import StatePaths
from vrouter.tools.locate import state_dir as locate_state_dir


def add_target_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("which agent")
    g.add_argument(
        "--state-dir",
        help="the agent's state directory (default: $VROUTER_STATE_DIR, else the node whose namespace this runs in, else the one node that is up)",
    )
    g.add_argument("-p", "--prefix", help="shorthand for --state-dir /run/vrouter/PREFIX (as netns_setup.sh --prefix); run inside node I's "
                   "namespace of that lab (ip netns exec PREFIX-computeI ...), node I; another lab's PREFIX names that lab")  # fmt: skip
    g.add_argument("--node", type=node_number, metavar="I",
                   help="node I of a cluster of several (netns_setup.sh up --nodes K), whatever namespace this runs in")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print JSON")


def node_number(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 999:
        raise argparse.ArgumentTypeError("%r: a node number, 1 to 999" % text)
    return int(text)


def state_dir(args: argparse.Namespace, single_node: bool = True) -> str:
    """The state directory the options name (see ``vrouter.tools.locate``); ``single_node``:
    fall back to the one node that is up, as the tools do (the agent itself does not)."""
    return locate_state_dir(getattr(args, "state_dir", None), getattr(args, "prefix", None), single_node, getattr(args, "node", None))


def paths(args: argparse.Namespace) -> StatePaths:
    """The files of the agent the options name."""
    return StatePaths.of(state_dir(args))


def agent_call(args: argparse.Namespace, request: Any) -> Any:
    """Send ``request`` to the agent the options name; its answer (AgentNotRunning, RequestFailed)."""
    return call(paths(args).socket, request)
