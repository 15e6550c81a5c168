"""Gathering the evidence of one boot (``vrouter_lab.evidence``), without logging in until the end.

``gather(guest, timeout)`` follows the boot's serial console (each line stamped with the seconds
since power-on, as it appears) and the collector's reports until cloud-init says it has finished (the
console's "Cloud-init v. X finished at" line, or the ``modules-final`` finish event), QEMU exits,
or ``timeout`` seconds from power-on pass.  Then it reads the node (the guest's DHCP lease, its
metadata journal) and, when the lab's key was injected and a namespace VM shares the guest's
network, logs in over SSH from that VM and runs ``SSH_COMMANDS`` in one session (at most
``SSH_BUDGET`` seconds, waiting for sshd to answer first).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import threading
import time
from collections.abc import Callable, Iterable

from topology.errors import LabError
from vrouter.agent.control import RequestFailed
from vrouter_lab.evidence import SSH_COMMANDS, SSH_PING6, ConsoleLine, Evidence, Expected, Report, Request
from vrouter_lab.guest import Guest

CANCEL = threading.Event()  # set on SIGTERM or Ctrl-C: every gathering stops at its next look
POLL_S = 0.5
SSH_BUDGET = 90.0  # seconds for the SSH checks after cloud-init finished (sshd may still be starting)
SSH_USERS = ["debian", "ubuntu", "cloud-user", "fedora", "centos", "rocky", "almalinux", "ec2-user", "arch", "opensuse", "root"]
_FINISHED = re.compile(r"Cloud-init v\. \S+ finished at ")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][0-9A-Za-z]|\r")
_KEYS_USER = re.compile(r"Authorized keys from \S+ for user (\S+?)\+*\s*$")
_BEGIN, _END = "@@@vrouter-lab:begin:", "@@@vrouter-lab:end:"


class ConsoleTail:
    """A console file read as it grows, line by line, each stamped when first seen."""

    def __init__(self, path: str, power_on: float) -> None:
        self.path = path
        self.power_on = power_on
        self.offset = 0
        self.partial = b""
        self.lines: list[ConsoleLine] = []

    def poll(self) -> list[ConsoleLine]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read(1 << 20)
        except FileNotFoundError:
            return []
        self.offset += len(data)
        data = self.partial + data
        *complete, self.partial = data.split(b"\n")
        t = time.time() - self.power_on
        new = [ConsoleLine(t, _ANSI.sub("", raw.decode("utf-8", "replace"))) for raw in complete]
        self.lines += new
        return new

    def flush(self) -> None:
        """The last line even without its end (a console that stops mid-line)."""
        self.poll()
        if self.partial:
            self.lines.append(ConsoleLine(time.time() - self.power_on, _ANSI.sub("", self.partial.decode("utf-8", "replace"))))
            self.partial = b""


def _reports(guest: Guest, power_on: float) -> list[Report]:
    from fabric.reports import read

    out = []
    for r in read(guest.node.path("reports"), guest.uuid):
        received = float(r.get("received", 0))
        if received >= power_on - 1 and isinstance(r.get("body"), dict):
            out.append(Report(received - power_on, str(r.get("kind", "")), r["body"]))
    return out


def _final_event(reports: list[Report]) -> bool:
    return any(r.kind == "event" and r.body.get("name") == "modules-final" and r.body.get("event_type") == "finish" for r in reports)


def ssh_command(guest: Guest, user: str, key: str, namespace: str, remote: str, timeout: float) -> subprocess.CompletedProcess[str]:
    args = ["ip", "netns", "exec", namespace, "ssh", "-i", key, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-o", "ServerAliveInterval=5",
            "%s@%s" % (user, guest.ip), remote]  # fmt: skip
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout, errors="replace")
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(args, 255, "", "ssh: no answer within %.0f s" % timeout)


def _script(peer6: str = "") -> str:
    commands = dict(SSH_COMMANDS, ipv6_ping=SSH_PING6 % shlex.quote(peer6)) if peer6 else SSH_COMMANDS
    parts = ["echo %s; (%s) 2>/dev/null; echo %s$?" % (shlex.quote(_BEGIN + name), cmd, shlex.quote(_END + name + ":"))
             for name, cmd in commands.items()]  # fmt: skip
    return "; ".join(parts)


def parse_sections(out: str) -> tuple[dict[str, str], dict[str, int]]:
    """The outputs and exit codes of ``_script``'s commands."""
    texts: dict[str, str] = {}
    codes: dict[str, int] = {}
    name, buf = "", list[str]()
    for line in out.splitlines():
        if line.startswith(_BEGIN):
            name, buf = line[len(_BEGIN) :], []
        elif line.startswith(_END) and name:
            code = line[len(_END) :].rsplit(":", 1)[-1]
            texts[name] = "\n".join(buf)
            codes[name] = int(code) if code.lstrip("-").isdigit() else -1
            name = ""
        elif name:
            buf.append(line)
    return texts, codes


