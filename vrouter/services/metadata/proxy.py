"""The agent's metadata proxy: identify the VM by its metadata IP, sign, relay to Nova.

The dataplane NATs a VM's connection to 169.254.169.254:80 so that it
arrives here from the VM port's metadata IP (169.254.0.0 + vif index).  That
peer address, and nothing the VM writes, says which VM is asking.  The proxy
removes any identity headers the VM sent, adds X-Forwarded-For, X-Instance-ID,
X-Tenant-ID (project uuid without dashes), X-Instance-ID-Signature
(HMAC-SHA256 of the instance uuid keyed with the shared secret) and Host, and
relays the request to Nova over a keep-alive pool.  The answer goes back as
Nova sent it: status, reason, headers and body, minus hop-by-hop headers;
the body is passed through as it arrives (re-chunked when Nova's answer has
no length and the VM speaks HTTP/1.1).

Both sides are asyncio Protocols around llhttp (httptools): no task, no
coroutine and no per-request object tree on the path of a pooled keep-alive
request, which is what makes the proxy fast enough to stand beside haproxy.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import httptools

from vrouter.services.metadata.signing import sign_instance_id, tenant_header

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
NOT_RELAYED = IDENTITY_HEADERS | HOP_BY_HOP | {b"host", b"content-length", b"transfer-encoding"}
NOT_RETURNED = HOP_BY_HOP | {b"content-length", b"transfer-encoding"}
MAX_HEADERS = 16 * 1024  # request line plus headers: 431 past this
MAX_TARGET = 8 * 1024  # request target: 414 past this
MAX_BODY = 1 << 20  # request bodies are buffered (metadata requests carry at most a password)
MAX_PIPELINED = 32  # requests queued on one connection before the proxy stops reading it
_REQUEST_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+ \S+ HTTP/\d\.\d\r?\n")

@dataclass(frozen=True)
class Identity:
    """Who a metadata IP belongs to."""

    instance_uuid: str
    project_uuid: str
    vm_ip: str
    port_uuid: str
    vm_name: str = ""


def client_tls(ca: str | None, cert: str | None = None, key: str | None = None) -> ssl.SSLContext:
    """The TLS context the proxy uses towards Nova: Nova verified against ``ca``, and our client
    certificate when there is one.  Raises OSError or ssl.SSLError naming the bad file."""
    ctx = ssl.create_default_context(cafile=ca or None)
    if cert:
        ctx.load_cert_chain(cert, key or None)
    return ctx


@dataclass(frozen=True)
class Upstream:
    """Where Nova's metadata API is."""

    host: str
    port: int
    ssl: ssl.SSLContext | None = None
    host_header: bytes = field(init=False, compare=False, repr=False)  # made once, sent with every request

    def __post_init__(self) -> None:
        object.__setattr__(self, "host_header", ("%s:%d" % (self.host, self.port)).encode())


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


class _Refuse(Exception):
    """Raised inside a parser callback: answer ``status`` and close."""

    def __init__(self, status: int) -> None:
        self.status = status


class _Deadline:
    """One timer per connection, moved lazily.  A request moves a connection's deadline three or
    four times (head, body, Nova's answer, idle); setting a later deadline is an assignment, and
    the timer, when it fires before the deadline, re-arms itself for what is left."""

    __slots__ = ("loop", "callback", "deadline", "handle", "at")

    def __init__(self, callback: Callable[[], None]) -> None:
        self.loop = asyncio.get_running_loop()
        self.callback = callback
        self.deadline = 0.0  # 0: nothing to wait for
        self.handle: asyncio.TimerHandle | None = None
        self.at = 0.0

    def set(self, seconds: float) -> None:
        d = self.deadline = self.loop.time() + seconds
        if self.handle is None or self.at > d:
            if self.handle is not None:
                self.handle.cancel()
            self.handle = self.loop.call_at(d, self._fire)
            self.at = d

    def clear(self) -> None:
        self.deadline = 0.0

    def cancel(self) -> None:
        """For good: also lets go of the callback (its connection), so that no reference cycle is
        left for the garbage collector to find."""
        self.deadline = 0.0
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        self.callback = _nothing

    def _fire(self) -> None:
        self.handle = None
        if not self.deadline:
            return
        if self.loop.time() < self.deadline:
            self.handle = self.loop.call_at(self.deadline, self._fire)
            self.at = self.deadline
            return
        self.deadline = 0.0
        self.callback()


