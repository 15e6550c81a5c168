"""One compute node's dataplane: the flow table and the parts that act on it, put together.

Pure code, as tf-vrouter's dp-core: bytes in, verdicts out, no system call.
The NFQUEUE shell (``dataplane.linux.nfqueue``) is the only caller that
touches the kernel; unit tests drive this class with byte strings.

The parts, along the seam every fast dataplane has (the vRouter's datapath and
agent, OVS's upcall handler and revalidator):

* ``fastpath.PacketPath``: the per-packet path of live flows (``process``);
* ``flowsetup.FlowSetup``: flow set-up on a miss;
* ``lifecycle.Lifecycle``: TCP close, eviction of closed pairs, aging;
* ``entries.Entries``: the per-entry state and limits the three share;
* ``vif.VifTable``, ``services.LinkLocalTable`` and ``traps.TrapTable``: what set-up reads;
* ``capture.Captures``: vifdump's copies, in the path only while a capture runs;
* ``overlay.Overlay``: routes to VMs on other nodes, their tunnels, the local labels;
  ``from_fabric`` is the entry point of the packets tunnels bring.

This class is what the agent configures: vifs plugged and unplugged, the
link-local services, and the aging steps it schedules.  Changing a vif or a
service removes the flows that depended on it.
"""

from __future__ import annotations

import time

from dataplane.core.capture import Captures
from dataplane.core.entries import Entries, FlowShares, Limits, PortAllocator
from dataplane.core.fastpath import PacketPath, Verdict
from dataplane.core.flowsetup import FlowSetup
from dataplane.core.lifecycle import Lifecycle
from dataplane.core.overlay import TUNNEL_NH_BASE, Overlay, Route
from dataplane.core.packet import Malformed, fast4, parse
from dataplane.core.services import LinkLocalService, LinkLocalTable, service_ip4
from dataplane.core.traps import TrapTable
from dataplane.core.vif import Vif, VifTable
from flows.layout import KEY, Action, DropReason
from flows.table import FlowTable

__all__ = ["Dataplane", "Limits", "Verdict"]


