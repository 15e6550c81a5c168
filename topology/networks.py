"""The virtual networks as the agents are given them, through their control sockets.

The same messages ``vrouter network add``, ``vrouter port add`` and ``vrouter
linklocal add`` send: each network (its subnet, gateway and service address),
each VM's and guest's port on its node, and the ``metadata`` link-local
service (169.254.169.254:80 to Nova).  With etcd the networks and the service
go to node 1 once and every agent learns them from there; a lab that joins a
cloud is given none (it has the cloud's), and ``adopt`` reads the cloud's
networks and the addresses its VMs have before ours are placed on them.
"""

from __future__ import annotations

from collections.abc import Callable

from topology.errors import LabError
from topology.etcd import Etcd
from topology.model import NOVA_PORT, Net, Topology
from topology.nodes import agent_sock
from vrouter.agent.control import call
from vrouter.messages.control import LinkLocalAdd, NetworkAdd, PortAdd


class Networks:
    """The networks, ports and link-local services of a lab's agents."""

    def __init__(self, say: Callable[[str], None], etcd: Etcd) -> None:
        self.say = say
        self.etcd = etcd

    @staticmethod
    def given_to(topo: Topology) -> list[int]:
        """The nodes whose agents are given the networks and the services: each node, or with etcd
        node 1; none for a lab that joins a cloud."""
        return [] if not topo.own_nova else [1] if topo.clustered else list(range(1, topo.nodes + 1))

    def adopt(self, topo: Topology) -> dict[str, int]:
        """A lab that joins a cloud: the cloud's networks and the addresses its VMs have, from etcd;
        our VMs on those networks at free addresses, our nodes' vhost0 addresses checked free.
        Returns how many VMs the cloud has, by network."""
        everything = self.etcd.ask(topo, lambda store: store.get_all()[1])
        nets = sorted((n for n in (Net.of_record(v) for k, v in everything.items() if k.startswith("virtual-networks/") and isinstance(v, dict))
                       if n is not None), key=lambda n: n.number)  # fmt: skip
        # a VM's IPv4 route (a dual-stack VM has an IPv6 one too)
        routes = [v for k, v in everything.items() if k.startswith("routes/") and isinstance(v, dict) and ":" not in str(v.get("address"))]
        taken = {v.get("vhost_ip"): k[6:] for k, v in everything.items() if k.startswith("nodes/") and isinstance(v, dict)}
        for n in range(1, topo.nodes + 1):
            if topo.vhost_ip_of(n) in taken:
                raise LabError(
                    "--node-id %d: vhost0 %s is node %s's already; choose a free one"
                    % (topo.node_base, topo.vhost_ip_of(n), taken[topo.vhost_ip_of(n)])
                )
        try:
            topo.adopt(nets, {str(r.get("address")) for r in routes})
        except ValueError as e:
            raise LabError("--join: %s" % e) from None
        self.say("  joined the cloud at %s: %d networks, %d VMs, %d nodes" % (", ".join(topo.etcd_urls), len(nets), len(routes), len(taken)))
        by_vn: dict[str, int] = {}
        for r in routes:
            by_vn[str(r.get("vn_uuid"))] = by_vn.get(str(r.get("vn_uuid")), 0) + 1
        return by_vn

    def add(self, topo: Topology) -> None:
        """Each network, to the nodes ``given_to`` says."""
        nodes = self.given_to(topo)
        for net in topo.networks if nodes else []:
            for n in nodes:
                r = call(agent_sock(topo, n), NetworkAdd(net.uuid, net.subnet, net.name, net.gateway, net.dns_server, subnet6=net.subnet6,
                                                         gateway6=net.gateway6, dns_server6=net.dns_server6, ipv6_mode=net.ipv6_mode))  # fmt: skip
            self.say("network %s set: %s, gateway %s, service address %s; %s (IPv6 %s)" % (r.name, r.subnet, r.gateway, r.dns_server, r.subnet6,
                                                                                          r.ipv6_mode))  # fmt: skip

    def plug(self, topo: Topology) -> None:
        """Each VM's and guest's port, on its node; the VM learns its vif and metadata addresses."""
        quiet = len(topo.ports) > 50
        for vm in topo.ports:
            p = call(agent_sock(topo, vm.node), PortAdd(vm.port_uuid, vm.instance_uuid, vm.vn_uuid, vm.project_id, vm.ip, vm.ipv6, vm.mac, vm.tap,
                                                        vm.name))  # fmt: skip
            vm.vif, vm.metadata_ip, vm.metadata_ip6 = p.vif, p.metadata_ip, p.metadata_ip6
            if not quiet:
                on = " on node %d" % vm.node if topo.nodes > 1 else ""
                self.say("port %s plugged as vif0/%d%s (%s, metadata IP %s)" % (p.uuid, p.vif, on, p.tap_name, p.metadata_ip))
        if quiet:
            self.say("%d ports plugged (the layout lists them)" % len(topo.ports))

    def add_services(self, topo: Topology) -> None:
        """The ``metadata`` link-local service, to the nodes ``given_to`` says."""
        nodes = self.given_to(topo)
        metadata = LinkLocalAdd("metadata", "169.254.169.254", "80", [topo.nova_ip], str(NOVA_PORT))
        for n in nodes:
            call(agent_sock(topo, n), metadata)
        if nodes:
            self.say("link-local service metadata set")
