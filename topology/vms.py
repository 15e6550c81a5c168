"""The namespace VMs: each a namespace ``P-vmI`` whose eth0 is a veth to its tap on its node.

The tap end lives in the node's namespace and is named as Nova names it; eth0
has the port's MAC (no duplicate address detection), and, unless the VMs take
their address by DHCP, its IPv4 address and default route.  With DHCP each VM
has a resolver file of its own (``/etc/netns/P-vmI/resolv.conf``, never the
host's) and runs busybox's udhcpc, kept running (it renews), whose script
applies the lease and writes it to ``dhcp/NAME.lease`` in the state directory.

IPv6 follows the address mode of the VM's network: ``none``, the port's
address set statically; ``slaac``, the kernel's SLAAC from the agent's router
advertisements; ``dhcpv6-stateful``, ISC dhclient -6 (its script
``scripts/dhclient6-vm.sh``, lease in ``dhcp/NAME.lease6``); ``dhcpv6-stateless``,
SLAAC and ``dhclient -6 -S`` for the DNS servers.  Every mode but ``none``
takes the default route from the advertisements.

A lab of more than ``LEARNED_GATEWAYS`` VMs gives each static VM its gateway's MAC (the vRouter's,
00:00:5e:00:01:00) as a permanent neighbour, and each VM of an IPv6 network its router's, instead
of learning them by ARP and neighbour discovery.  Every namespace shares the host kernel's
neighbour tables, which hold 1,024 learned entries by default (``gc_thresh3``, a host setting
the lab does not change; permanent entries do not count): four thousand VMs' gateway entries
overflowed them ("neighbor table overflow" in dmesg) and the VMs' own kernels dropped their
packets.  Real guests have kernels of their own.
"""

from __future__ import annotations

import functools
import os
import shlex
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path

from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD

from topology import netns
from topology.errors import LabError
from topology.model import VM, Topology
from topology.processes import Processes
from topology.state import StateDir
from vrouter.agent.host import ROUTER_IP6, VROUTER_MAC  # the vRouter's link-local address (its advertisements' source), its MAC
from vrouter.model import AUTOCONF_MODES

ROOT = Path(__file__).resolve().parents[1]
UDHCPC_SCRIPT = ROOT / "scripts" / "udhcpc-vm.sh"
DHCLIENT6_SCRIPT = ROOT / "scripts" / "dhclient6-vm.sh"
DHCLIENT6_CONF = "request dhcp6.name-servers, dhcp6.domain-search;\n"
LEARNED_GATEWAYS = 256  # up to this many VMs in a lab, the VMs learn their gateway's MAC (see above)


