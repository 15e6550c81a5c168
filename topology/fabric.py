"""The IP fabric of a lab: the namespace ``P-fabric`` and the links from each node's vhost0 to it.

One node alone: a veth pair, vhost0 in the compute namespace and eth0 in the
fabric's, with Nova's address on eth0.  Several nodes (or a node configured
through etcd): the fabric is a bridge ``br-fabric`` at the fabric's MTU, with
Nova's and etcd's address on it (unless the lab joins a cloud, whose Nova and
etcd serve it), each node's vhost0 a veth to a port of it; ``fabric_link``
adds an uplink veth from our bridge to the bridge of another namespace (the
cloud's fabric).  Each node's default route goes to the fabric; forwarding
stays off and strict reverse-path filtering on until the agent runs.  The
fabric is dual stack: fd00:10:10::1 on the fabric's side, fd00:10:10::(1+n) on
node n's vhost0 (link-local services over IPv6 reach the fabric from there).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD

from topology import netns
from topology.errors import LabError
from topology.model import FABRIC_MTU, Topology
from topology.state import StateDir

FABRIC_BRIDGE = "br-fabric"
FAIL_CLOSED = {"net.ipv4.ip_forward": "0", "net.ipv4.conf.all.rp_filter": "1", "net.ipv4.conf.default.rp_filter": "1"}


def bridge_mac() -> str:
    """A random, locally administered unicast MAC (a fabric bridge's: one per lab, since the
    bridges of labs joined by ``fabric_link`` share one segment)."""
    return "02:" + ":".join("%02x" % b for b in os.urandom(5))


class Fabric:
    """The fabric namespace of ``files.prefix`` and its wiring."""

    def __init__(self, files: StateDir, say: Callable[[str], None]) -> None:
        self.files = files
        self.say = say
        self.name = files.prefix + "-fabric"

    def nova_ip(self) -> str:
        """Nova's (and the lab's etcd's) address on the fabric: the layout's, else the plan's."""
        layout = self.files.layout()
        return layout["nova"]["ip"] if layout else Topology.plan(self.files.prefix, 1, self.files.dir).nova_ip

    def create(self) -> None:
        netns.create(self.name)
        self.files.created("netns", self.name)

    def wire(self, topo: Topology, nodes: dict[int, netns.Namespace], fabric: netns.Namespace) -> None:
        """Each node of ``nodes`` (their namespaces, by node) to the ``fabric`` namespace."""
        if topo.nodes == 1 and not topo.clustered:
            self._pair(topo, nodes[1], fabric)
        else:
            self._bridge(topo, nodes, fabric)

    def _pair(self, topo: Topology, compute: netns.Namespace, fabric: netns.Namespace) -> None:
        """lo up in both, vhost0 (compute) to eth0 (fabric), the compute node's default route."""
        for ns in (compute, fabric):
            ns.ipr.link("set", index=ns.index("lo"), state="up")
        compute.ipr.link("add", ifname="vhost0", kind="veth", peer={"ifname": "eth0", "net_ns_fd": fabric.fd})
        vhost0, eth0 = compute.index("vhost0"), fabric.index("eth0")
        compute.ipr.addr("add", index=vhost0, address=topo.vhost_ip, prefixlen=24)
        compute.ipr.addr("add", index=vhost0, address=topo.vhost_ip6_of(1), prefixlen=64, flags=IFA_F_NODAD)
        compute.ipr.link("set", index=vhost0, state="up")
        fabric.ipr.addr("add", index=eth0, address=topo.nova_ip, prefixlen=24)
        fabric.ipr.addr("add", index=eth0, address=topo.fabric_ip6, prefixlen=64, flags=IFA_F_NODAD)
        fabric.ipr.link("set", index=eth0, state="up")
        compute.ipr.route("add", dst="default", gateway=topo.nova_ip)
        # Forwarding stays off until the agent runs; strict reverse-path filtering on: fail closed.
        compute.sysctl(FAIL_CLOSED)

    def _bridge(self, topo: Topology, nodes: dict[int, netns.Namespace], fabric: netns.Namespace) -> None:
        """The fabric as a bridge (Nova's and etcd's address on it) and each node's vhost0 a port of
        it, at the fabric's MTU; each node's default route to the fabric."""
        fabric.ipr.link("set", index=fabric.index("lo"), state="up")
        # An address of its own, set: a bridge left to choose takes the lowest of its ports' MACs,
        # and changes it when that port goes (down --node I) or a lower one comes (up --join), so
        # that the nodes' ARP entries for Nova and etcd point nowhere for about 20 s.
        fabric.ipr.link("add", ifname=FABRIC_BRIDGE, kind="bridge", address=bridge_mac())
        br = fabric.index(FABRIC_BRIDGE)
        fabric.ipr.link("set", index=br, mtu=FABRIC_MTU, state="up")
        if topo.own_nova:  # a lab that joins a cloud uses the cloud's Nova and etcd
            fabric.ipr.addr("add", index=br, address=topo.nova_ip, prefixlen=24)
            fabric.ipr.addr("add", index=br, address=topo.fabric_ip6, prefixlen=64, flags=IFA_F_NODAD)
        if topo.fabric_link:
            self._uplink(topo, fabric, br)
        for n, compute in nodes.items():
            compute.ipr.link("set", index=compute.index("lo"), state="up")
            peer = "vhost-c%d" % n
            compute.ipr.link("add", ifname="vhost0", kind="veth", peer={"ifname": peer, "net_ns_fd": fabric.fd})
            vhost0 = compute.index("vhost0")
            fabric.ipr.link("set", index=fabric.index(peer), mtu=FABRIC_MTU, master=br, state="up")
            compute.ipr.link("set", index=vhost0, mtu=FABRIC_MTU)
            compute.ipr.addr("add", index=vhost0, address=topo.vhost_ip_of(n), prefixlen=24)
            compute.ipr.addr("add", index=vhost0, address=topo.vhost_ip6_of(n), prefixlen=64, flags=IFA_F_NODAD)
            compute.ipr.link("set", index=vhost0, state="up")
            compute.ipr.route("add", dst="default", gateway=topo.nova_ip)
            compute.sysctl(FAIL_CLOSED)

    def _uplink(self, topo: Topology, fabric: netns.Namespace, br: int) -> None:
        """A veth from our fabric bridge to the bridge br-fabric of namespace ``topo.fabric_link``
        (the cloud's fabric on this machine, or a namespace whose bridge has the real link to it);
        its far end goes with our fabric namespace at ``down``."""
        if not netns.exists(topo.fabric_link):
            raise LabError("--fabric-link %s: no such namespace" % topo.fabric_link)
        with netns.Namespace(topo.fabric_link) as other:
            there = (other.ipr.link_lookup(ifname=FABRIC_BRIDGE) or [0])[0]
            if not there:
                raise LabError("--fabric-link %s: it has no bridge %s (the fabric of a cloud built with up --nodes K has one)"
                               % (topo.fabric_link, FABRIC_BRIDGE))  # fmt: skip
            far = "%s-up" % self.files.prefix
            fabric.ipr.link("add", ifname="uplink", kind="veth", peer={"ifname": far, "net_ns_fd": other.fd})
            other.ipr.link("set", index=other.index(far), mtu=FABRIC_MTU, master=there, state="up")
        fabric.ipr.link("set", index=fabric.index("uplink"), mtu=FABRIC_MTU, master=br, state="up")
