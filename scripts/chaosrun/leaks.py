"""What each compute node holds, and what must be gone: the leak checks of the chaos soak.

A ``View`` of a node is read from outside it, with the tools an operator has: ``ip netns pids``
(the processes in its namespace), ``ip link`` (its taps), ``/proc/net/netfilter/nfnetlink_queue``
read in its namespace (the NFQUEUE queues bound there), ``nft -j list ruleset`` (its tables and
rules), ``tc filter show`` (the BPF programs on its taps and vhost0), ``vrouter status``, ``vif
--list`` and ``dropstats`` (flows, NAT ports, the proxy's connections, the counters), and
``bpftool`` (which programs and maps exist in the kernel).  ``Tracker`` remembers every process,
BPF program and map it ever saw of the labs, so that one that outlives its owner is found: a
process of a killed agent, a program a killed agent left attached.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections import Counter
from dataclasses import dataclass

from infra.etcd_wire import StoreError
from scripts.chaosrun.labs import Agent, Labs
from topology import netns
from topology.etcd import in_etcd


def sh(*cmd: str, timeout: float = 30) -> str:
    r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    return r.stdout if r.returncode == 0 else ""


def cmdline(pid: int) -> str:
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def alive(pid: int, cmd: str) -> bool:
    """``pid`` runs still as the process seen then (not a zombie, not a new process with its number)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False
    except (OSError, IndexError):
        return False
    return cmdline(pid) == cmd


def ruleset(text: str) -> list[str]:
    """``nft list ruleset``'s rules, each "TABLE CHAIN: RULE" with its counters blanked."""
    out, table, chain = [], "", ""
    for line in text.splitlines():
        words = line.split()
        if not words or words[0] in ("}", "#") or line.startswith("#"):
            continue
        if words[0] == "table":
            table = " ".join(words[1:3])
        elif words[0] == "chain":
            chain = words[1]
        elif words[0] not in ("type", "policy") and not line.rstrip().endswith("{"):
            out.append("%s %s: %s" % (table, chain, re.sub(r"counter packets \d+ bytes \d+", "counter", line.strip())))
    return out


def bpf_ids() -> tuple[set[int], set[int]]:
    """Every BPF program's and map's id in the kernel now."""
    progs = {p["id"] for p in json.loads(sh("bpftool", "-j", "prog", "show") or "[]")}
    maps = {m["id"] for m in json.loads(sh("bpftool", "-j", "map", "show") or "[]")}
    return progs, maps


def bpf_maps_of(prog: int) -> set[int]:
    return set(json.loads(sh("bpftool", "-j", "prog", "show", "id", str(prog)) or "{}").get("map_ids", []))


@dataclass
class View:
    """One node at one moment."""

    label: str
    namespace: str
    status: dict
    pids: set[int]  # processes in its namespace
    taps: set[str]
    want_taps: set[str]  # its VMs' (the layout's)
    queues: set[int]  # NFQUEUE queues bound in its namespace
    vif_queues: set[int]  # the vifs' own (vif --list)
    nft: dict[str, int]  # table -> rules
    rules: list[str]  # every rule as nft lists it (its counters blanked), "TABLE CHAIN: RULE"
    tc: dict[str, list[int]]  # DEV/ingress|egress -> BPF program ids

    @property
    def own_pids(self) -> set[int]:
        """What should run in the namespace: the agent, its proxy process, its workers."""
        st = self.status
        return ({st["pid"], st["proxy"]["pid"], *st["dataplane_workers"]} - {0}) if st else set()


