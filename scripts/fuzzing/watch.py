"""Crashes, found while the fuzzer runs: each node's processes and its logs.

``Watch`` asks every agent for its status (``vrouter status``'s answer, through the control socket)
every ``period`` seconds and keeps every pid it has seen of the agent, each dataplane worker and
the metadata proxy, and the restart counters; a pid that changes, a worker being restarted (pid
0), a restart counted, an agent that does not answer: a crash.  At the end it also reads what the
agents, their proxies and Nova logged since the start: a traceback is a crash that was caught
(and logged) rather than one that killed a process; ERROR and CRITICAL lines are listed.
Besides crashes: the per-packet exceptions the dataplane caught (``Dataplane Error``), the
proxy's internal errors, and each node's drop counters over the run.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

from vrouter.agent.control import AgentNotRunning, RequestFailed, call
from vrouter.agent.paths import StatePaths
from vrouter.messages.control import DropStats, DropStatsRequest, Status, StatusRequest

LEVEL = re.compile(r" (ERROR|CRITICAL) ")
WARNING = re.compile(r"^\S+ \S+ WARNING (.*)$")
NUMBERS = re.compile(r"\d+")


def status(state_dir: str) -> Status:
    st = call(StatePaths.of(state_dir).socket, StatusRequest(), timeout=10)
    assert isinstance(st, Status)
    return st


def drops(state_dir: str) -> dict[str, int]:
    d = call(StatePaths.of(state_dir).socket, DropStatsRequest(), timeout=10)
    assert isinstance(d, DropStats)
    return dict(d.counts)


@dataclass
class Node:
    """One agent as watched: the pids seen, the counters at the start and at the last look."""

    name: str
    state_dir: str
    log: str
    log_from: int = 0
    first: Status | None = None
    last: Status | None = None
    agent_pids: list[int] = field(default_factory=list)
    worker_pids: list[list[int]] = field(default_factory=list)  # by worker index
    proxy_pids: list[int] = field(default_factory=list)
    bpf_programs: list[list[int]] = field(default_factory=list)
    workers_restarting: int = 0  # looks that found a worker at pid 0
    unanswered: list[str] = field(default_factory=list)
    drops_before: dict[str, int] = field(default_factory=dict)

    def look(self) -> None:
        try:
            st = status(self.state_dir)
        except (AgentNotRunning, RequestFailed, OSError) as e:
            self.unanswered.append("%s: %s" % (time.strftime("%H:%M:%S"), e))
            return
        if self.first is None:
            self.first = st
        self.last = st
        seen(self.agent_pids, st.pid)
        seen(self.proxy_pids, st.proxy.pid)
        for i, pid in enumerate(st.dataplane_workers):
            while len(self.worker_pids) <= i:
                self.worker_pids.append([])
            if pid == 0:
                self.workers_restarting += 1
            else:
                seen(self.worker_pids[i], pid)
        if not self.bpf_programs or self.bpf_programs[-1] != st.bpf_programs:
            self.bpf_programs.append(list(st.bpf_programs))
        for pid in [st.pid, st.proxy.pid] + [p for p in st.dataplane_workers if p]:
            if not alive(pid):
                self.unanswered.append("%s: pid %d reported but not running" % (time.strftime("%H:%M:%S"), pid))


def seen(pids: list[int], pid: int) -> None:
    if pid and (not pids or pids[-1] != pid):
        pids.append(pid)


def alive(pid: int) -> bool:
    """Running and not a zombie."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def log_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def read_log(path: str, start: int) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(start)
            return f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return []


