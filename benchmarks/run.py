"""The benchmark suite: this project beside what users would pick instead, in one run.

    sudo .venv/bin/python benchmarks/run.py [--datapaths "nfqueue ebpf"] [--seconds 8] [--repeat 1] [--prefix bench]
    (make bench; make bench DATAPATHS=ebpf)

One emulated host (8 VMs) and one upstream, nginx serving the metadata documents as static files
in the fabric namespace, so that the upstream is not what gets measured. The ways to the upstream
are measured in turn on the same namespaces (--repeat rounds of them all, figures are medians over
the rounds):

  project   the vRouter agent with [FLOWS] datapath = nfqueue: every packet through the Python
            engine (flow table, NAT), signing metadata proxy, with its default dataplane workers
            (one a core) and, beside it, with one worker
  ebpf      the vRouter agent with [FLOWS] datapath = ebpf: an eBPF TC program on each tap forwards
            live flows in the kernel (VM to VM, the metadata NAT both ways), and only misses and
            the TCP lifecycle go up to the Python engine
  kernel    an nftables DNAT of 169.254.169.254:80 straight to nginx: no proxy, no signing
  haproxy   Neutron's way: haproxy in the compute namespace (option http-server-close, option
            forwardfor), deleting and setting the identity headers itself, signing with its hmac
            converter; 169.254.169.254:80 redirected to it by nftables

--datapaths (space or comma separated, both by default) says which of the agent's two are measured
beside the references; the agent is switched by rewriting agent.conf's [FLOWS] and restarting it.

Load comes from wrk (keep-alive and new-connection rates) and a fixed-rate Python client (latency)
inside the VM namespaces. VM-to-VM: small UDP packets from a C sender (iperf3 -u -l 64 -b 0) and a
TCP stream (iperf3), each round, through each datapath and through plain kernel forwarding, with
the CPU time of the agent's processes (the agent, its dataplane workers and its proxy: utime +
stime from /proc) over each; in the first round also small UDP from a Python sender, a Python TCP
stream, and small UDP through the floor of the project's packet I/O, an accept-only NFQUEUE
consumer (the agent's shell and verdict writer, no dataplane). Flow set-up through the Python
engine: in the first round, for each datapath, one VM sends to another a new 5-tuple in every
packet as fast as it can for a bounded time (each a miss), and the agent's count of flows set up
(`vrouter status`'s flow_setups, pairs) says how many it set up a second; each round, the same
count over the new-connection run gives the metadata NAT flows set up a second. Flow table costs
come from benchmarks/flow_table.py's measure(). Any request error makes the run fail. Everything
stays in the namespaces this script creates, is bounded in time, and is removed at the end.

A measurement that failed (a tool that printed nothing, a figure of zero, a p99 with failed requests
in it, a flood that did not run) makes the run fail too, and its row's target is not met whatever
the other side measured (benchmarks/report.py).  The programs run in the namespaces are in benchmarks/clients.py.
"""

from __future__ import annotations

import argparse
import base64
import configparser
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks import report  # noqa: E402
from benchmarks.clients import (  # noqa: E402
    FAIR_CLIENT,
    FLOODS,
    FLOOR_CONSUMER,
    LATENCY_CLIENT,
)
from benchmarks.shell import VROUTER, cpu_seconds, sh, wait_listening  # noqa: E402
from benchmarks.vm_to_vm import VmToVm  # noqa: E402
from topology.lab import Lab  # noqa: E402
from topology.model import Topology  # noqa: E402

BPF_OBJECT = os.path.join(ROOT, "dataplane", "ebpf", "vrouter.bpf.o")
DATAPATHS = ("nfqueue", "ebpf")  # [FLOWS] datapath of the agent; "project" is nfqueue's name in the results
PATH = "/openstack/latest/meta_data.json"
URL = "http://169.254.169.254" + PATH


