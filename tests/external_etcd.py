"""An etcd that no lab started, for tests of labs that use a cloud's etcd (``up --etcd URL
--fabric-link NS``): etcd in a namespace of the test's own (``PREFIX-etcd``), on its bridge
``br-fabric`` at 10.10.0.250, and with ``tls`` over TLS alone with client-certificate
authentication, with throw-away certificates: etcd's CA and a client certificate it signed, and
another CA with a client certificate of its own (one etcd must refuse).  Everything it makes goes
when the block ends, pass or fail."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from infra.etcd_tls import EtcdTls
from tests.helpers import unique_prefix
from topology import etcd, netns
from topology.certs import CertAuthority
from topology.processes import Processes

IP = "10.10.0.250"


@dataclass
class ExternalEtcd:
    namespace: str  # where etcd listens, and the bridge br-fabric a lab's --fabric-link joins
    url: str
    client: EtcdTls | None = None  # etcd's CA, and a client certificate it signed
    other: EtcdTls | None = None  # another CA, and a client certificate that one signed
    work: Path | None = None


@contextlib.contextmanager
def external_etcd(work: Path, tls: bool = False) -> Iterator[ExternalEtcd]:
    """etcd in a namespace of its own, made in ``work`` (see the module); removed at the end."""
    ns = unique_prefix() + "-etcd"
    procs = Processes(str(work), say=lambda text: None)
    netns.create(ns)
    try:
        with netns.Namespace(ns) as n:
            n.ipr.link("set", index=n.index("lo"), state="up")
            n.ipr.link("add", ifname="br-fabric", kind="bridge")
            br = n.index("br-fabric")
            n.ipr.link("set", index=br, mtu=9000, state="up")
            n.ipr.addr("add", index=br, address=IP, prefixlen=24)
        found = ExternalEtcd(ns, etcd.url(IP), work=work)
        server = None
        if tls:
            ca = CertAuthority(str(work / "ca")).create("test etcd CA")
            mine = ca.issue("etcd", "etcd", ips=(IP,), server=True, client=True)
            client = ca.issue("client", "test client", client=True)
            other = CertAuthority(str(work / "other")).create("another CA")
            rogue = other.issue("client", "test client", client=True)
            server = etcd.ServerTls(ca.cert, mine.cert, mine.key)
            found.client = EtcdTls(ca.cert, client.cert, client.key)
            found.other = EtcdTls(other.cert, rogue.cert, rogue.key)
            found.url = etcd.url(IP, scheme="https")
        etcd.start(procs, ns, IP, str(work / "data"), tls=server, client=found.client)
        yield found
    finally:
        etcd.stop(procs)
        netns.delete(ns)
