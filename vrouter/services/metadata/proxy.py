"""The agent's metadata proxy: identify the VM by its metadata IP, sign, relay to Nova.

The dataplane NATs a VM's connection to 169.254.169.254:80 so that it arrives
here from the VM port's metadata IP (169.254.0.0 + vif index).  That peer
address says which VM is asking (``identify``).  The proxy removes any
identity headers the VM sent, adds X-Forwarded-For, X-Instance-ID, X-Tenant-ID
(project uuid without dashes), X-Instance-ID-Signature (HMAC-SHA256 of the
instance uuid keyed with the shared secret) and Host, and relays the request
to Nova over a keep-alive pool.

This module holds what both sides share: the listening sockets, identity and
signing, the counters (the proxy's, and the agent's per vif), the journal,
the fault rules, and the pool of connections to Nova.  The VM side
(``vm_side.VMConnection``) and the Nova side (``nova_side.NovaConnection``)
are asyncio Protocols around llhttp (httptools): no task, no coroutine and no
per-request object tree on the path of a pooled keep-alive request, which is
what makes the proxy fast enough to stand beside haproxy.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import Callable

from vrouter.messages.proxy import ProxyCounters, ProxyLoad, VifMetadataCounters
from vrouter.model import Identity
from vrouter.services.metadata.fairness import Fairness, RateLimiter
from vrouter.services.metadata.faults import Faults
from vrouter.services.metadata.http import NOT_RELAYED, Request
from vrouter.services.metadata.journal import UNKNOWN, Journal
from vrouter.services.metadata.nova_side import NovaConnection, Responder, Upstream
from vrouter.services.metadata.signing import sign_instance_id, tenant_header
from vrouter.services.metadata.states import Upstream as UpstreamState
from vrouter.services.metadata.vm_side import VMConnection

log = logging.getLogger("vrouter.metadata")
_POOLED = UpstreamState.IDLE  # a connection to Nova that can take a request
_clock = time.monotonic


class MetadataProxy:
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
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.idle_timeout = idle_timeout
        self.max_idle_upstream = max_idle_upstream
        self.fairness = fairness or Fairness()
        self.limiter = RateLimiter(self.fairness)
        self.open_per_peer: dict[str, int] = {}
        self.stats = ProxyCounters()
        self.clients: set[VMConnection] = set()
        self.journal = Journal(journal_size, journal_node_size)
        self.faults = Faults()
        self.per_vif: dict[int, VifMetadataCounters] = {}
        self._idle: list[NovaConnection] = []
        self._signed: dict[Identity, bytes] = {}
        self._servers: list[asyncio.base_events.Server] = []
        self._connecting: set[asyncio.Task] = set()

    def load(self) -> ProxyLoad:
        """Open connections: from VMs, and idle in the keep-alive pool towards Nova."""
        return ProxyLoad(vm_connections=sum(self.open_per_peer.values()), upstream_idle=len(self._idle))

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

    async def start(self, host: str | list[str], port: int) -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: VMConnection(self), host, port, reuse_address=True, backlog=4096)
        for sock in server.sockets:
            # Delayed ACKs from the first segment (accepted connections inherit it): the ACK of a
            # request goes with its answer instead of in a segment of its own, one crossing of the
            # dataplane fewer per request on a new connection.  A partial request is acknowledged
            # at once (VMConnection._ack_now), so a client waiting on that ACK does not stall.
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 0)
            except (OSError, AttributeError):
                pass
        self._servers.append(server)
        log.info("metadata proxy listening on %s port %d", host if isinstance(host, str) else ", ".join(host), port)

    async def stop(self) -> None:
        for s in self._servers:
            s.close()
        self._servers.clear()
        for t in list(self._connecting):
            t.cancel()
        for c in list(self.clients):
            c.close(abort=True)
        for n in self._idle:
            n.close()
        self._idle.clear()

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

    # -- the pool towards Nova ------------------------------------------------------------------

    def relay(self, client: Responder, req: Request, upstream: Upstream, attempt: int) -> None:
        """Send ``req`` (``req.wire``) to Nova for ``client``: on a pooled connection, else a new one."""
        while self._idle:
            n = self._idle.pop()
            t = n.transport
            if n.upstream is upstream and n.state is _POOLED and t is not None and not t.is_closing():
                n.begin(client, req, True, attempt)
                return
            n.close()
        task = asyncio.get_running_loop().create_task(self._open(client, req, upstream, attempt))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    async def _open(self, client: Responder, req: Request, upstream: Upstream, attempt: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, nova = await loop.create_connection(lambda: NovaConnection(self, upstream), upstream.host, upstream.port, ssl=upstream.ssl)
        except TimeoutError:
            client.answer_failed(upstream, "connect timed out after %.0f s" % self.connect_timeout)
            return
        except (OSError, ssl.SSLError) as e:
            client.answer_failed(upstream, "connect: %s" % (getattr(e, "strerror", None) or e))
            return
        if client.gone:
            self.release(nova)
            return
        nova.begin(client, req, False, attempt)

    def release(self, nova: NovaConnection) -> None:
        """A connection done with its request: into the pool if it can carry another."""
        t = nova.transport
        if nova.state is _POOLED and len(self._idle) < self.max_idle_upstream and t is not None and not t.is_closing():
            self._idle.append(nova)
        else:
            nova.close()

    def forget(self, nova: NovaConnection) -> None:
        """A connection that closed: out of the pool."""
        try:
            self._idle.remove(nova)
        except ValueError:
            pass
