"""The faults of the chaos soak, in the order they are done, each on the single node (n) and a node
of the cloud (c1..c3) at once where it applies.

* ``worker``: a dataplane worker (worker 1 of n and of c2) killed with SIGKILL; the agent restarts
  it (``infra/children.py``).  Put back (``t1``) when ``vrouter status`` shows the new pid.
* ``proxy``: the metadata proxy process of n and c2, SIGKILL; the agent restarts it.
* ``agent``: the agent of n and c2, SIGKILL.  Nothing supervises the agent in the lab (as on a
  compute node, where systemd or the container runtime does): after ``fault_seconds`` it is started
  again as ``netns_setup.sh start-agent`` starts it (``Lab.start_agent``), which plugs its ports
  from its files and, on the cloud's node, loads the rest from etcd.
* ``nova-metadata``: Nova's stand-in of n and of the cloud, SIGKILL, started again after
  ``fault_seconds`` as ``netns_setup.sh start-nova`` does (nothing supervises it either).
* ``nova-slow``: every proxy delays every request ``slow_delay`` seconds before it goes to Nova, for
  ``fault_seconds`` (``vrouter metadata fault add --all --delay D --for S`` on every agent).
* ``etcd``: the cloud's etcd, SIGKILL, started again after ``fault_seconds`` (``start-etcd``); put
  back when every agent of the cloud is connected to it again.
* ``node``: the cloud's node 3 removed (``down --node 3``: its VMs' traffic stopped first, and the
  streams to them), and after ``fault_seconds`` a node added in its place with ``rejoin_vms`` VMs
  (``up --join``); its VMs' traffic and streams to and from them start then.
"""

from __future__ import annotations

import functools
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from scripts.chaosrun.labs import REJOIN_NODE, Agent, Labs
from scripts.chaosrun.leaks import Tracker
from scripts.chaosrun.samples import Traffic
from topology import netns
from vrouter.agent.control import call
from vrouter.messages.control import FaultAdd


class FaultError(Exception):
    """A fault could not be done or put back; the message says which step."""


@dataclass
class Context:
    labs: Labs
    traffic: Traffic
    tracker: Tracker
    say: Callable[[str], None]
    fault_seconds: float
    slow_delay: float
    rejoin_vms: int


