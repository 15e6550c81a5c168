"""The emulated hosts the namespace tests run against, and the builder behind the fixtures that
make them (conftest.py's ``make_node``, ``make_cluster`` and their shared forms).

Each emulated host is built by ``topology.lab`` (what scripts/netns_setup.sh runs) under a unique
prefix (`tq` + 5 hex digits, from ``unique_prefix``), and removed by its ``down`` when the test
(or the module, for a shared one) is over, pass or fail.  Commands a user runs on a built host
(netns_setup.sh stop-agent ...) go through the script itself: ``EmulatedHost.setup``.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator

from tests.helpers import SETUP, VROUTER, unique_prefix
from topology.lab import Lab
from topology.model import GuestBoot, Topology

_HOLD = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
req = bytes.fromhex(sys.argv[3])
answer = b""
if req:
    s.sendall(req)
    answer = s.recv(65536)
print(s.getsockname()[1], answer.hex(), flush=True)
sys.stdin.read()
s.close()
"""


class EmulatedHost:
    """A compute node built by topology.lab, with helpers that act inside its namespaces."""

    def __init__(self, vms: int, tls: bool = False, state_root: str | None = None, qemu: int = 0, dhcp: bool = False,
                 boot: GuestBoot | None = None, user_data: str | None = None, ssh_key: str | None = None,
                 networks: int = 0, nodes: int = 1, datapath: str = "nfqueue", ipv6: tuple[str, ...] = ("none",)) -> None:  # fmt: skip
        self.prefix = unique_prefix()
        self.datapath = datapath  # every node's agent.conf [FLOWS] datapath: nfqueue or ebpf
        self.lab = Lab(self.prefix, state_root=state_root, say=lambda text: None)
        topo = Topology.plan(self.prefix, vms, self.lab.state, tls=tls, qemu=qemu, networks=networks, nodes=nodes, ipv6=ipv6)
        topo.dhcp = dhcp
        topo.datapath = datapath
        topo.user_data, topo.ssh_key = user_data, ssh_key
        if boot is not None:
            topo.boot = boot
        self.layout = self.lab.up(topo)  # a failure removes what it made
        self.guests = self.layout["guests"]
        self.vms = self.layout["vms"]
        self.compute = self.layout["namespaces"]["compute"]
        self.nodes = self.layout["nodes"]
        self.state_dir = self.nodes[0]["state_dir"]  # the first node's agent (the only one, but for a cluster)

    def setup(self, *args: str, timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
        """netns_setup.sh COMMAND --prefix P [ARGS]; ``env``: extra environment variables."""
        return subprocess.run(["bash", str(SETUP), args[0], "--prefix", self.prefix, *args[1:]], capture_output=True, text=True,
                              timeout=timeout, env=dict(os.environ, **(env or {})))  # fmt: skip

    def down(self) -> None:
        """Remove the host (nothing happens if it is down already)."""
        self.lab.down(quiet=True)

    def vm_ns(self, i: int) -> str:
        return self.vms[i]["namespace"]

    def in_vm(self, i: int, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.vm_ns(i), *cmd], capture_output=True, text=True, timeout=timeout)

    def in_compute(self, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.compute, *cmd], capture_output=True, text=True, timeout=timeout)

    def curl(self, i: int, url: str, *extra: str, max_time: float = 5) -> tuple[int, str]:
        """(HTTP status, body) of a curl run in VM i; status 0 when curl got no answer."""
        r = self.in_vm(i, "curl", "-s", "-m", str(max_time), "-w", "\n%{http_code}", *extra, url, timeout=max_time + 10)
        body, _, code = r.stdout.rpartition("\n")
        return (int(code) if code.isdigit() else 0), body

    def metadata(self, i: int, path: str = "/openstack/latest/meta_data.json", *extra: str, max_time: float = 5) -> tuple[int, str]:
        return self.curl(i, "http://169.254.169.254" + path, *extra, max_time=max_time)

    @contextlib.contextmanager
    def open_connection(self, i: int, ip: str, port: int, request: bytes = b"") -> Iterator[tuple[int, bytes]]:
        """A TCP connection from VM i held open while the block runs (its flows stay in the table).
        Yields (local port, the first bytes of the answer)."""
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.vm_ns(i), sys.executable, "-c", _HOLD, ip, str(port), request.hex()],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert proc.stdout is not None and proc.stdin is not None
        try:
            line = proc.stdout.readline().split(" ", 1)  # printed once connected and answered
            assert len(line) == 2, "connection from vm%d to %s:%d failed" % (i + 1, ip, port)
            yield int(line[0]), bytes.fromhex(line[1].strip())
        finally:
            proc.stdin.close()
            proc.wait(10)

    def lease(self, i: int) -> dict[str, str]:
        """What VM i's DHCP client was given (--dhcp): udhcpc's variables, from its script."""
        path = os.path.join(self.state_dir, "dhcp", self.vms[i]["name"] + ".lease")
        with open(path) as f:
            return dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line)

    def guest_results(self, j: int) -> dict[str, str]:
        """The ``GUEST-RESULT key=value`` lines guest j's test init has printed on its console so far."""
        try:
            with open(self.guests[j]["console"], errors="replace") as f:
                lines = f.read().replace("\r", "").splitlines()
        except FileNotFoundError:
            return {}
        out = {}
        for line in lines:
            if line.startswith("GUEST-RESULT "):
                key, _, value = line[len("GUEST-RESULT ") :].partition("=")
                out[key] = value
        return out

    def bpf_objects(self) -> tuple[set[int], set[int]]:
        """The ebpf datapath's programs attached to the devices of the host's nodes (their ids, as
        ``bpftool net show`` lists them in each compute namespace) and the maps they use, with each
        node's flow table map (the id its ``flows.shm`` names): ids are global, so these are what
        no other lab holds.  Both empty for an nfqueue host."""
        progs: set[int] = set()
        maps: set[int] = set()
        for node in self.nodes:
            r = subprocess.run(["ip", "netns", "exec", node["namespace"], "bpftool", "-j", "net", "show"], capture_output=True, text=True, timeout=30)
            assert r.returncode == 0, r.stderr
            progs |= {tc["id"] for dev in json.loads(r.stdout) for tc in dev.get("tc", [])}
            try:
                with open(os.path.join(node["state_dir"], "flows.shm"), "rb") as f:
                    head = f.read(32)
            except FileNotFoundError:
                continue
            if head.startswith(b"VRBPFMAP "):
                maps.add(int(head.split()[1]))
        for prog in progs:
            r = subprocess.run(["bpftool", "-j", "prog", "show", "id", str(prog)], capture_output=True, text=True, timeout=30)
            if r.returncode == 0:  # (gone meanwhile otherwise)
                maps |= set(json.loads(r.stdout).get("map_ids", []))
        return progs, maps

    def cli(self, *args: str, node: int = 1) -> subprocess.CompletedProcess:
        state = self.nodes[node - 1]["state_dir"]
        return subprocess.run([str(VROUTER), *args, "--state-dir", state], capture_output=True, text=True, timeout=30)

    def cli_json(self, *args: str, node: int = 1) -> object:
        r = self.cli(*args, "--json", node=node)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)


