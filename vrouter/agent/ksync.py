"""KSync: the node's state carried into the kernel and the dataplane, as the vRouter agent's KSync
carries its oper DB into the vRouter kernel module.

The first subscriber of ``NodeState``: a port plugged gets its tap prepared
(``host``), its vif in every dataplane worker (``Dataplanes``), its NFQUEUE
queues bound in the workers that read them and, within ``RULES_DELAY``, the
nftables tables that send its packets there (``queues``); a port whose queues
cannot be bound is refused, and nothing of it stays.  A network's gateway and
service address become the VRF's trapped addresses; the link-local services,
what their DNS names resolved to and the routes to the other nodes' VMs go to
every worker.  What the dataplane counts is added up here for the tools
(``totals``).  In the ebpf datapath (``kernel``), a plugged port's tap also
gets the kernel's programs and its vif in the kernel's maps, and what the
kernel counted is added to the totals.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable

from dataplane.core.overlay import Route
from dataplane.core.vif import Vif
from dataplane.linux.ebpf import DatapathError, KernelDatapath
from dataplane.linux.nfqueue import QueueShell
from dataplane.linux.totals import Totals, WorkerStats, stats_of
from dataplane.linux.workers import Dataplanes
from vrouter.agent.host import HostNetwork
from vrouter.agent.queues import VmQueues
from vrouter.agent.state import (
    Change,
    NetworkChanged,
    NodeState,
    PortChanged,
    RemoteChanged,
    ResolvedChanged,
    ServicesChanged,
)
from vrouter.model import Network, Port, PortError

log = logging.getLogger("vrouter.agent")


class KSync:
    def __init__(self, state: NodeState, host: HostNetwork, dataplanes: Dataplanes, shell: QueueShell, queues: VmQueues,
                 nat_in_use: Callable[[], int], advertise: Callable[[Vif], None], kernel: KernelDatapath | None = None) -> None:  # fmt: skip
        self.state = state
        self.host = host
        self.dataplanes = dataplanes
        self.dp = dataplanes.local  # worker 0's: what the tools read
        self.shell = shell
        self.queues = queues
        self.nat_in_use = nat_in_use
        self.advertise = advertise  # IPv6: a router advertisement at once, not in 30 s
        self.resolve_now = asyncio.Event()  # the services changed: their DNS names again
        self._vrfs: set[int] = set()  # the VRFs whose routes and trapped addresses were given
        self.kernel = kernel  # the ebpf datapath's programs and maps; None: nfqueue datapath

    async def changed(self, change: Change) -> int:
        if isinstance(change, PortChanged):
            return await self._port(change)
        if isinstance(change, NetworkChanged):
            net = change.net or change.before
            assert net is not None
            vrf = self.state.vrfs.get(net.uuid)
            if vrf:
                self._guest_addresses(vrf, change.net)
            self.queues.rules_changed()  # what the VMs send to a gateway or service address: to their service queues
            return 0
        if isinstance(change, ServicesChanged):
            self.resolve_now.set()
            return await self.dataplanes.set_services(list(change.services.values()))
        if isinstance(change, ResolvedChanged):
            return await self.dataplanes.set_resolved(change.name, change.addresses)
        if isinstance(change, RemoteChanged):
            return await self._routes()
        return 0

    # -- ports --

    async def _port(self, change: PortChanged) -> int:
        flows = 0
        if change.port is None:
            assert change.before is not None
            flows = await self.unplug(change.before)
        else:
            await self.plug(change.port)
        new_vrfs = set(self.state.vrfs.values()) - self._vrfs
        if new_vrfs:  # a network's first port here: its trapped addresses, the routes to its VMs elsewhere
            for vrf in new_vrfs:
                vn = next(u for u, v in self.state.vrfs.items() if v == vrf)
                self._guest_addresses(vrf, self.state.networks.get(vn))
            self._vrfs |= new_vrfs
            if self.state.remote:
                flows += await self._routes()
        return flows

    async def plug(self, port: Port) -> Vif:
        """Prepare the port's tap and plug it into every dataplane worker; PortError (nothing of it
        left) if its queues cannot be bound."""
        ifindex = await self.host.plug(port.tap_name, port.ip_address, port.mac, port.metadata_ip, port.metadata_ip6, port.ipv6_address)
        if not ifindex:
            log.warning("port %s: tap %s not present yet; plugged when it appears", port.uuid, port.tap_name)
        vif = Vif(port.vif, port.tap_name, ifindex, port.ip_address, port.mac, port.vrf, port_uuid=port.uuid, ip6=port.ipv6_address)
        if self.kernel is not None and ifindex:
            try:
                self.kernel.set_vif(port.vif, ifindex, port.mac, tap=True, capture=bool(self.dp.captures.by_vif.get(port.vif)))
                self.kernel.attach(ifindex, port.tap_name)
            except (DatapathError, OSError) as e:
                self.kernel.remove_vif(port.vif)
                await self.host.unplug(port.tap_name, port.ip_address, port.metadata_ip)
                raise PortError("port %s: %s" % (port.uuid, e)) from None
        self.dataplanes.add_vif(vif)
        if self.queues.started:
            try:
                await self.queues.add(port.vif)
            except PortError:
                self.dataplanes.remove_vif(port.vif)  # not half plugged
                if self.kernel is not None and ifindex:
                    self.kernel.detach(ifindex)
                    self.kernel.remove_vif(port.vif)
                await self.host.unplug(port.tap_name, port.ip_address, port.metadata_ip)
                self.queues.rules_changed()  # a rebuild while it was being bound may have its rules
                raise
            self.queues.plugged(port.vif)  # its rules in force before port add answers
        self.advertise(self.dp.vifs[port.vif])
        return vif

    async def unplug(self, port: Port) -> int:
        """Unplug a port; how many flow entries went."""
        if self.kernel is not None:
            old = self.dp.vifs.get(port.vif)
            if old is not None and old.ifindex:
                self.kernel.detach(old.ifindex)
            self.kernel.remove_vif(port.vif)
        flows = await self.dataplanes.remove_vif(port.vif)
        self.queues.leave(port.vif)  # its queues go once the rules no longer send to them
        await self.host.unplug(port.tap_name, port.ip_address, port.metadata_ip)
        return flows

    async def tap_scan(self, interval: float) -> None:
        """Plug taps that appeared after their port was added, or that were re-created."""
        while True:
            await asyncio.sleep(interval)
            if self.kernel is not None:
                self.kernel.refresh_clock()  # the kernel's stamps follow a stepped clock
            for port in list(self.state.ports.values()):
                vif = self.dp.vifs.get(port.vif)
                idx = await self.host.ifindex(port.tap_name)
                if vif is not None and idx and idx != vif.ifindex:
                    log.info("port %s: tap %s (re)appeared as ifindex %d", port.uuid, port.tap_name, idx)
                    try:
                        await self.plug(port)
                    except PortError as e:  # the scan goes on: the next one tries again
                        log.error("port %s: cannot plug its tap: %s", port.uuid, e)

    # -- networks and routes --

    def _guest_addresses(self, vrf: int, net: Network | None) -> None:
        """The dataplane traps a VRF's gateway and service address (none without a network)."""
        addresses: tuple[bytes, ...] | None = None
        if net is not None:
            addresses = (ipaddress.IPv4Address(net.gateway).packed, ipaddress.IPv4Address(net.dns_server).packed)
            if net.subnet6:
                addresses += (ipaddress.IPv6Address(net.gateway6).packed, ipaddress.IPv6Address(net.dns_server6).packed)
        self.dataplanes.set_guest_addresses(vrf, addresses)

    async def _routes(self) -> int:
        """The routes to the other nodes' VMs, in the VRFs of their networks here (none for a
        network with no VM here: nothing of ours can reach it)."""
        vrfs = self.state.vrfs
        routes = [Route(vrfs[r.vn_uuid], r.address, r.node, r.node_ip, r.label, r.mac, r.port_uuid) for r in self.state.remote if r.vn_uuid in vrfs]
        gone = await self.dataplanes.set_routes(routes)
        if gone:
            log.info("cluster: routes changed, %d flow entries removed", gone)
        return gone

    # -- counters --

    async def totals(self) -> Totals:
        """The dataplane's counters, every worker's added up."""
        local = stats_of(self.dp, self.shell, self.nat_in_use(), {})
        others = await self.dataplanes.pool.stats()
        if self.kernel is not None:  # what the kernel forwarded, dropped and counted itself
            vifs, vif_drops, drops = self.kernel.stats()
            others.append(WorkerStats(vifs=vifs, vif_drops=vif_drops, drops=drops))
        return Totals.of(local, others)

    def capture_changed(self, vif: int) -> None:
        """A vifdump capture of ``vif`` began or ended: in the ebpf datapath, while one is on, all
        of the vif's packets go through the engine (which copies them to the captures)."""
        if self.kernel is None:
            return
        on = bool(self.dp.captures.by_vif.get(vif))
        self.kernel.set_capture(vif, on)
        if on:
            self.queues.captured.add(vif)
        else:
            self.queues.captured.discard(vif)
        self.queues.apply_rules()