class Dataplane:
    """Flow table plus the tables a flow set-up reads (vifs, link-local services)."""

    def __init__(
        self,
        table: FlowTable,
        vhost_ip: str,
        proxy_port: int = 8097,
        limits: Limits | None = None,
        ports: PortAllocator | None = None,
        shares: FlowShares | None = None,
    ) -> None:
        self.table = table
        self.vhost_ip = vhost_ip
        self.vif_table = VifTable(vhost_ip)
        self.vifs = self.vif_table.by_index  # vif index -> Vif
        self.host = self.vif_table.host
        self.services = LinkLocalTable(vhost_ip)
        self.traps = TrapTable()
        self.overlay = Overlay(vhost_ip)
        self.entries = Entries(table, limits or Limits(), ports, shares)
        self.lifecycle = Lifecycle(table, self.entries)
        self.flow_setup = FlowSetup(
            table, self.entries, self.lifecycle, self.vif_table, self.services, self.traps, vhost_ip, proxy_port, ports, self.overlay
        )
        self.path = PacketPath(table, self.entries, self.vif_table, self.flow_setup, self.lifecycle)
        self.process = self.path.process  # the per-packet entry point, without a call of ours around it
        self.captures = Captures(self.path, self.vif_table, table, self.entries)
        self.captures.on_change = self._capturing
        self.drops = self.path.drops
        self.age_step = self.lifecycle.age_step
        self.evict_closed = self.lifecycle.evict_closed
        self.age = self.lifecycle.age

    def _capturing(self, active: bool) -> None:
        self.process = self.captures.process if active else self.path.process

    @property
    def setups(self) -> int:
        """Pairs set up since start."""
        return self.flow_setup.setups

    # -- vifs -----------------------------------------------------------------------------------

    def set_host_ifindex(self, ifindex: int) -> None:
        self.vif_table.set_host_ifindex(ifindex)

    def add_vif(self, vif: Vif) -> None:
        """Plug a vif.  The same port again (a re-created tap, same address and VRF) keeps its
        flows and counters; a vif index plugged with another address or VRF loses its flows."""
        old = self.vifs.get(vif.index)
        if old is not None:
            if old.ip_bytes == vif.ip_bytes and old.vrf == vif.vrf:
                self.vif_table.replug(old, vif)
                return
            self.remove_vif(vif.index)
        self.vif_table.add(vif)
        self.overlay.add_vif(vif)
        if vif.ip_bytes:  # a VM that pinged it before it was here must reach it now
            self.entries.delete(self._no_route_to({(vif.vrf, vif.ip_bytes)}))

    def _no_route_to(self, targets: set[tuple[int, bytes]], tunnels: bool = False) -> list[int]:
        """The Drop entries (No L3 Route) of flows to these (VRF, IPv4 address): a flow that found
        no route keeps its Drop entry alive with every packet, so it would never find the route
        that came since.  With ``tunnels``, in the same pass, also the entries of tunnel flows
        to or from them (their route changed or went)."""
        doomed = []
        for i, st in self.entries.live():
            no_route = st.action == Action.DROP and st.reason == DropReason.NO_ROUTE
            tunnel = tunnels and ((st.out is not None and st.out.kind == "Tunnel") or st.vin >= TUNNEL_NH_BASE)
            if no_route or tunnel:
                e = self.table.read(i)
                if e.family == 4 and ((e.vrf, e.dst[:4]) in targets or (tunnel and (e.vrf, e.src[:4]) in targets)):
                    doomed.append(i)
        return doomed

    def _forget_drops(self, index: int) -> None:
        """The per-vif drop counts of a vif or tunnel that went."""
        for key in [k for k in self.path.vif_drops if k[0] == index]:
            del self.path.vif_drops[key]

    def remove_vif(self, index: int) -> int:
        """Forget a vif and remove every flow to or from it; return how many entries went."""
        vif = self.vif_table.remove(index)
        if vif is None:
            return 0
        self.overlay.remove_vif(vif)
        self._forget_drops(index)
        self.entries.forget_rate(index)
        return self.entries.delete([i for i, st in self.entries.live() if st.vin == index or st.out is vif])

    # -- the overlay --------------------------------------------------------------------------------

    def set_routes(self, routes: list[Route]) -> int:
        """Replace the routes to VMs on other nodes; the flows of routes that changed or went
        go, and so do the Drop entries of flows that found no route to a route that came.
        Return how many entries went."""
        tunnels = set(self.overlay.by_nh)
        changed = self.overlay.set_routes(routes)
        for nh in tunnels - set(self.overlay.by_nh):  # a tunnel gone: its drop counts with it
            self._forget_drops(nh)
        if not changed:
            return 0
        return self.entries.delete(self._no_route_to(changed, tunnels=True))

    def from_fabric(self, pkt: bytes, indev: int, now: int | None = None) -> Verdict:
        """The verdict for a packet a tunnel brought (MPLS over UDP to vhost0): its inner
        packet for the VM its label names, or a drop."""
        if now is None:
            now = time.time_ns()
        path = self.path
        d = self.overlay.decap(pkt)
        if d is None:
            return path.drop(DropReason.INVALID_PACKET)
        inner, tunnel = d.inner, d.tunnel.vif
        p = fast4(inner)  # most are IPv4 TCP or UDP with a 20-byte header: one struct call
        if p is None:
            try:
                p = parse(inner)
            except Malformed:
                return path.drop(DropReason.INVALID_PACKET, tunnel)
        tunnel.rx_packets += 1
        tunnel.rx_bytes += len(inner)
        key = KEY.pack(tunnel.index, p.src, p.dst, p.sport, p.dport, p.proto, 4 if len(p.src) == 4 else 6)
        index = self.table.lookup(key)
        if index < 0:
            index, refused = self.flow_setup.from_tunnel(d, p, key, now)
            if refused:
                return path.drop(refused, tunnel)
        elif self.entries.states[index].out is not d.vif:  # type: ignore[union-attr]
            return path.drop(DropReason.INVALID_SOURCE, tunnel)  # the label names another VM
        v = path.hit(inner, tunnel, index, now, p.proto, p.tcp_flags, p.ihl)
        if v.accept and v.payload is None:
            if len(p.src) == 16:  # IPv6 inside: the queue's verdict cannot turn the IPv4 packet into it
                return path.SENT if path.inject(inner, 0) else path.drop(DropReason.FLOW_UNUSABLE, tunnel)
            return Verdict(True, inner)
        return v

    # -- link-local services --------------------------------------------------------------------

    def set_services(self, services: list[LinkLocalService]) -> int:
        """Replace the link-local service table; flows of removed or changed services go."""
        gone = self.services.replace(services)
        if not gone:
            return 0
        doomed = []
        for i, st in self.entries.live():
            if st.link_local:
                e = self.table.read(i)
                if (service_ip4(e.dst), e.dport) in gone:
                    doomed.append(i)
        return self.entries.delete(doomed)

    def set_resolved(self, name: str, addresses: tuple[str, ...]) -> None:
        """What a fabric DNS name resolved to."""
        self.services.resolved[name] = addresses

    def service_ips(self, service: LinkLocalService) -> tuple[str, ...]:
        return self.services.fabric_ips(service)

    def set_guest_addresses(self, vrf: int, addresses: tuple[bytes, ...] | None) -> int:
        """The gateway and service address of VRF ``vrf``'s network, and its IPv6 ones when it is
        dual stack (None: not configured), which
        the agent's services answer for.  When they change, the VRF's trap and Drop entries go
        (a ping to the gateway dropped before the network was configured is trapped now);
        return how many entries went."""
        if self.traps.by_vrf.get(vrf) == addresses:
            return 0
        if addresses is None:
            self.traps.clear(vrf)
        else:
            self.traps.set(vrf, *addresses)
        vifs = self.vifs
        doomed = []
        for i, st in self.entries.live():
            v = vifs.get(st.vin)
            if v is not None and v.vrf == vrf and (st.trap is not None or st.action == Action.DROP):
                doomed.append(i)
        return self.entries.delete(doomed)

    def flush(self) -> int:
        """Remove every flow."""
        return self.entries.delete([i for i, _ in self.entries.live()])