class Watch:
    """Every node of the lab, looked at every ``period`` seconds on a thread of its own."""

    def __init__(self, layout: dict, period: float = 2.0) -> None:
        self.nodes = [Node(n["name"], n["state_dir"], n["agent_log"]) for n in layout["nodes"]]
        self.nova_log = layout["logs"]["nova"]
        self.nova_from = 0
        self.period = period
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> None:
        self.nova_from = log_size(self.nova_log)
        for n in self.nodes:
            n.log_from = log_size(n.log)
            n.look()
            try:
                n.drops_before = drops(n.state_dir)
            except (AgentNotRunning, RequestFailed, OSError) as e:
                n.unanswered.append("dropstats: %s" % e)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop_event.wait(self.period):
            for n in self.nodes:
                n.look()

    def save_logs(self, into: str) -> None:
        """The agents' and Nova's logs, copied into ``into`` (before the lab is removed)."""
        os.makedirs(into, exist_ok=True)
        for n in self.nodes:
            shutil.copyfile(n.log, os.path.join(into, n.name + ".agent.log"))
        shutil.copyfile(self.nova_log, os.path.join(into, "nova.log"))

    def stop(self) -> None:
        self.stop_event.set()
        if self.thread.is_alive():
            self.thread.join(timeout=30)

    def report(self) -> dict[str, object]:
        """Per node: crashes (by process), caught exceptions, the log's tracebacks and errors, the
        drops over the run; and ``crashes``, ``exceptions``: the totals."""
        self.stop()
        nodes: dict[str, object] = {}
        total_crashes = total_exceptions = 0
        for n in self.nodes:
            n.look()  # once more, at the end
            lines = read_log(n.log, n.log_from)
            tracebacks = [i for i, line in enumerate(lines) if line.startswith("Traceback")]
            errors = [line for line in lines if LEVEL.search(line)]
            warnings = Counter(NUMBERS.sub("N", m.group(1)) for m in map(WARNING.match, lines) if m)
            first, last = n.first, n.last
            restarts_workers = (last.dataplane_worker_restarts - first.dataplane_worker_restarts) if first and last else 0
            restarts_proxy = (last.proxy.restarts - first.proxy.restarts) if first and last else 0
            crashes = {
                "agent": len(n.agent_pids) - 1 if n.agent_pids else 1,
                "dataplane_workers": max(restarts_workers, sum(max(0, len(p) - 1) for p in n.worker_pids), 1 if n.workers_restarting else 0),
                "proxy": max(restarts_proxy, len(n.proxy_pids) - 1),
                "unanswered": len(n.unanswered),
            }
            exceptions = {
                "dataplane_errors": (last.dataplane_errors - first.dataplane_errors) if first and last else 0,
                "proxy_internal_errors": (last.proxy.internal_errors - first.proxy.internal_errors) if first and last else 0,
                "log_tracebacks": len(tracebacks),
            }
            answered: dict[str, int] = {}
            if first and last:  # what the node's services and its proxy did with it all
                for name, (a, b) in (("services", (first.services, last.services)), ("proxy", (first.proxy, last.proxy))):
                    was, now = asdict(a), asdict(b)
                    answered.update({"%s.%s" % (name, k): v - was[k] for k, v in now.items() if isinstance(v, int) and k != "pid" and v - was[k] > 0})
            try:
                after = drops(n.state_dir)
            except (AgentNotRunning, RequestFailed, OSError):
                after = {}
            total_crashes += sum(crashes.values())
            total_exceptions += sum(exceptions.values())
            nodes[n.name] = {
                "crashes": crashes,
                "exceptions": exceptions,
                "pids": {"agent": n.agent_pids, "dataplane_workers": n.worker_pids, "proxy": n.proxy_pids},
                "bpf_programs": n.bpf_programs,
                "unanswered": n.unanswered[:5],
                "log_errors": errors[:10],
                "log_error_lines": len(errors),
                "log_warnings": sum(warnings.values()),  # not crashes: what the node said of what it got (numbers as N)
                "log_warning_kinds": dict(warnings.most_common(5)),
                "tracebacks": ["\n".join(lines[i : i + 30]) for i in tracebacks[:3]],
                "drops": {k: v - n.drops_before.get(k, 0) for k, v in after.items() if v - n.drops_before.get(k, 0)},
                "counters": answered,
            }
        nova = read_log(self.nova_log, self.nova_from)
        nova_tb = [i for i, line in enumerate(nova) if line.startswith("Traceback")]
        return {
            "crashes": total_crashes,
            "exceptions": total_exceptions + len(nova_tb),
            "nodes": nodes,
            "nova": {"log_tracebacks": len(nova_tb), "tracebacks": ["\n".join(nova[max(0, i - 2) : i + 30]) for i in nova_tb[:3]]},
        }
