"""Dual stack in namespaces: each IPv6 address mode with real clients, VM to VM over IPv6 in both
datapaths and across two nodes, the agent's IPv6 services, extension headers, and hostile
neighbour discovery.

The shared node has four networks, one a mode (--ipv6 none,slaac,dhcpv6-stateful,
dhcpv6-stateless), and two VMs in each: vmJ and vm(J+4) in network J.  The clients are what a
guest runs: the kernel's SLAAC from the agent's router advertisements, and ISC dhclient -6 (-S
for stateless) against the agent's DHCPv6.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from collections.abc import Callable

import pytest

from tests.emulated_host import EmulatedHost
from tests.helpers import ROOT, exchange, wait_until

pytestmark = [pytest.mark.netns, pytest.mark.datapaths("nfqueue", "ebpf")]

MODES = ("none", "slaac", "dhcpv6-stateful", "dhcpv6-stateless")
PYTHON = str(ROOT / ".venv" / "bin" / "python")  # scapy, for what no socket sends

# Frames a hostile VM sends (scapy, run inside its namespace): argv = what, then its parameters
_HOSTILE = """
import sys, time
from scapy.all import Ether, IPv6, ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6ND_RA, ICMPv6NDOptDstLLAddr, ICMPv6NDOptPrefixInfo, UDP, Raw, sendp, conf
from scapy.layers.inet6 import IPv6ExtHdrHopByHop, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment
from scapy.utils6 import in6_getnsma, in6_getnsmac
from socket import AF_INET6, inet_pton, inet_ntop
conf.verb = 0
what, mac, src = sys.argv[1], sys.argv[2], sys.argv[3]
eth = Ether(src=mac, dst="00:00:5e:00:01:00")
if what == "forge":  # advertisements for others' addresses, and a router advertisement
    for target in sys.argv[4:]:
        sendp(Ether(src=mac, dst="33:33:00:00:00:01") / IPv6(src=src, dst="ff02::1", hlim=255)
              / ICMPv6ND_NA(R=0, S=0, O=1, tgt=target) / ICMPv6NDOptDstLLAddr(lladdr=mac), iface="eth0")
    sendp(Ether(src=mac, dst="33:33:00:00:00:01") / IPv6(src=src, dst="ff02::1", hlim=255)
          / ICMPv6ND_RA() / ICMPv6NDOptPrefixInfo(prefix="2001:db8::", prefixlen=64), iface="eth0")
elif what == "flood":  # solicitations for another VM's address, as fast as this can send
    target, n = sys.argv[4], int(sys.argv[5])
    group = in6_getnsma(inet_pton(AF_INET6, target))
    f = Ether(src=mac, dst=in6_getnsmac(group)) / IPv6(src=src, dst=inet_ntop(AF_INET6, group), hlim=255) / ICMPv6ND_NS(tgt=target)
    sendp([f] * n, iface="eth0")
elif what == "malformed":  # an NS with hop limit 64, and DHCPv6 that is not DHCPv6
    sendp(Ether(src=mac, dst="33:33:00:00:00:01") / IPv6(src=src, dst="ff02::1", hlim=64) / ICMPv6ND_NS(tgt=sys.argv[4]), iface="eth0")
    sendp(Ether(src=mac, dst="33:33:00:01:00:02") / IPv6(src=src, dst="ff02::1:2") / UDP(sport=546, dport=547) / Raw(b"\\x0b"), iface="eth0")
elif what == "nd-unicast":  # neighbour discovery messages to a unicast address: each ND/MLD type
    from scapy.layers.inet6 import ICMPv6MLReport2
    dst = sys.argv[4]
    for m in (ICMPv6ND_NS(tgt=dst), ICMPv6ND_NA(tgt=src), ICMPv6ND_RA(), ICMPv6MLReport2()):
        sendp(eth / IPv6(src=src, dst=dst, hlim=255) / m / Raw(b"marker-nd"), iface="eth0")
elif what == "exthdr":  # UDP to sys.argv[4]:sys.argv[5] behind extension headers
    dst, port = sys.argv[4], int(sys.argv[5])
    base = eth / IPv6(src=src, dst=dst)
    sendp(base / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / UDP(sport=4000, dport=port) / Raw(b"walked"), iface="eth0")
    sendp(base / IPv6ExtHdrFragment(m=1, id=7) / UDP(sport=4000, dport=port) / Raw(b"fragment"), iface="eth0")
"""

_COLLECT = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(float(sys.argv[3]))
print("ready", flush=True)
try:
    while True:
        print(s.recv(100).decode(), flush=True)
except TimeoutError:
    pass
"""

_ICMP6_SINK = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.settimeout(float(sys.argv[1]))
print("ready", flush=True)
try:
    while True:
        if b"marker-nd" in s.recv(2000):
            print("got", flush=True)
