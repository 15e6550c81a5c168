"""Runs of ``vrouter-lab check``: one image, or a matrix of images x user data x config drive.

A run boots one guest on the lab's node, waits for its verdict and removes the guest (unless kept).
A matrix runs its combinations on one node, side by side up to ``parallel`` guests at once
(by default as many as the machine's cores and free memory allow: under TCG each guest keeps a
core busy), each with its own report and all in one JUnit file.  A run that cannot start (the node
or QEMU) is a report of status ``error`` (exit 3), an image that cannot boot one of ``fail``.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from topology.errors import LabError
from vrouter.agent.control import AgentNotRunning, RequestFailed
from vrouter_lab.api import CONFIG_DRIVE_MODES, Lab
from vrouter_lab.evidence import Evidence, Expected
from vrouter_lab.gather import CANCEL
from vrouter_lab.guest import GuestStartError, ImageError

MATRIX_KEYS = {"images", "user_data", "config_drive", "expect_datasource", "timeout", "parallel", "ssh_key", "instances", "memory", "accel"}


@dataclass
class Run:
    """One boot to judge."""

    image: str
    user_data: bytes | None = None
    user_data_name: str = ""  # the file it came from, for names and reports
    ssh_key: str | None = None
    instance: dict[str, Any] = field(default_factory=dict)
    config_drive: str = "none"
    expect_datasource: str = ""
    timeout: float = 900.0
    name: str | None = None  # the guest's name (None: the next guestN)
    kernel: str | None = None
    initrd: str | None = None
    append: str = ""
    memory: int = 0
    accel: str = "auto"
    lab_key: bool = True
    ssh: bool = True
    ssh_user: str = ""
    keep: bool = False
    expect_ipv6: bool = False  # the guest should have its IPv6 address and reach the namespace VM over IPv6
    label: str = ""  # the matrix's name for this combination

    def title(self) -> str:
        return self.label or os.path.basename(self.image or self.kernel or "guest")


def error_report(run: Run, why: str, image_fault: bool) -> dict[str, Any]:
    """The report of a run that never booted: ``image_fault`` (exit 1) or not (exit 3)."""
    from vrouter_lab.verdict import decide

    exp = Expected(hostname=run.name or "", datasource=run.expect_datasource, config_drive=run.config_drive)
    ev = Evidence(image=run.image or run.kernel or "", instance={"name": run.name or "", "label": run.label}, expected=exp)
    if image_fault:
        ev.image_error = why
    else:
        ev.start_error = why
    return decide(ev)


def run_one(lab: Lab, run: Run, say: Callable[[str], None]) -> dict[str, Any]:
    """Boot, judge, and (unless ``run.keep``) remove one guest; its report."""
    guest = None
    if CANCEL.is_set():
        return error_report(run, "cancelled before it was booted", image_fault=False)
    try:
        guest = lab.boot(run.image or None, user_data=run.user_data, ssh_key=run.ssh_key, config_drive=run.config_drive, instance=run.instance,
                         name=run.name, kernel=run.kernel, initrd=run.initrd, append=run.append, memory=run.memory, accel=run.accel,
                         expect_datasource=run.expect_datasource, lab_key=run.lab_key, ssh_user=run.ssh_user,
                         expect_ipv6=run.expect_ipv6)  # fmt: skip
        report = guest.wait_for_cloud_init(run.timeout, ssh=run.ssh).report
    except ImageError as e:
        report = error_report(run, str(e), image_fault=True)
    except (GuestStartError, LabError, AgentNotRunning, RequestFailed, OSError) as e:
        report = error_report(run, str(e), image_fault=False)
    except Exception as e:  # noqa: BLE001 - one run's surprise must not lose the others' reports
        report = error_report(run, "%s: %s" % (type(e).__name__, e), image_fault=False)
    finally:
        if guest is not None and not run.keep:
            try:
                guest.remove()
            except (LabError, OSError) as e:
                say("vrouter-lab: removing guest %s: %s" % (guest.name, e))
            with lab.lock:
                lab.booted = [g for g in lab.booted if g.name != guest.name]
    if run.label:
        report["instance"]["label"] = run.label
    return report


def worst(codes: list[int]) -> int:
    """A matrix's exit status: 1 if any failed, else 3 if any could not start, else 2 if any was
    degraded, else 0."""
    for code in (1, 3, 2):
        if code in codes:
            return code
    return 0


def fitting_parallel(memory: int) -> int:
    """Guests that fit this machine side by side: a core each, and their memory with room to spare."""
    avail = 0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) // 1024
    except (OSError, ValueError):
        pass
    by_memory = max(1, (avail - 1024) // ((memory or 1024) + 384)) if avail else 1
    return max(1, min(os.cpu_count() or 1, by_memory))


def run_matrix(lab: Lab, runs: list[Run], parallel: int, say: Callable[[str], None]) -> list[dict[str, Any]]:
    """Each run on ``lab``, ``parallel`` at once; the reports in the runs' order."""
    reports: list[dict[str, Any] | None] = [None] * len(runs)
    lock = threading.Lock()

    def one(i: int) -> None:
        say("vrouter-lab: [%d/%d] %s: booting" % (i + 1, len(runs), runs[i].title()))
        r = run_one(lab, runs[i], say)
        with lock:
            reports[i] = r
        say("vrouter-lab: [%d/%d] %s: %s (exit %d)%s" % (i + 1, len(runs), runs[i].title(), r["status"], r["exit_code"],
                                                          ": " + r["reason"] if r.get("reason") else ""))  # fmt: skip

    pool = ThreadPoolExecutor(max_workers=max(1, parallel))
    try:
        for f in [pool.submit(one, i) for i in range(len(runs))]:
            f.result()
    except BaseException:
        CANCEL.set()  # the running ones stop waiting; the queued ones never start
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return [r for r in reports if r is not None]


