"""``vrouter agent``: the compute node's agent and userspace dataplane in one process.

Start-up, in this order so that no packet meets a half-built node: map the
flow table, load ports and link-local services from the state directory,
plug the ports into the kernel, start the metadata proxy, bind NFQUEUE, then
create the nftables table that feeds it, then switch forwarding on and open
the control socket.  SIGTERM or SIGINT undo all of it in reverse.  A stale
table left by an agent that was killed is replaced at start.
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
from dataplane.core.vif import PROXY_IP6, Vif
from dataplane.linux.nfqueue import QueueShell
from dataplane.linux.nftables import NftError, NftSocket, QueueRules
from dataplane.linux.ports import PORT_RANGE, SocketPortAllocator
from flows.layout import DROP_NAMES
from flows.table import FlowTable
from vrouter.agent.config import AgentConfig
from vrouter.agent.control import ControlServer
from vrouter.agent.host import HostNetwork, in_namespace_hint, sysctl
from vrouter.agent.linklocal import ServiceError, ServiceTable
from vrouter.agent.linklocal import validate as validate_service
from vrouter.agent.ports import Port, PortError, PortTable
from vrouter.agent.ports import validate as validate_port
from vrouter.agent.procinfo import alive, own_memory
from vrouter.services.metadata.proxy import client_tls
from vrouter.services.metadata.worker import ProxyWorker, ProxyWorkerError

log = logging.getLogger("vrouter.agent.agent")

AGING_BUDGET = 20_000  # flows looked at per second for idleness
AGING_STEPS = 50  # aging steps per second: each looks at AGING_BUDGET / AGING_STEPS flows
EVICT_PER_STEP = 100  # closed TCP pairs removed per step at most (5,000 pairs/s, about 1 ms a step)
TAP_SCAN_INTERVAL = 1.0


class AgentError(Exception):
    """The agent cannot start; the message says why and what to do."""


def state_paths(state_dir: str) -> dict[str, str]:
    return {
        "socket": os.path.join(state_dir, "agent.sock"),
        "flows": os.path.join(state_dir, "flows.shm"),
        "ports": os.path.join(state_dir, "ports"),
        "linklocal": os.path.join(state_dir, "linklocal.json"),
        "pid": os.path.join(state_dir, "agent.pid"),
    }


class Agent:
    def __init__(self, cfg: AgentConfig, state_dir: str, queue_num: int = 0, nova_timeout: float = 30.0, dns_interval: float = 900.0) -> None:
        self.cfg = cfg
        self.dns_interval = dns_interval
        self.state_dir = state_dir
        self.paths = state_paths(state_dir)
        self.queue_num = queue_num
        self.nova_timeout = nova_timeout
        self.ports = PortTable(self.paths["ports"])
        self.services = ServiceTable(self.paths["linklocal"])
        self.host: HostNetwork | None = None
        self.table: FlowTable | None = None
        self.dataplane: Dataplane | None = None
        self.proxy: ProxyWorker | None = None
        self.shell: QueueShell | None = None
        self.control: ControlServer | None = None
        self.started = time.time()
        self._stop = asyncio.Event()
        self._made_table = False  # our nftables table exists: delete it at stop
        self._reserved_before: str | None = None
        self._proxy_ip6 = False
        self.nat_ports: SocketPortAllocator | None = None
        self._resolve_now = asyncio.Event()
        self._wrote_pid = False

    # -- start and stop -------------------------------------------------------------------------

    def _check_not_running(self) -> None:
        try:
            with open(self.paths["pid"]) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            return
        if pid != os.getpid() and alive(pid):
            raise AgentError("an agent (pid %d) already runs with state directory %s" % (pid, self.state_dir))

    def _tls(self) -> ssl.SSLContext | None:
        if not self.cfg.metadata_use_ssl:
            return None
        try:
            return client_tls(self.cfg.metadata_ca_cert, self.cfg.metadata_client_cert, self.cfg.metadata_client_key)
        except (OSError, ssl.SSLError) as e:
            raise AgentError("[METADATA] TLS files: %s" % e) from None

    async def run(self) -> None:
        if os.geteuid() != 0:
            raise AgentError("the agent needs root (CAP_NET_ADMIN) to use NFQUEUE and nftables")
        os.makedirs(self.state_dir, exist_ok=True)
        self._check_not_running()
        self._tls()  # fails here, naming the file, rather than in the proxy process
        self.host = HostNetwork()
        vhost_ip = self.cfg.vhost_ip or await self.host.address_of(self.cfg.vhost_name)
        if not vhost_ip:
            raise AgentError(
                "no IPv4 address on %s in %s: run the agent in the compute namespace "
                "(ip netns exec <prefix>-compute vrouter agent ...) or set [VIRTUAL-HOST-INTERFACE] ip" % (self.cfg.vhost_name, in_namespace_hint())
            )
        overflow = self.cfg.flow_overflow_entries or self.cfg.flow_entries // 5
        self.table = FlowTable.create_file(self.paths["flows"], self.cfg.flow_entries, overflow)
        limits = Limits(
            max_vm_flows=self.cfg.vm_flow_limit(self.table.capacity),
            max_vm_linklocal_flows=self.cfg.max_vm_linklocal_flows,
            max_system_linklocal_flows=self.cfg.max_system_linklocal_flows,
        )
        self.nat_ports = SocketPortAllocator(vhost_ip, *PORT_RANGE)
        self.dataplane = Dataplane(self.table, vhost_ip, self.cfg.metadata_proxy_port, limits, self.nat_ports)
        self.dataplane.set_host_ifindex(await self.host.ifindex(self.cfg.vhost_name))
        self._reserved_before = self.host.reserve_ports(*PORT_RANGE)
        for problem in self.ports.load() + self.services.load():
            log.error("ignoring unusable state: %s", problem)
        self._services_changed()
        for port in self.ports.ports.values():
            await self._plug(port)
        loop = asyncio.get_running_loop()
        c = self.cfg
        fairness = dict(
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
            tls = {"ca": c.metadata_ca_cert, "cert": c.metadata_client_cert, "key": c.metadata_client_key}
        await self.host.add_proxy_ip6(PROXY_IP6)
        self._proxy_ip6 = True
        self.proxy = ProxyWorker({
            "hosts": [vhost_ip, PROXY_IP6], "port": c.metadata_proxy_port, "secret": c.metadata_proxy_secret,
            "read_timeout": self.nova_timeout, "fairness": fairness, "tls": tls,
        })  # fmt: skip
        self.proxy.identities = self._identities()
        self.proxy.upstream = self._upstream()
        try:
            await self.proxy.start()
        except ProxyWorkerError as e:
            raise AgentError(str(e)) from None
        self.shell = QueueShell(self.dataplane, self.queue_num)
        try:
            self.shell.start(loop)
        except OSError as e:
            raise AgentError("cannot bind NFQUEUE %d (%s): is another agent using it?" % (self.queue_num, e)) from None
        try:
            with NftSocket() as nft:
                self._made_table = True  # also when half made: a failed batch leaves nothing, delete is a no-op
                rules = QueueRules(queue_num=self.queue_num, vhost_name=self.cfg.vhost_name, nat_ports=PORT_RANGE)
                nft.create_queue_table(rules)
                nft.create_queue_table6(rules)
        except NftError as e:
            raise AgentError("cannot create the nftables table: %s" % e) from None
        self.host.enable_forwarding(True)
        self.control = ControlServer(self.paths["socket"], self._handlers(), (PortError, ServiceError))
        await self.control.start()
        with open(self.paths["pid"], "w") as f:
            f.write("%d\n" % os.getpid())
        self._wrote_pid = True
        self.table.set_owner(os.getpid())
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        log.info(
            "agent up: vhost0 %s, metadata proxy port %d, %d ports, %d link-local services, flow table %d+%d entries",
            vhost_ip, self.cfg.metadata_proxy_port, len(self.ports.ports), len(self.services.services),
            self.table.entries, self.table.overflow,
        )  # fmt: skip
        # What start-up made (modules, tables) lives as long as the agent: keep it out of the
        # garbage collector's full passes, which would otherwise walk it all and stall packets.
        gc.freeze()
        tasks = [asyncio.create_task(t) for t in (self._aging(), self._tap_scan(), self._resolver())]
        await self._stop.wait()
        log.info("stopping")
        for t in tasks:
            t.cancel()

    async def shutdown(self) -> None:
        """Undo whatever ``run`` did, whether it finished or failed half-way."""
        if self.control is not None:
            await self.control.stop()
        if self._made_table:
            try:
                with NftSocket() as nft:
                    nft.delete_tables()
            except OSError as e:
                log.error("could not delete the nftables table: %s", e)
        if self.host is not None:
            try:
                self.host.enable_forwarding(False)
                if self._reserved_before is not None:
                    sysctl("net.ipv4.ip_local_reserved_ports", self._reserved_before)
            except OSError:
                pass
            for port in self.ports.ports.values():
                await self.host.unplug(port.tap_name, port.ip_address, port.metadata_ip)
            if self._proxy_ip6:
                await self.host.del_proxy_ip6(PROXY_IP6)
            self.host.close()
        if self.shell is not None:
            self.shell.stop()
        if self.proxy is not None:
            await self.proxy.stop()
        if self.table is not None:
            self.table.close()
            _unlink(self.paths["flows"])
        if self._wrote_pid:
            _unlink(self.paths["pid"])

    # -- ports and services ---------------------------------------------------------------------

    async def _plug(self, port: Port) -> Vif:
        assert self.host is not None and self.dataplane is not None
        ifindex = await self.host.plug(port.tap_name, port.ip_address, port.mac, port.metadata_ip, port.metadata_ip6, port.ipv6_address)
        if not ifindex:
            log.warning("port %s: tap %s not present yet; plugged when it appears", port.uuid, port.tap_name)
        vif = Vif(port.vif, port.tap_name, ifindex, port.ip_address, port.mac, port.vrf, port_uuid=port.uuid, ip6=port.ipv6_address)
        self.dataplane.add_vif(vif)
        return vif

    async def _tap_scan(self) -> None:
        """Plug taps that appeared after their port was added, or that were re-created."""
        assert self.host is not None and self.dataplane is not None
        while True:
            await asyncio.sleep(TAP_SCAN_INTERVAL)
            for port in list(self.ports.ports.values()):
                vif = self.dataplane.vifs.get(port.vif)
                idx = await self.host.ifindex(port.tap_name)
                if vif is not None and idx and idx != vif.ifindex:
                    log.info("port %s: tap %s (re)appeared as ifindex %d", port.uuid, port.tap_name, idx)
                    await self._plug(port)

    async def _aging(self) -> None:
        """In small steps, AGING_STEPS a second: closed TCP pairs go (at most EVICT_PER_STEP a step) and a
        bounded share of the live flows is looked at for idleness (AGING_BUDGET a second), so that
        aging never stalls the packets behind it for more than a few milliseconds."""
        assert self.dataplane is not None
        dp = self.dataplane
        while True:
            await asyncio.sleep(1.0 / AGING_STEPS)
            budget, slots = AGING_BUDGET // AGING_STEPS, dp.table.capacity // AGING_STEPS
            n = dp.age_step(self.cfg.flow_cache_timeout, budget, evict_limit=EVICT_PER_STEP, slots=slots)
            if n:
                log.debug("removed %d flow entries", n)

    def _identities(self) -> dict[str, list[str]]:
        """Who is behind each metadata IP, as the proxy process is told (IPv4 and IPv6)."""
        out: dict[str, list[str]] = {}
        for p in self.ports.ports.values():
            who = [p.instance_uuid, p.vm_project_uuid, p.ip_address, p.uuid, p.vm_name]
            out[p.metadata_ip] = who
            out[p.metadata_ip6] = who
        return out

    def _upstream(self) -> dict | None:
        """Where Nova is: the metadata service's fabric IPs, or what its DNS name resolved to."""
        s = self.services.metadata_service()
        if s is None:
            return None
        ips = list(self.dataplane.service_ips(s)) if self.dataplane is not None else list(s.fabric_ips)
        return {"ips": ips, "port": s.fabric_port} if ips else None

    async def _tell_proxy(self) -> None:
        """Ports or services changed: the proxy process knows before the operation returns."""
        if self.proxy is not None:
            await self.proxy.set_identities(self._identities())
            await self.proxy.set_upstream(self._upstream())

    # -- control operations ---------------------------------------------------------------------

    def _handlers(self) -> dict:
        return {
            "status": self._op_status,
            "port.add": self._op_port_add,
            "port.del": self._op_port_del,
            "port.list": self._op_port_list,
            "linklocal.add": self._op_ll_add,
            "linklocal.del": self._op_ll_del,
            "linklocal.list": self._op_ll_list,
            "linklocal.import": self._op_ll_import,
            "vif.list": self._op_vif_list,
            "dropstats": self._op_dropstats,
        }

    async def _op_status(self, args: dict) -> dict:
        assert self.dataplane is not None and self.proxy is not None and self.table is not None
        proxy = await self.proxy.stats()
        memory = own_memory()
        if "memory" in proxy:
            memory.update({"proxy_" + k: v for k, v in proxy["memory"].items()})
        return {
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self.started, 1),
            "vhost_ip": self.dataplane.vhost_ip,
            "metadata_proxy_port": self.cfg.metadata_proxy_port,
            "ports": len(self.ports.ports),
            "linklocal_services": len(self.services.services),
            "flows_active": self.table.active,
            "flow_setups": self.dataplane.setups,
            "memory": memory,
            "flow_table": self.paths["flows"],
            "proxy": dict(proxy.get("stats", {}), **proxy.get("load", {}), pid=self.proxy.pid, restarts=self.proxy.restarts,
                          **({"error": proxy["error"]} if "error" in proxy else {})),
            "linklocal_nat_ports_in_use": self.nat_ports.in_use if self.nat_ports else 0,
            "dataplane_errors": self.shell.errors if self.shell else 0,
            # failed writes of verdicts: their packets stay queued and are dropped at the queue's end
            "verdict_write_errors": self.shell.verdicts.errors if self.shell and self.shell.verdicts else 0,
            "verdict_writes": self.shell.verdicts.writes if self.shell and self.shell.verdicts else 0,
        }

    async def _op_port_add(self, args: dict) -> dict:
        port = self.ports.add(validate_port(args))
        vif = await self._plug(port)
        await self._tell_proxy()
        log.info("port %s plugged: vif0/%d %s %s vm %s", port.uuid, port.vif, port.tap_name, port.ip_address, port.instance_uuid)
        return dict(port.to_dict(), tap_present=bool(vif.ifindex))

    async def _op_port_del(self, args: dict) -> dict:
        assert self.dataplane is not None and self.host is not None
        port = self.ports.remove(str(args.get("uuid", "")))
        flows = self.dataplane.remove_vif(port.vif)
        await self.host.unplug(port.tap_name, port.ip_address, port.metadata_ip)
        await self._tell_proxy()
        log.info("port %s unplugged: vif0/%d, %d flow entries removed", port.uuid, port.vif, flows)
        return dict(port.to_dict(), flows_removed=flows)

    def _op_port_list(self, args: dict) -> list:
        assert self.dataplane is not None
        out = []
        for p in sorted(self.ports.ports.values(), key=lambda p: p.vif):
            vif = self.dataplane.vifs.get(p.vif)
            out.append(dict(p.to_dict(), tap_present=bool(vif and vif.ifindex)))
        return out

    def _services_changed(self) -> int:
        assert self.dataplane is not None
        self._resolve_now.set()
        return self.dataplane.set_services(list(self.services.services.values()))

    async def _resolver(self) -> None:
        """Resolve fabric DNS names of services in the background; again every dns_interval."""
        assert self.dataplane is not None
        loop = asyncio.get_running_loop()
        while True:
            for s in list(self.services.services.values()):
                name = s.fabric_dns_name
                if not name or s.fabric_ips:
                    continue
                try:
                    infos = await asyncio.wait_for(loop.getaddrinfo(name, None, family=socket.AF_INET, type=socket.SOCK_STREAM), 10)
                    addrs = tuple(sorted({i[4][0] for i in infos}))
                except (TimeoutError, OSError) as e:
                    log.warning("link-local service %s: cannot resolve %s: %s", s.name, name, e)
                    continue
                if self.dataplane.services.resolved.get(name) != addrs:
                    log.info("link-local service %s: %s is %s", s.name, name, ", ".join(addrs))
                    self.dataplane.set_resolved(name, addrs)
                    await self._tell_proxy()
            self._resolve_now.clear()
            try:
                await asyncio.wait_for(self._resolve_now.wait(), self.dns_interval)
            except TimeoutError:
                pass

    async def _op_ll_add(self, args: dict) -> dict:
        s = self.services.add(validate_service(args))
        flows = self._services_changed()
        await self._tell_proxy()
        log.info("link-local service %s: %s:%d -> %s:%d", s.name, s.ip, s.port, ",".join(s.fabric_ips) or s.fabric_dns_name, s.fabric_port)
        return {"name": s.name, "flows_removed": flows}

    async def _op_ll_del(self, args: dict) -> dict:
        s = self.services.remove(str(args.get("linklocal_service_name", "")))
        flows = self._services_changed()
        await self._tell_proxy()
        log.info("link-local service %s removed, %d flow entries removed", s.name, flows)
        return {"name": s.name, "flows_removed": flows}

    async def _op_ll_import(self, args: dict) -> dict:
        data = args.get("config")
        try:
            entries = data["linklocal_services"]["linklocal_service_entry"]
        except (KeyError, TypeError):
            raise ServiceError("not a global-vrouter-config: expected linklocal_services.linklocal_service_entry") from None
        services = self.services.replace_all(entries)
        flows = self._services_changed()
        await self._tell_proxy()
        log.info("link-local services replaced by import: %d services, %d flow entries removed", len(services), flows)
        return {"services": len(services), "flows_removed": flows}

    def _op_ll_list(self, args: dict) -> list:
        from vrouter.agent.linklocal import to_schema

        return [to_schema(s) for s in sorted(self.services.services.values(), key=lambda s: s.name.lower())]

    def _op_vif_list(self, args: dict) -> list:
        assert self.dataplane is not None
        out = []
        for v in sorted(self.dataplane.vifs.values(), key=lambda v: v.index):
            out.append({
                "vif": v.index, "name": v.name, "type": v.kind, "ifindex": v.ifindex, "mac": v.mac or "",
                "ip": v.ip, "vrf": v.vrf, "metadata_ip": v.metadata_ip if v.kind == "Virtual" else "",
                "port_uuid": v.port_uuid, "rx_packets": v.rx_packets, "rx_bytes": v.rx_bytes,
                "tx_packets": v.tx_packets, "tx_bytes": v.tx_bytes, "drops": v.drops, "flows": v.flows,
            })  # fmt: skip
        return out

    def _op_dropstats(self, args: dict) -> dict:
        assert self.dataplane is not None
        out = {DROP_NAMES[r]: self.dataplane.drops.get(r, 0) for r in DROP_NAMES}
        out["Queue Overflow"] = queue_drops(self.queue_num)
        out["Dataplane Error"] = self.shell.errors if self.shell else 0
        out.update(kernel_ip_drops())
        return out


def queue_drops(queue_num: int) -> int:
    """Packets the kernel dropped because our NFQUEUE was full or could not reach us (fail
    closed): queue_dropped + user_dropped of /proc/net/netfilter/nfnetlink_queue."""
    try:
        with open("/proc/net/netfilter/nfnetlink_queue") as f:
            for line in f:
                cols = line.split()
                if len(cols) >= 7 and cols[0] == str(queue_num):
                    return int(cols[5]) + int(cols[6])
    except OSError:
        pass
    return 0


def kernel_ip_drops() -> dict[str, int]:
    """What the compute namespace's kernel drops before the dataplane sees it (IP headers it
    finds invalid: bad version, IHL, total length or checksum), from /proc/net/snmp."""
    try:
        with open("/proc/net/snmp") as f:
            lines = [line.split() for line in f if line.startswith("Ip:")]
        ip = dict(zip(lines[0][1:], map(int, lines[1][1:]), strict=True))
    except (OSError, IndexError, ValueError):
        return {}
    return {"Kernel IP Header Errors": ip.get("InHdrErrors", 0), "Kernel IP Address Errors": ip.get("InAddrErrors", 0)}


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
