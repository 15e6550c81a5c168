"""The agent's DHCPv6 server for its ports, as tf-controller's ``services/dhcpv6_handler.cc`` answers.

Pure: a client message's UDP payload, the port and its network's IPv6 subnet
in, the reply's UDP payload out (to the client's link-local address, port
546).  What it answers, by the subnet's Neutron address mode:

* ``dhcpv6-stateful``: SOLICIT gets an ADVERTISE offering the port's own
  address (from the network's IPAM) in the first IA_NA; SOLICIT with Rapid
  Commit, REQUEST, RENEW and REBIND get a REPLY with it, and the port is
  bound.  Lifetimes: preferred = valid = the lease, T1 = lease/2, T2 =
  lease*4/5 (all INFINITE, the agent's default, for an INFINITE lease).  An
  address the client lists in REQUEST/RENEW/REBIND that is not the port's
  comes back with lifetimes 0.
* ``dhcpv6-stateless``: INFORMATION-REQUEST gets a REPLY with DNS and domain;
  address requests are answered as by a server with no addresses.
* Both: CONFIRM gets Success when every listed address is in the subnet's
  prefix, NotOnLink otherwise, no answer when it lists none (RFC 8415
  18.3.3); RELEASE and DECLINE get Success and drop the port's binding.
  INFORMATION-REQUEST is answered in stateful mode too.
* ``slaac``, ``none`` or no IPv6 subnet: nothing is answered at all.

Every reply echoes the transaction id and the client's Client Identifier, and
carries our Server Identifier (DUID-LL of the server MAC, hardware type 1;
departure: the agent's says hardware type 0), DNS Recursive Name
Servers (23) when the subnet has some and the Domain Search List (24).  An
IA that gets no address carries Status NoAddrsAvail (IA_PD: NoPrefixAvail):
no temporary addresses, no prefix delegation.  Only the first IA_NA gets the
port's one address; at most ``MAX_IAS`` IAs are answered and ``MAX_LISTED``
foreign addresses per IA returned, so a reply stays a bounded size.

RFC 8415 rules kept: the discards of section 16 (SOLICIT, CONFIRM, REBIND
carrying a Server Identifier; REQUEST, RENEW, RELEASE, DECLINE without ours;
INFORMATION-REQUEST with another server's identifier or with an IA) give no
answer.  Not kept: the unicast rules (18.4: the payload does not say where it
was sent), per-IA NoBinding in RELEASE replies, Reconfigure, the client FQDN
option (39, accepted and not answered), relay messages (Malformed: the agent
is on the client's link), authentication.  Anything that is not a client
message a server can read is ``Malformed``, naming why.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

from dataplane.core.packet import Malformed

SOLICIT, ADVERTISE, REQUEST, CONFIRM, RENEW, REBIND, REPLY, RELEASE, DECLINE, RECONFIGURE, INFORMATION_REQUEST = 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11
INFINITE = 0xFFFFFFFF
SERVER_PORT, CLIENT_PORT = 547, 546
ALL_SERVERS = "ff02::1:2"

OPT_CLIENT_ID, OPT_SERVER_ID, OPT_IA_NA, OPT_IA_TA, OPT_IAADDR, OPT_ORO = 1, 2, 3, 4, 5, 6
OPT_STATUS, OPT_RAPID_COMMIT, OPT_DNS_SERVERS, OPT_DOMAIN_LIST, OPT_IA_PD = 13, 14, 23, 24, 25
SUCCESS, NO_ADDRS_AVAIL, NOT_ON_LINK, NO_PREFIX_AVAIL = 0, 2, 4, 6
STATUS_TEXT = {SUCCESS: "success", NO_ADDRS_AVAIL: "no addresses available", NOT_ON_LINK: "not on link",
               NO_PREFIX_AVAIL: "no prefixes available"}  # fmt: skip
CLIENT_MESSAGES = {SOLICIT: "SOLICIT", REQUEST: "REQUEST", CONFIRM: "CONFIRM", RENEW: "RENEW", REBIND: "REBIND", RELEASE: "RELEASE",
                   DECLINE: "DECLINE", INFORMATION_REQUEST: "INFORMATION-REQUEST"}  # fmt: skip
IA_FIXED = {OPT_IA_NA: 12, OPT_IA_TA: 4, OPT_IA_PD: 12}  # IAID (and T1, T2) before the IA's options
IAADDR_LEN = 24  # the address, preferred and valid lifetimes
DUID_MIN, DUID_MAX = 3, 130  # a type and 1 to 128 octets (RFC 8415 section 11.1)
DUID_LL, HW_ETHERNET = 3, 1
MODES = ("none", "slaac", "dhcpv6-stateful", "dhcpv6-stateless")
ANSWERED_MODES = ("dhcpv6-stateful", "dhcpv6-stateless")
MAX_IAS = 8  # IAs answered in one message; more are left out of the reply
MAX_LISTED = 8  # foreign addresses of one IA returned with lifetimes 0
# RFC 8415 section 16: the messages that must not carry a Server Identifier, and those that must carry ours
NO_SERVER_ID = (SOLICIT, CONFIRM, REBIND)
OUR_SERVER_ID = (REQUEST, RENEW, RELEASE, DECLINE)


@dataclass(frozen=True)
class Client6:
    """What the agent knows of the port a message came from."""

    port_uuid: str
    mac: bytes  # 6 bytes
    address: str  # the port's IPv6 address from the network's IPAM ("" if none)
    hostname: str  # the VM's name ("" if none)


@dataclass(frozen=True)
class Subnet6:
    """The IPv6 subnet of the port's network, as Neutron describes it."""

    mode: str  # "none", "slaac", "dhcpv6-stateful", "dhcpv6-stateless"
    prefix: str  # e.g. "fd00:10:1:1::/64"
    dns_servers: tuple[str, ...]  # option 23
    domain: str = ""  # option 24 (domain search list), "" = the server's default domain

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError("IPv6 address mode %r: use one of %s" % (self.mode, ", ".join(MODES)))
        ipaddress.IPv6Network(self.prefix, strict=False)
        for server in self.dns_servers:
            ipaddress.IPv6Address(server)
        if self.domain:
            dns_name(self.domain)


