"""``python -m topology``: what ``scripts/netns_setup.sh`` runs.

netns_setup.sh up [--vms N] [--prefix P] [--secret S] [--tls] [--json]
netns_setup.sh down [--prefix P]
netns_setup.sh status [--prefix P]
netns_setup.sh stop-agent|start-agent|stop-nova|start-nova [--prefix P]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

from topology.lab import Lab, LabError
from topology.model import MAX_VMS, Topology
from vrouter.agent.control import AgentNotRunning, RequestFailed, call
from vrouter.messages import StatusRequest
from vrouter.tools.status import format_status

SCRIPT = os.environ.get("NETNS_SETUP", "netns_setup.sh")
COMMANDS = ["up", "down", "status", "stop-agent", "start-agent", "stop-nova", "start-nova"]
USAGE = __doc__.split("\n\n")[1].replace("netns_setup.sh", SCRIPT)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write("%s: %s\nusage:\n%s" % (SCRIPT, message, USAGE))
        sys.exit(2)


def parse(argv: list[str]) -> argparse.Namespace:
    ap = _Parser(prog=SCRIPT, add_help=False)
    ap.add_argument("command", nargs="?")
    ap.add_argument("--vms", default="2")
    ap.add_argument("--prefix", default="vr")
    ap.add_argument("--secret")
    ap.add_argument("--tls", action="store_true")
    ap.add_argument("--json", action="store_true")
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
    if not args.vms.isdigit() or not 1 <= int(args.vms) <= MAX_VMS:
        die("--vms %s: a number from 1 to %d" % (args.vms, MAX_VMS))
    if not re.fullmatch(r"[a-z][a-z0-9]{0,7}", args.prefix):
        die("--prefix %s: 1 to 8 lowercase letters and digits, starting with a letter" % args.prefix)
    return args


def die(message: str) -> None:
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
            layout = lab.up(Topology.plan(args.prefix, int(args.vms), lab.state, args.secret, args.tls))
            if args.json:
                print(json.dumps(layout, indent=2))
        elif args.command == "down":
            lab.down()
        elif args.command == "status":
            if not lab.is_up():
                print("prefix %s is not up" % args.prefix)
                return 1
            try:
                print(format_status(call(os.path.join(lab.state, "agent.sock"), StatusRequest())))
            except (AgentNotRunning, RequestFailed) as e:
                print("vrouter status: %s" % e, file=sys.stderr)
            pid = lab._pid("nova.pid")
            print("nova-metadata pid %d" % pid if pid else "nova-metadata not running")
        else:
            if not lab.is_up():
                die("prefix %s is not up (run: %s up --prefix %s)" % (args.prefix, SCRIPT, args.prefix))
            {"stop-agent": lab.stop_agent, "start-agent": lab.start_agent, "stop-nova": lab.stop_nova, "start-nova": lab.start_nova}[args.command]()
    except (LabError, AgentNotRunning, RequestFailed, OSError) as e:
        die(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
