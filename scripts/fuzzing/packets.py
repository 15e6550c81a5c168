"""scapy's ``fuzz()`` on every protocol a VM can send to its compute node: one Ethernet frame a call.

Each generator takes the lab's ``Targets`` and a ``random.Random`` and returns a whole frame as
bytes, for eth0 of the attacker VM.  ``fuzz()`` randomises every field of a layer that was not set
(and leaves lengths and checksums computed, so the layer below parses it); the generators set the
addresses (always the lab's: ``Targets``) and, for about half of the packets, the message type, so
that the node's handlers for each kind see fuzzed bodies and not only unknown types.  ``mutate``
then flips or cuts bytes of some frames, for what ``fuzz()`` keeps consistent (lengths, checksums).
"""

from __future__ import annotations

import random
import socket
import struct
from collections.abc import Callable
from typing import Any

from scapy.contrib.mpls import MPLS
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.dhcp6 import (
    DUID_LL,
    DUID_LLT,
    DHCP6_Advertise,
    DHCP6_Confirm,
    DHCP6_Decline,
    DHCP6_InfoRequest,
    DHCP6_Rebind,
    DHCP6_RelayForward,
    DHCP6_Release,
    DHCP6_Renew,
    DHCP6_Reply,
    DHCP6_Request,
    DHCP6_Solicit,
    DHCP6OptClientFQDN,
    DHCP6OptClientId,
    DHCP6OptElapsedTime,
    DHCP6OptIA_NA,
    DHCP6OptIA_PD,
    DHCP6OptIA_TA,
    DHCP6OptIAAddress,
    DHCP6OptOptReq,
    DHCP6OptRapidCommit,
    DHCP6OptReconfAccept,
    DHCP6OptRelayMsg,
    DHCP6OptServerId,
    DHCP6OptUserClass,
    DHCP6OptVendorClass,
)
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import (
    ICMP,
    IP,
    TCP,
    UDP,
    IPerror,
    IPOption_LSRR,
    IPOption_NOP,
    IPOption_Router_Alert,
    IPOption_RR,
    IPOption_Security,
    IPOption_Timestamp,
    TCPerror,
    UDPerror,
)
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6MLDone,
    ICMPv6MLQuery,
    ICMPv6MLQuery2,
    ICMPv6MLReport,
    ICMPv6MLReport2,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6ND_Redirect,
    ICMPv6ND_RS,
    ICMPv6NDOptDNSSL,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptMTU,
    ICMPv6NDOptPrefixInfo,
    ICMPv6NDOptRDNSS,
    ICMPv6NDOptRedirectedHdr,
    ICMPv6NDOptRouteInfo,
    ICMPv6NDOptSrcLLAddr,
    ICMPv6PacketTooBig,
    ICMPv6ParamProblem,
    ICMPv6TimeExceeded,
    IPerror6,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Packet, Raw, fuzz
from scapy.utils6 import in6_getnsma, in6_getnsmac, in6_mactoifaceid

from fuzzing.targets import METADATA_IP, METADATA_IP6, ROUTER_MAC, TUNNEL_PORT, Targets

Generator = Callable[[Targets, random.Random], bytes]
MAX_FRAME = 1514  # eth0's MTU and the Ethernet header
ROUTER_LL6 = "fe80::" + in6_mactoifaceid(ROUTER_MAC).lower()  # the gateway's link-local address (EUI-64 of the vRouter's MAC)


def rmac(rnd: random.Random) -> str:
    return ":".join("%02x" % b for b in rnd.randbytes(6))


def rbytes(rnd: random.Random, most: int) -> bytes:
    return rnd.randbytes(rnd.randrange(most + 1))


def own_ll6(t: Targets) -> str:
    return "fe80::" + in6_mactoifaceid(t.mac).lower()


def solicited(addr: str) -> str:
    return socket.inet_ntop(socket.AF_INET6, in6_getnsma(socket.inet_pton(socket.AF_INET6, addr)))


def eth(t: Targets, rnd: random.Random, dst: str = ROUTER_MAC) -> Packet:
    """The Ethernet header: to the router (or ``dst``), from the VM's own MAC, now and then another."""
    return Ether(dst=dst, src=t.mac if rnd.random() < 0.9 else rmac(rnd))