class VMs:
    """The namespace VMs of a lab: made, wired, their DHCP clients started and stopped."""

    def __init__(self, files: StateDir, procs: Processes, say: Callable[[str], None]) -> None:
        self.files = files
        self.procs = procs
        self.say = say

    @staticmethod
    def check(topo: Topology) -> None:
        """Refuse what cannot work, before anything is built."""
        if topo.dhcp and shutil.which("busybox") is None:
            raise LabError("--dhcp needs busybox (its udhcpc): apt-get install busybox-static")
        if any(n.ipv6_mode.startswith("dhcpv6") for n in topo.networks) and topo.vms and _dhclient() is None:
            raise LabError("--ipv6 dhcpv6-*: the namespace VMs need ISC dhclient: apt-get install isc-dhcp-client")

    def create(self, topo: Topology, nodes: dict[int, netns.Namespace]) -> None:
        """Each VM's namespace (and with DHCP its resolver file), wired to its node of ``nodes``."""
        permanent = len(topo.vms) > LEARNED_GATEWAYS
        for vm in topo.vms:
            netns.create(vm.namespace)
            self.files.created("netns", vm.namespace)
            if topo.dhcp:  # its resolver file, which udhcpc's script writes (never the host's)
                os.makedirs("/etc/netns/" + vm.namespace, exist_ok=True)
                self.files.created("dir", "/etc/netns/" + vm.namespace)
                open("/etc/netns/%s/resolv.conf" % vm.namespace, "w").close()
                self.files.created("file", "/etc/netns/%s/resolv.conf" % vm.namespace)
            with netns.Namespace(vm.namespace) as ns:
                self._wire(vm, nodes[vm.node], ns, not topo.dhcp, topo.network_of(vm).ipv6_mode, permanent)

    def _wire(self, vm: VM, compute: netns.Namespace, ns: netns.Namespace, static: bool, mode: str, permanent: bool) -> None:
        """The VM's eth0 and its tap in the compute namespace; with ``static``, its IPv4 address and
        default route (else its DHCP client sets them); IPv6 as ``mode`` says; with ``permanent``,
        its gateways' MAC as permanent neighbours (see the module's text)."""
        compute.ipr.link("add", ifname=vm.tap, kind="veth", peer={"ifname": "eth0", "net_ns_fd": ns.fd})
        eth0 = ns.index("eth0")
        ns.ipr.link("set", index=ns.index("lo"), state="up")
        # no duplicate address detection: the VM's IPv6 addresses are usable at once; router
        # advertisements taken (SLAAC where the prefix says so) in every mode but none
        ra = "0" if mode == "none" else "1"
        ns.sysctl({"net.ipv6.conf.eth0.accept_dad": "0", "net.ipv6.conf.eth0.accept_ra": ra, "net.ipv6.conf.eth0.autoconf": ra})
        ns.ipr.link("set", index=eth0, address=vm.mac, state="up")
        if mode == "none":
            ns.ipr.addr("add", index=eth0, address=vm.ipv6, prefixlen=64, flags=IFA_F_NODAD)
            ns.ipr.route("add", dst="default", gateway=ROUTER_IP6, oif=eth0, family=socket.AF_INET6)
        if static:
            ns.ipr.addr("add", index=eth0, address=vm.ip, prefixlen=vm.prefix_len)
            ns.ipr.route("add", dst="default", gateway=vm.gateway)
        if permanent:
            if static:
                ns.ipr.neigh("replace", dst=vm.gateway, lladdr=VROUTER_MAC, ifindex=eth0, state="permanent")
            ns.ipr.neigh("replace", dst=ROUTER_IP6, lladdr=VROUTER_MAC, ifindex=eth0, state="permanent", family=socket.AF_INET6)

    def start(self, topo: Topology) -> None:
        """busybox udhcpc in each VM (with DHCP; else nothing).  Waits for every lease."""
        if not topo.dhcp:
            return
        started = []
        busybox = shutil.which("busybox") or "busybox"
        for vm in topo.vms:
            lease = self.files.path("dhcp/%s.lease" % vm.name)
            os.makedirs(os.path.dirname(lease), exist_ok=True)
            env = ["env", "LEASE_FILE=" + lease, "RESOLV_CONF=/etc/netns/%s/resolv.conf" % vm.namespace]
            args = env + [busybox, "udhcpc", "-f", "-i", "eth0", "-s", str(UDHCPC_SCRIPT), "-x", "hostname:" + vm.name,
                          "-O", "staticroutes", "-O", "mtu", "-t", "20", "-T", "1", "-A", "1"]  # fmt: skip
            started.append((vm, lease, self.procs.spawn(vm.namespace, args, "dhcp/%s.log" % vm.name, "dhcp/%s.pid" % vm.name)))
        for vm, lease, proc in started:
            self.procs.wait(30, proc, functools.partial(os.path.exists, lease), "the DHCP client of %s" % vm.name, "dhcp/%s.log" % vm.name)
        self.say("  %d VMs took their address by DHCP" % len(started))

    def start6(self, topo: Topology) -> None:
        """dhclient -6 in each VM of a dhcpv6 network (-S: stateless, for DNS only); waits for each
        one's lease, and for the SLAAC address of each VM that makes one."""
        started = []
        for vm in topo.vms:
            mode = topo.network_of(vm).ipv6_mode
            if not mode.startswith("dhcpv6"):
                continue
            lease = self.files.path("dhcp/%s.lease6" % vm.name)
            conf = self.files.path("dhcp/%s.dhclient6.conf" % vm.name)
            os.makedirs(os.path.dirname(lease), exist_ok=True)
            with open(conf, "w") as f:
                f.write(DHCLIENT6_CONF)
            # dhclient runs its script with its own variables only: the VM's paths in a wrapper
            script = self.files.path("dhcp/%s.dhclient6.sh" % vm.name)
            with open(script, "w") as f:
                resolv = "/etc/netns/%s/resolv.conf" % vm.namespace
                quoted = (shlex.quote(lease), shlex.quote(resolv), shlex.quote(str(DHCLIENT6_SCRIPT)))
                f.write('#!/bin/sh\nLEASE_FILE=%s RESOLV_CONF=%s exec %s "$@"\n' % quoted)
            os.chmod(script, 0o755)
            args = [_dhclient() or "dhclient", "-6", "-d", "-cf", conf, "-lf", self.files.path("dhcp/%s.leases6" % vm.name),
                          "-pf", self.files.path("dhcp/%s.dhclient6-pid" % vm.name), "-sf", script]  # fmt: skip
            args += ["-S", "eth0"] if mode == "dhcpv6-stateless" else ["eth0"]
            started.append((vm, lease, self.procs.spawn(vm.namespace, args, "dhcp/%s.log6" % vm.name, "dhcp/%s-v6.pid" % vm.name)))
        for vm, lease, proc in started:
            self.procs.wait(30, proc, functools.partial(os.path.exists, lease), "the DHCPv6 client of %s" % vm.name, "dhcp/%s.log6" % vm.name)
        if started:
            self.say("  %d VMs asked DHCPv6 (dhclient -6)" % len(started))
        slaac = [vm for vm in topo.vms if topo.network_of(vm).ipv6_mode in AUTOCONF_MODES]
        deadline = time.monotonic() + 40  # the advertisement at the plug, or the next one (ra_interval 30 s)
        for vm in slaac:
            with netns.Namespace(vm.namespace) as ns:
                while not any(a.get_attr("IFA_ADDRESS") == vm.ipv6 for a in ns.ipr.get_addr(family=socket.AF_INET6)):
                    if time.monotonic() > deadline:
                        raise LabError("%s made no SLAAC address %s from the agent's router advertisements" % (vm.name, vm.ipv6))
                    time.sleep(0.1)  # polling the VM's addresses, with a deadline
        if slaac:
            self.say("  %d VMs made their IPv6 address by SLAAC" % len(slaac))

    def stop(self) -> None:
        """The DHCP clients (their namespaces go with the lab's list of what was created)."""
        self.procs.stop_each("dhcp", "DHCP client of")


def _dhclient() -> str | None:
    return shutil.which("dhclient") or next((p for p in ("/sbin/dhclient", "/usr/sbin/dhclient") if os.path.exists(p)), None)