def parse_datapaths(text: str) -> list[str]:
    """--datapaths: names separated by spaces or commas, each once, in the order given."""
    out: list[str] = []
    for name in re.split(r"[\s,]+", text.strip()):
        if not name:
            continue
        if name not in DATAPATHS:
            raise argparse.ArgumentTypeError("unknown datapath %r: nfqueue or ebpf" % name)
        if name not in out:
            out.append(name)
    if not out:
        raise argparse.ArgumentTypeError("no datapath: nfqueue, ebpf or both")
    return out


class Bench(VmToVm):
    def __init__(self, prefix: str, seconds: float) -> None:
        self.prefix = prefix
        self.seconds = seconds
        self.tmp = tempfile.mkdtemp(prefix="vrouter-bench-")
        os.chmod(self.tmp, 0o755)  # nginx's workers run as www-data
        self.procs: list[subprocess.Popen] = []
        self.lab = Lab(prefix)
        self.plain = False  # whether plain_on's forwarding and table are in place (plain_off undoes them)
        self.bpf_objects: dict[str, str] = {}  # the ebpf program's object file: its sha256 -> when an agent first loaded it

    # -- the host -----------------------------------------------------------------------------

    def up(self) -> None:
        self.layout = self.lab.up(Topology.plan(self.prefix, 8, self.lab.state))
        self.compute = self.layout["namespaces"]["compute"]
        self.fabric = self.layout["namespaces"]["fabric"]
        self.vms = self.layout["vms"]
        self.state = self.layout["state_dir"]
        # The load generators open tens of thousands of short connections: let the VMs reuse ports
        # in TIME_WAIT and use the whole port range, or later rounds would measure the clients'
        # search for a free port (the VM namespaces are this benchmark's own)
        for vm in self.vms:
            sh("ip", "netns", "exec", vm["namespace"], "sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1", "net.ipv4.ip_local_port_range=1024 65535")
        self.start_nginx()
        # the metadata service now points at nginx (port 80), for every configuration
        sh(VROUTER, "linklocal", "add", "--state-dir", self.state, "--linklocal_service_name", "metadata",
           "--linklocal_service_ip", "169.254.169.254", "--linklocal_service_port", "80",
           "--ipfabric_service_ip", "10.10.0.1", "--ipfabric_service_port", "80")  # fmt: skip

    def down(self) -> None:
        for p in self.procs:
            p.terminate()  # nginx and haproxy stop their workers on SIGTERM
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        self.lab.down()
        shutil.rmtree(self.tmp, ignore_errors=True)  # nginx's documents and the configurations

    def start_nginx(self) -> None:
        root = os.path.join(self.tmp, "www")
        doc = os.path.join(root, "openstack", "latest")
        os.makedirs(doc)
        inst = json.load(open(os.path.join(self.state, "instances.json")))["instances"][0]
        from fabric.nova_metadata import meta_data

        with open(os.path.join(doc, "meta_data.json"), "w") as f:
            json.dump(meta_data(inst), f)
        conf = os.path.join(self.tmp, "nginx.conf")
        with open(conf, "w") as f:
            f.write(
                "worker_processes 1; pid %s/nginx.pid; error_log %s/nginx.err; daemon off;\n"
                "events { worker_connections 4096; }\n"
                "http { access_log off; keepalive_requests 1000000; default_type application/json;\n"
                "  server { listen 10.10.0.1:80 backlog=4096; root %s; } }\n" % (self.tmp, self.tmp, root)
            )
        p = subprocess.Popen(["ip", "netns", "exec", self.fabric, "nginx", "-c", conf], stderr=subprocess.PIPE)
        self.nginx_proc = p
        self.procs.append(p)
        self.wait_port(self.fabric, "10.10.0.1", 80)

    def wait_port(self, ns: str, ip: str, port: int) -> None:
        deadline = time.monotonic() + 15
        while sh("ip", "netns", "exec", ns, "bash", "-c", "exec 3<>/dev/tcp/%s/%d" % (ip, port), check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError("nothing listens on %s:%d in %s" % (ip, port, ns))
            time.sleep(0.1)  # polling for a listener, with a deadline

    def wait_listening(self, ns: str, port: int) -> None:
        wait_listening(ns, port)

    # -- switching between the project and the references --------------------------------------

    def project(self, workers: int = 0, datapath: str = "nfqueue") -> None:
        """The agent, with ``[FLOWS] dataplane_workers = workers`` (0: its default, one a core)
        and ``[FLOWS] datapath = datapath``; restarted when either changes."""
        self.plain_off()
        conf = os.path.join(self.state, "agent.conf")
        cp = configparser.ConfigParser(interpolation=None, default_section="__none__")
        cp.optionxform = str  # type: ignore[assignment,method-assign]
        cp.read(conf)
        want = {"dataplane_workers": str(workers), "datapath": datapath}
        have = {k: cp.get("FLOWS", k, fallback={"dataplane_workers": "0", "datapath": "nfqueue"}[k]) for k in want}
        if have != want:
            self.lab.stop_agent()
            if not cp.has_section("FLOWS"):
                cp.add_section("FLOWS")
            for k, v in want.items():
                cp.set("FLOWS", k, v)
            with open(conf, "w") as f:
                cp.write(f)
        self.lab.start_agent()
        running = self.status().get("datapath", "nfqueue")
        if running != datapath:
            raise RuntimeError("the agent runs the %s datapath, not %s as agent.conf says" % (running, datapath))
        if datapath == "ebpf":  # which program the agent loaded (the tree may be rebuilt meanwhile)
            with open(BPF_OBJECT, "rb") as f:
                self.bpf_objects.setdefault(hashlib.sha256(f.read()).hexdigest()[:12], time.strftime("%H:%M:%S"))

    def restart_agent(self) -> None:
        """A fresh agent, same configuration: its flow table empty again."""
        self.lab.stop_agent()
        self.lab.start_agent()

    def status(self) -> dict:
        return json.loads(sh(VROUTER, "status", "--json", "--state-dir", self.state).stdout)

    def plain_on(self, nat_rules: str) -> None:
        """Agent stopped; the compute namespace forwards by itself, with our own bench table."""
        self.lab.stop_agent()
        c = ["ip", "netns", "exec", self.compute]
        self.no_programs_left()
        self.plain = True
        sh(*c, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for vm in self.vms:
            sh(*c, "ip", "route", "replace", vm["ip"] + "/32", "dev", vm["tap"])
            sh(*c, "ip", "neigh", "replace", vm["ip"], "lladdr", vm["mac"], "dev", vm["tap"], "nud", "permanent")
            sh(*c, "sysctl", "-qw", "net.ipv4.conf.%s.proxy_arp=1" % vm["tap"], "net.ipv4.neigh.%s.proxy_delay=0" % vm["tap"])
        sh("ip", "-n", self.fabric, "route", "replace", "10.1.1.0/24", "via", "10.10.0.2")
        rules = "table ip vrouter_bench {\n%s\n}\n" % nat_rules
        sh(*c, "nft", "-f", "-", input=rules)

    def no_programs_left(self) -> None:
        """The references are the kernel alone: an ebpf agent that stopped must have taken its TC
        programs off the taps and vhost0.  Any left is said on stderr (a fault of the agent's, for
        its report) and removed, so that the reference does not run through it."""
        for dev in [vm["tap"] for vm in self.vms] + ["vhost0"]:
            shown = sh("ip", "netns", "exec", self.compute, "tc", "filter", "show", "dev", dev, "ingress", check=False).stdout
            shown += sh("ip", "netns", "exec", self.compute, "tc", "filter", "show", "dev", dev, "egress", check=False).stdout
            if shown.strip():
                print("the stopped agent left TC programs on %s (removed for the kernel reference):\n%s" % (dev, shown.strip()), file=sys.stderr)
                sh("ip", "netns", "exec", self.compute, "tc", "qdisc", "del", "dev", dev, "clsact", check=False)

    def plain_off(self) -> None:
        """What plain_on did, undone (nothing if it is not in place: the agent's own routes stay)."""
        if not self.plain:
            return
        self.plain = False
        c = ["ip", "netns", "exec", self.compute]
        sh(*c, "nft", "delete", "table", "ip", "vrouter_bench", check=False)
        for vm in self.vms:
            sh(*c, "ip", "route", "del", vm["ip"] + "/32", check=False)
        sh("ip", "-n", self.fabric, "route", "del", "10.1.1.0/24", check=False)
        sh(*c, "sysctl", "-qw", "net.ipv4.ip_forward=0")

    def kernel(self) -> None:
        self.plain_on("chain pre { type nat hook prerouting priority dstnat; ip daddr 169.254.169.254 tcp dport 80 dnat to 10.10.0.1:80; }")

    def haproxy(self) -> None:
        self.plain_on("chain pre { type nat hook prerouting priority dstnat; ip daddr 169.254.169.254 tcp dport 80 dnat to 10.10.0.2:9697; }")
        secret = open(os.path.join(self.state, "secret")).read()
        iid = os.path.join(self.tmp, "instance.map")
        tenant = os.path.join(self.tmp, "tenant.map")
        with open(iid, "w") as f1, open(tenant, "w") as f2:
            for vm in self.vms:
                f1.write("%s %s\n" % (vm["ip"], vm["instance_uuid"]))
                f2.write("%s %s\n" % (vm["ip"], vm["project_id"].replace("-", "")))
        conf = os.path.join(self.tmp, "haproxy.cfg")
        with open(conf, "w") as f:
            f.write(
                "global\n  maxconn 4096\n  log /dev/null local0\n"
                "defaults\n  mode http\n  timeout connect 30s\n  timeout client 32s\n  timeout server 32s\n"
                "  timeout http-request 30s\n  option http-server-close\n  option forwardfor\n  retries 3\n"
                "listen listener\n  bind 0.0.0.0:9697\n  server metadata 10.10.0.1:80\n"
                "  http-request del-header X-Instance-ID\n  http-request del-header X-Tenant-ID\n"
                "  http-request del-header X-Instance-ID-Signature\n"
                "  http-request set-var(txn.iid) src,map_ip(%s)\n"
                "  http-request set-header X-Instance-ID %%[var(txn.iid)]\n"
                "  http-request set-header X-Tenant-ID %%[src,map_ip(%s)]\n"
                "  http-request set-header X-Instance-ID-Signature %%[var(txn.iid),hmac(sha256,%s),hex,lower]\n"
                % (iid, tenant, base64.b64encode(secret.encode()).decode() or "AA==")
            )
        p = subprocess.Popen(["ip", "netns", "exec", self.compute, "haproxy", "-db", "-f", conf], stderr=subprocess.PIPE)
        self.haproxy_proc = p
        self.procs.append(p)
        self.wait_port(self.compute, "127.0.0.1", 9697)

    def haproxy_off(self) -> None:
        self.haproxy_proc.terminate()
        self.haproxy_proc.wait(10)
        self.procs.remove(self.haproxy_proc)
        self.plain_off()

    # -- loads --------------------------------------------------------------------------------

    def wrk(self, vms: list[dict], conns: int, close: bool) -> dict:
        extra = ["-H", "Connection: close"] if close else []
        procs = [subprocess.Popen(["ip", "netns", "exec", vm["namespace"], "wrk", "-t1", "-c%d" % conns, "-d%ds" % self.seconds,
                                   "--latency", *extra, URL], stdout=subprocess.PIPE, text=True) for vm in vms]  # fmt: skip
        total, errors = 0.0, 0
        for p in procs:
            out = p.communicate(timeout=self.seconds + 60)[0]
            m = re.search(r"Requests/sec:\s+([\d.]+)", out)
            total += float(m.group(1)) if m else 0
            for pat in (r"Non-2xx or 3xx responses: (\d+)", r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"):
                for g in re.findall(pat, out):
                    errors += sum(int(x) for x in (g if isinstance(g, tuple) else (g,)))
            if not m:
                errors += 1
        return {"rps": round(total), "errors": errors}

    def latency(self, rate: float) -> dict:
        r = sh("ip", "netns", "exec", self.vms[0]["namespace"], sys.executable, "-c", LATENCY_CLIENT, str(rate), str(self.seconds), "8",
               timeout=self.seconds + 60)  # fmt: skip
        return json.loads(r.stdout)

    def workers(self, config: str) -> dict[str, list[int]]:
        """The processes of a configuration whose CPU time is worth reporting: name -> pids."""
        nginx = [self.nginx_proc.pid] + [int(x) for x in sh("pgrep", "-P", str(self.nginx_proc.pid), check=False).stdout.split()]
        out = {"nginx": nginx}
        if config == "project":
            st = self.status()
            out.update(agent=st["dataplane_workers"] or [st["pid"]], proxy=[st["proxy"]["pid"]])  # the agent and its workers
        elif config == "haproxy":
            out["haproxy"] = [self.haproxy_proc.pid]
        return out

    def metadata_figures(self, rate: float, config: str) -> dict:
        # a first request also checks the path works at all
        r = sh("ip", "netns", "exec", self.vms[0]["namespace"], "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "5", URL, check=False)
        if r.stdout != "200":
            raise RuntimeError("no metadata through this configuration (HTTP %s)" % r.stdout)
        # CPU of the processes on the path during the keep-alive run from one VM (% of one core)
        workers = self.workers(config)
        keepalive_1vm, cpu = self.cpu_of(workers, lambda: self.wrk(self.vms[:1], 16, False))
        keepalive_8vm = self.wrk(self.vms, 4, False)
        # and during the new-connection run, with the agent's flows set up meanwhile (each
        # connection a metadata NAT pair), a second of wrk's run
        setups = self.status()["flow_setups"] if config == "project" else 0
        new_conn, cpu_new = self.cpu_of(workers, lambda: self.wrk(self.vms[:4], 8, True))
        if config == "project":
            new_conn["nat_setups_per_s"] = round((self.status()["flow_setups"] - setups) / self.seconds)
        return {
            "cpu_keepalive_1vm": cpu,
            "cpu_new_conn": cpu_new,
            "keepalive_1vm": keepalive_1vm,
            "keepalive_8vm": keepalive_8vm,
            "new_conn": new_conn,
            "latency": self.latency(rate),
        }

    @staticmethod
    def cpu_of(workers: dict[str, list[int]], run):  # noqa: ANN001, ANN205
        """``run()``'s result, and the CPU of each group of ``workers`` while it ran (% of one core)."""
        before = {name: sum(cpu_seconds(p) for p in pids) for name, pids in workers.items()}
        t0 = time.monotonic()
        result = run()
        elapsed = time.monotonic() - t0
        return result, {name: round(100 * (sum(cpu_seconds(p) for p in pids) - before[name]) / elapsed) for name, pids in workers.items()}

    def floor(self) -> dict:
        """VM-to-VM UDP through an accept-only consumer of the agent's packet I/O, agent stopped."""
        self.plain_on("")  # routes, neighbours and forwarding, as for the kernel reference
        p = subprocess.Popen(["ip", "netns", "exec", self.compute, sys.executable, "-c", FLOOR_CONSUMER, "9", "vrouter_floor", ROOT],
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
        self.procs.append(p)
        try:
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError("the accept-only NFQUEUE consumer did not start")
            return self.vm_to_vm(tcp=False)
        finally:
            p.terminate()  # it removes its table and unbinds the queue
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()  # its table goes with the namespace at the end
                p.wait(10)
            self.procs.remove(p)
            self.plain_off()

    def fairness(self) -> dict:
        """vm1 floods (hping3, as fast as it can); vm2 makes new metadata connections at 50/s and
        pings the gateway 100 times: its p99, failures and ping loss, beside the same with no flood;
        and how fast the flood reached vm1's vif (packets read or dropped there a second) and
        whether hping3 was still flooding at the end (the report fails a flood that did not run)."""
        a, b = self.vms[0], self.vms[1]
        out = {}
        for kind in ["none", *FLOODS]:
            flood = None
            seen, t0 = self.vif_packets(a), time.monotonic()
            if kind != "none":
                cmd = [x.replace("VM2", b["ip"]) for x in FLOODS[kind]]
                quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
                flood = subprocess.Popen(["ip", "netns", "exec", a["namespace"], "hping3", *cmd], **quiet)
                time.sleep(1)  # the flood under way (a benchmark, not a test)
            try:
                r = json.loads(sh("ip", "netns", "exec", b["namespace"], sys.executable, "-c", FAIR_CLIENT, "50", str(self.seconds),
                                  timeout=self.seconds + 60).stdout)  # fmt: skip
                ping = sh("ip", "netns", "exec", b["namespace"], "ping", "-q", "-c", "100", "-i", "0.01", "-W", "1", b["gateway"], check=False).stdout
                m = re.search(r"(\d+) received", ping)
                r["ping_lost"] = 100 - int(m.group(1)) if m else 100
                r["flood_running"] = flood is not None and flood.poll() is None
                r["flood_pps"] = round((self.vif_packets(a) - seen) / (time.monotonic() - t0))
            finally:
                if flood is not None:
                    flood.terminate()
                    flood.wait(10)
            out[kind] = r
        return out

    def vif_packets(self, vm: dict) -> int:
        """What reached a VM's vif so far: the packets the dataplane read and those dropped there."""
        vif = json.loads(sh(VROUTER, "vif", "--get", str(vm["vif"]), "--json", "--state-dir", self.state).stdout)
        return vif["rx_packets"] + vif["drops"]

    def agent_rss_kib(self) -> int:
        mem = self.status()["memory"]
        return mem["rss_kib"] + mem.get("proxy_rss_kib", 0)  # the agent and its proxy process


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--datapaths",
        type=parse_datapaths,
        default="nfqueue ebpf",
        help="the agent's datapaths to measure beside the references, separated by spaces or commas (default: nfqueue ebpf)",
    )
    ap.add_argument("--seconds", type=float, default=8, help="length of each load (default 8)")
    ap.add_argument("--rate", type=float, default=200, help="requests/s of the latency run (default 200)")
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds: each configuration is measured this many times, in turn, and each figure is the median (default 1)",
    )
    ap.add_argument("--prefix", default="bench")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "bench.json"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("benchmarks need root (network namespaces)", file=sys.stderr)
        return 2
    dps: list[str] = args.datapaths
    nfq, ebpf = "nfqueue" in dps, "ebpf" in dps
    configs = (["project", "project1"] if nfq else []) + (["ebpf"] if ebpf else []) + ["kernel", "haproxy"]
    b = Bench(args.prefix, args.seconds)
    res: dict = {"datapaths": dps, "runs": {c: [] for c in configs}, "repeat": args.repeat, "seconds": args.seconds, "flow_setup": {}}
    runs = res["runs"]

    def say(r: int, what: str) -> None:
        print("round %d of %d: %s ..." % (r + 1, args.repeat, what), flush=True)

    try:
        b.up()
        for r in range(args.repeat):
            first = r == 0
            # VM to VM through the kernel and each datapath back to back (the machine's speed
            # drifts within a minute: the side-by-side table pairs the figures of a round)
            say(r, "VM to VM: kernel forwarding" + "".join(", the %s datapath" % dp for dp in dps))
            b.plain_on("")
            vm = {"kernel": b.vm_pair(agent=False)}
            b.plain_off()
            for dp in dps:
                b.project(datapath=dp)
                vm[dp] = b.vm_pair(agent=True)
            if ebpf:
                say(r, "project (ebpf datapath)")
                b.project(datapath="ebpf")
                fig = b.metadata_figures(args.rate, "project")
                runs["ebpf"].append({**fig, "vm2vm": vm["ebpf"]})
                if first:
                    res.setdefault("idle_cpu", {})["ebpf"] = b.idle_cpu()
                    res["ebpf_rss_kib"] = b.agent_rss_kib()
                    res["ebpf_workers"] = len(b.status()["dataplane_workers"])
                    say(r, "new flows as fast as a VM makes them (ebpf)")
                    res["flow_setup"]["ebpf"] = b.flow_setup_rate()
            say(r, "haproxy")
            b.haproxy()
            runs["haproxy"].append(b.metadata_figures(args.rate, "haproxy"))
            b.haproxy_off()
            say(r, "kernel DNAT")
            b.kernel()
            fig = b.metadata_figures(args.rate, "kernel")
            runs["kernel"].append({**fig, "vm2vm": vm["kernel"]})
            if first and nfq:
                res["kernel_vm2vm"] = b.vm_to_vm(iperf=False)
            b.plain_off()
            if first and nfq:
                say(r, "accept-only NFQUEUE consumer")
                res["floor_vm2vm"] = b.floor()
            if nfq:
                say(r, "project (nfqueue datapath)")
                b.project()
                fig = b.metadata_figures(args.rate, "project")
                runs["project"].append({**fig, "vm2vm": vm["nfqueue"]})
                if first:
                    res.setdefault("idle_cpu", {})["nfqueue"] = b.idle_cpu()
                    res["project_vm2vm"] = b.vm_to_vm(iperf=False)
                    res["agent_rss_kib"] = b.agent_rss_kib()
                    res["workers"] = len(b.status()["dataplane_workers"])
                    say(r, "a VM flooding, another reading its metadata (nfqueue)")
                    res["fairness"] = b.fairness()
                    say(r, "new flows as fast as a VM makes them (nfqueue)")
                    res["flow_setup"]["nfqueue"] = b.flow_setup_rate()
                say(r, "project, one dataplane worker")
                b.project(workers=1)
                runs["project1"].append(b.metadata_figures(args.rate, "project"))
                if first:
                    res["project1_vm2vm"] = b.vm_to_vm(tcp=False)
        b.project(datapath=dps[0])
    finally:
        b.down()
    res["workers"] = res.get("workers", 0)
    res["bpf_objects"] = b.bpf_objects
    for name, figures in runs.items():
        res[name] = report.median_figures(figures)
    if nfq:
        from benchmarks.flow_table import measure

        res["flows_1k"], res["flows_400k"] = measure(5)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=2)
    errors = {name: sum(v.get("errors", 0) for v in res[name].values()) for name in configs}
    tables = []
    if nfq:
        tables.append(("The nfqueue datapath, with the targets of the dataplane issue", report.table(res, args.rate)))
    tables.append(("The two datapaths side by side, with the targets of the ebpf datapath", report.datapaths_table(res, args.rate)))
    cpu = report.cpu_line(res)
    text = "\n\n".join("%s:\n\n%s" % (title, "\n".join(t.rows)) for title, t in tables) + "\n\n" + cpu
    print("\n" + text)
    print("\nrequest errors: %s" % errors)
    if nfq:
        print("UDP delivered by the Python sender (project/kernel/floor): %s/%s/%s" % (
            res["project_vm2vm"]["udp_delivered"], res["kernel_vm2vm"]["udp_delivered"], res["floor_vm2vm"]["udp_delivered"]))  # fmt: skip
    for dp, fs in res["flow_setup"].items():
        print("new flows, %s: %d pairs set up in %.1f s (%s packets/s offered), drops meanwhile: %s" % (
            dp, fs["setups"], fs["seconds"], format(fs["sent_per_s"], ","), fs["drops"] or "none"))  # fmt: skip
    if len(b.bpf_objects) > 1:
        print("\nthe ebpf program's object file changed during the run (rebuilt in the tree): the agents loaded %s" % ", ".join(
            "%s from %s" % kv for kv in b.bpf_objects.items()))  # fmt: skip
    failed = [x for _, t in tables for x in t.failed]
    if failed:
        print("\nfailed measurements (the run fails):\n  " + "\n  ".join(failed))
    with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
        f.write(text + "\n")
    return 1 if any(errors.values()) or failed else 0


if __name__ == "__main__":
    sys.exit(main())