def _nothing() -> None:
    pass


class _Request:
    __slots__ = ("method", "target", "headers", "body", "keep_alive", "http11", "local")

    def __init__(self) -> None:
        self.method = b""
        self.target = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.keep_alive = True
        self.http11 = True
        self.local = 0  # a status the proxy answers itself, then closes


def _simple_response(status: int, close: bool, head: bool = False) -> bytes:
    reason = _reason(status)
    body = reason + b"\n"
    out = b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=UTF-8\r\nContent-Length: %d\r\n" % (status, reason, len(body))
    if close:
        out += b"Connection: close\r\n"
    return out + b"\r\n" + (b"" if head else body)


class _VMConnection(asyncio.Protocol):
    """One connection from a VM (through the dataplane's NAT): parse, queue, answer in order."""

    def __init__(self, proxy: MetadataProxy) -> None:
        self.proxy = proxy
        self.transport: asyncio.Transport | None = None
        self.peer_ip = ""
        self.parser = httptools.HttpRequestParser(self)
        self.queue: deque[_Request] = deque()
        self.current: _Request | None = None  # relayed, answer not finished
        self.nova: _NovaConnection | None = None
        self.responding = False  # the current answer's head has gone to the VM
        self.closed = False
        self.stop_reading = False  # no more requests are read (refused, upgraded, or closing)
        self.write_paused = False  # the transport's buffer towards the VM is full
        self.close_after = False
        self.counted = False
        self._req: _Request | None = None
        self._url: list[bytes] = []
        self._head_size = 0
        self._head_bytes = 0
        self._in_head = False
        self._in_message = False
        self._body: list[bytes] = []
        self._body_size = 0
        self._timer = _Deadline(self._on_timer)
        self._timer_kind = ""

    # -- connection ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport subclasses
        p = self.proxy
        peer = transport.get_extra_info("peername")
        self.peer_ip = peer[0] if peer else ""
        p.stats.proxy_sessions += 1
        p.clients.add(self)
        open_now = p.open_per_peer.get(self.peer_ip, 0) + 1
        p.open_per_peer[self.peer_ip] = open_now
        self.counted = True
        if open_now > p.fairness.max_connections_per_vm:
            p.stats.connections_refused += 1
            if p.stats.connections_refused == 1 or p.stats.connections_refused % 1000 == 0:
                log.warning("%s has %d connections open to the metadata proxy: refused (429)", self.peer_ip, open_now - 1)
            self._answer(429, True, False)
            self._close()
            return
        self._arm("idle", p.idle_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._timer.cancel()
        if self.nova is not None:
            self.nova.abandon()
            self.nova = None
        p = self.proxy
        p.clients.discard(self)
        if self.counted:
            self.counted = False
            left = p.open_per_peer.get(self.peer_ip, 1) - 1
            if left:
                p.open_per_peer[self.peer_ip] = left
            else:
                p.open_per_peer.pop(self.peer_ip, None)
        # the parser holds this protocol for its callbacks: break the cycle, so that a closed
        # connection is freed at once and not left to the collector's full passes (which stalled
        # the proxy for milliseconds after bursts of short connections)
        self.parser = None  # type: ignore[assignment]

    def eof_received(self) -> bool:
        # the VM has sent all it will: answer what is queued, then close
        self.stop_reading = True
        if self.current is None and not self.queue:
            return False  # close now
        self.close_after = True
        return True

    def pause_writing(self) -> None:
        # the VM reads slower than Nova answers: stop reading Nova until it catches up
        self.write_paused = True
        if self.nova is not None:
            self.nova.pause()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.nova is not None:
            self.nova.resume()

    def data_received(self, data: bytes) -> None:
        if self.stop_reading or self.closed:
            return
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > 2 * MAX_HEADERS:  # a head that never ends: do not buffer it
                self._refuse(431)
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as e:
            ctx = e.__context__
            if isinstance(ctx, _Refuse):
                self._refuse(ctx.status)
            else:
                self._internal_error(ctx or e)
        except httptools.HttpParserInvalidMethodError:
            # a well-formed request line with a method llhttp does not know is 501, anything else 400
            self._refuse(501 if _REQUEST_LINE.match(data) else 400)
        except httptools.HttpParserUpgrade:
            # CONNECT or Upgrade: what was parsed is answered (CONNECT gets 501); nothing more is read
            self.stop_reading = True
            self.close_after = True
            if self.current is None and not self.queue:
                self._refuse(400)
        except httptools.HttpParserError:
            self._refuse(400)
        except Exception as e:  # noqa: BLE001 - a bug must not take the proxy down
            self._internal_error(e)
            return
        if len(self.queue) >= MAX_PIPELINED and self.transport is not None:
            self.transport.pause_reading()
        elif self._in_message and not self.stop_reading:
            self._ack_now()  # part of a request: the VM may be waiting for this ACK to send the rest
        self._next()

    # -- parser callbacks -----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._req = _Request()
        self._url = []
        self._head_size = 0
        self._head_bytes = 0
        self._in_head = True
        self._in_message = True
        self._body = []
        self._body_size = 0
        self._arm("head", self.proxy.fairness.header_timeout)

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self._head_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self._req is not None
        self._req.headers.append((name, value))
        self._head_size += len(name) + len(value) + 4

    def on_headers_complete(self) -> None:
        req = self._req
        assert req is not None
        self._in_head = False
        req.target = b"".join(self._url)
        if len(req.target) > MAX_TARGET:
            raise _Refuse(414)
        if self._head_size > MAX_HEADERS:
            raise _Refuse(431)
        p = self.parser
        req.method = p.get_method()
        req.http11 = p.get_http_version() != "1.0"
        req.keep_alive = p.should_keep_alive()
        expect = False
        for name, value in req.headers:
            low = name.lower()
            if low == b"content-length":
                if value.strip().isdigit() and int(value) > MAX_BODY:
                    raise _Refuse(413)
            elif low == b"expect" and value.strip().lower() == b"100-continue":
                expect = True
        if expect and req.http11 and self.current is None and not self.queue:
            self._write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self._arm("body", self.proxy.fairness.body_timeout)

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > MAX_BODY:
            raise _Refuse(413)
        self._body.append(body)

    def on_message_complete(self) -> None:
        req = self._req
        assert req is not None
        self._req = None
        self._in_message = False
        if self._body:
            req.body = b"".join(self._body)
            self._body = []
        self._disarm()
        self.queue.append(req)
        if not req.keep_alive:
            self.stop_reading = True

    # -- answering ------------------------------------------------------------------------------

    def _refuse(self, status: int) -> None:
        """Answer ``status`` after whatever is queued, then close; read nothing more."""
        if self._req is not None and status in (413, 414, 431, 408):
            self.proxy.stats.requests += 1  # it was a request, refused before it was complete
        self._req = None
        self._in_head = self._in_message = False
        self.stop_reading = True
        self._disarm()
        r = _Request()
        r.local = status
        self.queue.append(r)
        self._next()

    def _next(self) -> None:
        """Start queued requests in order, one at a time."""
        while self.current is None and self.queue and not self.closed:
            req = self.queue.popleft()
            try:
                self._start(req)
            except Exception as e:  # noqa: BLE001
                self._internal_error(e)
                return
        if self.current is None and not self.queue and not self.closed:
            if self.close_after or (self.stop_reading and not self._in_message):
                self._close()
            elif not self._in_message:
                if self.transport is not None:
                    self.transport.resume_reading()  # paused at MAX_PIPELINED; the queue is empty now
                self._arm("idle", self.proxy.idle_timeout)

    def _start(self, req: _Request) -> None:
        p = self.proxy
        head = req.method == b"HEAD"
        if req.local:
            self._answer(req.local, True, head)
            return
        p.stats.requests += 1
        close = not req.keep_alive
        if req.method not in RELAYED_METHODS:
            self._answer(501, close, head)
            return
        ident = p.identify(self.peer_ip)
        upstream = p.upstream()
        if ident is None or upstream is None:
            if ident is None:
                log.warning("metadata request from unknown source %s: 500", self.peer_ip)
            else:
                log.warning("metadata request from %s but no metadata service is configured: 500", ident.vm_ip)
            self._answer(500, close, head)
            return
        if p.fairness.rate_limit and not p.limiter.allow(ident.port_uuid, asyncio.get_running_loop().time()):
            p.stats.rate_limited += 1
            self._answer(429, close, head)
            return
        self.current = req
        self.responding = False
        p.relay(self, req, p.request_bytes(req, ident, upstream), upstream, 1)

    def _answer(self, status: int, close: bool, head: bool) -> None:
        # not held for the FIN (last_write): a refused VM may still be sending, and closing with
        # unread data resets the connection, which would discard a held answer
        self._write(_simple_response(status, close, head))
        self.proxy._count(status)
        if close:
            self.close_after = True

    def response_started(self, status: int) -> None:
        self.responding = True
        self.proxy._count(status)

    def response_done(self) -> None:
        req = self.current
        self.current = None
        self.nova = None
        self.responding = False
        if req is not None and not req.keep_alive:
            self.close_after = True
        self._next()

    def upstream_failed(self, upstream: Upstream, why: str) -> None:
        """Nova failed for the current request: 502 if nothing was answered yet, else cut the VM off."""
        p = self.proxy
        p.stats.upstream_errors += 1
        self.nova = None
        if self.closed:
            return
        log.warning("Nova at %s:%d failed for %s (%s): 502", upstream.host, upstream.port, self.peer_ip, why)
        if self.responding:
            self._close(abort=True)
            return
        req = self.current
        assert req is not None
        self._answer(502, not req.keep_alive, req.method == b"HEAD")
        self.current = None
        self._next()

    def _internal_error(self, e: BaseException) -> None:
        self.proxy.stats.internal_errors += 1
        log.error("metadata proxy: internal error serving %s", self.peer_ip, exc_info=e)
        if not self.responding and not self.closed:
            self._answer(500, True, False)
        self._close()

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def last_write(self) -> None:
        """What is written next ends the connection: hold it (TCP_CORK) until the close, so that
        the end of the answer and the FIN leave in one segment.  Each segment to a VM crosses the
        dataplane, and a VM making a connection per request makes about ten crossings."""
        if self.transport is None or self.closed:
            return
        sock = self.transport.get_extra_info("socket")
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        except (OSError, AttributeError):
            pass  # not TCP (tests over other transports): nothing is held

    def _ack_now(self) -> None:
        """Acknowledge what has arrived now.  The listening socket puts VM connections in delayed-ACK
        mode (``MetadataProxy.start``), so that a whole request's ACK rides on the answer; but a VM
        whose client wrote part of a request and, with Nagle's algorithm, holds the rest until that
        part is acknowledged would otherwise wait for the delayed-ACK timer (40 ms or more).
        TCP_QUICKACK 2 sends the pending ACK at once and (being even) leaves the connection in
        delayed-ACK mode, so the rest of the request is acknowledged by the answer."""
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 2)
        except (OSError, AttributeError):
            pass  # not TCP (tests over other transports)

    def _close(self, abort: bool = False) -> None:
        self.stop_reading = True
        self._disarm()
        if self.transport is not None and not self.transport.is_closing():
            if abort:
                self.transport.abort()
            else:
                self.transport.close()

    # -- timers: one per connection, for whatever it is waiting for -----------------------------

    def _arm(self, kind: str, seconds: float) -> None:
        self._timer_kind = kind
        self._timer.set(seconds)

    def _disarm(self) -> None:
        self._timer.clear()

    def _on_timer(self) -> None:
        if self._timer_kind == "idle":
            self._close()
            return
        # slowloris: the head (or the body) did not come in time
        self.proxy.stats.header_timeouts += 1
        self._refuse(408)


