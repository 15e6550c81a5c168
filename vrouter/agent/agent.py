"""``vrouter agent``: the compute node's agent, and its userspace dataplane's first worker.

Start-up, in this order so that no packet meets a half-built node: map the
flow table, load ports and link-local services from the state directory,
plug the ports into the kernel, start the metadata proxy's process, bind
NFQUEUE, then create the nftables table that feeds it, then switch forwarding
on and open the control socket.  SIGTERM or SIGINT undo all of it in reverse.
A stale table left by an agent that was killed is replaced at start.

While it runs: aging in small steps, a scan for taps that (re)appear, the
resolver of fabric DNS names, and the services for guests (DHCP, DNS, ARP,
ICMP, router advertisements: ``vrouter.services.guests``, on the dataplane's
traps and pkt0).  What the CLI may ask is in ``operations``.

The dataplane runs in ``[FLOWS] dataplane_workers`` workers (``dataplane.linux.workers``):
this process's loop is worker 0, the others are processes it starts after
binding its own queues and before the nftables table sends anything to theirs.
Every change of the dataplane's configuration goes to all of them through
``Agent.pool``, and every operation returns once they have applied it.
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import logging
import os
import signal
import socket
import ssl
import time
from dataclasses import dataclass

from dataplane.core.dataplane import Dataplane, Limits
from dataplane.core.traps import Trap
from dataplane.core.vif import PROXY_IP6, Vif
from dataplane.linux.aging import age_forever
from dataplane.linux.nfqueue import QUEUE_MAXLEN, QueueShell
from dataplane.linux.nftables import NftError, NftSocket, QueueRules, VmQueue
from dataplane.linux.pkt0 import Pkt0
from dataplane.linux.ports import PORT_RANGE, SocketPortAllocator
from dataplane.linux.workers import (
    AddVif,
    QueueLayout,
    RemoveVif,
    SetGuestAddresses,
    SetHostIfindex,
    SetResolved,
    SetServices,
    Setup,
    SharedCounts,
    Totals,
    Trapped,
    WorkerError,
    WorkerPool,
    default_workers,
    stats_of,
)
from flows.table import FlowTable
from vrouter.agent.cluster import Cluster
from vrouter.agent.config import AgentConfig
from vrouter.agent.control import ControlServer
from vrouter.agent.host import HostNetwork, in_namespace_hint, raise_open_files_limit, sysctl
from vrouter.agent.kernel_stats import queue_drops
from vrouter.agent.linklocal import ServiceError, ServiceTable
from vrouter.agent.metrics import AgentCollector, MetricsServer, SetupRate
from vrouter.agent.networks import Network, NetworkError, NetworkTable
from vrouter.agent.operations import Operations
from vrouter.agent.paths import StatePaths
from vrouter.agent.ports import Port, PortError, PortTable
from vrouter.agent.procinfo import alive
from vrouter.messages import Identity, NovaAddress, ProxyConfig, ProxyReport, TlsFiles
from vrouter.services.dns import Instance, Zone
from vrouter.services.guests import GuestServices, Settings
from vrouter.services.metadata.fairness import Fairness
from vrouter.services.metadata.faults import FaultError
from vrouter.services.metadata.nova_side import client_tls
from vrouter.services.metadata.supervisor import ProxyProcess, ProxyProcessError

log = logging.getLogger("vrouter.agent")

TAP_SCAN_INTERVAL = 1.0
RULES_DELAY = 0.2  # seconds from a change of the VMs to the tables' rebuild, for every change meanwhile


class AgentError(Exception):
    """The agent cannot start; the message says why and what to do."""


@dataclass
class Node:
    """What a running agent has made: its hold on the namespace's kernel, the table, the
    dataplane, the proxy's process and the queue."""

    host: HostNetwork
    vhost_ip: str
    table: FlowTable
    dataplane: Dataplane
    nat_ports: SocketPortAllocator
    proxy: ProxyProcess
    shell: QueueShell
    pkt0: Pkt0
    services: GuestServices
    pool: WorkerPool  # the dataplane's other workers


