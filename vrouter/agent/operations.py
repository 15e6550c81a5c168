"""What the CLI may ask a running agent: one handler per operation of ``vrouter.messages.control``.

Each takes its request message and returns its answer message.  A change of
ports, networks or link-local services is validated here and handed to the
node's state (``NodeState``), whose subscribers carry it out (the dataplane
and its workers, the files, the proxy process, etcd) before the answer goes
back.  What the tools read is ``inspection``'s; vifdump, the journal and the
fault rules are ``observation``'s; ``handlers`` is every operation's.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import TYPE_CHECKING

from dataplane.core.overlay import OUTER
from vrouter.agent.inspection import Inspection
from vrouter.agent.observation import Observation
from vrouter.introspect.server import MAX_TARGET, Introspect
from vrouter.messages.control import (
    IntrospectGet,
    IntrospectPage,
    LinkLocalAdd,
    LinkLocalChanged,
    LinkLocalDel,
    LinkLocalEntry,
    LinkLocalImport,
    LinkLocalImported,
    LinkLocalList,
    NetworkAdd,
    NetworkDel,
    NetworkList,
    NetworkRecord,
    PortAdd,
    PortDel,
    PortList,
    PortPlugged,
    PortUnplugged,
)
from vrouter.model import (
    HostRoute,
    Network,
    NetworkError,
    Port,
    ServiceError,
    service_schema,
    validate_network,
    validate_port,
    validate_service,
    validate_services,
)

if TYPE_CHECKING:
    from vrouter.agent.control import Handler
    from vrouter.agent.node import Node

log = logging.getLogger("vrouter.agent")


class Operations:
    """The changes: ports, networks, link-local services."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.state = node.state

    def handlers(self) -> dict[str, Handler]:
        """Every operation of the control socket, by name."""
        inspect, observe = Inspection(self.node), Observation(self.node)
        return {
            "status": inspect.status,
            "port.add": self.port_add,
            "port.del": self.port_del,
            "port.list": self.port_list,
            "linklocal.add": self.linklocal_add,
            "linklocal.del": self.linklocal_del,
            "linklocal.list": self.linklocal_list,
            "linklocal.import": self.linklocal_import,
            "network.add": self.network_add,
            "network.del": self.network_del,
            "network.list": self.network_list,
            "vif.list": inspect.vif_list,
            "dropstats": inspect.dropstats,
            "metadata.log": observe.metadata_log,
            "metadata.mark": observe.metadata_mark,
            "metadata.fault.add": observe.fault_add,
            "metadata.fault.list": observe.fault_list,
            "metadata.fault.del": observe.fault_del,
            "vifdump.start": observe.vifdump_start,
            "vifdump.stop": observe.vifdump_stop,
            "rt.dump": inspect.rt_dump,
            "nh.list": inspect.nh_list,
            "nh.get": inspect.nh_get,
            "mpls.dump": inspect.mpls_dump,
            "introspect": self.introspect,
        }

    async def introspect(self, req: IntrospectGet) -> IntrospectPage:
        """A page of the introspect, as the HTTP port would answer it (for ``vrouter introspect``)."""
        target = req.target if req.target.startswith("/") else "/" + req.target
        status, ctype, body = await Introspect(self.node).get(target[:MAX_TARGET], "text/html" if req.html else None)
        return IntrospectPage(int(status.split()[0]), ctype, body.decode("utf-8", "replace"))

    # -- ports ----------------------------------------------------------------------------------

    def _plugged(self, port: Port) -> PortPlugged:
        vif = self.node.dp.vifs.get(port.vif)
        lease = self.node.services.dhcp.leases.get(port.uuid)
        wall = time.time() - time.monotonic()
        bound_at = lease.since + wall if lease is not None and lease.since else 0.0
        state = lease.state.name.lower() if lease is not None else "free"
        acks = [t + wall for t in lease.acks] if lease is not None else []
        return PortPlugged(**port.to_dict(), tap_present=bool(vif and vif.ifindex), dhcp_state=state, dhcp_bound_at=bound_at, dhcp_acks=acks)

    async def port_add(self, req: PortAdd) -> PortPlugged:
        port = await self.state.plug(validate_port(dataclasses.asdict(req)))
        log.info("port %s plugged: vif0/%d %s %s vm %s", port.uuid, port.vif, port.tap_name, port.ip_address, port.instance_uuid)
        return self._plugged(port)

    async def port_del(self, req: PortDel) -> PortUnplugged:
        port, flows = await self.state.unplug(req.uuid)
        log.info("port %s unplugged: vif0/%d, %d flow entries removed", port.uuid, port.vif, flows)
        return PortUnplugged(**port.to_dict(), flows_removed=flows)

    def port_list(self, _: PortList) -> list[PortPlugged]:
        return [self._plugged(p) for p in sorted(self.state.ports.values(), key=lambda p: p.vif)]

    # -- virtual networks -----------------------------------------------------------------------

    def _network(self, net: Network) -> NetworkRecord:
        return NetworkRecord(net.uuid, net.name, net.subnet, net.gateway, net.dns_server, net.dhcp, net.mtu, net.domain,
                             [str(r) for r in net.host_routes], self.state.vrfs.get(net.uuid, 0), net.subnet6, net.gateway6, net.dns_server6,
                             net.ipv6_mode)  # fmt: skip

    async def network_add(self, req: NetworkAdd) -> NetworkRecord:
        routes = [HostRoute.parse(r) for r in req.host_routes]
        net = validate_network(req.vn_uuid, req.subnet, req.name, req.gateway, req.dns_server, req.dhcp, req.mtu, req.domain, routes,
                               req.subnet6, req.gateway6, req.dns_server6, req.ipv6_mode)  # fmt: skip
        if self.node.cluster is not None:
            most = _mtu(self.node.cfg.vhost.name) - OUTER
            if net.mtu > most:
                raise NetworkError("--mtu %d: at most %d here, vhost0's MTU less the %d bytes of MPLS over UDP (the overlay never fragments)"
                                   % (net.mtu, most, OUTER))  # fmt: skip
        await self.state.set_network(net)
        log.info("network %s (%s): %s, gateway %s, service address %s%s", net.name, net.uuid, net.subnet, net.gateway, net.dns_server,
                 "; %s, gateway %s, service address %s, IPv6 %s" % (net.subnet6, net.gateway6, net.dns_server6, net.ipv6_mode)
                 if net.subnet6 else "")  # fmt: skip
        return self._network(net)

    async def network_del(self, req: NetworkDel) -> NetworkRecord:
        net = await self.state.remove_network(req.vn_uuid)
        log.info("network %s (%s) removed", net.name, net.uuid)
        return self._network(net)

    def network_list(self, _: NetworkList) -> list[NetworkRecord]:
        return [self._network(n) for n in sorted(self.state.networks.values(), key=lambda n: n.name)]

    # -- link-local services --------------------------------------------------------------------

    async def linklocal_add(self, req: LinkLocalAdd) -> LinkLocalChanged:
        s = validate_service(dataclasses.asdict(req))
        flows = await self.state.add_service(s)
        log.info("link-local service %s: %s:%d -> %s:%d", s.name, s.ip, s.port, ",".join(s.fabric_ips) or s.fabric_dns_name, s.fabric_port)
        return LinkLocalChanged(s.name, flows)

    async def linklocal_del(self, req: LinkLocalDel) -> LinkLocalChanged:
        s, flows = await self.state.remove_service(req.linklocal_service_name)
        log.info("link-local service %s removed, %d flow entries removed", s.name, flows)
        return LinkLocalChanged(s.name, flows)

    async def linklocal_import(self, req: LinkLocalImport) -> LinkLocalImported:
        try:
            entries = req.config["linklocal_services"]["linklocal_service_entry"]
        except (KeyError, TypeError):
            raise ServiceError("not a global-vrouter-config: expected linklocal_services.linklocal_service_entry") from None
        services = validate_services(entries)
        flows = await self.state.set_services(services)
        log.info("link-local services replaced by import: %d services, %d flow entries removed", len(services), flows)
        return LinkLocalImported(len(services), flows)

    def linklocal_list(self, _: LinkLocalList) -> list[LinkLocalEntry]:
        return [LinkLocalEntry(**service_schema(s)) for s in sorted(self.state.services.values(), key=lambda s: s.name.lower())]


def _mtu(ifname: str) -> int:
    try:
        with open("/sys/class/net/%s/mtu" % ifname) as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1500