@dataclass(frozen=True)
class IA:
    """An Identity Association of the client's message."""

    code: int  # OPT_IA_NA, OPT_IA_TA or OPT_IA_PD
    iaid: bytes  # 4 bytes, echoed as they came
    addresses: tuple[ipaddress.IPv6Address, ...]  # its IA Address options (none for IA_PD)


@dataclass(frozen=True)
class Message:
    """A client's message, checked."""

    kind: int
    xid: bytes  # 3 bytes
    client_id: bytes | None  # the DUID as it came (None only in INFORMATION-REQUEST)
    server_id: bytes | None
    ias: tuple[IA, ...]
    rapid_commit: bool


@dataclass
class Dhcp6Server:
    server_mac: bytes
    lease_time: int = INFINITE  # the vRouter agent's default: no expiry
    domain: str = "novalocal"  # when the subnet names none
    duid: bytes = field(init=False)  # DUID-LL of the server MAC
    bindings: dict[str, tuple[str, float]] = field(init=False, default_factory=dict)  # port -> (address, when bound)

    def __post_init__(self) -> None:
        if len(self.server_mac) != 6:
            raise ValueError("server MAC of %d bytes: give 6" % len(self.server_mac))
        if not 0 <= self.lease_time <= INFINITE:
            raise ValueError("lease time %d: give 0 to %d seconds (%d: infinite)" % (self.lease_time, INFINITE, INFINITE))
        if self.domain:
            dns_name(self.domain)
        self.duid = struct.pack("!HH", DUID_LL, HW_ETHERNET) + self.server_mac

    def handle(self, payload: bytes, client: Client6, subnet: Subnet6 | None, now: float) -> tuple[int, bytes | None]:
        """(the client's message type, the reply's UDP payload or None for no answer). Malformed for a
        message that is not a valid client message."""
        msg = parse(payload)
        if subnet is None or subnet.mode not in ANSWERED_MODES or not self._for_us(msg):
            return msg.kind, None
        stateful = subnet.mode == "dhcpv6-stateful"
        address = client.address if stateful else ""
        reply_kind, status, rapid, ias = REPLY, None, False, b""
        if msg.kind in (SOLICIT, REQUEST, RENEW, REBIND):
            rapid = msg.kind == SOLICIT and msg.rapid_commit
            if msg.kind == SOLICIT and not rapid:
                reply_kind = ADVERTISE
            ias, given = self._ias(msg.ias, address, listed=stateful and msg.kind != SOLICIT)
            if reply_kind == REPLY and given:
                self.bindings[client.port_uuid] = (address, now)
        elif msg.kind == CONFIRM:
            listed = [a for ia in msg.ias for a in ia.addresses]
            if not listed:
                return msg.kind, None  # RFC 8415 18.3.3: nothing to confirm, no reply
            on_link = ipaddress.IPv6Network(subnet.prefix, strict=False)
            status = SUCCESS if all(a in on_link for a in listed) else NOT_ON_LINK
        elif msg.kind in (RELEASE, DECLINE):
            status = SUCCESS
            self.bindings.pop(client.port_uuid, None)
        return msg.kind, self._reply(reply_kind, msg, subnet, ias, status, rapid)

    def binding(self, port_uuid: str) -> tuple[str, float] | None:
        """The address bound to the port and when (the monotonic ``now`` of the REPLY), or None."""
        return self.bindings.get(port_uuid)

    def forget(self, port_uuid: str) -> None:
        """The port was unplugged: its binding goes."""
        self.bindings.pop(port_uuid, None)

    def _for_us(self, msg: Message) -> bool:
        """False for the messages RFC 8415 section 16 tells a server to discard."""
        if msg.kind in NO_SERVER_ID:
            return msg.server_id is None
        if msg.kind in OUR_SERVER_ID:
            return msg.server_id == self.duid
        return msg.server_id in (None, self.duid) and not msg.ias  # INFORMATION-REQUEST (16.12)

    def _ias(self, ias: tuple[IA, ...], address: str, listed: bool) -> tuple[bytes, bool]:
        """The reply's IA options (the port's address in the first IA_NA, a status in the others) and
        whether the address was given."""
        out: list[bytes] = []
        given = False
        mine = ipaddress.IPv6Address(address) if address else None
        for ia in ias[:MAX_IAS]:
            if ia.code == OPT_IA_PD:
                out.append(option(OPT_IA_PD, ia.iaid + bytes(8) + status_option(NO_PREFIX_AVAIL)))
                continue
            body = b""
            if ia.code == OPT_IA_NA and mine is not None and not given:
                given = True
                body += option(OPT_IAADDR, mine.packed + struct.pack("!II", self.lease_time, self.lease_time))
                t1, t2 = (INFINITE, INFINITE) if self.lease_time == INFINITE else (self.lease_time // 2, self.lease_time * 4 // 5)
            else:
                body += status_option(NO_ADDRS_AVAIL)
                t1 = t2 = 0
            if listed:
                foreign = list(dict.fromkeys(a for a in ia.addresses if a != mine))[:MAX_LISTED]
                body += b"".join(option(OPT_IAADDR, a.packed + bytes(8)) for a in foreign)
            fixed = ia.iaid + struct.pack("!II", t1, t2) if ia.code == OPT_IA_NA else ia.iaid
            out.append(option(ia.code, fixed + body))
        return b"".join(out), given

    def _reply(self, reply_kind: int, msg: Message, subnet: Subnet6, ias: bytes, status: int | None, rapid: bool) -> bytes:
        out = [bytes([reply_kind]) + msg.xid]
        if msg.client_id is not None:
            out.append(option(OPT_CLIENT_ID, msg.client_id))
        out += [option(OPT_SERVER_ID, self.duid), ias]
        if status is not None:
            out.append(status_option(status))
        if rapid:
            out.append(option(OPT_RAPID_COMMIT, b""))
        if subnet.dns_servers:
            out.append(option(OPT_DNS_SERVERS, b"".join(ipaddress.IPv6Address(s).packed for s in subnet.dns_servers)))
        domain = subnet.domain or self.domain
        if domain:
            out.append(option(OPT_DOMAIN_LIST, dns_name(domain)))
        return b"".join(out)


def option(code: int, data: bytes) -> bytes:
    return struct.pack("!HH", code, len(data)) + data


def status_option(code: int) -> bytes:
    return option(OPT_STATUS, struct.pack("!H", code) + STATUS_TEXT[code].encode())


def dns_name(name: str) -> bytes:
    """A domain name in RFC 1035 encoding, uncompressed (RFC 8415 section 10); ValueError for one
    that cannot be encoded."""
    labels = name.rstrip(".").split(".")
    if any(not 0 < len(label.encode()) <= 63 for label in labels) or len(name.encode()) > 253:
        raise ValueError("domain %r: labels of 1 to 63 bytes, 253 bytes in all" % name)
    return b"".join(bytes([len(label.encode())]) + label.encode() for label in labels) + b"\x00"


def options(buf: bytes, where: str) -> list[tuple[int, bytes]]:
    """The options of a message or of an option's body, each whole."""
    out, i = [], 0
    while i < len(buf):
        if i + 4 > len(buf):
            raise Malformed("DHCPv6 %s: %d bytes after the last option" % (where, len(buf) - i))
        code, length = struct.unpack_from("!HH", buf, i)
        if i + 4 + length > len(buf):
            raise Malformed("DHCPv6 option %d runs past the end of the %s" % (code, where))
        out.append((code, buf[i + 4 : i + 4 + length]))
        i += 4 + length
    return out


def parse_ia(code: int, body: bytes) -> IA:
    fixed = IA_FIXED[code]
    if len(body) < fixed:
        raise Malformed("DHCPv6 IA option %d of %d bytes, shorter than its %d fixed" % (code, len(body), fixed))
    addresses: list[ipaddress.IPv6Address] = []
    for sub, data in options(body[fixed:], "IA option %d" % code):
        if code == OPT_IA_PD or sub != OPT_IAADDR:
            continue  # prefixes and status codes: nothing the server reads
        if len(data) < IAADDR_LEN:
            raise Malformed("DHCPv6 IA Address option of %d bytes, shorter than %d" % (len(data), IAADDR_LEN))
        options(data[IAADDR_LEN:], "IA Address option")
        addresses.append(ipaddress.IPv6Address(data[:16]))
    return IA(code, body[:4], tuple(addresses))


def parse(payload: bytes) -> Message:
    """A client's DHCPv6 message, checked: a client's message type, options that fit, IAs whole, a
    Client Identifier holding a DUID (absent only from INFORMATION-REQUEST)."""
    if len(payload) < 4:
        raise Malformed("DHCPv6 message of %d bytes, shorter than 4" % len(payload))
    kind = payload[0]
    if kind not in CLIENT_MESSAGES:
        raise Malformed("DHCPv6 message type %d is not a client's" % kind)
    client_id = server_id = None
    ias: list[IA] = []
    rapid = False
    for code, data in options(payload[4:], "message"):
        if code in (OPT_CLIENT_ID, OPT_SERVER_ID):
            if (client_id if code == OPT_CLIENT_ID else server_id) is not None:
                raise Malformed("DHCPv6 %s with two %s Identifiers" % (CLIENT_MESSAGES[kind], "Client" if code == OPT_CLIENT_ID else "Server"))
            if code == OPT_CLIENT_ID:
                if not DUID_MIN <= len(data) <= DUID_MAX:
                    raise Malformed("DHCPv6 Client Identifier of %d bytes is not a DUID" % len(data))
                client_id = data
            else:
                server_id = data
        elif code in IA_FIXED:
            ias.append(parse_ia(code, data))
        elif code == OPT_RAPID_COMMIT:
            rapid = True
    if client_id is None and kind != INFORMATION_REQUEST:
        raise Malformed("DHCPv6 %s without a Client Identifier" % CLIENT_MESSAGES[kind])
    return Message(kind, payload[1:4], client_id, server_id, tuple(ias), rapid)
