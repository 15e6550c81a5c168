"""Nova's metadata API in the fabric namespace: ``vrouter nova-metadata`` on Nova's fabric address.

It serves the instances of ``instances.json`` (and, in a cloud, those in
etcd), checks each request's signature with the lab's secret, and with
``--tls`` speaks HTTPS with a server certificate of a throw-away CA and asks
for the agent's client certificate (all in ``tls/`` of the state directory).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable

from topology import netns
from topology.certs import CertAuthority
from topology.errors import LabError
from topology.etcd import layout_tls
from topology.fabric import Fabric
from topology.model import NOVA_PORT, REPORTS_PORT, Topology
from topology.processes import Processes
from topology.state import StateDir


class Nova:
    """The Nova of ``files.prefix``: its files, started and stopped."""

    def __init__(self, files: StateDir, procs: Processes, say: Callable[[str], None], vrouter: str, fabric: Fabric) -> None:
        self.files = files
        self.procs = procs
        self.say = say
        self.vrouter = vrouter
        self.fabric = fabric

    def write_instances(self, topo: Topology) -> None:
        self.files.write("instances.json", json.dumps(topo.instances(), indent=2))

    def make_tls(self, topo: Topology) -> None:
        """A throw-away CA, Nova's server certificate (IP and DNS names) and the agent's client one."""
        d = self.files.path("tls")
        ca = CertAuthority(d).create("vrouter-emulator CA %s" % self.files.prefix)
        ca.issue("nova", "nova-metadata", ips=(topo.nova_ip,), dns=("nova.fabric",), server=True)
        ca.issue("agent", "vrouter-agent %s" % self.files.prefix, client=True)
        self.say("  TLS: CA, Nova and agent certificates in %s" % d)

    def start(self, topo: Topology | None = None) -> None:
        """Start it (``topo``: while ``up`` builds the lab; else as the layout says) and wait until
        it listens."""
        if self.procs.pid("nova.pid"):
            self.say("  nova-metadata already running")
            return
        layout = self.files.layout() or {}
        if topo is None and (layout.get("etcd") or {}).get("joined"):
            raise LabError("prefix %s joined a cloud: its instances are served by the cloud's Nova" % self.files.prefix)
        cloud = (["--etcd", ",".join(topo.etcd_urls), "--etcd-prefix", topo.etcd_prefix] if topo.clustered else []) if topo is not None else (
            ["--etcd", ",".join(layout["etcd"]["urls"]), "--etcd-prefix", layout["etcd"]["key_prefix"]] if layout.get("etcd") else [])  # fmt: skip
        etcd_tls = (topo.etcd_tls if topo.clustered else None) if topo is not None else layout_tls(layout)
        if etcd_tls is not None:
            cloud += ["--etcd-ca", etcd_tls.ca] + (["--etcd-cert", etcd_tls.cert, "--etcd-key", etcd_tls.key] if etcd_tls.cert else [])
        tls = []
        if os.path.exists(self.files.path("tls/nova.pem")):
            t = self.files.path("tls/")
            tls = ["--tls-cert", t + "nova.pem", "--tls-key", t + "nova.key", "--tls-client-ca", t + "ca.pem"]
        nova_ip = self.fabric.nova_ip()
        args = [self.vrouter, "nova-metadata", "--instances", self.files.path("instances.json"), "--listen", nova_ip, "--port", str(NOVA_PORT),
                "--secret-file", self.files.path("secret"), "--reports-dir", self.files.path("reports"), "--reports-port", str(REPORTS_PORT),
                *tls, *cloud]  # fmt: skip
        proc = self.procs.spawn(self.fabric.name, args, "nova.log", "nova.pid")

        def listening() -> bool:
            def connect() -> bool:
                with socket.socket() as s:
                    s.settimeout(1)
                    return s.connect_ex((nova_ip, NOVA_PORT)) == 0

            with netns.Namespace(self.fabric.name) as ns:
                return ns.run(connect)

        self.procs.wait(15, proc, listening, "nova-metadata", "nova.log")
        self.say("  nova-metadata listening on %s:%d (pid %d)" % (nova_ip, NOVA_PORT, proc.pid))

    def stop(self) -> None:
        self.procs.stop("nova.pid", "nova-metadata")