def eth6(t: Targets, rnd: random.Random, dst: str) -> Packet:
    """To an IPv6 destination: its multicast MAC (33:33:...) for a group, else the router's."""
    mac = in6_getnsmac(socket.inet_pton(socket.AF_INET6, dst)) if dst.startswith("ff") else ROUTER_MAC
    return eth(t, rnd, mac)


def src4(t: Targets, rnd: random.Random) -> str:
    """The VM's own address, or now and then a forged one (another VM's, the gateway's, none, ...)."""
    if rnd.random() < 0.85:
        return t.ip
    return rnd.choice(t.others + [t.gateway, "0.0.0.0", METADATA_IP, t.subnet_prefix + str(rnd.randrange(1, 255)), t.vhost0])


def src6(t: Targets, rnd: random.Random) -> str:
    if rnd.random() < 0.85:
        return rnd.choice([t.ip6, own_ll6(t)])
    return rnd.choice(t.others6 + [t.gateway6, "::", ROUTER_LL6, METADATA_IP6])


def ip4(t: Targets, rnd: random.Random, dst: str | None = None) -> Packet:
    return IP(src=src4(t, rnd), dst=dst or rnd.choice(t.ipv4_destinations()))


def ip6(t: Targets, rnd: random.Random, dst: str | None = None, hlim: int | None = None) -> Packet:
    d = dst or rnd.choice(t.ipv6_destinations())
    p = IPv6(src=src6(t, rnd), dst=d) if hlim is None else IPv6(src=src6(t, rnd), dst=d, hlim=hlim)
    return eth6(t, rnd, d) / p


def typed(cls: type[Packet], rnd: random.Random, keep: float = 0.5, **fields: Any) -> Packet:
    """``fuzz(cls(**fields))``, and with probability ``keep`` its message type and code kept (so that
    its own handler parses the fuzzed body), else random."""
    if rnd.random() < keep:
        proto = cls()
        for name in ("type", "code", "msgtype"):
            if name not in fields and any(f.name == name for f in proto.fields_desc):
                fields[name] = proto.getfieldval(name)
    return fuzz(cls(**fields))


# -- the generators, one a protocol ------------------------------------------------------------


def ethernet(t: Targets, rnd: random.Random) -> bytes:
    """fuzz(Ether()): a random EtherType; a VLAN tag (fuzz(Dot1Q())); a known type with a garbage
    body; a runt."""
    dst = rnd.choice([ROUTER_MAC, "ff:ff:ff:ff:ff:ff", "33:33:00:00:00:01", "01:00:5e:00:00:01", rmac(rnd)])
    src = t.mac if rnd.random() < 0.7 else rmac(rnd)
    kind = rnd.randrange(4)
    if kind == 0:
        return bytes(fuzz(Ether(dst=dst, src=src)) / Raw(rbytes(rnd, 600)))
    if kind == 1:
        return bytes(Ether(dst=dst, src=src) / fuzz(Dot1Q()) / Raw(rbytes(rnd, 600)))
    if kind == 2:
        kind_of = rnd.choice([0x0800, 0x86DD, 0x0806, 0x8847, 0x8848, 0x88CC, 0x8100, 0x88A8, 0x8035, 0x0842])
        return bytes(Ether(dst=dst, src=src, type=kind_of) / Raw(rbytes(rnd, 600)))
    return bytes(Ether(dst=dst, src=src, type=rnd.choice([0x0800, 0x86DD, 0x0806])) / Raw(rbytes(rnd, 6)))  # a runt: a header and a few bytes


def arp(t: Targets, rnd: random.Random) -> bytes:
    """fuzz(ARP()): requests for the gateway, the service address, another VM, an address nobody
    has; the hardware and protocol types and lengths, the opcode and the sender random or kept."""
    pdst = rnd.choice([t.gateway, t.dns, t.ip, t.subnet_prefix + "200"] + t.others)
    dst = rnd.choice(["ff:ff:ff:ff:ff:ff", ROUTER_MAC])
    if rnd.random() < 0.5:
        body = fuzz(ARP(pdst=pdst))
    else:  # a well-formed request or reply from a forged sender, opcode random now and then
        psrc = rnd.choice([t.ip, t.ip, t.gateway, "0.0.0.0"] + t.others)
        op = rnd.choice([1, 1, 2, rnd.randrange(65536)])
        body = ARP(op=op, hwsrc=t.mac if rnd.random() < 0.8 else rmac(rnd), psrc=psrc, pdst=pdst)
    return bytes(eth(t, rnd, dst) / body / Raw(rbytes(rnd, 40)))


