"""The VMs' samples as the driver sees them, and the window of each fault.

``Traffic`` starts the load process (``scripts.chaosrun.load``), gives it its commands and reads
its samples as they come (a thread appends them to a list).

A fault's window runs from the fault (``t0``) until every VM is served again.  Served: a sample
that succeeded within ``prompt`` seconds (a request that succeeded but took longer, as under a
slowed Nova, is not yet served again, nor a failure).  For each subject (a VM's metadata
requests, a stream) the time it is served again is the end of its first prompt success that
began after the end of its last unprompt sample (failed or slow) overlapping the window; the
window ends (``recovered``) when the last subject is served again, and never before ``t1``, when
the driver had put things back (a restart done, a rule lapsed, a node added).  Since a later end
can take in more failures, it is computed to a fixed point.  A failure is inside a window when
it overlaps it (from its start to its end); any other failure is outside every window, which
fails the run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass(frozen=True)
class Sample:
    kind: str  # m: a metadata request, t: a TCP exchange, u: a UDP exchange
    subject: str  # the VM's namespace, or SRC>DST/PROTO
    start: float
    end: float
    ok: bool
    detail: str

    @property
    def took(self) -> float:
        return self.end - self.start


class LoadError(Exception):
    """The load process died or did not answer."""


class Traffic:
    """The load process: commands in, samples out."""

    def __init__(self, log: str, interval: float, stream_interval: float, stream_timeout: float) -> None:
        self.samples: list[Sample] = []
        self.subjects: set[str] = set()  # what runs now: VMs' namespaces and streams
        self._acks: set[int] = set()
        self._cond = threading.Condition()
        self._next = 0
        self._log = open(log, "ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "scripts.chaosrun.load",
                "--interval",
                str(interval),
                "--stream-interval",
                str(stream_interval),
                "--stream-timeout",
                str(stream_timeout),
            ],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            bufsize=1,
            start_new_session=True,
        )  # fmt: skip  (a session of its own: a Ctrl-C is the driver's, which stops it)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            row = json.loads(line)
            with self._cond:
                if row[0] == "ack":
                    self._acks.add(row[1])
                else:
                    self.samples.append(Sample(row[0], row[1], row[2], row[3], bool(row[4]), row[5]))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def _command(self, op: str, timeout: float = 30, **kw: object) -> None:
        if self.proc.poll() is not None:
            raise LoadError("the load process exited (%s); see its log" % self.proc.returncode)
        self._next += 1
        n = self._next
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"id": n, "op": op, **kw}) + "\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        with self._cond:
            while n not in self._acks:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise LoadError("the load process did not do %r within %.0f s" % (op, timeout))
                self._cond.wait(min(left, 0.5))

    def add(self, vms: list[dict], streams: list[tuple[str, str, str]]) -> None:
        """VMs (layout records) and streams (src namespace, dst namespace, tcp|udp) start."""
        self._command("add", vms=[{k: vm[k] for k in ("namespace", "instance_uuid", "ip")} for vm in vms], streams=[list(s) for s in streams])
        self.subjects |= {vm["namespace"] for vm in vms} | {"%s>%s/%s" % s for s in streams}

    def drop(self, namespaces: Iterable[str]) -> None:
        """Those VMs stop, and every stream from or to them; their handles are closed."""
        gone = set(namespaces)
        self._command("drop", namespaces=sorted(gone))
        self.subjects = {s for s in self.subjects if s not in gone and not any(s.startswith(ns + ">") or (">" + ns + "/") in s for ns in gone)}

    def stop(self) -> None:
        """Everything stops; the process exits (killed if it does not)."""
        if self.proc.poll() is None:
            try:
                self._command("stop", timeout=20)
            except (LoadError, OSError):
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._reader.join(5)
        self._log.close()
        self.subjects = set()

    def mark(self) -> int:
        """Where the samples are now (every sample that ends later is appended after it)."""
        with self._cond:
            return len(self.samples)

    def since(self, mark: int) -> list[Sample]:
        with self._cond:
            return self.samples[mark:]


@dataclass
class Window:
    """One fault's window: from ``t0`` to ``recovered`` (None: not served again in time)."""

    t0: float
    t1: float
    recovered: float | None
    last: str  # the subject served again last
    not_served: list[str]  # subjects never served again (when ``recovered`` is None)

    def overlaps(self, s: Sample, until: float) -> bool:
        end = self.recovered if self.recovered is not None else until
        return s.end >= self.t0 and s.start <= end


def window(samples: list[Sample], subjects: set[str], t0: float, t1: float, prompt: float) -> Window:
    """When every subject was served again after a fault at ``t0`` put back at ``t1`` (see the module)."""
    mine: dict[str, list[Sample]] = {s: [] for s in subjects}
    for x in samples:
        if x.end >= t0 and x.subject in mine:
            mine[x.subject].append(x)
    for xs in mine.values():
        xs.sort(key=lambda x: x.start)
    end, last = t1, ""
    while True:
        served: dict[str, float] = {}
        missing = []
        for subject, xs in mine.items():
            bad_end = t0
            for x in xs:
                if (not x.ok or x.took > prompt) and x.start <= end:
                    bad_end = max(bad_end, x.end)
            first = next((x.end for x in xs if x.ok and x.took <= prompt and x.start >= bad_end), None)
            if first is None:
                missing.append(subject)
            else:
                served[subject] = first
        if missing:
            return Window(t0, t1, None, "", sorted(missing))
        new_end, new_last = max([(t1, "")] + [(v, k) for k, v in served.items()])
        if new_end <= end:
            return Window(t0, t1, end, last, [])
        end, last = new_end, new_last


def failures(samples: list[Sample]) -> list[Sample]:
    return [s for s in samples if not s.ok]
