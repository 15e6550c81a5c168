"""The agent's DNS server at a network's service address, as tf-controller's ``dns_handler.cc``.

Pure: a query's UDP payload and the names of the network in, a response (or
"forward it") out.  Rules:

* The instances of the virtual network answer by name, with and without the
  network's domain: ``vm1`` and ``vm1.<domain>``, A (the port's address), AAAA
  (its IPv6 address) and PTR (in-addr.arpa and ip6.arpa of both), as the
  vRouter's virtual DNS registers them.  Names are compared without case.
* A name under the network's domain that is no instance: NXDOMAIN, with
  authority.  Any other name: forwarded to the resolvers in the fabric when
  the agent has some (``[SERVICES] dns_forwarders``), REFUSED otherwise.
* Not a query (opcode other than QUERY): NOTIMP.  Not DNS at all: dropped and
  counted (Invalid DNS).
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from dataclasses import dataclass

import dpkt

from dataplane.core.packet import Malformed

TTL = 60
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
A, PTR, AAAA = dpkt.dns.DNS_A, dpkt.dns.DNS_PTR, dpkt.dns.DNS_AAAA


@dataclass(frozen=True)
class Instance:
    name: str
    ip: str
    ip6: str = ""


class Outcome(enum.Enum):
    ANSWERED = "answered"
    NXDOMAIN = "nxdomain"
    REFUSED = "refused"
    NOTIMP = "notimp"
    FORWARD = "forward"


@dataclass(frozen=True)
class Zone:
    """A virtual network's names: its domain and its instances."""

    domain: str
    instances: tuple[Instance, ...]

    def lookup(self, name: str) -> list[Instance] | None:
        """The instances ``name`` is: [] for a name of this zone that is none (a single label is
        taken as in the zone, as the vRouter's DNS appends the domain to it), None for a name
        outside the zone."""
        n = name.lower().rstrip(".")
        d = self.domain.lower()
        if d and n.endswith("." + d):
            host = n[: -len(d) - 1]
        elif "." not in n:
            host = n
        else:
            return [] if d and n == d else None
        if "." in host:
            return []
        return [i for i in self.instances if i.name.lower() == host]

    def reverse(self, name: str) -> str | None:
        """The instance name of a PTR query's address, or None."""
        n = name.lower().rstrip(".")
        try:
            if n.endswith(".in-addr.arpa"):
                addr: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv4Address(".".join(reversed(n[:-13].split("."))))
            elif n.endswith(".ip6.arpa"):
                nibbles = n[:-9].split(".")
                if len(nibbles) != 32:
                    return None
                addr = ipaddress.IPv6Address(int("".join(reversed(nibbles)), 16))
            else:
                return None
        except ValueError:
            return None
        for i in self.instances:
            if str(addr) in (i.ip, i.ip6):
                return "%s.%s" % (i.name, self.domain) if self.domain else i.name
        return None


def parse(payload: bytes) -> dpkt.dns.DNS:
    """A query, or Malformed."""
    try:
        q = dpkt.dns.DNS(payload)
    except (dpkt.UnpackError, IndexError, ValueError, struct.error, UnicodeDecodeError) as e:
        raise Malformed("DNS: %s" % (e or type(e).__name__)) from None
    if q.qr != dpkt.dns.DNS_Q:
        raise Malformed("DNS: a response, not a query")
    return q


def answer(query: dpkt.dns.DNS, zone: Zone, forwarders: bool) -> tuple[Outcome, bytes]:
    """What the server does with ``query``: a response (its bytes), or FORWARD (the caller sends the
    query on, unchanged, and relays what comes back)."""
    r = dpkt.dns.DNS(id=query.id, qd=query.qd)
    r.qr = dpkt.dns.DNS_R
    r.opcode = query.opcode
    r.rd = query.rd
    r.ra = 1 if forwarders else 0
    if query.opcode != dpkt.dns.DNS_QUERY:
        r.rcode = NOTIMP
        return Outcome.NOTIMP, bytes(r)
    if len(query.qd) != 1:
        r.rcode = FORMERR
        return Outcome.REFUSED, bytes(r)
    q = query.qd[0]
    if q.type == PTR:
        name = zone.reverse(q.name)
        if name is not None:
            r.aa = 1
            r.an = [dpkt.dns.DNS.RR(name=q.name, type=PTR, cls=q.cls, ttl=TTL, ptrname=name)]
            return Outcome.ANSWERED, bytes(r)
        return _elsewhere(r, forwarders)
    found = zone.lookup(q.name)
    if found is None:
        return _elsewhere(r, forwarders)
    r.aa = 1
    if not found:
        r.rcode = NXDOMAIN
        return Outcome.NXDOMAIN, bytes(r)
    for i in found:
        if q.type in (A, dpkt.dns.DNS_ANY):
            r.an.append(dpkt.dns.DNS.RR(name=q.name, type=A, cls=q.cls, ttl=TTL, rdata=ipaddress.IPv4Address(i.ip).packed))
        if q.type in (AAAA, dpkt.dns.DNS_ANY) and i.ip6:
            r.an.append(dpkt.dns.DNS.RR(name=q.name, type=AAAA, cls=q.cls, ttl=TTL, rdata=ipaddress.IPv6Address(i.ip6).packed))
    return Outcome.ANSWERED, bytes(r)  # no record of that type: NOERROR with no answer


def _elsewhere(r: dpkt.dns.DNS, forwarders: bool) -> tuple[Outcome, bytes]:
    if forwarders:
        return Outcome.FORWARD, b""
    r.rcode = REFUSED
    return Outcome.REFUSED, bytes(r)
