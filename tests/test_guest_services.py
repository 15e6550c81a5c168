"""The agent's services for guests, as pure code: DHCP, DNS, ARP and the frames they answer with,
and the dataplane's traps that hand them their packets."""

import ipaddress
import socket

import dpkt
import pytest
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import ARP, Ether

from dataplane.core import frames
from dataplane.core.packet import Malformed
from dataplane.core.traps import Trap
from flows.layout import Action, DropReason
from tests.dataplanes import TAP1, TAP2, dataplane
from vrouter.model import HostRoute, Network, NetworkError
from vrouter.model import validate_network as validate
from vrouter.services import arp, dhcp, dns

MAC = bytes.fromhex("02000a010003")
NET = validate("7c0c2e5e-0e16-4f43-a6b6-5d1c0c1e9a01", "10.1.1.0/24", "demo-net", host_routes=[HostRoute.parse("10.8.0.0/16 via 10.1.1.1")])
CLIENT = dhcp.Client("port-1", MAC, "10.1.1.3", "vm1")


def bootp(kind, flags=0, ciaddr="0.0.0.0", options=(), chaddr=MAC, params=(1, 3, 6, 12, 15, 28)):
    opts = [("message-type", kind), ("param_req_list", list(params)), *options, "end"]
    return bytes(BOOTP(op=1, xid=0x1234, flags=flags, ciaddr=ciaddr, chaddr=chaddr + bytes(10)) / DHCP(options=opts))


def reply_options(reply):
    return dict(dpkt.dhcp.DHCP(reply.payload).opts)


def test_network_defaults_as_tungsten_fabric_allocates_them():
    assert (NET.gateway, NET.dns_server, NET.prefix_len) == ("10.1.1.1", "10.1.1.2", 24)
    with pytest.raises(NetworkError, match="--gateway 10.2.0.1: not a host address"):
        validate(NET.uuid, "10.1.1.0/24", gateway="10.2.0.1")
    with pytest.raises(NetworkError, match="--subnet"):
        validate(NET.uuid, "10.1.1.1/24")
    with pytest.raises(NetworkError, match="--host-route"):
        HostRoute.parse("10.8.0.0/16")
    with pytest.raises(NetworkError, match="--host-route"):
        HostRoute.parse("10.8.0.0/33 via 10.1.1.1")
    assert str(HostRoute.parse("10.8.0.0/16,10.1.1.1")) == "10.8.0.0/16 via 10.1.1.1"
    assert Network.from_dict(NET.to_dict()) == NET  # a network file or etcd value: routes as values, no text between


def test_discover_offer_request_ack_with_the_agents_options_in_its_order():
    server = dhcp.DhcpServer(lease_time=3600, domain="novalocal")
    kind, offer = server.handle(bootp("discover"), CLIENT, NET, 0)
    assert kind == dhcp.DISCOVER and offer.kind == dhcp.OFFER
    msg = dpkt.dhcp.DHCP(offer.payload)
    assert socket.inet_ntoa(msg.yiaddr.to_bytes(4, "big")) == "10.1.1.3"
    assert [t for t, _ in msg.opts] == [53, 54, 1, 28, 51, 121, 3, 12, 6, 15]  # 121 for the host route; 3 since 121 was not asked for
    o = dict(msg.opts)
    assert o[54] == socket.inet_aton("10.1.1.2") and o[1] == socket.inet_aton("255.255.255.0") and o[28] == socket.inet_aton("10.1.1.255")
    assert o[3] == socket.inet_aton("10.1.1.1") and o[6] == socket.inet_aton("10.1.1.2") and o[12] == b"vm1" and o[15] == b"novalocal"
    assert o[51] == (3600).to_bytes(4, "big")
    assert offer.dst == b"\xff\xff\xff\xff" or offer.dst == socket.inet_aton("10.1.1.3")
    assert server.leases["port-1"].state is dhcp.LeaseState.OFFERED
    kind, ack = server.handle(bootp("request", options=[("requested_addr", "10.1.1.3"), ("server_id", "10.1.1.2")]), CLIENT, NET, 10)
    assert ack.kind == dhcp.ACK and server.leases["port-1"].state is dhcp.LeaseState.BOUND and server.leases["port-1"].expires == 3610


