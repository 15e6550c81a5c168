"""The compute nodes of a lab: their namespaces, their agents' configuration, the agents themselves.

One node is ``P-compute`` with its agent's state in the lab's directory;
several are ``P-compute1`` to ``P-computeK``, each agent's state in
``compute1`` to ``computeK`` under it.  Each node's namespace has resolver
files of its own (``/etc/netns/NS/hosts``: the fabric's names for services
given by DNS name).  An agent is ``vrouter agent --config agent.conf
--state-dir DIR`` run in its node's namespace (with ``VROUTER_AGENT_ARGS``
added), started when its control socket answers, stopped by its pidfile.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from topology import netns
from topology.errors import LabError
from topology.model import Topology
from topology.processes import Processes
from topology.state import StateDir
from vrouter.agent.control import AgentNotRunning, RequestFailed, call
from vrouter.messages.control import StatusRequest
from vrouter.tools import locate


def agent_sock(topo: Topology, node: int) -> str:
    """Node ``node``'s agent's control socket."""
    return os.path.join(topo.state_of(node), "agent.sock")


def wait_rules(sock: str, timeout: float, who: str = "the agent") -> None:
    """Until the agent at ``sock`` has rebuilt its nftables tables for the ports just plugged
    (``rules_pending`` clear); LabError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while call(sock, StatusRequest()).rules_pending:
        if time.monotonic() > deadline:
            raise LabError("%s did not rebuild its nftables tables within %.0f s (see its log)" % (who, timeout))
        time.sleep(0.05)  # the new ports' queue rules coming into force, with a deadline


