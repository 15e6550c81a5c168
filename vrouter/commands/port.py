"""``vrouter port add|del|list``: plug, unplug and list VM ports, as vrouter-port-control does."""

from __future__ import annotations

import argparse
from typing import Any

from vrouter.commands.output import UsageError, emit
from vrouter.commands.target import add_target_args, agent_call
from vrouter.messages.control import PortAdd, PortDel, PortList, PortPlugged

PORT_FIELDS = ["uuid", "instance_uuid", "vn_uuid", "vm_project_uuid", "ip_address", "ipv6_address", "mac", "tap_name", "vm_name"]


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("port", help="plug, unplug and list VM ports (vrouter-port-control)",
                       description="Plug (add), unplug (del) or list VM ports of the running agent.")  # fmt: skip
    p.add_argument("oper", choices=["add", "del", "delete", "list"])
    p.add_argument("--uuid", help="port (VMI) uuid")
    p.add_argument("--instance-uuid", "--instance_uuid", dest="instance_uuid", help="instance uuid")
    p.add_argument("--vn-uuid", "--vn_uuid", dest="vn_uuid", help="virtual network uuid")
    p.add_argument("--vm-project-uuid", "--vm_project_uuid", dest="vm_project_uuid", help="project uuid")
    p.add_argument("--ip-address", "--ip_address", dest="ip_address", help="the port's IPv4 address")
    p.add_argument("--ipv6-address", "--ipv6_address", dest="ipv6_address", help="the port's IPv6 address (optional)")
    p.add_argument("--mac", help="the VM's MAC address")
    p.add_argument("--tap-name", "--tap_name", dest="tap_name", help="tap name (default tap + first 11 of --uuid)")
    p.add_argument("--vm-name", "--vm_name", dest="vm_name", help="VM name")
    add_target_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.oper == "add":
        plugged = agent_call(args, PortAdd(**{f: getattr(args, f) for f in PORT_FIELDS}))
        text = "port %s plugged as vif0/%d (%s, metadata IP %s)%s" % (
            plugged.uuid, plugged.vif, plugged.tap_name, plugged.metadata_ip,
            "" if plugged.tap_present else "; tap not present yet, plugged when it appears",
        )  # fmt: skip
        emit(plugged, args.json, text)
    elif args.oper in ("del", "delete"):
        if not args.uuid:
            raise UsageError("port del needs --uuid")
        gone = agent_call(args, PortDel(args.uuid))
        emit(gone, args.json, "port %s unplugged (%d flow entries removed)" % (gone.uuid, gone.flows_removed))
    else:
        ports = agent_call(args, PortList())
        emit(ports, args.json, format_ports(ports))
    return 0


def format_ports(ports: list[PortPlugged]) -> str:
    rows = ["%-7s %-15s %-15s %-17s %-16s %-36s %s" % ("vif", "tap", "ip", "mac", "metadata ip", "instance", "vm")]
    for p in ports:
        rows.append("vif0/%-2d %-15s %-15s %-17s %-16s %-36s %s%s" % (
            p.vif, p.tap_name, p.ip_address, p.mac, p.metadata_ip, p.instance_uuid, p.vm_name, "" if p.tap_present else " (tap absent)",
        ))  # fmt: skip
    return "\n".join(rows)
