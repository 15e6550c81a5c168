"""VM ports: what vrouter-port-control tells the agent, validated and persisted one file per port.

Like the real agent's port files, each plugged port is a JSON file in
``<state>/ports/<uuid>.json``, written atomically, so a restarted agent plugs
the same ports again with the same vif index and VRF.
"""

from __future__ import annotations

import ipaddress
import os
import re
import uuid as uuidlib
from dataclasses import asdict, dataclass, fields

from dataplane.core.vif import FIRST_VM_VIF, metadata_ip, metadata_ip6
from vrouter.agent.store import read_json, write_json_atomic

_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


class PortError(ValueError):
    """A port request is wrong; the message names the field."""


@dataclass
class Port:
    uuid: str
    instance_uuid: str
    vn_uuid: str
    vm_project_uuid: str
    ip_address: str
    mac: str
    tap_name: str
    vm_name: str = ""
    ipv6_address: str = ""
    vif: int = 0  # assigned by the agent
    vrf: int = 0  # assigned by the agent, one per virtual network

    @property
    def metadata_ip(self) -> str:
        return metadata_ip(self.vif)

    @property
    def metadata_ip6(self) -> str:
        return metadata_ip6(self.vif)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["metadata_ip"] = self.metadata_ip
        d["metadata_ip6"] = self.metadata_ip6
        return d


def _uuid(field: str, value: str) -> str:
    try:
        return str(uuidlib.UUID(str(value)))
    except (ValueError, AttributeError, TypeError):
        raise PortError("--%s %r: not a uuid" % (field.replace("_", "-"), value)) from None


def validate(raw: dict) -> Port:
    """A Port from request fields (names as vrouter-port-control's, dashes or underscores)."""
    args = {k.replace("-", "_"): v for k, v in raw.items() if v is not None}
    for required in ("uuid", "instance_uuid", "vn_uuid", "vm_project_uuid", "ip_address", "mac"):
        if not args.get(required):
            raise PortError("--%s is required" % required.replace("_", "-"))
    port_uuid = _uuid("uuid", args["uuid"])
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
            ip6 = str(ipaddress.IPv6Address(str(args["ipv6_address"])))
        except ValueError:
            raise PortError("--ipv6-address %r: not an IPv6 address" % args["ipv6_address"]) from None
    tap = args.get("tap_name") or "tap" + port_uuid[:11]
    if not _IFNAME.match(tap):
        raise PortError("--tap-name %r: not an interface name (1 to 15 characters)" % tap)
    unknown = set(args) - {f.name for f in fields(Port)}
    if unknown:
        raise PortError("unknown port fields: %s" % ", ".join(sorted(unknown)))
    return Port(
        uuid=port_uuid,
        instance_uuid=_uuid("instance_uuid", args["instance_uuid"]),
        vn_uuid=_uuid("vn_uuid", args["vn_uuid"]),
        vm_project_uuid=_uuid("vm_project_uuid", args["vm_project_uuid"]),
        ip_address=str(ip),
        mac=mac,
        tap_name=tap,
        vm_name=str(args.get("vm_name") or ""),
        ipv6_address=ip6,
    )


class PortTable:
    """Plugged ports, by uuid, with vif indices and VRFs, mirrored to disk."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.ports: dict[str, Port] = {}
        self.vrfs: dict[str, int] = {}
        self._by_vif: dict[int, Port] = {}

    def load(self) -> list[str]:
        """Read the port files; return one message per file that could not be used."""
        problems = []
        os.makedirs(self.directory, exist_ok=True)
        for name in sorted(os.listdir(self.directory)):
            if not name.endswith(".json"):
                continue
            path = os.path.join(self.directory, name)
            try:
                data = read_json(path)
                vif, vrf = int(data.pop("vif")), int(data.pop("vrf"))
                data.pop("metadata_ip", None)
                data.pop("metadata_ip6", None)
                port = validate(data)
                port.vif, port.vrf = vif, vrf
            except (OSError, ValueError, KeyError, TypeError) as e:
                problems.append("%s: %s" % (path, e))
                continue
            self.ports[port.uuid] = port
            self._by_vif[port.vif] = port
            self.vrfs.setdefault(port.vn_uuid, port.vrf)
        return problems

    def _vif_for(self, port: Port) -> int:
        old = self.ports.get(port.uuid)
        if old is not None:
            return old.vif
        n = FIRST_VM_VIF
        while n in self._by_vif:
            n += 1
        if n > 0xFFFF:
            raise PortError("no free vif index")
        return n

    def add(self, port: Port) -> Port:
        for other in self.ports.values():
            if other.uuid == port.uuid:
                continue
            if other.tap_name == port.tap_name:
                raise PortError("--tap-name %s: already used by port %s" % (port.tap_name, other.uuid))
            if other.vn_uuid == port.vn_uuid and other.ip_address == port.ip_address:
                raise PortError("--ip-address %s: already used by port %s in that network" % (port.ip_address, other.uuid))
        port.vif = self._vif_for(port)
        if port.vn_uuid not in self.vrfs:
            self.vrfs[port.vn_uuid] = max(self.vrfs.values(), default=0) + 1
        port.vrf = self.vrfs[port.vn_uuid]
        write_json_atomic(os.path.join(self.directory, port.uuid + ".json"), port.to_dict())
        self.ports[port.uuid] = port
        self._by_vif[port.vif] = port
        return port

    def remove(self, port_uuid: str) -> Port:
        key = _uuid("uuid", port_uuid)
        port = self.ports.pop(key, None)
        if port is None:
            raise PortError("--uuid %s: no such port" % key)
        self._by_vif.pop(port.vif, None)
        try:
            os.unlink(os.path.join(self.directory, key + ".json"))
        except FileNotFoundError:
            pass
        return port

    def by_vif(self, vif: int) -> Port | None:
        return self._by_vif.get(vif)