class Agent:
    def __init__(self, cfg: AgentConfig, state_dir: str, queue_num: int = 0, nova_timeout: float = 30.0, dns_interval: float = 900.0) -> None:
        self.cfg = cfg
        self.dns_interval = dns_interval
        self.state_dir = state_dir
        self.paths = StatePaths.of(state_dir)
        self.queue_num = queue_num
        self.nova_timeout = nova_timeout
        self.ports = PortTable(self.paths.ports)
        self.networks = NetworkTable(self.paths.networks)
        self.services = ServiceTable(self.paths.linklocal)
        self.node: Node | None = None
        self.started = time.time()
        self._stop = asyncio.Event()
        self._resolve_now = asyncio.Event()
        # what start-up did so far, for shutdown to undo
        self._host: HostNetwork | None = None
        self._table: FlowTable | None = None
        self._proxy: ProxyProcess | None = None
        self._shell: QueueShell | None = None
        self._pkt0: Pkt0 | None = None
        self._guests: GuestServices | None = None
        self._control: ControlServer | None = None
        self._metrics: MetricsServer | None = None
        self.setup_rate = SetupRate()
        self._made_table = False  # our nftables table exists: delete it at stop
        self._reserved_before: str | None = None
        self._proxy_ip6 = False
        self._wrote_pid = False
        self.next_fault_id = 1
        self.queue_drops_gone = 0  # queue overflows of VMs unplugged since start
        self._rules_due: asyncio.TimerHandle | None = None  # the tables' next rebuild
        self._leaving: set[int] = set()  # queues of unplugged VMs, unbound at the next rebuild
        self.cluster: Cluster | None = None  # with [ETCD] servers: the cloud's configuration
        self.layout = QueueLayout(queue_num, cfg.dataplane_workers or default_workers(), groups=not cfg.etcd_servers)
        self._pool: WorkerPool | None = None
        self._counts: SharedCounts | None = None

    # -- start and stop -------------------------------------------------------------------------

    def _check_not_running(self) -> None:
        try:
            with open(self.paths.pid) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            return
        if pid != os.getpid() and alive(pid):
            raise AgentError("an agent (pid %d) already runs with state directory %s" % (pid, self.state_dir))

    def _proxy_config(self, vhost_ip: str) -> ProxyConfig:
        c = self.cfg
        fairness = Fairness(
            header_timeout=c.metadata_header_timeout,
            max_connections_per_vm=c.metadata_max_connections_per_vm,
            rate_limit=c.metadata_rate_limit_enabled,
            base_window=c.metadata_base_window_duration,
            base_limit=c.metadata_base_query_rate_limit,
            burst_window=c.metadata_burst_window_duration,
            burst_limit=c.metadata_burst_query_rate_limit,
        )
        tls = None
        if c.metadata_use_ssl:
            tls = TlsFiles(c.metadata_ca_cert, c.metadata_client_cert, c.metadata_client_key)
            try:  # fails here, naming the file, rather than in the proxy process
                client_tls(tls.ca, tls.cert, tls.key)
            except (OSError, ssl.SSLError) as e:
                raise AgentError("[METADATA] TLS files: %s" % e) from None
        return ProxyConfig([vhost_ip, PROXY_IP6], c.metadata_proxy_port, c.metadata_proxy_secret, self.nova_timeout, fairness, tls,
                           c.metadata_journal_size, c.metadata_journal_node_size)  # fmt: skip

    async def run(self) -> None:
        if os.geteuid() != 0:
            raise AgentError("the agent needs root (CAP_NET_ADMIN) to use NFQUEUE and nftables")
        os.makedirs(self.state_dir, exist_ok=True)
        self._check_not_running()
        cfg = self.cfg
        host = self._host = HostNetwork()
        vhost_ip = cfg.vhost_ip or await host.address_of(cfg.vhost_name)
        if not vhost_ip:
            raise AgentError(
                "no IPv4 address on %s in %s: run the agent in the compute namespace "
                "(ip netns exec <prefix>-compute vrouter agent ...) or set [VIRTUAL-HOST-INTERFACE] ip" % (cfg.vhost_name, in_namespace_hint())
            )
        proxy_config = self._proxy_config(vhost_ip)
        overflow = cfg.flow_overflow_entries or cfg.flow_entries // 5
        layout = self.layout
        table = self._table = FlowTable.create_file(self.paths.flows, cfg.flow_entries, overflow, writers=layout.workers)
        limits = Limits(
            max_vm_flows=cfg.vm_flow_limit(table.capacity),
            max_vm_linklocal_flows=cfg.max_vm_linklocal_flows,
            max_system_linklocal_flows=cfg.max_system_linklocal_flows,
            vm_setup_rate=cfg.vm_flow_setup_rate,
        )
        nat_ports = SocketPortAllocator(vhost_ip, *layout.nat_ports(0, *PORT_RANGE))
        counts = self._counts = SharedCounts(self.paths.flow_counts, layout.workers, 0, create=True) if layout.workers > 1 else None
        dataplane = Dataplane(table, vhost_ip, cfg.metadata_proxy_port, limits, nat_ports, counts)

        def setup(w: int) -> Setup:
            return Setup(w, layout.workers, self.paths.flows, self.paths.flow_counts, vhost_ip, cfg.metadata_proxy_port, limits,
                         layout.nat_ports(w, *PORT_RANGE),
                         layout.node_queue(w), QUEUE_MAXLEN, cfg.flow_cache_timeout, logging.getLogger().level)  # fmt: skip

        pool = self._pool = WorkerPool(setup, layout.workers, self._trapped)
        host_ifindex = await host.ifindex(cfg.vhost_name)
        dataplane.set_host_ifindex(host_ifindex)
        pool.apply(SetHostIfindex(host_ifindex))
        self._reserved_before = host.reserve_ports(*PORT_RANGE)
        for problem in self.ports.load() + self.services.load() + self.networks.load():
            log.error("ignoring unusable state: %s", problem)
        services = list(self.services.services.values())
        dataplane.set_services(services)
        pool.apply(SetServices(services))
        await host.add_proxy_ip6(PROXY_IP6)
        self._proxy_ip6 = True
        proxy = self._proxy = ProxyProcess(proxy_config)
        shell = self._shell = QueueShell(dataplane, self.queue_num)
        settings = Settings(cfg.dhcp_lease_time, cfg.dns_domain, cfg.dns_forwarders, cfg.ra_interval)
        pkt0 = self._pkt0 = Pkt0()
        guests = self._guests = GuestServices(dataplane, self, settings, pkt0.send)
        pkt0.on_frame = guests.on_frame
        node = self.node = Node(host, vhost_ip, table, dataplane, nat_ports, proxy, shell, pkt0, guests, pool)
        for port in self.ports.ports.values():
            await self.plug(port)
        self.networks_changed()
        proxy.identities = self.identities()
        proxy.upstream = self.upstream()
        try:
            await proxy.start()
        except ProxyProcessError as e:
            raise AgentError(str(e)) from None
        loop = asyncio.get_running_loop()
        try:
            pkt0.start(loop)
        except OSError as e:
            raise AgentError("cannot open pkt0 (an AF_PACKET socket in %s): %s" % (in_namespace_hint(), e)) from None
        guests.start(loop, vhost_ip)
        raise_open_files_limit()
        try:
            shell.start(loop)
            if cfg.etcd_servers:  # tunnels from the other nodes: a queue of their own
                shell.add(self.tunnel_queue, QUEUE_MAXLEN, dataplane.from_fabric)
        except OSError as e:
            raise AgentError("cannot bind NFQUEUE %d or %d (%s): is another agent using it?" % (self.queue_num, self.tunnel_queue, e)) from None
        try:
            await pool.start()
        except WorkerError as e:
            raise AgentError(str(e)) from None
        try:
            for vif in list(dataplane.vifs.values()):
                if vif.kind == "Virtual":
                    await self._add_queues(vif.index)
        except PortError as e:
            raise AgentError(str(e)) from None
        self._made_table = True  # also when half made: a failed batch leaves nothing, delete is a no-op
        self.apply_queue_rules()
        host.enable_forwarding(True)
        if cfg.etcd_servers:
            self.cluster = Cluster(self, cfg.hostname or socket.gethostname(), vhost_ip, cfg.etcd_servers, cfg.etcd_key_prefix)
            self.cluster.start(loop)
        if cfg.metrics_port:  # before the control socket: once that answers, the agent is up
            await self._start_metrics(node, vhost_ip, cfg.metrics_port)
        self._control = ControlServer(self.paths.socket, Operations(self, node).handlers(), (PortError, ServiceError, NetworkError, FaultError),
                                      pool.settle if layout.workers > 1 else None)  # fmt: skip
        await self._control.start()
        with open(self.paths.pid, "w") as f:
            f.write("%d\n" % os.getpid())
        self._wrote_pid = True
        table.set_owner(os.getpid())
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        log.info(
            "agent up: vhost0 %s, metadata proxy port %d, %d ports, %d link-local services, flow table %d+%d entries, %d dataplane workers",
            vhost_ip, cfg.metadata_proxy_port, len(self.ports.ports), len(self.services.services), table.entries, table.overflow,
            layout.workers,
        )  # fmt: skip
        # What start-up made (modules, tables) lives as long as the agent: keep it out of the
        # garbage collector's full passes, which would otherwise walk it all and stall packets.
        gc.freeze()
        tasks = [asyncio.create_task(t) for t in (self._aging(node), self._tap_scan(node), self._resolver(node), guests.run())]
        await self._stop.wait()
        log.info("stopping")
        for t in tasks:
            t.cancel()

    async def _start_metrics(self, node: Node, vhost_ip: str, port: int) -> None:
        async def report() -> tuple[ProxyReport | None, Totals]:
            try:
                proxy: ProxyReport | None = await node.proxy.report()
            except ProxyProcessError:
                proxy = None
            return proxy, await self.totals()

        metrics = self._metrics = MetricsServer(AgentCollector(self, node), report)
        try:
            await metrics.start(vhost_ip, port)
        except OSError as e:
            raise AgentError("[DEFAULT] metrics_port %d: cannot listen on %s:%d: %s (set metrics_port to a free port, or 0 to serve no metrics)"
                             % (port, vhost_ip, port, e.strerror or e)) from None  # fmt: skip
        log.info("metrics for Prometheus at http://%s:%d/metrics", vhost_ip, port)

    async def shutdown(self) -> None:
        """Undo whatever ``run`` did, whether it finished or failed half-way."""
        if self._rules_due is not None:
            self._rules_due.cancel()
        if self._metrics is not None:
            await self._metrics.stop()
        if self.cluster is not None:
            try:
                await self.cluster.stop()
            except Exception:  # the rest of the shutdown (tables, forwarding, taps) must happen
                log.exception("stopping the cluster's follower failed")
        if self._control is not None:
            await self._control.stop()
        if self._made_table:
            try:
                with NftSocket() as nft:
                    nft.delete_tables()
            except OSError as e:
                log.error("could not delete the nftables table: %s", e)
        host = self._host
        if host is not None:
            try:
                host.enable_forwarding(False)
                if self._reserved_before is not None:
                    sysctl("net.ipv4.ip_local_reserved_ports", self._reserved_before)
            except OSError:
                pass
            for port in self.ports.ports.values():
                await host.unplug(port.tap_name, port.ip_address, port.metadata_ip)
            if self._proxy_ip6:
                await host.del_proxy_ip6(PROXY_IP6)
            host.close()
        if self._shell is not None:
            self._shell.stop()
        if self._pool is not None:
            await self._pool.stop()
        if self._guests is not None:
            self._guests.stop(asyncio.get_running_loop())
        if self._pkt0 is not None:
            self._pkt0.stop()
        if self._proxy is not None:
            await self._proxy.stop()
        if self._table is not None:
            self._table.close()
            _unlink(self.paths.flows)
        if self._counts is not None:
            self._counts.close()
            _unlink(self.paths.flow_counts)
        if self._wrote_pid:
            _unlink(self.paths.pid)

    # -- ports and services, for the operations -------------------------------------------------

    async def plug(self, port: Port) -> Vif:
        """Prepare the port's tap and plug it into the dataplane."""
        assert self.node is not None
        ifindex = await self.node.host.plug(port.tap_name, port.ip_address, port.mac, port.metadata_ip, port.metadata_ip6, port.ipv6_address)
        if not ifindex:
            log.warning("port %s: tap %s not present yet; plugged when it appears", port.uuid, port.tap_name)
        vif = Vif(port.vif, port.tap_name, ifindex, port.ip_address, port.mac, port.vrf, port_uuid=port.uuid, ip6=port.ipv6_address)
        self.node.dataplane.add_vif(vif)
        self.pool.apply(AddVif(vif))
        if self._shell is not None and self._shell.queues:
            try:
                await self._add_queues(port.vif)
            except PortError:
                self.pool.apply(RemoveVif(port.vif), self.node.dataplane.remove_vif(port.vif))  # not half plugged
                await self.node.host.unplug(port.tap_name, port.ip_address, port.metadata_ip)
                raise
            self.rules_changed()
        plugged = self.node.dataplane.vifs[port.vif]
        self.node.services.advertise(plugged)  # IPv6: a router advertisement at once, not in 30 s
        return vif

    async def unplug(self, port: Port) -> int:
        """Unplug a port (already out of the port table); return how many flow entries went."""
        assert self.node is not None
        flows = await self.pool.apply(RemoveVif(port.vif), self.node.dataplane.remove_vif(port.vif))
        # its queues go once the rules no longer send to them (what is in them then is dropped)
        self._leaving.update(self.queues_of(port.vif))
        self.rules_changed()
        await self.node.host.unplug(port.tap_name, port.ip_address, port.metadata_ip)
        return flows

    # -- queues per VM ----------------------------------------------------------------------------

    @property
    def pool(self) -> WorkerPool:
        assert self._pool is not None
        return self._pool

    @property
    def tunnel_queue(self) -> int:
        """The queue of MPLS over UDP from the other nodes (between the node's and the VMs')."""
        return self.layout.tunnel_queue

    def queues_of(self, vif_index: int) -> tuple[int, ...]:
        """A VM's own NFQUEUE queues: its data queues (one a worker), then its service queue."""
        return self.layout.queues_of(vif_index)

    def overflows_of(self, vif: Vif, overflows: dict[int, int]) -> int:
        """What the kernel dropped from a VM's queues (0 for a host vif), given every queue's count
        (``kernel_stats.all_queue_drops``)."""
        return sum(overflows.get(q, 0) for q in self.queues_of(vif.index)) if vif.kind == "Virtual" else 0

    def all_overflows(self, overflows: dict[int, int]) -> int:
        """What the kernel dropped from every queue the dataplane reads, and from those of VMs gone."""
        assert self._shell is not None
        return sum(overflows.get(q, 0) for q in set(self._shell.queues) | self.pool.queues()) + self.queue_drops_gone

    async def _add_queues(self, vif_index: int) -> None:
        """Bind a VM's queues, each in the worker that reads it; PortError (nothing of them left
        bound) if one cannot be."""
        assert self._shell is not None
        layout = self.layout
        self._leaving.difference_update(self.queues_of(vif_index))  # unplugged and plugged again before the rules changed: kept
        try:
            for q in layout.read_by(vif_index, 0):
                if q not in self._shell.queues:
                    try:
                        self._shell.add(q, self.cfg.vm_queue_length)
                    except OSError as e:
                        raise PortError("vif0/%d: cannot bind its NFQUEUE queue %d (%s): is another process using it?" % (vif_index, q, e)) from None
            for w in range(1, layout.workers):
                try:
                    await self.pool.bind(w, layout.read_by(vif_index, w), self.cfg.vm_queue_length)
                except WorkerError as e:
                    raise PortError("vif0/%d: %s" % (vif_index, e)) from None
        except PortError:
            self._remove_queues(vif_index)
            raise

    def _remove_queues(self, vif_index: int) -> None:
        for q in self.queues_of(vif_index):
            self._unbind(q)

    def _unbind(self, q: int) -> None:
        """Stop reading queue ``q`` (in the worker that reads it), keeping its count of drops."""
        local = self._shell is not None and q in self._shell.queues
        remote = [w for w in self.pool.workers if q in w.queues]
        if local or remote:
            self.queue_drops_gone += queue_drops(q)  # its count leaves /proc with it
        if local:
            assert self._shell is not None
            self._shell.remove(q)
        for w in remote:
            self.pool.unbind(w.writer, (q,))

    @property
    def rules_pending(self) -> bool:
        """Whether the tables' rebuild for a change of the ports or networks is still to come."""
        return self._rules_due is not None

    def rules_changed(self) -> None:
        """The VMs or the networks changed: the tables follow within ``RULES_DELAY``, once for all
        the changes made meanwhile (a thousand ports plugged one after the other make a few tables,
        not a thousand).  Until then a new VM's packets go to the node's queue, as a tap not yet
        plugged does, and a VM's packets still reach the dataplane: only the fair share waits."""
        if self._rules_due is None and self._made_table:
            self._rules_due = asyncio.get_running_loop().call_later(RULES_DELAY, self._apply_due_rules)

    def _apply_due_rules(self) -> None:
        self._rules_due = None
        try:
            self.apply_queue_rules()
        except AgentError as e:
            log.error("%s; the previous tables stay, and the VMs plugged since share the node's queue", e)

    def apply_queue_rules(self) -> None:
        """The nftables tables as the vifs are now: each VM's tap and metadata IPs to its queues;
        then the queues of VMs unplugged meanwhile go."""
        if self._rules_due is not None:
            self._rules_due.cancel()
            self._rules_due = None
        if not self._made_table or self.node is None:
            return
        layout = self.layout
        vms = tuple(
            VmQueue(v.ifindex, layout.data_queues(v.index)[0], layout.service_queue(v.index), v.metadata_ip_bytes, v.metadata_ip6_bytes,
                    len(layout.data_queues(v.index)))
            for v in sorted(self.node.dataplane.vifs.values(), key=lambda v: v.index)
            if v.kind == "Virtual"
        )  # fmt: skip
        services = tuple(socket.inet_aton(a) for n in self.networks.networks.values() for a in (n.gateway, n.dns_server) if a)
        nat = tuple((*layout.nat_ports(w, *PORT_RANGE), layout.node_queue(w)) for w in range(layout.workers)) if layout.workers > 1 else ()
        rules = QueueRules(queue_num=self.queue_num, vhost_name=self.cfg.vhost_name, nat_ports=PORT_RANGE, vms=vms, service_ips=services,
                           tunnel_queue=self.tunnel_queue if self.cfg.etcd_servers else -1, nat_ranges=nat)  # fmt: skip
        try:
            with NftSocket() as nft:
                nft.create_queue_table(rules)
                nft.create_queue_table6(rules)
        except NftError as e:
            raise AgentError("cannot create the nftables table: %s" % e) from None
        leaving, self._leaving = self._leaving, set()
        for q in leaving:
            self._unbind(q)

    def services_changed(self) -> asyncio.Future[int]:
        """The link-local services changed: the dataplane's table follows, in every worker; the
        future is how many flow entries went with services that changed or went."""
        assert self.node is not None
        self._resolve_now.set()
        services = list(self.services.services.values())
        return self.pool.apply(SetServices(services), self.node.dataplane.set_services(services))

    def networks_changed(self) -> None:
        """Networks or ports changed: the dataplane traps for each VRF's gateway and service address."""
        assert self.node is not None
        for vn, vrf in self.ports.vrfs.items():
            net = self.networks.networks.get(vn)
            addresses = None if net is None else (ipaddress.IPv4Address(net.gateway).packed, ipaddress.IPv4Address(net.dns_server).packed)
            self.pool.apply(SetGuestAddresses(vrf, addresses), self.node.dataplane.set_guest_addresses(vrf, addresses))
        if self.cluster is not None:  # a network's first port here: the routes to its VMs elsewhere
            self.cluster.apply_routes()
        self.rules_changed()  # what the VMs send to a gateway or service address: to their service queues

    # -- what the services ask (services.guests.Directory) ---------------------------------------

    def port_of(self, vif_index: int) -> Port | None:
        return self.ports.by_vif(vif_index)

    def network_of(self, vn_uuid: str) -> Network | None:
        return self.networks.networks.get(vn_uuid)

    def zone_of(self, vn_uuid: str) -> Zone:
        net = self.networks.networks.get(vn_uuid)
        domain = (net.domain if net is not None else "") or self.cfg.dns_domain
        names = tuple(Instance(p.vm_name, p.ip_address, p.ipv6_address) for p in self.ports.ports.values() if p.vn_uuid == vn_uuid and p.vm_name)
        if self.cluster is not None:  # and the network's instances on the other nodes
            names += self.cluster.instances_of(vn_uuid)
        return Zone(domain, names)

    def identities(self) -> dict[str, Identity]:
        """Who is behind each metadata IP, as the proxy process is told (IPv4 and IPv6)."""
        out: dict[str, Identity] = {}
        for p in self.ports.ports.values():
            who = Identity(p.instance_uuid, p.vm_project_uuid, p.ip_address, p.uuid, p.vm_name, p.vif)
            out[p.metadata_ip] = who
            out[p.metadata_ip6] = who
        return out

    def upstream(self) -> NovaAddress | None:
        """Where Nova is: the metadata service's fabric IPs, or what its DNS name resolved to."""
        s = self.services.metadata_service()
        if s is None:
            return None
        ips = list(self.node.dataplane.service_ips(s)) if self.node is not None else list(s.fabric_ips)
        return NovaAddress(ips, s.fabric_port) if ips else None

    async def tell_proxy(self) -> None:
        """Ports or services changed: the proxy process knows before the operation returns."""
        if self.node is not None:
            await self.node.proxy.set_identities(self.identities())
            await self.node.proxy.set_upstream(self.upstream())

    # -- while it runs --------------------------------------------------------------------------

    async def _tap_scan(self, node: Node) -> None:
        """Plug taps that appeared after their port was added, or that were re-created."""
        while True:
            await asyncio.sleep(TAP_SCAN_INTERVAL)
            for port in list(self.ports.ports.values()):
                vif = node.dataplane.vifs.get(port.vif)
                idx = await node.host.ifindex(port.tap_name)
                if vif is not None and idx and idx != vif.ifindex:
                    log.info("port %s: tap %s (re)appeared as ifindex %d", port.uuid, port.tap_name, idx)
                    await self.plug(port)

    async def _aging(self, node: Node) -> None:
        """Aging of worker 0's flows (each worker ages its own), and the set-up rate once a second."""
        dp = node.dataplane
        await age_forever(dp, lambda: self.cfg.flow_cache_timeout, lambda: self.setup_rate.sample(time.monotonic(), dp.entries.added))

    def _trapped(self, t: Trapped) -> None:
        """A packet another worker trapped for the services (counted as the vif's RX there)."""
        if self.node is None:
            return
        vif = self.node.dataplane.vifs.get(t.vif)
        if vif is not None:
            self.node.services.on_trap(Trap(t.trap), t.packet, vif, t.ihl)

    async def totals(self) -> Totals:
        """The dataplane's counters, every worker's added up."""
        node = self.node
        assert node is not None
        local = stats_of(node.dataplane, node.shell, node.nat_ports.in_use, {})
        return Totals.of(local, await self.pool.stats())

    async def _resolver(self, node: Node) -> None:
        """Resolve fabric DNS names of services in the background; again every dns_interval."""
        loop = asyncio.get_running_loop()
        while True:
            for s in list(self.services.services.values()):
                name = s.fabric_dns_name
                if not name or s.fabric_ips:
                    continue
                try:
                    infos = await asyncio.wait_for(loop.getaddrinfo(name, None, family=socket.AF_INET, type=socket.SOCK_STREAM), 10)
                    addrs = tuple(sorted({str(i[4][0]) for i in infos}))
                except (TimeoutError, OSError) as e:
                    log.warning("link-local service %s: cannot resolve %s: %s", s.name, name, e)
                    continue
                if node.dataplane.services.resolved.get(name) != addrs:
                    log.info("link-local service %s: %s is %s", s.name, name, ", ".join(addrs))
                    node.dataplane.set_resolved(name, addrs)
                    self.pool.apply(SetResolved(name, addrs))
                    await self.tell_proxy()
            self._resolve_now.clear()
            try:
                await asyncio.wait_for(self._resolve_now.wait(), self.dns_interval)
            except TimeoutError:
                pass


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


async def run_agent(cfg: AgentConfig, state_dir: str, queue_num: int = 0, nova_timeout: float = 30.0, dns_interval: float = 900.0) -> None:
    agent = Agent(cfg, state_dir, queue_num, nova_timeout, dns_interval)
    try:
        await agent.run()
    finally:
        await agent.shutdown()
