"""Dual stack as pure code, without root: the networks' IPv6 subnets and address modes, IPAM's
addresses, the lab's plan, the engine's walk of extension headers and its IPv6 traps, and the
agent's IPv6 services (neighbour discovery, router advertisements, DHCPv6, echo) as they answer
frames, on a dataplane in memory."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.dhcp6 import DHCP6_Reply, DHCP6_Solicit, DHCP6OptClientId, DHCP6OptIA_NA, DHCP6OptIAAddress, DHCP6OptRapidCommit
from scapy.layers.inet import UDP
from scapy.layers.inet6 import (
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6ND_RS,
    ICMPv6NDOptPrefixInfo,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import Ether

from dataplane.core.dataplane import Dataplane
from dataplane.core.packet import MAX_EXT, Malformed, parse6
from dataplane.core.traps import Trap
from dataplane.core.vif import Vif
from flows.layout import DropReason
from flows.table import FlowTable
from topology.model import Topology
from vrouter.model import Network, NetworkError, Port, port_address6, validate_network
from vrouter.services import dns, ipv6
from vrouter.services.guests import GuestServices, Settings

VN = "7c0c2e5e-0e16-4f43-a6b6-5d1c0c1e9a01"
MAC1, MAC2 = "02:00:0a:01:00:03", "02:00:0a:01:00:04"
A1, A2 = "fd00:10:1:1::3", "fd00:10:1:1::4"
LL1 = "fe80::aff:fe01:3"


def net(mode: str = "dhcpv6-stateful") -> Network:
    return validate_network(VN, "10.1.1.0/24", "n", subnet6="fd00:10:1:1::/64", ipv6_mode=mode)


# -- the network's IPv6 subnet --------------------------------------------------------------------


def test_ipv6_subnet_defaults_validation_and_round_trip():
    n = net()
    assert (n.subnet6, n.gateway6, n.dns_server6, n.ipv6_mode) == ("fd00:10:1:1::/64", "fd00:10:1:1::1", "fd00:10:1:1::2", "dhcpv6-stateful")
    assert Network.from_dict(n.to_dict()) == n
    v4only = validate_network(VN, "10.1.1.0/24")
    assert (v4only.subnet6, v4only.ipv6_mode) == ("", "") and Network.from_dict(v4only.to_dict()) == v4only
    assert validate_network(VN, "10.1.1.0/24", subnet6="fd00:1::/64").ipv6_mode == "none"
    for kwargs, message in [
        ({"ipv6_mode": "slaac"}, "--ipv6-mode slaac: needs --subnet6"),
        ({"subnet6": "fd00:1::/80", "ipv6_mode": "slaac"}, "needs a /64"),
        ({"subnet6": "fd00:1::/64", "ipv6_mode": "stateful"}, "--ipv6-mode 'stateful'"),
        ({"subnet6": "fd00:1::/64", "gateway6": "fd00:2::1"}, "--gateway6 fd00:2::1: not a host address"),
        ({"subnet6": "fd00:1::/64", "dns_server6": "fd00:1::1"}, "the same as the gateway"),
        ({"subnet6": "fe80::/64"}, "not a usable subnet"),
        ({"subnet6": "fd00:1::1/64"}, "--subnet6"),
    ]:
        with pytest.raises(NetworkError, match=message.replace("(", r"\(")):
            validate_network(VN, "10.1.1.0/24", **kwargs)  # type: ignore[arg-type]


def test_a_ports_ipv6_address_must_be_one_a_vm_can_have():
    from vrouter.model import PortError, validate_port

    base = {"uuid": VN, "instance_uuid": VN, "vn_uuid": VN, "vm_project_uuid": VN, "ip_address": "10.1.1.3", "mac": MAC1}
    assert validate_port(dict(base, ipv6_address="FD00:10:1:1::3")).ipv6_address == A1
    for bad in ("fe80::3", "ff02::1", "::", "::1", "::ffff:10.1.1.3"):
        with pytest.raises(PortError, match="not usable for a VM port"):
            validate_port(dict(base, ipv6_address=bad))


def test_instances_with_bad_ipv6_fields_are_refused_when_read_not_when_served():
    import json

    from fabric.nova_metadata import InstancesError, parse_instances

    good = {"uuid": VN, "ip": "10.1.1.3", "ip6": A1, "ipv6_mode": "slaac", "ipv6_prefix": "fd00:10:1:1::/64"}
    assert parse_instances(json.dumps([good]))[VN]["ip6"] == A1
    for key, value in (("ip6", "10.1.1.4"), ("ipv6_mode", "dhcpv6"), ("ipv6_prefix", "fd00::/200"), ("ipv6_gateway", "x")):
        with pytest.raises(InstancesError, match=key):
            parse_instances(json.dumps([dict(good, **{key: value})]))


def test_ipam_gives_eui64_where_the_guest_autoconfigures_else_the_host_number():
    assert port_address6(net("slaac"), 3, MAC1) == "fd00:10:1:1:0:aff:fe01:3"  # what the guest's kernel makes
    assert port_address6(net("dhcpv6-stateless"), 3, MAC1) == "fd00:10:1:1:0:aff:fe01:3"
    assert port_address6(net("dhcpv6-stateful"), 3, MAC1) == A1
    assert port_address6(net("none"), 3, MAC1) == A1
    assert port_address6(validate_network(VN, "10.1.1.0/24"), 3, MAC1) == ""


def test_the_labs_networks_take_the_modes_in_order_and_the_instances_carry_them():
    topo = Topology.plan("t", 4, "/tmp/x", networks=3, ipv6=("slaac", "dhcpv6-stateful"))
    assert [n.ipv6_mode for n in topo.networks] == ["slaac", "dhcpv6-stateful", "dhcpv6-stateful"]
    vm1, vm2 = topo.vms[0], topo.vms[1]
    assert vm1.ipv6 == "fd00:10:1:1:0:aff:fe01:3" and vm2.ipv6 == "fd00:10:1:2::3"
    rec = topo.instances()["instances"][1]
    assert (rec["ip6"], rec["ipv6_mode"], rec["ipv6_prefix"], rec["ipv6_gateway"]) == (vm2.ipv6, "dhcpv6-stateful", "fd00:10:1:2::/64",
                                                                                          "fd00:10:1:2::1")  # fmt: skip
    assert topo.layout()["networks"][0]["ipv6_mode"] == "slaac"
    with pytest.raises(ValueError, match="--ipv6 auto"):
        Topology.plan("t", 1, "/tmp/x", ipv6=("auto",))


# -- the engine: extension headers and traps -----------------------------------------------------

UDP6 = UDP(sport=4000, dport=53)


def raw6(*ext: object, payload: object = UDP6) -> bytes:
    p = IPv6(src=A1, dst=A2)
    for e in ext:
        p = p / e
    return bytes(p / payload)


def test_extension_headers_are_walked_to_the_transport_header():
    plain = parse6(raw6())
    walked = parse6(raw6(IPv6ExtHdrHopByHop(), IPv6ExtHdrDestOpt(), IPv6ExtHdrRouting(segleft=0)))
    assert (plain.ihl, plain.proto, plain.sport, plain.dport) == (40, 17, 4000, 53)
    assert (walked.ihl, walked.proto, walked.sport, walked.dport) == (64, 17, 4000, 53)
    echo = parse6(raw6(IPv6ExtHdrDestOpt(), payload=ICMPv6EchoRequest(id=77)))
    assert (echo.proto, echo.sport, echo.ihl) == (58, 77, 48)
    for ext, why in [
        ((IPv6ExtHdrFragment(m=1),), "fragment"),
        ((IPv6ExtHdrRouting(addresses=["fd00::9"], segleft=1),), "segments left"),
        ((IPv6ExtHdrDestOpt(), IPv6ExtHdrHopByHop()), "not first"),
        ((IPv6ExtHdrDestOpt(),) * (MAX_EXT + 1), "more than"),
    ]:
        with pytest.raises(Malformed, match=why):
            parse6(raw6(*ext))
    longer = bytes(IPv6(src=A1, dst=A2, nh=60, plen=8)) + bytes([17, 3]) + bytes(6)  # says 32 bytes, has 8
    with pytest.raises(Malformed, match="truncated"):
        parse6(longer)


@given(st.binary(min_size=40, max_size=120), st.lists(st.sampled_from([0, 43, 44, 60, 6, 17, 58, 59]), max_size=6))
def test_the_walk_never_raises_but_malformed(tail: bytes, chain: list[int]):
    head = bytearray(bytes(IPv6(src=A1, dst=A2, plen=len(tail), nh=chain[0] if chain else 59)))
    body = bytearray(tail)
    for i, nh in enumerate(chain[1:]):  # next-header fields where headers would start
        if 8 * i < len(body):
            body[8 * i] = nh
    try:
        p = parse6(bytes(head + body))
    except Malformed:
        return
    assert 40 <= p.ihl <= p.length <= 40 + len(tail)


def dual_dataplane() -> Dataplane:
    d = Dataplane(FlowTable.in_memory(1024), "10.10.0.2")
    d.add_vif(Vif(3, "tapaaaaaaaa-aa", 11, "10.1.1.3", MAC1, vrf=1, ip6=A1))
    d.add_vif(Vif(4, "tapbbbbbbbb-bb", 12, "10.1.1.4", MAC2, vrf=1, ip6=A2))
    n = net()
    d.set_guest_addresses(1, tuple(ipaddress.ip_address(a).packed for a in (n.gateway, n.dns_server, n.gateway6, n.dns_server6)))
    return d


def test_the_engine_traps_ipv6_services_and_forwards_vm_to_vm():
    d = dual_dataplane()
    seen: list[Trap] = []
    d.path.on_trap = lambda trap, pkt, vif, ihl: seen.append(trap)
    for pkt in [
        IPv6(src=LL1, dst="ff02::1:2") / UDP(sport=546, dport=547) / DHCP6_Solicit(),
        IPv6(src=A1, dst="fd00:10:1:1::2") / UDP(sport=5353, dport=53),
        IPv6(src=A1, dst="fd00:10:1:1::1") / ICMPv6EchoRequest(),
        IPv6(src=LL1, dst="fe80::5e00:100") / ICMPv6EchoRequest(),
    ]:
        assert not d.process(bytes(pkt), 11).accept
    assert seen == [Trap.DHCP6, Trap.DNS, Trap.ICMP, Trap.ICMP]
    assert d.process(bytes(IPv6(src=A1, dst=A2) / ICMPv6EchoRequest(id=9)), 11).accept
    assert d.process(bytes(IPv6(src=A2, dst=A1) / ICMPv6EchoReply(id=9)), 12).accept  # the reply hits the reverse entry
    assert d.table.active == 1 * 4 + 2  # four trap entries, one pair
    forged = d.process(bytes(IPv6(src="fd00:10:1:1::99", dst=A2) / UDP(sport=1, dport=2)), 11)
    assert forged.reason == DropReason.INVALID_SOURCE
    # a link-local source only to a link-local or multicast destination, never to another VM
    assert d.process(bytes(IPv6(src=LL1, dst=A2) / UDP(sport=1, dport=2)), 11).reason == DropReason.INVALID_SOURCE
    assert d.process(bytes(IPv6(src="fe80::5e00:100", dst=A2) / UDP(sport=1, dport=2)), 11).reason == DropReason.INVALID_SOURCE


# -- the agent's IPv6 services ----------------------------------------------------------------------


class _Directory:
    def __init__(self, network: Network) -> None:
        self.net = network
        self.ports = {3: Port("11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222", VN,
                              "33333333-3333-4333-8333-333333333333", "10.1.1.3", MAC1, "tapaaaaaaaa-aa", "vm1", A1, 3, 1)}  # fmt: skip

    def port_of(self, vif_index: int) -> Port | None:
        return self.ports.get(vif_index)

    def network_of(self, vn_uuid: str) -> Network | None:
        return self.net

    def zone_of(self, vn_uuid: str) -> dns.Zone:
        return dns.Zone("novalocal", ())


def services(mode: str = "dhcpv6-stateful") -> tuple[GuestServices, list[bytes]]:
    sent: list[bytes] = []
    svc = GuestServices(dual_dataplane(), _Directory(net(mode)), Settings(), lambda ifname, frame: sent.append(frame) is None)
    return svc, sent


def ns_frame(target: str, src: str = LL1, hlim: int = 255) -> bytes:
    return bytes(Ether(src=MAC1, dst="33:33:ff:00:00:01") / IPv6(src=src, dst="ff02::1:ff00:1", hlim=hlim) / ICMPv6ND_NS(tgt=target)
                 / ICMPv6NDOptSrcLLAddr(lladdr=MAC1))  # fmt: skip


def test_neighbour_solicitations_answered_for_the_gateway_service_and_other_vms_only():
    svc, sent = services()
    for target in ("fd00:10:1:1::1", "fd00:10:1:1::2", A2):
        svc.on_frame("tapaaaaaaaa-aa", ns_frame(target))
        na = Ether(sent.pop())
        assert na[ICMPv6ND_NA].tgt == target and na[ICMPv6ND_NA].R == 1 and na[ICMPv6ND_NA].S == 1 and na.src == "00:00:5e:00:01:00"
    for target in (A1, "fd00:10:1:1::77", "fe80::5e00:100"):  # its own, nobody's, a link-local the kernel answers
        svc.on_frame("tapaaaaaaaa-aa", ns_frame(target))
    assert sent == [] and svc.stats.neighbor_solicitations == 6 and svc.stats.neighbor_advertisements == 3


def test_a_flood_of_solicitations_is_answered_at_a_bounded_rate_and_the_rest_counted():
    svc, sent = services()
    clock = [100.0]
    svc.v6.clock = lambda: clock[0]
    for _ in range(ipv6.ND_BURST + 50):
        svc.on_frame("tapaaaaaaaa-aa", ns_frame(A2))
    assert len(sent) == ipv6.ND_BURST and svc.dataplane.drops[DropReason.ND_RATE] == 50
    clock[0] += 1.0  # a second later, ND_RATE more
    for _ in range(int(ipv6.ND_RATE) + 10):
        svc.on_frame("tapaaaaaaaa-aa", ns_frame(A2))
    assert len(sent) == ipv6.ND_BURST + int(ipv6.ND_RATE)


def test_forged_and_malformed_neighbour_discovery_is_dropped_and_counted():
    svc, sent = services()
    na = Ether(src=MAC1, dst="33:33:00:00:00:01") / IPv6(src=LL1, dst="ff02::1", hlim=255)
    svc.on_frame("tapaaaaaaaa-aa", bytes(na / ICMPv6ND_NA(tgt="fd00:10:1:1::1", O=1)))  # claims the gateway
    svc.on_frame("tapaaaaaaaa-aa", bytes(na / ICMPv6ND_NA(tgt=A2, O=1)))  # claims vm2
    svc.on_frame("tapaaaaaaaa-aa", bytes(na / ICMPv6ND_RA()))  # a router of its own
    svc.on_frame("tapaaaaaaaa-aa", bytes(na / ICMPv6ND_NA(tgt=A1)))  # its own address: fine
    svc.on_frame("tapaaaaaaaa-aa", ns_frame(A2, hlim=64))  # not from the link
    assert sent == [] and svc.stats.nd_forged == 3
    assert svc.dataplane.drops[DropReason.INVALID_SOURCE] == 3 and svc.dataplane.drops[DropReason.INVALID_ND] == 1


@pytest.mark.parametrize(
    ("mode", "m", "o", "a"), [("none", 0, 0, 0), ("slaac", 0, 0, 1), ("dhcpv6-stateful", 1, 1, 0), ("dhcpv6-stateless", 0, 1, 1)]
)
def test_a_solicitation_gets_the_advertisement_of_the_networks_mode(mode: str, m: int, o: int, a: int):
    svc, sent = services(mode)
    svc.dataplane.vifs[3].ifindex = 11
    svc.on_frame("tapaaaaaaaa-aa", bytes(Ether(src=MAC1) / IPv6(src=LL1, dst="ff02::2", hlim=255) / ICMPv6ND_RS()))
    ra = Ether(sent.pop())
    assert (ra[ICMPv6ND_RA].M, ra[ICMPv6ND_RA].O, ra[ICMPv6NDOptPrefixInfo].A) == (m, o, a)
    assert ra[ICMPv6NDOptPrefixInfo].prefix == "fd00:10:1:1::" and ra[IPv6].src == "fe80::5e00:100"


def test_dhcpv6_through_the_trap_answers_from_the_routers_link_local_address():
    svc, sent = services()
    solicit = (IPv6(src=LL1, dst="ff02::1:2") / UDP(sport=546, dport=547)
               / DHCP6_Solicit(trid=5) / DHCP6OptClientId(duid=b"\x00\x03\x00\x01" + bytes.fromhex(MAC1.replace(":", "")))
               / DHCP6OptRapidCommit() / DHCP6OptIA_NA(iaid=7))  # fmt: skip
    svc.dataplane.process(bytes(solicit), 11)
    reply = Ether(sent.pop())
    assert reply[IPv6].src == "fe80::5e00:100" and reply[IPv6].dst == LL1 and reply[UDP].dport == 546
    assert DHCP6_Reply in reply and reply[DHCP6OptIAAddress].addr == A1 and reply[DHCP6_Reply].trid == 5
    assert svc.stats.dhcp6_solicit == 1 and svc.stats.dhcp6_reply == 1
    svc.dataplane.process(bytes(IPv6(src=LL1, dst="ff02::1:2") / UDP(sport=546, dport=547) / b"\x01"), 11)
    assert svc.dataplane.drops[DropReason.INVALID_DHCP6] == 1
    slaac, sent2 = services("slaac")  # no DHCPv6 in a SLAAC network: nothing answered
    slaac.dataplane.process(bytes(solicit), 11)
    assert sent2 == []


def test_echo_to_the_ipv6_gateway_is_answered():
    svc, sent = services()
    svc.dataplane.process(bytes(IPv6(src=A1, dst="fd00:10:1:1::1") / ICMPv6EchoRequest(id=3, seq=4, data=b"x" * 20)), 11)
    reply = Ether(sent.pop())
    assert reply[IPv6].src == "fd00:10:1:1::1" and reply[ICMPv6EchoReply].id == 3 and reply[ICMPv6EchoReply].seq == 4


# -- the tools -------------------------------------------------------------------------------------


def test_vif_and_rt_show_the_ipv6_addresses():
    from vrouter.messages.control import RouteRecord, RouteTable, VifRecord
    from vrouter.tools.overlay import format_rt
    from vrouter.tools.vif import format_vifs

    vif = VifRecord(3, "tapaaaaaaaa-aa", "Virtual", 11, MAC1, "10.1.1.3", 1, "169.254.0.3", "p", 0, 0, 0, 0, 0, 0, ip6=A1)
    assert "            IP6addr:%s" % A1 in format_vifs([vif]).splitlines()
    table = RouteTable(1, "n", VN, [RouteRecord("10.1.1.3", 32, 3, 19, "LP"), RouteRecord(A1, 128, 3, 19, "LP")])
    v4, v6 = format_rt(table), format_rt(table, "inet6")
    assert "vRouter inet4 routing table" in v4 and "10.1.1.3/32" in v4 and A1 not in v4
    assert "vRouter inet6 routing table" in v6 and "%s/128" % A1 in v6 and "10.1.1.3" not in v6
