"""A guest that vrouter-lab booted on a node: its record, its power, reboot and rebuild.

The record (``lab/guests/NAME.json`` in the lab's state directory) is what another
``vrouter-lab`` command needs to act on the guest later: its port, how it boots (image, kernel,
memory, accel), its config drive mode, the rule that hides the metadata service from it with
``--config-drive only``, and its boots (each one's number, kind and power-on time).

* **Power on** makes the config drive (when the mode is ``only`` or ``both``) from the instance as
  the Nova stand-in serves it at that moment, as Nova builds it at each (re)boot, and starts QEMU
  (``topology.guests.start``) with a QMP socket, for the ACPI power button.
* **Reboot** (``hard=False``): the power button pressed (QMP ``system_powerdown``), up to
  ``SHUTDOWN_S`` seconds for the guest to power off, then QEMU started again on the same disk:
  Nova's soft reboot.  ``hard=True`` stops QEMU at once, as Nova's hard reboot destroys the domain.
  The instance is the same: cloud-init runs its per-boot modules only.
* **Rebuild**: QEMU stopped, the disk overlay made anew from the image (or another one), the
  instance's user data replaced if given, the same uuid: cloud-init runs as on a first boot.
* Each boot's serial console is ``guests/NAME.console``; the ones before are kept as
  ``NAME.console.1``, ``.2``...
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from infra.jsonfile import write_json_atomic
from topology import guests as qemu
from topology.errors import LabError
from topology.model import VM, GuestBoot
from topology.processes import Processes
from vrouter_lab.node import Node

SHUTDOWN_S = 120.0  # a soft reboot's wait for the guest to power off (TCG is slow) before QEMU is stopped


class GuestStartError(Exception):
    """QEMU could not be started (not the image's fault): the check's exit 3."""


class ImageError(Exception):
    """The image cannot boot at all (not an image, no boot sector): the check's exit 1."""


@dataclass
class Boot:
    number: int
    kind: str  # first, reboot, rebuild
    power_on: float  # time.time() when QEMU was started


@dataclass
class GuestRecord:
    vm: dict[str, Any]  # topology.model.VM's fields
    image: str = ""
    kernel: str = ""
    initrd: str = ""
    append: str = ""
    memory: int = 0
    accel: str = "auto"
    config_drive: str = "none"  # none, only, both
    refuse_rule: int = 0  # the fault rule that hides the metadata service (--config-drive only)
    fault_rules: list[int] = field(default_factory=list)  # rules added through the API (``LabGuest.fault``), deleted with it
    expect_datasource: str = ""
    ssh_user: str = ""  # "" : found from the console
    lab_key: bool = True  # the lab's key was injected
    expect_ipv6: bool = False  # the verdict judges the guest's IPv6 (its address, the namespace VM reached)
    boots: list[Boot] = field(default_factory=list)

    @classmethod
    def of(cls, data: dict[str, Any]) -> GuestRecord:
        boots = [Boot(**b) for b in data.pop("boots", [])]
        return cls(**data, boots=boots)


def check_image(image: str) -> None:
    """ImageError when ``image`` is no disk a PC could boot: qemu-img cannot read it, or its first
    sector has no boot signature (0x55AA: an MBR, or GPT's protective one)."""
    if not os.path.isfile(image):
        raise ImageError("--image %s: %s" % (image, "not a regular file" if os.path.exists(image) else "no such file"))
    if shutil.which("qemu-img") is None:
        raise GuestStartError("qemu-img is missing: apt-get install qemu-utils (make install does it)")
    try:
        qemu.image_format(image)
    except qemu.GuestError as e:
        raise ImageError(str(e)) from None
    with tempfile.NamedTemporaryFile(prefix="vrouter-lab-mbr-") as f:
        try:
            r = subprocess.run(["qemu-img", "dd", "-O", "raw", "bs=512", "count=1", "if=" + image, "of=" + f.name], capture_output=True, text=True,
                               timeout=60)  # fmt: skip
        except subprocess.TimeoutExpired:
            raise ImageError("--image %s: qemu-img could not read its first sector within 60 s" % image) from None
        if r.returncode:
            raise ImageError("--image %s: cannot read its first sector: %s" % (image, r.stderr.strip()))
        sector = f.read(512)
    if len(sector) < 512 or sector[510:512] != b"\x55\xaa":
        raise ImageError("--image %s: not a bootable disk (no boot signature in its first sector)" % image)


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


class Guest:
    """A guest of ``node`` with its record."""

    def __init__(self, node: Node, rec: GuestRecord, say: Callable[[str], None] = lambda _: None) -> None:
        self.node = node
        self.rec = rec
        self.say = say
        self.procs = Processes(node.state, say)

    # -- the record -------------------------------------------------------------------------------

    @staticmethod
    def record_path(node: Node, name: str) -> str:
        return node.path("lab/guests/%s.json" % name)

    @classmethod
    def load(cls, node: Node, name: str, say: Callable[[str], None] = lambda _: None) -> Guest:
        try:
            with open(cls.record_path(node, name)) as f:
                return cls(node, GuestRecord.of(json.load(f)), say)
        except FileNotFoundError:
            raise LookupError("prefix %s has no guest %s that vrouter-lab booted (vrouter-lab guest list --prefix %s)"
                              % (node.prefix, name, node.prefix)) from None  # fmt: skip

    @staticmethod
    def names(node: Node) -> list[str]:
        try:
            return sorted(n[:-5] for n in os.listdir(node.path("lab/guests")) if n.endswith(".json"))
        except FileNotFoundError:
            return []

    def save(self) -> None:
        write_json_atomic(self.record_path(self.node, self.name), asdict(self.rec), sort_keys=False)

    @property
    def vm(self) -> VM:
        return VM(**self.rec.vm)

    @property
    def name(self) -> str:
        return str(self.rec.vm["name"])

    @property
    def uuid(self) -> str:
        return str(self.rec.vm["instance_uuid"])

    @property
    def ip(self) -> str:
        return str(self.rec.vm["ip"])

    @property
    def console_path(self) -> str:
        return str(self.rec.vm["console"])

    @property
    def boot(self) -> Boot:
        return self.rec.boots[-1]

    @property
    def pid(self) -> int:
        """Its QEMU's pid while it runs, else 0 (a pid the pidfile names that is not this guest's
        QEMU, reused by another process, is not it)."""
        pid = self.procs.pid("guests/%s.pid" % self.name)
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                ours = b"\0-name\0%s\0" % self.name.encode() in f.read()
        except OSError:
            ours = False
        return pid if pid and ours else 0

    @property
    def running(self) -> bool:
        return bool(self.pid)

    def console(self) -> str:
        """This boot's serial console so far."""
        try:
            with open(self.console_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    # -- power ------------------------------------------------------------------------------------

    def _cdrom(self) -> str:
        if self.rec.config_drive not in ("only", "both"):
            return ""
        from fabric.config_drive import ConfigDriveError, build

        inst = self.node.instance(self.uuid)
        if inst is None:
            raise GuestStartError("instance %s of %s is not in the Nova stand-in's instances" % (self.uuid, self.name))
        iso = self.node.path("guests/%s.config-2.iso" % self.name)
        try:
            build(inst, iso)
        except ConfigDriveError as e:
            raise GuestStartError("config drive of %s: %s" % (self.name, e)) from None
        return iso

    def power_on(self, kind: str, fresh_disk: bool) -> None:
        """Start QEMU for a boot of ``kind`` (first, reboot, rebuild)."""
        console = self.console_path
        os.makedirs(os.path.dirname(console), exist_ok=True)
        if os.path.exists(console) and os.path.getsize(console):
            os.replace(console, "%s.%d" % (console, len(self.rec.boots)))
        boot = GuestBoot(self.rec.image, self.rec.kernel, self.rec.initrd, self.rec.append, self.rec.accel, self.rec.memory)
        accel = qemu.choose_accel(self.rec.accel)
        qmp = self.node.path("guests/%s.qmp" % self.name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(qmp)
        cdrom = self._cdrom()
        power_on = time.time()
        try:
            pid = qemu.start(self.procs, self.node.compute, self.vm, boot, accel, cdrom, qmp, fresh_disk)
        except qemu.GuestError as e:
            raise GuestStartError(str(e)) from None
        self.rec.boots.append(Boot(len(self.rec.boots) + 1, kind, power_on))
        note = "vrouter-lab: boot %d (%s)%s" % (len(self.rec.boots), kind, ", config drive" if cdrom else "")
        self.node.mark(self.uuid, kind if kind != "first" else "boot", note, int(self.rec.vm.get("vif") or 0))
        vm = self.vm
        vm.pid = pid
        self.rec.vm = asdict(vm)
        self.save()
        self.node.update_guest(vm)
        self.say("guest %s: boot %d (%s) under %s, pid %d, console %s" % (self.name, len(self.rec.boots), kind, accel.upper(), pid, console))

    def _qmp(self, command: str) -> None:
        """One QMP command (``system_powerdown``) to the guest's QEMU."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(self.node.path("guests/%s.qmp" % self.name))
            f = s.makefile("rwb")
            f.readline()  # the greeting
            for execute in ("qmp_capabilities", command):
                f.write(json.dumps({"execute": execute}).encode() + b"\r\n")
                f.flush()
                while True:
                    answer = json.loads(f.readline() or b"{}")
                    if "return" in answer or "error" in answer or not answer:
                        break
                if "error" in answer:
                    raise OSError("QMP %s: %s" % (execute, answer["error"].get("desc", answer["error"])))

    def power_off(self, soft: bool, wait: float = SHUTDOWN_S) -> str:
        """The guest powered off: ``soft`` by the ACPI power button (QEMU exits when the guest
        powers off), else at once.  Returns how it went, in words."""
        pid = self.pid
        if not pid:
            return "was not running"
        if soft:
            try:
                self._qmp("system_powerdown")
            except (OSError, ValueError) as e:
                self.say("guest %s: power button not pressed (%s); stopping QEMU" % (self.name, e))
            else:
                deadline = time.monotonic() + wait
                while self.pid and time.monotonic() < deadline:
                    time.sleep(0.2)  # waiting for the guest to power off, with a deadline
                if not self.pid:
                    return "powered off"
                self.say("guest %s did not power off within %.0f s: stopping QEMU" % (self.name, wait))
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while self.pid and time.monotonic() < deadline:
            time.sleep(0.05)  # waiting for QEMU to exit, with a deadline
        if self.pid:
            raise GuestStartError("guest %s: its QEMU (pid %d) is still running after SIGKILL" % (self.name, pid))
        return "stopped"

    def reboot(self, hard: bool = False) -> None:
        """As Nova's reboot: the same instance and disk boots again."""
        how = self.power_off(soft=not hard)
        self.say("guest %s %s" % (self.name, how))
        self.power_on("reboot", fresh_disk=False)

    def rebuild(self, user_data: bytes | str | None = None, image: str | None = None) -> None:
        """As Nova's rebuild: the same uuid, a fresh disk from the image (``image``: another one),
        the user data replaced when given."""
        from vrouter_lab.instance import user_data_field

        if image is not None:
            check_image(image)
            self.rec.image = os.path.abspath(image)
        self.power_off(soft=False)
        if user_data is not None:
            inst = self.node.instance(self.uuid)
            if inst is not None:
                inst["user_data"] = user_data_field(user_data)
                self.node.put_instance(inst)
        self.power_on("rebuild", fresh_disk=True)

    def remove(self) -> None:
        """Stopped, unplugged, forgotten: its port, tap, instance, fault rules, disk, drive, consoles,
        reports and record gone.  Each step is tried whatever the others did; LabError names those
        that failed."""
        failed: list[str] = []

        def step(what: str, fn: Callable[[], object]) -> None:
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - the next steps are taken all the same
                failed.append("%s: %s" % (what, e))

        step("stop QEMU", lambda: self.power_off(soft=False))
        for rule in [self.rec.refuse_rule, *self.rec.fault_rules]:
            if rule:
                step("delete fault rule %d" % rule, functools.partial(self.node.fault_del, rule))
        step("unplug the port", lambda: self.node.unplug(self.vm))
        step("forget the instance", lambda: self.node.drop_instance(self.uuid))
        step("forget the guest", lambda: self.node.forget_guest(self.name))
        guests = self.node.path("guests")
        names = os.listdir(guests) if os.path.isdir(guests) else []
        paths = [
            os.path.join(guests, n)
            for n in names
            if n.startswith(self.name + ".") and n.split(".", 1)[1].split(".")[0] in ("qcow2", "config-2", "qmp", "pid", "console", "log")
        ]
        for path in [*paths, self.node.path("reports/%s.jsonl" % self.uuid), self.record_path(self.node, self.name)]:
            step("remove " + path, functools.partial(_unlink, path))
        if failed:
            raise LabError("guest %s not wholly removed: %s" % (self.name, "; ".join(failed)))
