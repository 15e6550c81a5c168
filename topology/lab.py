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

import functools
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD

from topology import guests, netns
from topology.model import NOVA_PORT, VM, Topology
from topology.processes import Processes, StartError
from vrouter.agent.control import AgentNotRunning, RequestFailed, call
from vrouter.agent.paths import STATE_ROOT
from vrouter.messages import LinkLocalAdd, NetworkAdd, PortAdd, StatusRequest

ROOT = Path(__file__).resolve().parents[1]
UDHCPC_SCRIPT = ROOT / "scripts" / "udhcpc-vm.sh"
BIN = Path(sys.executable).parent  # the venv's bin: vrouter lives beside this python


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
        return netns.exists(self.compute) or os.path.exists(self._path("created"))

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
        self.say("building emulated compute node '%s' with %d VMs%s" % (self.prefix, len(topo.vms), with_guests))
        for name in (self.compute, self.fabric):
            netns.create(name)
            self._created("netns", name)
        # The compute namespace's own resolver file: fabric names for services given by DNS name.
        if not os.path.isdir("/etc/netns"):
            self._created("dir", "/etc/netns")
        os.makedirs("/etc/netns/" + self.compute, exist_ok=True)
        self._created("dir", "/etc/netns/" + self.compute)
        with open("/etc/netns/%s/hosts" % self.compute, "w") as f:
            f.write("127.0.0.1 localhost\n%s nova.fabric fabric\n" % topo.nova_ip)
        self._created("file", "/etc/netns/%s/hosts" % self.compute)
        with netns.Namespace(self.compute) as compute, netns.Namespace(self.fabric) as fabric:
            self._wire_fabric(topo, compute, fabric)
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
                    self._wire_vm(vm, compute, ns, static=not topo.dhcp)
            for g in topo.guests:
                compute.create_tap(g.tap)  # as os-vif does before plugging a libvirt guest's port
        if topo.tls:
            self._make_tls(topo)
        self._write("agent.conf", topo.agent_conf())
        self.start_nova()
        self.start_agent()
        sock = os.path.join(self.state, "agent.sock")
        for n in topo.networks:
            net = call(sock, NetworkAdd(n.uuid, n.subnet, n.name, n.gateway, n.dns_server))
            self.say("network %s set: %s, gateway %s, service address %s" % (net.name, net.subnet, net.gateway, net.dns_server))
        quiet = len(topo.ports) > 50
        for vm in topo.ports:
            p = call(sock, PortAdd(vm.port_uuid, vm.instance_uuid, vm.vn_uuid, vm.project_id, vm.ip, vm.ipv6, vm.mac, vm.tap, vm.name))
            vm.vif, vm.metadata_ip, vm.metadata_ip6 = p.vif, p.metadata_ip, p.metadata_ip6
            if not quiet:
                self.say("port %s plugged as vif0/%d (%s, metadata IP %s)" % (p.uuid, p.vif, p.tap_name, p.metadata_ip))
        if quiet:
            self.say("%d ports plugged, vif0/%d to vif0/%d (the layout lists them)" % (len(topo.ports), topo.ports[0].vif, topo.ports[-1].vif))
        call(sock, LinkLocalAdd("metadata", "169.254.169.254", "80", [topo.nova_ip], str(NOVA_PORT)))
        self.say("link-local service metadata set")
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

    def start_nova(self) -> None:
        if self.procs.pid("nova.pid"):
            self.say("  nova-metadata already running")
            return
        tls = []
        if os.path.exists(self._path("tls/nova.pem")):
            t = self._path("tls/")
            tls = ["--tls-cert", t + "nova.pem", "--tls-key", t + "nova.key", "--tls-client-ca", t + "ca.pem"]
        nova_ip = self._nova_ip()
        proc = self.procs.spawn(self.fabric, [self.vrouter, "nova-metadata", "--instances", self._path("instances.json"), "--listen", nova_ip,
                                         "--port", str(NOVA_PORT), "--secret-file", self._path("secret"), *tls], "nova.log", "nova.pid")  # fmt: skip

        def listening() -> bool:
            def connect() -> bool:
                with socket.socket() as s:
                    s.settimeout(1)
                    return s.connect_ex((nova_ip, NOVA_PORT)) == 0

            with netns.Namespace(self.fabric) as ns:
                return ns.run(connect)

        self.procs.wait(15, proc, listening, "nova-metadata", "nova.log")
        self.say("  nova-metadata listening on %s:%d (pid %d)" % (nova_ip, NOVA_PORT, proc.pid))

    def start_agent(self) -> None:
        if self.procs.pid("agent.pid.sh"):
            self.say("  agent already running")
            return
        extra = os.environ.get("VROUTER_AGENT_ARGS", "").split()
        proc = self.procs.spawn(self.compute, [self.vrouter, "agent", "--config", self._path("agent.conf"), "--state-dir", self.state, *extra],
                           "agent.log", "agent.pid.sh")  # fmt: skip

        def answers() -> bool:
            try:
                call(self._path("agent.sock"), StatusRequest(), timeout=2)
                return True
            except (AgentNotRunning, RequestFailed):
                return False

        self.procs.wait(20, proc, answers, "the agent", "agent.log")
        self.say("  vrouter agent up (pid %d)" % proc.pid)

    def _nova_ip(self) -> str:
        layout = self.layout()
        return layout["nova"]["ip"] if layout else Topology.plan(self.prefix, 1, self.state).nova_ip

    def stop_agent(self) -> None:
        self.procs.stop("agent.pid.sh", "vrouter agent")

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

    # -- down -----------------------------------------------------------------------------------

    def down(self, quiet: bool = False) -> bool:
        """Remove what ``up`` made; False if nothing was up."""
        if not self.is_up():
            if not quiet:
                self.say("nothing is up for prefix %s" % self.prefix)
            return False
        if not quiet:
            self.say("removing emulated compute node '%s'" % self.prefix)
        self.stop_clients()
        self.stop_agent()
        self.stop_nova()
        rootdir = ""
        try:
            with open(self._path("created")) as f:
                created = [line.split(" ", 1) for line in f.read().splitlines() if " " in line]
        except FileNotFoundError:
            # `up` died before writing its list: only the two fixed names are known to be ours
            created = [["netns", self.compute], ["netns", self.fabric]]
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


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
