"""``vrouter agent``: the compute node's agent, and its userspace dataplane's first worker.

``Agent`` starts and stops things; what the node is configured to be lives in
``NodeState`` (``state``), and the subscribers to it carry each change out:
``KSync`` (the kernel and every dataplane worker), ``Persistence`` (the state
directory's files), ``ProxySync`` (the metadata proxy process) and, on a node
of a cloud, ``Cluster`` (etcd).  The CLI's operations (``operations``), the
etcd follower and the start-up load of the files only produce changes.

Start-up, in this order so that no packet meets a half-built node: map the
flow table (in the ebpf datapath: load the kernel's programs, whose map is the
table, and attach them to vhost0), load ports, networks and link-local services from the state
directory into the state (plugging the ports into the kernel), start the
metadata proxy's process, bind NFQUEUE, start the other dataplane workers,
bind the VMs' queues, then create the nftables table that feeds them, then
switch forwarding on and open the control socket.  SIGTERM or SIGINT undo all
of it in reverse.  A stale table left by an agent that was killed is replaced
at start.

While it runs: aging in small steps, a scan for taps that (re)appear, the
resolver of fabric DNS names, and the services for guests (DHCP, DNS, ARP,
ICMP, router advertisements: ``vrouter.services.guests``, on the dataplane's
traps and pkt0).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import ssl
import time

from dataplane.core.dataplane import Dataplane, Limits
from dataplane.core.traps import Trap
from dataplane.core.vif import PROXY_IP6
from dataplane.linux.aging import age_forever
from dataplane.linux.ebpf import FAST_MARK, DatapathError, KernelDatapath, detach_stale, watch_closes
from dataplane.linux.layout import QueueLayout, SharedCounts, default_workers
from dataplane.linux.nfqueue import QUEUE_MAXLEN, QueueShell
from dataplane.linux.pkt0 import Pkt0
from dataplane.linux.ports import PORT_RANGE, SocketPortAllocator
from dataplane.linux.raw import RawSender
from dataplane.linux.ringbuf import RingBuffer
from dataplane.linux.totals import Totals
from dataplane.linux.workers import Dataplanes, Setup, Trapped, WorkerPool
from flows.storage import write_map_pointer
from flows.table import FlowTable, round_entries
from infra.children import ChildError
from infra.procinfo import alive
from vrouter.agent.cluster import Cluster
from vrouter.agent.config import AgentConfig
from vrouter.agent.control import ControlServer
from vrouter.agent.host import VROUTER_MAC, HostNetwork, in_namespace_hint, raise_open_files_limit, sysctl
from vrouter.agent.ksync import KSync
from vrouter.agent.metrics import AgentCollector, Metrics
from vrouter.agent.node import Node
from vrouter.agent.operations import Operations
from vrouter.agent.paths import StatePaths
from vrouter.agent.persist import Persistence
from vrouter.agent.proxy_sync import ProxySync
from vrouter.agent.queues import QueueSettings, RulesError, VmQueues
from vrouter.agent.rate import SetupRate
from vrouter.agent.state import GuestDirectory, NodeState, Origin
from vrouter.introspect.server import Introspect, IntrospectServer
from vrouter.introspect.traces import ConfigTrace
from vrouter.messages.proxy import ProxyConfig, ProxyReport, TlsFiles
from vrouter.model import NetworkError, PortError, ServiceError
from vrouter.services.guests import GuestServices
from vrouter.services.metadata.faults import FaultError
from vrouter.services.metadata.nova_side import client_tls
from vrouter.services.metadata.supervisor import ProxyProcess, ProxyProcessError

log = logging.getLogger("vrouter.agent")

TAP_SCAN_INTERVAL = 1.0


class AgentError(Exception):
    """The agent cannot start; the message says why and what to do."""


class Agent:
    def __init__(self, cfg: AgentConfig, state_dir: str, queue_num: int = 0, nova_timeout: float = 30.0, dns_interval: float = 900.0) -> None:
        self.cfg = cfg
        self.dns_interval = dns_interval
        self.state_dir = state_dir
        self.paths = StatePaths.of(state_dir)
        self.queue_num = queue_num
        self.nova_timeout = nova_timeout
        self.state = NodeState()
        self.node: Node | None = None
        self._stop = asyncio.Event()
        self.layout = QueueLayout(queue_num, cfg.flows.dataplane_workers or default_workers(), groups=not cfg.etcd.servers)
        # what start-up did so far, for shutdown to undo
        self._host: HostNetwork | None = None
        self._table: FlowTable | None = None
        self._kernel: KernelDatapath | None = None
        self._closes: RingBuffer | None = None  # ebpf: the kernel's closed pairs of worker 0's entries
        self._counts: SharedCounts | None = None
        self._pool: WorkerPool | None = None
        self._proxy: ProxyProcess | None = None
        self._shell: QueueShell | None = None
        self._pkt0: Pkt0 | None = None
        self._guests: GuestServices | None = None
        self._queues: VmQueues | None = None
        self._cluster: Cluster | None = None
        self._control: ControlServer | None = None
        self._http: IntrospectServer | None = None
        self._config_trace = ConfigTrace()
        self._reserved_before: str | None = None
        self._proxy_ip6 = False
        self._wrote_pid = False

    # -- start -----------------------------------------------------------------------------------

    def _check_not_running(self) -> None:
        try:
            with open(self.paths.pid) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            return
        if pid != os.getpid() and alive(pid):
            raise AgentError("an agent (pid %d) already runs with state directory %s" % (pid, self.state_dir))

    def _check_etcd_tls(self) -> None:
        """The files of [ETCD]'s TLS, loaded as the connections will load them: a bad one stops
        start-up here, named, rather than every connection to etcd later."""
        tls = self.cfg.etcd.tls
        if tls is None:
            return
        try:
            tls.check()
        except ValueError as e:
            raise AgentError("[ETCD] TLS files: %s" % e) from None
        for key in tls.group_or_world_readable():
            log.warning("[ETCD] keyfile %s is readable by other users than its owner: chmod 600 it", key)

    def _proxy_config(self, vhost_ip: str) -> ProxyConfig:
        m = self.cfg.metadata
        tls = None
        if m.use_ssl:
            tls = TlsFiles(m.ca_cert, m.client_cert, m.client_key)
            try:  # fails here, naming the file, rather than in the proxy process
                client_tls(tls.ca, tls.cert, tls.key)
            except (OSError, ssl.SSLError) as e:
                raise AgentError("[METADATA] TLS files: %s" % e) from None
        return ProxyConfig([vhost_ip, PROXY_IP6], m.proxy_port, m.proxy_secret, self.nova_timeout, m.fairness, tls, m.journal_size,
                           m.journal_node_size)  # fmt: skip

    async def run(self) -> None:
        if os.geteuid() != 0:
            raise AgentError("the agent needs root (CAP_NET_ADMIN) to use NFQUEUE and nftables")
        for fixed in self.paths.private():
            log.warning("%s was open to other users than root: made root's alone", fixed)
        self._check_not_running()
        self._check_etcd_tls()
        cfg, layout, state = self.cfg, self.layout, self.state
        host = self._host = HostNetwork()
        vhost_ip = cfg.vhost.ip or await host.address_of(cfg.vhost.name)
        if not vhost_ip:
            raise AgentError(
                "no IPv4 address on %s in %s: run the agent in the compute namespace "
                "(ip netns exec <prefix>-compute vrouter agent ...) or set [VIRTUAL-HOST-INTERFACE] ip" % (cfg.vhost.name, in_namespace_hint())
            )
        vhost_ip6 = await host.address6_of(cfg.vhost.name)  # link-local services over IPv6 ("": none)
        proxy_config = self._proxy_config(vhost_ip)
        stale = detach_stale("tap", cfg.vhost.name)
        if stale:
            log.info("removed the programs a previous agent left attached to %s", ", ".join(stale))
        dp, dataplanes, nat_ports = self._dataplane(vhost_ip, vhost_ip6)
        vhost_ifindex = await host.ifindex(cfg.vhost.name)
        dataplanes.set_host_ifindex(vhost_ifindex)
        kernel = self._kernel
        if kernel is not None and vhost_ifindex:  # the fabric's replies to link-local NAT flows
            kernel.configure(dp.host.index, VROUTER_MAC)
            kernel.set_vif(dp.host.index, vhost_ifindex, tap=False)
            try:
                kernel.attach(vhost_ifindex, cfg.vhost.name, egress=False)
            except DatapathError as e:
                raise AgentError(str(e)) from None
        self._reserved_before = host.reserve_ports(*PORT_RANGE)
        await host.add_proxy_ip6(PROXY_IP6)
        self._proxy_ip6 = True
        proxy = self._proxy = ProxyProcess(proxy_config)
        shell = self._shell = QueueShell(dp, self.queue_num)
        pkt0 = self._pkt0 = Pkt0()
        guests = self._guests = GuestServices(dp, GuestDirectory(state, cfg.services.dns_domain), cfg.services, pkt0.send)
        pkt0.on_frame = guests.on_frame
        queue_settings = QueueSettings(cfg.vhost.name, cfg.flows.vm_queue_length, bool(cfg.etcd.servers), FAST_MARK if kernel is not None else 0)
        queues = self._queues = VmQueues(layout, queue_settings, shell, dataplanes.pool, dp, state)
        ksync = KSync(state, host, dataplanes, shell, queues, lambda: nat_ports.in_use, guests.advertise, kernel)
        persistence = Persistence(self.paths)
        for s in (ksync, persistence, ProxySync(state, proxy, dp.service_ips), self._config_trace):
            state.subscribe(s)
        await self._load(persistence)
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
            if cfg.etcd.servers:  # tunnels from the other nodes: a queue of their own
                shell.add(layout.tunnel_queue, QUEUE_MAXLEN, dp.from_fabric)
            if kernel is not None:
                self._closes = watch_closes(loop, kernel.close_rings[0], dp.lifecycle)
                dp.flow_setup.hold = True  # a new flow's packets in the kernel only after those queued
        except OSError as e:
            raise AgentError("cannot bind NFQUEUE %d or %d (%s): is another agent using it?" % (self.queue_num, layout.tunnel_queue, e)) from None
        try:
            await dataplanes.pool.start()
            await queues.start()
            queues.apply_rules()
        except (ChildError, PortError, RulesError) as e:
            raise AgentError(str(e)) from None
        host.enable_forwarding(True)
        node = self.node = Node(
            cfg, self.paths, time.time(), vhost_ip, state, dp, dataplanes.pool, ksync, queues, proxy, guests, SetupRate(), self._config_trace
        )
        if cfg.etcd.servers:
            cluster = self._cluster = node.cluster = Cluster(state, cfg.default.hostname or socket.gethostname(), vhost_ip, cfg.etcd.servers,
                                                             cfg.etcd.key_prefix, self.paths.cluster, lambda: len(dp.overlay.routes),
                                                             cfg.etcd.tls)  # fmt: skip
            state.subscribe(cluster)
            cluster.start(loop)
        if cfg.default.metrics_port:  # before the control socket: once that answers, the agent is up
            await self._start_http(node, vhost_ip, cfg.default.metrics_port)
        self._control = ControlServer(self.paths.socket, Operations(node).handlers(), (PortError, ServiceError, NetworkError, FaultError),
                                      dataplanes.pool.settle if layout.workers > 1 else None)  # fmt: skip
        await self._control.start()
        with open(self.paths.pid, "w") as f:
            f.write("%d\n" % os.getpid())
        self._wrote_pid = True
        dp.table.set_owner(os.getpid())
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        log.info(
            "agent up: vhost0 %s, metadata proxy port %d, %d ports, %d link-local services, flow table %d+%d entries, %d dataplane workers, "
            "%s datapath", vhost_ip, cfg.metadata.proxy_port, len(state.ports), len(state.services), dp.table.entries, dp.table.overflow,
            layout.workers, cfg.flows.datapath,
        )  # fmt: skip
        # What start-up made (modules, tables) lives as long as the agent: keep it out of the
        # garbage collector's full passes, which would otherwise walk it all and stall packets.
        gc.freeze()
        rate = node.setup_rate
        aging = age_forever(dp, lambda: cfg.flows.cache_timeout, lambda: rate.sample(time.monotonic(), dp.entries.added))
        tasks = [asyncio.create_task(t) for t in (aging, ksync.tap_scan(TAP_SCAN_INTERVAL), self._resolver(ksync, dp), guests.run())]
        await self._stop.wait()
        log.info("stopping")
        for t in tasks:
            t.cancel()

    def _dataplane(self, vhost_ip: str, vhost_ip6: str = "") -> tuple[Dataplane, Dataplanes, SocketPortAllocator]:
        """The flow table, worker 0's dataplane, the other workers (not started yet) and worker 0's
        link-local NAT ports."""
        cfg, layout = self.cfg, self.layout
        overflow = cfg.flows.overflow_entries or cfg.flows.entries // 5
        if cfg.flows.datapath == "ebpf":  # the table is the kernel program's map; the file names it
            entries = round_entries(cfg.flows.entries)
            try:
                kernel = self._kernel = KernelDatapath.load(entries, overflow)
            except DatapathError as e:
                raise AgentError("[FLOWS] datapath = ebpf: %s (datapath = nfqueue needs none of it)" % e) from None
            table = self._table = FlowTable.in_map(kernel.table_memory, entries, overflow, writers=layout.workers)
            write_map_pointer(self.paths.flows, kernel.flows_map_id)
        else:
            table = self._table = FlowTable.create_file(self.paths.flows, cfg.flows.entries, overflow, writers=layout.workers)
        limits = Limits(
            max_vm_flows=cfg.flows.vm_flow_limit(table.capacity),
            max_vm_linklocal_flows=cfg.flows.max_vm_linklocal_flows,
            max_system_linklocal_flows=cfg.flows.max_system_linklocal_flows,
            vm_setup_rate=cfg.flows.vm_flow_setup_rate,
        )
        nat_ports = SocketPortAllocator(vhost_ip, *layout.nat_ports(0, *PORT_RANGE), address6=vhost_ip6)
        counts = self._counts = SharedCounts(self.paths.flow_counts, layout.workers, 0, create=True) if layout.workers > 1 else None
        dp = Dataplane(table, vhost_ip, cfg.metadata.proxy_port, limits, nat_ports, counts)
        dp.path.inject = RawSender().send  # IPv6 into and out of the tunnels (the process's life long)
        dp.flow_setup.vhost_ip6 = vhost_ip6

        def setup(w: int) -> Setup:
            return Setup(w, layout.workers, self.paths.flows, self.paths.flow_counts, vhost_ip, cfg.metadata.proxy_port, limits,
                         layout.nat_ports(w, *PORT_RANGE), layout.node_queue(w), QUEUE_MAXLEN, cfg.flows.cache_timeout,
                         logging.getLogger().level, self._kernel.close_ring_ids[w] if self._kernel else 0, vhost_ip6)  # fmt: skip

        pool = self._pool = WorkerPool(setup, layout.workers, self._trapped)
        return dp, Dataplanes(dp, pool), nat_ports

    async def _load(self, persistence: Persistence) -> None:
        """The state as the files left it: services, networks, then the ports (plugged again with
        their vif indices and VRFs)."""
        cache = persistence.load()
        for problem in cache.problems:
            log.error("ignoring unusable state: %s", problem)
        await self.state.set_services(cache.services, Origin.CACHE)
        for net in cache.networks:
            await self.state.set_network(net, Origin.CACHE)
        for port in cache.ports:
            try:
                await self.state.plug(port, Origin.CACHE)
            except PortError as e:
                raise AgentError(str(e)) from None

    async def _start_http(self, node: Node, vhost_ip: str, port: int) -> None:
        """The introspect port: the introspect pages and the metrics."""

        async def report() -> tuple[ProxyReport | None, Totals]:
            try:
                proxy: ProxyReport | None = await node.proxy.report()
            except ProxyProcessError:
                proxy = None
            return proxy, await node.ksync.totals()

        metrics = Metrics(AgentCollector(node), report)
        http = self._http = IntrospectServer(Introspect(node), metrics.scrape)
        try:
            await http.start(vhost_ip, port)
        except OSError as e:
            raise AgentError("[DEFAULT] metrics_port %d: cannot listen on %s:%d: %s (set metrics_port to a free port, or 0 to serve no metrics)"
                             % (port, vhost_ip, port, e.strerror or e)) from None  # fmt: skip
        log.info("introspect at http://%s:%d/, metrics for Prometheus at http://%s:%d/metrics", vhost_ip, port, vhost_ip, port)

    # -- while it runs --------------------------------------------------------------------------

    def _trapped(self, t: Trapped) -> None:
        """A packet another worker trapped for the services (counted as the vif's RX there)."""
        if self.node is None:
            return
        vif = self.node.dp.vifs.get(t.vif)
        if vif is not None:
            self.node.services.on_trap(Trap(t.trap), t.packet, vif, t.ihl)

    async def _resolver(self, ksync: KSync, dp: Dataplane) -> None:
        """Resolve fabric DNS names of services in the background; again every dns_interval."""
        loop = asyncio.get_running_loop()
        while True:
            for s in list(self.state.services.values()):
                name = s.fabric_dns_name
                if not name or s.fabric_ips:
                    continue
                try:
                    infos = await asyncio.wait_for(loop.getaddrinfo(name, None, family=socket.AF_INET, type=socket.SOCK_STREAM), 10)
                    addrs = tuple(sorted({str(i[4][0]) for i in infos}))
                except (TimeoutError, OSError) as e:
                    log.warning("link-local service %s: cannot resolve %s: %s", s.name, name, e)
                    continue
                if dp.services.resolved.get(name) != addrs:
                    log.info("link-local service %s: %s is %s", s.name, name, ", ".join(addrs))
                    await self.state.set_resolved(name, addrs)
            ksync.resolve_now.clear()
            try:
                await asyncio.wait_for(ksync.resolve_now.wait(), self.dns_interval)
            except TimeoutError:
                pass

    # -- stop ------------------------------------------------------------------------------------

    async def shutdown(self) -> None:
        """Undo whatever ``run`` did, whether it finished or failed half-way."""
        if self._http is not None:
            await self._http.stop()
        if self._cluster is not None:
            try:
                await self._cluster.stop()
            except Exception:  # the rest of the shutdown (tables, forwarding, taps) must happen
                log.exception("stopping the cluster's follower failed")
        if self._control is not None:
            await self._control.stop()
        if self._queues is not None:
            self._queues.delete_rules()
        if self._kernel is not None:  # no program forwards for a node without its agent
            if self._closes is not None:
                asyncio.get_running_loop().remove_reader(self._closes.fd)
                self._closes.close()
            self._kernel.close()
        host = self._host
        if host is not None:
            try:
                host.enable_forwarding(False)
                if self._reserved_before is not None:
                    sysctl("net.ipv4.ip_local_reserved_ports", self._reserved_before)
            except OSError:
                pass
            for port in self.state.ports.values():
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
