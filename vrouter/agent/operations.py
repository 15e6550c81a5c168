"""What the CLI may ask a running agent: one handler per operation of ``vrouter.messages``.

Each takes its request message and returns its answer message.  Port and
link-local changes are persisted (the port files, linklocal.json), applied to
the dataplane (their flows go), and told to the proxy process, all before the
answer goes back.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import TYPE_CHECKING

from flows.layout import DROP_NAMES
from vrouter.agent.kernel_stats import kernel_ip_drops, queue_drops
from vrouter.agent.linklocal import ServiceError, to_schema
from vrouter.agent.linklocal import validate as validate_service
from vrouter.agent.networks import Network
from vrouter.agent.networks import validate as validate_network
from vrouter.agent.ports import Port
from vrouter.agent.ports import validate as validate_port
from vrouter.agent.procinfo import own_memory
from vrouter.messages import (
    DropStats,
    DropStatsRequest,
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
    ProxyStatus,
    Status,
    StatusRequest,
    VifList,
    VifRecord,
)
from vrouter.services.metadata.supervisor import ProxyProcessError

if TYPE_CHECKING:
    from vrouter.agent.agent import Agent, Node
    from vrouter.agent.control import Handler

log = logging.getLogger("vrouter.agent")


class Operations:
    def __init__(self, agent: Agent, node: Node) -> None:
        self.agent = agent
        self.node = node

    def handlers(self) -> dict[str, Handler]:
        return {
            "status": self.status,
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
            "vif.list": self.vif_list,
            "dropstats": self.dropstats,
        }

    # -- status ---------------------------------------------------------------------------------

    async def status(self, _: StatusRequest) -> Status:
        node, agent = self.node, self.agent
        memory = own_memory()
        try:
            report = await node.proxy.report()
        except ProxyProcessError as e:
            proxy = ProxyStatus(pid=node.proxy.pid, restarts=node.proxy.restarts, error=str(e))
        else:
            memory.update({"proxy_" + k: v for k, v in report.memory.items()})
            counters = dataclasses.asdict(report.stats) | dataclasses.asdict(report.load)
            proxy = ProxyStatus(**counters, pid=node.proxy.pid, restarts=node.proxy.restarts)
        verdicts = node.shell.verdicts
        return Status(
            pid=os.getpid(),
            uptime_s=round(time.time() - agent.started, 1),
            vhost_ip=node.vhost_ip,
            metadata_proxy_port=agent.cfg.metadata_proxy_port,
            ports=len(agent.ports.ports),
            linklocal_services=len(agent.services.services),
            flows_active=node.table.active,
            flow_setups=node.dataplane.setups,
            memory=memory,
            flow_table=agent.paths.flows,
            proxy=proxy,
            services=node.services.stats,
            linklocal_nat_ports_in_use=node.nat_ports.in_use,
            dataplane_errors=node.shell.errors,
            verdict_write_errors=verdicts.errors if verdicts else 0,
            verdict_writes=verdicts.writes if verdicts else 0,
        )

    # -- ports ----------------------------------------------------------------------------------

    def _plugged(self, port: Port) -> PortPlugged:
        vif = self.node.dataplane.vifs.get(port.vif)
        return PortPlugged(**port.to_dict(), tap_present=bool(vif and vif.ifindex))

    async def port_add(self, req: PortAdd) -> PortPlugged:
        port = self.agent.ports.add(validate_port(dataclasses.asdict(req)))
        await self.agent.plug(port)
        self.agent.networks_changed()  # a new network's VRF traps its gateway and service address
        await self.agent.tell_proxy()
        log.info("port %s plugged: vif0/%d %s %s vm %s", port.uuid, port.vif, port.tap_name, port.ip_address, port.instance_uuid)
        return self._plugged(port)

    async def port_del(self, req: PortDel) -> PortUnplugged:
        port = self.agent.ports.remove(req.uuid)
        flows = await self.agent.unplug(port)
        await self.agent.tell_proxy()
        log.info("port %s unplugged: vif0/%d, %d flow entries removed", port.uuid, port.vif, flows)
        return PortUnplugged(**port.to_dict(), flows_removed=flows)

    def port_list(self, _: PortList) -> list[PortPlugged]:
        return [self._plugged(p) for p in sorted(self.agent.ports.ports.values(), key=lambda p: p.vif)]

    # -- virtual networks -----------------------------------------------------------------------

    def _network(self, net: Network) -> NetworkRecord:
        routes = ["%s via %s" % (r.prefix, r.nexthop) for r in net.host_routes]
        return NetworkRecord(net.uuid, net.name, net.subnet, net.gateway, net.dns_server, net.dhcp, net.mtu, net.domain, routes,
                             self.agent.ports.vrfs.get(net.uuid, 0))  # fmt: skip

    def network_add(self, req: NetworkAdd) -> NetworkRecord:
        net = self.agent.networks.add(validate_network(req.vn_uuid, req.subnet, req.name, req.gateway, req.dns_server, req.dhcp, req.mtu,
                                                       req.domain, req.host_routes))  # fmt: skip
        self.agent.networks_changed()
        log.info("network %s (%s): %s, gateway %s, service address %s", net.name, net.uuid, net.subnet, net.gateway, net.dns_server)
        return self._network(net)

    def network_del(self, req: NetworkDel) -> NetworkRecord:
        net = self.agent.networks.remove(req.vn_uuid)
        self.agent.networks_changed()
        log.info("network %s (%s) removed", net.name, net.uuid)
        return self._network(net)

    def network_list(self, _: NetworkList) -> list[NetworkRecord]:
        return [self._network(n) for n in sorted(self.agent.networks.networks.values(), key=lambda n: n.name)]

    # -- link-local services --------------------------------------------------------------------

    async def linklocal_add(self, req: LinkLocalAdd) -> LinkLocalChanged:
        s = self.agent.services.add(validate_service(dataclasses.asdict(req)))
        flows = self.agent.services_changed()
        await self.agent.tell_proxy()
        log.info("link-local service %s: %s:%d -> %s:%d", s.name, s.ip, s.port, ",".join(s.fabric_ips) or s.fabric_dns_name, s.fabric_port)
        return LinkLocalChanged(s.name, flows)

    async def linklocal_del(self, req: LinkLocalDel) -> LinkLocalChanged:
        s = self.agent.services.remove(req.linklocal_service_name)
        flows = self.agent.services_changed()
        await self.agent.tell_proxy()
        log.info("link-local service %s removed, %d flow entries removed", s.name, flows)
        return LinkLocalChanged(s.name, flows)

    async def linklocal_import(self, req: LinkLocalImport) -> LinkLocalImported:
        try:
            entries = req.config["linklocal_services"]["linklocal_service_entry"]
        except (KeyError, TypeError):
            raise ServiceError("not a global-vrouter-config: expected linklocal_services.linklocal_service_entry") from None
        services = self.agent.services.replace_all(entries)
        flows = self.agent.services_changed()
        await self.agent.tell_proxy()
        log.info("link-local services replaced by import: %d services, %d flow entries removed", len(services), flows)
        return LinkLocalImported(len(services), flows)

    def linklocal_list(self, _: LinkLocalList) -> list[LinkLocalEntry]:
        return [LinkLocalEntry(**to_schema(s)) for s in sorted(self.agent.services.services.values(), key=lambda s: s.name.lower())]

    # -- inspection -----------------------------------------------------------------------------

    def vif_list(self, _: VifList) -> list[VifRecord]:
        return [
            VifRecord(
                vif=v.index,
                name=v.name,
                type=v.kind,
                ifindex=v.ifindex,
                mac=v.mac or "",
                ip=v.ip,
                vrf=v.vrf,
                metadata_ip=v.metadata_ip if v.kind == "Virtual" else "",
                port_uuid=v.port_uuid,
                rx_packets=v.rx_packets,
                rx_bytes=v.rx_bytes,
                tx_packets=v.tx_packets,
                tx_bytes=v.tx_bytes,
                drops=v.drops,
                flows=v.flows,
            )  # fmt: skip
            for v in sorted(self.node.dataplane.vifs.values(), key=lambda v: v.index)
        ]

    def dropstats(self, _: DropStatsRequest) -> DropStats:
        drops = self.node.dataplane.drops
        counts = {DROP_NAMES[r]: drops.get(r, 0) for r in DROP_NAMES}
        counts["Queue Overflow"] = queue_drops(self.agent.queue_num)
        counts["Dataplane Error"] = self.node.shell.errors
        counts.update(kernel_ip_drops())
        return DropStats(counts)
