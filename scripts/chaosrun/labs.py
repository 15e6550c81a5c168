"""The chaos soak's labs, built and removed with the project's own ``topology.lab`` (what
``scripts/netns_setup.sh`` runs): a single node ``Pn`` with 16 VMs, a cloud ``Pc`` of three nodes
over its own etcd with two VMs each, and ``Pj``, the node that takes the place of the cloud's node 3
once that one is removed (``netns_setup.sh up --prefix Pj --join URL --node-id 3 --fabric-link
Pc-fabric``: a lab that joins the cloud, as nodes on other machines do).  Every agent runs
``[FLOWS] dataplane_workers`` workers, so that there is a worker to kill, and flows age after
``flow_cache_timeout`` seconds, so that the end state (no flow) comes quickly.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass

from topology.lab import Lab
from topology.model import Topology
from vrouter.agent.control import call
from vrouter.messages.control import DropStatsRequest, StatusRequest, VifList

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VROUTER = os.path.join(ROOT, ".venv", "bin", "vrouter")
REJOIN_NODE = 3  # the cloud's node that is removed and added back


@dataclass
class ChaosTopology(Topology):
    """A lab's plan whose agents run ``workers`` dataplane workers (0: the agent's default)."""

    workers: int = 0

    def agent_conf(self, node: int = 1) -> str:
        conf = super().agent_conf(node)  # [FLOWS] is its last section
        return conf + ("dataplane_workers = %d\n" % self.workers if self.workers else "")


@dataclass(frozen=True)
class Agent:
    """One compute node's agent: ``label`` n (the single node), c1..c3 (the cloud's) or j (the node added back)."""

    label: str
    lab: Lab
    node: int
    namespace: str
    state_dir: str

    @property
    def sock(self) -> str:
        return os.path.join(self.state_dir, "agent.sock")

    def status(self, timeout: float = 5) -> dict:
        return asdict(call(self.sock, StatusRequest(), timeout=timeout))

    def vifs(self) -> list[dict]:
        """``vrouter vif --list``'s records."""
        return [asdict(v) for v in call(self.sock, VifList())]

    def drops(self) -> dict[str, int]:
        """``vrouter dropstats``'s counts."""
        return dict(call(self.sock, DropStatsRequest()).counts)

    def cli(self, *args: str, timeout: float = 30) -> str:
        """``vrouter ARGS --state-dir`` this agent's, its output (RuntimeError if it fails)."""
        r = subprocess.run([VROUTER, *args, "--state-dir", self.state_dir], capture_output=True, text=True, timeout=timeout)
        if r.returncode:
            raise RuntimeError("vrouter %s: %s" % (" ".join(args), (r.stderr or r.stdout).strip()[-500:]))
        return r.stdout

    def cli_json(self, *args: str) -> object:
        return json.loads(self.cli(*args, "--json"))


class Labs:
    """The three labs of prefix P (``Pn``, ``Pc``, ``Pj``): at most 7 characters, so that theirs are 8."""

    def __init__(self, prefix: str, datapath: str, say: Callable[[str], None], vms: int = 16, cloud_vms: int = 6, workers: int = 2,
                 flow_timeout: int = 10) -> None:  # fmt: skip
        self.datapath = datapath
        self.node_vms = vms
        self.cloud_vms = cloud_vms
        self.workers = workers
        self.flow_timeout = flow_timeout
        self.node = Lab(prefix + "n", say=say)
        self.cloud = Lab(prefix + "c", say=say)
        self.joined = Lab(prefix + "j", say=say)
        self.all = (self.node, self.cloud, self.joined)

    def _plan(self, lab: Lab, vms: int, nodes: int = 1, secret: str | None = None) -> ChaosTopology:
        topo = ChaosTopology.plan(lab.prefix, vms, lab.state, secret, nodes=nodes)
        assert isinstance(topo, ChaosTopology)
        topo.workers = self.workers
        topo.datapath = self.datapath
        topo.flow_cache_timeout = self.flow_timeout
        return topo

    def up(self) -> None:
        """The single node and the cloud (LabError if a prefix is up already or up fails; what
        failed is removed by ``Lab.up`` itself)."""
        for lab in self.all:
            if lab.is_up():
                raise RuntimeError("%s; or choose another --prefix" % lab.already_up())
        self.node.up(self._plan(self.node, self.node_vms))
        self.cloud.up(self._plan(self.cloud, self.cloud_vms, nodes=3))

    def remove_node(self) -> list[dict]:
        """The cloud's node 3 removed (``netns_setup.sh down --node 3``); its VMs' records."""
        layout = self.cloud.layout() or {}
        gone = [v for v in layout.get("vms", []) if v.get("node") == REJOIN_NODE]
        self.cloud.remove_node(REJOIN_NODE)
        return gone

    def add_node(self, vms: int) -> dict:
        """A node added to the cloud where node 3 was (vhost0 10.10.0.4), with ``vms`` VMs: a lab
        that joins it through its etcd and fabric; its layout."""
        cloud = self.cloud.layout()
        assert cloud is not None and cloud["etcd"]
        topo = self._plan(self.joined, vms, secret=cloud["secret"])
        topo.etcd_servers = list(cloud["etcd"]["urls"])
        topo.fabric_link = cloud["namespaces"]["fabric"]
        topo.join, topo.node_base = True, REJOIN_NODE
        return self.joined.up(topo)

    def agents(self) -> list[Agent]:
        """Every agent of the labs that are up, from their layouts."""
        out = []
        for lab, tag in ((self.node, "n"), (self.cloud, "c"), (self.joined, "j")):
            layout = lab.layout() if lab.is_up() else None
            for d in (layout or {}).get("nodes", []):
                label = tag if tag != "c" else "c%d" % d["node"]
                out.append(Agent(label, lab, d["node"], d["namespace"], d["state_dir"]))
        return out

    def agent(self, label: str) -> Agent:
        return next(a for a in self.agents() if a.label == label)

    def layouts(self) -> list[dict]:
        return [layout for lab in self.all if lab.is_up() and (layout := lab.layout()) is not None]

    def all_vms(self) -> list[dict]:
        """Every VM of the labs that are up (layout records)."""
        return [vm for layout in self.layouts() for vm in layout["vms"]]

    def keep_logs(self, into: str) -> None:
        """Every agent's, Nova's and etcd's log copied into ``into`` (the state directories go at down)."""
        shutil.rmtree(into, ignore_errors=True)
        os.makedirs(into)
        for a in self.agents():
            with contextlib.suppress(OSError):
                shutil.copy(os.path.join(a.state_dir, "agent.log"), os.path.join(into, "%s-agent.log" % a.label))
        for lab in self.all:
            for name in ("nova.log", "etcd.log"):
                with contextlib.suppress(OSError):
                    shutil.copy(os.path.join(lab.state, name), os.path.join(into, "%s-%s" % (lab.prefix, name)))

    def down(self) -> list[str]:
        """Every lab removed, the node that joined the cloud first (it deletes its keys from the
        cloud's etcd); what failed, said."""
        errors = []
        for lab in (self.joined, self.cloud, self.node):
            try:
                lab.down(quiet=True)
            except Exception as e:  # noqa: BLE001 - every lab is removed whatever the others do
                errors.append("%s: %s" % (lab.prefix, e))
        return errors
