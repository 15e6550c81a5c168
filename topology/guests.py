"""QEMU guests on the node's taps, started as Nova's libvirt driver would start them.

Each guest's only NIC is virtio-net on its port's tap in the compute
namespace (QEMU runs in that namespace and opens the tap by name), with the
port's MAC: never QEMU's user networking, never a host bridge (``-nodefaults``
keeps QEMU from adding any NIC of its own).  SMBIOS type 1 as Nova sets it:
manufacturer "OpenStack Foundation", product "OpenStack Nova", the instance
uuid as uuid and serial, family "Virtual Machine", which is how cloud-init
finds its OpenStack datasource.  The serial console goes to a file.

An image is never written: each guest boots a qcow2 overlay of it (in the
node's state directory, removed by ``down``), by the image's own boot loader,
or by ``--kernel``/``--initrd`` given directly.  Two vCPUs (``GUEST_CPUS``).
KVM where it works, TCG otherwise: with ``--accel auto`` a KVM guest is tried once per host boot with
the project's test kernel (``make guest-initramfs``), and the answer kept in
``build/guest/``; on machines where ``/dev/kvm`` exists but KVM guests hang,
the probe times out and TCG is used.

``Guests`` is the lab's side: the guests' options checked before anything is
built, each guest's tap made on its node (as os-vif does before plugging a
libvirt guest's port), the guests started once their ports are plugged, and
stopped first at ``down``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from topology import netns
from topology.model import VM, GuestBoot, Topology
from topology.processes import Processes

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "guest"
# vCPUs a guest has: two, as a small flavor, and so that TCG translates on two host threads
# (multi-threaded TCG): the Debian image's boot to its verdict went from 129 s to 96 s on this
# 2-core machine (cloud-init finished at 75 s of uptime instead of 113 s)
GUEST_CPUS = 2
TEST_KERNEL = BUILD / "initramfs" / "vmlinuz"
TEST_INITRD = BUILD / "initramfs" / "initramfs.cpio.gz"
PROBE_SECONDS = 10
NOVA_VERSION = "29.0.0"  # reported in SMBIOS, as Nova reports its own (2024.1)


class GuestError(Exception):
    """A guest cannot be started; the message says why."""


def qemu_binary() -> str:
    q = shutil.which("qemu-system-x86_64")
    if q is None:
        raise GuestError("--qemu needs qemu-system-x86_64: apt-get install qemu-system-x86 qemu-utils (make install-guests does it)")
    return q


def check_boot(boot: GuestBoot) -> None:
    """Refuse a boot that cannot work, naming the option, before anything is built."""
    if boot.initrd and not boot.kernel:
        raise GuestError("--initrd needs --kernel")
    if boot.append and not boot.kernel:
        raise GuestError("--append needs --kernel")
    if not boot.image and not boot.kernel:
        raise GuestError("--qemu needs --image FILE or --kernel K --initrd I")
    for option, path in (("--image", boot.image), ("--kernel", boot.kernel), ("--initrd", boot.initrd)):
        if path and not os.access(path, os.R_OK):
            raise GuestError("%s %s: %s" % (option, path, "no such file" if not os.path.exists(path) else "not readable"))
    if boot.accel not in ("auto", "kvm", "tcg"):
        raise GuestError("--accel %s: one of auto, kvm, tcg" % boot.accel)


def image_format(image: str) -> str:
    """qcow2 or raw (what qemu-img says), or GuestError naming the image."""
    if shutil.which("qemu-img") is None:
        raise GuestError("--image needs qemu-img: apt-get install qemu-utils")
    r = subprocess.run(["qemu-img", "info", "--output=json", "-U", image], capture_output=True, text=True)
    if r.returncode:
        raise GuestError("--image %s: %s" % (image, r.stderr.strip() or "qemu-img cannot read it"))
    try:
        fmt = json.loads(r.stdout)["format"]
    except (ValueError, KeyError):
        raise GuestError("--image %s: qemu-img gave no format" % image) from None
    if fmt not in ("qcow2", "raw"):
        raise GuestError("--image %s: a %s image (qcow2 or raw only)" % (image, fmt))
    return str(fmt)


def overlay(image: str, path: str) -> None:
    """A copy-on-write qcow2 over ``image``: the guest writes there, never to the image."""
    fmt = image_format(image)
    r = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", fmt, "-b", os.path.abspath(image), path], capture_output=True, text=True)
    if r.returncode:
        raise GuestError("cannot make an overlay of %s: %s" % (image, r.stderr.strip()))


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def choose_accel(wanted: str, say: object = None) -> str:
    """kvm or tcg for ``wanted`` (auto, kvm, tcg)."""
    if wanted != "auto":
        return wanted
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    cache = BUILD / ("accel-%s" % _boot_id())
    try:
        return cache.read_text().strip() or "tcg"
    except OSError:
        pass
    if not (TEST_KERNEL.exists() and TEST_INITRD.exists()):
        return "tcg"  # nothing to try KVM with: the safe choice
    verdict = "kvm" if _kvm_boots() else "tcg"
    try:
        cache.write_text(verdict + "\n")
    except OSError:
        pass
    return verdict


def _kvm_boots() -> bool:
    """Whether the test kernel reaches its init under KVM within PROBE_SECONDS (no network)."""
    console = BUILD / ("kvm-probe-%d.console" % os.getpid())
    args = [qemu_binary(), "-machine", "q35", "-accel", "kvm", "-m", "128", "-nodefaults", "-no-user-config", "-display", "none",
            "-no-reboot", "-serial", "file:%s" % console, "-kernel", str(TEST_KERNEL), "-initrd", str(TEST_INITRD),
            "-append", "console=ttyS0 panic=-1 guest.dhcp=0 guest.test=none"]  # fmt: skip
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ok = False
    deadline = time.monotonic() + PROBE_SECONDS
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if console.exists() and b"GUEST-RESULT init=ok" in console.read_bytes():
                ok = True
                break
            time.sleep(0.1)  # polling the probe's console, with a deadline
        if not ok and console.exists():
            ok = b"GUEST-RESULT init=ok" in console.read_bytes()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        console.unlink(missing_ok=True)
    return ok


def smbios(vm: VM) -> str:
    return "type=1,manufacturer=OpenStack Foundation,product=OpenStack Nova,version=%s,serial=%s,uuid=%s,family=Virtual Machine" % (
        NOVA_VERSION, vm.instance_uuid, vm.instance_uuid,
    )  # fmt: skip


def command(vm: VM, boot: GuestBoot, accel: str, disk: str, cdrom: str = "", qmp: str = "") -> list[str]:
    """The QEMU command line of ``vm``: its disk (an overlay), a CD-ROM (a config drive) if any,
    and a QMP socket (for an ACPI power button) if asked."""
    memory = boot.memory or (1024 if boot.image else 256)
    args = [
        qemu_binary(), "-name", vm.name, "-machine", "q35", "-accel", accel, "-cpu", "host" if accel == "kvm" else "max",
        "-m", str(memory), "-smp", str(GUEST_CPUS), "-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none",
        "-serial", "file:%s" % vm.console, "-smbios", smbios(vm),
        "-netdev", "tap,id=net0,ifname=%s,script=no,downscript=no" % vm.tap, "-device", "virtio-net-pci,netdev=net0,mac=%s" % vm.mac,
    ]  # fmt: skip
    if disk:
        args += ["-drive", "file=%s,if=virtio,format=qcow2" % disk]
    if cdrom:
        # Nova's config drive, a read-only CD-ROM on the bus the image asks for (hw_cdrom_bus): on q35
        # Nova's default, SATA, needs an AHCI driver Debian's cloud kernel lacks (it has virtio-scsi,
        # sr_mod and isofs), so it is attached as for an image with hw_cdrom_bus=scsi, hw_scsi_model=virtio-scsi
        args += ["-device", "virtio-scsi-pci,id=scsi0", "-drive", "file=%s,if=none,id=cd0,media=cdrom,readonly=on,format=raw" % cdrom,
                 "-device", "scsi-cd,drive=cd0,bus=scsi0.0"]  # fmt: skip
    if qmp:
        args += ["-qmp", "unix:%s,server=on,wait=off" % qmp]
    if boot.kernel:
        append = boot.append if "console=" in boot.append else ("console=ttyS0 " + boot.append).strip()
        args += ["-kernel", os.path.abspath(boot.kernel), "-append", append]
        if boot.initrd:
            args += ["-initrd", os.path.abspath(boot.initrd)]
    return args


def start(procs: Processes, namespace: str, vm: VM, boot: GuestBoot, accel: str, cdrom: str = "", qmp: str = "", fresh: bool = True) -> int:
    """Start ``vm``'s QEMU in the compute namespace ``namespace``; its pid.  ``fresh``: a new disk
    overlay of the image (else the one there, as after a reboot).  GuestError if it dies at once."""
    os.makedirs(procs.path("guests"), exist_ok=True)
    disk = ""
    if boot.image:
        disk = procs.path("guests/%s.qcow2" % vm.name)
        if fresh or not os.path.exists(disk):
            if os.path.exists(disk):
                os.unlink(disk)
            overlay(boot.image, disk)
    log, pidfile = "guests/%s.log" % vm.name, "guests/%s.pid" % vm.name
    proc = procs.spawn(namespace, command(vm, boot, accel, disk, cdrom, qmp), log, pidfile)
    deadline = time.monotonic() + 1.0  # QEMU refuses a bad command line, device or file at once
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)  # watching for an early exit, with a deadline
    if proc.poll() is not None:
        raise GuestError("guest %s: QEMU exited with %s: %s" % (vm.name, proc.returncode, procs.log_tail(log, 5)))
    return proc.pid


class Guests:
    """The QEMU guests of a lab."""

    def __init__(self, procs: Processes, say: Callable[[str], None]) -> None:
        self.procs = procs
        self.say = say

    @staticmethod
    def check(topo: Topology) -> None:
        """GuestError for a boot that cannot work or a QEMU or image missing, before anything is built."""
        if not topo.guests:
            return
        check_boot(topo.boot)
        qemu_binary()
        if topo.boot.image:
            image_format(topo.boot.image)

    def create_taps(self, topo: Topology, nodes: dict[int, netns.Namespace]) -> None:
        """Each guest's tap on its node of ``nodes`` (their namespaces, by node)."""
        for g in topo.guests:
            nodes[g.node].create_tap(g.tap)  # as os-vif does before plugging a libvirt guest's port

    def start(self, topo: Topology) -> None:
        if not topo.guests:
            return
        accel = choose_accel(topo.boot.accel)
        for g in topo.guests:
            g.pid = start(self.procs, topo.compute_of(g.node), g, topo.boot, accel)
            self.say("  guest %s booting under %s (pid %d, console %s)" % (g.name, accel.upper(), g.pid, g.console))

    def stop(self) -> None:
        self.procs.stop_each("guests", "guest")