class _NovaConnection(asyncio.Protocol):
    """One connection to Nova: carries one request at a time, then waits in the pool."""

    def __init__(self, proxy: MetadataProxy, upstream: Upstream) -> None:
        self.proxy = proxy
        self.upstream = upstream
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.client: _VMConnection | None = None
        self.req: _Request | None = None
        self.data = b""
        self.attempt = 1
        self.reused = False
        self.closed = False
        self.usable = True
        self._paused = False  # not reading: the VM's side is full
        self._timer = _Deadline(self._timed_out)
        self._reason: list[bytes] = []
        self._headers: list[tuple[bytes, bytes]] = []
        self._status = 0
        self._informational = False
        self._chunked_out = False
        self._until_close = False  # no length from Nova: the body ends when Nova closes
        self._started = False
        # what goes to the VM from one read of Nova's answer, written at once: head and body in one
        # segment, not one per parser callback (each segment costs a trip through the dataplane)
        self._out: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport subclasses

    def _flush(self, client: _VMConnection) -> None:
        if self._out:
            client._write(self._out[0] if len(self._out) == 1 else b"".join(self._out))
            self._out = []

    def begin(self, client: _VMConnection, req: _Request, data: bytes, reused: bool, attempt: int) -> None:
        assert self.transport is not None
        self.client = client
        self.req = req
        self.data = data
        self.reused = reused
        self.attempt = attempt
        self._started = False
        self._reason = []
        self._headers = []
        self._out = []
        client.nova = self
        self.transport.write(data)
        self._timer.set(self.proxy.read_timeout)
        if client.write_paused:
            self.pause()

    def pause(self) -> None:
        """Stop reading Nova while the VM does not read; Nova's read timeout waits too."""
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
            self._timer.clear()

    def resume(self) -> None:
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
            if self.client is not None:
                self._timer.set(self.proxy.read_timeout)

    def data_received(self, data: bytes) -> None:
        if self.client is None:  # nothing was asked: whatever Nova says now is a protocol error
            self.usable = False
            self._close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as e:
            self._fail("%s" % (e.__context__ or e))
        except httptools.HttpParserError as e:
            self._fail("not HTTP: %s" % e)
        if self.client is not None:
            self._flush(self.client)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._timer.cancel()
        self.proxy.forget(self)
        if self.client is not None:
            if self._until_close and self._started:
                self._finish()  # the end of a body without a length
            else:
                self._fail("connection closed mid-body" if self._started else ("connection closed before a response" if exc is None else str(exc)))
        self.parser = None  # type: ignore[assignment]  # no cycle left (see _VMConnection)

    # -- parser callbacks -----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._reason = []
        self._headers = []

    def on_status(self, reason: bytes) -> None:
        self._reason.append(reason)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        self._informational = status < 200
        if self._informational:
            return
        client, req = self.client, self.req
        assert client is not None and req is not None
        self._status = status
        length = None
        chunked = False
        out = [b"HTTP/1.1 %d %s\r\n" % (status, b"".join(self._reason))]
        for name, value in self._headers:
            low = name.lower()
            if low in NOT_RETURNED:
                if low == b"content-length":
                    length = value
                elif low == b"transfer-encoding":
                    chunked = b"chunked" in value.lower()
                continue
            out.append(b"%s: %s\r\n" % (name, value))
        no_body = req.method == b"HEAD" or status in (204, 304)
        self._chunked_out = self._until_close = False
        if no_body:
            if length is not None:
                out.append(b"Content-Length: %s\r\n" % length)
        elif length is not None and not chunked:
            out.append(b"Content-Length: %s\r\n" % length)
        else:
            self._until_close = not chunked
            if req.http11:
                self._chunked_out = True
                out.append(b"Transfer-Encoding: chunked\r\n")
            else:
                req.keep_alive = False  # HTTP/1.0 without a length: the end is our close
        if not req.keep_alive:
            out.append(b"Connection: close\r\n")
        elif not req.http11:
            out.append(b"Connection: keep-alive\r\n")
        out.append(b"\r\n")
        self._started = True
        client.response_started(status)
        self._out.append(b"".join(out))
        if req.method == b"HEAD":
            # llhttp cannot be told that a response has no body, so this connection is not reused
            self.usable = False
            self._finish()
        elif no_body:
            pass  # on_message_complete follows at once

    def on_body(self, body: bytes) -> None:
        if self.client is None or self._informational:
            return
        self._out.append(b"%x\r\n%s\r\n" % (len(body), body) if self._chunked_out else body)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        if self.client is None:
            return
        if not self.parser.should_keep_alive():
            self.usable = False
        self._finish()

    # -- ends -----------------------------------------------------------------------------------

    def _finish(self) -> None:
        client, req = self.client, self.req
        self._cancel_timer()
        self.client = None
        self.req = None
        if client is None:
            return
        if self._chunked_out:
            self._out.append(b"0\r\n\r\n")
        if req is not None and not req.keep_alive and not client.queue:
            client.last_write()  # the VM's connection closes after this answer
        self._flush(client)
        self.resume()  # a pooled connection always reads (a slow VM may have paused it)
        self.proxy.release(self)  # first, so that the VM's next request can take it
        client.response_done()

    def _fail(self, why: str) -> None:
        client, req = self.client, self.req
        self._cancel_timer()
        self.client = None
        self.req = None
        self.usable = False
        self._close()
        if client is None or req is None:
            return
        if not self._started and self.reused and self.attempt == 1 and why != "timeout":
            # a pooled connection Nova had closed: once more, on a new connection
            self.proxy.relay(client, req, self.data, self.upstream, 2)
            return
        client.upstream_failed(self.upstream, "no answer within %.0f s" % self.proxy.read_timeout if why == "timeout" else why)

    def _timed_out(self) -> None:
        self._fail("timeout")

    def abandon(self) -> None:
        """The VM went away mid-answer: this connection cannot be reused."""
        self.client = None
        self.req = None
        self.usable = False
        self._cancel_timer()
        self._close()

    def _cancel_timer(self) -> None:
        self._timer.clear()

    def _close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


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
        self.clients: set[_VMConnection] = set()
        self._idle: list[_NovaConnection] = []
        self._signed: dict[Identity, bytes] = {}
        self._servers: list[asyncio.base_events.Server] = []
        self._connecting: set[asyncio.Task] = set()

    def load(self) -> dict[str, int]:
        """Open connections: from VMs, and idle in the keep-alive pool towards Nova."""
        return {"vm_connections": sum(self.open_per_peer.values()), "upstream_idle": len(self._idle)}

    async def start(self, host: str | list[str], port: int) -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _VMConnection(self), host, port, reuse_address=True, backlog=1024)
        for sock in server.sockets:
            # Delayed ACKs from the first segment (accepted connections inherit it): the ACK of a
            # request goes with its answer instead of in a segment of its own, one crossing of the
            # dataplane fewer per request on a new connection.  A partial request is acknowledged
            # at once (_VMConnection._ack_now), so a client waiting on that ACK does not stall.
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
            c._close(abort=True)
        for n in self._idle:
            n._close()
        self._idle.clear()

    def _count(self, status: int) -> None:
        self.stats.responses += 1
        self.stats.status[status] = self.stats.status.get(status, 0) + 1

    def request_bytes(self, req: _Request, ident: Identity, upstream: Upstream) -> bytes:
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
            signed = self._signed[ident] = (
                b"X-Forwarded-For: %s\r\nX-Instance-ID: %s\r\nX-Tenant-ID: %s\r\nX-Instance-ID-Signature: %s\r\n\r\n"
                % (
                    ident.vm_ip.encode(),
                    ident.instance_uuid.encode(),
                    tenant_header(ident.project_uuid).encode(),
                    sign_instance_id(ident.instance_uuid, self.secret).encode(),
                )
            )
        out.append(signed)
        if req.body:
            out.append(req.body)
        return b"".join(out)

    # -- the pool towards Nova ------------------------------------------------------------------

    def relay(self, client: _VMConnection, req: _Request, data: bytes, upstream: Upstream, attempt: int) -> None:
        while self._idle:
            n = self._idle.pop()
            if n.upstream == upstream and not n.closed and n.transport is not None and not n.transport.is_closing():
                n.begin(client, req, data, True, attempt)
                return
            n._close()
        t = asyncio.get_running_loop().create_task(self._open(client, req, data, upstream, attempt))
        self._connecting.add(t)
        t.add_done_callback(self._connecting.discard)

    async def _open(self, client: _VMConnection, req: _Request, data: bytes, upstream: Upstream, attempt: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, nova = await loop.create_connection(lambda: _NovaConnection(self, upstream), upstream.host, upstream.port, ssl=upstream.ssl)
        except TimeoutError:
            client.upstream_failed(upstream, "connect timed out after %.0f s" % self.connect_timeout)
            return
        except (OSError, ssl.SSLError) as e:
            client.upstream_failed(upstream, "connect: %s" % (getattr(e, "strerror", None) or e))
            return
        if client.closed:
            self.release(nova)
            return
        nova.begin(client, req, data, False, attempt)

    def release(self, nova: _NovaConnection) -> None:
        if nova.usable and not nova.closed and len(self._idle) < self.max_idle_upstream:
            self._idle.append(nova)
        else:
            nova._close()

    def forget(self, nova: _NovaConnection) -> None:
        try:
            self._idle.remove(nova)
        except ValueError:
            pass


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
