"""A guest's instance as the Nova stand-in serves it, and what the verdict expects of its boot.

The record has the fields ``Topology.instances`` gives every instance of a lab (Nova's
``meta_data.json``, the port for ``network_data.json``), then what the user gave (``--instances``
entry, user data, keys), then the lab's additions: its own SSH key beside the user's
(``vrouter-lab``), and cloud-init's webhook reporting to the lab's collector in ``vendor_data2.json``
(so that the user's user data and ``vendor_data.json`` stay theirs; a ``cloud-init`` key the user
put in vendor_data2 is kept, both parts joined in a MIME multipart as cloud-init reads them).
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from typing import Any

from topology.model import VM, Net
from vrouter_lab.evidence import Expected

LAB_KEY_NAME = "vrouter-lab"


def reporting_config(endpoint: str) -> str:
    """The cloud-config that sends every cloud-init event to ``endpoint`` (webhook reporting)."""
    return "#cloud-config\nreporting:\n  vrouter-lab:\n    type: webhook\n    endpoint: %s\n    timeout: 5\n    retries: 3\n" % endpoint


def _multipart(*parts: str) -> str:
    msg = MIMEMultipart()
    for part in parts:
        sub = "cloud-config" if part.startswith("#cloud-config") else "x-shellscript" if part.startswith("#!") else "plain"
        msg.attach(MIMEText(part, sub, "utf-8"))
    return msg.as_string()


def with_reporting(vendor_data2: Any, endpoint: str) -> dict[str, Any]:
    """``vendor_data2`` (the user's, or None) with the lab's reporting added to its ``cloud-init``."""
    vd2 = dict(vendor_data2) if isinstance(vendor_data2, dict) else {}
    ours = reporting_config(endpoint)
    theirs = vd2.get("cloud-init")
    vd2["cloud-init"] = _multipart(theirs, ours) if isinstance(theirs, str) and theirs.strip() else ours
    return vd2


def user_data_field(data: bytes | str | None) -> str | dict[str, str] | None:
    """User data as the instances file holds it: text, or ``{"base64": ...}`` for bytes that are not."""
    if data is None or isinstance(data, str):
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode()}


def user_data_bytes(field: Any) -> bytes | None:
    if field is None:
        return None
    if isinstance(field, dict):
        return base64.b64decode(field["base64"])
    return str(field).encode()


def user_data_kind(data: bytes | None) -> str:
    if not data:
        return ""
    head = data[:4096].lstrip()
    if head.startswith(b"#cloud-config"):
        return "cloud-config"
    if head.startswith(b"#!"):
        return "script"
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if b"multipart/" in head.lower():
        return "multipart"
    return "other"


def record(vm: VM, net: Net, extra: dict[str, Any], user_data: bytes | str | None, keys: dict[str, str], lab_key: str,
           reports: str) -> dict[str, Any]:  # fmt: skip
    """The guest's instance for the Nova stand-in: the lab's fields, the user's ``extra``
    (an ``--instances`` entry), the user data and ``keys`` given, the lab's key and reporting
    (``lab_key`` "": not injected; ``reports``: the collector's URL for this instance)."""
    rec: dict[str, Any] = {
        "uuid": vm.instance_uuid, "name": vm.name, "hostname": vm.name, "project_id": uuid.UUID(vm.project_id).hex,
        "availability_zone": "nova", "launch_index": 0, "instance_type": "m1.small", "meta": {},
        "ip": vm.ip, "mac": vm.mac, "port_uuid": vm.port_uuid, "vn_uuid": vm.vn_uuid, "gateway": vm.gateway, "netmask": "255.255.255.0",
        "dns_server": net.dns_server, "mtu": 1500, "dhcp": True, "security_groups": ["default"], "public_keys": {},
        "ip6": vm.ipv6, "ipv6_mode": net.ipv6_mode, "ipv6_prefix": net.subnet6, "ipv6_gateway": net.gateway6, "ipv6_dns_server": net.dns_server6,
    }  # fmt: skip
    rec.update(extra)
    if user_data is not None:
        rec["user_data"] = user_data_field(user_data)
    rec["public_keys"] = {**(rec.get("public_keys") or {}), **keys}
    if lab_key:
        rec["public_keys"][LAB_KEY_NAME] = lab_key
    rec["vendor_data2"] = with_reporting(rec.get("vendor_data2"), reports)
    return rec


def expected(rec: dict[str, Any], datasource: str, config_drive: str, boot: str, peer6: str = "") -> Expected:
    """``peer6``: an IPv6 address the guest should reach ("": IPv6 not judged)."""
    data = user_data_bytes(rec.get("user_data"))
    return Expected(
        ipv6=str(rec.get("ip6") or "") if peer6 else "",
        ipv6_peer=peer6,
        hostname=str(rec.get("hostname") or rec.get("name") or ""),
        keys=[str(k) for k in (rec.get("public_keys") or {}).values()],
        user_data_sha256=hashlib.sha256(data).hexdigest() if data is not None else "",
        user_data_kind=user_data_kind(data),
        datasource=datasource,
        config_drive=config_drive,
        boot=boot,
    )
