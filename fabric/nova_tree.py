"""What Nova's metadata holds for an instance, as ``nova/api/metadata/base.py`` lays it out; the
metadata service (``fabric.nova_metadata``) and the config drive (``fabric.config_drive``) both
render from ``InstanceMetadata``, as Nova's do, so a file on the drive and the service's answer to
the same path are the same bytes wherever Nova's are.

The tree, from Nova's ``InstanceMetadata.lookup``:

* a path is ``posixpath.normpath``-ed first (``/openstack/latest/`` is ``/openstack/latest``);
  a path under neither ``openstack`` nor ``ec2`` is EC2's (``/latest/...`` is ``/ec2/latest/...``);
* ``/openstack``: the OpenStack versions up to today, then ``latest``; ``/openstack/V``: the
  version's files (``meta_data.json``, ``user_data`` when set, ``password`` from 2013-04-04,
  ``vendor_data.json`` from 2013-10-17, ``network_data.json`` from 2015-10-15,
  ``vendor_data2.json`` from 2016-10-06); ``/openstack/V/version`` lists them too;
  ``password``, ``vendor_data.json`` and ``vendor_data2.json`` are 404 before their version,
  ``network_data.json`` and ``user_data`` are not gated; ``/openstack/content/NNNN``: an
  injected file, which only the config drive has (Nova's metadata service has no record of them);
* ``meta_data.json``: ``uuid``, ``meta`` (when not empty), ``files`` (the drive's injected files),
  ``admin_pass``, ``public_keys``/``keys`` (when the instance has a key), ``hostname``, ``name``,
  ``launch_index``, ``availability_zone``; ``random_seed`` from 2013-04-04, ``project_id`` from
  2015-10-15, ``devices`` from 2016-06-30, ``dedicated_cpus`` from 2020-10-14;
* EC2 (``/V/meta-data/...``, ``/V/user-data``): the keys of each EC2 version, ``public-keys``
  only when the instance has a key (listed as ``0=name``).

Where this stand-in departs from Nova (a choice, not an oversight): ``random_seed`` is 512 bytes
derived from the uuid rather than from os.urandom, so answers repeat; ``admin_pass`` is in the
service's ``meta_data.json`` as well as on the drive (Nova puts it on the drive only); the hostname
has no ``dhcp_domain`` (Nova's default appends ``.novalocal``); an instance may have several keys.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import os
import posixpath
import time
from collections.abc import Iterator
from dataclasses import dataclass

EC2_VERSIONS = [
    "1.0", "2007-01-19", "2007-03-01", "2007-08-29", "2007-10-10", "2007-12-15",
    "2008-02-01", "2008-09-01", "2009-04-04",
]  # fmt: skip
FOLSOM, GRIZZLY, HAVANA, LIBERTY = "2012-08-10", "2013-04-04", "2013-10-17", "2015-10-15"
NEWTON_ONE, NEWTON_TWO, OCATA, ROCKY = "2016-06-30", "2016-10-06", "2017-02-22", "2018-08-27"
VICTORIA, EPOXY = "2020-10-14", "2025-04-04"
OPENSTACK_VERSIONS = [FOLSOM, GRIZZLY, HAVANA, LIBERTY, NEWTON_ONE, NEWTON_TWO, OCATA, ROCKY, VICTORIA, EPOXY]
# Nova's default ``[api] config_drive_skip_versions``: the drive's ec2/ holds 2009-04-04 and latest
CONFIG_DRIVE_SKIP_VERSIONS = EC2_VERSIONS[:-1]

MD_JSON, VD_JSON, VD2_JSON, NW_JSON = "meta_data.json", "vendor_data.json", "vendor_data2.json", "network_data.json"
UD_NAME, PASS_NAME, CONTENT_DIR = "user_data", "password", "content"
TEXT_PLAIN = "text/plain"
APPLICATION_JSON = "application/json"


class InvalidPath(Exception):
    """Nothing at this path (Nova: InvalidMetadataPath, a 404)."""


class Broken(Exception):
    """A path where Nova's own code raises (a TypeError), which its server answers with a 500."""


@dataclass(frozen=True)
class Password:
    """The ``password`` path: the handler answers it according to the method (GET, POST)."""

    version: str