class Tracker:
    """The labs' nodes as they are, and everything of theirs ever seen."""

    def __init__(self, labs: Labs) -> None:
        self.labs = labs
        self.processes: dict[int, tuple[str, str]] = {}  # pid -> (its command line, whose)
        self.programs: dict[int, str] = {}  # BPF program id -> whose
        self.maps: dict[int, str] = {}
        self.baseline: dict[str, View] = {}
        self.etcd_keys_read = 0  # at the last etcd_check

    def view(self, agent: Agent, layout_vms: list[dict]) -> View:
        ns = agent.namespace
        try:
            st = agent.status()
        except Exception:  # noqa: BLE001 - an agent that does not answer is what the checks report
            st = {}
        pids = {int(p) for p in sh("ip", "netns", "pids", ns).split()}
        links = json.loads(sh("ip", "-n", ns, "-j", "link", "show") or "[]")
        taps = {link["ifname"] for link in links if link["ifname"].startswith("tap")}
        bound = sh("ip", "netns", "exec", ns, "cat", "/proc/net/netfilter/nfnetlink_queue")
        queues = {int(line.split()[0]) for line in bound.splitlines() if line.strip()}
        vifs = agent.vifs() if st else []
        nft: dict[str, int] = {}
        for item in json.loads(sh("ip", "netns", "exec", ns, "nft", "-j", "list", "ruleset") or '{"nftables": []}')["nftables"]:
            if "table" in item:
                nft.setdefault("%s %s" % (item["table"]["family"], item["table"]["name"]), 0)
            elif "rule" in item:
                key = "%s %s" % (item["rule"]["family"], item["rule"]["table"])
                nft[key] = nft.get(key, 0) + 1
        rules = ruleset(sh("ip", "netns", "exec", ns, "nft", "list", "ruleset"))
        tc: dict[str, list[int]] = {}
        if self.labs.datapath == "ebpf":
            for dev in sorted(taps) + ["vhost0"]:
                for hook in ("ingress", "egress"):
                    shown = sh("ip", "netns", "exec", ns, "tc", "filter", "show", "dev", dev, hook)
                    tc["%s/%s" % (dev, hook)] = [int(x) for x in re.findall(r"\bbpf\b.*?\bid (\d+)", shown)]
        view = View(agent.label, ns, st, pids, taps, {v["tap"] for v in layout_vms if v.get("node", 1) == agent.node},
                    queues, {q for v in vifs for q in v.get("queues", [])}, nft, rules, tc)  # fmt: skip
        self.remember(view)
        return view

    def views(self) -> dict[str, View]:
        layouts = {lab.prefix: lab.layout() or {} for lab in self.labs.all if lab.is_up()}
        return {a.label: self.view(a, layouts.get(a.lab.prefix, {}).get("vms", [])) for a in self.labs.agents()}

    def remember(self, view: View) -> None:
        for pid in view.pids:
            if pid not in self.processes:
                self.processes[pid] = (cmdline(pid), view.label)
        for prog in view.status.get("bpf_programs", []) if view.status else []:
            if prog not in self.programs:
                self.programs[prog] = view.label
                for m in bpf_maps_of(prog):
                    self.maps.setdefault(m, view.label)

    def daemons(self) -> None:
        """Nova's and etcd's processes, remembered (they run in the fabric namespaces)."""
        for lab in self.labs.all:
            if lab.is_up():
                for pid in {int(p) for p in sh("ip", "netns", "pids", lab.fabric).split()}:
                    self.processes.setdefault(pid, (cmdline(pid), lab.prefix + "-fabric"))

    # -- the checks -------------------------------------------------------------------------------

    def check(self, views: dict[str, View]) -> list[str]:
        """What is left over or missing now, against what each node should hold and its baseline."""
        out: list[str] = []
        for label, v in views.items():
            if not v.status:
                out.append("%s: the agent does not answer" % label)
                continue
            extra = v.pids - v.own_pids
            out += ["%s: process %d in its namespace is none of the agent's (%s)" % (label, p, cmdline(p)[:80]) for p in sorted(extra)]
            if 0 in v.status["dataplane_workers"] or v.status["proxy"]["pid"] == 0:
                out.append("%s: a worker or the proxy process is not running" % label)
            if v.taps != v.want_taps:
                out.append("%s: taps %s left over, %s missing" % (label, sorted(v.taps - v.want_taps), sorted(v.want_taps - v.taps)))
            workers = len(v.status["dataplane_workers"])
            node_queues = set(range(workers + 1))  # each worker's node queue, and the tunnel queue in a cloud
            stray = v.queues - v.vif_queues - node_queues
            unread = v.vif_queues - v.queues
            if stray or unread:
                out.append("%s: NFQUEUE queues bound for no vif %s, vif queues not bound %s" % (label, sorted(stray), sorted(unread)))
            base = self.baseline.get(label)
            # the rules as a set: a rule twice is a finding of its own (``duplicates``), not a leak
            if base is not None and (set(v.nft) != set(base.nft) or set(v.rules) != set(base.rules)):
                added, removed = sorted(set(v.rules) - set(base.rules)), sorted(set(base.rules) - set(v.rules))
                out.append("%s: nftables tables %s, %s before the faults; rules added %s, removed %s"
                           % (label, sorted(v.nft), sorted(base.nft), added[:6], removed[:6]))  # fmt: skip
            if self.labs.datapath == "ebpf":
                progs = set(v.status["bpf_programs"])
                for where, ids in v.tc.items():
                    if set(ids) - progs:
                        out.append("%s: BPF programs %s on %s are not the agent's (%s)" % (label, ids, where, sorted(progs)))
                    if base is not None and len(ids) != len(base.tc.get(where, ids)):
                        out.append("%s: %d BPF programs on %s, %d before the faults" % (label, len(ids), where, len(base.tc[where])))
        progs = {p for v in views.values() for p in v.status.get("bpf_programs", [])}
        out += self.outlived({pid for v in views.values() for pid in v.own_pids}, progs)
        return out

    @staticmethod
    def duplicates(views: dict[str, View]) -> list[str]:
        """Rules that are in a node's tables more than once (the same VM's rules appended to tables
        that already had them: see docs/reliability.md#chaos)."""
        out = []
        for label, v in views.items():
            twice = sorted(r for r, n in Counter(v.rules).items() if n > 1)
            if twice:
                out.append("%s: %d nftables rules twice, e.g. %s" % (label, len(twice), twice[0]))
        return out

    def outlived(self, current_pids: set[int], current_progs: set[int]) -> list[str]:
        """Processes, BPF programs and maps seen before whose owner is gone, still there."""
        out = []
        for pid, (cmd, whose) in sorted(self.processes.items()):
            if pid not in current_pids and alive(pid, cmd) and not whose.endswith("-fabric"):
                out.append("%s: process %d (%s) outlived its agent" % (whose, pid, cmd[:80]))
        progs, maps = bpf_ids()
        current_maps = set().union(*(bpf_maps_of(p) for p in current_progs)) if current_progs else set()
        out += ["%s: BPF program %d still loaded" % (w, p) for p, w in sorted(self.programs.items()) if p not in current_progs and p in progs]
        out += ["%s: BPF map %d still there" % (w, m) for m, w in sorted(self.maps.items()) if m not in current_maps and m in maps]
        return out

    def quiescent(self, views: dict[str, View]) -> list[str]:
        """Once the traffic stopped and the flows aged: no flow, NAT port or VM connection left."""
        out = []
        for label, v in views.items():
            st = v.status
            if not st:
                continue
            listed = json.loads(self.labs.agent(label).cli("flow", "-l", "--json"))
            if st["flows_active"] or listed:
                out.append("%s: %d flows active, %d listed by flow -l" % (label, st["flows_active"], len(listed)))
            if st["linklocal_nat_ports_in_use"]:
                out.append("%s: %d link-local NAT ports in use" % (label, st["linklocal_nat_ports_in_use"]))
            if st["proxy"]["vm_connections"]:
                out.append("%s: %d VM connections open in the proxy" % (label, st["proxy"]["vm_connections"]))
        return out

    def etcd_keys(self) -> dict:
        """The cloud's etcd, every key under its prefix, read from the fabric namespace where it
        listens (three tries: StoreError if none answered)."""
        layout = self.labs.cloud.layout()
        assert layout is not None and layout["etcd"]
        for attempt in range(3):
            try:
                return in_etcd(layout["etcd"]["urls"], layout["etcd"]["key_prefix"], layout["namespaces"]["fabric"], lambda s: s.get_all()[1])
            except StoreError:
                if attempt == 2:
                    raise
                time.sleep(1)  # etcd busy or starting: once more, a second later
        raise AssertionError("unreachable")

    def etcd_check(self) -> list[str]:
        """Keys that name a node, port or instance the cloud no longer has, and ports it has with no key."""
        try:
            keys = self.etcd_keys()
        except StoreError as e:
            return ["etcd: its keys could not be read (%s)" % e]
        self.etcd_keys_read = len(keys)
        nodes = {a.namespace for a in self.labs.agents() if a.label != "n"}
        cloud = [lab.layout() or {} for lab in (self.labs.cloud, self.labs.joined) if lab.is_up()]
        ports = {v["port_uuid"] for layout in cloud for v in layout["vms"]}
        joined = {v["instance_uuid"] for layout in cloud[1:] for v in layout["vms"]}
        out = []
        for key, value in sorted(keys.items()):
            kind, _, rest = key.partition("/")
            if kind == "nodes" and rest not in nodes:
                out.append("etcd: %s of a node that is gone" % key)
            elif kind in ("ports", "routes") and isinstance(value, dict) and value.get("node") not in nodes:
                out.append("etcd: %s names node %s, which is gone" % (key, value.get("node")))
            elif kind == "ports" and rest not in ports:
                out.append("etcd: %s of a port no node has" % key)
            elif kind == "instances" and rest not in joined:
                out.append("etcd: %s of an instance no lab has" % key)
        have = {k.partition("/")[2] for k in keys if k.startswith("ports/")}
        out += ["etcd: port %s has no key" % p for p in sorted(ports - have)]
        return out

    def after_down(self, prefixes: list[str]) -> list[str]:
        """Once every lab is down: no namespace, state, resolver file, process, BPF object or pin of theirs."""
        out = ["namespace %s left" % ns for ns in netns.names() if any(ns.startswith(p + "-") for p in prefixes)]
        for p in prefixes:
            for d in (os.path.join(self.labs.node.root, p),):
                if os.path.exists(d):
                    out.append("state directory %s left" % d)
        if os.path.isdir("/etc/netns"):
            out += ["/etc/netns/%s left" % d for d in os.listdir("/etc/netns") if any(d.startswith(p + "-") for p in prefixes)]
        out += self.outlived(set(), set())
        out += ["%s: process %d (%s) still runs" % (w, pid, cmd[:80]) for pid, (cmd, w) in sorted(self.processes.items())
                if w.endswith("-fabric") and alive(pid, cmd)]  # fmt: skip
        for d, _, files in os.walk("/sys/fs/bpf"):
            out += ["BPF pin %s left" % os.path.join(d, f) for f in files if any(p in f for p in prefixes)]
        return out