IP_OPTIONS = (IPOption_NOP, IPOption_RR, IPOption_LSRR, IPOption_Timestamp, IPOption_Security, IPOption_Router_Alert)


def ipv4(t: Targets, rnd: random.Random) -> bytes:
    """fuzz(IP()): version, header length's options, TOS, id, flags, fragment offset, TTL and
    protocol random; or a valid header over a random protocol (GRE, ESP, SCTP, IP in IP, ...)."""
    hdr: Packet
    if rnd.random() < 0.6:
        opts = [fuzz(rnd.choice(IP_OPTIONS)()) for _ in range(rnd.randrange(3))]
        hdr = fuzz(IP(src=src4(t, rnd), dst=rnd.choice(t.ipv4_destinations()), options=opts))
    else:
        hdr = ip4(t, rnd)
        hdr.proto = rnd.choice([0, 2, 4, 41, 47, 50, 51, 89, 103, 112, 132, 137, 255, rnd.randrange(256)])
        hdr.flags = rnd.choice([0, 0, 1, 2])
        hdr.frag = rnd.choice([0, 0, 0, 1, 185, 8191])
    return bytes(eth(t, rnd) / hdr / Raw(rbytes(rnd, 400)))


EXT6 = (IPv6ExtHdrHopByHop, IPv6ExtHdrDestOpt, IPv6ExtHdrRouting, IPv6ExtHdrFragment)


def ipv6(t: Targets, rnd: random.Random) -> bytes:
    """fuzz(IPv6()) (version, traffic class, flow label, next header, hop limit), then up to three
    fuzzed extension headers (hop-by-hop, destination options, routing, fragment)."""
    dst = rnd.choice(t.ipv6_destinations())
    p = eth6(t, rnd, dst) / fuzz(IPv6(src=src6(t, rnd), dst=dst))
    for _ in range(rnd.randrange(4)):
        p = p / fuzz(rnd.choice(EXT6)())
    return bytes(p / Raw(rbytes(rnd, 400)))


TCP_PORTS = (80, 80, 80, 8097, 8775, 8085, 22, 53, 443)
SESSION_FLAGS = ("S", "S", "SA", "A", "A", "PA", "F", "FA", "R", "RA", "FPU", "SF", "SR", "", "SRAFPU")


def tcp(t: Targets, rnd: random.Random) -> bytes:
    """A valid IP header over fuzz(TCP()): flags, sequence numbers, window, urgent pointer and
    source port random, the data offset and options too now and then; mostly to the metadata
    service, also to the gateway, the other VMs, vhost0 and Nova (no route: dropped), over IPv4 or
    IPv6.  Some are segments of eight flows to the metadata service, their flags chosen among
    SYN, ACK, FIN, RST and odd mixes, so that they meet live flows (and their TCP state)."""
    fields: dict[str, Any] = {"dport": rnd.choice(TCP_PORTS) if rnd.random() < 0.9 else rnd.randrange(65536)}
    session = rnd.random() < 0.4
    if session:  # segments of a few flows again and again: the flows' TCP state (and the kernel program's)
        fields.update(sport=40000 + rnd.randrange(8), dport=80, flags=rnd.choice(SESSION_FLAGS))
    elif rnd.random() < 0.2:
        fields["dataofs"] = rnd.randrange(16)
    if rnd.random() < 0.3:
        fields["options"] = [rnd.choice([("MSS", rnd.randrange(65536)), ("WScale", rnd.randrange(256)), ("SAckOK", b""), ("NOP", None),
                                         ("Timestamp", (rnd.randrange(2**32), 0)), (rnd.randrange(256), rbytes(rnd, 10))])
                             for _ in range(rnd.randrange(1, 6))]  # fmt: skip
    seg = fuzz(TCP(**fields)) / Raw(rbytes(rnd, 200))
    if rnd.random() < 0.2:
        return bytes(ip6(t, rnd, rnd.choice([METADATA_IP6, t.gateway6] + t.others6)) / seg)
    dst = METADATA_IP if session or rnd.random() < 0.5 else None
    return bytes(eth(t, rnd) / ip4(t, rnd, dst) / seg)