def test_classless_routes_when_asked_replace_the_router_option_and_carry_the_default_route():
    server = dhcp.DhcpServer()
    _, offer = server.handle(bootp("discover", params=(1, 3, 6, 121)), CLIENT, NET, 0)
    o = reply_options(offer)
    assert 3 not in o  # RFC 3442
    # 10.8.0.0/16 via 10.1.1.1, then 0.0.0.0/0 via 10.1.1.1
    assert o[121] == bytes([16, 10, 8, 10, 1, 1, 1, 0, 10, 1, 1, 1])
    assert o[51] == b"\xff\xff\xff\xff"  # the vRouter agent's default lease: infinite


def test_mtu_only_when_configured_and_unicast_when_the_client_can_take_it():
    net = validate(NET.uuid, "10.1.1.0/24", mtu="1450")
    _, offer = dhcp.DhcpServer().handle(bootp("discover"), CLIENT, net, 0)
    assert reply_options(offer)[26] == (1450).to_bytes(2, "big")
    assert (offer.dst, offer.dst_mac) == (socket.inet_aton("10.1.1.3"), MAC)  # broadcast bit clear
    _, offer = dhcp.DhcpServer().handle(bootp("discover", flags=0x8000), CLIENT, net, 0)
    assert (offer.dst, offer.dst_mac) == (b"\xff" * 4, b"\xff" * 6)


def test_request_for_another_address_is_naked_and_another_servers_is_ignored():
    server = dhcp.DhcpServer()
    _, nak = server.handle(bootp("request", options=[("requested_addr", "10.1.1.99")]), CLIENT, NET, 0)
    assert nak.kind == dhcp.NAK and reply_options(nak)[56] == b"cannot assign requested address"
    assert dpkt.dhcp.DHCP(nak.payload).yiaddr == 0 and server.leases["port-1"].state is dhcp.LeaseState.FREE
    assert server.handle(bootp("request", options=[("server_id", "10.9.9.9")]), CLIENT, NET, 0) == (dhcp.REQUEST, None)


def test_renewal_release_and_inform():
    server = dhcp.DhcpServer(lease_time=60)
    server.handle(bootp("request", options=[("requested_addr", "10.1.1.3")]), CLIENT, NET, 0)
    _, ack = server.handle(bootp("request", ciaddr="10.1.1.3"), CLIENT, NET, 30)  # renewing: unicast from its address
    assert ack.kind == dhcp.ACK and server.leases["port-1"].expires == 90
    assert server.handle(bootp("release", ciaddr="10.1.1.3"), CLIENT, NET, 40) == (dhcp.RELEASE, None)
    assert server.leases["port-1"].state is dhcp.LeaseState.FREE
    _, ack = server.handle(bootp("inform", ciaddr="10.1.1.3"), CLIENT, NET, 50)
    assert ack.kind == dhcp.ACK and dpkt.dhcp.DHCP(ack.payload).yiaddr == 0 and 51 not in reply_options(ack)


def test_before_the_network_is_configured_a_short_lease_of_the_address_alone():
    _, offer = dhcp.DhcpServer().handle(bootp("discover"), CLIENT, None, 0)
    o = reply_options(offer)
    assert o[51] == (4).to_bytes(4, "big") and o[1] == b"\xff" * 4 and 3 not in o and 6 not in o and o[54] == bytes(4)


@pytest.mark.parametrize(
    "payload, why",
    [
        (b"\x01" * 10, "shorter"),
        (bootp("discover")[:-1] + b"\x35", "runs past"),  # the end option replaced by a cut option
        (bytes(BOOTP(op=2, chaddr=MAC) / DHCP(options=[("message-type", "offer"), "end"])), "not a DHCP request"),
        (bytes(BOOTP(op=1, chaddr=MAC) / DHCP(options=["end"])), "message type"),
        (bootp("discover", chaddr=bytes(6)), "not the port's"),
    ],
)
def test_malformed_dhcp_is_refused_naming_why(payload, why):
    with pytest.raises(Malformed, match=why):
        dhcp.DhcpServer().handle(payload, CLIENT, NET, 0)


