"""What the property-based tests (tests/test_fuzz_*.py) share: their settings, the ways they break
a valid input (bytes changed, cut, added), and a dual-stack node in memory with the agent's services
for guests wired to its dataplane, as the agent wires them.  Plain functions and strategies: a test
module imports them from here, never from another test module."""

from __future__ import annotations

import ipaddress
import itertools
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP

from dataplane.core.dataplane import Dataplane, Limits
from dataplane.core.overlay import Route, label_of
from dataplane.core.services import LinkLocalService
from dataplane.core.vif import Vif
from flows.table import FlowTable
from vrouter.model import Network, Port, validate_network
from vrouter.services import dns
from vrouter.services.guests import GuestServices, Settings


def fuzz_settings(examples: int) -> settings:
    """``examples`` examples, no deadline (a shared 2-core machine), no complaint about slow data."""
    return settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- breaking a valid input -----------------------------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn, data: bytes, keep: int = 0) -> bytes:
    """``data`` with a few bytes changed (never its first ``keep``), maybe cut short, maybe with
    bytes added at its end."""
    raw = bytearray(data)
    if len(raw) > keep:
        for _ in range(draw(st.integers(0, 4))):
            raw[draw(st.integers(keep, len(raw) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        raw = raw[: draw(st.integers(keep, len(raw)))]
    return bytes(raw) + draw(st.binary(max_size=8))


def truncations(data: bytes, start: int = 0) -> Iterator[bytes]:
    """Every strict prefix of ``data`` from ``start`` bytes on."""
    for n in range(start, len(data)):
        yield data[:n]


def json_values(leaves: st.SearchStrategy | None = None) -> st.SearchStrategy:
    """Any JSON value (as ``json.loads`` gives them), a few levels deep."""
    base = leaves or (
        st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12)
    )
    return st.recursive(base, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


def udp_packet(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    """A UDP datagram in IPv4 or IPv6 (as the addresses are), its lengths right and its checksums
    0: the engine reads no checksum, and scapy per packet is too slow for the truncation tests."""
    a, b = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    if a.version == 6:
        return struct.pack("!IHBB", 6 << 28, len(udp), 17, 64) + a.packed + b.packed + udp
    return struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0) + a.packed + b.packed + udp


DEEP_JSON = "[" * 5000 + "]" * 5000  # valid JSON that Python's decoder cannot nest (RecursionError)


# -- a node in memory ------------------------------------------------------------------------------

VN = "7c0c2e5e-0e16-4f43-a6b6-5d1c0c1e9a01"
TAP1, TAP2 = 11, 12  # the VMs' taps' ifindexes
VHOST = 2  # vhost0's ifindex: the fabric's packets come in there
VHOST_IP, PEER_IP = "10.10.0.2", "10.10.0.3"  # this node's vhost0, and another node's
MAC1, MAC2 = "02:00:0a:01:00:03", "02:00:0a:01:00:04"
VM1, VM2, REMOTE = "10.1.1.3", "10.1.1.4", "10.1.1.9"  # REMOTE: a VM of the network on the other node
VM1_6, VM2_6 = "fd00:10:1:1::3", "fd00:10:1:1::4"
GATEWAY, SERVICE, GATEWAY6, SERVICE6 = "10.1.1.1", "10.1.1.2", "fd00:10:1:1::1", "fd00:10:1:1::2"
LL1 = "fe80::aff:fe01:3"  # vm1's link-local address
METADATA = LinkLocalService("metadata", "169.254.169.254", 80, ("10.10.0.1",), 8775)
NTP = LinkLocalService("ntp", "169.254.169.123", 123, ("10.10.0.1", "fd00:10::1"), 123)
# where a VM's packets may be going: the agent's services, link-local services, the other VM (here
# and on the other node), nowhere
DESTINATIONS4 = [GATEWAY, SERVICE, "255.255.255.255", "169.254.169.254", "169.254.169.123", VM2, REMOTE, "10.9.9.9", "224.0.0.1"]
DESTINATIONS6 = [GATEWAY6, SERVICE6, "ff02::1:2", "fe80::5e00:100", "fe80::a9fe:a9fe", "fe80::a9fe:a97b", VM2_6, "fd00:99::1", "ff02::1"]


def network() -> Network:
    return validate_network(VN, "10.1.1.0/24", "n", subnet6="fd00:10:1:1::/64", ipv6_mode="dhcpv6-stateful")


class Ports:
    """Source ports for link-local NAT to the fabric, without sockets."""

    def __init__(self) -> None:
        self._next = itertools.count(40000)

    def reserve(self, proto: int, v6: bool = False) -> tuple[int, object]:
        port = next(self._next)
        return port, port

    def release(self, handle: object) -> None:
        pass


class Directory:
    """The agent's answers about ports and networks, for vm1 (vif 3) and vm2 (vif 4)."""

    def __init__(self, net: Network | None) -> None:
        self.net = net
        self.ports = {
            3: Port(
                "11111111-1111-4111-8111-111111111111",
                "21111111-1111-4111-8111-111111111111",
                VN,
                "31111111-1111-4111-8111-111111111111",
                VM1,
                MAC1,
                "tapaaaaaaaa-aa",
                "vm1",
                VM1_6,
                3,
                1,
            ),
            4: Port(
                "11111111-1111-4111-8111-111111111112",
                "21111111-1111-4111-8111-111111111112",
                VN,
                "31111111-1111-4111-8111-111111111111",
                VM2,
                MAC2,
                "tapbbbbbbbb-bb",
                "vm2",
                VM2_6,
                4,
                1,
            ),
        }
        self.zone = dns.Zone("novalocal", (dns.Instance("vm1", VM1, VM1_6), dns.Instance("vm2", VM2, VM2_6)))

    def port_of(self, vif_index: int) -> Port | None:
        return self.ports.get(vif_index)

    def network_of(self, vn_uuid: str) -> Network | None:
        return self.net

    def zone_of(self, vn_uuid: str) -> dns.Zone:
        return self.zone


@dataclass
class Node:
    """A dual-stack node: its dataplane, the agent's services on it, and the frames they sent
    (interface name, frame)."""

    dataplane: Dataplane
    services: GuestServices
    sent: list[tuple[str, bytes]] = field(default_factory=list)

    def drops(self) -> int:
        return sum(self.dataplane.drops.values())

    def well_behaved(self) -> None:
        """vm2's metadata SYN is still NATed to the proxy and its packet to vm1 forwarded, whatever
        happened before."""
        d = self.dataplane
        v = d.process(bytes(IP(src=VM2, dst="169.254.169.254") / TCP(sport=50000, dport=80, flags="S")), TAP2)
        assert v.accept and v.payload is not None and IP(v.payload).src == "169.254.0.4"
        assert d.process(bytes(IP(src=VM2, dst=VM1) / UDP(sport=5, dport=6)), TAP2).accept


def node(configured: bool = True, dns_forwarders: tuple[str, ...] = ()) -> Node:
    """vm1 (vif 3, TAP1) and vm2 (vif 4, TAP2) in VRF 1 of a dual-stack network (not yet
    configured unless ``configured``), the metadata and NTP services, a route to REMOTE on the
    node PEER_IP, the agent's services answering into ``sent``."""
    d = Dataplane(FlowTable.in_memory(1024), VHOST_IP, 8097, limits=Limits(max_vm_flows=200), ports=Ports())
    d.set_host_ifindex(VHOST)
    d.flow_setup.vhost_ip6 = "fd00:10::2"
    d.add_vif(Vif(3, "tapaaaaaaaa-aa", TAP1, VM1, MAC1, vrf=1, ip6=VM1_6))
    d.add_vif(Vif(4, "tapbbbbbbbb-bb", TAP2, VM2, MAC2, vrf=1, ip6=VM2_6))
    d.set_services([METADATA, NTP])
    d.set_routes([Route(1, REMOTE, "b", PEER_IP, label_of(3), "02:00:0a:01:00:09")])
    net = network() if configured else None
    if net is not None:
        d.set_guest_addresses(1, tuple(ipaddress.ip_address(a).packed for a in (GATEWAY, SERVICE, GATEWAY6, SERVICE6)))
    sent: list[tuple[str, bytes]] = []

    def send(ifname: str, frame: bytes) -> bool:
        sent.append((ifname, frame))
        return True

    svc = GuestServices(d, Directory(net), Settings(dns_forwarders=dns_forwarders), send)
    return Node(d, svc, sent)
