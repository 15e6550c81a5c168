"""The Python API of vrouter-lab: a node to boot cloud images on, and the guests booted there.

::

    from vrouter_lab import Lab

    with Lab.up() as lab:                       # a node of its own, removed at the end
        guest = lab.boot("debian12.qcow2", user_data="#cloud-config\\nruncmd: [touch /run/x]\\n",
                         ssh_key="~/.ssh/id_ed25519.pub", config_drive="none")
        verdict = guest.wait_for_cloud_init(900)
        assert verdict.passed, verdict.summary()
        assert guest.ssh("test -e /run/x").returncode == 0
        guest.reboot()                          # per-boot modules run, per-instance ones do not
        guest.rebuild(user_data=b"#!/bin/sh\\necho again\\n")

``Lab.attach(prefix)`` uses a node that is already up (``netns_setup.sh up`` or ``vrouter-lab up``);
its ``down`` then removes only the guests it booted.  Every guest's verdict is the same as
``vrouter-lab check``'s (``vrouter_lab.verdict.decide``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fabric.nova_metadata import InstancesError, parse_instances
from topology.errors import LabError
from topology.lab import Lab as Topo
from topology.model import Topology
from topology.nodes import wait_rules
from vrouter_lab.evidence import Evidence
from vrouter_lab.gather import CANCEL, gather, ssh_command
from vrouter_lab.guest import Guest, GuestRecord, GuestStartError, ImageError, check_image
from vrouter_lab.instance import expected, record
from vrouter_lab.node import Node

CONFIG_DRIVE_MODES = ("none", "only", "both")


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@dataclass
class Verdict:
    """A boot's verdict: the report (``verdict.decide``'s dict, the JSON of ``--json``)."""

    report: dict[str, Any]
    evidence: Evidence

    @property
    def status(self) -> str:
        return str(self.report["status"])

    @property
    def exit_code(self) -> int:
        return int(self.report["exit_code"])

    @property
    def passed(self) -> bool:
        return self.exit_code == 0

    @property
    def reason(self) -> str:
        return str(self.report.get("reason", ""))

    def summary(self) -> str:
        from vrouter_lab.report import summary

        return summary(self.report)

    def junit(self) -> str:
        from vrouter_lab.report import junit

        return junit([self.report])

    def json(self) -> str:
        from vrouter_lab.report import to_json

        return to_json(self.report)


class LabGuest(Guest):
    """A guest as a test drives it: its verdict, a shell in it, its console and journal, the levers."""

    def wait_for_cloud_init(self, timeout: float = 900, ssh: bool = True) -> Verdict:
        """Until cloud-init has finished (or ``timeout`` s from this boot's power-on), then the
        verdict, gathered as ``vrouter-lab check`` gathers it."""
        from vrouter_lab.verdict import decide

        inst = self.node.instance(self.uuid) or {}
        peer6 = self.node.peer6(self.rec.vm["vn_uuid"]) if self.rec.expect_ipv6 else ""
        exp = expected(inst, self.rec.expect_datasource, self.rec.config_drive, self.boot.kind, peer6)
        ev = gather(self, exp, timeout, self.say, use_ssh=ssh)
        if not self.rec.image and self.rec.kernel:
            ev.image = self.rec.kernel
        report = decide(ev)
        report["started"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.boot.power_on))  # power-on, UTC, for JUnit
        return Verdict(report, ev)

    def ssh(self, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``command`` run in the guest over SSH with the lab's key, from a namespace VM of its
        network (its user: the one cloud-init put the keys on, found from the console)."""
        from vrouter_lab.gather import login_users

        namespace = self.node.ssh_from(self.rec.vm["vn_uuid"])
        if not namespace:
            raise LabError("no namespace VM on %s's network to log in from" % self.name)
        key, _ = self.node.lab_key()
        if not self.rec.ssh_user:
            for user in login_users(self, self.console().splitlines()):
                if ssh_command(self, user, key, namespace, "true", 15).returncode == 0:
                    self.rec.ssh_user = user
                    self.save()
                    break
            else:
                raise LabError("cannot log in to %s with the lab's key (is sshd up? was the key injected?)" % self.name)
        return ssh_command(self, self.rec.ssh_user, key, namespace, command, timeout)

    def metadata_log(self) -> list[dict[str, Any]]:
        """The instance's metadata journal: what it asked for and what it got, oldest first."""
        return [asdict(e) for e in self.node.journal(self.uuid)]

    def fault(self, path: str = "/*", **effect: Any) -> int:
        """A fault on this instance's metadata requests (``status=503``, ``delay=2``, ``reset=True``,
        ``drop=True``, ``refuse=True``, ``throttle=100``; ``count``, ``for_s``, ``probability``);
        its rule id (``lab.node.fault_del(id)`` removes it)."""
        rule = self.node.fault(self.uuid, path, **effect).id
        self.rec.fault_rules.append(rule)
        self.save()
        return rule

    def set_metadata(self, **changes: Any) -> None:
        """Change what the metadata service serves this instance, live (``user_data``, ``meta``,
        ``hostname``, ``public_keys``, ``vendor_data``, ...): the next request sees it; a config
        drive follows at the next power-on."""
        from vrouter_lab.instance import user_data_field

        inst = self.node.instance(self.uuid)
        if inst is None:
            raise LabError("instance %s is not served" % self.uuid)
        if "user_data" in changes:
            changes["user_data"] = user_data_field(changes["user_data"])
        inst.update(changes)
        self.node.put_instance(inst)


class Lab:
    """A node to boot guests on: ``Lab.up()`` builds one (removed by ``down``), ``Lab.attach(P)``
    uses lab ``P`` (``down`` then removes only the guests booted through it)."""

    def __init__(self, node: Node, owned: bool, say: Callable[[str], None] = _say) -> None:
        self.node = node
        self.owned = owned
        self.say = say
        self.booted: list[LabGuest] = []  # by several threads in a matrix: changed under ``lock``
        self.lock = threading.Lock()

    @classmethod
    def up(cls, prefix: str | None = None, vms: int = 1, networks: int = 1, datapath: str = "nfqueue", say: Callable[[str], None] = _say,
           ipv6: tuple[str, ...] = ("none",)) -> Lab:  # fmt: skip
        """A node of its own: ``vms`` namespace VMs (one at least: guests are logged in to from it)
        on ``networks`` networks, dual stack with the IPv6 address modes ``ipv6`` (network J the
        Jth, the last for the rest).  LabError if it cannot be built (nothing is left behind)."""
        prefix = prefix or "lab" + uuid.uuid4().hex[:5]
        topo_lab = Topo(prefix, say=say, script="vrouter-lab")
        try:
            topo = Topology.plan(prefix, vms, topo_lab.state, networks=networks, ipv6=ipv6)
        except ValueError as e:
            raise LabError(str(e)) from None
        topo.datapath = datapath
        topo_lab.up(topo)
        return cls(Node(prefix), True, say)

    @classmethod
    def attach(cls, prefix: str, say: Callable[[str], None] = _say) -> Lab:
        return cls(Node(prefix), False, say)

    @property
    def prefix(self) -> str:
        return self.node.prefix

    def boot(self, image: str | os.PathLike[str] | None = None, *, user_data: bytes | str | None = None, ssh_key: str | None = None,
             config_drive: str = "none", instance: dict[str, Any] | None = None, name: str | None = None, network: int = 1,
             kernel: str | None = None, initrd: str | None = None, append: str = "", memory: int = 0, accel: str = "auto",
             expect_datasource: str = "", lab_key: bool = True, ssh_user: str = "", expect_ipv6: bool = False) -> LabGuest:  # fmt: skip
        """Boot ``image`` (qcow2 or raw, never written) as a new instance.  ``ssh_key``: a public key
        or a file of one; ``instance``: more of the instance's data (hostname, meta, vendor_data,
        admin_pass, files, ...); ``config_drive``: none, only (the metadata service refuses this
        instance) or both.  ImageError when the image cannot boot at all, GuestStartError when
        QEMU could not start, LabError when the node refuses; nothing is left behind then.
        ``expect_ipv6``: the verdict expects the guest's IPv6 address configured (from
        network_data.json, SLAAC or DHCPv6, as the network's mode says) and the namespace VM of
        its network reached over IPv6."""
        if config_drive not in CONFIG_DRIVE_MODES:
            raise ValueError("config_drive %r: one of %s" % (config_drive, ", ".join(CONFIG_DRIVE_MODES)))
        if image is None and kernel is None:
            raise ValueError("boot needs an image or a kernel")
        image = os.path.abspath(image) if image is not None else ""
        if image:
            check_image(image)
        keys = {}
        if ssh_key:
            path = os.path.expanduser(ssh_key)
            text = Path(path).read_text().strip() if os.path.isfile(path) else ssh_key.strip()
            if not text.startswith(("ssh-", "ecdsa-", "sk-")) or "\n" in text:
                raise ValueError("ssh_key %s: neither one OpenSSH public key nor a file of one" % ssh_key[:60])
            keys["default"] = text
        self.node.ensure_reports_service()
        vm = self.node.new_guest(name, network)
        rec = GuestRecord(asdict(vm), image=image, kernel=os.path.abspath(kernel) if kernel else "", initrd=os.path.abspath(initrd) if initrd else "",
                          append=append, memory=memory, accel=accel, config_drive=config_drive, expect_datasource=expect_datasource,
                          ssh_user=ssh_user, lab_key=lab_key, expect_ipv6=expect_ipv6)  # fmt: skip
        guest = LabGuest(self.node, rec, self.say)
        try:
            net = next(n for n in self.node.networks() if n.uuid == vm.vn_uuid)
            lab_pub = self.node.lab_key()[1] if lab_key else ""
            inst = record(vm, net, dict(instance or {}), user_data, keys, lab_pub, self.node.reports_url(vm.instance_uuid))
            try:  # what the Nova stand-in would refuse (and so serve none of the instances' changes)
                parse_instances(json.dumps({"instances": [inst]}))
            except InstancesError as e:
                raise LabError("the instance's data: %s" % e) from None
            self.node.put_instance(inst)
            self.node.plug(vm)
            rec.vm = asdict(vm)
            self.node.update_guest(vm)
            if config_drive == "only":
                rec.refuse_rule = self.node.fault(vm.instance_uuid, refuse=True).id
            guest.save()
            self._wait_rules()
            if CANCEL.is_set():
                raise LabError("cancelled before the guest was powered on")
            guest.power_on("first", fresh_disk=True)
        except BaseException:
            try:
                guest.remove()
            except (LabError, OSError) as e:  # the first error is the one to report
                self.say("vrouter-lab: removing the guest that did not boot: %s" % e)
            raise
        with self.lock:
            self.booted.append(guest)
        return guest

    def _wait_rules(self, timeout: float = 60) -> None:
        wait_rules(self.node.sock, timeout)

    def guest(self, name: str) -> LabGuest:
        g = Guest.load(self.node, name, self.say)
        return LabGuest(g.node, g.rec, self.say)

    def guests(self) -> list[LabGuest]:
        return [self.guest(n) for n in Guest.names(self.node)]

    def down(self) -> None:
        """A node of its own: removed whole.  An attached one: the guests booted here removed."""
        if self.owned:
            Topo(self.prefix, say=self.say, script="vrouter-lab").down()
            return
        with self.lock:
            booted, self.booted = self.booted, []
        errors = []
        for g in booted:
            try:
                g.remove()
            except (LabError, OSError) as e:
                errors.append(str(e))
        if errors:
            raise LabError("; ".join(errors))

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()


__all__ = ["Lab", "LabGuest", "Verdict", "ImageError", "GuestStartError", "LabError"]
