"""The Nova side: connections to Nova's metadata API, one request at a time, and their keep-alive pool.

A connection runs one state machine (``states.Upstream``).  It is handed a
request by ``NovaPool.relay`` (``begin``), passes Nova's answer to the VM's
connection as it arrives (``Responder``: the only methods of the VM side it
calls), and is paused and resumed by the VM side when the VM reads slowly
(``pause``, ``resume``) or dropped when the VM goes (``abandon``).  Done with
its request, it goes back to the pool (``NovaPool.release``) for the next.

Rules kept here: Nova's answer goes back as Nova sent it, status, reason,
headers (with their case) and body, minus hop-by-hop headers; a body without a
length is re-chunked for an HTTP/1.1 VM and ended by closing for an HTTP/1.0
one; 1xx answers are skipped; nothing from Nova for ``read_timeout`` seconds
(the VM not reading aside) is a failure, 502; a pooled connection that Nova had
closed is retried once on a new one; what one read of Nova's answer brings goes
to the VM in one write (each segment costs a trip through the dataplane).
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from typing import NoReturn, Protocol

import httptools

from vrouter.services.metadata.http import NOT_RETURNED, Request
from vrouter.services.metadata.states import UPSTREAM_NEXT, StateError, UpstreamEvent
from vrouter.services.metadata.states import Upstream as State
from vrouter.services.metadata.timers import Deadline

_POOLED, _SENT, _INTERIM, _STREAMING, _CLOSED = State.IDLE, State.SENT, State.INTERIM, State.STREAMING, State.CLOSED
_REQUEST_SENT, _HEAD, _ANSWER_ENDS = UpstreamEvent.REQUEST_SENT, UpstreamEvent.HEAD, UpstreamEvent.ANSWER_ENDS


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


class Responder(Protocol):
    """What the Nova side may do to the VM's connection it answers."""

    write_paused: bool  # the VM does not read: pause Nova
    nova: NovaConnection | None  # the connection carrying its request, that it pauses, resumes and abandons

    @property
    def gone(self) -> bool: ...  # the VM's connection is closed

    def answer_started(self, status: int, head_len: int) -> None: ...

    def answer_data(self, data: bytes) -> None: ...

    def answer_done(self, data: bytes, close: bool) -> None: ...

    def answer_failed(self, upstream: Upstream, why: str) -> None: ...


