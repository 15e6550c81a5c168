"""The namespace VMs: each a namespace ``P-vmI`` whose eth0 is a veth to its tap on its node.

The tap end lives in the node's namespace and is named as Nova names it; eth0
has the port's MAC and IPv6 address (no duplicate address detection), and,
unless the VMs take their address by DHCP, its IPv4 address and default
route.  With DHCP each VM has a resolver file of its own
(``/etc/netns/P-vmI/resolv.conf``, never the host's) and runs busybox's
udhcpc, kept running (it renews), whose script applies the lease and writes
it to ``dhcp/NAME.lease`` in the state directory.
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD

from topology import netns
from topology.errors import LabError
from topology.model import VM, Topology
from topology.processes import Processes
from topology.state import StateDir

ROOT = Path(__file__).resolve().parents[1]
UDHCPC_SCRIPT = ROOT / "scripts" / "udhcpc-vm.sh"


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

    def create(self, topo: Topology, nodes: dict[int, netns.Namespace]) -> None:
        """Each VM's namespace (and with DHCP its resolver file), wired to its node of ``nodes``."""
        for vm in topo.vms:
            netns.create(vm.namespace)
            self.files.created("netns", vm.namespace)
            if topo.dhcp:  # its resolver file, which udhcpc's script writes (never the host's)
                os.makedirs("/etc/netns/" + vm.namespace, exist_ok=True)
                self.files.created("dir", "/etc/netns/" + vm.namespace)
                open("/etc/netns/%s/resolv.conf" % vm.namespace, "w").close()
                self.files.created("file", "/etc/netns/%s/resolv.conf" % vm.namespace)
            with netns.Namespace(vm.namespace) as ns:
                self._wire(vm, nodes[vm.node], ns, static=not topo.dhcp)

    def _wire(self, vm: VM, compute: netns.Namespace, ns: netns.Namespace, static: bool) -> None:
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

    def stop(self) -> None:
        """The DHCP clients (their namespaces go with the lab's list of what was created)."""
        self.procs.stop_each("dhcp", "DHCP client of")
