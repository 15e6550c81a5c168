"""What the CLI may ask a running agent: one handler per operation of ``vrouter.messages``.

Each takes its request message and returns its answer message.  Port and
link-local changes are persisted (the port files, linklocal.json), applied to
the dataplane (their flows go), and told to the proxy process, all before the
answer goes back.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import time
import uuid as uuidlib
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from dataplane.core.capture import Capture
from dataplane.core.overlay import DROP_NH, OUTER, RECEIVE_NH, label_of
from dataplane.linux.vifdump import DatagramSink
from dataplane.linux.workers import AddCapture, WorkerError
from flows.layout import DROP_NAMES
from vrouter.agent.kernel_stats import all_queue_drops, kernel_ip_drops
from vrouter.agent.linklocal import ServiceError, to_schema
from vrouter.agent.linklocal import validate as validate_service
from vrouter.agent.networks import Network, NetworkError
from vrouter.agent.networks import validate as validate_network
from vrouter.agent.ports import Port, PortError
from vrouter.agent.ports import validate as validate_port
from vrouter.agent.procinfo import own_memory
from vrouter.messages import (
    DropStats,
    DropStatsRequest,
    FaultAdd,
    FaultDel,
    FaultList,
    FaultRecord,
    FaultSpec,
    JournalPage,
    JournalQuery,
    LinkLocalAdd,
    LinkLocalChanged,
    LinkLocalDel,
    LinkLocalEntry,
    LinkLocalImport,
    LinkLocalImported,
    LinkLocalList,
    MplsDump,
    MplsRecord,
    NetworkAdd,
    NetworkDel,
    NetworkList,
    NetworkRecord,
    NhGet,
    NhList,
    NhRecord,
    PortAdd,
    PortDel,
    PortList,
    PortPlugged,
    PortUnplugged,
    ProxyJournalQuery,
    ProxyStatus,
    RouteDump,
    RouteRecord,
    RouteTable,
    Status,
    StatusRequest,
    VifdumpStart,
    VifdumpStarted,
    VifdumpStop,
    VifdumpStopped,
    VifList,
    VifRecord,
)
from vrouter.services.metadata.faults import FaultError, Rule, check, effect_text
from vrouter.services.metadata.supervisor import ProxyProcessError

if TYPE_CHECKING:
    from vrouter.agent.agent import Agent, Node
    from vrouter.agent.control import Handler

log = logging.getLogger("vrouter.agent")


class Operations:
    def __init__(self, agent: Agent, node: Node) -> None:
        self.agent = agent
        self.node = node
        self.captures: dict[str, Capture] = {}  # by the reader's socket path
        self._capture_ids: dict[str, int] = {}  # ... and its id in the other dataplane workers
        self._capture_id = 0

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
            "metadata.log": self.metadata_log,
            "metadata.fault.add": self.fault_add,
            "metadata.fault.list": self.fault_list,
            "metadata.fault.del": self.fault_del,
            "vifdump.start": self.vifdump_start,
            "vifdump.stop": self.vifdump_stop,
            "rt.dump": self.rt_dump,
            "nh.list": self.nh_list,
            "nh.get": self.nh_get,
            "mpls.dump": self.mpls_dump,
        }

    # -- status ---------------------------------------------------------------------------------

    async def status(self, _: StatusRequest) -> Status:
        node, agent = self.node, self.agent
        memory = own_memory()
        totals = await agent.totals()
        try:
            report = await node.proxy.report()
        except ProxyProcessError as e:
            proxy = ProxyStatus(pid=node.proxy.pid, restarts=node.proxy.restarts, error=str(e))
        else:
            memory.update({"proxy_" + k: v for k, v in report.memory.items()})
            counters = dataclasses.asdict(report.stats) | dataclasses.asdict(report.load)
            proxy = ProxyStatus(**counters, pid=node.proxy.pid, restarts=node.proxy.restarts, per_vif=report.per_vif)
        return Status(
            pid=os.getpid(),
            uptime_s=round(time.time() - agent.started, 1),
            vhost_ip=node.vhost_ip,
            metadata_proxy_port=agent.cfg.metadata_proxy_port,
            ports=len(agent.ports.ports),
            linklocal_services=len(agent.services.services),
            flows_active=totals.active,
            flow_setups=totals.setups,
            memory=memory,
            flow_table=agent.paths.flows,
            proxy=proxy,
            services=node.services.stats,
            linklocal_nat_ports_in_use=totals.nat_in_use,
            dataplane_errors=totals.errors,
            verdict_write_errors=totals.verdict_errors,
            verdict_writes=totals.verdict_writes,
            cluster=agent.cluster.state() if agent.cluster else None,
            dataplane_workers=[os.getpid(), *node.pool.pids],
            dataplane_worker_restarts=node.pool.restarts,
            rules_pending=agent.rules_pending,
        )

    # -- the cluster ------------------------------------------------------------------------------

    async def _publish(self, writing: Coroutine[Any, Any, bool] | None, what: str) -> None:
        """A change made here, written to the cloud's etcd (if there is one); while etcd does not
        answer it waits there (the change stands here)."""
        if writing is not None and not await writing:
            log.warning("%s: changed on this node; etcd does not answer, so the other nodes learn it when it does", what)

    async def _publish_services(self) -> None:
        cluster = self.agent.cluster
        await self._publish(cluster.publish_services() if cluster else None, "link-local services")

    # -- ports ----------------------------------------------------------------------------------

    def _plugged(self, port: Port) -> PortPlugged:
        vif = self.node.dataplane.vifs.get(port.vif)
        return PortPlugged(**port.to_dict(), tap_present=bool(vif and vif.ifindex))

    async def port_add(self, req: PortAdd) -> PortPlugged:
        new = validate_port(dataclasses.asdict(req))
        before = self.agent.ports.ports.get(new.uuid)  # the table replaces it: this stays as it was
        known = before is not None
        port = self.agent.ports.add(new)
        try:
            await self.agent.plug(port)
        except PortError:
            if not known:  # nothing of it stays: not in the table, not on disk
                self.agent.ports.remove(port.uuid)
            raise
        self.agent.networks_changed()  # a new network's VRF traps its gateway and service address
        await self.agent.tell_proxy()
        cluster = self.agent.cluster
        if cluster is not None and before is not None and (before.ip_address, before.vn_uuid) != (port.ip_address, port.vn_uuid):
            await self._publish(cluster.withdraw_port(before), "port %s's old route" % port.uuid)  # the new one replaces it
        await self._publish(cluster.publish_port(port) if cluster else None, "port %s" % port.uuid)
        log.info("port %s plugged: vif0/%d %s %s vm %s", port.uuid, port.vif, port.tap_name, port.ip_address, port.instance_uuid)
        return self._plugged(port)

    async def port_del(self, req: PortDel) -> PortUnplugged:
        port = self.agent.ports.remove(req.uuid)
        flows = await self.agent.unplug(port)
        await self.agent.tell_proxy()
        await self._publish(self.agent.cluster.withdraw_port(port) if self.agent.cluster else None, "port %s" % port.uuid)
        log.info("port %s unplugged: vif0/%d, %d flow entries removed", port.uuid, port.vif, flows)
        return PortUnplugged(**port.to_dict(), flows_removed=flows)

    def port_list(self, _: PortList) -> list[PortPlugged]:
        return [self._plugged(p) for p in sorted(self.agent.ports.ports.values(), key=lambda p: p.vif)]

    # -- virtual networks -----------------------------------------------------------------------

    def _network(self, net: Network) -> NetworkRecord:
        routes = ["%s via %s" % (r.prefix, r.nexthop) for r in net.host_routes]
        return NetworkRecord(net.uuid, net.name, net.subnet, net.gateway, net.dns_server, net.dhcp, net.mtu, net.domain, routes,
                             self.agent.ports.vrfs.get(net.uuid, 0))  # fmt: skip

    async def network_add(self, req: NetworkAdd) -> NetworkRecord:
        net = validate_network(req.vn_uuid, req.subnet, req.name, req.gateway, req.dns_server, req.dhcp, req.mtu, req.domain, req.host_routes)
        if self.agent.cluster is not None:
            most = _mtu(self.agent.cfg.vhost_name) - OUTER
            if net.mtu > most:
                raise NetworkError("--mtu %d: at most %d here, vhost0's MTU less the %d bytes of MPLS over UDP (the overlay never fragments)"
                                   % (net.mtu, most, OUTER))  # fmt: skip
        net = self.agent.networks.add(net)
        self.agent.networks_changed()
        await self._publish(self.agent.cluster.publish_network(net) if self.agent.cluster else None, "network %s" % net.uuid)
        log.info("network %s (%s): %s, gateway %s, service address %s", net.name, net.uuid, net.subnet, net.gateway, net.dns_server)
        return self._network(net)

    async def network_del(self, req: NetworkDel) -> NetworkRecord:
        net = self.agent.networks.remove(req.vn_uuid)
        self.agent.networks_changed()
        await self._publish(self.agent.cluster.publish_network(net, removed=True) if self.agent.cluster else None, "network %s" % net.uuid)
        log.info("network %s (%s) removed", net.name, net.uuid)
        return self._network(net)

    def network_list(self, _: NetworkList) -> list[NetworkRecord]:
        return [self._network(n) for n in sorted(self.agent.networks.networks.values(), key=lambda n: n.name)]

    # -- link-local services --------------------------------------------------------------------

    async def linklocal_add(self, req: LinkLocalAdd) -> LinkLocalChanged:
        s = self.agent.services.add(validate_service(dataclasses.asdict(req)))
        flows = await self.agent.services_changed()
        await self.agent.tell_proxy()
        await self._publish_services()
        log.info("link-local service %s: %s:%d -> %s:%d", s.name, s.ip, s.port, ",".join(s.fabric_ips) or s.fabric_dns_name, s.fabric_port)
        return LinkLocalChanged(s.name, flows)

    async def linklocal_del(self, req: LinkLocalDel) -> LinkLocalChanged:
        s = self.agent.services.remove(req.linklocal_service_name)
        flows = await self.agent.services_changed()
        await self.agent.tell_proxy()
        await self._publish_services()
        log.info("link-local service %s removed, %d flow entries removed", s.name, flows)
        return LinkLocalChanged(s.name, flows)

    async def linklocal_import(self, req: LinkLocalImport) -> LinkLocalImported:
        try:
            entries = req.config["linklocal_services"]["linklocal_service_entry"]
        except (KeyError, TypeError):
            raise ServiceError("not a global-vrouter-config: expected linklocal_services.linklocal_service_entry") from None
        services = self.agent.services.replace_all(entries)
        flows = await self.agent.services_changed()
        await self.agent.tell_proxy()
        await self._publish_services()
        log.info("link-local services replaced by import: %d services, %d flow entries removed", len(services), flows)
        return LinkLocalImported(len(services), flows)

    def linklocal_list(self, _: LinkLocalList) -> list[LinkLocalEntry]:
        return [LinkLocalEntry(**to_schema(s)) for s in sorted(self.agent.services.services.values(), key=lambda s: s.name.lower())]

    # -- inspection -----------------------------------------------------------------------------

    async def vif_list(self, _: VifList) -> list[VifRecord]:
        dp, agent = self.node.dataplane, self.agent
        totals = await agent.totals()
        overflows = all_queue_drops()
        reasons: dict[int, dict[str, int]] = {}
        for (index, reason), n in totals.vif_drops.items():
            reasons.setdefault(index, {})[DROP_NAMES[reason]] = n
        out = []
        for v in sorted(dp.vifs.values(), key=lambda v: v.index):
            queues = list(agent.queues_of(v.index)) if v.kind == "Virtual" else [agent.queue_num]
            mine = dict(reasons.get(v.index, {}))
            overflow = agent.overflows_of(v, overflows)
            if overflow:
                mine["Queue Overflow"] = overflow
            rx_p, rx_b, tx_p, tx_b, drops, flows = totals.vif(v.index)
            out.append(VifRecord(
                vif=v.index, name=v.name, type=v.kind, ifindex=v.ifindex, mac=v.mac or "", ip=v.ip, vrf=v.vrf,
                metadata_ip=v.metadata_ip if v.kind == "Virtual" else "", port_uuid=v.port_uuid, rx_packets=rx_p,
                rx_bytes=rx_b, tx_packets=tx_p, tx_bytes=tx_b, drops=drops + overflow, flows=flows,
                drop_reasons=mine, queues=queues,
            ))  # fmt: skip
        return out

    async def dropstats(self, _: DropStatsRequest) -> DropStats:
        totals = await self.agent.totals()
        drops = totals.drops
        counts = {DROP_NAMES[r]: drops.get(r, 0) for r in DROP_NAMES}
        counts["Queue Overflow"] = self.agent.all_overflows(all_queue_drops())
        counts["Dataplane Error"] = totals.errors
        counts.update(kernel_ip_drops())
        return DropStats(counts)

    # -- the overlay: rt, nh, mpls ----------------------------------------------------------------

    def rt_dump(self, req: RouteDump) -> RouteTable:
        dp = self.node.dataplane
        vn = next((u for u, v in self.agent.ports.vrfs.items() if v == req.vrf), "")
        if not vn:
            known = ", ".join(str(v) for v in sorted(self.agent.ports.vrfs.values())) or "none: no port is plugged"
            raise PortError("VRF %d: no such VRF on this node (VRFs: %s)" % (req.vrf, known))
        net = self.agent.networks.networks.get(vn)
        routes = [
            RouteRecord(v.ip, 32, v.nh, label_of(v.index), "LP", v.mac or "", self.agent.cluster.node if self.agent.cluster else "", v.port_uuid)
            for v in dp.vifs.values()
            if v.kind == "Virtual" and v.vrf == req.vrf and v.ip
        ]  # fmt: skip
        for (vrf, _), (r, t) in dp.overlay.routes.items():
            if vrf == req.vrf:
                routes.append(RouteRecord(r.ip, 32, t.nh, r.label, "LP", "", r.node, r.port_uuid))
        routes.sort(key=lambda r: ipaddress.ip_address(r.prefix))
        return RouteTable(req.vrf, net.name if net else "", vn, routes)

    def _nexthops(self) -> list[NhRecord]:
        dp = self.node.dataplane
        refs: dict[int, int] = {}
        for _, t in dp.overlay.routes.values():
            refs[t.nh] = refs.get(t.nh, 0) + 1
        out = [
            NhRecord(RECEIVE_NH, "Receive", 0, 1, ["Valid", "Policy"], oif=0),
            NhRecord(DROP_NH, "Drop", 0, 1, ["Valid"]),
        ]
        for v in sorted(dp.vifs.values(), key=lambda v: v.index):
            if v.kind == "Virtual":
                out.append(NhRecord(v.nh, "Encap", v.vrf, 2, ["Valid", "Policy"], oif=v.index, mac=v.mac or ""))  # its route and label
        for t in sorted(dp.overlay.tunnels.values(), key=lambda t: t.nh):
            out.append(NhRecord(t.nh, "Tunnel", 0, refs.get(t.nh, 0), ["Valid", "MPLSoUDP"], oif=0, sip=dp.vhost_ip, dip=t.dst, node=t.node))
        return out

    def nh_list(self, _: NhList) -> list[NhRecord]:
        return self._nexthops()

    def nh_get(self, req: NhGet) -> NhRecord:
        for nh in self._nexthops():
            if nh.id == req.id:
                return nh
        raise PortError("next hop %d: no such next hop (see vrouter nh --list)" % req.id)

    def mpls_dump(self, _: MplsDump) -> list[MplsRecord]:
        vifs = self.node.dataplane.overlay.by_label
        return [MplsRecord(label, vifs[label].nh) for label in sorted(vifs)]

    # -- vifdump -------------------------------------------------------------------------------

    async def vifdump_start(self, req: VifdumpStart) -> VifdumpStarted:
        vif = self.node.dataplane.vifs.get(req.vif)
        if vif is None:
            known = ", ".join("vif0/%d" % i for i in sorted(self.node.dataplane.vifs))
            raise PortError("vif0/%d does not exist (there are %s; see vrouter vif --list)" % (req.vif, known))
        self._reap_captures()
        if req.socket in self.captures:
            raise PortError("a capture already goes to %s" % req.socket)
        try:
            sink = DatagramSink(req.socket)
        except OSError as e:
            raise PortError("cannot reach the capture socket %s: %s" % (req.socket, e.strerror or e)) from None
        capture = self.captures[req.socket] = Capture(vif.index, sink, req.rewritten)
        self.node.dataplane.captures.add(capture)
        self._capture_id += 1
        self._capture_ids[req.socket] = self._capture_id
        try:
            await self.node.pool.add_capture(AddCapture(self._capture_id, vif.index, req.socket, req.rewritten))
        except WorkerError as e:
            self._end_capture(req.socket, capture)
            raise PortError(str(e)) from None
        log.info("vifdump: capturing vif0/%d (%s) to %s", vif.index, vif.name, req.socket)
        return VifdumpStarted(vif.index, vif.name, vif.mac or "")

    async def vifdump_stop(self, req: VifdumpStop) -> VifdumpStopped:
        capture = self.captures.get(req.socket)
        if capture is None:
            raise PortError("no capture goes to %s" % req.socket)
        cid = self._capture_ids.get(req.socket, 0)
        sent, lost = (await self.agent.totals()).captures.get(cid, (0, 0))  # the workers' copies
        self._end_capture(req.socket, capture)
        sent, lost = sent + capture.sent, lost + capture.lost
        log.info("vifdump: capture of vif0/%d ended: %d packets, %d lost", capture.vif, sent, lost)
        return VifdumpStopped(sent, lost)

    def _end_capture(self, path: str, capture: Capture) -> None:
        self.node.dataplane.captures.remove(capture)
        self.captures.pop(path, None)
        self.node.pool.remove_capture(self._capture_ids.pop(path, 0))

    def _reap_captures(self) -> None:
        """Forget captures whose reader went without saying (the dataplane already ended them)."""
        for path, c in list(self.captures.items()):
            if c.sink.gone or c not in self.node.dataplane.captures.by_vif.get(c.vif, ()):
                self._end_capture(path, c)

    # -- the metadata path: journal and faults --------------------------------------------------

    async def metadata_log(self, req: JournalQuery) -> JournalPage:
        instance = None if req.instance is None else _instance_uuid(req.instance)
        if req.vif is not None and req.vif < 0:
            raise FaultError("--vif %d: not a vif" % req.vif)
        query = ProxyJournalQuery(max(0, req.since), instance, req.vif, min(max(1, req.limit), 5000))
        try:
            return await self.node.proxy.journal(query)
        except ProxyProcessError as e:
            raise FaultError("the journal is the metadata proxy process's: %s" % e) from None

    async def _faults_in_force(self) -> list[FaultSpec]:
        """The agent's copy of the rules, less those the proxy has ended (their count or time is up)."""
        proxy = self.node.proxy
        try:
            alive = {r.id: r.applied for r in await proxy.fault_records()}
        except ProxyProcessError:
            return [f for f in proxy.faults if not f.until or time.monotonic() < f.until]
        return [dataclasses.replace(f, applied=alive[f.id]) for f in proxy.faults if f.id in alive]

    async def fault_add(self, req: FaultAdd) -> FaultRecord:
        instance = None if req.instance is None else _instance_uuid(req.instance)
        effect, value = check(instance, req.vif, req.all, req.path, req.status, req.delay, req.throttle, req.reset, req.drop, req.count,
                              req.for_s, req.probability)  # fmt: skip
        agent = self.agent
        fid, agent.next_fault_id = agent.next_fault_id, agent.next_fault_id + 1
        now = time.monotonic()
        spec = FaultSpec(fid, instance or "", req.vif or 0, req.path, effect, value, req.count or 0, now + req.for_s if req.for_s else 0.0,
                         req.probability or 1.0, req.for_s or 0.0)  # fmt: skip
        if instance and not any(p.instance_uuid == instance for p in agent.ports.ports.values()):
            log.warning("metadata fault %d: no port of this node belongs to instance %s (yet)", fid, instance)
        if req.vif and req.vif not in self.node.dataplane.vifs:
            log.warning("metadata fault %d: no vif0/%d on this node (yet)", fid, req.vif)
        rules = await self._faults_in_force()
        try:
            await self.node.proxy.set_faults([*rules, spec])
        except ProxyProcessError as e:
            raise FaultError("fault %d kept, but the metadata proxy process did not take it (%s): it applies once the process is back"
                             % (fid, e)) from None  # fmt: skip
        record = Rule.of(spec).record(now)
        log.info("metadata fault %d: %s %s -> %s", fid, record.target, spec.path, effect_text(record))
        return record

    async def fault_list(self, _: FaultList) -> list[FaultRecord]:
        proxy = self.node.proxy
        try:
            records = await proxy.fault_records()
        except ProxyProcessError as e:
            raise FaultError("the metadata proxy process does not answer (%s)" % e) from None
        applied = {r.id: r.applied for r in records}  # what a new proxy process would go on from
        proxy.faults = [dataclasses.replace(f, applied=applied[f.id]) for f in proxy.faults if f.id in applied]
        return records

    async def fault_del(self, req: FaultDel) -> FaultRecord:
        proxy = self.node.proxy
        try:
            records = {r.id: r for r in await proxy.fault_records()}
        except ProxyProcessError as e:
            raise FaultError("the metadata proxy process does not answer (%s)" % e) from None
        if req.id not in records:
            known = ", ".join(str(i) for i in sorted(records)) or "none"
            raise FaultError("no fault %d in force (in force: %s; see vrouter metadata fault list)" % (req.id, known))
        try:
            await proxy.set_faults(
                [dataclasses.replace(f, applied=records[f.id].applied) for f in proxy.faults if f.id != req.id and f.id in records]
            )
        except ProxyProcessError as e:
            raise FaultError("the metadata proxy process did not take the change (%s)" % e) from None
        log.info("metadata fault %d deleted", req.id)
        return records[req.id]


def _mtu(ifname: str) -> int:
    try:
        with open("/sys/class/net/%s/mtu" % ifname) as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1500


def _instance_uuid(value: str) -> str:
    try:
        return str(uuidlib.UUID(value))
    except ValueError:
        raise FaultError("--instance %r: not a uuid" % value) from None
