"""The node's models: what the agent, its services, its messages and its tools all speak of.

A VM ``Port`` (as vrouter-port-control gives it, with the vif index and VRF the
agent assigns), a virtual ``Network`` (its IPAM, with ``HostRoute`` values), the
``RemoteRoute`` to a VM on another node (as that node published it), a
link-local service (``dataplane.core.services.LinkLocalService``, the table's
own value, validated and written in global-vrouter-config's schema here), and
the ``Identity`` behind a metadata IP that the proxy signs for.  Each is
validated here from what a user typed or a file or etcd held, and serialised
directly: the agent's files, etcd's values and the control socket's answers are
these dataclasses (``vrouter.messages.wire``), not copies of them.

Defaults for a network, as Tungsten Fabric allocates them from the start of a
subnet (``addr_from_start``, what its Neutron plugin asks for): the gateway is
the subnet's first address plus one, the service address (DHCP server, DNS)
plus two.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import uuid as uuidlib
from dataclasses import asdict, dataclass, field
from typing import Any

from dataplane.core.frames6 import MODES, eui64_address
from dataplane.core.services import LinkLocalService
from dataplane.core.vif import metadata_ip, metadata_ip6

_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
LINK_LOCAL_NET = ipaddress.IPv4Network("169.254.0.0/16")


class PortError(ValueError):
    """A port request is wrong; the message names the field."""


class NetworkError(ValueError):
    """A network request is wrong; the message names the option."""


class ServiceError(ValueError):
    """A link-local service request is wrong; the message names the field."""


# -- ports ------------------------------------------------------------------------------------------


@dataclass
class Port:
    """A VM port; ``vif`` and ``vrf`` are the agent's (``Port.placed``), and the metadata IPs
    follow from the vif index."""

    uuid: str
    instance_uuid: str
    vn_uuid: str
    vm_project_uuid: str
    ip_address: str
    mac: str
    tap_name: str
    vm_name: str = ""
    ipv6_address: str = ""
    vif: int = 0
    vrf: int = 0
    metadata_ip: str = ""
    metadata_ip6: str = ""

    def __post_init__(self) -> None:
        self.metadata_ip = metadata_ip(self.vif)
        self.metadata_ip6 = metadata_ip6(self.vif)

    def placed(self, vif: int, vrf: int) -> Port:
        """This port at vif index ``vif`` in VRF ``vrf``."""
        return dataclasses.replace(self, vif=vif, vrf=vrf)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(Port)}

    @property
    def identity(self) -> Identity:
        return Identity(self.instance_uuid, self.vm_project_uuid, self.ip_address, self.uuid, self.vm_name, self.vif)


def _uuid(option: str, value: object, error: type[ValueError]) -> str:
    try:
        return str(uuidlib.UUID(str(value)))
    except (ValueError, AttributeError, TypeError):
        raise error("--%s %r: not a uuid" % (option, value)) from None


def validate_port(raw: dict[str, Any]) -> Port:
    """A Port from request fields (names as vrouter-port-control's, dashes or underscores), or
    from a port file (its vif and vrf kept)."""
    args = {k.replace("-", "_"): v for k, v in raw.items() if v is not None}
    for required in ("uuid", "instance_uuid", "vn_uuid", "vm_project_uuid", "ip_address", "mac"):
        if not args.get(required):
            raise PortError("--%s is required" % required.replace("_", "-"))
    port_uuid = _uuid("uuid", args["uuid"], PortError)
    try:
        ip = ipaddress.IPv4Address(str(args["ip_address"]))
    except ValueError:
        raise PortError("--ip-address %r: not an IPv4 address" % args["ip_address"]) from None
    if ip.is_link_local or ip.is_multicast or ip.is_unspecified or ip.is_loopback:
        raise PortError("--ip-address %s: not usable for a VM port" % ip)
    mac = str(args["mac"]).lower()
    if not _MAC.match(mac):
        raise PortError("--mac %r: not a MAC address like 02:00:00:00:00:03" % args["mac"])
    ip6 = ""
    if args.get("ipv6_address"):
        try:
            a6 = ipaddress.IPv6Address(str(args["ipv6_address"]))
        except ValueError:
            raise PortError("--ipv6-address %r: not an IPv6 address" % args["ipv6_address"]) from None
        if a6.is_link_local or a6.is_multicast or a6.is_unspecified or a6.is_loopback or a6.ipv4_mapped is not None:
            raise PortError("--ipv6-address %s: not usable for a VM port" % a6)
        ip6 = str(a6)
    tap = args.get("tap_name") or "tap" + port_uuid[:11]
    if not _IFNAME.match(tap):
        raise PortError("--tap-name %r: not an interface name (1 to 15 characters)" % tap)
    unknown = set(args) - {f.name for f in dataclasses.fields(Port)}
    if unknown:
        raise PortError("unknown port fields: %s" % ", ".join(sorted(unknown)))
    return Port(
        uuid=port_uuid,
        instance_uuid=_uuid("instance-uuid", args["instance_uuid"], PortError),
        vn_uuid=_uuid("vn-uuid", args["vn_uuid"], PortError),
        vm_project_uuid=_uuid("vm-project-uuid", args["vm_project_uuid"], PortError),
        ip_address=str(ip),
        mac=mac,
        tap_name=tap,
        vm_name=str(args.get("vm_name") or ""),
        ipv6_address=ip6,
        vif=int(args.get("vif", 0)),
        vrf=int(args.get("vrf", 0)),
    )


def port_uuid(value: object) -> str:
    """A port's uuid as typed (``--uuid``), normalised."""
    return _uuid("uuid", value, PortError)


# -- networks ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostRoute:
    """A route a network's DHCP hands out (option 121)."""

    prefix: str  # a.b.c.d/n
    nexthop: str

    def __str__(self) -> str:
        return "%s via %s" % (self.prefix, self.nexthop)

    @classmethod
    def parse(cls, text: str) -> HostRoute:
        """``PREFIX/LEN via NEXTHOP`` (or ``PREFIX/LEN,NEXTHOP``), as a user types it."""
        parts = text.replace(",", " via ").split()
        if len(parts) != 3 or parts[1] != "via":
            raise NetworkError("--host-route %r: expected PREFIX/LEN via NEXTHOP" % text)
        return cls.of(parts[0], parts[2], text)

    @classmethod
    def of(cls, prefix: object, nexthop: object, typed: str = "") -> HostRoute:
        try:
            net = ipaddress.IPv4Network(str(prefix))
            hop = ipaddress.IPv4Address(str(nexthop))
        except ValueError as e:
            raise NetworkError("--host-route %r: %s" % (typed or "%s via %s" % (prefix, nexthop), e)) from None
        return cls(str(net), str(hop))


PROJECT_FQ_NAME = "default-domain:default-project"  # the one project of this node's networks
FABRIC_VRF_NAME = "default-domain:default-project:ip-fabric:__default__"  # VRF 0, the fabric's


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
    subnet6: str = ""  # its IPv6 subnet (dual stack), "" for none
    gateway6: str = ""
    dns_server6: str = ""  # the IPv6 service address: DHCPv6 answers from the router's link-local, DNS here
    ipv6_mode: str = ""  # Neutron's ipv6_address_mode: none, slaac, dhcpv6-stateful, dhcpv6-stateless ("" without subnet6)

    @property
    def prefix_len(self) -> int:
        return ipaddress.IPv4Network(self.subnet).prefixlen

    @property
    def fq_name(self) -> str:
        """The virtual network's fully qualified name, as Tungsten Fabric's config names it."""
        return "%s:%s" % (PROJECT_FQ_NAME, self.name)

    @property
    def vrf_name(self) -> str:
        """Its routing instance's name (the VRF the vRouter agent shows): the network's, twice."""
        return "%s:%s:%s" % (PROJECT_FQ_NAME, self.name, self.name)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Network:
        """A network from its file or etcd value (as ``to_dict`` wrote it), validated."""
        routes = [HostRoute.of(r["prefix"], r["nexthop"]) for r in d.get("host_routes", [])]
        return validate_network(d["uuid"], d["subnet"], d.get("name"), d.get("gateway"), d.get("dns_server"), d.get("dhcp", True),
                                d.get("mtu"), d.get("domain"), routes, d.get("subnet6"), d.get("gateway6"), d.get("dns_server6"),
                                d.get("ipv6_mode"))  # fmt: skip

    def address6(self, host: int) -> str:
        """The IPv6 address numbered ``host`` in the subnet (IPAM numbers a port's two addresses
        alike); ``port_address6`` says which address a port gets."""
        return str(ipaddress.IPv6Network(self.subnet6).network_address + host) if self.subnet6 else ""


IPV6_MODES = MODES  # Neutron's ipv6_address_mode values, and none
AUTOCONF_MODES = ("slaac", "dhcpv6-stateless")  # the guest makes its address from the prefix (SLAAC)


def port_address6(net: Network, host: int, mac: str) -> str:
    """The IPv6 address of a network's port: EUI-64 of its MAC where the guest autoconfigures,
    else the same host number as its IPv4 address; "" in a network without IPv6."""
    if not net.subnet6:
        return ""
    return eui64_address(net.subnet6, mac) if net.ipv6_mode in AUTOCONF_MODES else net.address6(host)


def _address(option: str, value: str, net: ipaddress.IPv4Network) -> str:
    try:
        ip = ipaddress.IPv4Address(value)
    except ValueError:
        raise NetworkError("%s %r: not an IPv4 address" % (option, value)) from None
    if ip not in net or ip in (net.network_address, net.broadcast_address):
        raise NetworkError("%s %s: not a host address of %s" % (option, ip, net))
    return str(ip)


def _address6(option: str, value: str, net: ipaddress.IPv6Network) -> str:
    try:
        ip = ipaddress.IPv6Address(value)
    except ValueError:
        raise NetworkError("%s %r: not an IPv6 address" % (option, value)) from None
    if ip not in net or ip == net.network_address:
        raise NetworkError("%s %s: not a host address of %s" % (option, ip, net))
    return str(ip)


def _ipv6_subnet(subnet6: object, gateway6: object, dns_server6: object, mode: object) -> tuple[str, str, str, str]:
    """(subnet6, gateway6, dns_server6, ipv6_mode) validated; all "" without a subnet."""
    if not subnet6:
        if mode not in (None, ""):
            raise NetworkError("--ipv6-mode %s: needs --subnet6" % mode)
        return "", "", "", ""
    try:
        net = ipaddress.IPv6Network(str(subnet6), strict=True)
    except ValueError as e:
        raise NetworkError("--subnet6 %r: %s" % (subnet6, e)) from None
    if net.prefixlen > 120 or net.network_address.is_link_local or net.network_address.is_multicast:
        raise NetworkError("--subnet6 %s: not a usable subnet (a global or unique local prefix, at most /120)" % net)
    m = str(mode or "none")
    if m not in IPV6_MODES:
        raise NetworkError("--ipv6-mode %r: one of %s" % (mode, ", ".join(IPV6_MODES)))
    if m in AUTOCONF_MODES and net.prefixlen != 64:
        raise NetworkError("--subnet6 %s: %s needs a /64 (SLAAC makes 64-bit interface ids)" % (net, m))
    gw = _address6("--gateway6", str(gateway6), net) if gateway6 else str(net.network_address + 1)
    dns = _address6("--dns-server6", str(dns_server6), net) if dns_server6 else str(net.network_address + 2)
    if gw == dns:
        raise NetworkError("--dns-server6 %s: the same as the gateway" % dns)
    return str(net), gw, dns, m


def validate_network(uuid: object, subnet: object, name: object = None, gateway: object = None, dns_server: object = None,
                     dhcp: bool = True, mtu: object = None, domain: object = None,
                     host_routes: list[HostRoute] | None = None, subnet6: object = None, gateway6: object = None,
                     dns_server6: object = None, ipv6_mode: object = None) -> Network:  # fmt: skip
    """A Network from what the user typed (host routes parsed by ``HostRoute.parse``)."""
    vn = network_uuid(uuid)
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
    v6 = _ipv6_subnet(subnet6, gateway6, dns_server6, ipv6_mode)
    return Network(vn, nm, str(net), gw, dns, bool(dhcp), n, dom, list(host_routes or []), *v6)


def network_uuid(value: object) -> str:
    return _uuid("vn-uuid", value, NetworkError)


@dataclass(frozen=True)
class RemoteRoute:
    """A VM of a network on another node, as its node published it."""

    vn_uuid: str
    address: str
    node: str
    node_ip: str  # that node's vhost0
    label: int  # the MPLS label its node gave it
    mac: str = ""
    port_uuid: str = ""


# -- link-local services ----------------------------------------------------------------------------


def _service_port(option: str, value: object) -> int:
    try:
        n = int(str(value))
    except ValueError:
        raise ServiceError("%s %r: not a port number" % (option, value)) from None
    if not 1 <= n <= 65535:
        raise ServiceError("%s %d: out of range 1..65535" % (option, n))
    return n


def validate_service(raw: dict[str, Any]) -> LinkLocalService:
    """A service from global-vrouter-config's field names (or provision_linklocal.py's)."""
    a = {k.lstrip("-").lower(): v for k, v in raw.items() if v is not None}
    name = str(a.get("linklocal_service_name") or "").strip()
    if not name:
        raise ServiceError("--linklocal_service_name is required")
    try:
        ip = ipaddress.IPv4Address(str(a.get("linklocal_service_ip", "")))
    except ValueError:
        raise ServiceError("--linklocal_service_ip %r: not an IPv4 address" % a.get("linklocal_service_ip")) from None
    if ip not in LINK_LOCAL_NET:
        raise ServiceError("--linklocal_service_ip %s: not in 169.254.0.0/16" % ip)
    port = _service_port("--linklocal_service_port", a.get("linklocal_service_port", ""))
    fabric = a.get("ip_fabric_service_ip", a.get("ipfabric_service_ip", []))
    if isinstance(fabric, str):
        fabric = [fabric] if fabric else []
    if not isinstance(fabric, list | tuple):
        raise ServiceError("--ipfabric_service_ip %r: not a list of IP addresses" % (fabric,))
    fabric_ips = []
    for f in fabric:  # IPv4 for the VMs' IPv4 flows, IPv6 for their IPv6 ones (to the service's fe80::a9fe:x:y)
        try:
            fabric_ips.append(str(ipaddress.ip_address(str(f))))
        except ValueError:
            raise ServiceError("--ipfabric_service_ip %r: not an IP address" % f) from None
    dns = str(a.get("ip_fabric_dns_service_name", a.get("ipfabric_dns_service_name", "")) or "")
    if not fabric_ips and not dns:
        raise ServiceError("--ipfabric_service_ip or --ipfabric_dns_service_name is required")
    fport = _service_port("--ipfabric_service_port", a.get("ip_fabric_service_port", a.get("ipfabric_service_port", "")))
    return LinkLocalService(name, str(ip), port, tuple(fabric_ips), fport, dns)


def service_schema(s: LinkLocalService) -> dict[str, Any]:
    """A service as global-vrouter-config's linklocal_service_entry."""
    return {
        "linklocal_service_name": s.name,
        "linklocal_service_ip": s.ip,
        "linklocal_service_port": s.port,
        "ip_fabric_DNS_service_name": s.fabric_dns_name,
        "ip_fabric_service_ip": list(s.fabric_ips),
        "ip_fabric_service_port": s.fabric_port,
    }


def validate_services(entries: object) -> dict[str, LinkLocalService]:
    """A whole linklocal_service_entry list, all or nothing: by lowercased name."""
    if not isinstance(entries, list):
        raise ServiceError("linklocal_service_entry must be a list")
    new: dict[str, LinkLocalService] = {}
    used: dict[tuple[str, int], str] = {}
    for n, raw in enumerate(entries):
        if not isinstance(raw, dict):
            raise ServiceError("entry %d: not an object" % n)
        try:
            s = validate_service(raw)
        except ServiceError as e:
            raise ServiceError("entry %d: %s" % (n, e)) from None
        other = used.get((s.ip, s.port))
        if other is not None and other != s.name.lower():
            raise ServiceError("entry %d: %s:%d already used by service %r" % (n, s.ip, s.port, other))
        used[(s.ip, s.port)] = s.name.lower()
        new[s.name.lower()] = s
    return new


# -- who is behind a metadata IP ----------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """Who is behind a metadata IP: what the proxy signs for."""

    instance_uuid: str
    project_uuid: str
    vm_ip: str
    port_uuid: str
    vm_name: str = ""
    vif: int = 0


@dataclass(frozen=True)
class NovaAddress:
    """Where Nova's metadata API is: its fabric addresses (one picked at random per connection)."""

    ips: list[str]
    port: int
