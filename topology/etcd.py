"""The emulated cloud's etcd: one etcd member started inside a namespace, where the configuration lives.

``start`` runs Debian's ``etcd`` (etcd-server 3.4) with ``topology.processes``:
in the given namespace, in a session of its own, with ``etcd.log`` and
``etcd.pid`` in the state directory, and waits until it answers a read through
its JSON gateway (``vrouter.cluster.store.ConfigStore.healthy``), asked from a
thread in that namespace.  It listens only on the address it is given, for
clients and for peers, in that namespace: nothing in the host's namespace, no
metrics or pprof listener (``--listen-metrics-urls`` unset, pprof off).  Its
data (the write-ahead log preallocates 64 MB segments) stays in ``data_dir``,
so a restart on the same directory keeps every key and the revision count.
``stop`` is ``Processes.stop``: SIGTERM, then SIGKILL after 10 s.
"""

from __future__ import annotations

import os
import shutil

from topology import netns
from topology.processes import Processes, StartError
from vrouter.cluster.store import ConfigStore

LOG = "etcd.log"
PIDFILE = "etcd.pid"


class EtcdError(Exception):
    """etcd is missing, or did not start; the message says why and what to do."""


def binary() -> str:
    """The etcd executable (Debian's etcd-server installs /usr/bin/etcd)."""
    found = shutil.which("etcd")
    if found is None:
        raise EtcdError("etcd not found: apt-get install etcd-server (or run make install)")
    return found


def url(ip: str, client_port: int = 2379) -> str:
    """The client URL of an etcd listening on ``ip`` (IPv6 addresses in brackets)."""
    host = "[%s]" % ip if ":" in ip else ip
    return "http://%s:%d" % (host, client_port)


def arguments(name: str, ip: str, data_dir: str, client_port: int = 2379, peer_port: int = 2380) -> list[str]:
    """etcd's command line (without the executable): one member, listening only on ``ip``."""
    client, peer = url(ip, client_port), url(ip, peer_port)
    return [
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
          timeout: float = 20) -> int:  # fmt: skip
    """Start etcd in ``namespace`` on ``ip``; its pid once it answers.  EtcdError (with the end of
    its log) if it exits or does not answer within ``timeout`` seconds."""
    running = procs.pid(PIDFILE)
    if running:
        raise EtcdError("etcd already runs (pid %d, %s): stop it first" % (running, procs.path(PIDFILE)))
    if not netns.exists(namespace):
        raise EtcdError("namespace %s does not exist: build the lab first" % namespace)
    executable = binary()
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    store = ConfigStore([url(ip, client_port)], timeout=1.0)

    def answers() -> bool:
        try:
            return store.healthy()
        finally:
            store.close()

    with netns.Namespace(namespace) as ns:  # asked from a thread in the namespace etcd listens in
        if ns.run(answers):  # another etcd there would pass for this one
            raise EtcdError(
                "an etcd already answers at %s in namespace %s: stop it, or use another address or port" % (url(ip, client_port), namespace)
            )
        proc = procs.spawn(namespace, [executable, *arguments(name, ip, data_dir, client_port, peer_port)], LOG, PIDFILE)
        try:
            procs.wait(timeout, proc, lambda: proc.poll() is None and ns.run(answers), "etcd", LOG)
        except StartError as e:
            procs.stop(PIDFILE, "etcd")
            raise EtcdError("%s\n(etcd on %s in namespace %s, data in %s)" % (e, url(ip, client_port), namespace, data_dir)) from None
    return proc.pid


def stop(procs: Processes) -> None:
    """Stop the etcd ``start`` started (nothing if none runs); its data directory stays."""
    procs.stop(PIDFILE, "etcd")
