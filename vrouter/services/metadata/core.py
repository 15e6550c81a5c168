"""What the proxy's VM side works with: who is who, signing, the limits, the counters, the journal,
the fault rules and the pool of connections to Nova.

``MetadataProxy`` (``proxy``) is this plus the listening sockets; each
``VMConnection`` (``vm_side``) is given it.  Nothing here knows the VM side's
classes, so that the two sides and the proxy import each other in one
direction only: ``proxy`` -> ``vm_side`` -> ``core`` -> ``nova_side``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

from vrouter.messages.proxy import Fairness, ProxyCounters, ProxyLoad, VifMetadataCounters
from vrouter.model import Identity
from vrouter.services.metadata.fairness import RateLimiter
from vrouter.services.metadata.faults import Faults
from vrouter.services.metadata.http import NOT_RELAYED, Request
from vrouter.services.metadata.journal import UNKNOWN, Journal
from vrouter.services.metadata.nova_side import NovaPool, Upstream
from vrouter.services.metadata.signing import sign_instance_id, tenant_header

_clock = time.monotonic


class Client(Protocol):
    """A VM's connection, as the proxy stopping sees it."""

    def close(self, abort: bool = False) -> None: ...


class ProxyCore:
    def __init__(
        self,
        identify: Callable[[str], Identity | None],
        upstream: Callable[[], Upstream | None],
        secret: str,
        connect_timeout: float = 4.0,
        read_timeout: float = 30.0,
        idle_timeout: float = 60.0,
        max_idle_upstream: int = 64,
        fairness: Fairness | None = None,
        journal_size: int = 500,
        journal_node_size: int = 50_000,
    ) -> None:
        self.identify = identify  # metadata IP -> who, or None
        self.upstream = upstream  # where Nova is, for one connection, or None
        self.secret = secret
        self.idle_timeout = idle_timeout
        self.fairness = fairness or Fairness()
        self.limiter = RateLimiter(self.fairness)
        self.open_per_peer: dict[str, int] = {}
        self.stats = ProxyCounters()
        self.clients: set[Client] = set()
        self.servers: list[asyncio.base_events.Server] = []  # the listening sockets (MetadataProxy.start)
        self.journal = Journal(journal_size, journal_node_size)
        self.faults = Faults()
        self.per_vif: dict[int, VifMetadataCounters] = {}
        self.pool = NovaPool(connect_timeout, read_timeout, max_idle_upstream)
        self._signed: dict[Identity, bytes] = {}

    def load(self) -> ProxyLoad:
        """Open connections: from VMs, and idle in the keep-alive pool towards Nova."""
        return ProxyLoad(vm_connections=sum(self.open_per_peer.values()), upstream_idle=len(self.pool.idle))

    def vif_counters(self, vif: int) -> VifMetadataCounters:
        c = self.per_vif.get(vif)
        if c is None:
            c = self.per_vif[vif] = VifMetadataCounters()
        return c

    def record(self, req: Request, peer_ip: str, status: int, reason: str) -> None:
        """``req`` is done with (answered with ``status``, or 0 if it never was): into the journal
        (which tallies the counters by instance and the histograms).  Once a request."""
        if req.recorded:
            return
        req.recorded = True
        total = _clock() - req.t0
        ident = req.ident or self.identify(peer_ip)
        fault = req.fault
        self.journal.add(
            req.t0, ident.vif if ident else 0, ident.instance_uuid if ident else UNKNOWN, ident.vm_ip if ident else peer_ip, req.method,
            req.target, status, req.size, req.out, req.t_nova - req.t_relay if req.t_nova else -1.0, total, reason,
            fault.id if fault is not None else 0,
        )  # fmt: skip

    def vif_report(self) -> dict[int, VifMetadataCounters]:
        """The agent's counters per vif, responses from the journal's tally."""
        responses = self.journal.bring_up_to_date().responses()
        out = {}
        for vif, c in self.per_vif.items():
            out[vif] = VifMetadataCounters(c.requests, responses.get(vif, 0), c.proxy_sessions, c.internal_errors)
        return out

    def request_bytes(self, req: Request, ident: Identity, upstream: Upstream) -> bytes:
        """The request as Nova gets it: the VM's headers minus identity and hop-by-hop ones, plus ours."""
        out = [b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (req.method, req.target, upstream.host_header)]
        for name, value in req.headers:
            if name.lower() not in NOT_RELAYED:
                out.append(b"%s: %s\r\n" % (name, value))
        if req.body or req.method in (b"POST", b"PUT"):
            out.append(b"Content-Length: %d\r\n" % len(req.body))
        signed = self._signed.get(ident)
        if signed is None:
            if len(self._signed) > 4096:
                self._signed.clear()
            signed = self._signed[ident] = b"X-Forwarded-For: %s\r\nX-Instance-ID: %s\r\nX-Tenant-ID: %s\r\nX-Instance-ID-Signature: %s\r\n\r\n" % (
                ident.vm_ip.encode(),
                ident.instance_uuid.encode(),
                tenant_header(ident.project_uuid).encode(),
                sign_instance_id(ident.instance_uuid, self.secret).encode(),
            )
        out.append(signed)
        if req.body:
            out.append(req.body)
        return b"".join(out)
