"""The agent's changes to the compute namespace's kernel state: taps, routes, sysctls.

The agent runs inside the compute namespace, so everything here acts on that
namespace only.  Per plugged port: the tap is brought up with the vRouter MAC
(00:00:5e:00:01:00), answers no ARP itself (the agent's ARP service does,
through pkt0), and gets a /32 route for the VM IP and for its metadata IP plus
a permanent neighbour entry for the VM; likewise /128 routes and neighbour
entries for its IPv6 address and IPv6 metadata address, in one rtnetlink
transaction (``rtnl``).  Reverse-path filtering is strict on an unplugged tap,
so without those routes (no agent) the kernel drops everything a VM sends: the
dataplane fails closed even without its nftables table.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD, IFA_F_TENTATIVE

from vrouter.agent import rtnl
from vrouter.model import PortError

log = logging.getLogger("vrouter.host")

VROUTER_MAC = "00:00:5e:00:01:00"
METADATA_IP6 = "fe80::a9fe:a9fe"
ROUTER_IP6 = "fe80::5e00:100"  # the vRouter's link-local address, as the vRouter agent's advertisements give it


def raise_open_files_limit() -> None:
    """A queue per VM is a socket per VM: the soft limit of open files up to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


def sysctl(path: str, value: str) -> None:
    with open("/proc/sys/" + path.replace(".", "/"), "w") as f:
        f.write(value)


