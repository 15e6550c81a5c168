"""The agent's metadata proxy: identify the VM by its metadata IP, sign, relay to Nova.

The dataplane NATs a VM's connection to 169.254.169.254:80 so that it
arrives here from the VM port's metadata IP (169.254.0.0 + vif index).  That
peer address, and nothing the VM writes, says which VM is asking.  The proxy
removes any identity headers the VM sent, adds X-Forwarded-For, X-Instance-ID,
X-Tenant-ID (project uuid without dashes), X-Instance-ID-Signature
(HMAC-SHA256 of the instance uuid keyed with the shared secret) and Host, and
relays the request to Nova over a keep-alive pool.  The answer goes back as
Nova sent it: status, headers, body, chunked or not.

Protocol logic is h11's (a state machine without I/O); this module is the
asyncio shell around it.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import h11

from vrouter.signing import sign_instance_id, tenant_header

log = logging.getLogger("vrouter.metadata")

RELAYED_METHODS = {b"GET", b"HEAD", b"POST", b"PUT", b"DELETE"}
IDENTITY_HEADERS = {b"x-instance-id", b"x-tenant-id", b"x-instance-id-signature", b"x-forwarded-for"}
HOP_BY_HOP = {
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"te",
    b"trailer",
    b"upgrade",
    b"expect",
}
MAX_HEADERS = 16 * 1024  # request line plus headers: 431 past this
MAX_TARGET = 8 * 1024  # request target: 414 past this
MAX_BODY = 1 << 20  # request bodies are buffered (metadata requests carry at most a password)
READ_CHUNK = 65536


@dataclass(frozen=True)
class Identity:
    """Who a metadata IP belongs to."""

    instance_uuid: str
    project_uuid: str
    vm_ip: str
    port_uuid: str
    vm_name: str = ""


@dataclass(frozen=True)
class Upstream:
    """Where Nova's metadata API is."""

    host: str
    port: int
    ssl: ssl.SSLContext | None = None

    @property
    def host_header(self) -> bytes:
        return ("%s:%d" % (self.host, self.port)).encode()


@dataclass(frozen=True)
class Fairness:
    """What one VM may take of the proxy.

    ``header_timeout``: seconds a client has to send a whole request head once it has started
    (slowloris: 408 and close). ``max_connections_per_vm``: open connections per VM (more: 429 and
    close). Rate limit, as Neutron's metadata agent configures it: more than ``base_limit``
    requests in ``base_window`` seconds, or more than ``burst_limit`` in ``burst_window``: 429.
    """

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections_per_vm: int = 64
    rate_limit: bool = False
    base_window: float = 10.0
    base_limit: int = 10
    burst_window: float = 10.0
    burst_limit: int = 10


class RateLimiter:
    """Sliding windows of request times per VM."""

    def __init__(self, f: Fairness) -> None:
        self.f = f
        self.seen: dict[str, deque[float]] = {}
        self.longest = max(f.base_window, f.burst_window)

    def allow(self, vm: str, now: float) -> bool:
        q = self.seen.setdefault(vm, deque())
        while q and now - q[0] > self.longest:
            q.popleft()
        base = sum(1 for t in q if now - t <= self.f.base_window)
        burst = base if self.f.burst_window == self.f.base_window else sum(1 for t in q if now - t <= self.f.burst_window)
        if base >= self.f.base_limit or burst >= self.f.burst_limit:
            return False
        q.append(now)
        return True


@dataclass
class ProxyStats:
    requests: int = 0
    responses: int = 0
    proxy_sessions: int = 0
    internal_errors: int = 0
    upstream_errors: int = 0
    rate_limited: int = 0
    connections_refused: int = 0
    header_timeouts: int = 0
    status: dict[int, int] = field(default_factory=dict)


class UpstreamError(Exception):
    """Nova could not be reached or failed before answering."""