def login_users(guest: Guest, console: Iterable[str]) -> list[str]:
    """Whom to log in as: ``--ssh-user``, else the user cloud-init says it put the keys on (the
    console's fingerprint table), then the cloud images' usual default users."""
    if guest.rec.ssh_user:
        return [guest.rec.ssh_user]
    found = [m.group(1) for line in console if (m := _KEYS_USER.search(line))]
    return list(dict.fromkeys(found + SSH_USERS))


def _ssh(guest: Guest, ev: Evidence, deadline: float) -> None:
    if not guest.rec.lab_key:
        ev.ssh_error = "not used: the lab's key was not injected (--no-lab-key)"
        return
    namespace = guest.node.ssh_from(guest.rec.vm["vn_uuid"])
    if not namespace:
        ev.ssh_error = "not used: no namespace VM on the guest's network to log in from"
        return
    key, _ = guest.node.lab_key()
    users = login_users(guest, (line.text for line in ev.console))
    why = "sshd did not answer"
    while time.monotonic() < deadline and not CANCEL.is_set():
        for user in users:
            r = ssh_command(guest, user, key, namespace, "true", min(15.0, max(1.0, deadline - time.monotonic())))
            if r.returncode == 0:
                r = ssh_command(guest, user, key, namespace, _script(ev.expected.ipv6_peer), max(5.0, deadline - time.monotonic()))
                if r.returncode == 255 and not r.stdout:
                    why = "the session failed: %s" % r.stderr.strip()[-200:]
                    break
                ev.ssh, ev.ssh_exit = parse_sections(r.stdout)
                ev.ssh_user = user
                return
            err = r.stderr.strip()
            why = err.splitlines()[-1] if err else "exit %d" % r.returncode
            if "Permission denied" not in err:
                break  # not a question of the user: sshd is not there yet
        if not guest.running:
            why = "the guest is no longer running"
            break
        time.sleep(2.0)  # sshd starting; tried again until the deadline
    ev.ssh_error = "failed: %s" % why


def gather(guest: Guest, expected: Expected, timeout: float, say: Callable[[str], None] = lambda _: None, use_ssh: bool = True) -> Evidence:
    """The evidence of the guest's current boot, gathered until cloud-init has finished or
    ``timeout`` seconds from power-on have passed."""
    boot = guest.boot
    inst = {"name": guest.name, "uuid": guest.uuid, "hostname": expected.hostname, "ip": guest.ip, "mac": guest.rec.vm["mac"],
            "prefix": guest.node.prefix, "boot": boot.number}  # fmt: skip
    ev = Evidence(image=guest.rec.image or guest.rec.kernel, instance=inst, expected=expected)
    tail = ConsoleTail(guest.console_path, boot.power_on)
    end = boot.power_on + timeout
    finished = False
    announced = False
    while True:
        for line in tail.poll():
            if _FINISHED.search(line.text):
                finished = True
            elif not announced and line.text.startswith("Cloud-init v."):
                announced = True
                say("guest %s: cloud-init started (%.0f s after power-on)" % (guest.name, line.t))
        if finished or _final_event(_reports(guest, boot.power_on)):
            finished = True
            break
        if not guest.running:
            ev.qemu_exit = -1  # not this process's child, or reaped already: its status is not known here
            break
        if time.time() >= end or CANCEL.is_set():
            ev.timed_out = True
            break
        time.sleep(POLL_S)  # following the console, with the timeout as deadline
    tail.flush()
    ev.console = tail.lines
    ev.reports = _reports(guest, boot.power_on)
    try:
        ev.requests = [Request(e.time - boot.power_on, e.method, e.path, e.status, e.bytes_out, e.reason)
                       for e in guest.node.journal(guest.uuid) if e.time >= boot.power_on - 1 and e.method != "LAB"]  # fmt: skip
        port = guest.node.port(guest.rec.vm["port_uuid"])
        acks = [t for t in (port.dhcp_acks if port is not None else []) if t >= boot.power_on - 1]
        if acks:
            ev.lease_t = acks[0] - boot.power_on  # this boot's first (cloud-init's ephemeral lease, before ifup takes its own)
    except (LabError, RequestFailed) as e:
        say("guest %s: the node did not answer (%s)" % (guest.name, e))
    if finished and use_ssh:
        say("guest %s: cloud-init finished; checking over SSH" % guest.name)
        _ssh(guest, ev, time.monotonic() + SSH_BUDGET)
        ev.reports = _reports(guest, boot.power_on)  # what came meanwhile
    elif not use_ssh:
        ev.ssh_error = "not used: --no-ssh"
    else:
        ev.ssh_error = "not used: cloud-init did not finish"
    ev.waited = time.time() - boot.power_on
    return ev