def counters(labs: Labs) -> dict[str, dict[str, int]]:
    """Each agent's counters now: every vif's packets and drops (``vif --list``), their totals,
    ``dropstats``' total, the flows set up and the proxy's requests (``status``)."""
    out = {}
    for a in labs.agents():
        try:
            vifs, drops, st = a.vifs(), a.drops(), a.status()
        except Exception:  # noqa: BLE001 - an agent that is down has no counters
            continue
        c = {"%s %s" % (v["name"], k): v[k] for v in vifs for k in ("rx_packets", "tx_packets", "drops")}
        c.update({"total " + k: sum(v[k] for v in vifs) for k in ("rx_packets", "tx_packets", "drops")})
        c.update(dropstats=sum(drops.values()), flow_setups=st["flow_setups"], proxy_requests=st["proxy"]["requests"])
        out[a.label] = c
    return out


def fell(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]) -> list[str]:
    """The counters that went down from ``before`` to ``after``, a line a node (a total should
    never fall: the real vRouter keeps its counters in the kernel, across restarts of the agent)."""
    out = []
    for label, now in after.items():
        was = before.get(label, {})
        down = {k: (was[k], n) for k, n in now.items() if k in was and n < was[k]}
        if not down:
            continue
        vifs = sorted({k.split()[0] for k in down if not k.startswith("total ") and " " in k})
        rest = ", ".join("%s %d -> %d" % (k, a, b) for k, (a, b) in sorted(down.items()) if k.startswith("total ") or " " not in k)
        out.append("%s: %s%s" % (label, rest or "totals kept", "; per vif on %d of them (%s)" % (len(vifs), ", ".join(vifs[:3])) if vifs else ""))
    return out
