"""Where an agent keeps its state: one directory per compute node.

``/run/vrouter/<prefix>`` for a node built by ``scripts/netns_setup.sh`` (the
prefix names its namespaces: ``<prefix>-compute`` is the node), or any
directory given by ``--state-dir``.  It holds:

    agent.sock        the control socket (``vrouter.agent.control``)
    flows.shm         the flow table (``flows.table``), mapped by the tools
    flows.counts      each dataplane worker's flow count of each vif (``dataplane.linux.layout``)
    ports/<uuid>.json one file per plugged port, written atomically
    linklocal.json    the link-local services, in global-vrouter-config's schema
    networks/<uuid>.json one file per configured virtual network (its IPAM)
    agent.pid         the agent's pid
    instances.json    Nova's instances, for ``vrouter nova-metadata`` (a node built by netns_setup.sh)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

STATE_ROOT = "/run/vrouter"
DEFAULT_PREFIX = "vr"


@dataclass(frozen=True)
class StatePaths:
    root: str
    socket: str
    flows: str
    ports: str
    linklocal: str
    pid: str
    networks: str
    instances: str
    flow_counts: str

    @classmethod
    def of(cls, state_dir: str) -> StatePaths:
        j = os.path.join
        return cls(state_dir, j(state_dir, "agent.sock"), j(state_dir, "flows.shm"), j(state_dir, "ports"), j(state_dir, "linklocal.json"),
                   j(state_dir, "agent.pid"), j(state_dir, "networks"), j(state_dir, "instances.json"), j(state_dir, "flows.counts"))  # fmt: skip


def prefix_dir(prefix: str) -> str:
    """The state directory of the node built with ``prefix``."""
    return os.path.join(os.environ.get("VROUTER_STATE_ROOT") or STATE_ROOT, prefix)
