"""Build, run and remove an emulated compute node in namespaces: what ``scripts/netns_setup.sh`` does.

``Lab(prefix).up(topology)`` makes the namespaces, links, addresses and routes
of a ``model.Topology``, starts ``vrouter nova-metadata`` in the fabric
namespace and ``vrouter agent`` in the compute namespace, gives the agent the
virtual network, plugs every VM's and guest's port and provisions the
``metadata`` link-local service through the agent's control socket, with the
same messages ``vrouter network add``, ``vrouter port add`` and ``vrouter
linklocal add`` send.  With ``dhcp`` the namespace VMs then take their address
with busybox's udhcpc; QEMU guests boot on their taps (``guests``).  ``down``
removes exactly what ``up`` made, guests and clients first.

Everything ``up`` creates is listed in ``/run/vrouter/P/created``, one
``KIND NAME`` a line (``netns``, ``file``, ``dir``, ``rootdir``: a parent
directory that ``up`` had to make, removed when no other prefix uses it), so
that ``down`` after a half-made ``up`` removes what was made and no more.
Nothing here touches the host's own interfaces, routes or firewall.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD

from topology import etcd, guests, netns
from topology.model import FABRIC_MTU, NOVA_PORT, VM, Net, Topology
from topology.processes import Processes, StartError
from vrouter.agent.control import AgentNotRunning, RequestFailed, call
from vrouter.agent.paths import STATE_ROOT
from vrouter.cluster.store import ConfigStore, StoreError
from vrouter.messages import LinkLocalAdd, NetworkAdd, PortAdd, StatusRequest
from vrouter.tools import locate

ROOT = Path(__file__).resolve().parents[1]
UDHCPC_SCRIPT = ROOT / "scripts" / "udhcpc-vm.sh"
BIN = Path(sys.executable).parent  # the venv's bin: vrouter lives beside this python


FABRIC_BRIDGE = "br-fabric"
T = TypeVar("T")


class LabError(Exception):
    """The node cannot be built or changed; the message says why and what to do."""


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Lab:
    """The node of one prefix: its state directory, what was created, its daemons."""

    def __init__(self, prefix: str, state_root: str | None = None, say: Callable[[str], None] = _say, script: str = "scripts/netns_setup.sh") -> None:
        self.prefix = prefix
        self.root = state_root or os.environ.get("VROUTER_STATE_ROOT") or STATE_ROOT
        self.state = os.path.join(self.root, prefix)
        self.say = say
        self.script = script
        self.vrouter = os.environ.get("VROUTER") or str(BIN / "vrouter")
        self.compute = prefix + "-compute"
        self.fabric = prefix + "-fabric"
        self.procs = Processes(self.state, say)

    # -- files ------------------------------------------------------------------------------------

    def _path(self, name: str) -> str:
        return os.path.join(self.state, name)

    def _created(self, kind: str, name: str) -> None:
        with open(self._path("created"), "a") as f:
            f.write("%s %s\n" % (kind, name))

    def _write(self, name: str, text: str, mode: int = 0o644) -> None:
        path = self._path(name)
        tmp = path + ".tmp"
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "w") as f:
            f.write(text)
        os.replace(tmp, path)

    def is_up(self) -> bool:
        return netns.exists(self.compute) or netns.exists(self.compute + "1") or os.path.exists(self._path("created"))

    def already_up(self) -> str:
        return "prefix %s is already up (namespace %s exists); run: %s down --prefix %s" % (self.prefix, self.compute, self.script, self.prefix)

    def layout(self) -> dict | None:
        try:
            with open(self._path("layout.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    # -- up -------------------------------------------------------------------------------------

    def up(self, topo: Topology) -> dict:
        """Build the node; return its layout.  A failure removes what was made and raises LabError."""
        if self.is_up():
            raise LabError(self.already_up())
        if not os.access(self.vrouter, os.X_OK):
            raise LabError("%s not found: run make install (or set VROUTER=/path/to/vrouter)" % self.vrouter)
        try:
            if topo.guests:
                guests.check_boot(topo.boot)
                guests.qemu_binary()
                if topo.boot.image:
                    guests.image_format(topo.boot.image)
        except guests.GuestError as e:
            raise LabError(str(e)) from None
        if topo.dhcp and shutil.which("busybox") is None:
            raise LabError("--dhcp needs busybox (its udhcpc): apt-get install busybox-static")
        root_new = not os.path.isdir(self.root)
        os.makedirs(self.state, exist_ok=True)
        open(self._path("created"), "w").close()
        if root_new:
            self._created("rootdir", self.root)
        try:
            return self._up(topo)
        except BaseException as e:
            self.say("netns_setup.sh: up failed; removing what it created")
            try:
                self.down(quiet=True)
            except Exception as cleanup:  # noqa: BLE001 - the first error is the one to report
                self.say("netns_setup.sh: cleanup after the failure also failed: %s" % cleanup)
            if isinstance(e, (OSError, subprocess.SubprocessError, StartError, guests.GuestError)):
                raise LabError(str(e)) from None
            raise

    def _up(self, topo: Topology) -> dict:
        self._write("secret", topo.secret, 0o600)
        with_guests = " and %d QEMU guests" % len(topo.guests) if topo.guests else ""
        nodes = range(1, topo.nodes + 1)
        if topo.nodes == 1:
            self.say("building emulated compute node '%s' with %d VMs%s" % (self.prefix, len(topo.vms), with_guests))
        else:
            self.say("building emulated cloud '%s': %d compute nodes, %d VMs%s" % (self.prefix, topo.nodes, len(topo.vms), with_guests))
        computes = [topo.compute_of(n) for n in nodes]
        for name in [*computes, self.fabric]:
            netns.create(name)
            self._created("netns", name)
        # The compute namespaces' own resolver files: fabric names for services given by DNS name.
        if not os.path.isdir("/etc/netns"):
            self._created("dir", "/etc/netns")
        for name in computes:
            os.makedirs("/etc/netns/" + name, exist_ok=True)
            self._created("dir", "/etc/netns/" + name)
            with open("/etc/netns/%s/hosts" % name, "w") as f:
                f.write("127.0.0.1 localhost\n%s nova.fabric fabric\n" % topo.nova_ip)
            self._created("file", "/etc/netns/%s/hosts" % name)
        with contextlib.ExitStack() as stack:
            fabric = stack.enter_context(netns.Namespace(self.fabric))
            ns_of = {n: stack.enter_context(netns.Namespace(topo.compute_of(n))) for n in nodes}
            if topo.nodes == 1 and not topo.clustered:
                self._wire_fabric(topo, ns_of[1], fabric)
            else:
                self._wire_fabric_bridge(topo, ns_of, fabric)
            others: dict[str, int] = {}  # the cloud's VMs of other labs, by network (a lab that joins one)
            if topo.join:
                others = self._adopt(topo, ns_of[1])
            elif topo.etcd_servers and not self._in_cloud(topo, lambda store: store.healthy()):
                raise LabError("--etcd %s: no etcd answers there from %s (its vhost0 %s, through the fabric)"
                               % (",".join(topo.etcd_servers), topo.compute_of(1), topo.vhost_ip_of(1)))  # fmt: skip
            self._write("instances.json", json.dumps(topo.instances(), indent=2))
            for vm in topo.vms:
                netns.create(vm.namespace)
                self._created("netns", vm.namespace)
                if topo.dhcp:  # its resolver file, which udhcpc's script writes (never the host's)
                    os.makedirs("/etc/netns/" + vm.namespace, exist_ok=True)
                    self._created("dir", "/etc/netns/" + vm.namespace)
                    open("/etc/netns/%s/resolv.conf" % vm.namespace, "w").close()
                    self._created("file", "/etc/netns/%s/resolv.conf" % vm.namespace)
                with netns.Namespace(vm.namespace) as ns:
                    self._wire_vm(vm, ns_of[vm.node], ns, static=not topo.dhcp)
            for g in topo.guests:
                ns_of[g.node].create_tap(g.tap)  # as os-vif does before plugging a libvirt guest's port
        if topo.tls:
            self._make_tls(topo)
        for n in nodes:
            os.makedirs(topo.state_of(n), exist_ok=True)
            self._write(self._node_file(topo, n, "agent.conf"), topo.agent_conf(n))
        if topo.own_etcd:
            self.start_etcd()
        if topo.own_nova:
            self.start_nova(topo)
        for n in nodes:
            self.start_agent(n, topo)
        if topo.join:  # the cloud's Nova serves our instances from etcd
            self._in_cloud(topo, lambda store: [store.put("instances/" + r["uuid"], r) for r in topo.instances()["instances"]])
        # The networks and the metadata service, given to each node, or with etcd once (to node 1): every
        # agent learns them from there; a lab that joins a cloud has the cloud's.
        provisioned = [] if not topo.own_nova else [1] if topo.clustered else list(nodes)
        for net in topo.networks if provisioned else []:
            for n in provisioned:
                r = call(os.path.join(topo.state_of(n), "agent.sock"), NetworkAdd(net.uuid, net.subnet, net.name, net.gateway, net.dns_server))
            self.say("network %s set: %s, gateway %s, service address %s" % (r.name, r.subnet, r.gateway, r.dns_server))
        quiet = len(topo.ports) > 50
        for vm in topo.ports:
            sock = os.path.join(topo.state_of(vm.node), "agent.sock")
            p = call(sock, PortAdd(vm.port_uuid, vm.instance_uuid, vm.vn_uuid, vm.project_id, vm.ip, vm.ipv6, vm.mac, vm.tap, vm.name))
            vm.vif, vm.metadata_ip, vm.metadata_ip6 = p.vif, p.metadata_ip, p.metadata_ip6
            if not quiet:
                on = " on node %d" % vm.node if topo.nodes > 1 else ""
                self.say("port %s plugged as vif0/%d%s (%s, metadata IP %s)" % (p.uuid, p.vif, on, p.tap_name, p.metadata_ip))
        if quiet:
            self.say("%d ports plugged (the layout lists them)" % len(topo.ports))
        metadata = LinkLocalAdd("metadata", "169.254.169.254", "80", [topo.nova_ip], str(NOVA_PORT))
        for n in provisioned:
            call(os.path.join(topo.state_of(n), "agent.sock"), metadata)
        if provisioned:
            self.say("link-local service metadata set")
        for n in nodes:  # every port's queues in force before anything runs in the VMs (see wait_rules)
            self.wait_rules(topo, n)
        if topo.clustered:
            self.wait_converged(topo, others)
        if topo.dhcp:
            self._dhcp_clients(topo)
        if topo.guests:
            accel = guests.choose_accel(topo.boot.accel)
            for g in topo.guests:
                g.pid = guests.start(self.procs, topo, g, accel)
                self.say("  guest %s booting under %s (pid %d, console %s)" % (g.name, accel.upper(), g.pid, g.console))
        layout = topo.layout()
        self._write("layout.json", json.dumps(layout, indent=2))
        self.say("up: layout in %s; remove everything with: %s down --prefix %s" % (self._path("layout.json"), self.script, self.prefix))
        return layout

    def _node_file(self, topo: Topology, node: int, name: str) -> str:
        """A node's file, relative to the lab's state directory."""
        return os.path.relpath(os.path.join(topo.state_of(node), name), self.state)

    def wait_rules(self, topo: Topology, node: int, timeout: float = 10) -> None:
        """Until node ``node``'s agent has rebuilt its nftables tables for the ports just plugged
        (within 0.2 s of the last change): until then a VM's packets go to the node's queue, and
        with several dataplane workers a connection opened then is set up by worker 0 and breaks
        when the rebuild queues it to another."""
        deadline = time.monotonic() + timeout
        sock = os.path.join(topo.state_of(node), "agent.sock")
        while call(sock, StatusRequest()).rules_pending:
            if time.monotonic() > deadline:
                raise LabError("node %d's agent did not rebuild its nftables tables within %.0f s (see its log)" % (node, timeout))
            time.sleep(0.05)

    def wait_converged(self, topo: Topology, others: dict[str, int] | None = None, timeout: float = 30) -> None:
        """Until every node's agent has every route it should have from etcd (the other nodes' VMs
        of the networks it has VMs of; ``others``: how many the cloud's other labs have, by network)
        and the link-local services."""
        deadline = time.monotonic() + timeout
        for n in range(1, topo.nodes + 1):
            mine = {vm.vn_uuid for vm in topo.vms_of(n)}
            want = sum(1 for vm in topo.ports if vm.node != n and vm.vn_uuid in mine) + sum((others or {}).get(vn, 0) for vn in mine)
            sock = os.path.join(topo.state_of(n), "agent.sock")
            while True:
                st = call(sock, StatusRequest())
                c = st.cluster
                if c is not None and c.connected and c.remote_routes >= want and st.linklocal_services >= 1:
                    break
                if time.monotonic() > deadline:
                    have = "%d of %d routes" % (c.remote_routes, want) if c is not None else "no cluster"
                    raise LabError("node %d did not converge from etcd within %.0f s (%s); see %s" % (n, timeout, have, sock[:-10] + "agent.log"))
                time.sleep(0.05)  # polling the agents' state, with a deadline
        if topo.nodes > 1:
            self.say("  every node has the routes to the others' VMs")

    def _wire_fabric(self, topo: Topology, compute: netns.Namespace, fabric: netns.Namespace) -> None:
        """lo up in both, vhost0 (compute) to eth0 (fabric), the compute node's default route."""
        for ns in (compute, fabric):
            ns.ipr.link("set", index=ns.index("lo"), state="up")
        compute.ipr.link("add", ifname="vhost0", kind="veth", peer={"ifname": "eth0", "net_ns_fd": fabric.fd})
        vhost0, eth0 = compute.index("vhost0"), fabric.index("eth0")
        compute.ipr.addr("add", index=vhost0, address=topo.vhost_ip, prefixlen=24)
        compute.ipr.link("set", index=vhost0, state="up")
        fabric.ipr.addr("add", index=eth0, address=topo.nova_ip, prefixlen=24)
        fabric.ipr.link("set", index=eth0, state="up")
        compute.ipr.route("add", dst="default", gateway=topo.nova_ip)
        # Forwarding stays off until the agent runs; strict reverse-path filtering on: fail closed.
        compute.sysctl({"net.ipv4.ip_forward": "0", "net.ipv4.conf.all.rp_filter": "1", "net.ipv4.conf.default.rp_filter": "1"})

    def _wire_fabric_bridge(self, topo: Topology, nodes: dict[int, netns.Namespace], fabric: netns.Namespace) -> None:
        """The fabric as a bridge (Nova's and etcd's address on it) and each node's vhost0 a port of
        it, at the fabric's MTU; each node's default route to the fabric."""
        fabric.ipr.link("set", index=fabric.index("lo"), state="up")
        fabric.ipr.link("add", ifname=FABRIC_BRIDGE, kind="bridge")
        br = fabric.index(FABRIC_BRIDGE)
        fabric.ipr.link("set", index=br, mtu=FABRIC_MTU, state="up")
        if topo.own_nova:  # a lab that joins a cloud uses the cloud's Nova and etcd
            fabric.ipr.addr("add", index=br, address=topo.nova_ip, prefixlen=24)
        if topo.fabric_link:
            self._uplink(topo, fabric, br)
        for n, compute in nodes.items():
            compute.ipr.link("set", index=compute.index("lo"), state="up")
            peer = "vhost-c%d" % n
            compute.ipr.link("add", ifname="vhost0", kind="veth", peer={"ifname": peer, "net_ns_fd": fabric.fd})
            vhost0 = compute.index("vhost0")
            fabric.ipr.link("set", index=fabric.index(peer), mtu=FABRIC_MTU, master=br, state="up")
            compute.ipr.link("set", index=vhost0, mtu=FABRIC_MTU)
            compute.ipr.addr("add", index=vhost0, address=topo.vhost_ip_of(n), prefixlen=24)
            compute.ipr.link("set", index=vhost0, state="up")
            compute.ipr.route("add", dst="default", gateway=topo.nova_ip)
            compute.sysctl({"net.ipv4.ip_forward": "0", "net.ipv4.conf.all.rp_filter": "1", "net.ipv4.conf.default.rp_filter": "1"})

    def _uplink(self, topo: Topology, fabric: netns.Namespace, br: int) -> None:
        """A veth from our fabric bridge to the bridge br-fabric of namespace ``topo.fabric_link``
        (the cloud's fabric on this machine, or a namespace whose bridge has the real link to it);
        its far end goes with our fabric namespace at ``down``."""
        if not netns.exists(topo.fabric_link):
            raise LabError("--fabric-link %s: no such namespace" % topo.fabric_link)
        with netns.Namespace(topo.fabric_link) as other:
            there = (other.ipr.link_lookup(ifname=FABRIC_BRIDGE) or [0])[0]
            if not there:
                raise LabError("--fabric-link %s: it has no bridge %s (the fabric of a cloud built with up --nodes K has one)"
                               % (topo.fabric_link, FABRIC_BRIDGE))  # fmt: skip
            far = "%s-up" % self.prefix
            fabric.ipr.link("add", ifname="uplink", kind="veth", peer={"ifname": far, "net_ns_fd": other.fd})
            other.ipr.link("set", index=other.index(far), mtu=FABRIC_MTU, master=there, state="up")
        fabric.ipr.link("set", index=fabric.index("uplink"), mtu=FABRIC_MTU, master=br, state="up")

    def _in_cloud(self, topo: Topology, fn: Callable[[ConfigStore], T]) -> T:
        """``fn(store)`` on the cloud's etcd, from node 1's namespace (where vhost0 reaches it)."""
        try:
            return in_etcd(topo.etcd_urls, topo.etcd_prefix, topo.compute_of(1), fn)
        except (StoreError, ValueError) as e:
            raise LabError("the cloud's etcd (%s): %s" % (", ".join(topo.etcd_urls), e)) from None

    def _adopt(self, topo: Topology, ns: netns.Namespace) -> dict[str, int]:
        """A lab that joins a cloud: the cloud's networks and the addresses its VMs have, from etcd;
        our VMs on those networks at free addresses, our nodes' vhost0 addresses checked free.
        Returns how many VMs the cloud has, by network."""
        everything = self._in_cloud(topo, lambda store: store.get_all()[1])
        nets = sorted((n for n in (Net.of_record(v) for k, v in everything.items() if k.startswith("virtual-networks/") and isinstance(v, dict))
                       if n is not None), key=lambda n: n.number)  # fmt: skip
        routes = [v for k, v in everything.items() if k.startswith("routes/") and isinstance(v, dict)]
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

    def _wire_vm(self, vm: VM, compute: netns.Namespace, ns: netns.Namespace, static: bool) -> None:
        """The VM's eth0 and its tap in the compute namespace; with ``static``, its IPv4 address and
        default route (else its DHCP client sets them)."""
        compute.ipr.link("add", ifname=vm.tap, kind="veth", peer={"ifname": "eth0", "net_ns_fd": ns.fd})
        eth0 = ns.index("eth0")
        ns.ipr.link("set", index=ns.index("lo"), state="up")
        # no duplicate address detection: the VM's IPv6 link-local address is usable at once
        ns.sysctl({"net.ipv6.conf.eth0.accept_dad": "0"})
        ns.ipr.link("set", index=eth0, address=vm.mac, state="up")
        ns.ipr.addr("add", index=eth0, address=vm.ipv6, prefixlen=64, flags=IFA_F_NODAD)
        if static:
            ns.ipr.addr("add", index=eth0, address=vm.ip, prefixlen=vm.prefix_len)
            ns.ipr.route("add", dst="default", gateway=vm.gateway)

    def _dhcp_clients(self, topo: Topology) -> None:
        """busybox udhcpc in each namespace VM, kept running (it renews); its script applies the
        lease and writes it to dhcp/NAME.lease.  Waits for every lease."""
        started = []
        busybox = shutil.which("busybox") or "busybox"
        for vm in topo.vms:
            lease = self._path("dhcp/%s.lease" % vm.name)
            os.makedirs(os.path.dirname(lease), exist_ok=True)
            env = ["env", "LEASE_FILE=" + lease, "RESOLV_CONF=/etc/netns/%s/resolv.conf" % vm.namespace]
            args = env + [busybox, "udhcpc", "-f", "-i", "eth0", "-s", str(UDHCPC_SCRIPT), "-x", "hostname:" + vm.name,
                          "-O", "staticroutes", "-O", "mtu", "-t", "20", "-T", "1", "-A", "1"]  # fmt: skip
            started.append((vm, lease, self.procs.spawn(vm.namespace, args, "dhcp/%s.log" % vm.name, "dhcp/%s.pid" % vm.name)))
        for vm, lease, proc in started:
            self.procs.wait(30, proc, functools.partial(os.path.exists, lease), "the DHCP client of %s" % vm.name, "dhcp/%s.log" % vm.name)
        self.say("  %d VMs took their address by DHCP" % len(started))

    def _make_tls(self, topo: Topology) -> None:
        """A throw-away CA, Nova's server certificate (IP and DNS names) and the agent's client one."""
        d = self._path("tls")
        os.makedirs(d, mode=0o700, exist_ok=True)
        if shutil.which("openssl") is None:
            raise LabError("--tls needs openssl")
        key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

        def openssl(*args: str) -> None:
            r = subprocess.run(["openssl", *args], capture_output=True, text=True)
            if r.returncode:
                raise LabError("openssl %s: %s" % (args[0], r.stderr.strip()))

        ca_subject = "/CN=vrouter-emulator CA %s" % self.prefix
        openssl("req", "-x509", *key, "-days", "7", "-subj", ca_subject, "-keyout", d + "/ca.key", "-out", d + "/ca.pem")
        openssl("req", *key, "-subj", "/CN=nova-metadata", "-keyout", d + "/nova.key", "-out", d + "/nova.csr")
        with open(d + "/nova.ext", "w") as f:
            f.write("subjectAltName=IP:%s,DNS:nova.fabric\nextendedKeyUsage=serverAuth\n" % topo.nova_ip)
        openssl("x509", "-req", "-in", d + "/nova.csr", "-CA", d + "/ca.pem", "-CAkey", d + "/ca.key", "-CAcreateserial", "-days", "7",
                "-extfile", d + "/nova.ext", "-out", d + "/nova.pem")  # fmt: skip
        openssl("req", *key, "-subj", "/CN=vrouter-agent %s" % self.prefix, "-keyout", d + "/agent.key", "-out", d + "/agent.csr")
        with open(d + "/agent.ext", "w") as f:
            f.write("extendedKeyUsage=clientAuth\n")
        openssl("x509", "-req", "-in", d + "/agent.csr", "-CA", d + "/ca.pem", "-CAkey", d + "/ca.key", "-CAcreateserial", "-days", "7",
                "-extfile", d + "/agent.ext", "-out", d + "/agent.pem")  # fmt: skip
        self.say("  TLS: CA, Nova and agent certificates in %s" % d)

    # -- daemons --------------------------------------------------------------------------------

    def pid(self, pidfile: str) -> int:
        return self.procs.pid(pidfile)

    def start_nova(self, topo: Topology | None = None) -> None:
        if self.procs.pid("nova.pid"):
            self.say("  nova-metadata already running")
            return
        layout = self.layout() or {}
        if topo is None and (layout.get("etcd") or {}).get("joined"):
            raise LabError("prefix %s joined a cloud: its instances are served by the cloud's Nova" % self.prefix)
        cloud = (["--etcd", ",".join(topo.etcd_urls), "--etcd-prefix", topo.etcd_prefix] if topo.clustered else []) if topo is not None else (
            ["--etcd", ",".join(layout["etcd"]["urls"]), "--etcd-prefix", layout["etcd"]["key_prefix"]] if layout.get("etcd") else [])  # fmt: skip
        tls = []
        if os.path.exists(self._path("tls/nova.pem")):
            t = self._path("tls/")
            tls = ["--tls-cert", t + "nova.pem", "--tls-key", t + "nova.key", "--tls-client-ca", t + "ca.pem"]
        nova_ip = self._nova_ip()
        proc = self.procs.spawn(self.fabric, [self.vrouter, "nova-metadata", "--instances", self._path("instances.json"), "--listen", nova_ip,
                                         "--port", str(NOVA_PORT), "--secret-file", self._path("secret"), *tls, *cloud],
                                "nova.log", "nova.pid")  # fmt: skip

        def listening() -> bool:
            def connect() -> bool:
                with socket.socket() as s:
                    s.settimeout(1)
                    return s.connect_ex((nova_ip, NOVA_PORT)) == 0

            with netns.Namespace(self.fabric) as ns:
                return ns.run(connect)

        self.procs.wait(15, proc, listening, "nova-metadata", "nova.log")
        self.say("  nova-metadata listening on %s:%d (pid %d)" % (nova_ip, NOVA_PORT, proc.pid))

    def nodes(self, topo: Topology | None = None) -> list[tuple[int, str, str]]:
        """(node, its namespace, its state directory) of each compute node: from ``topo`` while
        ``up`` builds it, else from the layout (a node of old: the one)."""
        if topo is not None:
            return [(n, topo.compute_of(n), topo.state_of(n)) for n in range(1, topo.nodes + 1)]
        layout = self.layout() or {}
        if layout.get("nodes"):
            return [(d["node"], d["namespace"], d["state_dir"]) for d in layout["nodes"]]
        found = locate.node_numbers(self.state)
        if found:
            return [(n, "%s%d" % (self.compute, n), self._path("compute%d" % n)) for n in found]
        return [(1, self.compute, self.state)]

    def _node(self, node: int, topo: Topology | None = None) -> tuple[str, str]:
        nodes = self.nodes(topo)
        for n, ns, state in nodes:
            if n == node:
                return ns, state
        raise LabError("--node %d: prefix %s has nodes %s" % (node, self.prefix, ", ".join(str(n) for n, _, _ in nodes)))

    def start_agent(self, node: int = 1, topo: Topology | None = None) -> None:
        namespace, state = self._node(node, topo)
        rel = os.path.relpath(state, self.state)
        pidfile, log = os.path.normpath(rel + "/agent.pid.sh"), os.path.normpath(rel + "/agent.log")
        what = "the agent" if namespace == self.compute else "the agent of node %d" % node
        if self.procs.pid(pidfile):
            self.say("  %s already running" % what)
            return
        extra = os.environ.get("VROUTER_AGENT_ARGS", "").split()
        proc = self.procs.spawn(namespace, [self.vrouter, "agent", "--config", os.path.join(state, "agent.conf"), "--state-dir", state, *extra],
                                log, pidfile)  # fmt: skip

        def answers() -> bool:
            try:
                call(os.path.join(state, "agent.sock"), StatusRequest(), timeout=2)
                return True
            except (AgentNotRunning, RequestFailed):
                return False

        self.procs.wait(20, proc, answers, what, log)
        self.say("  vrouter agent up in %s (pid %d)" % (namespace, proc.pid))

    def _nova_ip(self) -> str:
        layout = self.layout()
        return layout["nova"]["ip"] if layout else Topology.plan(self.prefix, 1, self.state).nova_ip

    def stop_agent(self, node: int = 1) -> None:
        namespace, state = self._node(node)
        rel = os.path.relpath(state, self.state)
        self.procs.stop(os.path.normpath(rel + "/agent.pid.sh"), "vrouter agent" if namespace == self.compute else "vrouter agent of node %d" % node)

    def stop_agents(self) -> None:
        for n, _, _ in self.nodes():
            self.stop_agent(n)

    def start_etcd(self) -> None:
        """The cloud's etcd, in the fabric namespace on Nova's fabric address (its data kept in the
        state directory, so that a restart keeps every key)."""
        layout = self.layout()
        if layout is not None and (layout.get("etcd") or {}).get("namespace") is None:
            why = "it uses " + ", ".join(layout["etcd"]["urls"]) if layout.get("etcd") else "a single node configured by its files"
            raise LabError("prefix %s has no etcd of its own (%s); up --nodes K starts one" % (self.prefix, why))
        if self.procs.pid(etcd.PIDFILE):
            self.say("  etcd already running")
            return
        try:
            pid = etcd.start(self.procs, self.fabric, self._nova_ip(), self._path("etcd"))
        except etcd.EtcdError as e:
            raise LabError(str(e)) from None
        self.say("  etcd listening on %s (pid %d, data in %s)" % (etcd.url(self._nova_ip()), pid, self._path("etcd")))

    def stop_etcd(self) -> None:
        etcd.stop(self.procs)

    def stop_nova(self) -> None:
        self.procs.stop("nova.pid", "nova-metadata")

    def stop_clients(self) -> None:
        """The QEMU guests and the DHCP clients."""
        for kind, what in (("guests", "guest"), ("dhcp", "DHCP client of")):
            try:
                names = sorted(n[:-4] for n in os.listdir(self._path(kind)) if n.endswith(".pid"))
            except FileNotFoundError:
                continue
            for name in names:
                self.procs.stop("%s/%s.pid" % (kind, name), "%s %s" % (what, name))

    def remove_node(self, node: int) -> None:
        """Take node ``node`` out of a cluster as ``down`` takes a whole one: its agent stopped, its
        ports, routes and node record deleted from etcd (so that no other node keeps a route to
        it), its VMs' namespaces and its own removed, the layout without it."""
        layout = self.layout()
        nodes = (layout or {}).get("nodes") or []
        if len(nodes) < 2:
            raise LabError("down --node %d: prefix %s is not a cluster of several nodes (use down)" % (node, self.prefix))
        mine = next((d for d in nodes if d["node"] == node), None)
        if mine is None:
            raise LabError("down --node %d: prefix %s has nodes %s" % (node, self.prefix, ", ".join(str(d["node"]) for d in nodes)))
        assert layout is not None
        self.say("removing node %d (%s) of '%s'" % (node, mine["namespace"], self.prefix))
        self.stop_agent(node)
        theirs = [v["instance_uuid"] for v in layout["vms"] if v.get("node") == node] if layout["etcd"].get("joined") else []
        try:
            gone = self._forget(layout, [mine], theirs)
        except (StoreError, OSError) as e:
            raise LabError("down --node %d: its keys could not be deleted from etcd (%s); start etcd and run it again" % (node, e)) from None
        self.say("  %d keys of node %d deleted from etcd" % (gone, node))
        vms = [v for v in layout["vms"] if v.get("node") == node]
        doomed = {v["namespace"] for v in vms} | {mine["namespace"]}
        for name in sorted(doomed):
            if netns.delete(name):
                self.say("  deleted netns %s" % name)
        with open(self._path("created")) as f:
            kept = [line for line in f.read().splitlines() if not (line.startswith("netns ") and line[6:] in doomed)]
        self._write("created", "".join(line + "\n" for line in kept))
        layout["vms"] = [v for v in layout["vms"] if v.get("node") != node]
        layout["nodes"] = [d for d in nodes if d["node"] != node]
        layout["namespaces"]["vms"] = [v["namespace"] for v in layout["vms"]]
        layout["namespaces"]["computes"] = [d["namespace"] for d in layout["nodes"]]
        self._write("layout.json", json.dumps(layout, indent=2))
        shutil.rmtree(mine["state_dir"], ignore_errors=True)
        self.say("down: node %d of prefix %s removed" % (node, self.prefix))

    def _forget(self, layout: dict, nodes: list[dict], instances: list[str]) -> int:
        """Delete from the cloud's etcd the keys of ``nodes`` (their ports, routes and node records)
        and the ``instances``' records; asked from the first of those nodes' namespaces (where the
        node reached etcd from).  Returns how many keys went."""
        names = {d["name"] for d in nodes}

        def forget(store: ConfigStore) -> int:
            _, everything = store.get_all()
            keys = [k for k, v in everything.items() if k.startswith(("ports/", "routes/")) and isinstance(v, dict) and v.get("node") in names]
            keys += ["nodes/" + n for n in sorted(names)] + ["instances/" + u for u in instances]
            return sum(store.delete(k) for k in keys)

        return in_etcd(layout["etcd"]["urls"], layout["etcd"]["key_prefix"], nodes[0]["namespace"], forget)

    # -- down -----------------------------------------------------------------------------------

    def down(self, quiet: bool = False) -> bool:
        """Remove what ``up`` made; False if nothing was up."""
        if not self.is_up():
            if not quiet:
                self.say("nothing is up for prefix %s" % self.prefix)
            return False
        if not quiet:
            several = len(self.nodes()) > 1
            self.say("removing emulated %s '%s'" % ("cloud" if several else "compute node", self.prefix))
        self.stop_clients()
        self.stop_agents()  # first: a running agent would publish its ports again
        layout = self.layout() or {}
        if layout.get("etcd") and layout["etcd"].get("namespace") is None:  # an etcd that stays: what we told it goes
            try:
                joined = layout["etcd"].get("joined")
                gone = self._forget(layout, layout["nodes"], [v["instance_uuid"] for v in layout["vms"] + layout["guests"]] if joined else [])
                if not quiet:
                    self.say("  %d keys deleted from the cloud's etcd" % gone)
            except (StoreError, OSError) as e:
                self.say("  could not delete this lab's keys from the cloud's etcd (%s): its nodes' routes stay there" % e)
        self.stop_nova()
        self.stop_etcd()
        rootdir = ""
        try:
            with open(self._path("created")) as f:
                created = [line.split(" ", 1) for line in f.read().splitlines() if " " in line]
        except FileNotFoundError:
            # `up` died before writing its list: only the two fixed names are known to be ours
            created = [["netns", ns] for _, ns, _ in self.nodes()] + [["netns", self.fabric]]
        for kind, name in reversed(created):
            if kind == "netns":
                if netns.delete(name) and not quiet:
                    self.say("  deleted netns %s" % name)
            elif kind == "file":
                _remove(name)
            elif kind == "dir":
                try:
                    os.rmdir(name)
                except OSError:
                    pass
            elif kind == "rootdir":
                rootdir = name
        shutil.rmtree(self.state, ignore_errors=True)
        if rootdir:
            try:
                os.rmdir(rootdir)  # if no other prefix is up
            except OSError:
                pass
        if not quiet:
            self.say("down: prefix %s removed" % self.prefix)
        return True


def in_etcd(urls: list[str], prefix: str, namespace: str, fn: Callable[[ConfigStore], T]) -> T:
    """``fn(store)`` on the etcd at ``urls``, from a thread in ``namespace`` (a store's connections
    are made in the namespace of the thread that uses it, and closed there at the end)."""
    store = ConfigStore(urls, prefix)

    def run() -> T:
        try:
            return fn(store)
        finally:
            store.close()

    with netns.Namespace(namespace) as ns:
        return ns.run(run)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
