"""Which agent a tool acts on, when the user did not say.

In order: ``--state-dir DIR``; ``--prefix P`` (``/run/vrouter/P``);
``$VROUTER_STATE_DIR``; the node whose namespace the tool runs in (inside
``P-compute``, prefix P, as ``ip netns exec P-compute vrouter flow -l``
expects); else, outside any node's namespace, the one node that is up (an
agent's socket or flow table in ``/run/vrouter/*``).  With several up, the
error names them; with none, the default prefix ``vr`` (whose absence the
tool then reports as "no vrouter agent is running").
"""

from __future__ import annotations

import os
import re

from vrouter.agent.paths import DEFAULT_PREFIX, STATE_ROOT, prefix_dir

_COMPUTE_NS = re.compile(r"^(?P<prefix>[a-z][a-z0-9]{0,7})-compute$")


class Ambiguous(Exception):
    """Several nodes are up and nothing says which one is meant."""


def current_namespace() -> str:
    """The name ``ip netns`` gives the network namespace this process is in, or ""."""
    try:
        ours = os.stat("/proc/self/ns/net").st_ino
        for name in sorted(os.listdir("/run/netns")):
            if os.stat("/run/netns/" + name).st_ino == ours:
                return name
    except OSError:
        pass
    return ""


def prefix_of_namespace(name: str) -> str | None:
    """The prefix of a compute node's namespace name (``P-compute``), or None."""
    m = _COMPUTE_NS.match(name)
    return m.group("prefix") if m else None


def nodes_up() -> list[str]:
    """The prefixes under the state root whose agent has a socket or a flow table."""
    root = os.environ.get("VROUTER_STATE_ROOT") or STATE_ROOT
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return []
    return [n for n in names if any(os.path.exists(os.path.join(root, n, f)) for f in ("agent.sock", "flows.shm"))]


def state_dir(explicit_dir: str | None, prefix: str | None, single_node: bool = True) -> str:
    """The state directory a tool acts on (see the module's text).  ``single_node``: fall back to
    the one node that is up (the tools); the agent itself does not."""
    if explicit_dir:
        return explicit_dir
    if prefix:
        return prefix_dir(prefix)
    env = os.environ.get("VROUTER_STATE_DIR")
    if env:
        return env
    ours = prefix_of_namespace(current_namespace())
    if ours:
        return prefix_dir(ours)
    if single_node:
        up = nodes_up()
        if len(up) == 1:
            return prefix_dir(up[0])
        if len(up) > 1:
            raise Ambiguous(
                "%d vrouter nodes are up (%s): say which with --prefix P, or run the command inside its compute namespace "
                "(ip netns exec P-compute ...)" % (len(up), ", ".join(up))
            )
    return prefix_dir(DEFAULT_PREFIX)