except TimeoutError:
    pass
"""

_AAAA = """
import socket, struct, sys
q = struct.pack("!HHHHHH", 7, 0x100, 1, 0, 0, 0) + b"".join(bytes([len(p)]) + p.encode() for p in sys.argv[2].split(".")) + b"\\0"
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.settimeout(3)
s.sendto(q + struct.pack("!HH", 28, 1), (sys.argv[1], 53))
r = s.recv(512)
print(socket.inet_ntop(socket.AF_INET6, r[-16:]) if struct.unpack_from("!H", r, 6)[0] else "none")
"""


@pytest.fixture(scope="module")
def dual(make_shared_node: Callable[..., EmulatedHost]) -> EmulatedHost:
    return make_shared_node(vms=8, networks=4, ipv6=MODES)


def address6(h: EmulatedHost, i: int) -> str:
    """VM i's global IPv6 addresses, as its kernel has them."""
    r = h.in_vm(i, "ip", "-6", "-j", "addr", "show", "dev", "eth0", "scope", "global")
    return " ".join(a["local"] for link in json.loads(r.stdout) for a in link["addr_info"] if a.get("local"))


def lease6(h: EmulatedHost, i: int) -> dict[str, str]:
    with open("%s/dhcp/%s.lease6" % (h.state_dir, h.vms[i]["name"])) as f:
        return dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line)


@pytest.mark.parametrize("mode", MODES)
def test_each_mode_gives_the_address_and_vms_talk_over_ipv6(dual: EmulatedHost, mode: str) -> None:
    j = MODES.index(mode)  # vm(j+1) and vm(j+5), network j+1
    a, b = dual.vms[j], dual.vms[j + 4]
    net = ipaddress.IPv6Network("fd00:10:1:%x::/64" % (j + 1))
    for i, vm in ((j, a), (j + 4, b)):
        assert ipaddress.IPv6Address(vm["ipv6"]) in net
        assert address6(dual, i) == vm["ipv6"], "vm%d has %s, IPAM says %s" % (i + 1, address6(dual, i), vm["ipv6"])
    if mode in ("slaac", "dhcpv6-stateless"):  # Neutron's EUI-64 of the MAC: what the kernel made
        mac = bytes.fromhex(a["mac"].replace(":", ""))
        iid = bytes([mac[0] ^ 2]) + mac[1:3] + b"\xff\xfe" + mac[3:]
        assert a["ipv6"] == str(ipaddress.IPv6Address(net.network_address.packed[:8] + iid))
    if mode.startswith("dhcpv6"):
        lease = lease6(dual, j)
        assert lease["new_dhcp6_name_servers"] == "fd00:10:1:%x::2" % (j + 1) and lease["new_dhcp6_domain_search"] == "novalocal."
        assert lease["new_ip6_address"] == (a["ipv6"] if mode == "dhcpv6-stateful" else "")
    route = dual.in_vm(j, "ip", "-6", "route", "show", "default").stdout
    assert "via fe80::5e00:100 dev eth0" in route, route
    ping = dual.in_vm(j, "ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", "-w", "20", b["ipv6"])
    assert " 0% packet loss" in ping.stdout, ping.stdout
    assert exchange(dual, j, j + 4, b["ipv6"], "tcp") == a["ipv6"]
    assert exchange(dual, j, j + 4, b["ipv6"], "udp") == a["ipv6"]
    gw = dual.in_vm(j, "ping", "-6", "-c", "1", "-W", "2", "fd00:10:1:%x::1" % (j + 1))
    assert " 0% packet loss" in gw.stdout, gw.stdout  # the gateway's echo, answered by the agent


def test_ipv6_flows_are_in_the_table_and_networks_say_their_mode(dual: EmulatedHost) -> None:
    a, b = dual.vms[2], dual.vms[6]
    exchange(dual, 2, 6, b["ipv6"], "tcp", port=9200)
    flows = dual.cli("flow", "-l").stdout
    assert "%s:" % a["ipv6"] in flows and "%s:9200" % b["ipv6"] in flows, flows[-2000:]
    nets = {n["name"]: n for n in dual.cli_json("network", "list")}  # type: ignore[union-attr]
    assert [nets[n["name"]]["ipv6_mode"] for n in dual.layout["networks"]] == list(MODES)
    assert nets[dual.layout["networks"][2]["name"]]["subnet6"] == "fd00:10:1:3::/64"


def test_dns_answers_aaaa_over_ipv6(dual: EmulatedHost) -> None:
    r = dual.in_vm(0, sys.executable, "-c", _AAAA, "fd00:10:1:1::2", "vm5")
    assert r.returncode == 0 and r.stdout.strip() == dual.vms[4]["ipv6"], r.stdout + r.stderr


