"""``vrouter-lab``: boot cloud images on an emulated Tungsten Fabric compute node and judge the boot.

vrouter-lab check IMAGE [--user-data FILE] [--ssh-key PUBKEY_FILE] [--instances FILE] [--config-drive none|only|both]
                        [--expect-datasource NAME] [--timeout S] [--json FILE] [--junit FILE] [--keep] [--prefix P]
                        [--accel auto|kvm|tcg] [--memory MIB] [--kernel K [--initrd I] [--append A]] [--name NAME]
                        [--datapath nfqueue|ebpf] [--no-lab-key] [--no-ssh] [--ssh-user USER]
vrouter-lab check --matrix FILE [--parallel N] [--json DIR] [--junit FILE] [the options above, for every run]
vrouter-lab guest list|console|verdict|reboot|rebuild|remove [NAME] [--prefix P] ...
vrouter-lab up|down|status|stop-agent|start-agent|stop-nova|start-nova|stop-etcd|start-etcd ...   (as scripts/netns_setup.sh)

Exit status of check: 0 pass, 1 cloud-init reported errors or an expectation failed (or the image
cannot boot, or cloud-init did not finish in time), 2 degraded (warnings), 3 the node or QEMU could
not be started (not the image's fault); 1 also for wrong arguments.  See docs/image-testing.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import Iterator
from typing import Any, NoReturn

from fabric.nova_metadata import InstancesError, parse_instances
from topology.errors import LabError
from topology.model import check_instance_data
from vrouter.agent.control import AgentNotRunning, RequestFailed
from vrouter.model import IPV6_MODES
from vrouter_lab.api import CONFIG_DRIVE_MODES, Lab
from vrouter_lab.gather import CANCEL
from vrouter_lab.guest import GuestStartError, ImageError, check_image
from vrouter_lab.runs import Run, error_report, fitting_parallel, load_matrix, run_matrix, run_one, worst

PROG = "vrouter-lab"
TOPOLOGY_COMMANDS = ("up", "down", "status", "stop-agent", "start-agent", "stop-nova", "start-nova", "stop-etcd", "start-etcd")


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """Wrong arguments exit 1 (argparse's 2 would read as "degraded" to CI)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        die("%s: %s" % (self.prog, message))


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def die(message: str, code: int = 1) -> NoReturn:
    sys.stderr.write("%s: %s\n" % (PROG, message))
    sys.exit(code)


def _read(option: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise UsageError("--%s %s: %s" % (option.replace("_", "-"), path, e.strerror)) from None


def _guest_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("the guest (as netns_setup.sh up has them)")
    g.add_argument("--accel", default="auto", choices=["auto", "kvm", "tcg"], help="KVM where a KVM guest boots, else TCG (default auto)")
    g.add_argument("--memory", type=int, default=0, metavar="MIB", help="guest memory (default 1024 with an image)")
    g.add_argument("--kernel", metavar="K", help="boot this kernel directly (with the image as its disk)")
    g.add_argument("--initrd", metavar="I", help="with --kernel: its initrd")
    g.add_argument("--append", default="", metavar="A", help="with --kernel: its command line (console=ttyS0 added)")


def parser() -> argparse.ArgumentParser:
    ap = _Parser(prog=PROG, description="Boot cloud images on an emulated Tungsten Fabric compute node and judge the boot.",
                                 epilog="Also: %s (as scripts/netns_setup.sh). See docs/image-testing.md."
                                 % ", ".join(TOPOLOGY_COMMANDS))  # fmt: skip
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True)
    c = sub.add_parser("check", help="boot an image and give a verdict (exit 0 pass, 1 fail, 2 degraded, 3 could not start)",
                       description="Build a node (or use --prefix P's), boot IMAGE, wait until cloud-init has finished or the "
                       "timeout passes, judge the boot from the console, cloud-init's event reports, the node and SSH, print a "
                       "summary, write the reports, remove what it made (unless --keep).")  # fmt: skip
    c.add_argument("image", nargs="?", metavar="IMAGE", help="a qcow2 or raw cloud image (never written: the guest boots an overlay)")
    c.add_argument("--matrix", metavar="FILE", help="a matrix of images x user data x config drive (JSON or .toml); see the docs")
    c.add_argument("--parallel", type=int, metavar="N", help="with --matrix: guests at once (default: what the machine's cores and memory fit)")
    c.add_argument("--user-data", metavar="FILE", help="the instance's user data")
    c.add_argument("--ssh-key", metavar="PUBKEY_FILE", help="a public key for the instance (beside the lab's own)")
    c.add_argument(
        "--instances", metavar="FILE", help="the instance's data as netns_setup.sh --instances takes it (the entry of --name, or the only one)"
    )
    c.add_argument("--config-drive", default="none", choices=CONFIG_DRIVE_MODES,
                   help="none (the metadata service only), only (a config drive; the metadata service refuses the instance), both")  # fmt: skip
    c.add_argument("--expect-datasource", default="", metavar="NAME", help="fail unless cloud-init picks this datasource (ConfigDrive, OpenStack...)")
    c.add_argument("--timeout", type=float, default=900.0, metavar="S", help="seconds from power-on for cloud-init to finish (default 900)")
    c.add_argument("--json", metavar="FILE", help="write the report as JSON (with --matrix: a directory, one report a run)")
    c.add_argument("--junit", metavar="FILE", help="write JUnit XML (one test case per stage and per expectation)")
    c.add_argument("--keep", action="store_true", help="leave the node and the guest up (and print how to remove them)")
    c.add_argument("--prefix", metavar="P", help="use the node of prefix P, which is up already (only the guest is removed after)")
    c.add_argument("--name", metavar="NAME", help="the guest's name (default: the next guestN)")
    c.add_argument("--datapath", default="nfqueue", choices=["nfqueue", "ebpf"], help="the node's datapath, when check builds it")
    c.add_argument("--ipv6", choices=IPV6_MODES, metavar="MODE",
                   help="dual stack: the network's IPv6 address mode when check builds the node (none, slaac, dhcpv6-stateful, "
                   "dhcpv6-stateless; with --prefix, the node's own), and the verdict expects the guest to have its IPv6 address "
                   "and to reach the namespace VM over IPv6")  # fmt: skip
    c.add_argument("--no-lab-key", action="store_true", help="do not inject the lab's own SSH key (no SSH checks then)")
    c.add_argument("--no-ssh", action="store_true", help="judge without logging in (console, reports and the node only)")
    c.add_argument("--ssh-user", default="", metavar="USER", help="log in as USER (default: the user cloud-init put the keys on)")
    _guest_args(c)
    c.set_defaults(func=cmd_check)

    g = sub.add_parser("guest", help="the guests vrouter-lab booted: list, console, verdict, reboot, rebuild, remove")
    gsub = g.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, text in (("list", "the guests and their boots"), ("console", "print a guest's console of this boot"),
                       ("verdict", "wait for cloud-init on the guest's current boot and judge it"),
                       ("reboot", "reboot a guest as Nova does (the ACPI power button; --hard: at once): the same instance boots again"),
                       ("rebuild", "rebuild a guest as Nova does: the same uuid, a fresh disk, cloud-init runs as on a first boot"),
                       ("remove", "stop and remove a guest (its port, instance, disk)")):  # fmt: skip
        a = gsub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        if name != "list":
            a.add_argument("name", metavar="NAME")
        a.add_argument("--prefix", default="vr", metavar="P", help="the lab (default vr)")
        if name in ("reboot", "rebuild", "verdict"):
            if name != "verdict":
                a.add_argument("--no-wait", action="store_true", help="return once the guest is powered on again (no verdict)")
            a.add_argument("--timeout", type=float, default=900.0, metavar="S", help="seconds from power-on for cloud-init (default 900)")
            a.add_argument("--json", metavar="FILE", help="write the verdict's report as JSON")
            a.add_argument("--junit", metavar="FILE", help="write the verdict as JUnit XML")
            a.add_argument("--no-ssh", action="store_true", help="judge without logging in")
        if name == "reboot":
            a.add_argument("--hard", action="store_true", help="no power button: QEMU stopped and started at once")
        if name == "rebuild":
            a.add_argument("--user-data", metavar="FILE", help="the instance's new user data")
            a.add_argument("--image", metavar="FILE", help="rebuild from another image")
        a.set_defaults(func=cmd_guest)
    return ap


def _write_reports(reports: list[dict[str, Any]], json_path: str | None, junit_path: str | None, matrix: bool) -> None:
    from vrouter_lab.report import junit, to_json

    if json_path:
        if matrix:
            os.makedirs(json_path, exist_ok=True)
            for r in reports:
                with open(os.path.join(json_path, "%s.json" % (r["instance"].get("label") or r["instance"].get("name"))), "w") as f:
                    f.write(to_json(r))
            with open(os.path.join(json_path, "matrix.json"), "w") as f:
                json.dump([{"label": r["instance"].get("label"), "status": r["status"], "exit_code": r["exit_code"], "reason": r.get("reason", "")}
                           for r in reports], f, indent=2)  # fmt: skip
        else:
            with open(json_path, "w") as f:
                f.write(to_json(reports[0]))
    if junit_path:
        with open(junit_path, "w") as f:
            f.write(junit(reports))


def _base_run(args: argparse.Namespace) -> Run:
    if args.name is not None and not re.fullmatch(r"[a-z][a-z0-9-]{0,30}", args.name):
        raise UsageError("--name %s: 1 to 31 lowercase letters, digits and dashes, starting with a letter (a host name)" % args.name)
    if args.initrd and not args.kernel:
        raise UsageError("--initrd goes with --kernel")
    if args.timeout <= 0:
        raise UsageError("--timeout %s: seconds, above 0" % args.timeout)
    if args.memory and not 64 <= args.memory <= 16384:
        raise UsageError("--memory %d: MiB, from 64 to 16384" % args.memory)
    run = Run(image="", config_drive=args.config_drive, expect_datasource=args.expect_datasource, timeout=args.timeout, name=args.name,
              kernel=args.kernel, initrd=args.initrd, append=args.append, memory=args.memory, accel=args.accel, lab_key=not args.no_lab_key,
              ssh=not args.no_ssh, ssh_user=args.ssh_user, keep=args.keep, expect_ipv6=bool(args.ipv6))  # fmt: skip
    if args.user_data:
        run.user_data, run.user_data_name = _read("user_data", args.user_data), args.user_data
    if args.ssh_key:
        key = _read("ssh_key", args.ssh_key).decode("utf-8", "replace").strip()
        if not key.startswith(("ssh-", "ecdsa-", "sk-")) or "\n" in key:
            raise UsageError("--ssh-key %s: not one OpenSSH public key (ssh-ed25519 AAAA... comment)" % args.ssh_key)
        run.ssh_key = key
    if args.instances:
        try:
            data = check_instance_data(json.loads(_read("instances", args.instances)), args.instances)
        except ValueError as e:
            raise UsageError(str(e)) from None
        entry = data.get(args.name or "guest1") or (next(iter(data.values())) if len(data) == 1 else None)
        if entry is None:
            raise UsageError("--instances %s: no entry for %s (name it with --name, or give one entry)" % (args.instances, args.name or "guest1"))
        try:  # as the Nova stand-in will read it
            parse_instances(json.dumps({"instances": [dict(entry, uuid="00000000-0000-4000-8000-000000000000")]}))
        except InstancesError as e:
            raise UsageError("--instances %s: %s" % (args.instances, str(e).split(": ", 1)[-1])) from None
        run.instance = dict(entry)
    return run


def cmd_check(args: argparse.Namespace) -> int:
    if bool(args.image) == bool(args.matrix):
        raise UsageError("check: an IMAGE or --matrix FILE (one of them)")
    if args.parallel is not None and (not args.matrix or args.parallel < 1):
        raise UsageError("--parallel N goes with --matrix, N at least 1")
    base = _base_run(args)
    if args.matrix:
        try:
            runs, parallel = load_matrix(args.matrix, base, lambda opt, p: _read(opt, p))
        except (OSError, ValueError) as e:
            raise UsageError(str(e)) from None
        parallel = args.parallel or parallel or fitting_parallel(max(r.memory for r in runs))
        for r in runs:
            r.name = None
    else:
        if not os.path.isfile(args.image):
            raise UsageError("%s: no such file" % args.image)
        runs, parallel = [base], 1
        base.image = args.image
    _check_outputs(args.json, args.junit, bool(args.matrix))
    if os.geteuid() != 0:
        die("needs root (network namespaces)")
    if not args.matrix:  # a file that is no image: its verdict at once, no node built
        try:
            check_image(base.image)
        except ImageError as e:
            return _finish([error_report(base, str(e), image_fault=True)], args, False)
        except GuestStartError as e:
            return _finish([error_report(base, str(e), image_fault=False)], args, False)
    try:
        lab = Lab.attach(args.prefix, _say) if args.prefix else Lab.up(datapath=args.datapath, say=_say, ipv6=(args.ipv6 or "none",))
    except (LabError, AgentNotRunning, RequestFailed, OSError) as e:
        return _finish([error_report(r, "the node could not be started: %s" % e, image_fault=False) for r in runs], args, bool(args.matrix))
    reports: list[dict[str, Any]] = []
    try:
        if args.matrix:
            _say("vrouter-lab: %d runs, %d at once" % (len(runs), parallel))
            reports = run_matrix(lab, runs, parallel, _say)
        else:
            reports = [run_one(lab, runs[0], _say)]
    finally:
        with _signals_held():  # a second Ctrl-C or SIGTERM does not cut the teardown short
            if args.keep:
                names = [str(r["instance"].get("name")) for r in reports if r["instance"].get("name")] or ["NAME"]
                how = ("vrouter-lab down --prefix %s" % lab.prefix if lab.owned else
                       "; ".join("vrouter-lab guest remove %s --prefix %s" % (n, lab.prefix) for n in names))  # fmt: skip
                _say("vrouter-lab: kept; remove with: %s" % how)
            else:
                try:
                    lab.down()
                except (LabError, OSError) as e:
                    _say("vrouter-lab: removing what it made: %s" % e)
    return _finish(reports, args, bool(args.matrix))


def _check_outputs(json_path: str | None, junit_path: str | None, matrix: bool) -> None:
    """UsageError now, not after a boot of minutes, when a report cannot be written where asked."""
    for option, path, is_dir in (("--json", json_path, matrix), ("--junit", junit_path, False)):
        if not path:
            continue
        if is_dir:
            if os.path.exists(path) and not os.path.isdir(path):
                raise UsageError("%s %s: with --matrix, a directory (one report a run)" % (option, path))
            parent = path
        else:
            if os.path.isdir(path):
                raise UsageError("%s %s: a directory; give a file" % (option, path))
            parent = os.path.dirname(os.path.abspath(path))
        if os.path.exists(parent) and not os.access(parent, os.W_OK):
            raise UsageError("%s %s: cannot write there" % (option, path))
        if not is_dir and not os.path.isdir(parent):
            raise UsageError("%s %s: no directory %s" % (option, path, parent))


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM held back until the block is done."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _finish(reports: list[dict[str, Any]], args: argparse.Namespace, matrix: bool) -> int:
    from vrouter_lab.report import summary

    _write_reports(reports, args.json, args.junit, matrix)
    for r in reports:
        print(summary(r))
    if args.json:
        print("report: %s" % args.json)
    if args.junit:
        print("JUnit: %s" % args.junit)
    return worst([r["exit_code"] for r in reports]) if matrix else int(reports[0]["exit_code"])


def cmd_guest(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        die("needs root (network namespaces)")
    try:
        lab = Lab.attach(args.prefix, _say)
    except LabError as e:
        raise UsageError(str(e)) from None
    if args.action == "list":
        for g in lab.guests():
            state = "running (pid %d)" % g.pid if g.running else "not running"
            boots = ", ".join("%d %s" % (b.number, b.kind) for b in g.rec.boots)
            print("%s %s %s %s, config drive %s, boots: %s, console %s" % (g.name, g.uuid, g.ip, state, g.rec.config_drive, boots, g.console_path))
        return 0
    try:
        guest = lab.guest(args.name)
    except LookupError as e:
        raise UsageError(str(e)) from None
    if args.action == "console":
        sys.stdout.write(guest.console())
        return 0
    if args.action == "remove":
        guest.remove()
        _say("guest %s removed" % guest.name)
        return 0
    if args.action == "reboot":
        guest.reboot(hard=args.hard)
    elif args.action == "rebuild":
        guest.rebuild(_read("user_data", args.user_data) if args.user_data else None, args.image)
    if args.action != "verdict" and args.no_wait:
        return 0
    verdict = guest.wait_for_cloud_init(args.timeout, ssh=not args.no_ssh)
    _write_reports([verdict.report], args.json, args.junit, False)
    print(verdict.summary())
    return verdict.exit_code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in TOPOLOGY_COMMANDS:
        os.environ["NETNS_SETUP"] = PROG
        from topology.__main__ import main as topology_main

        return topology_main(argv)
    args = parser().parse_args(argv)

    def terminated(signum: int, _frame: object) -> None:
        CANCEL.set()  # the matrix's threads stop waiting and booting too
        raise KeyboardInterrupt("signal %d" % signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # CI cancels with SIGTERM: torn down as for Ctrl-C
        signal.signal(sig, terminated)
    try:
        return int(args.func(args))
    except UsageError as e:
        die(str(e))
    except ImageError as e:
        die(str(e))
    except (LabError, AgentNotRunning, RequestFailed, GuestStartError) as e:
        die(str(e), 3)
    except OSError as e:
        die("%s" % e)
    except KeyboardInterrupt:
        CANCEL.set()
        kept = getattr(args, "keep", False) or args.command == "guest"
        die("interrupted; %s" % ("what it made is left as it was" if kept else "what it made was removed"), 130)


if __name__ == "__main__":
    sys.exit(main())