UDP_PORTS = (53, 67, 68, 123, 547, TUNNEL_PORT, 4789, 8097, 80, 161)


def udp(t: Targets, rnd: random.Random) -> bytes:
    """A valid IP header over fuzz(UDP()): source port random, the length now and then a lie; to
    the node's services' ports, the tunnel port (vhost0's: no route from a VM), others."""
    fields: dict[str, Any] = {"dport": rnd.choice(UDP_PORTS) if rnd.random() < 0.8 else rnd.randrange(65536)}
    if rnd.random() < 0.2:
        fields["len"] = rnd.choice([0, 1, 7, 8, 9, 65535, rnd.randrange(65536)])
    dgram = fuzz(UDP(**fields)) / Raw(rbytes(rnd, 300))
    if rnd.random() < 0.2:
        return bytes(ip6(t, rnd) / dgram)
    dst = t.vhost0 if fields["dport"] == TUNNEL_PORT else None
    return bytes(eth(t, rnd) / ip4(t, rnd, dst) / dgram)


def icmp(t: Targets, rnd: random.Random) -> bytes:
    """fuzz(ICMP()): type, code, id, sequence random; the errors with a fuzzed quoted header."""
    msg = fuzz(ICMP()) if rnd.random() < 0.5 else fuzz(ICMP(type=rnd.choice([0, 3, 4, 5, 8, 11, 12, 13, 17])))
    quoted: Packet
    if rnd.random() < 0.5:
        quoted = fuzz(IPerror(src=t.ip, dst=rnd.choice(t.ipv4_destinations()))) / fuzz(rnd.choice([TCPerror, UDPerror])())
    else:
        quoted = Raw(rbytes(rnd, 100))
    return bytes(eth(t, rnd) / ip4(t, rnd) / msg / quoted)


ICMP6 = (ICMPv6EchoRequest, ICMPv6EchoReply, ICMPv6DestUnreach, ICMPv6PacketTooBig, ICMPv6TimeExceeded, ICMPv6ParamProblem,
         ICMPv6MLQuery, ICMPv6MLReport, ICMPv6MLDone, ICMPv6MLQuery2, ICMPv6MLReport2)  # fmt: skip


def icmpv6(t: Targets, rnd: random.Random) -> bytes:
    """fuzz() of ICMPv6's echo, errors (with a fuzzed quoted header) and MLD (v1 and v2)."""
    cls = rnd.choice(ICMP6)
    msg = typed(cls, rnd)
    if cls in (ICMPv6DestUnreach, ICMPv6PacketTooBig, ICMPv6TimeExceeded, ICMPv6ParamProblem) and rnd.random() < 0.7:
        msg = msg / fuzz(IPerror6(src=t.ip6, dst=rnd.choice(t.ipv6_destinations()))) / Raw(rbytes(rnd, 40))
    hlim = 1 if cls in (ICMPv6MLQuery, ICMPv6MLReport, ICMPv6MLDone, ICMPv6MLQuery2, ICMPv6MLReport2) and rnd.random() < 0.5 else None
    return bytes(ip6(t, rnd, hlim=hlim) / msg / Raw(rbytes(rnd, 40)))


ND_OPTIONS = (ICMPv6NDOptSrcLLAddr, ICMPv6NDOptDstLLAddr, ICMPv6NDOptPrefixInfo, ICMPv6NDOptMTU, ICMPv6NDOptRedirectedHdr,
              ICMPv6NDOptRDNSS, ICMPv6NDOptDNSSL, ICMPv6NDOptRouteInfo)  # fmt: skip


