"""``python -m topology``: what ``scripts/netns_setup.sh`` runs.

netns_setup.sh up [--vms N] [--networks K] [--nodes K [--etcd-tls]] [--etcd URL,... [--fabric-link NS]] [--flow-entries E] [--prefix P]
                  [--secret S] [--datapath nfqueue|ebpf] [--tls] [--dhcp] [--ipv6 MODE[,MODE...]] [--json]
                  [--join URL,... --node-id I --secret S [--fabric-link NS]]
                  [--etcd-ca CA_FILE [--etcd-cert CERT_FILE --etcd-key KEY_FILE]]   (an https:// --etcd or --join URL)
                  [--qemu M (--image FILE | --kernel K [--initrd I] [--append A]) [--accel auto|kvm|tcg] [--memory MIB]]
                  [--user-data FILE] [--ssh-key PUBKEY_FILE] [--instances FILE]
netns_setup.sh down [--node I] [--prefix P]
netns_setup.sh status [--prefix P]
netns_setup.sh stop-agent|start-agent [--node I] [--prefix P]
netns_setup.sh stop-nova|start-nova|stop-etcd|start-etcd [--prefix P]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import NoReturn

from infra.etcd_tls import EtcdTls
from infra.etcd_wire import is_client_url
from topology.lab import Lab, LabError
from topology.model import MAX_NODES, MAX_VMS, GuestBoot, Topology, check_instance_data
from vrouter.agent.control import AgentNotRunning, RequestFailed, call
from vrouter.messages.control import StatusRequest
from vrouter.tools.status import format_status

SCRIPT = os.environ.get("NETNS_SETUP", "netns_setup.sh")
COMMANDS = ["up", "down", "status", "stop-agent", "start-agent", "stop-nova", "start-nova", "stop-etcd", "start-etcd"]
USAGE = __doc__.split("\n\n")[1].replace("netns_setup.sh", SCRIPT)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write("%s: %s\nusage:\n%s" % (SCRIPT, message, USAGE))
        sys.exit(2)


def parse(argv: list[str]) -> argparse.Namespace:
    ap = _Parser(prog=SCRIPT, add_help=False)
    ap.add_argument("command", nargs="?")
    ap.add_argument("--vms", default="2")
    ap.add_argument("--networks", default="0")
    ap.add_argument("--nodes", default="1")
    ap.add_argument("--node", default="")
    ap.add_argument("--etcd", default="")
    ap.add_argument("--join", default="")
    ap.add_argument("--node-id", default="")
    ap.add_argument("--fabric-link", default="")
    ap.add_argument("--etcd-ca", default="")
    ap.add_argument("--etcd-cert", default="")
    ap.add_argument("--etcd-key", default="")
    ap.add_argument("--etcd-tls", action="store_true")
    ap.add_argument("--flow-entries", default="0")
    ap.add_argument("--datapath", default="nfqueue")
    ap.add_argument("--prefix", default="vr")
    ap.add_argument("--secret")
    ap.add_argument("--tls", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--dhcp", action="store_true")
    ap.add_argument("--ipv6", default="none")
    ap.add_argument("--qemu", default="0")
    ap.add_argument("--image", default="")
    ap.add_argument("--kernel", default="")
    ap.add_argument("--initrd", default="")
    ap.add_argument("--append", default="")
    ap.add_argument("--accel", default="auto")
    ap.add_argument("--memory", default="0")
    ap.add_argument("--user-data")
    ap.add_argument("--ssh-key")
    ap.add_argument("--instances")
    ap.add_argument("-h", "--help", action="store_true")
    args = ap.parse_args(argv)
    if args.help:
        sys.stdout.write("usage:\n" + USAGE)
        sys.exit(0)
    if args.command is None:
        sys.stderr.write("usage:\n" + USAGE)
        sys.exit(2)
    if args.command not in COMMANDS:
        ap.error("unknown command %s" % args.command)
    if not args.vms.isdigit() or not args.qemu.isdigit() or not 1 <= int(args.vms) + int(args.qemu) <= MAX_VMS:
        die("--vms %s --qemu %s: numbers, from 1 to %d VMs and guests in all" % (args.vms, args.qemu, MAX_VMS))
    if not args.networks.isdigit():
        die("--networks %s: a number of virtual networks (0 or absent: as many as the VMs need)" % args.networks)
    if not args.nodes.isdigit() or not 1 <= int(args.nodes) <= MAX_NODES:
        die("--nodes %s: a number of compute nodes, 1 to %d" % (args.nodes, MAX_NODES))
    if args.node and (not args.node.isdigit() or not 1 <= int(args.node) <= MAX_NODES):
        die("--node %s: a node number, 1 to %d" % (args.node, MAX_NODES))
    for option in ("etcd", "join"):
        for url in getattr(args, option).split(",") if getattr(args, option) else []:
            if not is_client_url(url.strip()):
                die("--%s %s: %r is not a URL such as http://10.10.0.1:2379" % (option, getattr(args, option), url))
    if not args.flow_entries.isdigit() or (int(args.flow_entries) and not 1024 <= int(args.flow_entries) <= 1 << 24):
        die("--flow-entries %s: each agent's flow table, 1024 to %d entries (default: the agent's, 524288)" % (args.flow_entries, 1 << 24))
    if args.node and args.command not in ("stop-agent", "start-agent", "down"):
        die("--node I goes with stop-agent, start-agent and down")
    if args.join:
        if args.etcd:
            die("--join URL is the cloud's etcd: no --etcd with it")
        if not args.node_id.isdigit() or not 2 <= int(args.node_id) <= 250 - int(args.nodes):
            die(
                "--join needs --node-id I: this lab's first node's number in the cloud, 2 to %d (its vhost0 is 10.10.0.(1+I))"
                % (250 - int(args.nodes))
            )
        if not args.secret:
            die("--join needs --secret S: the cloud's metadata secret (its first prefix's layout.json has it)")
        if int(args.qemu) or args.tls or args.instances:
            die("--join goes without --qemu, --tls and --instances for now")
    elif args.node_id:
        die("--node-id goes with --join URL")
    elif args.fabric_link and not args.etcd:
        die("--fabric-link NS goes with --join URL or --etcd URL (it is how the fabric reaches them)")
    check_etcd_tls(args)
    if not args.memory.isdigit() or (int(args.memory) and not 64 <= int(args.memory) <= 16384):
        die("--memory %s: MiB, from 64 to 16384" % args.memory)
    if int(args.qemu) == 0:
        for option in ("image", "kernel", "initrd", "append"):
            if getattr(args, option):
                die("--%s goes with --qemu M" % option)
    if not re.fullmatch(r"[a-z][a-z0-9]{0,7}", args.prefix):
        die("--prefix %s: 1 to 8 lowercase letters and digits, starting with a letter" % args.prefix)
    return args


def check_etcd_tls(args: argparse.Namespace) -> None:
    """--etcd-ca, --etcd-cert, --etcd-key with an https:// --etcd or --join (the files loaded, as
    the agents will load them); --etcd-tls for the lab's own etcd."""
    urls = [u.strip() for u in (args.join or args.etcd).split(",") if u.strip()]
    schemes = {u.split(":", 1)[0] for u in urls}
    given = ["--etcd-" + o for o in ("ca", "cert", "key") if getattr(args, "etcd_" + o)]
    option = "--join" if args.join else "--etcd"
    if args.etcd_tls and (urls or int(args.nodes) < 2):
        die("--etcd-tls goes with --nodes K (K from 2) and no --etcd or --join: the lab's own etcd over TLS (for a cloud's, --etcd-ca ...)")
    if schemes == {"http", "https"}:
        die("%s %s: http:// and https:// URLs mixed (one etcd cluster speaks one or the other)" % (option, ",".join(urls)))
    if given and "https" not in schemes:
        die("%s go with an https:// --etcd or --join URL" % " and ".join(given))
    if "https" in schemes and not args.etcd_ca:
        die("%s %s: https needs --etcd-ca FILE, the CA that signed etcd's certificate (and --etcd-cert, --etcd-key if etcd wants "
            "client certificates)" % (option, ",".join(urls)))  # fmt: skip
    if bool(args.etcd_cert) != bool(args.etcd_key):
        die("--etcd-cert and --etcd-key go together (the client certificate and its key)")
    if args.etcd_ca:
        for o in ("ca", "cert", "key"):
            if getattr(args, "etcd_" + o):
                setattr(args, "etcd_" + o, os.path.abspath(getattr(args, "etcd_" + o)))  # the agents run elsewhere
        try:
            EtcdTls(args.etcd_ca, args.etcd_cert, args.etcd_key).check()
        except ValueError as e:
            die("etcd TLS: %s" % e)


