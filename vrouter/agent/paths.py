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
    cluster.json      on a node of a cloud: the other nodes' ports and routes as etcd said them

Root's alone: the directory is 0700, and the files that hold what a VM or
the cloud must not learn from another user of the host (the control socket,
which changes everything; the port, network and service files; the cache of
the cloud; Nova's instances, with their user data; an agent.conf, with the
metadata secret) are 0600, made so when they are made (``private``, at
start, puts right those an older agent or a hand left open).  The flow table
and its counts stay readable by root's tools alone through the directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from infra.private import restrict

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
    cluster: str

    @classmethod
    def of(cls, state_dir: str) -> StatePaths:
        j = os.path.join
        return cls(state_dir, j(state_dir, "agent.sock"), j(state_dir, "flows.shm"), j(state_dir, "ports"), j(state_dir, "linklocal.json"),
                   j(state_dir, "agent.pid"), j(state_dir, "networks"), j(state_dir, "instances.json"), j(state_dir, "flows.counts"),
                   j(state_dir, "cluster.json"))  # fmt: skip

    def private(self) -> list[str]:
        """The directory made if need be, then it and the private files in it made root's alone
        (0700, 0600); what had to be put right, as "PATH (was MODE)"."""
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        fixed = [restrict(self.root, 0o700)]
        for d in (self.ports, self.networks):
            fixed.append(restrict(d, 0o700))
            try:
                names = sorted(os.listdir(d))
            except OSError:
                names = []
            fixed += [restrict(os.path.join(d, n), 0o600) for n in names if n.endswith(".json")]
        for f in (self.linklocal, self.cluster, self.instances, os.path.join(self.root, "agent.conf"), self.socket):
            fixed.append(restrict(f, 0o600))
        return [f for f in fixed if f]


def prefix_dir(prefix: str) -> str:
    """The state directory of the node built with ``prefix``."""
    return os.path.join(os.environ.get("VROUTER_STATE_ROOT") or STATE_ROOT, prefix)