ZONE = dns.Zone("novalocal", (dns.Instance("vm1", "10.1.1.3", "fd00:10:1:1::3"), dns.Instance("vm2", "10.1.1.4")))


def query(name, qtype="A", opcode=0):
    return dns.parse(bytes(DNS(id=7, rd=1, opcode=opcode, qd=DNSQR(qname=name, qtype=qtype))))


@pytest.mark.parametrize("name", ["vm2", "vm2.novalocal", "VM2.NovaLocal."])
def test_instances_answer_by_name(name):
    outcome, resp = dns.answer(query(name), ZONE, False)
    r = dpkt.dns.DNS(resp)
    assert outcome is dns.Outcome.ANSWERED and r.aa and r.id == 7 and [a.rdata for a in r.an] == [socket.inet_aton("10.1.1.4")]


def test_aaaa_ptr_nxdomain_refused_forward_notimp():
    _, resp = dns.answer(query("vm1", "AAAA"), ZONE, False)
    assert [a.rdata for a in dpkt.dns.DNS(resp).an] == [ipaddress.IPv6Address("fd00:10:1:1::3").packed]
    _, resp = dns.answer(query("3.1.1.10.in-addr.arpa", "PTR"), ZONE, False)
    assert dpkt.dns.DNS(resp).an[0].ptrname == "vm1.novalocal"
    outcome, resp = dns.answer(query("nobody.novalocal"), ZONE, False)
    assert outcome is dns.Outcome.NXDOMAIN and dpkt.dns.DNS(resp).rcode == dns.NXDOMAIN
    outcome, resp = dns.answer(query("example.org"), ZONE, False)
    assert outcome is dns.Outcome.REFUSED and dpkt.dns.DNS(resp).rcode == dns.REFUSED
    assert dns.answer(query("example.org"), ZONE, True)[0] is dns.Outcome.FORWARD
    outcome, resp = dns.answer(query("vm1", opcode=2), ZONE, False)
    assert outcome is dns.Outcome.NOTIMP and dpkt.dns.DNS(resp).rcode == dns.NOTIMP


@pytest.mark.parametrize("payload", [b"", b"\x00\x07\x01", bytes(DNS(id=1, qr=1, qd=DNSQR(qname="vm1"))), b"\x00\x07\x01\x00\x00\x01" + b"\xff" * 20])
def test_malformed_dns_is_refused(payload):
    with pytest.raises(Malformed):
        dns.parse(payload)


def arp_request(target, sender="10.1.1.3", op=1):
    frame = Ether(src="02:00:0a:01:00:03", dst="ff:ff:ff:ff:ff:ff") / ARP(op=op, hwsrc="02:00:0a:01:00:03", psrc=sender, pdst=target)
    return frames.parse_arp(bytes(frame))


def test_arp_answers_for_the_gateway_with_the_vrouter_mac_and_ignores_the_rest():
    vm = socket.inet_aton("10.1.1.3")
    gw = socket.inet_aton("10.1.1.1")
    outcome, reply = arp.answer(arp_request("10.1.1.1"), vm, lambda ip: ip == gw)
    r = Ether(reply)
    assert outcome is arp.Outcome.ANSWERED and r[ARP].op == 2 and r[ARP].hwsrc == "00:00:5e:00:01:00" and r[ARP].psrc == "10.1.1.1"
    assert r[ARP].pdst == "10.1.1.3" and r.dst == "02:00:0a:01:00:03"
    assert arp.answer(arp_request("10.1.1.77"), vm, lambda ip: ip == gw)[0] is arp.Outcome.IGNORED
    assert arp.answer(arp_request("10.1.1.3"), vm, lambda ip: True)[0] is arp.Outcome.IGNORED  # its own address
    assert arp.answer(arp_request("10.1.1.1", sender="10.1.1.4"), vm, lambda ip: True)[0] is arp.Outcome.FORGED
    assert arp.answer(arp_request("10.1.1.1", sender="0.0.0.0"), vm, lambda ip: ip == gw)[0] is arp.Outcome.ANSWERED  # a probe
    assert arp.answer(arp_request("10.1.1.1", op=2), vm, lambda ip: True)[0] is arp.Outcome.IGNORED