def _stem(path: str | None) -> str:
    if not path:
        return "no-user-data"
    base = os.path.basename(path)
    return base.rsplit(".", 1)[0] if "." in base else base


def load_matrix(path: str, base: Run, read_file: Callable[[str, str], bytes]) -> tuple[list[Run], int | None]:
    """The runs of a matrix file (JSON, or TOML when it ends in .toml) and its ``parallel``:
    ``images`` (required), ``user_data`` (files; null: none), ``config_drive`` (modes), and for
    every run ``expect_datasource`` (a name, or an object by config drive mode), ``timeout``,
    ``ssh_key``, ``instances``, ``memory``, ``accel``.  ValueError naming what is wrong."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        if path.endswith(".toml"):
            import tomllib

            data = tomllib.loads(raw.decode())
        else:
            data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError("--matrix %s: not %s: %s" % (path, "TOML" if path.endswith(".toml") else "JSON", e)) from None
    if not isinstance(data, dict):
        raise ValueError("--matrix %s: an object with images, user_data, config_drive" % path)
    unknown = set(data) - MATRIX_KEYS
    if unknown:
        raise ValueError("--matrix %s: unknown keys %s (known: %s)" % (path, ", ".join(sorted(unknown)), ", ".join(sorted(MATRIX_KEYS))))
    images = data.get("images")
    if not isinstance(images, list) or not images or not all(isinstance(i, str) for i in images):
        raise ValueError("--matrix %s: images: a list of image files" % path)
    uds = data.get("user_data", [None])
    modes = data.get("config_drive", ["none"])
    if not isinstance(uds, list) or not all(u is None or isinstance(u, str) for u in uds) or not uds:
        raise ValueError("--matrix %s: user_data: a list of files (null: no user data)" % path)
    if not isinstance(modes, list) or not modes or any(m not in CONFIG_DRIVE_MODES for m in modes):
        raise ValueError("--matrix %s: config_drive: a list of %s" % (path, ", ".join(CONFIG_DRIVE_MODES)))
    expect = data.get("expect_datasource", base.expect_datasource)
    here = os.path.dirname(os.path.abspath(path))

    def rel(p: str) -> str:
        return p if os.path.isabs(p) else os.path.join(here, p)

    common = replace(base)
    number = (int, float)
    if "timeout" in data:
        if not isinstance(data["timeout"], number) or data["timeout"] <= 0:
            raise ValueError("--matrix %s: timeout: seconds, above 0" % path)
        common.timeout = float(data["timeout"])
    if "memory" in data:
        if not isinstance(data["memory"], int) or not 64 <= data["memory"] <= 16384:
            raise ValueError("--matrix %s: memory: MiB, from 64 to 16384" % path)
        common.memory = data["memory"]
    if "accel" in data:
        if data["accel"] not in ("auto", "kvm", "tcg"):
            raise ValueError("--matrix %s: accel: auto, kvm or tcg" % path)
        common.accel = data["accel"]
    if "ssh_key" in data:
        key = read_file("ssh_key", rel(str(data["ssh_key"]))).decode("utf-8", "replace").strip()
        if not key.startswith(("ssh-", "ecdsa-", "sk-")) or "\n" in key:
            raise ValueError("--matrix %s: ssh_key %s: not one OpenSSH public key" % (path, data["ssh_key"]))
        common.ssh_key = key
    if "instances" in data:
        inst = data["instances"]
        if isinstance(inst, str):  # a file of the instance's data, as --instances takes it
            inst = json.loads(read_file("instances", rel(inst)))
            inst = next(iter(inst.values())) if isinstance(inst, dict) and len(inst) == 1 and isinstance(next(iter(inst.values())), dict) else inst
        if not isinstance(inst, dict):
            raise ValueError("--matrix %s: instances: the instance's data (an object, or a file of one)" % path)
        common.instance = dict(inst)
    runs: list[Run] = []
    for image, ud, mode in itertools.product(images, uds, modes):
        label = "%s-%s-%s" % (_stem(image), _stem(ud), mode)
        if any(r.label == label for r in runs):  # two images (or user data) of one name in different places
            label += "-%d" % (sum(r.label.startswith(label) for r in runs) + 1)
        ds = expect.get(mode, "") if isinstance(expect, dict) else str(expect or "")
        runs.append(replace(common, image=rel(image), user_data=read_file("user_data", rel(ud)) if ud else None, user_data_name=ud or "",
                            config_drive=mode, expect_datasource=ds, label=label, instance=dict(common.instance)))  # fmt: skip
    parallel = data.get("parallel")
    if parallel is not None and (not isinstance(parallel, int) or parallel < 1):
        raise ValueError("--matrix %s: parallel: a number of guests at once, 1 or more" % path)
    return runs, parallel
