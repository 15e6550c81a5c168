"""Nova's metadata API in the fabric namespace: ``vrouter nova-metadata`` on Nova's fabric address.

It serves the instances of ``instances.json`` (and, in a cloud, those in
etcd), checks each request's signature with the lab's secret, and with
``--tls`` speaks HTTPS with a server certificate of a throw-away CA and asks
for the agent's client certificate (all in ``tls/`` of the state directory).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from collections.abc import Callable

from topology import netns
from topology.errors import LabError
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
        os.makedirs(d, mode=0o700, exist_ok=True)
        if shutil.which("openssl") is None:
            raise LabError("--tls needs openssl")
        key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

        def openssl(*args: str) -> None:
            r = subprocess.run(["openssl", *args], capture_output=True, text=True)
            if r.returncode:
                raise LabError("openssl %s: %s" % (args[0], r.stderr.strip()))

        ca_subject = "/CN=vrouter-emulator CA %s" % self.files.prefix
        openssl("req", "-x509", *key, "-days", "7", "-subj", ca_subject, "-keyout", d + "/ca.key", "-out", d + "/ca.pem")
        openssl("req", *key, "-subj", "/CN=nova-metadata", "-keyout", d + "/nova.key", "-out", d + "/nova.csr")
        with open(d + "/nova.ext", "w") as f:
            f.write("subjectAltName=IP:%s,DNS:nova.fabric\nextendedKeyUsage=serverAuth\n" % topo.nova_ip)
        openssl("x509", "-req", "-in", d + "/nova.csr", "-CA", d + "/ca.pem", "-CAkey", d + "/ca.key", "-CAcreateserial", "-days", "7",
                "-extfile", d + "/nova.ext", "-out", d + "/nova.pem")  # fmt: skip
        openssl("req", *key, "-subj", "/CN=vrouter-agent %s" % self.files.prefix, "-keyout", d + "/agent.key", "-out", d + "/agent.csr")
        with open(d + "/agent.ext", "w") as f:
            f.write("extendedKeyUsage=clientAuth\n")
        openssl("x509", "-req", "-in", d + "/agent.csr", "-CA", d + "/ca.pem", "-CAkey", d + "/ca.key", "-CAcreateserial", "-days", "7",
                "-extfile", d + "/agent.ext", "-out", d + "/agent.pem")  # fmt: skip
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
