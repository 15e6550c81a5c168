"""``vrouter linklocal``: provision link-local services (provision_linklocal.py's options also
work), and export or import them all as global-vrouter-config JSON."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from vrouter.commands.output import UsageError, emit
from vrouter.commands.target import add_target_args, agent_call
from vrouter.messages.control import LinkLocalAdd, LinkLocalDel, LinkLocalEntry, LinkLocalImport, LinkLocalList
from vrouter.messages.wire import to_json


def add_parsers(sub: Any) -> None:
    ll = sub.add_parser("linklocal", help="add, remove and list link-local services",
                        description="Provision link-local services (provision_linklocal.py's options also work). "
                        "export prints them as global-vrouter-config JSON; import replaces them all from such a file.")  # fmt: skip
    ll.add_argument("oper", nargs="?", choices=["add", "del", "delete", "list", "export", "import"])
    ll.add_argument("file", nargs="?", help="with import: global-vrouter-config JSON file (- for stdin)")
    ll.add_argument("--oper", dest="oper_flag", choices=["add", "del", "list"], help="as provision_linklocal.py")
    ll.add_argument("--name", "--linklocal_service_name", dest="name", help="service name")
    ll.add_argument("--ip", "--linklocal_service_ip", dest="ip", help="link-local IP (169.254.0.0/16)")
    ll.add_argument("--port", "--linklocal_service_port", dest="port", help="link-local port")
    ll.add_argument("--fabric-ip", "--ipfabric_service_ip", dest="fabric_ip", action="append", help="fabric IP (repeatable)")
    ll.add_argument("--fabric-port", "--ipfabric_service_port", dest="fabric_port", help="fabric port")
    ll.add_argument("--fabric-dns", "--ipfabric_dns_service_name", dest="fabric_dns", help="fabric DNS name")
    add_target_args(ll)
    ll.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    oper = args.oper or args.oper_flag or "list"
    if oper == "import":
        return _import(args)
    if oper == "export":
        entries = agent_call(args, LinkLocalList())
        print(json.dumps({"linklocal_services": {"linklocal_service_entry": to_json(entries)}}, indent=2))
        return 0
    if oper == "add":
        changed = agent_call(args, LinkLocalAdd(
            linklocal_service_name=args.name, linklocal_service_ip=args.ip, linklocal_service_port=args.port,
            ip_fabric_service_ip=args.fabric_ip or [], ip_fabric_service_port=args.fabric_port, ip_fabric_DNS_service_name=args.fabric_dns or "",
        ))  # fmt: skip
        emit(changed, args.json, "link-local service %s set" % changed.name)
    elif oper in ("del", "delete"):
        if not args.name:
            raise UsageError("linklocal del needs --linklocal_service_name NAME")
        changed = agent_call(args, LinkLocalDel(args.name))
        emit(changed, args.json, "link-local service %s removed (%d flow entries removed)" % (changed.name, changed.flows_removed))
    else:
        entries = agent_call(args, LinkLocalList())
        emit({"linklocal_services": {"linklocal_service_entry": entries}}, args.json, format_services(entries))
    return 0


def _import(args: argparse.Namespace) -> int:
    if not args.file:
        raise UsageError("linklocal import needs a file of global-vrouter-config JSON (- for stdin)")
    try:
        text = sys.stdin.read() if args.file == "-" else open(args.file, encoding="utf-8").read()
        config = json.loads(text)
    except OSError as e:
        raise UsageError("%s: %s" % (args.file, e.strerror)) from None
    except ValueError as e:
        raise UsageError("%s: not JSON: %s" % (args.file, e)) from None
    if not isinstance(config, dict):
        raise UsageError("%s: not a global-vrouter-config (a JSON object)" % args.file)
    imported = agent_call(args, LinkLocalImport(config))
    emit(imported, args.json, "%d link-local services now (%d flow entries removed)" % (imported.services, imported.flows_removed))
    return 0


def format_services(entries: list[LinkLocalEntry]) -> str:
    rows = ["%-20s %-22s %-30s" % ("name", "link-local", "fabric")]
    for s in entries:
        fabric = ",".join(s.ip_fabric_service_ip) or s.ip_fabric_DNS_service_name
        rows.append("%-20s %-22s %-30s" % (s.linklocal_service_name, "%s:%d" % (s.linklocal_service_ip, s.linklocal_service_port),
                                           "%s:%d" % (fabric, s.ip_fabric_service_port)))  # fmt: skip
    return "\n".join(rows)