class NovaConnection(asyncio.Protocol):
    """One connection to Nova."""

    def __init__(self, pool: NovaPool, upstream: Upstream) -> None:
        self.pool = pool
        self.upstream = upstream
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.state = State.IDLE
        self._paused = False  # not reading: the VM's side is full (flow control)
        self._timer = Deadline(self._timed_out)
        # the exchange in hand: the VM's connection, its request, how it was sent
        self.client: Responder | None = None
        self.req: Request | None = None
        self.attempt = 1
        self.reused = False
        # ... and how its answer is framed
        self._reusable = True  # this connection may carry another request after the answer
        self._reason: list[bytes] = []
        self._headers: list[tuple[bytes, bytes]] = []
        self._rechunk = False  # the body goes to the VM as chunks (Nova's was chunked, or had no length)
        self._ends_at_close = False  # Nova's body has no length: it ends when Nova closes
        self._close_vm = False  # the VM's connection ends with this answer
        # what goes to the VM from one read of Nova's answer, written at once: head and body in one
        # segment, not one per parser callback
        self._out: list[bytes] = []

    def _go(self, event: UpstreamEvent) -> None:
        self.state = UPSTREAM_NEXT[self.state][event] or self._bad(event)

    def _bad(self, event: UpstreamEvent) -> NoReturn:
        raise StateError("%s while the upstream connection is %s" % (event.name, self.state.name))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport subclasses

    def begin(self, client: Responder, req: Request, reused: bool, attempt: int) -> None:
        """Carry ``req`` (its bytes in ``req.wire``) for ``client``."""
        assert self.transport is not None
        self.state = UPSTREAM_NEXT[self.state][_REQUEST_SENT] or self._bad(_REQUEST_SENT)
        self.client = client
        client.nova = self
        self.req = req
        self.reused = reused
        self.attempt = attempt
        self._reason = []
        self._headers = []
        self._out = []
        self.transport.write(req.wire)
        self._timer.set(self.pool.read_timeout)
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
                self._timer.set(self.pool.read_timeout)

    def abandon(self) -> None:
        """The VM went away mid-answer: this connection cannot be reused."""
        self.client = None
        self.req = None
        self._timer.clear()
        self._close()

    def close(self) -> None:
        """Close it (the pool dropping it, or the proxy stopping)."""
        self._close()

    # -- from Nova ------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.client is None:  # nothing was asked: whatever Nova says now is a protocol error
            self._close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as e:
            self._fail("%s" % (e.__context__ or e))
        except httptools.HttpParserError as e:
            self._fail("not HTTP: %s" % e)
        client = self.client
        if client is not None and self._out:
            client.answer_data(self._out[0] if len(self._out) == 1 else b"".join(self._out))
            self._out = []

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        started = self.state is _STREAMING
        self._go(UpstreamEvent.CLOSE)
        self._timer.cancel()
        self.pool.forget(self)
        if self.client is not None:
            if self._ends_at_close and started:
                self._finish()  # the end of a body without a length
            else:
                self._fail("connection closed mid-body" if started else ("connection closed before a response" if exc is None else str(exc)))
        self.parser = None  # type: ignore[assignment]  # no cycle left (see VMConnection.connection_lost)

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
        if status < 200:
            self._go(UpstreamEvent.INTERIM_HEAD)
            return
        client, req = self.client, self.req
        assert client is not None and req is not None
        self.state = UPSTREAM_NEXT[self.state][_HEAD] or self._bad(_HEAD)
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
        self._rechunk = self._ends_at_close = False
        self._close_vm = not req.keep_alive
        if no_body:
            if length is not None:
                out.append(b"Content-Length: %s\r\n" % length)
        elif length is not None and not chunked:
            out.append(b"Content-Length: %s\r\n" % length)
        else:
            self._ends_at_close = not chunked
            if req.http11:
                self._rechunk = True
                out.append(b"Transfer-Encoding: chunked\r\n")
            else:
                self._close_vm = True  # HTTP/1.0 without a length: the end is our close
        if self._close_vm:
            out.append(b"Connection: close\r\n")
        elif not req.http11:
            out.append(b"Connection: keep-alive\r\n")
        out.append(b"\r\n")
        head = b"".join(out)
        client.answer_started(status, len(head))
        self._out.append(head)
        if req.method == b"HEAD":
            # llhttp cannot be told that a response has no body, so this connection is not reused
            self._reusable = False
            self._finish()
        # (no body otherwise: on_message_complete follows at once)

    def on_body(self, body: bytes) -> None:
        if self.client is None or self.state is not _STREAMING:
            return
        self._out.append(b"%x\r\n%s\r\n" % (len(body), body) if self._rechunk else body)

    def on_message_complete(self) -> None:
        if self.state is _INTERIM:
            self._go(UpstreamEvent.INTERIM_ENDS)
            return
        if self.client is None:
            return
        if not self.parser.should_keep_alive():
            self._reusable = False
        self._finish()

    # -- ends -----------------------------------------------------------------------------------

    def _finish(self) -> None:
        """Nova's answer is complete: the last of it goes to the VM; this connection goes back to
        the pool (first, so that the VM's next request can take it) or is closed."""
        client = self.client
        self._timer.clear()
        self.client = None
        self.req = None
        if client is None:
            return
        if self._rechunk:
            self._out.append(b"0\r\n\r\n")
        out = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out = []
        if self._paused:
            self.resume()  # a pooled connection always reads (a slow VM may have paused it)
        if self._reusable and self.state is _STREAMING:
            self.state = UPSTREAM_NEXT[self.state][_ANSWER_ENDS] or self._bad(_ANSWER_ENDS)
            self.pool.release(self)
        else:
            self._close()
        client.answer_done(out, self._close_vm)

    def _fail(self, why: str) -> None:
        client, req = self.client, self.req
        started = self.state is _STREAMING
        self._timer.clear()
        self.client = None
        self.req = None
        self._close()
        if client is None or req is None:
            return
        if not started and self.reused and self.attempt == 1 and why != "timeout":
            # a pooled connection Nova had closed: once more, on a new connection
            self.pool.relay(client, req, self.upstream, 2)
            return
        client.answer_failed(self.upstream, "no answer within %.0f s" % self.pool.read_timeout if why == "timeout" else why)

    def _timed_out(self) -> None:
        self._fail("timeout")

    def _close(self) -> None:
        self._reusable = False
        if self.state is not _CLOSED and self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class NovaPool:
    """The connections to Nova: idle ones kept for the next request (keep-alive), new ones opened."""

    def __init__(self, connect_timeout: float = 4.0, read_timeout: float = 30.0, max_idle: int = 64) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout  # a connection's: nothing from Nova so long is a failure
        self.max_idle = max_idle
        self.idle: list[NovaConnection] = []
        self._connecting: set[asyncio.Task] = set()

    def relay(self, client: Responder, req: Request, upstream: Upstream, attempt: int) -> None:
        """Send ``req`` (``req.wire``) to Nova for ``client``: on a pooled connection, else a new one."""
        while self.idle:
            n = self.idle.pop()
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
        if nova.state is _POOLED and len(self.idle) < self.max_idle and t is not None and not t.is_closing():
            self.idle.append(nova)
        else:
            nova.close()

    def forget(self, nova: NovaConnection) -> None:
        """A connection that closed: out of the pool."""
        try:
            self.idle.remove(nova)
        except ValueError:
            pass

    def close(self) -> None:
        """Stop opening connections and close the idle ones (the proxy stopping)."""
        for t in list(self._connecting):
            t.cancel()
        for n in self.idle:
            n.close()
        self.idle.clear()