def nd(t: Targets, rnd: random.Random) -> bytes:
    """Neighbour discovery: fuzz() of solicitations (NS, RS), advertisements (NA, RA) and
    redirects, for the gateway's, the service address's, another VM's or the VM's own address,
    with fuzzed options (link-layer addresses, prefix information, MTU, redirected header, RDNSS,
    DNSSL, route information); the hop limit 255 mostly, as ND requires."""
    target = rnd.choice([t.gateway6, t.dns6, t.ip6, ROUTER_LL6, own_ll6(t)] + t.others6)
    kind = rnd.choice([ICMPv6ND_NS, ICMPv6ND_NS, ICMPv6ND_NA, ICMPv6ND_RS, ICMPv6ND_RA, ICMPv6ND_Redirect])
    if kind is ICMPv6ND_NS:
        msg = typed(kind, rnd, 0.7, tgt=target)
        dst = rnd.choice([solicited(target), target, "ff02::1"])
    elif kind is ICMPv6ND_NA:
        msg = typed(kind, rnd, 0.7, tgt=target)
        dst = rnd.choice(["ff02::1", t.gateway6, ROUTER_LL6])
    elif kind is ICMPv6ND_Redirect:
        msg = typed(kind, rnd, 0.7, tgt=target, dst=rnd.choice(t.ipv6_destinations()))
        dst = rnd.choice(t.others6 + ["ff02::1", t.gateway6])
    else:
        msg = typed(kind, rnd, 0.7)
        dst = rnd.choice(["ff02::2", "ff02::1", ROUTER_LL6, t.gateway6])
    for _ in range(rnd.randrange(4)):
        opt = rnd.choice(ND_OPTIONS)
        msg = msg / (fuzz(opt(pkt=rbytes(rnd, 48))) if opt is ICMPv6NDOptRedirectedHdr else fuzz(opt()))
    return bytes(ip6(t, rnd, dst, hlim=255 if rnd.random() < 0.8 else None) / msg)


DHCP_OPTIONS = ("message-type", "requested_addr", "server_id", "param_req_list", "client_id", "hostname", "lease_time",
                "max_dhcp_size", "vendor_class_id", "renewal_time", "subnet_mask", "router", "name_server", "domain")  # fmt: skip


def dhcp_option(t: Targets, rnd: random.Random) -> object:
    """One option: a known one with a random value, or a raw (code, bytes) or bytes that may lie
    about their length."""
    k = rnd.randrange(10)
    if k < 6:
        name = rnd.choice(DHCP_OPTIONS)
        if name == "message-type":
            return (name, rnd.choice([1, 3, 4, 7, 8, rnd.randrange(256)]))
        if name in ("requested_addr", "server_id", "subnet_mask", "router", "name_server"):
            return (name, rnd.choice([t.ip, t.gateway, t.dns, t.subnet_prefix + str(rnd.randrange(256)), "0.0.0.0", "255.255.255.255"]))
        if name == "param_req_list":
            return (name, [rnd.randrange(256) for _ in range(rnd.randrange(30))])
        if name in ("lease_time", "renewal_time"):
            return (name, rnd.randrange(2**32))
        if name == "max_dhcp_size":
            return (name, rnd.randrange(65536))
        return (name, rbytes(rnd, 255))
    if k < 8:
        return (rnd.randrange(1, 255), rbytes(rnd, 40))
    return bytes([rnd.randrange(256), rnd.randrange(256)]) + rbytes(rnd, 8)  # a raw option, its length whatever