class Builder:
    """Builds emulated hosts for one fixture's lifetime and takes every one of them down at its end;
    ``datapath``: the hosts' datapath unless a call says otherwise (conftest's ``datapath``)."""

    def __init__(self, datapath: str = "nfqueue") -> None:
        self.built: list[EmulatedHost] = []
        self.datapath = datapath

    def node(self, vms: int = 2, **options: object) -> EmulatedHost:
        """A compute node of ``vms`` VMs; ``options``: EmulatedHost's (dhcp, tls, qemu, boot, datapath, ...)."""
        options.setdefault("datapath", self.datapath)
        h = EmulatedHost(vms, **options)  # type: ignore[arg-type]
        self.built.append(h)
        return h

    def cluster(self, nodes: int = 3, vms: int = 6, **options: object) -> EmulatedHost:
        """A cloud of ``nodes`` compute nodes configured through etcd, the VMs dealt out to them."""
        assert nodes > 1, "a cluster has several nodes: make_node builds one"
        return self.node(vms, nodes=nodes, **options)

    def down_all(self) -> None:
        """Take down every host built, the last first; the first error is raised once all are tried."""
        errors = []
        while self.built:
            try:
                self.built.pop().down()
            except Exception as e:  # noqa: BLE001 - the others go down all the same
                errors.append(e)
        if errors:
            raise errors[0]