def _read(option: str, path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        die("%s %s: %s" % (option, path, e.strerror))
    except UnicodeDecodeError:
        die("%s %s: not UTF-8 text" % (option, path))


def plan(args: argparse.Namespace, state: str) -> Topology:
    """The node ``up`` builds, from its options."""
    try:
        topo = Topology.plan(args.prefix, int(args.vms), state, args.secret, args.tls, qemu=int(args.qemu), networks=int(args.networks),
                             nodes=int(args.nodes), ipv6=tuple(m.strip() for m in args.ipv6.split(",")))  # fmt: skip
    except ValueError as e:
        die(str(e))
    topo.flow_entries = int(args.flow_entries)
    if args.datapath not in ("nfqueue", "ebpf"):
        die("--datapath %s: nfqueue (every packet through the agent) or ebpf (live flows forwarded in the kernel)" % args.datapath)
    topo.datapath = args.datapath
    topo.etcd_servers = [u.strip().rstrip("/") for u in (args.join or args.etcd).split(",") if u.strip()]
    if args.etcd_ca:
        topo.etcd_tls = EtcdTls(args.etcd_ca, args.etcd_cert, args.etcd_key)
    elif args.etcd_tls:
        topo.own_etcd_tls()
    topo.fabric_link = args.fabric_link
    if args.join:
        topo.join, topo.node_base = True, int(args.node_id)
    topo.dhcp = args.dhcp
    topo.boot = GuestBoot(args.image, args.kernel, args.initrd, args.append, args.accel, int(args.memory))
    if args.user_data is not None:
        topo.user_data = _read("--user-data", args.user_data)
    if args.ssh_key is not None:
        key = _read("--ssh-key", args.ssh_key).strip()
        if not key.startswith(("ssh-", "ecdsa-", "sk-")) or "\n" in key:
            die("--ssh-key %s: not one OpenSSH public key (ssh-ed25519 AAAA... comment)" % args.ssh_key)
        topo.ssh_key = key
    if args.instances is not None:
        try:
            topo.instance_data = check_instance_data(json.loads(_read("--instances", args.instances)), args.instances)
        except ValueError as e:
            die(str(e))
        names = {vm.name for vm in topo.ports}
        unknown = set(topo.instance_data) - names
        if unknown:
            die("--instances %s: no instance %s (this node has %s)" % (args.instances, ", ".join(sorted(unknown)), ", ".join(sorted(names))))
    return topo


def die(message: str) -> NoReturn:
    sys.stderr.write("%s: %s\n" % (SCRIPT, message))
    sys.exit(1)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    if os.geteuid() != 0:
        die("needs root (network namespaces)")
    lab = Lab(args.prefix, script=SCRIPT)
    try:
        if args.command == "up":
            if lab.is_up():
                sys.stderr.write("%s\n" % lab.already_up())
                layout = lab.layout()
                if args.json and layout is not None:
                    print(json.dumps(layout, indent=2))
                return 0
            layout = lab.up(plan(args, lab.state))
            if args.json:
                print(json.dumps(layout, indent=2))
        elif args.command == "down":
            if args.node:
                lab.remove_node(int(args.node))
            else:
                lab.down()
        elif args.command == "status":
            if not lab.is_up():
                print("prefix %s is not up" % args.prefix)
                return 1
            nodes = lab.nodes()
            for n, namespace, state in nodes:
                if len(nodes) > 1:
                    print("node %d (%s):" % (n, namespace))
                try:
                    print(format_status(call(os.path.join(state, "agent.sock"), StatusRequest())))
                except (AgentNotRunning, RequestFailed) as e:
                    print("vrouter status: %s" % e, file=sys.stderr)
            if lab.pid("etcd.pid"):
                print("etcd pid %d" % lab.pid("etcd.pid"))
            pid = lab.pid("nova.pid")
            print("nova-metadata pid %d" % pid if pid else "nova-metadata not running")
            for g in (lab.layout() or {}).get("guests", []):
                pid = lab.pid("guests/%s.pid" % g["name"])
                state = "running (pid %d)" % pid if pid else "not running (its QEMU exited; see %s)" % lab.procs.path("guests/%s.log" % g["name"])
                print("guest %s %s %s, console %s" % (g["name"], g["ip"], state, g["console"]))
        else:
            if not lab.is_up():
                die("prefix %s is not up (run: %s up --prefix %s)" % (args.prefix, SCRIPT, args.prefix))
            if args.command == "stop-agent":
                lab.stop_agent(int(args.node or 1))
            elif args.command == "start-agent":
                lab.start_agent(int(args.node or 1))
            else:
                {"stop-nova": lab.stop_nova, "start-nova": lab.start_nova, "stop-etcd": lab.stop_etcd, "start-etcd": lab.start_etcd}[args.command]()
    except (LabError, AgentNotRunning, RequestFailed, OSError) as e:
        die(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
