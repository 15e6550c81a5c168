"""Link-local services: validated, keyed by name, persisted as global-vrouter-config JSON.

The file uses the schema's own field names::

    {"linklocal_services": {"linklocal_service_entry": [
        {"linklocal_service_name": "metadata", "linklocal_service_ip": "169.254.169.254",
         "linklocal_service_port": 80, "ip_fabric_DNS_service_name": "",
         "ip_fabric_service_ip": ["10.10.0.1"], "ip_fabric_service_port": 8775}]}}
"""

from __future__ import annotations

import ipaddress
import os

from dataplane.core.services import LinkLocalService
from vrouter.agent.store import read_json, write_json_atomic

LINK_LOCAL_NET = ipaddress.IPv4Network("169.254.0.0/16")


class ServiceError(ValueError):
    """A link-local service request is wrong; the message names the field."""


def _port(field: str, value: object) -> int:
    try:
        n = int(str(value))
    except ValueError:
        raise ServiceError("%s %r: not a port number" % (field, value)) from None
    if not 1 <= n <= 65535:
        raise ServiceError("%s %d: out of range 1..65535" % (field, n))
    return n


def validate(raw: dict) -> LinkLocalService:
    """A service from the schema's field names (or provision_linklocal.py's)."""
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
    port = _port("--linklocal_service_port", a.get("linklocal_service_port", ""))
    fabric = a.get("ip_fabric_service_ip", a.get("ipfabric_service_ip", []))
    if isinstance(fabric, str):
        fabric = [fabric] if fabric else []
    fabric_ips = []
    for f in fabric:
        try:
            fabric_ips.append(str(ipaddress.IPv4Address(str(f))))
        except ValueError:
            raise ServiceError("--ipfabric_service_ip %r: not an IPv4 address" % f) from None
    dns = str(a.get("ip_fabric_dns_service_name", a.get("ipfabric_dns_service_name", "")) or "")
    if not fabric_ips and not dns:
        raise ServiceError("--ipfabric_service_ip or --ipfabric_dns_service_name is required")
    fport = _port("--ipfabric_service_port", a.get("ip_fabric_service_port", a.get("ipfabric_service_port", "")))
    return LinkLocalService(name, str(ip), port, tuple(fabric_ips), fport, dns)


def to_schema(s: LinkLocalService) -> dict:
    return {
        "linklocal_service_name": s.name,
        "linklocal_service_ip": s.ip,
        "linklocal_service_port": s.port,
        "ip_fabric_DNS_service_name": s.fabric_dns_name,
        "ip_fabric_service_ip": list(s.fabric_ips),
        "ip_fabric_service_port": s.fabric_port,
    }


class ServiceTable:
    """Services by lowercased name; (ip, port) unique across names; mirrored to one JSON file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.services: dict[str, LinkLocalService] = {}

    def load(self) -> list[str]:
        if not os.path.exists(self.path):
            return []
        try:
            entries = read_json(self.path)["linklocal_services"]["linklocal_service_entry"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            return ["%s: %s" % (self.path, e)]
        problems = []
        for raw in entries:
            try:
                s = validate(raw)
            except ServiceError as e:
                problems.append("%s: %s" % (self.path, e))
                continue
            self.services[s.name.lower()] = s
        return problems

    def _save(self) -> None:
        entries = [to_schema(s) for s in sorted(self.services.values(), key=lambda s: s.name.lower())]
        write_json_atomic(self.path, {"linklocal_services": {"linklocal_service_entry": entries}})

    def add(self, service: LinkLocalService) -> LinkLocalService:
        for key, other in self.services.items():
            if key != service.name.lower() and (other.ip, other.port) == (service.ip, service.port):
                raise ServiceError(
                    "--linklocal_service_ip/--linklocal_service_port %s:%d: already used by service %r" % (service.ip, service.port, other.name)
                )
        self.services[service.name.lower()] = service
        self._save()
        return service

    def remove(self, name: str) -> LinkLocalService:
        s = self.services.pop(name.lower(), None)
        if s is None:
            raise ServiceError("--linklocal_service_name %s: no such service" % name)
        self._save()
        return s

    def replace_all(self, entries: list) -> list[LinkLocalService]:
        """Replace every service with ``entries`` (global-vrouter-config's linklocal_service_entry
        list), all or nothing: one bad entry changes nothing."""
        if not isinstance(entries, list):
            raise ServiceError("linklocal_service_entry must be a list")
        new: dict[str, LinkLocalService] = {}
        used: dict[tuple[str, int], str] = {}
        for n, raw in enumerate(entries):
            if not isinstance(raw, dict):
                raise ServiceError("entry %d: not an object" % n)
            try:
                s = validate(raw)
            except ServiceError as e:
                raise ServiceError("entry %d: %s" % (n, e)) from None
            other = used.get((s.ip, s.port))
            if other is not None and other != s.name.lower():
                raise ServiceError("entry %d: %s:%d already used by service %r" % (n, s.ip, s.port, other))
            used[(s.ip, s.port)] = s.name.lower()
            new[s.name.lower()] = s
        self.services = new
        self._save()
        return list(new.values())

    def metadata_service(self) -> LinkLocalService | None:
        for s in self.services.values():
            if s.is_metadata:
                return s
        return None
