"""One datapath's chaos soak, from up to down.

The labs come up (``labs``), the load process starts on every VM (``load``), and once every VM is
served and ``warmup`` seconds have passed the nodes' state is the baseline.  Then each fault in
turn (``faults``): done and put back, the driver waits until every VM is served again (at most
``recovery_timeout`` s after it was put back), then ``quiet`` seconds in which nothing may fail,
then the nodes are checked for leaks against the baseline and their counters against the
previous check.  At the end the traffic stops, the flows age out, and the nodes must hold no
flow, NAT port or VM connection, and the cloud's etcd no key of what is gone.  Whatever happens,
every lab is removed, and then nothing of theirs may be left on the host.  The windows are
computed again from every sample once the run is over (``samples.window``).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import astuple, dataclass

from scripts.chaosrun.faults import FAULTS, Context, FaultError
from scripts.chaosrun.labs import Labs
from scripts.chaosrun.leaks import Tracker, View, counters, fell
from scripts.chaosrun.samples import ROOT, Sample, Traffic, Window, window


@dataclass
class Options:
    fault_seconds: float = 5.0  # how long a fault lasts before it is put back (restarts, the slowdown, the node away)
    quiet: float = 5.0  # seconds after each recovery in which nothing may fail
    warmup: float = 5.0
    recovery_timeout: float = 60.0
    prompt: float = 1.0  # a sample slower than this does not count as served
    slow_delay: float = 1.5  # what nova-slow adds to each request
    interval: float = 0.1  # between a VM's metadata requests
    stream_interval: float = 0.2
    stream_timeout: float = 3.0
    vms: int = 16
    rejoin_vms: int = 2
    faults: tuple[str, ...] = tuple(name for name, _ in FAULTS)


def streams(labs: Labs) -> list[tuple[str, str, str]]:
    """On the single node a ring (each VM to the next); on the cloud each node's first VM to its
    second, and each node's second to the next node's first: within a node and across, TCP and UDP."""
    pairs = []
    node = (labs.node.layout() or {}).get("vms", [])
    pairs += [(v["namespace"], node[(i + 1) % len(node)]["namespace"]) for i, v in enumerate(node)]
    cloud = (labs.cloud.layout() or {}).get("vms", [])
    by_node = [[v["namespace"] for v in cloud if v["node"] == n] for n in sorted({v["node"] for v in cloud})]
    for i, mine in enumerate(by_node):
        pairs.append((mine[0], mine[-1]))
        pairs.append((mine[-1], by_node[(i + 1) % len(by_node)][0]))
    return [(s, d, proto) for s, d in pairs if s != d for proto in ("tcp", "udp")]


def wait_recovered(traffic: Traffic, mark: int, subjects: set[str], t0: float, t1: float, opts: Options) -> Window:
    """Until every subject is served again (or ``recovery_timeout`` after ``t1``)."""
    deadline = t1 + opts.recovery_timeout
    while True:
        w = window(traffic.since(mark), subjects, t0, t1, opts.prompt)
        now = time.monotonic()
        if (w.recovered is not None and now >= w.recovered) or now > deadline:
            return w
        time.sleep(0.25)  # samples come every 0.05 s; polling them, with a deadline


def wait_aged(tracker: Tracker, timeout: float) -> dict[str, View]:
    """The nodes once no flow is left (or ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while True:
        views = tracker.views()
        if all(v.status and v.status["flows_active"] == 0 for v in views.values()) or time.monotonic() > deadline:
            return views
        time.sleep(1)  # the flows age after flow_cache_timeout; polling, with a deadline


def run(datapath: str, prefix: str, opts: Options, say: Callable[[str], None]) -> dict:
    """The soak on ``datapath``; its report (``report.py`` prints it)."""
    logdir = os.path.join(ROOT, "build", "chaos")
    os.makedirs(logdir, exist_ok=True)
    log = open(os.path.join(logdir, "%s.log" % datapath), "w")

    def lab_say(text: str) -> None:
        log.write(text + "\n")
        log.flush()

    labs = Labs(prefix, datapath, lab_say, vms=opts.vms)
    tracker = Tracker(labs)
    traffic: Traffic | None = None
    rows: list[dict] = []
    out: dict = {"datapath": datapath, "prefix": prefix, "rows": rows, "errors": [], "options": opts.__dict__ | {"faults": list(opts.faults)}}
    started = time.monotonic()
    try:
        say("[%s] building the single node (%d VMs, 2 dataplane workers) and a cloud of 3 nodes" % (datapath, opts.vms))
        labs.up()
        tracker.daemons()
        traffic = Traffic(os.path.join(logdir, "%s.load.log" % datapath), opts.interval, opts.stream_interval, opts.stream_timeout)
        t_load = time.monotonic()
        traffic.add(labs.all_vms(), streams(labs))
        out["t_load"] = t_load
        first = wait_recovered(traffic, 0, set(traffic.subjects), t_load, t_load, opts)
        if first.recovered is None:
            raise FaultError("not every VM was served at the start: %s" % ", ".join(first.not_served[:5]))
        say("[%s] %d VMs and %d streams served after %.1f s; warm-up" % (datapath, len(labs.all_vms()), len(streams(labs)),
                                                                          first.recovered - t_load))  # fmt: skip
        time.sleep(opts.warmup)
        ctx = Context(labs, traffic, tracker, say, opts.fault_seconds, opts.slow_delay, opts.rejoin_vms)
        tracker.baseline = tracker.views()
        rows.append({"name": "before the faults", "t0": t_load, "leaks": tracker.check(tracker.baseline),
                     "findings": tracker.duplicates(tracker.baseline)})  # fmt: skip
        for name, fn in FAULTS:
            if name not in opts.faults:
                continue
            say("[%s] fault: %s" % (datapath, name))
            before = counters(labs)
            mark = traffic.mark()
            row: dict = {"name": name, "mark": mark, "t0": time.monotonic()}
            rows.append(row)
            try:
                done = fn(ctx)
                put_back = counters(labs)  # at once, before the traffic makes up for what a restart lost
            except Exception as e:  # noqa: BLE001 - a fault that went wrong is reported, and the run goes on
                row.update(error="%s: %s" % (type(e).__name__, e), t1=time.monotonic(), subjects=sorted(traffic.subjects), leaks=[])
                say("[%s]   %s failed: %s" % (datapath, name, e))
                continue
            row.update(t0=done.t0, t1=done.t1, targets=done.targets, notes=done.notes, subjects=sorted(traffic.subjects))
            w = wait_recovered(traffic, mark, set(traffic.subjects), done.t0, done.t1, opts)
            say("[%s]   %s" % (datapath, "served again after %.2f s" % (w.recovered - done.t0) if w.recovered else "NOT served again: %s"
                                % ", ".join(w.not_served[:4])))  # fmt: skip
            time.sleep(opts.quiet)
            tracker.daemons()
            views = tracker.views()
            if "j" in views and "j" not in tracker.baseline:
                tracker.baseline["j"] = views["j"]  # the node added back: its own state is its baseline
            row.update(leaks=done.leaks + tracker.check(views), counters_down=fell(before, put_back) + fell(put_back, counters(labs)),
                       findings=tracker.duplicates(views))  # fmt: skip
        last = counters(labs)
        rows.append({"name": "end of the traffic", "t0": time.monotonic()})
        traffic.stop()
        say("[%s] traffic stopped; waiting for the flows to age" % datapath)
        views = wait_aged(tracker, labs.flow_timeout * 3 + 30)
        final = tracker.quiescent(views) + tracker.check(views) + tracker.etcd_check()
        seen = "seen over the run: %d processes, %d BPF programs, %d BPF maps; %d etcd keys at the end" % (
            len(tracker.processes),
            len(tracker.programs),
            len(tracker.maps),
            tracker.etcd_keys_read,
        )
        rows.append({"name": "after the run", "leaks": final, "counters_down": fell(last, counters(labs)), "notes": [seen],
                     "findings": tracker.duplicates(views)})  # fmt: skip
    except Exception as e:  # noqa: BLE001 - whatever stopped the run is reported, after the labs are removed
        out["errors"].append("%s: %s" % (type(e).__name__, e))
        say("[%s] ERROR %s" % (datapath, e))
    finally:
        # a signal now would cut the removal short: it waits until the labs are gone
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
        try:
            if traffic is not None:
                traffic.stop()
            try:
                labs.keep_logs(os.path.join(logdir, "%s-logs" % datapath))
            except Exception as e:  # noqa: BLE001 - the logs are a help; the removal must happen
                out["errors"].append("the logs could not be kept: %s" % e)
            say("[%s] removing the labs (their logs kept in build/chaos/%s-logs)" % (datapath, datapath))
            out["errors"] += labs.down()
            rows.append({"name": "after down", "leaks": tracker.after_down([lab.prefix for lab in labs.all])})
            log.close()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    out["seconds"] = round(time.monotonic() - started, 1)
    if traffic is not None:  # every sample, for a closer look: build/chaos/DATAPATH.samples.jsonl
        with open(os.path.join(logdir, "%s.samples.jsonl" % datapath), "w") as f:
            f.writelines(json.dumps(list(astuple(s))) + "\n" for s in traffic.samples)
    analyse(out, traffic.samples if traffic is not None else [], opts)
    return out


def analyse(out: dict, samples: list[Sample], opts: Options) -> None:
    """Each fault's window from every sample, the failures inside it, and those outside every window."""
    faults = [r for r in out["rows"] if "mark" in r]
    timed = [r for r in out["rows"] if "t0" in r]
    spans: list[tuple[float, float]] = []
    for i, row in enumerate(timed):
        if "mark" not in row:
            continue
        limit = timed[i + 1]["t0"] if i + 1 < len(timed) else float("inf")  # the next fault, or the end of the traffic
        mine = [s for s in samples[row["mark"] :] if s.start < limit]
        w = window(mine, set(row["subjects"]), row["t0"], row["t1"], opts.prompt)
        end = w.recovered if w.recovered is not None else limit
        spans.append((row["t0"], end))
        inside = [s for s in mine if not s.ok and s.end >= row["t0"] and s.start <= end]
        row.update(
            down_s=round(row["t1"] - row["t0"], 2),
            recovery_s=round(w.recovered - row["t0"], 2) if w.recovered is not None else None,
            after_put_back_s=round(w.recovered - row["t1"], 2) if w.recovered is not None else None,
            served_last=w.last,
            not_served=w.not_served,
            inside={k: sum(1 for s in inside if s.kind == k) for k in "mtu"},
            slow=sum(1 for s in mine if s.ok and s.took > opts.prompt and s.end >= row["t0"] and s.start <= end),
            errors=sorted({s.detail.split(" b'")[0][:100] for s in inside})[:4],
        )
    outside = [s for s in samples if not s.ok and not any(s.end >= a and s.start <= b for a, b in spans)]
    t_load = out.get("t_load", 0.0)
    for row in out["rows"]:
        row.setdefault("outside", [])
    periods = [r for r in out["rows"] if "t0" in r]
    for s in outside:
        owner = ([r for r in periods if r["t0"] <= s.start] or periods[:1])[-1]
        owner["outside"].append({"kind": s.kind, "subject": s.subject, "at_s": round(s.start - t_load, 2), "detail": s.detail[:100]})
    out["samples"] = {"total": len(samples), "failed": sum(1 for s in samples if not s.ok), "outside": len(outside),
                      "by_kind": {k: sum(1 for s in samples if s.kind == k) for k in "mtu"}}  # fmt: skip
    for row in out["rows"]:
        row.pop("mark", None)
        row.pop("subjects", None)
        for k in ("t0", "t1"):
            if k in row:
                row[k] = round(row[k] - t_load, 2)
    out["failed"] = bool(
        out["errors"] or outside or any(r.get("leaks") or r.get("error") for r in out["rows"]) or any(r.get("recovery_s") is None for r in faults)
    )
