"""What the tools read of a running agent: ``vrouter status``, ``vif``, ``dropstats``, ``rt``,
``nh`` and ``mpls``, as the vRouter's tools show its kernel module's tables."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import time
from typing import TYPE_CHECKING, Any

from dataplane.core.overlay import DROP_NH, RECEIVE_NH, label_of
from dataplane.linux.ebpf import KernelDatapath
from flows.layout import DROP_NAMES
from infra.procinfo import own_memory
from vrouter.agent.kernel_stats import kernel_ip_drops
from vrouter.messages.control import (
    DropStats,
    DropStatsRequest,
    MplsDump,
    MplsRecord,
    NhGet,
    NhList,
    NhRecord,
    ProxyStatus,
    RouteDump,
    RouteRecord,
    RouteTable,
    Status,
    StatusRequest,
    VifList,
    VifRecord,
)
from vrouter.model import PortError
from vrouter.services.metadata.supervisor import ProxyProcessError

if TYPE_CHECKING:
    from vrouter.agent.node import Node


class Inspection:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.state = node.state

    # -- status ---------------------------------------------------------------------------------

    async def status(self, _: StatusRequest) -> Status:
        node = self.node
        memory = own_memory()
        totals = await node.ksync.totals()
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
            uptime_s=round(time.time() - node.started, 1),
            vhost_ip=node.vhost_ip,
            metadata_proxy_port=node.cfg.metadata.proxy_port,
            ports=len(self.state.ports),
            linklocal_services=len(self.state.services),
            flows_active=totals.active,
            flow_setups=totals.setups,
            memory=memory,
            flow_table=node.paths.flows,
            proxy=proxy,
            services=node.services.stats,
            linklocal_nat_ports_in_use=totals.nat_in_use,
            dataplane_errors=totals.errors,
            verdict_write_errors=totals.verdict_errors,
            verdict_writes=totals.verdict_writes,
            cluster=node.cluster.state() if node.cluster else None,
            dataplane_workers=[os.getpid(), *node.pool.pids],
            dataplane_worker_restarts=node.pool.restarts,
            rules_pending=node.queues.rules_pending,
            datapath=node.cfg.flows.datapath,
            introspect="http://%s:%d/" % (node.vhost_ip, node.cfg.default.metrics_port) if node.cfg.default.metrics_port else "",
            **_kernel_status(node.ksync.kernel),
        )

    # -- inspection -----------------------------------------------------------------------------

    async def vif_list(self, _: VifList) -> list[VifRecord]:
        node = self.node
        dp = node.dp
        totals = await node.ksync.totals()
        overflows = node.queues.drops.read()
        reasons: dict[int, dict[str, int]] = {}
        for (index, reason), n in totals.vif_drops.items():
            reasons.setdefault(index, {})[DROP_NAMES[reason]] = n
        out = []
        for v in sorted(dp.vifs.values(), key=lambda v: v.index):
            queues = list(node.queues.of(v.index)) if v.kind == "Virtual" else [node.queues.layout.base]
            mine = dict(reasons.get(v.index, {}))
            overflow = node.queues.overflows_of(v, overflows)
            if overflow:
                mine["Queue Overflow"] = overflow
            rx_p, rx_b, tx_p, tx_b, drops, flows = totals.vif(v.index)
            out.append(VifRecord(
                vif=v.index, name=v.name, type=v.kind, ifindex=v.ifindex, mac=v.mac or "", ip=v.ip, vrf=v.vrf,
                metadata_ip=v.metadata_ip if v.kind == "Virtual" else "", port_uuid=v.port_uuid, rx_packets=rx_p,
                rx_bytes=rx_b, tx_packets=tx_p, tx_bytes=tx_b, drops=drops + overflow, flows=flows,
                drop_reasons=mine, queues=queues, ip6=v.ip6,
            ))  # fmt: skip
        return out

    async def dropstats(self, _: DropStatsRequest) -> DropStats:
        totals = await self.node.ksync.totals()
        drops = totals.drops
        counts = {DROP_NAMES[r]: drops.get(r, 0) for r in DROP_NAMES}
        counts["Queue Overflow"] = self.node.queues.all_overflows(self.node.queues.drops.read())
        counts["Dataplane Error"] = totals.errors
        counts.update(kernel_ip_drops())
        return DropStats(counts)

    # -- the overlay: rt, nh, mpls ----------------------------------------------------------------

    def rt_dump(self, req: RouteDump) -> RouteTable:
        dp = self.node.dp
        vn = next((u for u, v in self.state.vrfs.items() if v == req.vrf), "")
        if not vn:
            known = ", ".join(str(v) for v in sorted(self.state.vrfs.values())) or "none: no port is plugged"
            raise PortError("VRF %d: no such VRF on this node (VRFs: %s)" % (req.vrf, known))
        net = self.state.networks.get(vn)
        here = self.node.cluster.node if self.node.cluster else ""
        routes = [
            RouteRecord(ip, 128 if ":" in ip else 32, v.nh, label_of(v.index), "LP", v.mac or "", here, v.port_uuid)
            for v in dp.vifs.values()
            if v.kind == "Virtual" and v.vrf == req.vrf
            for ip in (v.ip, v.ip6) if ip
        ]  # fmt: skip
        for (vrf, _), (r, t) in dp.overlay.routes.items():
            if vrf == req.vrf:
                routes.append(RouteRecord(r.ip, 128 if ":" in r.ip else 32, t.nh, r.label, "LP", "", r.node, r.port_uuid))
        routes.sort(key=lambda r: (ipaddress.ip_address(r.prefix).version, int(ipaddress.ip_address(r.prefix))))
        return RouteTable(req.vrf, net.name if net else "", vn, routes)

    def nexthops(self) -> list[NhRecord]:
        dp = self.node.dp
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
        return self.nexthops()

    def nh_get(self, req: NhGet) -> NhRecord:
        for nh in self.nexthops():
            if nh.id == req.id:
                return nh
        raise PortError("next hop %d: no such next hop (see vrouter nh --list)" % req.id)

    def mpls_dump(self, _: MplsDump) -> list[MplsRecord]:
        vifs = self.node.dp.overlay.by_label
        return [MplsRecord(label, vifs[label].nh) for label in sorted(vifs)]


def _kernel_status(kernel: KernelDatapath | None) -> dict[str, Any]:
    if kernel is None:
        return {}
    return {"bpf_programs": list(kernel.prog_ids), "bpf_flow_map": kernel.flows_map_id, "bpf_devices": sorted(kernel.attached().values())}
