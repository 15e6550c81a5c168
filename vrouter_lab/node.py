"""A running lab's first compute node, as vrouter-lab boots guests on it: read from its layout.

``netns_setup.sh up`` (or ``Lab.up``) builds the node; this adds and removes guests on it while it
runs, with the same messages the lab's own ``up`` sends (a port plugged through the agent's control
socket, the instance written to the Nova stand-in's ``instances.json``, which it re-reads), and
keeps the layout's list of guests current so that ``status`` and ``down`` know them.  It also holds
what vrouter-lab adds to a node: the ``lab-reports`` link-local service (169.254.169.250:80 to the
collector of the Nova stand-in, where cloud-init's event reports and phone_home posts go) and the
lab's own SSH key (``lab/id_ed25519``), which is injected beside the user's keys.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

from infra.jsonfile import write_json_atomic
from topology import netns
from topology.errors import LabError
from topology.model import REPORTS_IP, REPORTS_PORT, VM, Net
from topology.state import StateDir
from vrouter.agent.control import AgentNotRunning, RequestFailed, call
from vrouter.agent.paths import prefix_dir
from vrouter.messages.control import FaultAdd, FaultDel, FaultRecord, LinkLocalAdd, LinkLocalList, PortAdd, PortDel, PortList, PortPlugged
from vrouter.messages.proxy import JournalEntry, JournalMark, JournalQuery

REPORTS_SERVICE = "lab-reports"
_lock = threading.Lock()  # one writer of a node's files at a time in this process (the matrix boots from threads)


class Node:
    """Node 1 of the lab ``prefix`` (which must be up)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.state = prefix_dir(prefix)
        self.files = StateDir(os.path.dirname(self.state), prefix)
        layout = self.files.layout()
        if layout is None:
            raise LabError(
                "nothing is up for prefix %s (no %s): build one with vrouter-lab up --prefix %s" % (prefix, self.path("layout.json"), prefix)
            )
        if (layout.get("etcd") or {}).get("joined"):
            raise LabError("prefix %s joined another lab's cloud: boot guests on the cloud's own lab" % prefix)
        self.compute = layout["nodes"][0]["namespace"] if layout.get("nodes") else layout["namespaces"]["compute"]
        self.node_state = layout["nodes"][0]["state_dir"] if layout.get("nodes") else self.state
        self.fabric = layout["namespaces"]["fabric"]
        self.nova_ip = layout["nova"]["ip"]
        self.sock = os.path.join(self.node_state, "agent.sock")

    def path(self, name: str) -> str:
        return self.files.path(name)

    @property
    def layout(self) -> dict[str, Any]:
        data = self.files.layout()
        if data is None:
            raise LabError("prefix %s is no longer up (its layout is gone)" % self.prefix)
        return data

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The node's files, one writer at a time (threads of this process, and other processes)."""
        with _lock, open(self.path("lab.lock"), "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _write(self, name: str, data: object) -> None:
        write_json_atomic(self.path(name), data, sort_keys=False, mode=0o600)  # a reader (the Nova stand-in, root) sees the old file or the new

    def call(self, request: Any, timeout: float = 10.0) -> Any:
        try:
            return call(self.sock, request, timeout)
        except AgentNotRunning as e:
            raise LabError("prefix %s: %s (netns_setup.sh start-agent --prefix %s)" % (self.prefix, e, self.prefix)) from None

    # -- the Nova stand-in's instances ------------------------------------------------------------

    def instance(self, instance_uuid: str) -> dict[str, Any] | None:
        with open(self.path("instances.json")) as f:
            items = json.load(f).get("instances", [])
        return next((i for i in items if i.get("uuid") == instance_uuid), None)

    def put_instance(self, record: dict[str, Any]) -> None:
        """Add or replace (by uuid) an instance of the Nova stand-in; it serves the change at once."""
        with self._locked():
            with open(self.path("instances.json")) as f:
                items = [i for i in json.load(f).get("instances", []) if i.get("uuid") != record["uuid"]]
            self._write("instances.json", {"instances": [*items, record]})

    def drop_instance(self, instance_uuid: str) -> None:
        with self._locked():
            with open(self.path("instances.json")) as f:
                items = [i for i in json.load(f).get("instances", []) if i.get("uuid") != instance_uuid]
            self._write("instances.json", {"instances": items})

    # -- guests: addresses, ports, the layout -----------------------------------------------------

    def networks(self) -> list[Net]:
        nets = []
        for n in self.layout.get("networks") or [self.layout["network"]]:
            net = Net.of_record(n)
            if net is not None:
                nets.append(net)
        if not nets:
            raise LabError("prefix %s: its layout names no network" % self.prefix)
        return nets

    def new_guest(self, name: str | None, network: int = 1) -> VM:
        """A guest's port on network ``network`` (1: the first), at the network's next free address,
        named ``name`` or guestN; not plugged yet, only reserved in the layout."""
        with self._locked():
            layout = self.layout
            taken = {v["name"] for v in layout["vms"] + layout["guests"]}
            if name is None:
                name = next("guest%d" % i for i in range(1, 10000) if "guest%d" % i not in taken)
            elif name in taken:
                raise LabError("prefix %s has a VM or guest called %s already" % (self.prefix, name))
            nets = self.networks()
            if not 1 <= network <= len(nets):
                raise LabError("network %d: prefix %s has networks 1 to %d" % (network, self.prefix, len(nets)))
            net = nets[network - 1]
            used = {v["ip"] for v in layout["vms"] + layout["guests"]}
            host = next((h for h in range(3, 255) if net.host(h)[0] not in used), None)
            if host is None:
                raise LabError("network %s (%s) has no free address" % (net.name, net.subnet))
            ip, mac, ip6 = net.host(host)
            port = str(uuid.uuid4())
            project = layout["vms"][0]["project_id"] if layout["vms"] else str(uuid.uuid4())
            vm = VM(name=name, namespace="", ip=ip, mac=mac, tap="tap" + port[:11], port_uuid=port, instance_uuid=str(uuid.uuid4()),
                    project_id=project, vn_uuid=net.uuid, gateway=net.gateway, prefix_len=24, ipv6=ip6, kind="qemu", network=net.name,
                    console=self.path("guests/%s.console" % name))  # fmt: skip
            layout["guests"].append(asdict(vm))
            self._write("layout.json", layout)
        return vm

    def update_guest(self, vm: VM) -> None:
        with self._locked():
            layout = self.layout
            layout["guests"] = [asdict(vm) if g["name"] == vm.name else g for g in layout["guests"]]
            self._write("layout.json", layout)

    def forget_guest(self, name: str) -> None:
        with self._locked():
            layout = self.layout
            layout["guests"] = [g for g in layout["guests"] if g["name"] != name]
            self._write("layout.json", layout)

    def plug(self, vm: VM) -> None:
        """``vm``'s tap made in the compute namespace (as os-vif does) and its port plugged."""
        with netns.Namespace(self.compute) as ns:
            if not ns.ipr.link_lookup(ifname=vm.tap):
                ns.create_tap(vm.tap)
        p = self.call(PortAdd(vm.port_uuid, vm.instance_uuid, vm.vn_uuid, vm.project_id, vm.ip, vm.ipv6, vm.mac, vm.tap, vm.name))
        vm.vif, vm.metadata_ip, vm.metadata_ip6 = p.vif, p.metadata_ip, p.metadata_ip6

    def unplug(self, vm: VM) -> None:
        """The port unplugged and the tap removed (either may be gone already)."""
        with contextlib.suppress(RequestFailed, LabError):
            self.call(PortDel(vm.port_uuid))
        if netns.exists(self.compute):
            with netns.Namespace(self.compute) as ns:
                for index in ns.ipr.link_lookup(ifname=vm.tap):
                    ns.ipr.link("del", index=index)

    def port(self, port_uuid: str) -> PortPlugged | None:
        ports: list[PortPlugged] = self.call(PortList())
        return next((p for p in ports if p.uuid == port_uuid), None)

    def ssh_from(self, vn_uuid: str) -> str:
        """A namespace VM of the network ``vn_uuid`` to log in to a guest from ("" if none)."""
        return next((v["namespace"] for v in self.layout["vms"] if v["vn_uuid"] == vn_uuid and v.get("node", 1) == 1), "")

    def peer6(self, vn_uuid: str) -> str:
        """The IPv6 address of the namespace VM ``ssh_from`` names, for a guest to reach ("" if none)."""
        return next((v["ipv6"] for v in self.layout["vms"] if v["vn_uuid"] == vn_uuid and v.get("node", 1) == 1), "")

    # -- what vrouter-lab adds to a node ----------------------------------------------------------

    def ensure_reports_service(self) -> None:
        """The ``lab-reports`` link-local service, if it is not there yet."""
        services = self.call(LinkLocalList())
        if not any(s.linklocal_service_name == REPORTS_SERVICE for s in services):
            self.call(LinkLocalAdd(REPORTS_SERVICE, REPORTS_IP, "80", [self.nova_ip], str(REPORTS_PORT)))

    def reports_url(self, instance_uuid: str, kind: str = "events") -> str:
        return "http://%s/%s/%s" % (REPORTS_IP, kind, instance_uuid)

    def lab_key(self) -> tuple[str, str]:
        """(the private key's path, the public key) of the lab's own SSH key, made once per lab."""
        key = self.path("lab/id_ed25519")
        with self._locked():
            if not os.path.exists(key):
                os.makedirs(os.path.dirname(key), mode=0o700, exist_ok=True)
                r = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vrouter-lab@" + self.prefix, "-f", key],
                                   capture_output=True, text=True)  # fmt: skip
                if r.returncode:
                    raise LabError("ssh-keygen: %s" % (r.stderr.strip() or "failed"))
        with open(key + ".pub") as f:
            return key, f.read().strip()

    # -- the node's levers ------------------------------------------------------------------------

    def journal(self, instance_uuid: str) -> list[JournalEntry]:
        out: list[JournalEntry] = []
        since = 0
        while True:
            page = self.call(JournalQuery(since, instance_uuid, None, 1000))
            out += page.entries
            if len(page.entries) < 1000:
                return out
            since = page.entries[-1].seq

    def mark(self, instance_uuid: str, what: str, note: str, vif: int = 0) -> None:
        """An event of the instance's life (boot, reboot, rebuild) in its metadata journal."""
        with contextlib.suppress(RequestFailed, LabError):
            self.call(JournalMark(instance_uuid, what, note, vif))

    def fault(self, instance_uuid: str, path: str = "/*", **effect: Any) -> FaultRecord:
        """A fault on the instance's metadata requests: ``status=503``, ``delay=2.0``,
        ``throttle=100``, ``reset=True``, ``drop=True`` or ``refuse=True``, bounded by ``count``,
        ``for_s`` or ``probability`` (as ``vrouter metadata fault add``)."""
        rule: FaultRecord = self.call(FaultAdd(instance=instance_uuid, path=path, **effect))
        return rule

    def fault_del(self, rule_id: int) -> None:
        with contextlib.suppress(RequestFailed):
            self.call(FaultDel(rule_id))