def test_extension_headers_walked_and_fragments_dropped(dual: EmulatedHost) -> None:
    a, b = dual.vms[0], dual.vms[4]
    before = dual.cli_json("dropstats")
    srv = subprocess.Popen(["ip", "netns", "exec", dual.vm_ns(4), sys.executable, "-c", _COLLECT, b["ipv6"], "9300", "3"], stdout=subprocess.PIPE,
                           text=True)  # fmt: skip
    try:
        assert srv.stdout is not None and srv.stdout.readline().strip() == "ready"
        r = dual.in_vm(0, PYTHON, "-c", _HOSTILE, "exthdr", a["mac"], a["ipv6"], b["ipv6"], "9300")
        assert r.returncode == 0, r.stderr
        got, _ = srv.communicate(timeout=20)
    finally:
        if srv.poll() is None:
            srv.kill()
    assert got.split() == ["walked"]  # the fragment never arrived
    after = dual.cli_json("dropstats")
    assert after["Invalid Packet"] > before["Invalid Packet"]  # type: ignore[index]


_LINK_LOCAL6 = """
import socket, sys
dst, proto = sys.argv[1], sys.argv[2]
if proto == "udp":
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.settimeout(3)
    s.sendto(b"over6", (dst, 7))
    print(s.recv(200).decode())
else:
    s = socket.create_connection((dst, 7), timeout=3)
    s.sendall(b"over6")
    print(s.recv(200).decode())
"""