def dhcp(t: Targets, rnd: random.Random) -> bytes:
    """BOOTP+DHCP to the service address or broadcast: fuzz(BOOTP()) (op, hardware type and length,
    hops, xid, flags, addresses, server name, file) with the VM's MAC as chaddr or not, and options
    from fuzz(DHCP()) or a random list of known and unknown ones (with or without end)."""
    chaddr = bytes.fromhex(t.mac.replace(":", "")) + b"\x00" * 10 if rnd.random() < 0.7 else rnd.randbytes(16)
    k = rnd.random()
    if k < 0.4:  # a client's message, its type first, then random options
        boot = BOOTP(op=1, chaddr=chaddr, xid=rnd.randrange(2**32))
        options = [("message-type", rnd.choice([1, 1, 3, 3, 4, 7, 8]))] + [dhcp_option(t, rnd) for _ in range(rnd.randrange(7))] + ["end"]
        opts: Packet = DHCP(options=options)
    elif k < 0.7:
        boot = fuzz(BOOTP(chaddr=chaddr, options=b"c\x82Sc"))
        opts = fuzz(DHCP())
    else:
        boot = fuzz(BOOTP(chaddr=chaddr, options=b"c\x82Sc")) if rnd.random() < 0.5 else BOOTP(op=1, chaddr=chaddr, xid=rnd.randrange(2**32))
        options = [dhcp_option(t, rnd) for _ in range(rnd.randrange(12))]
        if rnd.random() < 0.8:
            options.append("end")
        opts = DHCP(options=options)
    src, dst = rnd.choice([("0.0.0.0", "255.255.255.255"), (t.ip, t.dns), (t.ip, "255.255.255.255"), (t.ip, t.gateway)])
    mac = "ff:ff:ff:ff:ff:ff" if dst == "255.255.255.255" else ROUTER_MAC
    ports = (68, 67) if rnd.random() < 0.9 else (rnd.randrange(65536), 67)
    return bytes(eth(t, rnd, mac) / IP(src=src, dst=dst) / UDP(sport=ports[0], dport=ports[1]) / boot / opts)


DHCP6_MESSAGES = (DHCP6_Solicit, DHCP6_Solicit, DHCP6_Request, DHCP6_Confirm, DHCP6_Renew, DHCP6_Rebind, DHCP6_Release, DHCP6_Decline,
                  DHCP6_InfoRequest, DHCP6_RelayForward, DHCP6_Advertise, DHCP6_Reply)  # fmt: skip
DHCP6_OPTIONS = (DHCP6OptServerId, DHCP6OptIA_NA, DHCP6OptIA_TA, DHCP6OptIA_PD, DHCP6OptIAAddress, DHCP6OptOptReq, DHCP6OptElapsedTime,
                 DHCP6OptRapidCommit, DHCP6OptUserClass, DHCP6OptVendorClass, DHCP6OptReconfAccept, DHCP6OptClientFQDN)  # fmt: skip


def dhcpv6(t: Targets, rnd: random.Random) -> bytes:
    """DHCPv6 to ff02::1:2 (or the service address), port 547: fuzz() of every client message
    (and a relay's and a server's), the message type kept or not, with a client id (the VM's
    link-layer DUID, or a fuzzed one) and fuzzed options (IA_NA, IA_TA, IA_PD, addresses, ORO,
    elapsed time, rapid commit, FQDN, ...), or raw options whose lengths lie."""
    cls = rnd.choice(DHCP6_MESSAGES)
    msg = typed(cls, rnd, 0.6)
    if rnd.random() < 0.8:
        duid = DUID_LL(lladdr=t.mac) if rnd.random() < 0.6 else fuzz(rnd.choice([DUID_LL, DUID_LLT])())
        msg = msg / DHCP6OptClientId(duid=duid)
    for _ in range(rnd.randrange(5)):
        opt = rnd.choice(DHCP6_OPTIONS)
        msg = msg / fuzz(opt())
    if cls is DHCP6_RelayForward:
        msg = msg / DHCP6OptRelayMsg(message=typed(DHCP6_Solicit, rnd))
    body = bytes(msg)
    if rnd.random() < 0.2:
        body += struct.pack("!HH", rnd.randrange(65536), rnd.randrange(65536)) + rbytes(rnd, 20)
    dst = "ff02::1:2" if rnd.random() < 0.85 else t.dns6
    src = own_ll6(t) if rnd.random() < 0.8 else src6(t, rnd)
    return bytes(eth6(t, rnd, dst) / IPv6(src=src, dst=dst) / UDP(sport=546 if rnd.random() < 0.9 else rnd.randrange(65536), dport=547) / Raw(body))


DNS_NAMES = ("vm1", "vm2", "vm3", "vm1.", "localhost", "169.254.169.254", "4.1.1.10.in-addr.arpa", "254.169.254.169.in-addr.arpa",
             "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.0.0.0.1.0.0.0.0.1.0.0.0.0.d.f.ip6.arpa", "novalocal", "", ".", "a" * 63, "b" * 64,
             ".".join(["c"] * 127), "xn--nxasmq6b", "*.", "metadata.google.internal", "nova.fabric")  # fmt: skip