@dataclass(frozen=True)
class Found:
    """What Nova's lookup returns: a listing (list), an EC2 directory (dict), a value (bytes, str,
    int) or the password path; ``mimetype`` as Nova sets it."""

    data: object
    mimetype: str = TEXT_PLAIN


def user_data(inst: dict) -> bytes | None:
    """The instance's user data as bytes (a string, or {"base64": ...}); None when it has none."""
    data = inst.get("user_data")
    if data is None:
        return None
    return data.encode() if isinstance(data, str) else base64.b64decode(data["base64"])


def injected_files(inst: dict) -> list[tuple[str, bytes]]:
    """The instance's injected files (``files``: [{"path", "contents": text or {"base64"}}])."""
    out = []
    for f in inst.get("files") or []:
        c = f["contents"]
        out.append((f["path"], c.encode() if isinstance(c, str) else base64.b64decode(c["base64"])))
    return out


def random_seed(uuid: str) -> str:
    """512 bytes, base64, like Nova's (which are os.urandom's): here derived from the uuid."""
    return base64.b64encode(hashlib.shake_256(b"random_seed " + uuid.encode()).digest(512)).decode()


# Neutron's ``ipv6_address_mode`` values; the record's "none" is a subnet without one
IPV6_MODES = ("none", "slaac", "dhcpv6-stateful", "dhcpv6-stateless")


def _dns_services(address: str | None) -> list[dict]:
    """Nova's ``_get_dns_services``: a subnet's ``dns_nameservers`` as services; here the one
    DNS server of the record (the subnet's service address), none when it has none."""
    return [{"type": "dns", "address": address}] if address else []


def _ipv6_network(inst: dict, net_id: str, link: str) -> dict:
    """The port's IPv6 network, as Nova's ``_get_nets(vif, subnet_v6, 6, ...)`` makes it: type
    ``ipv6_<ipv6_address_mode>`` when the subnet has a mode, else ``ipv6``; always with the
    port's address, the subnet's netmask (``str(subnet.as_netaddr().netmask)``, e.g.
    ``ffff:ffff:ffff:ffff::``), the default route ``::``/``::`` via the gateway
    (``_get_default_route``) and the subnet's DNS servers, keys in Nova's order."""
    mode = inst.get("ipv6_mode") or "none"
    if mode not in IPV6_MODES:
        raise ValueError(
            "instance %s: ipv6_mode %r is not one of %s (Neutron's ipv6_address_mode, or none): fix its record"
            % (inst.get("uuid", "?"), mode, ", ".join(IPV6_MODES))
        )
    # "none" is rendered as a subnet with enable_dhcp off. Nova says "ipv6_dhcp" (no address, no
    # routes) for a subnet without an address mode whose enable_dhcp is on or that has a
    # network:dhcp port; the record has neither fact for its IPv6 subnet, and its "none" stands
    # for a static one, so it is the static "ipv6" here.
    net_type = "ipv6" if mode == "none" else "ipv6_" + mode
    prefix = inst.get("ipv6_prefix") or "%s/64" % inst["ip6"]  # an old record: the /64 of the address
    gateway = inst.get("ipv6_gateway")
    return {
        "id": net_id,
        "type": net_type,
        "link": link,
        "ip_address": inst["ip6"],
        "netmask": str(ipaddress.IPv6Network(prefix, strict=False).netmask),
        # Nova appends the subnet's Neutron host_routes here; the record has none for IPv6
        "routes": [{"network": "::", "netmask": "::", "gateway": gateway}] if gateway else [],
        "network_id": inst.get("vn_uuid", ""),
        "services": _dns_services(inst.get("ipv6_dns_server")),
    }


