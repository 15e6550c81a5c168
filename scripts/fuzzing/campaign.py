"""One fuzzing run on one datapath: the lab built, the others' traffic, the senders, the verdict,
the lab removed (always: ``run`` tears down in ``finally``).

The lab (``topology.lab.Lab``, as ``scripts/netns_setup.sh up`` builds it): a cloud of two
compute nodes over etcd, so that the attacked node has a tunnel port; on node 1 the attacker vm1
and ``vms`` other VMs, on node 2 one VM (its pings to node 1's VMs cross the tunnel the fabric
fuzzes).  With ``nodes`` 1, a single node and no MPLS over UDP from the fabric (a node outside a
cloud has no tunnel port).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from fuzzing.others import Others
from fuzzing.targets import Targets
from fuzzing.watch import Watch
from topology.clients import CloudInitClients
from topology.lab import Lab
from topology.model import Topology

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PYTHON = os.path.join(ROOT, ".venv", "bin", "python")
LEAD = 3.0  # seconds the others run before the attack starts, and after it ends


@dataclass
class Options:
    seconds: float
    prefix: str
    vms: int = 2  # the other VMs on the attacked node
    nodes: int = 2
    pps: float = 150  # the attacker's frames a second, at most
    tunnel_pps: float = 50  # the fabric's MPLS over UDP a second, at most
    http_rate: float = 10  # malformed HTTP connections a second
    slowloris: int = 48  # connections held open, trickling (the proxy allows 64 a VM)
    interval: float = 0.25  # the others' reads and pings, one every so many seconds each
    seed: int = 0
    logs: str = ""  # a directory: each run's logs copied into DIR/DATAPATH before the lab goes


def plan(opts: Options, prefix: str, lab: Lab, datapath: str) -> Topology:
    """vm1 (the attacker) and ``opts.vms`` others on node 1; with two nodes, one VM on node 2."""
    remote = 1 if opts.nodes > 1 else 0
    topo = Topology.plan(prefix, 1 + opts.vms + remote, lab.state, nodes=opts.nodes)
    for vm in topo.vms:
        vm.node = 1
    if remote:
        topo.vms[-1].node = 2
    topo.datapath = datapath
    return topo


def quiet(text: str) -> None:
    """The lab's progress, without a line per port."""
    if not text.startswith(("port ", "  port ", "network ")):
        print("  " + text.strip(), file=sys.stderr, flush=True)


class Senders:
    """The sending processes (``fuzzing.sender``), each in its namespace, in a session of its own."""

    def __init__(self) -> None:
        self.procs: dict[str, subprocess.Popen[str]] = {}

    def start(self, name: str, namespace: str, role: str, cfg: dict) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "scripts"), ROOT]))
        cmd = ["ip", "netns", "exec", namespace, PYTHON, "-m", "fuzzing.sender", role, json.dumps(cfg)]
        self.procs[name] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)

    def finish(self, timeout: float) -> dict[str, dict]:
        """Each one's report (or why there is none)."""
        out: dict[str, dict] = {}
        deadline = time.monotonic() + timeout
        for name, p in self.procs.items():
            try:
                stdout, stderr = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.send_signal(signal.SIGTERM)  # it reports what it sent so far
                try:
                    stdout, stderr = p.communicate(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    stdout, stderr = p.communicate()
            try:
                out[name] = json.loads(stdout.strip().splitlines()[-1])
            except (ValueError, IndexError):
                out[name] = {"error": "exit %s: %s" % (p.returncode, stderr.strip()[-800:])}
        return out

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()


def attacker_served(vm: dict) -> dict[str, int]:
    """The attacker's own cloud-init sequence once, after the attack: the node still serves it."""
    clients = CloudInitClients([vm])
    try:
        r = clients.once()[0]
    finally:
        clients.close()
    return {"ok": r["ok"], "failed": r["failed"]}


def run(opts: Options, datapath: str, say: Callable[[str], None]) -> dict:
    """One campaign on ``datapath``: its report (``passed`` says whether it passed)."""
    prefix = opts.prefix + datapath[0]
    lab = Lab(prefix, say=quiet)
    senders = Senders()
    others: Others | None = None
    watch: Watch | None = None
    started = time.monotonic()
    try:
        vms = 1 + opts.vms + (1 if opts.nodes > 1 else 0)
        say("%s: building the lab %s (%d node%s, %d VMs)" % (datapath, prefix, opts.nodes, "s" if opts.nodes > 1 else "", vms))
        layout = lab.up(plan(opts, prefix, lab, datapath))
        targets = Targets.of_layout(layout, "vm1")
        attacker = layout["vms"][0]
        rest = layout["vms"][1:]
        watch = Watch(layout)
        watch.start()
        gateways = {n["uuid"]: (n["gateway"], n["gateway6"]) for n in layout["networks"]}
        others = Others(rest, gateways, opts.seconds + 2 * LEAD, opts.interval)
        others.start()
        time.sleep(LEAD)  # the others' traffic established before the attack (a lead of its own, not a wait on a condition)
        seed = opts.seed or random.randrange(1 << 30)
        cfg = {"targets": json.loads(targets.dumps()), "seconds": opts.seconds, "pps": opts.pps, "seed": seed, "http_rate": opts.http_rate,
               "slowloris": opts.slowloris}  # fmt: skip
        say("%s: vm1 fuzzes node 1 for %.0f s (seed %d); %d other VMs read their metadata and ping" % (datapath, opts.seconds, seed, len(rest)))
        senders.start("vm", attacker["namespace"], "vm", cfg)
        if opts.nodes > 1:
            senders.start("fabric", layout["namespaces"]["fabric"], "fabric", dict(cfg, pps=opts.tunnel_pps))
        sent = senders.finish(opts.seconds + 60)
        others.finish()
        after = attacker_served(attacker)
        crashes = watch.report()
        theirs = others.report()
        return verdict(opts, datapath, seed, layout, sent, theirs, crashes, after, time.monotonic() - started)
    finally:
        old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}  # the teardown is not interrupted
        try:
            senders.stop()
            if others is not None:
                others.stop()
            if watch is not None:
                watch.stop()
                if opts.logs:
                    try:
                        watch.save_logs(os.path.join(opts.logs, datapath))
                    except OSError as e:
                        say("%s: the logs were not saved: %s" % (datapath, e))
            say("%s: removing the lab %s" % (datapath, prefix))
            lab.down(quiet=True)
        finally:
            for s, h in old.items():
                signal.signal(s, h)