DNS_TYPES = (1, 28, 12, 255, 16, 15, 33, 5, 6, 2, 0, 65535, 252, 251)


def dns(t: Targets, rnd: random.Random) -> bytes:
    """Queries to the node's DNS (the service address, over IPv4 or IPv6): fuzz(DNS()) with a
    fuzzed question, well-formed queries for odd names and types, and raw messages that lie
    (question counts, a compression pointer to itself, a label past the end)."""
    k = rnd.randrange(4)
    name = rnd.choice(DNS_NAMES)
    if k == 0:
        msg = bytes(fuzz(DNS(qd=fuzz(DNSQR(qname=name)))))
    elif k == 1:
        msg = bytes(DNS(id=rnd.randrange(65536), rd=1, qd=DNSQR(qname=name or ".", qtype=rnd.choice(DNS_TYPES))))
    elif k == 2:
        head = struct.pack("!HHHHHH", rnd.randrange(65536), rnd.choice([0x0100, 0x8180, 0x7800, rnd.randrange(65536)]),
                           rnd.choice([1, 0, 2, 65535]), rnd.randrange(3), rnd.randrange(3), rnd.randrange(3))  # fmt: skip
        body = rnd.choice([b"\xc0\x0c\x00\x01\x00\x01", b"\x3fabc", b"\x03vm1\xc0\x0c\x00\x01\x00\x01", b"\x00\x00\x01\x00\x01" * 3,
                           b"\x01a" * 200 + b"\x00\x00\x01\x00\x01", rbytes(rnd, 80)])  # fmt: skip
        msg = head + body
    else:
        msg = rbytes(rnd, 60)
    port = 53 if rnd.random() < 0.95 else rnd.choice([5353, 853])
    if rnd.random() < 0.25:
        return bytes(ip6(t, rnd, t.dns6) / UDP(sport=rnd.randrange(1024, 65536), dport=port) / Raw(msg))
    dst = t.dns if rnd.random() < 0.9 else t.gateway
    return bytes(eth(t, rnd) / IP(src=t.ip, dst=dst) / UDP(sport=rnd.randrange(1024, 65536), dport=port) / Raw(msg))


def mpls_from_vm(t: Targets, rnd: random.Random) -> bytes:
    """MPLS over UDP from the VM to the node's tunnel port (vhost0:6635): a VM has no route to it
    (the fabric's address is not in its VRF), so these are dropped, No L3 Route; the tunnel's own
    fuzzing comes from the fabric (``tunnel``)."""
    label = rnd.choice(t.labels) if t.labels and rnd.random() < 0.7 else rnd.randrange(2**20)
    inner = IP(src=t.ip, dst=rnd.choice(t.others or [t.gateway])) / ICMP()
    return bytes(eth(t, rnd) / IP(src=t.ip, dst=t.vhost0) / UDP(sport=rnd.randrange(49152, 65536), dport=TUNNEL_PORT) / MPLS(label=label) / inner)


GENERATORS: dict[str, Generator] = {
    "ethernet": ethernet,
    "arp": arp,
    "ipv4": ipv4,
    "ipv6": ipv6,
    "tcp": tcp,
    "udp": udp,
    "icmp": icmp,
    "icmpv6": icmpv6,
    "nd": nd,
    "dhcp": dhcp,
    "dhcpv6": dhcpv6,
    "dns": dns,
    "mpls_from_vm": mpls_from_vm,
}


def mutate(frame: bytes, rnd: random.Random) -> bytes:
    """Some frames with a few bytes flipped past the Ethernet header (what fuzz() keeps
    consistent: lengths, checksums), some cut short; at most an Ethernet frame of eth0's MTU."""
    b = bytearray(frame[:MAX_FRAME])
    r = rnd.random()
    if r < 0.15 and len(b) > 14:
        for _ in range(rnd.randrange(1, 4)):
            b[rnd.randrange(14, len(b))] = rnd.randrange(256)
    elif r < 0.23 and len(b) > 15:
        del b[rnd.randrange(14, len(b)) :]
    return bytes(b)
