"""The emulated cloud's etcd: one etcd member started inside a namespace, where the configuration lives.

``start`` runs Debian's ``etcd`` (etcd-server 3.4) with ``topology.processes``:
in the given namespace, in a session of its own, with ``etcd.log`` and
``etcd.pid`` in the state directory, and waits until it answers a read through
its JSON gateway (``infra.etcd.ConfigStore.healthy``), asked from a
thread in that namespace.  It listens only on the address it is given, for
clients and for peers, in that namespace: nothing in the host's namespace, no
metrics or pprof listener (``--listen-metrics-urls`` unset, pprof off).  Its
data (the write-ahead log preallocates 64 MB segments) stays in ``data_dir``,
so a restart on the same directory keeps every key and the revision count.
``stop`` is ``Processes.stop``: SIGTERM, then SIGKILL after 10 s.

``Etcd`` is the cloud's etcd as a lab uses it: its own (``up --nodes K``),
started and stopped in the fabric namespace on Nova's address with its data in
the state directory; or a cloud's (``--etcd URL``, ``--join URL``), asked from
node 1's namespace, where vhost0 reaches it.  ``in_etcd`` runs a function on a
store from a thread in a namespace.

With ``tls`` (``ServerTls``: the lab's ``up --etcd-tls``, or a test's) etcd
serves its clients and its peer port over TLS only and requires a client
certificate signed by its CA (``--client-cert-auth``); ``start`` then asks it
with ``client``'s certificate.  The lab's own are made by ``Etcd.make_tls``
in ``etcd-tls/`` of the state directory (0700; keys 0600): its CA, etcd's
certificate (for Nova's fabric address, server and peer) and one client
certificate that the agents, Nova and the lab itself present.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from infra.etcd import ConfigStore
from infra.etcd_tls import EtcdTls
from infra.etcd_wire import StoreError
from topology import netns
from topology.certs import CertAuthority
from topology.errors import LabError
from topology.fabric import Fabric
from topology.model import Topology
from topology.processes import Processes, StartError
from topology.state import StateDir

LOG = "etcd.log"
PIDFILE = "etcd.pid"
T = TypeVar("T")


class EtcdError(Exception):
    """etcd is missing, or did not start; the message says why and what to do."""


def binary() -> str:
    """The etcd executable (Debian's etcd-server installs /usr/bin/etcd)."""
    found = shutil.which("etcd")
    if found is None:
        raise EtcdError("etcd not found: apt-get install etcd-server (or run make install)")
    return found


@dataclass(frozen=True)
class ServerTls:
    """etcd's side of TLS: the CA its clients' (and peers') certificates must be signed by, and
    its own certificate and key."""

    ca: str
    cert: str
    key: str


def url(ip: str, client_port: int = 2379, scheme: str = "http") -> str:
    """The client URL of an etcd listening on ``ip`` (IPv6 addresses in brackets)."""
    host = "[%s]" % ip if ":" in ip else ip
    return "%s://%s:%d" % (scheme, host, client_port)


def layout_tls(layout: dict[str, Any]) -> EtcdTls | None:
    """The files a lab reaches its cloud's etcd with, as its layout names them."""
    tls = (layout.get("etcd") or {}).get("tls")
    return EtcdTls(tls["ca"], tls.get("cert") or "", tls.get("key") or "") if tls else None


def arguments(name: str, ip: str, data_dir: str, client_port: int = 2379, peer_port: int = 2380, tls: ServerTls | None = None) -> list[str]:
    """etcd's command line (without the executable): one member, listening only on ``ip``; with
    ``tls``, over TLS alone, clients and peers with certificates of its CA."""
    scheme = "https" if tls else "http"
    client, peer = url(ip, client_port, scheme), url(ip, peer_port, scheme)
    secure = []
    if tls is not None:
        secure = ["--client-cert-auth", "--trusted-ca-file", tls.ca, "--cert-file", tls.cert, "--key-file", tls.key,
                  "--peer-client-cert-auth", "--peer-trusted-ca-file", tls.ca, "--peer-cert-file", tls.cert, "--peer-key-file", tls.key]  # fmt: skip
    return [*secure,
        "--name", name,
        "--data-dir", data_dir,
        "--listen-client-urls", client,
        "--advertise-client-urls", client,
        "--listen-peer-urls", peer,
        "--initial-advertise-peer-urls", peer,
        "--initial-cluster", "%s=%s" % (name, peer),
        "--initial-cluster-state", "new",
        "--auto-compaction-retention", "1h",
        "--logger", "zap",
        "--log-outputs", "stderr",
    ]  # fmt: skip


def start(procs: Processes, namespace: str, ip: str, data_dir: str, name: str = "fabric", client_port: int = 2379, peer_port: int = 2380,
          timeout: float = 20, tls: ServerTls | None = None, client: EtcdTls | None = None) -> int:  # fmt: skip
    """Start etcd in ``namespace`` on ``ip`` (with ``tls``: see the module); its pid once it
    answers (asked with ``client``'s files).  EtcdError (with the end of its log) if it exits or
    does not answer within ``timeout`` seconds."""
    running = procs.pid(PIDFILE)
    if running:
        raise EtcdError("etcd already runs (pid %d, %s): stop it first" % (running, procs.path(PIDFILE)))
    if not netns.exists(namespace):
        raise EtcdError("namespace %s does not exist: build the lab first" % namespace)
    executable = binary()
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    if tls is not None and client is None:
        raise EtcdError("etcd with TLS is asked whether it answers with a client certificate of its CA: none given")
    address = url(ip, client_port, "https" if tls else "http")
    store = ConfigStore([address], timeout=1.0, tls=client)

    def answers() -> bool:
        try:
            return store.healthy()
        finally:
            store.close()

    with netns.Namespace(namespace) as ns:  # asked from a thread in the namespace etcd listens in
        if ns.run(answers):  # another etcd there would pass for this one
            raise EtcdError("an etcd already answers at %s in namespace %s: stop it, or use another address or port" % (address, namespace))
        proc = procs.spawn(namespace, [executable, *arguments(name, ip, data_dir, client_port, peer_port, tls)], LOG, PIDFILE)
        try:
            procs.wait(timeout, proc, lambda: proc.poll() is None and ns.run(answers), "etcd", LOG)
        except StartError as e:
            procs.stop(PIDFILE, "etcd")
            raise EtcdError("%s\n(etcd on %s in namespace %s, data in %s)" % (e, address, namespace, data_dir)) from None
    return proc.pid


def stop(procs: Processes) -> None:
    """Stop the etcd ``start`` started (nothing if none runs); its data directory stays."""
    procs.stop(PIDFILE, "etcd")


def in_etcd(urls: list[str], prefix: str, namespace: str, fn: Callable[[ConfigStore], T], tls: EtcdTls | None = None) -> T:
    """``fn(store)`` on the etcd at ``urls`` (``tls``: for https ones), from a thread in
    ``namespace`` (a store's connections are made in the namespace of the thread that uses it, and
    closed there at the end)."""
    store = ConfigStore(urls, prefix, tls=tls)

    def run() -> T:
        try:
            return fn(store)
        finally:
            store.close()

    with netns.Namespace(namespace) as ns:
        return ns.run(run)


class Etcd:
    """The etcd of the cloud that ``files.prefix`` builds or joins."""

    def __init__(self, files: StateDir, procs: Processes, say: Callable[[str], None], fabric: Fabric) -> None:
        self.files = files
        self.procs = procs
        self.say = say
        self.fabric = fabric

    def start(self) -> None:
        """The cloud's etcd, in the fabric namespace on Nova's fabric address (its data kept in the
        state directory, so that a restart keeps every key)."""
        layout = self.files.layout()
        if layout is not None and (layout.get("etcd") or {}).get("namespace") is None:
            why = "it uses " + ", ".join(layout["etcd"]["urls"]) if layout.get("etcd") else "a single node configured by its files"
            raise LabError("prefix %s has no etcd of its own (%s); up --nodes K starts one" % (self.files.prefix, why))
        if self.procs.pid(PIDFILE):
            self.say("  etcd already running")
            return
        ip, data = self.fabric.nova_ip(), self.files.path("etcd")
        tls, client = self._tls()
        try:
            pid = start(self.procs, self.fabric.name, ip, data, tls=tls, client=client)
        except EtcdError as e:
            raise LabError(str(e)) from None
        self.say("  etcd listening on %s (pid %d, data in %s%s)" % (url(ip, scheme="https" if tls else "http"), pid, data,
                                                                    ", client certificates required" if tls else ""))  # fmt: skip

    def _tls(self) -> tuple[ServerTls | None, EtcdTls | None]:
        """Our etcd's TLS files, if ``make_tls`` made them (up --etcd-tls)."""
        d = self.files.path("etcd-tls/")
        if not os.path.exists(d + "etcd.pem"):
            return None, None
        return ServerTls(d + "ca.pem", d + "etcd.pem", d + "etcd.key"), EtcdTls(d + "ca.pem", d + "client.pem", d + "client.key")

    def make_tls(self, topo: Topology) -> None:
        """A throw-away CA, etcd's certificate (Nova's fabric address; for serving and for its peer
        port) and the client certificate every node's agent, Nova and the lab present; the files
        ``Topology.own_etcd_tls`` names."""
        d = self.files.path("etcd-tls")
        ca = CertAuthority(d).create("vrouter-emulator etcd CA %s" % self.files.prefix)
        ca.issue("etcd", "etcd %s" % self.files.prefix, ips=(topo.nova_ip,), server=True, client=True)
        ca.issue("client", "vrouter %s" % self.files.prefix, client=True)
        self.say("  TLS: etcd's CA, etcd's certificate and the clients' in %s" % d)

    def stop(self) -> None:
        stop(self.procs)

    def ask(self, topo: Topology, fn: Callable[[ConfigStore], T]) -> T:
        """``fn(store)`` on the cloud's etcd, from node 1's namespace (where vhost0 reaches it)."""
        try:
            return in_etcd(topo.etcd_urls, topo.etcd_prefix, topo.compute_of(1), fn, topo.etcd_tls)
        except (StoreError, ValueError) as e:
            raise LabError("the cloud's etcd (%s): %s" % (", ".join(topo.etcd_urls), e)) from None

    def check(self, topo: Topology) -> None:
        """That the etcd given with ``--etcd`` answers from node 1, through the fabric (with its
        TLS files, if any): LabError saying why not."""
        try:
            in_etcd(topo.etcd_urls, topo.etcd_prefix, topo.compute_of(1), lambda store: store.get("nodes/" + topo.compute_of(1)), topo.etcd_tls)
        except (StoreError, ValueError) as e:
            raise LabError("--etcd %s: no answer from %s (its vhost0 %s, through the fabric): %s"
                           % (",".join(topo.etcd_servers), topo.compute_of(1), topo.vhost_ip_of(1), e)) from None  # fmt: skip

    def publish_instances(self, topo: Topology) -> None:
        """Our instances' records, for the cloud's Nova (a lab that joins a cloud has no Nova of its own)."""
        self.ask(topo, lambda store: [store.put("instances/" + r["uuid"], r) for r in topo.instances()["instances"]])

    def forget(self, layout: dict, nodes: list[dict], instances: list[str]) -> int:
        """Delete from the cloud's etcd the keys of ``nodes`` (their ports, routes and node records)
        and the ``instances``' records; asked from the first of those nodes' namespaces (where the
        node reached etcd from).  Returns how many keys went."""
        names = {d["name"] for d in nodes}

        def forget(store: ConfigStore) -> int:
            _, everything = store.get_all()
            keys = [k for k, v in everything.items() if k.startswith(("ports/", "routes/")) and isinstance(v, dict) and v.get("node") in names]
            keys += ["nodes/" + n for n in sorted(names)] + ["instances/" + u for u in instances]
            return sum(store.delete(k) for k in keys)

        return in_etcd(layout["etcd"]["urls"], layout["etcd"]["key_prefix"], nodes[0]["namespace"], forget, layout_tls(layout))

    def forget_lab(self, quiet: bool) -> None:
        """At ``down``, when the etcd is not ours and stays: what this lab told it goes (its nodes'
        keys, and its instances if it joined the cloud)."""
        layout = self.files.layout() or {}
        if not (layout.get("etcd") and layout["etcd"].get("namespace") is None):
            return
        try:
            joined = layout["etcd"].get("joined")
            gone = self.forget(layout, layout["nodes"], [v["instance_uuid"] for v in layout["vms"] + layout["guests"]] if joined else [])
            if not quiet:
                self.say("  %d keys deleted from the cloud's etcd" % gone)
        except (StoreError, OSError, ValueError) as e:
            self.say("  could not delete this lab's keys from the cloud's etcd (%s): its nodes' routes stay there" % e)
