"""The agent's DHCPv4 server for its ports, as tf-controller's ``services/dhcp_handler.cc`` answers.

Pure: a request's UDP payload and what the agent knows of the port in, the
reply's payload and where it goes out.  Rules, as the vRouter agent keeps them:

* DISCOVER gets an OFFER, REQUEST an ACK, INFORM an ACK without a lease;
  RELEASE and DECLINE get nothing.  The address is always the port's own: a
  REQUEST for another address (option 50) gets a NAK ("cannot assign requested
  address"); a REQUEST naming another server (option 54) is not ours and gets
  nothing.  A request whose client hardware address is not the port's MAC is
  dropped.
* Options, in the agent's order: message type (53), server identifier (54, the
  network's service address), subnet mask (1), broadcast (28), interface MTU
  (26, only when the network has one), lease time (51, not for INFORM),
  classless static routes (121), router (3), host name (12: the instance's
  name), DNS server (6: the service address), domain name (15).
* The router option is left out when the client asked for option 121 and got
  it (RFC 3442).  Departure: the vRouter agent sends 121 only for configured
  host routes and never adds the default route to it, so a client that asks
  for 121 is left without one; here 121, when asked for, carries the
  network's host routes and the default route through the gateway.
* Before the port's network is configured, the agent's short answer: a 4 s
  lease of the port's address as /32, from 0.0.0.0, with nothing else.
* Replies are broadcast, unless the request is an INFORM or the client can
  take unicast (no relay, and its broadcast bit clear or an address already).

Each port's lease is an explicit state (``LeaseState``), moved by the client's
messages through ``TRANSITIONS``; a renewal is a REQUEST in BOUND.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from collections import deque
from dataclasses import dataclass, field

import dpkt

from dataplane.core.packet import Malformed
from vrouter.model import Network

BOOTREQUEST, BOOTREPLY = 1, 2
DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = 1, 2, 3, 4, 5, 6, 7, 8
OPT_MASK, OPT_ROUTER, OPT_DNS, OPT_HOSTNAME, OPT_DOMAIN, OPT_MTU, OPT_BROADCAST = 1, 3, 6, 12, 15, 26, 28
OPT_REQUESTED_IP, OPT_LEASE, OPT_TYPE, OPT_SERVER_ID, OPT_PARAMS, OPT_MESSAGE = 50, 51, 53, 54, 55, 56
OPT_CLASSLESS_ROUTES = 121
SHORT_LEASE = 4  # seconds: the agent's answer before the port's network is configured
INFINITE = 0xFFFFFFFF
BROADCAST = b"\xff\xff\xff\xff"
MAGIC = 0x63825363
MIN_LEN = 240  # the fixed header and the magic cookie


class LeaseState(enum.Enum):
    FREE = "free"  # nothing offered or bound
    OFFERED = "offered"
    BOUND = "bound"


TRANSITIONS: dict[LeaseState, dict[int, LeaseState]] = {
    # the state after the server answered (or ignored) a message of this type in this state
    LeaseState.FREE: {DISCOVER: LeaseState.OFFERED, REQUEST: LeaseState.BOUND, NAK: LeaseState.FREE, RELEASE: LeaseState.FREE,
                      DECLINE: LeaseState.FREE, INFORM: LeaseState.FREE},
    LeaseState.OFFERED: {DISCOVER: LeaseState.OFFERED, REQUEST: LeaseState.BOUND, NAK: LeaseState.FREE, RELEASE: LeaseState.FREE,
                         DECLINE: LeaseState.FREE, INFORM: LeaseState.OFFERED},
    LeaseState.BOUND: {DISCOVER: LeaseState.OFFERED, REQUEST: LeaseState.BOUND, NAK: LeaseState.FREE, RELEASE: LeaseState.FREE,
                       DECLINE: LeaseState.FREE, INFORM: LeaseState.BOUND},
}  # fmt: skip
NAMES = {DISCOVER: "DISCOVER", OFFER: "OFFER", REQUEST: "REQUEST", DECLINE: "DECLINE", ACK: "ACK", NAK: "NAK", RELEASE: "RELEASE", INFORM: "INFORM"}


@dataclass(frozen=True)
class Client:
    """What the server knows of the port a request came from."""

    port_uuid: str
    mac: bytes
    ip: str
    name: str


@dataclass(frozen=True)
class Reply:
    payload: bytes  # the BOOTP message
    kind: int  # OFFER, ACK or NAK
    src: bytes  # IP source (the server identifier, or 0.0.0.0)
    dst: bytes  # IP destination
    dst_mac: bytes


ACKS_KEPT = 8


@dataclass
class Lease:
    state: LeaseState = LeaseState.FREE
    since: float = 0.0
    expires: float = 0.0  # 0: never
    acks: deque[float] = field(default_factory=lambda: deque(maxlen=ACKS_KEPT))  # when the last REQUESTs were acknowledged


@dataclass
class DhcpServer:
    lease_time: int = INFINITE  # the vRouter agent's default: no expiry
    domain: str = ""  # when the network names none
    leases: dict[str, Lease] = field(default_factory=dict)

    def handle(self, payload: bytes, client: Client, net: Network | None, now: float) -> tuple[int, Reply | None]:
        """(the request's message type, the reply or None); Malformed when it is not a DHCP request
        a server can read, or not from this port's MAC."""
        msg = parse(payload)
        if bytes(msg.chaddr[:6]) != client.mac:
            raise Malformed("DHCP client hardware address %s is not the port's" % bytes(msg.chaddr[:6]).hex(":"))
        opts = dict(msg.opts)
        kind = opts[OPT_TYPE][0]
        lease = self.leases.setdefault(client.port_uuid, Lease())
        server = ipaddress.IPv4Address(net.dns_server).packed if net is not None else bytes(4)
        reply_kind: int | None
        if kind == DISCOVER:
            reply_kind = OFFER
        elif kind == REQUEST:
            asked = opts.get(OPT_REQUESTED_IP)
            server_id = opts.get(OPT_SERVER_ID)
            if server_id is not None and net is not None and server_id != server:
                return kind, None  # the client chose another server
            if asked is not None and asked != ipaddress.IPv4Address(client.ip).packed:
                reply_kind = NAK
            else:
                reply_kind = ACK
        elif kind == INFORM:
            reply_kind = ACK
        elif kind in (RELEASE, DECLINE):
            reply_kind = None
        else:
            raise Malformed("DHCP message type %d from a client" % kind)
        lease.state = TRANSITIONS[lease.state][NAK if reply_kind == NAK else kind]
        if lease.state is LeaseState.BOUND and kind == REQUEST:
            lease.since = now
            lease.acks.append(now)
            lease_time = self.lease_time if net is not None else SHORT_LEASE
            lease.expires = 0.0 if lease_time == INFINITE else now + lease_time
        if reply_kind is None:
            return kind, None
        return kind, self._reply(msg, opts, kind, reply_kind, client, net, server)

    def _reply(self, msg: dpkt.dhcp.DHCP, opts: dict[int, bytes], kind: int, reply_kind: int, client: Client, net: Network | None,
               server: bytes) -> Reply:  # fmt: skip
        ip = ipaddress.IPv4Address(client.ip).packed
        out: list[tuple[int, bytes]] = [(OPT_TYPE, bytes([reply_kind])), (OPT_SERVER_ID, server)]
        if reply_kind == NAK:
            out.append((OPT_MESSAGE, b"cannot assign requested address"))
        elif net is None:  # before configuration: the port's address alone, for a short while
            out += [(OPT_MASK, b"\xff\xff\xff\xff"), (OPT_BROADCAST, ip), (OPT_LEASE, struct.pack("!I", SHORT_LEASE))]
        else:
            subnet = ipaddress.IPv4Network(net.subnet)
            out += [(OPT_MASK, subnet.netmask.packed), (OPT_BROADCAST, subnet.broadcast_address.packed)]
            if net.mtu:
                out.append((OPT_MTU, struct.pack("!H", net.mtu)))
            if kind != INFORM:
                out.append((OPT_LEASE, struct.pack("!I", self.lease_time)))
            asked = opts.get(OPT_PARAMS, b"")
            gateway = ipaddress.IPv4Address(net.gateway).packed
            routes = [(ipaddress.IPv4Network(r.prefix), ipaddress.IPv4Address(r.nexthop).packed) for r in net.host_routes]
            classless = OPT_CLASSLESS_ROUTES in asked
            if classless:
                routes.append((ipaddress.IPv4Network("0.0.0.0/0"), gateway))
            if routes:
                out.append((OPT_CLASSLESS_ROUTES, b"".join(classless_route(p, nh) for p, nh in routes)))
            if not classless:
                out.append((OPT_ROUTER, gateway))
            if client.name:
                out.append((OPT_HOSTNAME, client.name.encode()[:63]))
            out.append((OPT_DNS, server))
            domain = net.domain or self.domain
            if domain:
                out.append((OPT_DOMAIN, domain.encode()))
        yiaddr = 0 if reply_kind == NAK or kind == INFORM else int.from_bytes(ip, "big")
        reply = dpkt.dhcp.DHCP(
            op=BOOTREPLY, hrd=1, hln=6, hops=0, xid=msg.xid, secs=0, flags=msg.flags, ciaddr=0, yiaddr=yiaddr,
            siaddr=int.from_bytes(server, "big") if reply_kind != NAK else 0, giaddr=0, chaddr=client.mac + bytes(10), opts=out,
        )  # fmt: skip
        unicast = reply_kind != NAK and (kind == INFORM or (not msg.giaddr and (msg.ciaddr or not msg.flags & 0x8000)))
        if unicast:
            dst, dst_mac = (struct.pack("!I", msg.ciaddr) if kind == INFORM and msg.ciaddr else ip), client.mac
        else:
            dst, dst_mac = BROADCAST, b"\xff" * 6
        return Reply(bytes(reply), reply_kind, server, dst, dst_mac)


def classless_route(prefix: ipaddress.IPv4Network, nexthop: bytes) -> bytes:
    """One route of option 121 (RFC 3442): the prefix length, the significant octets, the router."""
    n = prefix.prefixlen
    return bytes([n]) + prefix.network_address.packed[: (n + 7) // 8] + nexthop


def parse(payload: bytes) -> dpkt.dhcp.DHCP:
    """A client's DHCP message, checked: BOOTREQUEST for Ethernet, the magic cookie, options that
    fit, a message type."""
    if len(payload) < MIN_LEN:
        raise Malformed("DHCP message shorter than %d bytes" % MIN_LEN)
    _check_options(payload[MIN_LEN:])
    try:
        msg = dpkt.dhcp.DHCP(payload)
    except (dpkt.UnpackError, IndexError, ValueError, struct.error) as e:
        raise Malformed("DHCP: %s" % e) from None
    if msg.op != BOOTREQUEST or msg.hrd != 1 or msg.hln != 6 or msg.magic != MAGIC:
        raise Malformed("not a DHCP request for Ethernet (op %d, htype %d, hlen %d)" % (msg.op, msg.hrd, msg.hln))
    types = [v for t, v in msg.opts if t == OPT_TYPE]
    if len(types) != 1 or len(types[0]) != 1:
        raise Malformed("DHCP request without one message type")
    for t, v in msg.opts:
        if t in (OPT_REQUESTED_IP, OPT_SERVER_ID) and len(v) != 4:
            raise Malformed("DHCP option %d of %d bytes" % (t, len(v)))
    return msg


def _check_options(buf: bytes) -> None:
    """dpkt reads past a truncated option without a word: the options must end where they say."""
    i = 0
    while i < len(buf):
        t = buf[i]
        if t == 255:
            return
        if t == 0:
            i += 1
            continue
        if i + 1 >= len(buf) or i + 2 + buf[i + 1] > len(buf):
            raise Malformed("DHCP option %d runs past the end" % t)
        i += 2 + buf[i + 1]
    raise Malformed("DHCP options without an end")