@dataclass
class Done:
    """A fault done: from ``t0`` (the fault) to ``t1`` (put back), on what, and what was seen meanwhile."""

    t0: float
    t1: float
    targets: str
    notes: list[str] = field(default_factory=list)
    leaks: list[str] = field(default_factory=list)


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> float:
    """Until ``cond()``; the time it held (``time.monotonic``).  FaultError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if cond():
                return time.monotonic()
        except Exception:  # noqa: BLE001 - an agent restarting does not answer yet: ask again
            pass
        if time.monotonic() > deadline:
            raise FaultError("%s: not within %.0f s" % (what, timeout))
        time.sleep(0.05)  # polling the agents' state, with a deadline


def together(starts: dict[str, Callable[[], None]]) -> dict[str, float]:
    """Each start at once, in a thread of its own (as a supervisor restarts each daemon on its
    own): how long each took.  The first error, raised once all are done."""
    took: dict[str, float] = {}
    errors: list[BaseException] = []

    def one(name: str, start: Callable[[], None]) -> None:
        t = time.monotonic()
        try:
            start()
        except BaseException as e:  # noqa: BLE001 - raised in the caller's thread
            errors.append(e)
        took[name] = time.monotonic() - t

    threads = [threading.Thread(target=one, args=item) for item in starts.items()]
    for th in threads:
        th.start()
    try:
        for th in threads:
            th.join()
    except BaseException:  # interrupted: the starts end (each is bounded) before anything removes the labs
        for th in threads:
            th.join()
        raise
    if errors:
        raise errors[0]
    return dict(sorted(took.items()))


def kill(pid: int) -> None:
    if pid <= 0:
        raise FaultError("no process to kill (pid %d)" % pid)
    os.kill(pid, signal.SIGKILL)


def _children(ctx: Context, pick: Callable[[dict], int], what: str) -> Done:
    """SIGKILL a process the agent supervises (``pick`` finds its pid in the status), of n and c2;
    put back when the agents show new ones."""
    agents = [ctx.labs.agent("n"), ctx.labs.agent("c2")]
    old = {a.label: pick(a.status()) for a in agents}
    t0 = time.monotonic()
    for a in agents:
        kill(old[a.label])
    notes = []
    for a in agents:

        def restarted(a: Agent = a) -> bool:
            return pick(a.status()) not in (0, old[a.label])

        back = wait_for(restarted, 30, "%s's %s restarted" % (a.label, what))
        notes.append("%s back in %.2f s" % (a.label, back - t0))
    return Done(t0, time.monotonic(), "%s of n (pid %d), c2 (pid %d)" % (what, old["n"], old["c2"]), notes)


def worker(ctx: Context) -> Done:
    return _children(ctx, lambda st: st["dataplane_workers"][1], "dataplane worker 1")


def proxy(ctx: Context) -> Done:
    return _children(ctx, lambda st: st["proxy"]["pid"], "proxy process")


def agent(ctx: Context) -> Done:
    agents = [ctx.labs.agent("n"), ctx.labs.agent("c2")]
    pids = {a.label: a.status()["pid"] for a in agents}
    t0 = time.monotonic()
    for a in agents:
        kill(pids[a.label])
    time.sleep(ctx.fault_seconds)
    took = together({a.label: functools.partial(a.lab.start_agent, a.node) for a in agents})  # as netns_setup.sh start-agent [--node I]
    notes = ["%s started again in %.2f s" % (label, t) for label, t in took.items()]
    return Done(t0, time.monotonic(), "agent of n (pid %d), c2 (pid %d); restarted by start-agent" % (pids["n"], pids["c2"]), notes)


def nova(ctx: Context) -> Done:
    labs = [ctx.labs.node, ctx.labs.cloud]
    pids = [lab.pid("nova.pid") for lab in labs]
    t0 = time.monotonic()
    for pid in pids:
        kill(pid)
    time.sleep(ctx.fault_seconds)
    took = together({lab.prefix: lab.start_nova for lab in labs})  # as netns_setup.sh start-nova
    notes = ["%s's started again in %.2f s" % (prefix, t) for prefix, t in took.items()]
    return Done(t0, time.monotonic(), "nova-metadata of n (pid %d) and of the cloud (pid %d); restarted by start-nova" % tuple(pids), notes)


def nova_slow(ctx: Context) -> Done:
    agents = ctx.labs.agents()
    rule = FaultAdd(all=True, delay=ctx.slow_delay, for_s=ctx.fault_seconds)
    t0 = time.monotonic()
    for a in agents:
        call(a.sock, rule)
    t1 = t0 + ctx.fault_seconds
    time.sleep(max(0.0, t1 - time.monotonic()))
    return Done(t0, t1, "every request delayed %g s before Nova, on %s" % (ctx.slow_delay, ", ".join(a.label for a in agents)))


def _connected(agents: list[Agent]) -> bool:
    return all((a.status().get("cluster") or {}).get("connected") for a in agents)


def etcd(ctx: Context) -> Done:
    lab = ctx.labs.cloud
    agents = [a for a in ctx.labs.agents() if a.label != "n"]
    pid = lab.pid("etcd.pid")
    t0 = time.monotonic()
    kill(pid)
    notes = []
    try:
        seen = wait_for(lambda: not any((a.status().get("cluster") or {}).get("connected") for a in agents), ctx.fault_seconds + 10,
                        "every agent sees etcd gone")  # fmt: skip
        notes.append("every agent saw etcd gone in %.2f s" % (seen - t0))
    except FaultError as e:
        notes.append(str(e))
    time.sleep(max(0.0, t0 + ctx.fault_seconds - time.monotonic()))
    t = time.monotonic()
    lab.start_etcd()  # as netns_setup.sh start-etcd
    back = wait_for(lambda: _connected(agents), 60, "every agent connected to etcd again")
    notes.append("every agent connected again %.2f s after start-etcd" % (back - t))
    return Done(t0, back, "the cloud's etcd (pid %d); restarted by start-etcd" % pid, notes)


def node(ctx: Context) -> Done:
    labs, traffic = ctx.labs, ctx.traffic
    layout = labs.cloud.layout() or {}
    going = [v["namespace"] for v in layout["vms"] if v.get("node") == REJOIN_NODE]
    t0 = time.monotonic()
    traffic.drop(going)  # the VMs go with their node: their traffic and the streams to them first
    labs.remove_node()
    notes = ["node %d and its VMs %s removed in %.2f s" % (REJOIN_NODE, ", ".join(going), time.monotonic() - t0)]
    leaks = ["after the removal: " + x for x in ctx.tracker.etcd_check()]
    removed = "%s-compute%d" % (labs.cloud.prefix, REJOIN_NODE)
    leaks += ["after the removal: %s left" % p for p in ("/etc/netns/" + removed, netns.path_of(removed)) if os.path.exists(p)]
    if not leaks:
        notes.append("etcd after the removal: %d keys, none of node %d's" % (ctx.tracker.etcd_keys_read, REJOIN_NODE))
    time.sleep(max(0.0, t0 + ctx.fault_seconds - time.monotonic()))
    t = time.monotonic()
    joined = labs.add_node(ctx.rejoin_vms)
    new = joined["vms"]
    notes.append("a node added in its place (%s, vhost0 %s) with %d VMs in %.2f s"
                 % (joined["nodes"][0]["namespace"], joined["nodes"][0]["vhost0"], len(new), time.monotonic() - t))  # fmt: skip
    cloud = labs.cloud.layout() or {}
    first = {n: next(v["namespace"] for v in cloud["vms"] if v.get("node") == n) for n in (1, 2)}
    a, b = new[0]["namespace"], new[-1]["namespace"]
    pairs = [(a, b), (first[2], a), (b, first[1])]  # within the new node, and across, both ways
    traffic.add(new, [(s, d, proto) for s, d in pairs for proto in ("tcp", "udp")])
    return Done(t0, time.monotonic(), "node %d of the cloud removed, added back after %g s" % (REJOIN_NODE, ctx.fault_seconds), notes, leaks)


FAULTS: list[tuple[str, Callable[[Context], Done]]] = [
    ("worker", worker),
    ("proxy", proxy),
    ("agent", agent),
    ("nova-metadata", nova),
    ("nova-slow", nova_slow),
    ("etcd", etcd),
    ("node", node),
]
