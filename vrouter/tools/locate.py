"""Which agent a tool acts on, when the user did not say.

In order: ``--state-dir DIR``; ``--prefix P`` (``/run/vrouter/P``) with
``--node I`` for node I of a cluster of several (``/run/vrouter/P/computeI``;
``--node 1`` of a single node is the node), or, with no ``--node``, run inside
node I's namespace ``P-computeI`` of that same prefix, node I (``ip netns exec
P-compute2 vrouter linklocal list --prefix P`` is node 2's; a ``--prefix`` of
another lab acts on that lab, wherever the tool runs); ``$VROUTER_STATE_DIR``; the node
whose namespace the tool runs in (inside ``P-compute``, prefix P, as ``ip netns
exec P-compute vrouter flow -l`` expects; inside ``P-computeI``, node I of
prefix P); else, outside any node's namespace, the one node that is up (an
agent's socket or flow table in ``/run/vrouter/*`` or ``/run/vrouter/*/compute*``).
With several up, the error names them; with none, the default prefix ``vr``
(whose absence the tool then reports as "no vrouter agent is running").
"""

from __future__ import annotations

import os
import re

from vrouter.agent.paths import DEFAULT_PREFIX, STATE_ROOT, prefix_dir

_COMPUTE_NS = re.compile(r"^(?P<prefix>[a-z][a-z0-9]{0,7})-compute(?P<node>[1-9][0-9]{0,2})?$")


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
    """The prefix of a compute node's namespace name (``P-compute``, ``P-computeI``), or None."""
    m = _COMPUTE_NS.match(name)
    return m.group("prefix") if m else None


def node_of_namespace(name: str) -> tuple[str, int] | None:
    """(prefix, node) of a compute node's namespace name: node 0 for ``P-compute``, I for ``P-computeI``."""
    m = _COMPUTE_NS.match(name)
    return (m.group("prefix"), int(m.group("node") or 0)) if m else None


def node_in_namespace(prefix: str, namespace: str) -> int | None:
    """The node of lab ``prefix`` that a tool run in ``namespace`` is inside: I for its node
    ``P-computeI``; None in a single node's ``P-compute`` (``--prefix P`` is that node already),
    in another lab's node or outside any node."""
    ours = node_of_namespace(namespace)
    return ours[1] if ours and ours[0] == prefix and ours[1] else None


def node_dir(prefix: str, node: int) -> str:
    """The state directory of node ``node`` of ``prefix``: ``P/computeI``; node 0 (or 1 of a single
    node) is ``P`` itself."""
    top = prefix_dir(prefix)
    if node == 0:
        return top
    d = os.path.join(top, "compute%d" % node)
    if node == 1 and not os.path.isdir(d):
        return top
    nodes = node_numbers(top)
    if nodes and node not in nodes:
        raise Ambiguous("prefix %s has no node %d (its nodes: %s)" % (prefix, node, ", ".join(map(str, nodes))))
    return d


def node_numbers(top: str) -> list[int]:
    """The nodes of a cluster's state directory ``top`` (its ``computeI`` directories), in order."""
    try:
        return sorted(int(c[7:]) for c in os.listdir(top) if re.fullmatch(r"compute[0-9]+", c))
    except OSError:
        return []


def _has_agent(d: str) -> bool:
    return any(os.path.exists(os.path.join(d, f)) for f in ("agent.sock", "flows.shm"))


def nodes_up() -> list[str]:
    """The nodes under the state root whose agent has a socket or a flow table: ``P`` for a single
    node, ``P/computeI`` for the nodes of a cluster."""
    root = os.environ.get("VROUTER_STATE_ROOT") or STATE_ROOT
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return []
    up = []
    for n in names:
        if _has_agent(os.path.join(root, n)):
            up.append(n)
        up += ["%s/compute%d" % (n, k) for k in node_numbers(os.path.join(root, n)) if _has_agent(os.path.join(root, n, "compute%d" % k))]
    return up


def state_dir(explicit_dir: str | None, prefix: str | None, single_node: bool = True, node: int | None = None) -> str:
    """The state directory a tool acts on (see the module's text).  ``single_node``: the tools,
    which take ``--prefix P`` inside ``P-computeI`` as node I and fall back to the one node that is
    up; the agent itself does neither."""
    if explicit_dir:
        return explicit_dir
    if prefix:
        if not node and single_node:
            node = node_in_namespace(prefix, current_namespace())
        return node_dir(prefix, node) if node else _one_of(prefix_dir(prefix), prefix)
    env = os.environ.get("VROUTER_STATE_DIR")
    if env:
        return env
    ours = node_of_namespace(current_namespace())
    if ours:
        return node_dir(ours[0], node or ours[1])
    if single_node:
        up = nodes_up()
        prefixes = sorted({u.split("/")[0] for u in up})
        if node and len(prefixes) == 1:
            return node_dir(prefixes[0], node)
        if len(up) == 1:
            return os.path.join(os.path.dirname(prefix_dir("x")), up[0])
        if len(up) > 1:
            raise Ambiguous(
                "%d vrouter nodes are up (%s): say which with --prefix P (and --node I for node I of a cluster), or run the command "
                "inside its compute namespace (ip netns exec P-compute ...)" % (len(up), ", ".join(up))
            )
    return prefix_dir(DEFAULT_PREFIX)


def _one_of(top: str, prefix: str) -> str:
    """``--prefix P`` alone: the node, or, for a cluster of several, an error naming them."""
    if _has_agent(top) or not os.path.isdir(top):
        return top
    nodes = node_numbers(top)
    if not nodes:
        return top
    if len(nodes) == 1:
        return os.path.join(top, "compute%d" % nodes[0])
    raise Ambiguous("prefix %s is a cluster of %d nodes: say which with --node I (%s)" % (prefix, len(nodes), ", ".join(map(str, nodes))))