class HostNetwork:
    """Netlink to the compute namespace's kernel.

    pyroute2's synchronous IPRoute, on one worker thread: its asyncio flavour needs an event loop
    that can open netlink datagram endpoints, which uvloop (the agent's loop) cannot.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="netlink")
        self._ipr: IPRoute | None = None
        self._rtnl: rtnl.Rtnl | None = None  # a port's plug, in one transaction (rtnl.py)

    async def _nl(self, method: str, *args: object, **kwargs: object) -> Any:  # noqa: ANN401 - what pyroute2 returns
        def call() -> Any:  # noqa: ANN401
            if self._ipr is None:
                self._ipr = IPRoute()
            return getattr(self._ipr, method)(*args, **kwargs)

        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    def close(self) -> None:
        if self._rtnl is not None:
            self._rtnl.close()
        if self._ipr is not None:
            self._pool.submit(self._ipr.close).result(10)
        self._pool.shutdown(wait=True)

    async def ifindex(self, name: str) -> int:
        """The interface's index in this namespace, 0 if there is none.  One ioctl: called for
        every port every second by the tap scan, which must not hold the GIL from the packet loop
        as a pyroute2 call on the netlink thread would."""
        try:
            return socket.if_nametoindex(name)
        except (OSError, ValueError):
            return 0

    async def address_of(self, name: str) -> str:
        idx = await self.ifindex(name)
        if not idx:
            return ""
        for a in await self._nl("get_addr", index=idx, family=2):
            return a.get_attr("IFA_ADDRESS")
        return ""

    async def address6_of(self, name: str) -> str:
        """The interface's global IPv6 address, "" if none."""
        idx = await self.ifindex(name)
        if not idx:
            return ""
        for a in await self._nl("get_addr", index=idx, family=socket.AF_INET6):
            if a["scope"] == 0:  # global (a unique local fd00::/8 one too)
                return str(a.get_attr("IFA_ADDRESS"))
        return ""

    def enable_forwarding(self, on: bool) -> None:
        """Forwarding on and per-interface reverse-path filtering (the effective value is the
        larger of `all` and the interface's) while the agent runs; off and strict everywhere
        when it stops."""
        sysctl("net.ipv4.ip_forward", "1" if on else "0")
        sysctl("net.ipv6.conf.all.forwarding", "1" if on else "0")  # dual stack: VM to VM over IPv6
        sysctl("net.ipv4.conf.all.rp_filter", "0" if on else "1")
        sysctl("net.ipv4.conf.default.rp_filter", "1")

    def reserve_ports(self, first: int, last: int) -> str:
        """Keep the link-local NAT range out of ephemeral use; return the previous setting."""
        path = "/proc/sys/net/ipv4/ip_local_reserved_ports"
        with open(path) as f:
            previous = f.read().strip()
        sysctl("net.ipv4.ip_local_reserved_ports", "%d-%d" % (first, last))
        return previous

    async def add_proxy_ip6(self, address: str) -> None:
        """The metadata proxy's IPv6 address, on lo, without duplicate address detection (a
        tentative address cannot be bound); returns once the address is usable."""
        sysctl("net.ipv6.conf.lo.accept_dad", "0")
        lo = await self.ifindex("lo")
        await self._nl("addr", "replace", index=lo, address=address, prefixlen=128, flags=IFA_F_NODAD)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while loop.time() < deadline:
            for a in await self._nl("get_addr", index=lo, family=10):
                if a.get_attr("IFA_ADDRESS") == address and not (a.get_attr("IFA_FLAGS") or a["flags"]) & IFA_F_TENTATIVE:
                    return
            await asyncio.sleep(0.05)  # polling the kernel's address state, with a deadline

    async def del_proxy_ip6(self, address: str) -> None:
        try:
            await self._nl("addr", "del", index=await self.ifindex("lo"), address=address, prefixlen=128)
        except NetlinkError:
            pass

    async def plug(self, tap: str, vm_ip: str, vm_mac: str, md_ip: str, md_ip6: str = "", vm_ip6: str = "") -> int:
        """Prepare a tap for a port; return its ifindex, or 0 if the tap does not exist (yet).
        RtnlError if the kernel refuses a part of it."""
        idx = await self.ifindex(tap)
        if not idx:
            return 0
        # ARP is the agent's (vrouter/services/arp.py): the kernel answers none on a tap
        sysctl("net.ipv4.conf.%s.proxy_arp" % tap, "0")
        sysctl("net.ipv4.conf.%s.arp_ignore" % tap, "1")
        # Link-local NAT to the fabric rewrites a VM's source to vhost0's own address: the kernel
        # must accept a local source from the tap, and no reverse-path filter passes one on an
        # interface without an address. The dataplane checks VM sources itself (Invalid Source).
        # Both are undone at unplug (strict again), so without the agent the VMs reach nothing.
        sysctl("net.ipv4.conf.%s.accept_local" % tap, "1")
        sysctl("net.ipv4.conf.%s.rp_filter" % tap, "0")
        msgs = [rtnl.link_up(idx, VROUTER_MAC)]
        msgs += [rtnl.route(idx, ip) for ip in (vm_ip, md_ip)]
        # ... and the VM's MAC for its metadata IP too: the ebpf datapath's program rewrites the
        # proxy's replies to it on the tap's egress, after the kernel has chosen their MAC
        msgs += [rtnl.neighbour(idx, ip, vm_mac) for ip in (vm_ip, md_ip)]
        if md_ip6:
            # IPv6: the tap answers neighbour discovery for fe80::a9fe:a9fe (the kernel, for its own
            # addresses; the agent answers for the gateway, the service address and other VMs); the
            # per-port metadata address and the VM's address route to it.
            for key, value in (("accept_dad", "0"), ("accept_ra", "0"), ("disable_ipv6", "0")):
                sysctl("net.ipv6.conf.%s.%s" % (tap, key), value)
            # ... and for the router's link-local address, which its advertisements come from
            msgs += [rtnl.address6(idx, address, 64) for address in (METADATA_IP6, ROUTER_IP6)]
            msgs += [rtnl.route(idx, ip) for ip in (md_ip6, vm_ip6) if ip]
            msgs += [rtnl.neighbour(idx, ip, vm_mac) for ip in (md_ip6, vm_ip6) if ip]
        try:
            if self._rtnl is None:
                self._rtnl = rtnl.Rtnl()
            self._rtnl.apply(msgs)  # one write, its acks at once: the kernel answers as it takes them
        except OSError as e:  # the requests are each its own: undo what the others did
            await self.unplug(tap, vm_ip, md_ip)
            raise PortError("tap %s: the kernel refused its routes or neighbours (%s)" % (tap, e.strerror or e)) from None
        return idx

    async def unplug(self, tap: str, vm_ip: str, md_ip: str) -> None:
        idx = await self.ifindex(tap)
        if idx:
            sysctl("net.ipv4.conf.%s.rp_filter" % tap, "1")
            sysctl("net.ipv4.conf.%s.accept_local" % tap, "0")
            sysctl("net.ipv6.conf.%s.disable_ipv6" % tap, "1")  # its addresses and routes go too
        # in one transaction, as plug's (0.03 ms a port, where four pyroute2 calls took about 4 ms):
        # the agent's stop unplugs every port
        msgs = [rtnl.route_gone(idx, ip) for ip in (vm_ip, md_ip)]
        if idx:
            msgs += [rtnl.neighbour_gone(idx, ip) for ip in (vm_ip, md_ip)]
        try:
            if self._rtnl is None:
                self._rtnl = rtnl.Rtnl()
            self._rtnl.apply(msgs)
        except OSError:
            pass  # a route or neighbour already gone: each request is its own, the others were done


def in_namespace_hint() -> str:
    """For error messages: which network namespace we are in, if `ip netns` named it."""
    try:
        ours = os.stat("/proc/self/ns/net").st_ino
        for name in os.listdir("/run/netns"):
            if os.stat("/run/netns/" + name).st_ino == ours:
                return name
    except OSError:
        pass
    return "the host's own namespace"
