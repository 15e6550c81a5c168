"""Build, run and remove an emulated compute node in namespaces: what ``scripts/netns_setup.sh`` does.

``Lab(prefix).up(topology)`` builds a ``model.Topology`` as mininet builds its
network, each kind of thing by its own part with its own start and stop:

* ``state.StateDir``: the prefix's state directory, and ``created``, the list
  of what ``up`` made, so that ``down`` after a half-made ``up`` removes what
  was made and no more;
* ``nodes.ComputeNodes``: the compute nodes' namespaces, their agents'
  configuration and the agents (``vrouter agent``);
* ``fabric.Fabric`` and ``nova.Nova``: the fabric namespace, the links from
  each node's vhost0 to it, and ``vrouter nova-metadata`` there;
* ``etcd.Etcd``: the cloud's etcd, the lab's own or a cloud's it joins;
* ``networks.Networks``: the virtual networks, every VM's and guest's port and
  the ``metadata`` link-local service, given to the agents with the same
  messages ``vrouter network add``, ``vrouter port add`` and ``vrouter
  linklocal add`` send;
* ``vms.VMs``: the namespace VMs, wired to their taps, and with ``dhcp`` their
  busybox udhcpc clients;
* ``guests.Guests``: the QEMU guests on their taps.

``down`` removes exactly what ``up`` made, guests and clients first, then the
agents, Nova and etcd, then what the list names.  Nothing here touches the
host's own interfaces, routes or firewall.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from infra.etcd_wire import StoreError
from topology import netns
from topology.errors import LabError
from topology.etcd import Etcd, in_etcd
from topology.fabric import Fabric
from topology.guests import GuestError, Guests
from topology.model import Topology
from topology.networks import Networks
from topology.nodes import ComputeNodes
from topology.nova import Nova
from topology.processes import Processes, StartError
from topology.state import StateDir
from topology.vms import VMs
from vrouter.agent.paths import STATE_ROOT

__all__ = ["Lab", "LabError", "in_etcd"]

BIN = Path(sys.executable).parent  # the venv's bin: vrouter lives beside this python


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Lab:
    """The node of one prefix: its state directory, what was created, its daemons."""

    def __init__(self, prefix: str, state_root: str | None = None, say: Callable[[str], None] = _say, script: str = "scripts/netns_setup.sh") -> None:
        self.prefix = prefix
        self.root = state_root or os.environ.get("VROUTER_STATE_ROOT") or STATE_ROOT
        self.state = os.path.join(self.root, prefix)
        self.say = say
        self.script = script
        self.vrouter = os.environ.get("VROUTER") or str(BIN / "vrouter")
        self.compute = prefix + "-compute"
        self.fabric = prefix + "-fabric"
        self.procs = Processes(self.state, say)
        self.files = StateDir(self.root, prefix)
        self.computes = ComputeNodes(self.files, self.procs, say, self.vrouter)
        self.underlay = Fabric(self.files, say)
        self.nova = Nova(self.files, self.procs, say, self.vrouter, self.underlay)
        self.etcd = Etcd(self.files, self.procs, say, self.underlay)
        self.networks = Networks(say, self.etcd)
        self.vms = VMs(self.files, self.procs, say)
        self.guests = Guests(self.procs, say)

    def is_up(self) -> bool:
        return netns.exists(self.compute) or netns.exists(self.compute + "1") or self.files.has_list()

    def already_up(self) -> str:
        return "prefix %s is already up (namespace %s exists); run: %s down --prefix %s" % (self.prefix, self.compute, self.script, self.prefix)

    def layout(self) -> dict | None:
        return self.files.layout()

    def nodes(self, topo: Topology | None = None) -> list[tuple[int, str, str]]:
        """(node, its namespace, its state directory) of each compute node: from ``topo`` while
        ``up`` builds it, else from the layout (a node of old: the one)."""
        return self.computes.each(topo)

    # -- up -------------------------------------------------------------------------------------

    def up(self, topo: Topology) -> dict:
        """Build the node; return its layout.  A failure removes what was made and raises LabError."""
        if self.is_up():
            raise LabError(self.already_up())
        if not os.access(self.vrouter, os.X_OK):
            raise LabError("%s not found: run make install (or set VROUTER=/path/to/vrouter)" % self.vrouter)
        try:
            Guests.check(topo)
        except GuestError as e:
            raise LabError(str(e)) from None
        VMs.check(topo)
        self.files.begin()
        try:
            return self._up(topo)
        except BaseException as e:
            self.say("netns_setup.sh: up failed; removing what it created")
            try:
                self.down(quiet=True)
            except Exception as cleanup:  # noqa: BLE001 - the first error is the one to report
                self.say("netns_setup.sh: cleanup after the failure also failed: %s" % cleanup)
            if isinstance(e, (OSError, subprocess.SubprocessError, StartError, GuestError)):
                raise LabError(str(e)) from None
            raise

    def _up(self, topo: Topology) -> dict:
        self.files.write("secret", topo.secret, 0o600)
        with_guests = " and %d QEMU guests" % len(topo.guests) if topo.guests else ""
        if topo.nodes == 1:
            self.say("building emulated compute node '%s' with %d VMs%s" % (self.prefix, len(topo.vms), with_guests))
        else:
            self.say("building emulated cloud '%s': %d compute nodes, %d VMs%s" % (self.prefix, topo.nodes, len(topo.vms), with_guests))
        self.computes.create(topo)
        self.underlay.create()
        self.computes.write_hosts(topo)
        with contextlib.ExitStack() as stack:
            fabric = stack.enter_context(netns.Namespace(self.fabric))
            ns_of = {n: stack.enter_context(netns.Namespace(topo.compute_of(n))) for n in range(1, topo.nodes + 1)}
            self.underlay.wire(topo, ns_of, fabric)
            others: dict[str, int] = {}  # the cloud's VMs of other labs, by network (a lab that joins one)
            if topo.join:
                others = self.networks.adopt(topo)
            elif topo.etcd_servers:
                self.etcd.check(topo)
            self.nova.write_instances(topo)
            self.vms.create(topo, ns_of)
            self.guests.create_taps(topo, ns_of)
        if topo.tls:
            self.nova.make_tls(topo)
        if topo.own_etcd and topo.etcd_tls is not None:  # up --etcd-tls
            self.etcd.make_tls(topo)
        self.computes.configure(topo)
        if topo.own_etcd:
            self.etcd.start()
        if topo.own_nova:
            self.nova.start(topo)
        self.computes.start(topo)
        if topo.join:  # the cloud's Nova serves our instances from etcd
            self.etcd.publish_instances(topo)
        self.networks.add(topo)
        self.networks.plug(topo)
        self.networks.add_services(topo)
        for n in range(1, topo.nodes + 1):  # every port's queues in force before anything runs in the VMs (see wait_rules)
            self.computes.wait_rules(topo, n)
        if topo.clustered:
            self.computes.wait_converged(topo, others)
        self.vms.start(topo)
        self.vms.start6(topo)
        self.guests.start(topo)
        layout = topo.layout()
        self.files.write("layout.json", json.dumps(layout, indent=2))
        for node in layout["nodes"]:
            self.say("  %s: introspect %s (from %s or the fabric, %s)" % (node["name"], node["introspect"], node["namespace"], topo.fabric))
        self.say("up: layout in %s; remove everything with: %s down --prefix %s" % (self.files.path("layout.json"), self.script, self.prefix))
        return layout

    def wait_rules(self, topo: Topology, node: int, timeout: float = 10) -> None:
        self.computes.wait_rules(topo, node, timeout)

    def wait_converged(self, topo: Topology, others: dict[str, int] | None = None, timeout: float = 30) -> None:
        self.computes.wait_converged(topo, others, timeout)

    # -- daemons, each started and stopped on its own (netns_setup.sh start-agent, stop-nova, ...) ----

    def pid(self, pidfile: str) -> int:
        return self.procs.pid(pidfile)

    def start_nova(self, topo: Topology | None = None) -> None:
        self.private()
        self.nova.start(topo)

    def stop_nova(self) -> None:
        self.nova.stop()

    def start_agent(self, node: int = 1, topo: Topology | None = None) -> None:
        self.private()
        self.computes.start_agent(node, topo)

    def private(self) -> None:
        """The lab's secrets root's alone again (an older lab's, or a hand's chmod, put right)."""
        for fixed in self.files.private([state for _, _, state in self.nodes()]):
            self.say("  %s was open to other users than root: made root's alone" % fixed)

    def stop_agent(self, node: int = 1) -> None:
        self.computes.stop_agent(node)

    def stop_agents(self) -> None:
        self.computes.stop()

    def start_etcd(self) -> None:
        self.private()
        self.etcd.start()

    def stop_etcd(self) -> None:
        self.etcd.stop()

    def stop_clients(self) -> None:
        """The QEMU guests and the DHCP clients."""
        self.guests.stop()
        self.vms.stop()

    # -- down -----------------------------------------------------------------------------------

    def remove_node(self, node: int) -> None:
        """Take node ``node`` out of a cluster as ``down`` takes a whole one: its agent stopped, its
        ports, routes and node record deleted from etcd (so that no other node keeps a route to
        it), its VMs' namespaces, its own and its resolver files removed, the layout without it."""
        layout = self.layout()
        nodes = (layout or {}).get("nodes") or []
        if len(nodes) < 2:
            raise LabError("down --node %d: prefix %s is not a cluster of several nodes (use down)" % (node, self.prefix))
        mine = next((d for d in nodes if d["node"] == node), None)
        if mine is None:
            raise LabError("down --node %d: prefix %s has nodes %s" % (node, self.prefix, ", ".join(str(d["node"]) for d in nodes)))
        assert layout is not None
        self.say("removing node %d (%s) of '%s'" % (node, mine["namespace"], self.prefix))
        self.stop_agent(node)
        theirs = [v["instance_uuid"] for v in layout["vms"] if v.get("node") == node] if layout["etcd"].get("joined") else []
        try:
            gone = self.etcd.forget(layout, [mine], theirs)
        except (StoreError, OSError) as e:
            raise LabError("down --node %d: its keys could not be deleted from etcd (%s); start etcd and run it again" % (node, e)) from None
        self.say("  %d keys of node %d deleted from etcd" % (gone, node))
        vms = [v for v in layout["vms"] if v.get("node") == node]
        doomed = {v["namespace"] for v in vms} | {mine["namespace"]}
        for name in sorted(doomed):
            if netns.delete(name):
                self.say("  deleted netns %s" % name)
        self.computes.remove_hosts(mine["namespace"])  # its /etc/netns files, not left until down
        self.files.forget_namespaces(doomed)
        layout["vms"] = [v for v in layout["vms"] if v.get("node") != node]
        layout["nodes"] = [d for d in nodes if d["node"] != node]
        layout["namespaces"]["vms"] = [v["namespace"] for v in layout["vms"]]
        layout["namespaces"]["computes"] = [d["namespace"] for d in layout["nodes"]]
        self.files.write("layout.json", json.dumps(layout, indent=2))
        shutil.rmtree(mine["state_dir"], ignore_errors=True)
        self.say("down: node %d of prefix %s removed" % (node, self.prefix))

    def down(self, quiet: bool = False) -> bool:
        """Remove what ``up`` made; False if nothing was up."""
        if not self.is_up():
            if not quiet:
                self.say("nothing is up for prefix %s" % self.prefix)
            return False
        if not quiet:
            several = len(self.nodes()) > 1
            self.say("removing emulated %s '%s'" % ("cloud" if several else "compute node", self.prefix))
        self.stop_clients()
        self.stop_agents()  # first: a running agent would publish its ports again
        self.etcd.forget_lab(quiet)  # an etcd that stays: what we told it goes
        self.stop_nova()
        self.stop_etcd()
        # if `up` died before writing its list, only the fixed names are known to be ours
        self.files.remove([ns for _, ns, _ in self.nodes()] + [self.fabric], self.say, quiet)
        if not quiet:
            self.say("down: prefix %s removed" % self.prefix)
        return True
