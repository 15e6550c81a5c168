"""A connection from a VM, through the dataplane's NAT: read requests, answer them in order.

It arrives from the VM port's metadata IP; that peer address, and nothing the
VM writes, is who is asking.  Two state machines (``states``): reading
requests, and answering them one at a time in order.  Toward Nova it goes
through ``MetadataProxy.relay``; the Nova side answers through the methods
under "what the Nova side calls" (``answer_started``, ``answer_data``,
``answer_done``, ``answer_failed``) and reads ``write_paused``; nothing else of
this class is the Nova side's business.  A request that met a fault rule is
handed to its effect (``effects``) at the moments it may change, and the
effect acts through the methods under "what a fault's effect calls".

Rules kept here: a request a VM trickles in gets 408 when its head (or body) is
late; more than ``max_connections_per_vm`` connections from one VM: 429; a VM
over the rate limit: 429; an unknown source or no metadata service: 500; more
than ``MAX_PIPELINED`` (32) requests read ahead: reading pauses; a VM that reads
slower than Nova answers pauses the Nova connection.  Connections start in
delayed-ACK mode (the listening socket's): a whole request's ACK goes with its
answer; a partial one is acknowledged at once.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

import httptools

from vrouter.services.metadata.http import (
    MAX_BODY,
    MAX_HEADERS,
    MAX_PIPELINED,
    MAX_TARGET,
    RELAYED_METHODS,
    REQUEST_LINE,
    Refuse,
    Request,
    nova_like_response,
    simple_response,
)
from vrouter.services.metadata.states import ANSWER_NEXT, READ_NEXT, AnswerEvent, Answering, ReadEvent, Reading, StateError
from vrouter.services.metadata.timers import Deadline

if TYPE_CHECKING:
    from vrouter.services.metadata.nova_side import NovaConnection, Upstream
    from vrouter.services.metadata.proxy import MetadataProxy

log = logging.getLogger("vrouter.metadata")

_IDLE, _HEAD, _BODY, _DONE = Reading.IDLE, Reading.HEAD, Reading.BODY, Reading.DONE
_READY, _CLOSED = Answering.READY, Answering.CLOSED
_HEAD_BEGINS, _HEAD_ENDS, _REQUEST_ENDS, _LAST_REQUEST_ENDS = (
    ReadEvent.HEAD_BEGINS,
    ReadEvent.HEAD_ENDS,
    ReadEvent.REQUEST_ENDS,
    ReadEvent.LAST_REQUEST_ENDS,
)
_RELAY, _ANSWER_STARTS, _ANSWER_ENDS = AnswerEvent.RELAY, AnswerEvent.ANSWER_STARTS, AnswerEvent.ANSWER_ENDS
_clock = time.monotonic  # the journal's durations: the loop's clock (libuv's) is in milliseconds
# why the proxy refused a request before it was whole, for the journal
_LOCAL_REASONS = {400: "bad request", 408: "timeout", 413: "too large", 414: "too large", 431: "too large", 501: "method not relayed"}


def _path(req: Request) -> str:
    return req.target.split(b"?", 1)[0].decode("latin-1")


class VMConnection(asyncio.Protocol):
    """One connection from a VM: parse, queue, answer in order."""

    def __init__(self, proxy: MetadataProxy) -> None:
        self.proxy = proxy
        self.transport: asyncio.Transport | None = None
        self.peer_ip = ""
        self.parser = httptools.HttpRequestParser(self)
        self.reading = Reading.IDLE
        self.answering = Answering.READY
        self.queue: deque[Request] = deque()  # read, not yet started
        self.current: Request | None = None  # relayed, its answer not finished
        self._upstream: Upstream | None = None  # where the current request goes
        self.nova: NovaConnection | None = None  # carrying the current request
        self.write_paused = False  # the transport's buffer towards the VM is full (flow control)
        self._held: list[bytes] | None = None  # an answer held back for a fault's effect to deliver
        self._head_len = 0  # of the held answer
        self._later: asyncio.TimerHandle | None = None  # a fault's effect's next step
        self._req: Request | None = None  # being read
        self._url: list[bytes] = []
        self._head_size = 0
        self._head_bytes = 0
        self._body: list[bytes] = []
        self._body_size = 0
        self._timer = Deadline(self._on_timer)

    # -- the machines ---------------------------------------------------------------------------

    def _read(self, event: ReadEvent) -> None:
        self.reading = READ_NEXT[self.reading][event] or self._bad(event)

    def _answer_state(self, event: AnswerEvent) -> None:
        self.answering = ANSWER_NEXT[self.answering][event] or self._bad(event)

    def _bad(self, event: ReadEvent | AnswerEvent) -> NoReturn:
        raise StateError("%s while reading is %s and answering %s" % (event.name, self.reading.name, self.answering.name))

    # -- connection -----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport subclasses
        p = self.proxy
        peer = transport.get_extra_info("peername")
        self.peer_ip = peer[0] if peer else ""
        p.stats.proxy_sessions += 1
        p.clients.add(self)
        open_now = p.open_per_peer.get(self.peer_ip, 0) + 1
        p.open_per_peer[self.peer_ip] = open_now
        if open_now > p.fairness.max_connections_per_vm:
            p.stats.connections_refused += 1
            if p.stats.connections_refused == 1 or p.stats.connections_refused % 1000 == 0:
                log.warning("%s has %d connections open to the metadata proxy: refused (429)", self.peer_ip, open_now - 1)
            self._local(429, True, False, None, "too many connections")
            self._close()
            return
        ident = p.identify(self.peer_ip)
        if ident is not None:
            p.vif_counters(ident.vif).proxy_sessions += 1
        self._timer.set(p.idle_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        req = self.current
        if req is not None and not req.recorded:  # the VM went away before its answer ended
            self.proxy.record(req, self.peer_ip, 0, "fault" if req.fault is not None else "gone")
        if self._later is not None:
            self._later.cancel()
            self._later = None
        self._answer_state(AnswerEvent.CLOSE)
        self._read(ReadEvent.STOP)
        self._timer.cancel()
        if self.nova is not None:
            self.nova.abandon()
            self.nova = None
        p = self.proxy
        p.clients.discard(self)
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
        self._read(ReadEvent.STOP)
        req = self.current
        if req is not None and req.fault is not None and not req.fault.effect.answers:
            return False  # it gave up waiting for the answer that a fault holds back: close now
        return req is not None or bool(self.queue)  # False: close now

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
        if self.reading is _DONE or self.answering is _CLOSED:
            return
        if self.reading is _HEAD:
            self._head_bytes += len(data)
            if self._head_bytes > 2 * MAX_HEADERS:  # a head that never ends: do not buffer it
                self._refuse(431)
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as e:
            ctx = e.__context__
            if isinstance(ctx, Refuse):
                self._refuse(ctx.status)
            else:
                self._internal_error(ctx or e)
        except httptools.HttpParserInvalidMethodError:
            # a well-formed request line with a method llhttp does not know is 501, anything else 400
            self._refuse(501 if REQUEST_LINE.match(data) else 400)
        except httptools.HttpParserUpgrade:
            # CONNECT or Upgrade: what was parsed is answered (CONNECT gets 501); nothing more is read
            self._read(ReadEvent.STOP)
            if self.current is None and not self.queue:
                self._refuse(400)
        except httptools.HttpParserError:
            self._refuse(400)
        except Exception as e:  # noqa: BLE001 - a bug must not take the proxy down
            self._internal_error(e)
            return
        if len(self.queue) >= MAX_PIPELINED and self.transport is not None:
            self.transport.pause_reading()
        elif self.reading is _HEAD or self.reading is _BODY:
            self._ack_now()  # part of a request: the VM may be waiting for this ACK to send the rest
        self._next()

    # -- parser callbacks -----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.reading = READ_NEXT[self.reading][_HEAD_BEGINS] or self._bad(_HEAD_BEGINS)
        self._req = Request(_clock())
        self._url = []
        self._head_size = 0
        self._head_bytes = 0
        self._body = []
        self._body_size = 0
        self._timer.set(self.proxy.fairness.header_timeout)

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
        self.reading = READ_NEXT[self.reading][_HEAD_ENDS] or self._bad(_HEAD_ENDS)
        req.target = b"".join(self._url)
        if len(req.target) > MAX_TARGET:
            raise Refuse(414)
        if self._head_size > MAX_HEADERS:
            raise Refuse(431)
        p = self.parser
        req.method = p.get_method()
        req.http11 = p.get_http_version() != "1.0"
        req.keep_alive = p.should_keep_alive()
        expect = False
        for name, value in req.headers:
            low = name.lower()
            if low == b"content-length":
                if value.strip().isdigit() and int(value) > MAX_BODY:
                    raise Refuse(413)
            elif low == b"expect" and value.strip().lower() == b"100-continue":
                expect = True
        if expect and req.http11 and self.current is None and not self.queue:
            self._write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self._timer.set(self.proxy.fairness.body_timeout)

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > MAX_BODY:
            raise Refuse(413)
        self._body.append(body)

    def on_message_complete(self) -> None:
        req = self._req
        assert req is not None
        self._req = None
        ends = _REQUEST_ENDS if req.keep_alive else _LAST_REQUEST_ENDS
        self.reading = READ_NEXT[self.reading][ends] or self._bad(ends)
        if self._body:
            req.body = b"".join(self._body)
            self._body = []
        req.size = len(req.method) + 14 + self._head_size + self._body_size  # as on the wire (less chunked framing)
        self._timer.clear()
        self.queue.append(req)

    # -- answering ------------------------------------------------------------------------------

    def _refuse(self, status: int) -> None:
        """Answer ``status`` after whatever is queued, then close; read nothing more."""
        if self._req is not None and status in (413, 414, 431, 408):
            self.proxy.stats.requests += 1  # it was a request, refused before it was complete
        self._read(ReadEvent.STOP)
        self._timer.clear()
        r = self._req or Request(_clock())
        self._req = None
        r.local = status
        self.queue.append(r)
        self._next()

    def _next(self) -> None:
        """Start queued requests in order, one at a time; close when all is answered and nothing
        more will be read; else wait for the next request."""
        while self.answering is _READY and self.queue:
            req = self.queue.popleft()
            try:
                self._start(req)
            except Exception as e:  # noqa: BLE001
                self._internal_error(e)
                return
        if self.answering is not _READY or self.queue:
            return
        if self.reading is _DONE:
            self._close()
        elif self.reading is _IDLE:
            if self.transport is not None:
                self.transport.resume_reading()  # paused at MAX_PIPELINED; the queue is empty now
            self._timer.set(self.proxy.idle_timeout)

    def _start(self, req: Request) -> None:
        p = self.proxy
        head = req.method == b"HEAD"
        ident = req.ident = p.identify(self.peer_ip)
        if ident is not None:
            (p.per_vif.get(ident.vif) or p.vif_counters(ident.vif)).requests += 1
        if req.local:
            self._local(req.local, True, head, req, _LOCAL_REASONS.get(req.local, "refused"))
            return
        p.stats.requests += 1
        close = not req.keep_alive
        if req.method not in RELAYED_METHODS:
            self._local(501, close, head, req, "method not relayed")
            return
        upstream = p.upstream()
        if ident is None or upstream is None:
            if ident is None:
                log.warning("metadata request from unknown source %s: 500", self.peer_ip)
            else:
                log.warning("metadata request from %s but no metadata service is configured: 500", ident.vm_ip)
            self._local(500, close, head, req, "unknown source" if ident is None else "no metadata service")
            return
        if p.fairness.rate_limit and not p.limiter.allow(ident.port_uuid, self._timer.loop.time()):
            p.stats.rate_limited += 1
            self._local(429, close, head, req, "rate limit")
            return
        rule = p.faults.match(ident.instance_uuid, ident.vif, _path(req), _clock()) if p.faults.rules else None
        if rule is not None:
            req.fault = rule
            if rule.effect.before_relay(self, req, close, head):
                return
        self.current = req
        self._upstream = upstream
        self.answering = ANSWER_NEXT[self.answering][_RELAY] or self._bad(_RELAY)
        req.wire = p.request_bytes(req, ident, upstream)
        if rule is None:
            req.t_relay = _clock()
            p.relay(self, req, upstream, 1)
        else:
            rule.effect.relay(self, req)

    def _local(self, status: int, close: bool, head: bool, req: Request | None = None, reason: str = "", answer: bytes = b"") -> None:
        """An answer of the proxy's own.  Not held for the FIN (``_hold_for_fin``): a refused VM may
        still be sending, and closing with unread data resets the connection, which would discard
        a held answer."""
        data = answer or simple_response(status, close, head)
        self._write(data)
        self.proxy.stats.count(status)
        if req is not None:
            req.out += len(data)
            self.proxy.record(req, self.peer_ip, status, reason)
        if close:
            self._read(ReadEvent.STOP)

    def _internal_error(self, e: BaseException) -> None:
        self.proxy.stats.internal_errors += 1
        log.error("metadata proxy: internal error serving %s", self.peer_ip, exc_info=e)
        ident = self.proxy.identify(self.peer_ip)
        if ident is not None:
            self.proxy.vif_counters(ident.vif).internal_errors += 1
        if self.answering is _READY or self.answering is Answering.RELAYED:
            self._local(500, True, False, self.current, "internal error")
        self._close()

    # -- what a fault's effect calls (effects.Connection) ---------------------------------------

    def answer_as_nova(self, req: Request, status: int, close: bool, head: bool) -> None:
        self._local(status, close, head, req, "fault", nova_like_response(status, close, head))

    def relay_now(self, req: Request) -> None:
        if self.current is req and self._upstream is not None and self.answering is not _CLOSED:
            req.t_relay = _clock()
            self.proxy.relay(self, req, self._upstream, 1)

    def hold_open(self, seconds: float) -> None:
        self._timer.set(seconds)

    def later(self, seconds: float, fn: Callable[..., object], *args: object) -> None:
        self._later = self._timer.loop.call_later(seconds, fn, *args)

    def send(self, req: Request, data: bytes) -> None:
        self._write(data)
        req.out += len(data)

    def end_answer(self, req: Request, ends: bool) -> None:
        if ends:
            self._hold_for_fin()
        self._answer_ended(req)

    def reset(self, req: Request, after: float) -> None:
        self.proxy.record(req, self.peer_ip, req.status, "fault")
        self._read(ReadEvent.STOP)
        self.later(after, self._rst)

    # -- what the Nova side calls ---------------------------------------------------------------

    @property
    def gone(self) -> bool:
        """The connection is closed: nothing more can be answered."""
        return self.answering is _CLOSED

    def answer_started(self, status: int, head_len: int) -> None:
        """Nova's answer head (the first ``head_len`` bytes of what follows) is on its way."""
        self.answering = ANSWER_NEXT[self.answering][_ANSWER_STARTS] or self._bad(_ANSWER_STARTS)
        self.proxy.stats.count(status)
        req = self.current
        if req is not None:
            req.t_nova = _clock()
            req.status = status
            if req.fault is not None and req.fault.effect.holds_answer:
                self._held = []
                self._head_len = head_len

    def answer_data(self, data: bytes) -> None:
        """Part of Nova's answer, as it goes to the VM."""
        if self._held is not None:
            self._held.append(data)
            return
        self._write(data)
        if self.current is not None:
            self.current.out += len(data)

    def answer_done(self, data: bytes, close: bool) -> None:
        """The end of the answer (``data``, possibly empty); ``close``: the answer's framing or
        the request said the connection ends with it."""
        req = self.current
        self.nova = None
        ends = close or (req is not None and not req.keep_alive)
        if ends:
            self._read(ReadEvent.STOP)
            self.queue.clear()  # an answer ended by our close cannot be followed by another
        if self._held is not None and req is not None and req.fault is not None:
            self._held.append(data)
            answer, self._held = b"".join(self._held), None
            req.fault.effect.deliver(self, req, answer, self._head_len, ends)
            return
        if ends:
            self._hold_for_fin()
        if data:
            self._write(data)
            if req is not None:
                req.out += len(data)
        self._answer_ended(req)

    def _answer_ended(self, req: Request | None) -> None:
        self.current = None
        if req is not None:
            self.proxy.record(req, self.peer_ip, req.status, "fault" if req.fault is not None else "")
        self.answering = ANSWER_NEXT[self.answering][_ANSWER_ENDS] or self._bad(_ANSWER_ENDS)
        self._next()

    def answer_failed(self, upstream: Upstream, why: str) -> None:
        """Nova failed for the current request: 502 if nothing was answered yet, else cut the VM off."""
        self.proxy.stats.upstream_errors += 1
        self.nova = None
        if self.answering is _CLOSED:
            return
        log.warning("Nova at %s:%d failed for %s (%s): 502", upstream.host, upstream.port, self.peer_ip, why)
        streaming = self.answering is Answering.STREAMING
        self._answer_state(AnswerEvent.FAILED)
        if streaming:
            if self.current is not None:
                self.proxy.record(self.current, self.peer_ip, self.current.status, "nova failed mid-body")
            self._close(abort=True)
            return
        req = self.current
        assert req is not None
        self.current = None
        self._local(502, not req.keep_alive, req.method == b"HEAD", req, "nova failed")
        self._next()

    # -- the socket -----------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self.transport is not None and self.answering is not _CLOSED:
            self.transport.write(data)

    def _hold_for_fin(self) -> None:
        """What is written next ends the connection: hold it (TCP_CORK) until the close, so that
        the end of the answer and the FIN leave in one segment.  Each segment to a VM crosses the
        dataplane, and a VM making a connection per request makes about ten crossings."""
        if self.transport is None or self.answering is _CLOSED:
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
        if sock is None:
            return
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 2)
        except (OSError, AttributeError):
            pass  # not TCP (tests over other transports)

    def close(self, abort: bool = False) -> None:
        """Close the connection (the proxy stopping)."""
        self._close(abort)

    def _close(self, abort: bool = False) -> None:
        self._read(ReadEvent.STOP)
        self._timer.clear()
        if self.transport is not None and not self.transport.is_closing():
            if abort:
                self.transport.abort()
            else:
                self.transport.close()

    def _rst(self) -> None:
        """What was written has left; now a RST (SO_LINGER 0), not a FIN."""
        self._later = None
        t = self.transport
        if t is None or t.is_closing():
            return
        sock = t.get_extra_info("socket")
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except (OSError, AttributeError):
            pass
        self._close(abort=True)

    def _on_timer(self) -> None:
        if self.reading is _IDLE or self.reading is _DONE:
            self._close()  # idle too long
            return
        # slowloris: the head (or the body) did not come in time
        self.proxy.stats.header_timeouts += 1
        self._refuse(408)