class _UpstreamConn:
    def __init__(self, upstream: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.upstream = upstream
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT)
        self.used = False

    def close(self) -> None:
        self.writer.close()


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
    ) -> None:
        self.identify = identify
        self.upstream = upstream
        self.secret = secret
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.idle_timeout = idle_timeout
        self.max_idle_upstream = max_idle_upstream
        self.fairness = fairness or Fairness()
        self.limiter = RateLimiter(self.fairness)
        self.open_per_peer: dict[str, int] = {}
        self.stats = ProxyStats()
        self._idle: list[_UpstreamConn] = []
        self._server: asyncio.base_events.Server | None = None
        self._clients: set[asyncio.Task] = set()

    def load(self) -> dict[str, int]:
        """Open connections: from VMs, and idle in the keep-alive pool towards Nova."""
        return {"vm_connections": sum(self.open_per_peer.values()), "upstream_idle": len(self._idle)}

    async def start(self, host: str | list[str], port: int) -> None:
        self._server = await asyncio.start_server(self._client, host, port, reuse_address=True, backlog=1024)
        log.info("metadata proxy listening on %s port %d", host if isinstance(host, str) else ", ".join(host), port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for t in list(self._clients):
            t.cancel()
        for c in self._idle:
            c.close()
        self._idle.clear()

    # -- the VM side ----------------------------------------------------------------------------

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
        self.stats.proxy_sessions += 1
        peer = writer.get_extra_info("peername")
        peer_ip = peer[0] if peer else ""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADERS)
        open_now = self.open_per_peer.get(peer_ip, 0) + 1
        self.open_per_peer[peer_ip] = open_now
        try:
            if open_now > self.fairness.max_connections_per_vm:
                self.stats.connections_refused += 1
                if self.stats.connections_refused == 1 or self.stats.connections_refused % 1000 == 0:
                    log.warning("%s has %d connections open to the metadata proxy: refused (429)", peer_ip, open_now - 1)
                await _send_simple(conn, writer, 429, b"Too Many Requests", close=True)
                self._count(429)
                return
            while True:
                event = await self._next_request(conn, reader)
                if event is None:  # slowloris: the head did not come in time
                    self.stats.header_timeouts += 1
                    await _send_simple(conn, writer, 408, b"Request Timeout", close=True)
                    self._count(408)
                    break
                if isinstance(event, h11.Request):
                    await self._serve(conn, event, reader, writer, peer_ip)
                elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                    break
                if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                    conn.start_next_cycle()
                else:
                    break
        except h11.RemoteProtocolError as e:
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                status = e.error_status_hint
                if status == 400 and conn.their_state is h11.IDLE:
                    status = 431 if "too long" in str(e).lower() or "exceed" in str(e).lower() else 400
                await _send_simple(conn, writer, status, _reason(status), close=True)
                self._count(status)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            raise
        except Exception:
            self.stats.internal_errors += 1
            log.exception("metadata proxy: internal error serving %s", peer_ip)
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                try:
                    await _send_simple(conn, writer, 500, b"Internal Server Error", close=True)
                except Exception:
                    pass
        finally:
            writer.close()
            left = self.open_per_peer.get(peer_ip, 1) - 1
            if left:
                self.open_per_peer[peer_ip] = left
            else:
                self.open_per_peer.pop(peer_ip, None)
            if task is not None:
                self._clients.discard(task)

    async def _next_request(self, conn: h11.Connection, reader: asyncio.StreamReader):  # noqa: ANN202
        """The next event; once a request head has started, the rest of it must come within
        header_timeout (None when it does not)."""
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        async with asyncio.timeout(self.idle_timeout):  # waiting between requests
            data = await reader.read(READ_CHUNK)
        conn.receive_data(data)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.fairness.header_timeout
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            try:
                async with asyncio.timeout(remaining):
                    data = await reader.read(READ_CHUNK)
            except TimeoutError:
                return None
            conn.receive_data(data)

    def _count(self, status: int) -> None:
        self.stats.responses += 1
        self.stats.status[status] = self.stats.status.get(status, 0) + 1

    async def _read_body(self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes | None:
        """The whole request body, or None if it is too large (413 already sent)."""
        parts: list[bytes] = []
        size = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.fairness.body_timeout
        while True:
            if conn.they_are_waiting_for_100_continue:
                writer.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
            event = await _next_event(conn, reader, max(0.001, deadline - loop.time()))
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > MAX_BODY:
                    await _send_simple(conn, writer, 413, b"Payload Too Large", close=True)
                    self._count(413)
                    return None
                parts.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return b"".join(parts)
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("client closed mid-request")

    async def _serve(self, conn: h11.Connection, req: h11.Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer_ip: str) -> None:
        self.stats.requests += 1
        # h11 bounds what it buffers before a request is complete; a request that arrived whole in
        # one read is measured here.
        too_big = 0
        if len(req.target) > MAX_TARGET:
            too_big = 414
        elif len(req.target) + sum(len(n) + len(v) + 4 for n, v in req.headers.raw_items()) > MAX_HEADERS:
            too_big = 431
        if too_big:
            await _send_simple(conn, writer, too_big, _reason(too_big), close=True, head=req.method == b"HEAD")
            self._count(too_big)
            return
        body = await self._read_body(conn, reader, writer)
        if body is None:
            return
        head = req.method == b"HEAD"
        if req.method not in RELAYED_METHODS:
            await _send_simple(conn, writer, 501, b"Not Implemented")
            self._count(501)
            return
        ident = self.identify(peer_ip)
        upstream = self.upstream()
        if ident is None or upstream is None:
            if ident is None:
                log.warning("metadata request from unknown source %s: 500", peer_ip)
            else:
                log.warning("metadata request from %s but no metadata service is configured: 500", ident.vm_ip)
            await _send_simple(conn, writer, 500, b"Internal Server Error", head=head)
            self._count(500)
            return
        if self.fairness.rate_limit and not self.limiter.allow(ident.port_uuid, asyncio.get_running_loop().time()):
            self.stats.rate_limited += 1
            await _send_simple(conn, writer, 429, b"Too Many Requests", head=head)
            self._count(429)
            return
        headers = self._upstream_headers(req, ident, upstream, len(body))
        try:
            await self._relay(conn, writer, req, headers, body, upstream)
        except UpstreamError as e:
            self.stats.upstream_errors += 1
            log.warning("Nova at %s:%d failed for %s (%s): 502", upstream.host, upstream.port, ident.vm_ip, e)
            if conn.our_state is h11.SEND_RESPONSE:
                await _send_simple(conn, writer, 502, b"Bad Gateway", head=head)
                self._count(502)
            else:
                raise ConnectionError("upstream failed mid-response") from None

    def _upstream_headers(self, req: h11.Request, ident: Identity, upstream: Upstream, body_len: int) -> list:
        out = [(b"Host", upstream.host_header)]
        for name, value in req.headers.raw_items():
            low = name.lower()
            if low in IDENTITY_HEADERS or low in HOP_BY_HOP or low in (b"host", b"content-length", b"transfer-encoding"):
                continue
            out.append((name, value))
        if req.method in (b"POST", b"PUT") or body_len:
            out.append((b"Content-Length", str(body_len).encode()))
        out += [
            (b"X-Forwarded-For", ident.vm_ip.encode()),
            (b"X-Instance-ID", ident.instance_uuid.encode()),
            (b"X-Tenant-ID", tenant_header(ident.project_uuid).encode()),
            (b"X-Instance-ID-Signature", sign_instance_id(ident.instance_uuid, self.secret).encode()),
        ]
        return out

    # -- the Nova side --------------------------------------------------------------------------

    async def _connect(self, upstream: Upstream) -> _UpstreamConn:
        while self._idle:
            c = self._idle.pop()
            if c.upstream == upstream and not c.reader.at_eof() and not c.writer.is_closing():
                return c
            c.close()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(upstream.host, upstream.port, ssl=upstream.ssl, limit=READ_CHUNK),
                self.connect_timeout,
            )
        except TimeoutError:
            raise UpstreamError("connect timed out after %.0f s" % self.connect_timeout) from None
        except (OSError, ssl.SSLError) as e:
            raise UpstreamError("connect: %s" % (e.strerror or e)) from None
        return _UpstreamConn(upstream, reader, writer)

    def _release(self, c: _UpstreamConn) -> None:
        if c.h11.our_state is h11.DONE and c.h11.their_state is h11.DONE and len(self._idle) < self.max_idle_upstream:
            c.h11.start_next_cycle()
            c.used = True
            self._idle.append(c)
        else:
            c.close()

    async def _relay(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, req: h11.Request, headers: list, body: bytes, upstream: Upstream
    ) -> None:
        for attempt in (1, 2):
            up = await self._connect(upstream)
            reused = up.used
            try:
                data = up.h11.send(h11.Request(method=req.method, target=req.target, headers=headers))
                if body:
                    data += up.h11.send(h11.Data(data=body))
                data += up.h11.send(h11.EndOfMessage())
                up.writer.write(data)
                await up.writer.drain()
                event = await _next_event(up.h11, up.reader, self.read_timeout)
                while isinstance(event, h11.InformationalResponse):
                    event = await _next_event(up.h11, up.reader, self.read_timeout)
            except (TimeoutError, OSError, asyncio.IncompleteReadError, h11.ProtocolError) as e:
                up.close()
                if reused and attempt == 1 and not isinstance(e, asyncio.TimeoutError):
                    continue  # a pooled connection Nova had closed: once more on a new one
                if isinstance(e, asyncio.TimeoutError):
                    raise UpstreamError("no answer within %.0f s" % self.read_timeout) from None
                raise UpstreamError(str(e) or type(e).__name__) from None
            if not isinstance(event, h11.Response):
                up.close()
                if reused and attempt == 1:
                    continue
                raise UpstreamError("connection closed before a response")
            break
        await self._stream_back(conn, writer, up, event)

    async def _stream_back(self, conn: h11.Connection, writer: asyncio.StreamWriter, up: _UpstreamConn, resp: h11.Response) -> None:
        headers = [(n, v) for n, v in resp.headers.raw_items() if n.lower() not in HOP_BY_HOP]
        try:
            writer.write(conn.send(h11.Response(status_code=resp.status_code, headers=headers, reason=resp.reason)))
            self._count(resp.status_code)
            while True:
                event = await _next_event(up.h11, up.reader, self.read_timeout)
                if isinstance(event, h11.Data):
                    writer.write(conn.send(h11.Data(data=event.data)))
                    await writer.drain()
                elif isinstance(event, h11.EndOfMessage):
                    writer.write(conn.send(h11.EndOfMessage()))
                    await writer.drain()
                    break
                else:
                    raise UpstreamError("Nova closed the connection mid-body")
        except (TimeoutError, OSError, asyncio.IncompleteReadError, h11.ProtocolError) as e:
            up.close()
            if isinstance(e, h11.LocalProtocolError):
                raise
            raise UpstreamError("mid-body: %s" % (str(e) or type(e).__name__)) from None
        except BaseException:
            up.close()
            raise
        self._release(up)


async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader, timeout: float):  # noqa: ANN202
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        async with asyncio.timeout(timeout):  # cheaper than wait_for: no task per read
            data = await reader.read(READ_CHUNK)
        conn.receive_data(data)


def _reason(status: int) -> bytes:
    return {
        400: b"Bad Request",
        413: b"Payload Too Large",
        408: b"Request Timeout",
        414: b"URI Too Long",
        429: b"Too Many Requests",
        431: b"Request Header Fields Too Large",
        500: b"Internal Server Error",
        501: b"Not Implemented",
        502: b"Bad Gateway",
    }.get(status, b"Error")


async def _send_simple(conn: h11.Connection, writer: asyncio.StreamWriter, status: int, text: bytes, close: bool = False, head: bool = False) -> None:
    body = text + b"\n"
    headers = [(b"Content-Type", b"text/plain; charset=UTF-8"), (b"Content-Length", str(len(body)).encode())]
    if close:
        headers.append((b"Connection", b"close"))
    data = conn.send(h11.Response(status_code=status, headers=headers, reason=_reason(status)))
    if not head:
        data += conn.send(h11.Data(data=body))
    data += conn.send(h11.EndOfMessage())
    writer.write(data)
    await writer.drain()
