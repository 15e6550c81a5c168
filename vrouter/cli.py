"""The ``vrouter`` command line.

    vrouter agent            run the agent and dataplane (in the compute namespace)
    vrouter nova-metadata    run the Nova-compatible metadata API
    vrouter port add|del|list
    vrouter linklocal add|del|list
    vrouter network add|del|list   a virtual network's IPAM (DHCP, DNS, gateway)
    vrouter flow -l          list the flow table
    vrouter vif --list       list the interfaces
    vrouter dropstats        drop counters by reason
    vrouter status           is the agent up, and how is it doing
    vrouter metadata log     what each instance asked the metadata service, and got
    vrouter metadata fault add|list|del   make the metadata path misbehave, per instance
    vrouter instance set     change an instance's metadata while its node runs
    vrouter vifdump -i N     the packets of one vif, printed or as pcap
    vrouter rt --dump VRF    the routes of a VRF (local VMs, and VMs on other nodes by tunnel)
    vrouter nh --list|--get ID   next hops (interfaces, tunnels)
    vrouter mpls --dump      MPLS labels to next hops

Every command but ``agent``, ``nova-metadata`` and ``instance`` acts on a running agent,
found through its state directory: ``--state-dir``, ``--prefix P`` for
``/run/vrouter/P`` (with ``--node I``: node I of a cluster), $VROUTER_STATE_DIR,
else the node whose namespace the command runs in (``P-compute``, ``P-computeI``),
else the one node that is up (see ``vrouter.tools.locate``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import ssl
import sys
import threading
from typing import Any

from dataplane.core.overlay import TUNNEL_NH_BASE
from vrouter import __version__, eventloop
from vrouter.agent.agent import AgentError, run_agent
from vrouter.agent.config import AgentConfig, ConfigError, load_config, parse_log_level
from vrouter.agent.control import AgentNotRunning, RequestFailed, call
from vrouter.agent.paths import StatePaths
from vrouter.agent.procinfo import alive
from vrouter.messages import (
    DropStatsRequest,
    FaultAdd,
    FaultDel,
    FaultList,
    LinkLocalAdd,
    LinkLocalDel,
    LinkLocalImport,
    LinkLocalList,
    MplsDump,
    NetworkAdd,
    NetworkDel,
    NetworkList,
    NhGet,
    NhList,
    PortAdd,
    PortDel,
    PortList,
    RouteDump,
    StatusRequest,
    VifList,
    to_json,
)
from vrouter.tools.dropstats import format_dropstats
from vrouter.tools.flow import NoTable
from vrouter.tools.locate import Ambiguous
from vrouter.tools.locate import state_dir as locate_state_dir
from vrouter.tools.overlay import format_mpls, format_nh, format_nh_list, format_rt
from vrouter.tools.status import format_status
from vrouter.tools.vif import format_vifs


class UsageError(Exception):
    pass


def _state_dir(args: argparse.Namespace, single_node: bool = True) -> str:
    return locate_state_dir(getattr(args, "state_dir", None), getattr(args, "prefix", None), single_node, getattr(args, "node", None))


def _print(data: Any, as_json: bool, text: str) -> None:
    if as_json:
        print(json.dumps(to_json(data), indent=2, sort_keys=True))
    else:
        print(text, end="" if text.endswith("\n") else "\n")


def _agent_call(args: argparse.Namespace, request: Any) -> Any:
    return call(StatePaths.of(_state_dir(args)).socket, request)


# -- agent and nova ---------------------------------------------------------------------------


def _setup_logging(level: int, log_file: str) -> None:
    handler: logging.Handler = logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def cmd_agent(args: argparse.Namespace) -> int:
    cfg = load_config(args.config) if args.config else AgentConfig()
    if args.log_level:
        cfg.log_level = parse_log_level("command line", "--log-level", args.log_level)
    _setup_logging(cfg.log_level, cfg.log_file)
    eventloop.run(run_agent(cfg, _state_dir(args, single_node=False), args.queue, args.nova_timeout, args.dns_interval))
    return 0


def cmd_nova(args: argparse.Namespace) -> int:
    from fabric.nova_metadata import InstanceStore, NovaMetadata, make_server

    _setup_logging(logging.DEBUG if args.verbose else logging.INFO, "")
    secret = args.secret
    if args.secret_file:
        try:
            with open(args.secret_file, encoding="utf-8") as f:
                secret = f.read().strip()
        except OSError as e:
            raise UsageError("--secret-file %s: %s" % (args.secret_file, e.strerror)) from None
    ctx = None
    if args.tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.tls_cert, args.tls_key or None)
        if args.tls_client_ca:
            ctx.load_verify_locations(args.tls_client_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
    store = InstanceStore(args.instances)
    if not store.loads:
        raise UsageError("--instances %s: %s" % (args.instances, store.error))
    try:
        server = make_server(args.listen, args.port, NovaMetadata(store, secret), ctx)
    except OSError as e:
        raise UsageError("cannot listen on %s:%d: %s" % (args.listen, args.port, e.strerror)) from None
    stopping = threading.Event()
    threading.Thread(target=store.watch, args=(stopping,), name="instances-watch", daemon=True).start()
    if args.etcd:
        store.follow([u.strip() for u in args.etcd.split(",") if u.strip()], args.etcd_prefix)

    def stop(*_: object) -> None:
        stopping.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    logging.getLogger("vrouter.nova").info("Nova-compatible metadata API on %s:%d", args.listen, args.port)
    server.serve_forever(poll_interval=0.2)
    server.server_close()
    return 0


# -- ports and link-local services -------------------------------------------------------------

PORT_FIELDS = ["uuid", "instance_uuid", "vn_uuid", "vm_project_uuid", "ip_address", "ipv6_address", "mac", "tap_name", "vm_name"]


def cmd_port(args: argparse.Namespace) -> int:
    if args.oper == "add":
        plugged = _agent_call(args, PortAdd(**{f: getattr(args, f) for f in PORT_FIELDS}))
        text = "port %s plugged as vif0/%d (%s, metadata IP %s)%s" % (
            plugged.uuid, plugged.vif, plugged.tap_name, plugged.metadata_ip,
            "" if plugged.tap_present else "; tap not present yet, plugged when it appears",
        )  # fmt: skip
        _print(plugged, args.json, text)
    elif args.oper in ("del", "delete"):
        if not args.uuid:
            raise UsageError("port del needs --uuid")
        gone = _agent_call(args, PortDel(args.uuid))
        _print(gone, args.json, "port %s unplugged (%d flow entries removed)" % (gone.uuid, gone.flows_removed))
    else:
        ports = _agent_call(args, PortList())
        rows = ["%-7s %-15s %-15s %-17s %-16s %-36s %s" % ("vif", "tap", "ip", "mac", "metadata ip", "instance", "vm")]
        for p in ports:
            rows.append("vif0/%-2d %-15s %-15s %-17s %-16s %-36s %s%s" % (
                p.vif, p.tap_name, p.ip_address, p.mac, p.metadata_ip, p.instance_uuid, p.vm_name, "" if p.tap_present else " (tap absent)",
            ))  # fmt: skip
        _print(ports, args.json, "\n".join(rows))
    return 0


def cmd_linklocal(args: argparse.Namespace) -> int:
    oper = args.oper or args.oper_flag or "list"
    if oper == "import":
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
        imported = _agent_call(args, LinkLocalImport(config))
        _print(imported, args.json, "%d link-local services now (%d flow entries removed)" % (imported.services, imported.flows_removed))
        return 0
    if oper == "export":
        entries = _agent_call(args, LinkLocalList())
        print(json.dumps({"linklocal_services": {"linklocal_service_entry": to_json(entries)}}, indent=2))
        return 0
    if oper == "add":
        changed = _agent_call(args, LinkLocalAdd(
            linklocal_service_name=args.name, linklocal_service_ip=args.ip, linklocal_service_port=args.port,
            ip_fabric_service_ip=args.fabric_ip or [], ip_fabric_service_port=args.fabric_port, ip_fabric_DNS_service_name=args.fabric_dns or "",
        ))  # fmt: skip
        _print(changed, args.json, "link-local service %s set" % changed.name)
    elif oper in ("del", "delete"):
        if not args.name:
            raise UsageError("linklocal del needs --linklocal_service_name NAME")
        changed = _agent_call(args, LinkLocalDel(args.name))
        _print(changed, args.json, "link-local service %s removed (%d flow entries removed)" % (changed.name, changed.flows_removed))
    else:
        entries = _agent_call(args, LinkLocalList())
        rows = ["%-20s %-22s %-30s" % ("name", "link-local", "fabric")]
        for s in entries:
            fabric = ",".join(s.ip_fabric_service_ip) or s.ip_fabric_DNS_service_name
            rows.append("%-20s %-22s %-30s" % (s.linklocal_service_name, "%s:%d" % (s.linklocal_service_ip, s.linklocal_service_port),
                                               "%s:%d" % (fabric, s.ip_fabric_service_port)))  # fmt: skip
        _print({"linklocal_services": {"linklocal_service_entry": entries}}, args.json, "\n".join(rows))
    return 0


def cmd_network(args: argparse.Namespace) -> int:
    if args.oper == "add":
        net = _agent_call(args, NetworkAdd(args.vn_uuid, args.subnet, args.name, args.gateway, args.dns_server, not args.no_dhcp, args.mtu,
                                           args.domain, args.host_route or []))  # fmt: skip
        _print(net, args.json, "network %s (%s) set: %s, gateway %s, service address %s" % (net.name, net.uuid, net.subnet, net.gateway,
                                                                                             net.dns_server))  # fmt: skip
    elif args.oper in ("del", "delete"):
        if not args.vn_uuid:
            raise UsageError("network del needs --vn-uuid")
        net = _agent_call(args, NetworkDel(args.vn_uuid))
        _print(net, args.json, "network %s (%s) removed" % (net.name, net.uuid))
    else:
        nets = _agent_call(args, NetworkList())
        rows = ["%-20s %-36s %-18s %-15s %-15s %-5s %s" % ("name", "uuid", "subnet", "gateway", "service", "vrf", "dhcp")]
        for n in nets:
            dhcp = "on" if n.dhcp else "off"
            rows.append("%-20s %-36s %-18s %-15s %-15s %-5d %s" % (n.name, n.uuid, n.subnet, n.gateway, n.dns_server, n.vrf, dhcp))
        _print(nets, args.json, "\n".join(rows))
    return 0


# -- inspection -------------------------------------------------------------------------------


def cmd_flow(args: argparse.Namespace) -> int:
    from vrouter.tools.flow import MatchError, entry_dict, follow, format_table, matches, open_table, parse_match

    terms = None
    if args.match:
        try:
            terms = parse_match(args.match)
        except MatchError as e:
            raise UsageError(str(e)) from None
    path = StatePaths.of(_state_dir(args)).flows
    if args.follow:
        return follow(path, 0.2, args.duration, args.json, terms, sys.stdout)
    if not (args.list or terms):
        raise UsageError("say what to do: flow -l, flow --match IP[:PORT] or flow -r (see vrouter flow --help)")
    table = open_table(path)
    try:
        entries = [e for e in table.dump() if terms is None or matches(e, terms)]
        tunnels = {}
        if any(e.src_nh >= TUNNEL_NH_BASE for e in entries):  # the table holds next hop ids: the agent knows their nodes
            try:
                tunnels = {nh.id: nh.dip for nh in call(StatePaths.of(_state_dir(args)).socket, NhList(), timeout=2) if nh.type == "Tunnel"}
            except (AgentNotRunning, RequestFailed):
                pass
        _print([entry_dict(e) for e in entries], args.json, format_table(table, entries, tunnels) if not args.json else "")
    finally:
        table.close()
    return 0


def cmd_vif(args: argparse.Namespace) -> int:
    vifs = _agent_call(args, VifList())
    if args.get is not None:
        vifs = [v for v in vifs if v.vif == args.get]
        if not vifs:
            raise UsageError("vif --get %d: no such interface" % args.get)
    _print(vifs if args.get is None else vifs[0], args.json, format_vifs(vifs))
    return 0


def cmd_dropstats(args: argparse.Namespace) -> int:
    drops = _agent_call(args, DropStatsRequest())
    _print(drops.counts, args.json, format_dropstats(drops))
    return 0


def cmd_rt(args: argparse.Namespace) -> int:
    table = _agent_call(args, RouteDump(args.dump))
    _print(table, args.json, format_rt(table))
    return 0


def cmd_nh(args: argparse.Namespace) -> int:
    if args.get is not None:
        nh = _agent_call(args, NhGet(args.get))
        _print(nh, args.json, format_nh(nh))
    else:
        nhs = _agent_call(args, NhList())
        _print(nhs, args.json, format_nh_list(nhs))
    return 0


def cmd_mpls(args: argparse.Namespace) -> int:
    labels = _agent_call(args, MplsDump())
    _print(labels, args.json, format_mpls(labels))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    st = _agent_call(args, StatusRequest())
    _print(st, args.json, format_status(st))
    return 0


# -- the metadata path ------------------------------------------------------------------------


def cmd_metadata(args: argparse.Namespace) -> int:
    from vrouter.tools.metadata import follow_log, format_faults, print_log

    if args.what == "log":
        if args.instance is not None and args.vif is not None:
            raise UsageError("log: --instance or --vif, not both")
        if args.duration is not None and not args.follow:
            raise UsageError("log: --duration goes with --follow")
        path = StatePaths.of(_state_dir(args)).socket

        def ask(query: Any) -> Any:
            return call(path, query)

        if args.follow:
            return follow_log(ask, args.instance, args.vif, args.json, args.duration, sys.stdout)
        return print_log(ask, args.instance, args.vif, args.json, sys.stdout)
    if args.oper == "add":
        rule = _agent_call(args, FaultAdd(
            args.instance, args.vif, args.all, args.path, args.status, args.delay, args.throttle, args.reset, args.drop, args.count,
            args.for_s, args.probability,
        ))  # fmt: skip
        _print(rule, args.json, "fault %d added\n%s" % (rule.id, format_faults([rule])))
    elif args.oper in ("del", "delete"):
        rule = _agent_call(args, FaultDel(args.id))
        _print(rule, args.json, "fault %d deleted (it applied %d times)" % (rule.id, rule.applied))
    else:
        rules = _agent_call(args, FaultList())
        _print(rules, args.json, format_faults(rules))
    return 0


def cmd_instance(args: argparse.Namespace) -> int:
    from vrouter.tools.instances import InstanceSetError, change_of, set_instance

    path = args.instances or StatePaths.of(_state_dir(args, single_node=True)).instances
    if not args.instances and not os.path.exists(path):  # a node of a cluster: Nova's file is the cluster's
        above = os.path.join(os.path.dirname(os.path.dirname(path)), "instances.json")
        path = above if os.path.exists(above) else path
    try:
        change = change_of(args.uuid, args.name, args.user_data, args.ssh_key, args.meta or [])
        inst, done = set_instance(path, change)
    except InstanceSetError as e:
        raise UsageError(str(e)) from None
    _print(inst, args.json, "instance %s (%s): %s set in %s" % (change.uuid, inst.get("name", ""), ", ".join(done), path))
    return 0


def cmd_vifdump(args: argparse.Namespace) -> int:
    from vrouter.tools.vifdump import run

    paths = StatePaths.of(_state_dir(args))

    def agent_alive() -> bool:
        try:
            with open(paths.pid) as f:
                return alive(int(f.read().strip()))
        except (OSError, ValueError):
            return False

    try:
        return run(lambda req: call(paths.socket, req), agent_alive, args.interface, args.write, args.count, args.duration, args.rewritten,
                   sys.stdout, sys.stderr)  # fmt: skip
    except ValueError as e:
        raise UsageError(str(e)) from None
    except OSError as e:
        raise UsageError("%s" % e) from None


# -- parser -----------------------------------------------------------------------------------


def _target_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("which agent")
    g.add_argument(
        "--state-dir",
        help="the agent's state directory (default: $VROUTER_STATE_DIR, else the node whose namespace this runs in, else the one node that is up)",
    )
    g.add_argument("-p", "--prefix", help="shorthand for --state-dir /run/vrouter/PREFIX (as netns_setup.sh --prefix)")
    g.add_argument("--node", type=_node_number, metavar="I", help="node I of a cluster of several (netns_setup.sh up --nodes K)")
    p.add_argument("--json", action="store_true", help="print JSON")


def _node_number(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 999:
        raise argparse.ArgumentTypeError("%r: a node number, 1 to 999" % text)
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vrouter", description="Tungsten Fabric vRouter compute node emulator.")
    parser.add_argument("--version", action="version", version="vrouter " + __version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    a = sub.add_parser("agent", help="run the agent and dataplane in the foreground (in the compute namespace)",
                       description="Run the vRouter agent: dataplane (NFQUEUE), flow table, metadata proxy (in a "
                       "process of its own, restarted if it dies) and control socket, until SIGTERM or SIGINT. "
                       "Run it inside the compute namespace.")  # fmt: skip
    a.add_argument("--config", help="agent.conf (INI like contrail-vrouter-agent.conf)")
    a.add_argument("--state-dir", help="where ports, services, the flow table and the control socket live")
    a.add_argument("-p", "--prefix", help="shorthand for --state-dir /run/vrouter/PREFIX")
    a.add_argument("--queue", type=int, default=0, help="NFQUEUE number (default 0)")
    a.add_argument("--nova-timeout", type=float, default=30.0, help="seconds without data from Nova before 502 (default 30)")
    a.add_argument("--dns-interval", type=float, default=900.0, help="seconds between re-resolving fabric DNS names (default 900)")
    a.add_argument("--log-level", help="override [DEFAULT] log_level (DEBUG, INFO, SYS_NOTICE, ...)")
    a.set_defaults(func=cmd_agent)

    n = sub.add_parser("nova-metadata", help="run a Nova-compatible metadata API",
                       description="Serve instances from a JSON file the way nova-api-metadata does behind a proxy.")  # fmt: skip
    n.add_argument("--instances", required=True, help="JSON file of instances")
    n.add_argument("--listen", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    n.add_argument("--port", type=int, default=8775, help="port (default 8775)")
    n.add_argument("--secret", default="", help="metadata_proxy_shared_secret (default empty)")
    n.add_argument("--secret-file", help="read the shared secret from this file")
    n.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM)")
    n.add_argument("--tls-key", help="its private key")
    n.add_argument("--tls-client-ca", help="require client certificates signed by this CA")
    n.add_argument("--etcd", metavar="URL[,URL]", help="also serve the instances other labs of the cloud keep in this etcd (PREFIX/instances/UUID)")
    n.add_argument("--etcd-prefix", default="/vrouter/", metavar="PREFIX", help="their key prefix (default /vrouter/)")
    n.add_argument("-v", "--verbose", action="store_true", help="log every request")
    n.set_defaults(func=cmd_nova)

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
    _target_args(p)
    p.set_defaults(func=cmd_port)

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
    _target_args(ll)
    ll.set_defaults(func=cmd_linklocal)

    nw = sub.add_parser("network", help="configure virtual networks (their subnet, gateway, DHCP and DNS)",
                        description="Give the agent a virtual network's IPAM, as the controller would: what its DHCP, DNS, ARP "
                        "and ICMP answers for the network's ports come from. Defaults: the gateway is the subnet's first address "
                        "plus one, the service address (DHCP server, DNS) plus two.")  # fmt: skip
    nw.add_argument("oper", choices=["add", "del", "delete", "list"])
    nw.add_argument("--vn-uuid", "--vn_uuid", dest="vn_uuid", help="virtual network uuid (the ports' --vn-uuid)")
    nw.add_argument("--subnet", help="IPv4 subnet, e.g. 10.1.1.0/24")
    nw.add_argument("--name", help="network name")
    nw.add_argument("--gateway", help="default gateway (default: the subnet's first address + 1)")
    nw.add_argument("--dns-server", "--dns_server", dest="dns_server", help="service address: DHCP server and DNS (default: first + 2)")
    nw.add_argument("--no-dhcp", action="store_true", help="the agent answers no DHCP in this network")
    nw.add_argument("--mtu", help="interface MTU sent in DHCP (option 26) and router advertisements (default: none)")
    nw.add_argument("--domain", help="DNS domain of its instances and DHCP option 15 (default: [SERVICES] dns_domain)")
    nw.add_argument("--host-route", "--host_route", dest="host_route", action="append", metavar="PREFIX/LEN via NEXTHOP",
                    help="a route for DHCP's classless static routes (repeatable)")  # fmt: skip
    _target_args(nw)
    nw.set_defaults(func=cmd_network)

    f = sub.add_parser("flow", help="inspect the flow table", description="Inspect the live flow table.")
    f.add_argument("-l", "--list", action="store_true", help="list every active flow")
    f.add_argument("--match", metavar="IP[:PORT]", help="only flows with this endpoint; terms joined by & must all match")
    f.add_argument("-r", "--follow", action="store_true", help="print new flows as they are set up, until Ctrl-C")
    f.add_argument("--duration", type=float, help="with -r: stop after this many seconds")
    _target_args(f)
    f.set_defaults(func=cmd_flow)

    v = sub.add_parser("vif", help="list the vRouter interfaces", description="List the vRouter interfaces.")
    g = v.add_mutually_exclusive_group(required=True)
    g.add_argument("--list", action="store_true", help="every interface")
    g.add_argument("--get", type=int, metavar="N", help="interface vif0/N")
    _target_args(v)
    v.set_defaults(func=cmd_vif)

    d = sub.add_parser("dropstats", help="drop counters by reason", description="Dropped packets, by reason.")
    _target_args(d)
    d.set_defaults(func=cmd_dropstats)

    rt = sub.add_parser("rt", help="the routes of a VRF (rt --dump VRF)", description="The routing table of a VRF: local VMs and, through "
                        "tunnels, the VMs of its network on other nodes.")  # fmt: skip
    rt.add_argument("--dump", type=int, required=True, metavar="VRF", help="the VRF (vrouter network list shows each network's)")
    _target_args(rt)
    rt.set_defaults(func=cmd_rt)

    nh = sub.add_parser("nh", help="next hops (nh --list, nh --get ID)", description="Next hops: VM interfaces (Encap), tunnels to other "
                        "nodes (Tunnel, MPLS over UDP), vhost0 (Receive), Drop.")  # fmt: skip
    g = nh.add_mutually_exclusive_group(required=True)
    g.add_argument("--list", action="store_true", help="every next hop")
    g.add_argument("--get", type=int, metavar="ID", help="next hop ID")
    _target_args(nh)
    nh.set_defaults(func=cmd_nh)

    mp = sub.add_parser("mpls", help="MPLS labels and their next hops (mpls --dump)", description="The MPLS input label map: each local VM "
                        "interface's label and its next hop.")  # fmt: skip
    mp.add_argument("--dump", action="store_true", required=True, help="every label")
    _target_args(mp)
    mp.set_defaults(func=cmd_mpls)

    s = sub.add_parser("status", help="is the agent running", description="The running agent's state.")
    _target_args(s)
    s.set_defaults(func=cmd_status)

    _metadata_parsers(sub)

    ins = sub.add_parser("instance", help="change an instance's metadata while its node runs",
                         description="Edit the instances file that vrouter nova-metadata serves (atomic replace): the next metadata "
                         "request sees the change.")  # fmt: skip
    ins.add_argument("oper", choices=["set"])
    ins.add_argument("--uuid", required=True, help="the instance's uuid")
    ins.add_argument("--name", help="its name (and hostname)")
    ins.add_argument("--user-data", "--user_data", dest="user_data", metavar="FILE", help="its user data, from FILE")
    ins.add_argument("--ssh-key", "--ssh_key", dest="ssh_key", metavar="FILE", help="its public key (public_keys.default), from FILE")
    ins.add_argument("--meta", action="append", metavar="KEY=VALUE", help="set a metadata item (repeatable)")
    ins.add_argument("--instances", metavar="FILE", help="the instances file (default: the node's, STATE_DIR/instances.json)")
    _target_args(ins)
    ins.set_defaults(func=cmd_instance)

    vd = sub.add_parser("vifdump", help="the packets of one vif, printed or as pcap",
                        description="Packets of vif N as the dataplane sees them (both directions, and the agent's ARP, DHCP, DNS "
                        "and ping answers), printed one a line or written as pcap; until -c packets, --duration seconds or Ctrl-C. "
                        "A reader too slow for the dataplane loses packets (counted at the end); it never slows the VMs.")  # fmt: skip
    vd.add_argument("-i", "--interface", type=int, required=True, metavar="N", help="vif0/N")
    vd.add_argument("-w", "--write", metavar="FILE", help="write pcap to FILE (- for stdout) instead of printing")
    vd.add_argument("-c", "--count", type=int, help="stop after this many packets")
    vd.add_argument("--duration", type=float, metavar="S", help="stop after this many seconds")
    vd.add_argument("--rewritten", action="store_true", help="also each NAT packet as on the other side of its rewrite")
    _target_args(vd)
    vd.set_defaults(func=cmd_vifdump)
    return parser


def _metadata_parsers(sub: Any) -> None:
    m = sub.add_parser("metadata", help="the metadata path per instance: its journal, and faults to inject",
                       description="Read the metadata proxy's request journal, and inject faults into it.")  # fmt: skip
    msub = m.add_subparsers(dest="what", metavar="WHAT", required=True)
    lg = msub.add_parser("log", help="the requests each instance made and what it got",
                         description="The proxy's journal, oldest first: time, vif, instance, VM address, method, path, status, bytes "
                         "each way, Nova's and the whole request's milliseconds, and why the proxy answered itself (rate limit, "
                         "fault, timeout, bad request...). A ring per instance ([METADATA] metadata_journal_size).")  # fmt: skip
    who = lg.add_mutually_exclusive_group()
    who.add_argument("--instance", metavar="UUID", help="only this instance's requests")
    who.add_argument("--vif", type=int, metavar="N", help="only vif0/N's requests")
    lg.add_argument("-f", "--follow", action="store_true", help="then print new entries as they come, until Ctrl-C")
    lg.add_argument("--duration", type=float, metavar="S", help="with --follow: stop after S seconds")
    _target_args(lg)
    lg.set_defaults(func=cmd_metadata)

    fl = msub.add_parser("fault", help="inject faults into chosen instances' metadata requests",
                         description="Make the proxy misbehave for chosen requests, live: the next request sees a change. The first "
                         "rule (by id) that matches a request applies; every faulted request is marked in the journal.")  # fmt: skip
    fsub = fl.add_subparsers(dest="oper", metavar="OPER", required=True)
    add = fsub.add_parser("add", help="add a rule", description="Add a fault rule: whose requests, which paths, what happens, how long.")
    target = add.add_argument_group("whose requests (one of)")
    target.add_argument("--instance", metavar="UUID", help="one instance's")
    target.add_argument("--vif", type=int, metavar="N", help="vif0/N's")
    target.add_argument("--all", action="store_true", help="every instance's")
    add.add_argument("--path", default="/*", metavar="GLOB", help="request paths it applies to (default /*: all), e.g. '/openstack/*/user_data'")
    effect = add.add_argument_group("what happens (one of)")
    effect.add_argument("--status", type=int, metavar="CODE", help="answered by the proxy with CODE and a body like Nova's")
    effect.add_argument("--delay", type=float, metavar="SECONDS", help="the request waits SECONDS before it goes to Nova")
    effect.add_argument("--throttle", type=int, metavar="BYTES_PER_S", help="the answer's body at BYTES_PER_S")
    effect.add_argument("--reset", action="store_true", help="the connection is reset half-way through the answer's body")
    effect.add_argument("--drop", action="store_true", help="no answer: the connection hangs until the VM gives up (at most 600 s)")
    bound = add.add_argument_group("for how long (default: until deleted)")
    bound.add_argument("--count", type=int, metavar="N", help="the first N matching requests")
    bound.add_argument("--for", dest="for_s", type=float, metavar="SECONDS", help="SECONDS from now")
    bound.add_argument("--probability", type=float, metavar="P", help="each matching request with probability P")
    _target_args(add)
    ls = fsub.add_parser("list", help="the rules in force", description="The rules in force, how often each applied and what is left of it.")
    _target_args(ls)
    d = fsub.add_parser("del", aliases=["delete"], help="delete a rule", description="Delete a fault rule.")
    d.add_argument("id", type=int, help="the rule's ID (see fault list)")
    _target_args(d)
    fl.set_defaults(func=cmd_metadata)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except (AgentNotRunning, RequestFailed, AgentError, ConfigError, UsageError, NoTable, Ambiguous) as e:
        print("vrouter %s: %s" % (args.command, e), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