def test_a_link_local_service_over_ipv6_reaches_its_ipv6_fabric_address(dual: EmulatedHost) -> None:
    """169.254.169.123:7 is fe80::a9fe:a97b port 7 to a VM over IPv6: NATed from vhost0's IPv6
    address (a port of the NAT range) to the service's IPv6 fabric address, and back to the VM's
    link-local address, in both datapaths."""
    fabric, vhost6 = dual.layout["namespaces"]["fabric"], dual.layout["vhost0"]["ip6"]
    echo = subprocess.Popen(["ip", "netns", "exec", fabric, sys.executable, str(ROOT / "tests" / "echo_server.py"), "7007",
                             dual.layout["nova"]["ip6"]], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert echo.stdout is not None and echo.stdout.readline().strip() == "ready"
        r = dual.cli("linklocal", "add", "--linklocal_service_name", "echo6", "--linklocal_service_ip", "169.254.169.123", "--linklocal_service_port",
                     "7", "--ipfabric_service_ip", dual.layout["nova"]["ip6"], "--ipfabric_service_port", "7007")  # fmt: skip
        assert r.returncode == 0, r.stderr
        for proto in ("udp", "tcp"):
            got = dual.in_vm(1, sys.executable, "-c", _LINK_LOCAL6, "fe80::a9fe:a97b%eth0", proto)
            assert got.returncode == 0, got.stderr
            local, seen, data = got.stdout.split()
            host, _, port = seen.rpartition(":")
            assert (local, host, data) == ("%s:7007" % dual.layout["nova"]["ip6"], vhost6, "over6") and 61000 <= int(port) <= 65535
        flows = dual.cli("flow", "-l").stdout
        assert "fe80::a9fe:a97b:7" in flows and "N(SPsDPdL)" in flows, flows[-1500:]
    finally:
        dual.cli("linklocal", "del", "--linklocal_service_name", "echo6")
        assert echo.stdin is not None
        echo.stdin.close()
        echo.wait(10)


def test_neighbour_discovery_to_a_unicast_address_goes_nowhere(dual: EmulatedHost) -> None:
    """ND and MLD messages are left to the kernel only to link-local and multicast destinations: to
    a VM's unicast address, in another network or its own, the node forwards none (the agent has
    answered what it answers from the frame)."""
    for j in (1, 4):  # vm2 (another network), vm5 (vm1's own)
        sink = subprocess.Popen(["ip", "netns", "exec", dual.vm_ns(j), sys.executable, "-c", _ICMP6_SINK, "2"], stdout=subprocess.PIPE, text=True)
        try:
            assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
            a = dual.vms[0]
            r = dual.in_vm(0, PYTHON, "-c", _HOSTILE, "nd-unicast", a["mac"], a["ipv6"], dual.vms[j]["ipv6"])
            assert r.returncode == 0, r.stderr
            out, _ = sink.communicate(timeout=20)
        finally:
            if sink.poll() is None:
                sink.kill()
        assert "got" not in out, "vm%d received vm1's ND sent to its unicast address" % (j + 1)


def test_a_second_port_cannot_take_a_vms_ipv6_address(dual: EmulatedHost) -> None:
    vm = dual.vms[4]
    r = dual.cli("port", "add", "--uuid", "0a0a0a0a-0000-4000-8000-000000000001", "--instance-uuid", "0a0a0a0a-0000-4000-8000-000000000002",
                 "--vn-uuid", vm["vn_uuid"], "--vm-project-uuid", vm["project_id"], "--ip-address", "10.1.1.200", "--ipv6-address", vm["ipv6"],
                 "--mac", "02:00:0a:01:00:c8")  # fmt: skip
    assert r.returncode != 0 and "already used by port %s" % vm["port_uuid"] in r.stderr, r.stdout + r.stderr
    assert exchange(dual, 0, 4, vm["ipv6"], "udp") == dual.vms[0]["ipv6"]  # vm5 still reached


@pytest.mark.datapaths("nfqueue")
def test_hostile_neighbour_discovery_moves_nobody_elses_traffic(make_node: Callable[..., EmulatedHost]) -> None:
    h = make_node(vms=3, ipv6=("dhcpv6-stateful",))
    bad, vm2, vm3 = h.vms
    # vm1 claims vm3's address and the gateway's, and sends a router advertisement of its own
    r = h.in_vm(0, PYTHON, "-c", _HOSTILE, "forge", bad["mac"], bad["ipv6"], vm3["ipv6"], "fd00:10:1:1::1")
    assert r.returncode == 0, r.stderr
    before = h.cli_json("dropstats")
    flood = subprocess.Popen(["ip", "netns", "exec", h.vm_ns(0), PYTHON, "-c", _HOSTILE, "flood", bad["mac"], bad["ipv6"], vm2["ipv6"], "20000"],
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        ping = h.in_vm(1, "ping", "-6", "-c", "20", "-i", "0.05", "-W", "2", "-w", "20", vm3["ipv6"])
        assert " 0% packet loss" in ping.stdout, ping.stdout
        assert exchange(h, 1, 2, vm3["ipv6"], "tcp") == vm2["ipv6"]
        assert flood.poll() is None, "the flood ended before vm2's traffic did: send more"
    finally:
        flood.wait(120)
    after = h.cli_json("dropstats")
    assert after["ND Rate Limit"] > before["ND Rate Limit"]  # type: ignore[index]
    services = h.cli_json("status")["services"]  # type: ignore[index]
    assert services["nd_forged"] >= 3 and services["neighbor_solicitations"] >= 20000, services
    # the node still sends vm3's traffic to vm3, and vm2 still reaches vm3 through the router
    neigh = h.in_compute("ip", "-6", "neigh", "show", vm3["ipv6"]).stdout
    assert vm3["mac"] in neigh and "PERMANENT" in neigh, neigh
    neigh2 = h.in_vm(1, "ip", "-6", "neigh", "show", vm3["ipv6"]).stdout
    assert "00:00:5e:00:01:00" in neigh2, neigh2
    assert "2001:db8" not in h.in_vm(1, "ip", "-6", "addr").stdout  # vm1's advertisement reached nobody
    # malformed ND and DHCPv6: dropped and counted
    r = h.in_vm(0, PYTHON, "-c", _HOSTILE, "malformed", bad["mac"], bad["ipv6"], vm2["ipv6"])
    assert r.returncode == 0, r.stderr
    wait_until(lambda: h.cli_json("dropstats")["Invalid ND"] > after["Invalid ND"]  # type: ignore[index]
               and h.cli_json("dropstats")["Invalid DHCPv6"] > after["Invalid DHCPv6"], 10, "the malformed ND and DHCPv6 counted")  # type: ignore[index]  # fmt: skip


@pytest.mark.datapaths("nfqueue")  # across nodes both datapaths hand IPv6 to the engine (the tunnel's queue)
def test_ipv6_across_two_nodes(make_cluster: Callable[..., EmulatedHost]) -> None:
    h = make_cluster(nodes=2, vms=4, ipv6=("dhcpv6-stateful",))
    a, c = h.vms[0], h.vms[2]  # vm1 on node 1, vm3 on node 2
    assert (a["node"], c["node"]) == (1, 2)
    wait_until(lambda: address6(h, 2) == c["ipv6"], 30, "vm3's DHCPv6 address")
    ping = h.in_vm(0, "ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", "-w", "20", c["ipv6"])
    assert " 0% packet loss" in ping.stdout, ping.stdout
    assert exchange(h, 0, 2, c["ipv6"], "tcp") == a["ipv6"]
    assert exchange(h, 2, 0, a["ipv6"], "udp") == c["ipv6"]
    nets = h.cli_json("network", "list", node=2)  # learned from etcd
    assert [(n["subnet6"], n["ipv6_mode"]) for n in nets] == [("fd00:10:1:1::/64", "dhcpv6-stateful")]  # type: ignore[union-attr]