@pytest.mark.parametrize("frame", [b"\x00" * 41, bytes(Ether(type=0x0806) / ARP(hwlen=8)), bytes(Ether(type=0x0806) / ARP(op=9))])
def test_malformed_arp_is_refused(frame):
    with pytest.raises(Malformed):
        frames.parse_arp(frame)


def test_frames_have_their_checksums():
    f = Ether(frames.ipv4_udp_frame(MAC, socket.inet_aton("10.1.1.2"), socket.inet_aton("10.1.1.3"), 53, 4000, b"hello"))
    assert f.src == "00:00:5e:00:01:00" and f[IP].ttl == 64
    assert f[IP].chksum == IP(bytes(IP(src="10.1.1.2", dst="10.1.1.3", ttl=64, id=0, flags=0) / UDP(sport=53, dport=4000) / b"hello")).chksum
    rebuilt = Ether(bytes(f))
    del rebuilt[UDP].chksum
    assert Ether(bytes(rebuilt))[UDP].chksum == f[UDP].chksum
    echo = bytes(IP(src="10.1.1.3", dst="10.1.1.1") / ICMP(type=8, id=5, seq=2) / b"ping")
    reply = Ether(frames.icmp_echo_reply_frame(MAC, echo, 20))
    assert reply[ICMP].type == 0 and reply[ICMP].id == 5 and reply[IP].src == "10.1.1.1" and reply[IP].dst == "10.1.1.3"
    del reply[ICMP].chksum
    assert Ether(bytes(reply))[ICMP].chksum == Ether(frames.icmp_echo_reply_frame(MAC, echo, 20))[ICMP].chksum


def test_the_dataplane_traps_dhcp_dns_and_pings_to_the_gateway_as_flows_to_the_agent():
    d = dataplane()
    d.set_guest_addresses(1, (socket.inet_aton("10.1.1.1"), socket.inet_aton("10.1.1.2")))
    seen = []
    d.path.on_trap = lambda trap, pkt, vif, ihl: seen.append((trap, vif.index))
    discover = bytes(IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67) / bootp("discover"))
    v = d.process(discover, TAP1)
    assert not v.accept and v.reason == DropReason.NONE  # taken from the kernel, not dropped
    query_ = bytes(IP(src="10.1.1.4", dst="10.1.1.2") / UDP(sport=5353, dport=53) / DNS(qd=DNSQR(qname="vm1")))
    d.process(query_, TAP2)
    d.process(bytes(IP(src="10.1.1.3", dst="10.1.1.1") / ICMP(type=8, id=9)), TAP1)
    d.process(discover, TAP1)  # the second hits the flow
    assert seen == [(Trap.DHCP, 3), (Trap.DNS, 4), (Trap.ICMP, 3), (Trap.DHCP, 3)]
    entries = d.table.dump()
    assert len(entries) == 3 and all(e.action == Action.FORWARD and e.dvrf == 0 and not e.flags & 0x1000 for e in entries)
    assert d.vifs[3].flows == 4 and not d.drops  # counted like Drop entries, no drop
    # a ping elsewhere, or from another address, is not trapped
    assert d.process(bytes(IP(src="10.1.1.3", dst="10.1.1.9") / ICMP(type=8)), TAP1).reason == DropReason.NO_ROUTE
    assert d.process(bytes(IP(src="10.9.9.9", dst="10.1.1.1") / ICMP(type=8)), TAP1).reason == DropReason.INVALID_SOURCE
    # the network's addresses change: the VRF's trap and Drop entries go
    assert d.set_guest_addresses(1, None) == 4
    assert d.process(bytes(IP(src="10.1.1.3", dst="10.1.1.1") / ICMP(type=8, id=9)), TAP1).reason == DropReason.NO_ROUTE
