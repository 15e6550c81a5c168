"""Virtual networks: what the controller tells an agent of a VN's IPAM, validated and persisted.

A real agent learns a virtual network's subnets (network-ipam-refs: the
subnet, its default gateway, its DNS server address, DHCP on or off, host
routes) from the control node.  Here ``vrouter network add`` gives them, one
JSON file per network in ``<state>/networks/<uuid>.json``.  What the agent's
guest services answer comes from here: DHCP leases, the gateway and service
addresses ARP and ICMP answer for, the DNS server.  A port whose network is not
configured is still plugged; its DHCP gets the vRouter agent's answer before
configuration arrives (a 4 s lease of the port's address as /32, nothing else).

Defaults, as Tungsten Fabric allocates them from the start of a subnet
(``addr_from_start``, what its Neutron plugin asks for): the gateway is the
subnet's first address plus one, the service address (DHCP server, DNS)
plus two.
"""

from __future__ import annotations

import ipaddress
import os
import re
import uuid as uuidlib
from dataclasses import asdict, dataclass, field

from vrouter.agent.store import read_json, write_json_atomic

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class NetworkError(ValueError):
    """A network request is wrong; the message names the option."""


@dataclass
class HostRoute:
    prefix: str  # a.b.c.d/n
    nexthop: str


@dataclass
class Network:
    uuid: str
    name: str
    subnet: str  # a.b.c.d/n
    gateway: str
    dns_server: str  # the service address: DHCP server identifier and DNS server
    dhcp: bool = True
    mtu: int = 0  # 0: not sent (DHCP option 26), as the vRouter agent does unless configured
    domain: str = ""  # DHCP option 15 and the DNS zone of the instances; "": the agent's dns_domain
    host_routes: list[HostRoute] = field(default_factory=list)

    @property
    def prefix_len(self) -> int:
        return ipaddress.IPv4Network(self.subnet).prefixlen

    def to_dict(self) -> dict:
        return asdict(self)


def _uuid(value: object) -> str:
    try:
        return str(uuidlib.UUID(str(value)))
    except (ValueError, AttributeError, TypeError):
        raise NetworkError("--vn-uuid %r: not a uuid" % (value,)) from None


def _address(option: str, value: str, net: ipaddress.IPv4Network) -> str:
    try:
        ip = ipaddress.IPv4Address(value)
    except ValueError:
        raise NetworkError("%s %r: not an IPv4 address" % (option, value)) from None
    if ip not in net or ip in (net.network_address, net.broadcast_address):
        raise NetworkError("%s %s: not a host address of %s" % (option, ip, net))
    return str(ip)


def parse_host_route(text: str) -> HostRoute:
    """``PREFIX/LEN via NEXTHOP`` (or ``PREFIX/LEN,NEXTHOP``)."""
    parts = text.replace(",", " via ").split()
    if len(parts) != 3 or parts[1] != "via":
        raise NetworkError("--host-route %r: expected PREFIX/LEN via NEXTHOP" % text)
    try:
        prefix = ipaddress.IPv4Network(parts[0])
        nexthop = ipaddress.IPv4Address(parts[2])
    except ValueError as e:
        raise NetworkError("--host-route %r: %s" % (text, e)) from None
    return HostRoute(str(prefix), str(nexthop))


def validate(uuid: object, subnet: object, name: object = None, gateway: object = None, dns_server: object = None,
             dhcp: bool = True, mtu: object = None, domain: object = None, host_routes: list[str] | None = None) -> Network:  # fmt: skip
    """A Network from what the user typed."""
    vn = _uuid(uuid)
    try:
        net = ipaddress.IPv4Network(str(subnet or ""), strict=True)
    except ValueError as e:
        raise NetworkError("--subnet %r: %s" % (subnet, e)) from None
    if net.num_addresses < 8:
        raise NetworkError("--subnet %s: too small (at least a /29: network, gateway, service address, broadcast and hosts)" % net)
    first = net.network_address
    gw = _address("--gateway", str(gateway), net) if gateway else str(first + 1)
    dns = _address("--dns-server", str(dns_server), net) if dns_server else str(first + 2)
    if gw == dns:
        raise NetworkError("--dns-server %s: the same as the gateway" % dns)
    n = 0
    if mtu not in (None, "", 0):
        try:
            n = int(str(mtu))
        except ValueError:
            raise NetworkError("--mtu %r: not a number" % mtu) from None
        if not 576 <= n <= 65535:
            raise NetworkError("--mtu %d: out of range 576..65535" % n)
    nm = str(name or "vn-" + vn[:8])
    if not _NAME.match(nm):
        raise NetworkError("--name %r: letters, digits, '.', '_' and '-', up to 63" % nm)
    dom = str(domain or "").strip(".").lower()
    if dom and not all(_NAME.match(label) for label in dom.split(".")):
        raise NetworkError("--domain %r: not a DNS domain name" % domain)
    return Network(vn, nm, str(net), gw, dns, bool(dhcp), n, dom, [parse_host_route(r) for r in host_routes or []])


class NetworkTable:
    """Configured networks by uuid, mirrored to one file each."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.networks: dict[str, Network] = {}

    def load(self) -> list[str]:
        """Read the network files; return one message per file that could not be used."""
        problems = []
        os.makedirs(self.directory, exist_ok=True)
        for name in sorted(os.listdir(self.directory)):
            if not name.endswith(".json"):
                continue
            path = os.path.join(self.directory, name)
            try:
                d = read_json(path)
                routes = ["%s via %s" % (r["prefix"], r["nexthop"]) for r in d.get("host_routes", [])]
                net = validate(d["uuid"], d["subnet"], d.get("name"), d.get("gateway"), d.get("dns_server"), d.get("dhcp", True),
                               d.get("mtu"), d.get("domain"), routes)  # fmt: skip
            except (OSError, ValueError, KeyError, TypeError) as e:
                problems.append("%s: %s" % (path, e))
                continue
            self.networks[net.uuid] = net
        return problems

    def add(self, net: Network) -> Network:
        """Add or replace (by uuid) a network."""
        write_json_atomic(os.path.join(self.directory, net.uuid + ".json"), net.to_dict())
        self.networks[net.uuid] = net
        return net

    def remove(self, vn_uuid: str) -> Network:
        key = _uuid(vn_uuid)
        net = self.networks.pop(key, None)
        if net is None:
            raise NetworkError("--vn-uuid %s: no such network" % key)
        try:
            os.unlink(os.path.join(self.directory, key + ".json"))
        except FileNotFoundError:
            pass
        return net