class ComputeNodes:
    """The nodes of ``files.prefix``: while ``up`` builds them, from its topology; after, from the
    layout (a lab of old: from the state directories there are)."""

    def __init__(self, files: StateDir, procs: Processes, say: Callable[[str], None], vrouter: str) -> None:
        self.files = files
        self.procs = procs
        self.say = say
        self.vrouter = vrouter
        self.compute = files.prefix + "-compute"

    def each(self, topo: Topology | None = None) -> list[tuple[int, str, str]]:
        """(node, its namespace, its state directory) of each compute node."""
        if topo is not None:
            return [(n, topo.compute_of(n), topo.state_of(n)) for n in range(1, topo.nodes + 1)]
        layout = self.files.layout() or {}
        if layout.get("nodes"):
            return [(d["node"], d["namespace"], d["state_dir"]) for d in layout["nodes"]]
        found = locate.node_numbers(self.files.dir)
        if found:
            return [(n, "%s%d" % (self.compute, n), self.files.path("compute%d" % n)) for n in found]
        return [(1, self.compute, self.files.dir)]

    def find(self, node: int, topo: Topology | None = None) -> tuple[str, str]:
        """Node ``node``'s namespace and state directory; LabError naming the nodes there are."""
        nodes = self.each(topo)
        for n, ns, state in nodes:
            if n == node:
                return ns, state
        raise LabError("--node %d: prefix %s has nodes %s" % (node, self.files.prefix, ", ".join(str(n) for n, _, _ in nodes)))

    # -- up ---------------------------------------------------------------------------------------

    def create(self, topo: Topology) -> None:
        """Each node's namespace."""
        for n in range(1, topo.nodes + 1):
            netns.create(topo.compute_of(n))
            self.files.created("netns", topo.compute_of(n))

    def write_hosts(self, topo: Topology) -> None:
        """Each node's own resolver files: the fabric's names, for services given by DNS name."""
        computes = [topo.compute_of(n) for n in range(1, topo.nodes + 1)]
        if not os.path.isdir("/etc/netns"):
            self.files.created("dir", "/etc/netns")
        for name in computes:
            os.makedirs("/etc/netns/" + name, exist_ok=True)
            self.files.created("dir", "/etc/netns/" + name)
            with open("/etc/netns/%s/hosts" % name, "w") as f:
                f.write("127.0.0.1 localhost\n%s nova.fabric fabric\n" % topo.nova_ip)
            self.files.created("file", "/etc/netns/%s/hosts" % name)

    @staticmethod
    def remove_hosts(namespace: str) -> None:
        """A removed node's resolver files (``write_hosts``'), which its namespace leaves behind."""
        try:
            os.unlink("/etc/netns/%s/hosts" % namespace)
            os.rmdir("/etc/netns/" + namespace)
        except OSError:
            pass  # gone already, or something else of the operator's in there: down removes what it made

    def configure(self, topo: Topology) -> None:
        """Each agent's state directory and agent.conf."""
        for n in range(1, topo.nodes + 1):
            os.makedirs(topo.state_of(n), exist_ok=True)
            self.files.write(os.path.relpath(os.path.join(topo.state_of(n), "agent.conf"), self.files.dir), topo.agent_conf(n))

    def start(self, topo: Topology) -> None:
        for n in range(1, topo.nodes + 1):
            self.start_agent(n, topo)

    def wait_rules(self, topo: Topology, node: int, timeout: float = 10) -> None:
        """Until node ``node``'s agent has rebuilt its nftables tables for the ports just plugged
        (within 0.2 s of the last change): until then a VM's packets go to the node's queue, and
        with several dataplane workers a connection opened then is set up by worker 0 and breaks
        when the rebuild queues it to another."""
        wait_rules(agent_sock(topo, node), timeout, "node %d's agent" % node)

    def wait_converged(self, topo: Topology, others: dict[str, int] | None = None, timeout: float = 30) -> None:
        """Until every node's agent has every route it should have from etcd (the other nodes' VMs
        of the networks it has VMs of; ``others``: how many the cloud's other labs have, by network)
        and the link-local services."""
        deadline = time.monotonic() + timeout
        for n in range(1, topo.nodes + 1):
            mine = {vm.vn_uuid for vm in topo.vms_of(n)}
            want = sum(1 for vm in topo.ports if vm.node != n and vm.vn_uuid in mine) + sum((others or {}).get(vn, 0) for vn in mine)
            sock = agent_sock(topo, n)
            while True:
                st = call(sock, StatusRequest())
                c = st.cluster
                if c is not None and c.connected and c.remote_routes >= want and st.linklocal_services >= 1:
                    break
                if time.monotonic() > deadline:
                    have = "%d of %d routes" % (c.remote_routes, want) if c is not None else "no cluster"
                    raise LabError("node %d did not converge from etcd within %.0f s (%s); see %s" % (n, timeout, have, sock[:-10] + "agent.log"))
                time.sleep(0.05)  # polling the agents' state, with a deadline
        if topo.nodes > 1:
            self.say("  every node has the routes to the others' VMs")

    # -- the agents -------------------------------------------------------------------------------

    def _files_of(self, state: str) -> tuple[str, str]:
        """An agent's pidfile and log, relative to the lab's directory."""
        rel = os.path.relpath(state, self.files.dir)
        return os.path.normpath(rel + "/agent.pid.sh"), os.path.normpath(rel + "/agent.log")

    def start_agent(self, node: int = 1, topo: Topology | None = None) -> None:
        namespace, state = self.find(node, topo)
        pidfile, log = self._files_of(state)
        what = "the agent" if namespace == self.compute else "the agent of node %d" % node
        if self.procs.pid(pidfile):
            self.say("  %s already running" % what)
            return
        extra = os.environ.get("VROUTER_AGENT_ARGS", "").split()
        proc = self.procs.spawn(namespace, [self.vrouter, "agent", "--config", os.path.join(state, "agent.conf"), "--state-dir", state, *extra],
                                log, pidfile)  # fmt: skip

        def answers() -> bool:
            try:
                call(os.path.join(state, "agent.sock"), StatusRequest(), timeout=2)
                return True
            except (AgentNotRunning, RequestFailed):
                return False

        self.procs.wait(20, proc, answers, what, log)
        self.say("  vrouter agent up in %s (pid %d)" % (namespace, proc.pid))

    def stop_agent(self, node: int = 1) -> None:
        namespace, state = self.find(node)
        # The agent unplugs every port as it stops: 2.3 ms a port with 4,000 (each IPv6 address
        # a tap loses has the kernel walk all of the namespace's IPv6 routes), so 9 s at 4,000.
        ports = sum(1 for vm in (self.files.layout() or {}).get("vms", []) if vm.get("node", 1) == node)
        name = "vrouter agent" if namespace == self.compute else "vrouter agent of node %d" % node
        self.procs.stop(self._files_of(state)[0], name, 10 + 0.005 * ports)

    def stop(self) -> None:
        """Every node's agent."""
        for n, _, _ in self.each():
            self.stop_agent(n)