def verdict(opts: Options, datapath: str, seed: int, layout: dict, sent: dict[str, dict], theirs: dict, crashes: dict, after: dict[str, int],
            elapsed: float) -> dict:  # fmt: skip
    vm = sent.get("vm", {})
    fabric = sent.get("fabric", {})
    packets = dict(vm.get("sent", {}))
    if fabric.get("sent"):
        packets["mpls_over_udp (from the fabric)"] = fabric["sent"].get("mpls_over_udp", 0)
    http = vm.get("http", {})
    problems = []
    for name, rep in sent.items():
        if "error" in rep:
            problems.append("the %s sender failed: %s" % (name, rep["error"]))
    if crashes["crashes"]:
        problems.append("%d crashes" % crashes["crashes"])
    if crashes["exceptions"]:
        problems.append("%d exceptions caught or logged" % crashes["exceptions"])
    if theirs["metadata_failed"]:
        problems.append("%d of the others' metadata reads failed" % theirs["metadata_failed"])
    if theirs["pings_lost"] or theirs["ping_errors"]:
        problems.append("%d of the others' pings lost (%d ping errors)" % (theirs["pings_lost"], theirs["ping_errors"]))
    if http.get("leaks"):
        problems.append("%d answers to the attacker held another VM's metadata" % http["leaks"])
    if after["failed"]:
        problems.append("the attacker's own metadata failed %d times after the attack" % after["failed"])
    if not packets:
        problems.append("nothing was sent")
    return {
        "datapath": datapath,
        "passed": not problems,
        "problems": problems,
        "seed": seed,
        "seconds": opts.seconds,
        "elapsed_s": round(elapsed, 1),
        "lab": {
            "prefix": layout["prefix"],
            "nodes": len(layout["nodes"]),
            "vms": [(v["name"], v["ip"], v["node"]) for v in layout["vms"]],
            "attacker": "vm1",
            "mpls_over_udp_from": "the fabric namespace (outer source mostly node 2's vhost0)" if fabric else "nowhere (one node: no tunnel port)",
        },
        "packets_sent": packets,
        "packets_total": sum(packets.values()),
        "packets_per_s": round(sum(vm.get("sent", {}).values()) / (vm.get("seconds") or opts.seconds), 1),
        "build_errors": {**vm.get("build_errors", {}), **fabric.get("build_errors", {})},
        "send_errors": {**vm.get("send_errors", {}), **fabric.get("send_errors", {})},
        "http": http,
        "crashes": crashes["crashes"],
        "exceptions": crashes["exceptions"],
        "nodes": crashes["nodes"],
        "nova": crashes["nova"],
        "others": theirs,
        "attacker_served_after": after,
    }