def network_data(inst: dict) -> dict:
    """The port as Nova's ``nova/virt/netutils.py`` ``get_network_metadata`` describes it: the link
    (``tap`` + the first 11 of the port uuid, Nova's "phy" for a vRouter VIF, its MAC and MTU);
    then the networks, numbered ``network0``, ``network1`` in Nova's order, IPv4 first: IPv4 is
    ``ipv4_dhcp`` when the subnet has DHCP (as Nova 2024.1 and later say for a Neutron subnet
    with DHCP on), else ``ipv4`` with the fixed address, netmask, default route and DNS; IPv6
    (when the record has ``ip6``) is ``ipv6`` or ``ipv6_<mode>`` (``_ipv6_network``); the DNS
    services of both subnets, IPv4's first, each once.

    The link's MTU is the network's: Nova writes null there when a subnet has a ``network:dhcp``
    port (``_get_link_mtu``), which a vRouter's Neutron has not (the agent serves DHCP)."""
    ip, ip6 = inst.get("ip"), inst.get("ip6")
    if not ip and not ip6:
        return {"links": [], "networks": [], "services": []}
    link = "tap" + str(inst.get("port_uuid", ""))[:11]
    networks: list[dict] = []
    services: list[dict] = []
    if ip:
        dns = _dns_services(inst.get("dns_server"))
        net: dict = {"id": "network0", "link": link, "network_id": inst.get("vn_uuid", "")}
        if inst.get("dhcp"):
            net["type"] = "ipv4_dhcp"
        else:
            routes = [{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": inst["gateway"]}] if inst.get("gateway") else []
            net.update(type="ipv4", ip_address=ip, netmask=inst.get("netmask", "255.255.255.0"), routes=routes, services=dns)
        networks.append(net)
        services += _dns_services(inst.get("dns_server"))
    if ip6:
        networks.append(_ipv6_network(inst, "network%d" % len(networks), link))
        services += [s for s in _dns_services(inst.get("ipv6_dns_server")) if s not in services]
    return {
        "links": [
            {
                "id": link,
                "vif_id": inst.get("port_uuid", ""),
                "type": "phy",
                "mtu": inst.get("mtu", 1500),
                "ethernet_mac_address": inst.get("mac", ""),
            }
        ],
        "networks": networks,
        "services": services,
    }


def _dump(data: object) -> bytes:
    return json.dumps(data).encode()  # oslo's jsonutils.dump_as_bytes: json.dumps' defaults


def _at_least(required: str, requested: str, versions: list[str]) -> bool:
    return versions.index(requested) >= versions.index(required)


def ec2_md_print(data: object) -> bytes:
    """Nova's rendering of a lookup's result: a directory's keys sorted (a sub-directory with a
    ``/``, or its ``_name``), a list one item a line, a value as it is."""
    if isinstance(data, dict):
        lines = []
        for key in sorted(data):
            if key == "_name":
                continue
            value = data[key]
            lines.append(str(value["_name"]) if isinstance(value, dict) and "_name" in value else key + "/" if isinstance(value, dict) else key)
        return "\n".join(lines).encode()
    if isinstance(data, list):
        return "\n".join(data).encode()
    if isinstance(data, bytes):
        return data
    return str(data).encode()


def _find_path_in_tree(data: object, tokens: list[str]) -> object:
    """Nova's ``find_path_in_tree``, with its TypeErrors (a list "indexed" by one of its items, a
    value indexed by one more token) as Broken."""
    for i, token in enumerate(tokens):
        if isinstance(data, dict | list):
            if token not in data:
                raise InvalidPath("/".join(tokens[:i]))
            if isinstance(data, list):
                raise Broken("list indices must be integers or slices, not str")
            data = data[token]
        elif i != len(tokens) - 1:
            raise InvalidPath("/".join(tokens[:i]))
        else:
            raise Broken("%s is not subscriptable by a name" % type(data).__name__)
    return data


class InstanceMetadata:
    """One instance's metadata, as Nova's ``InstanceMetadata``: ``config_drive`` adds what Nova
    gives the drive only (the injected files); ``address`` is the requester's (the X-Forwarded-For
    the proxy sent), EC2's ``local-ipv4`` when the instance has no fixed address."""

    def __init__(self, inst: dict, *, address: str | None = None, config_drive: bool = False) -> None:
        self.inst = inst
        self.uuid: str = inst["uuid"]
        self.address = address
        self.userdata_raw = user_data(inst)
        self.content: dict[str, bytes] = {}
        self.files: list[dict[str, str]] = []
        if config_drive:
            for path, contents in injected_files(inst):
                key = "%04i" % len(self.content)
                self.files.append({"path": path, "content_path": "/%s/%s" % (CONTENT_DIR, key)})
                self.content[key] = contents
        self.extra_md = {"admin_pass": inst["admin_pass"]} if inst.get("admin_pass") else {}

    @property
    def hostname(self) -> str:
        return self.inst.get("hostname", self.inst.get("name", ""))

    @property
    def availability_zone(self) -> str:
        return self.inst.get("availability_zone", "nova")

    def meta_data(self, version: str) -> dict:
        """meta_data.json of OpenStack ``version`` (not "latest"), keys in Nova's order."""
        md: dict = {"uuid": self.uuid}
        if self.inst.get("meta"):
            md["meta"] = self.inst["meta"]
        if self.files:
            md["files"] = self.files
        md.update(self.extra_md)
        keys = self.inst.get("public_keys") or {}
        if keys:
            md["public_keys"] = dict(keys)
            md["keys"] = [{"name": k, "type": "ssh", "data": v} for k, v in keys.items()]
        md["hostname"] = self.hostname
        md["name"] = self.inst.get("name", "")
        md["launch_index"] = self.inst.get("launch_index", 0)
        md["availability_zone"] = self.availability_zone
        if _at_least(GRIZZLY, version, OPENSTACK_VERSIONS):
            md["random_seed"] = random_seed(self.uuid)
        if _at_least(LIBERTY, version, OPENSTACK_VERSIONS):
            md["project_id"] = self.inst.get("project_id", "")
        if _at_least(NEWTON_ONE, version, OPENSTACK_VERSIONS):
            md["devices"] = self.inst.get("devices", [])
        if _at_least(VICTORIA, version, OPENSTACK_VERSIONS):
            md["dedicated_cpus"] = []
        return md

    def vendor_data2(self) -> dict:
        """Nova's default providers: StaticJSON's data as ``static``; the record's ``vendor_data2``
        holds what DynamicJSON targets would add, by target name (a second ``static`` is dropped)."""
        out = {"static": self.inst.get("vendor_data", {})}
        out.update({k: v for k, v in (self.inst.get("vendor_data2") or {}).items() if k not in out})
        return out

    def ec2_metadata(self, version: str) -> dict:
        """EC2 version ``version``'s tree: {"meta-data": {...}, "user-data": bytes when set}."""
        if version == "latest":
            version = EC2_VERSIONS[-1]
        if version not in EC2_VERSIONS:
            raise InvalidPath(version)
        inst = self.inst
        md: dict = {
            "ami-id": inst.get("ami_id", "ami-00000001"),
            "ami-launch-index": inst.get("launch_index", 0),
            "ami-manifest-path": "FIXME",
            "instance-id": inst.get("ec2_id", "i-%08x" % int(hashlib.md5(self.uuid.encode()).hexdigest()[:7], 16)),
            "hostname": self.hostname,
            "local-ipv4": inst.get("ip") or self.address,
            "reservation-id": inst.get("reservation_id", "r-00000001"),
            "security-groups": list(inst.get("security_groups", ["default"])),
        }
        keys = inst.get("public_keys") or {}
        if keys:
            md["public-keys"] = {"%d" % i: {"_name": "%d=%s" % (i, name), "openssh-key": key} for i, (name, key) in enumerate(keys.items())}
        if _at_least("2007-01-19", version, EC2_VERSIONS):
            md.update({"local-hostname": self.hostname, "public-hostname": self.hostname, "public-ipv4": inst.get("floating_ip", "")})
        if _at_least("2007-08-29", version, EC2_VERSIONS):
            md["instance-type"] = inst.get("instance_type", "m1.small")
        if _at_least("2007-12-15", version, EC2_VERSIONS):
            md["block-device-mapping"] = {"ami": "vda", "root": "/dev/vda"}
        if _at_least("2008-02-01", version, EC2_VERSIONS):
            md["placement"] = {"availability-zone": self.availability_zone}
        if _at_least("2008-09-01", version, EC2_VERSIONS):
            md["instance-action"] = "none"
        data: dict = {"meta-data": md}
        if self.userdata_raw is not None:
            data["user-data"] = self.userdata_raw
        return data

    def version_files(self, version: str) -> list[str]:
        """What ``/openstack/<version>`` lists (Nova's ``_handle_version``)."""
        files = [MD_JSON] + ([UD_NAME] if self.userdata_raw is not None else [])
        for since, name in ((GRIZZLY, PASS_NAME), (HAVANA, VD_JSON), (LIBERTY, NW_JSON), (NEWTON_TWO, VD2_JSON)):
            if _at_least(since, version, OPENSTACK_VERSIONS):
                files.append(name)
        return files

    def _openstack_item(self, tokens: list[str]) -> Found:
        if tokens[0] == CONTENT_DIR:
            if len(tokens) != 2 or tokens[1] not in self.content:
                raise InvalidPath("/".join(tokens))
            return Found(self.content[tokens[1]])
        version = EPOXY if tokens[0] == "latest" else tokens[0]
        if version not in OPENSTACK_VERSIONS:
            raise InvalidPath(tokens[0])
        name = "/".join(tokens[1:]) or "version"
        if name == "version":
            return Found(self.version_files(version))
        if name == CONTENT_DIR:  # Nova calls _handle_content with the wrong arguments here
            raise Broken("_handle_content() takes 2 positional arguments but 3 were given")
        if name == MD_JSON:
            return Found(_dump(self.meta_data(version)), APPLICATION_JSON)
        if name == UD_NAME and self.userdata_raw is not None:
            return Found(self.userdata_raw)
        if name == NW_JSON:
            return Found(_dump(network_data(self.inst)))  # Nova leaves the mimetype text/plain here
        if name == PASS_NAME and _at_least(GRIZZLY, version, OPENSTACK_VERSIONS):
            return Found(Password(version))
        if name == VD_JSON and _at_least(HAVANA, version, OPENSTACK_VERSIONS):
            return Found(_dump(self.inst.get("vendor_data", {})), APPLICATION_JSON)
        if name == VD2_JSON and _at_least(NEWTON_TWO, version, OPENSTACK_VERSIONS):
            return Found(_dump(self.vendor_data2()), APPLICATION_JSON)
        raise InvalidPath(name)

    def lookup(self, path: str, today: str | None = None) -> Found:
        """Nova's ``InstanceMetadata.lookup``: InvalidPath (404) or Broken (500) when it fails."""
        path = posixpath.normpath("/" + path if path == "" or path[0] != "/" else path)
        tokens = path.split("/")[1:]
        if tokens[0] not in ("ec2", "openstack"):
            tokens = ["ec2"] if tokens[0] == "" else ["ec2"] + tokens
        if len(tokens) == 1:
            if tokens[0] == "openstack":
                today = today or time.strftime("%Y-%m-%d", time.gmtime())
                return Found([v for v in OPENSTACK_VERSIONS if v <= today] + ["latest"])
            return Found(EC2_VERSIONS + ["latest"])
        if tokens[0] == "openstack":
            return self._openstack_item(tokens[1:])
        return Found(_find_path_in_tree(self.ec2_metadata(tokens[1]), tokens[2:]))

    def metadata_for_config_drive(self) -> Iterator[tuple[str, bytes]]:
        """Every file of the config drive, as Nova's ``metadata_for_config_drive`` yields them."""
        for version in EC2_VERSIONS + ["latest"]:
            if version in CONFIG_DRIVE_SKIP_VERSIONS:
                continue
            data = self.ec2_metadata(version)
            if "user-data" in data:
                yield os.path.join("ec2", version, "user-data"), data["user-data"]
            for key in data["meta-data"].get("public-keys", {}).values():
                del key["_name"]
            yield os.path.join("ec2", version, "meta-data.json"), _dump(data["meta-data"])
        every = OPENSTACK_VERSIONS + ["latest"]
        for version in every:
            names = [MD_JSON] + ([UD_NAME] if self.userdata_raw is not None else [])
            names += [name for since, name in ((HAVANA, VD_JSON), (LIBERTY, NW_JSON), (NEWTON_TWO, VD2_JSON)) if _at_least(since, version, every)]
            for name in names:
                path = "openstack/%s/%s" % (version, name)
                yield path, ec2_md_print(self.lookup(path).data)
        for key, contents in self.content.items():
            yield "openstack/%s/%s" % (CONTENT_DIR, key), contents


def meta_data(inst: dict) -> dict:
    """The instance's meta_data.json of the latest version, as the metadata service serves it."""
    return InstanceMetadata(inst).meta_data(EPOXY)
