"""A connection from a VM, through the dataplane's NAT: read requests, answer them in order.

It arrives from the VM port's metadata IP; that peer address, and nothing the
VM writes, is who is asking.  Two state machines (``states``): reading
requests (``vm_reader.RequestReader``), and answering them one at a time in
order (here).  Toward Nova it goes through ``NovaPool.relay``; the Nova side
answers through the methods under "what the Nova side calls"
(``answer_started``, ``answer_data``, ``answer_done``, ``answer_failed``) and
reads ``write_paused``; nothing else of this class is the Nova side's
business.  A request that met a fault rule is handed to its effect
(``effects``) at the moments it may change, and the effect acts through the
methods under "what a fault's effect calls".

Rules kept here: a request a VM trickles in gets 408 when its head (or body) is
late; more than ``max_connections_per_vm`` connections from one VM: 429; a VM
over the rate limit: 429; an unknown source or no metadata service: 500; more
than ``MAX_PIPELINED`` (32) requests read ahead: reading pauses; a VM that reads
slower than Nova answers pauses the Nova connection.  Connections start in
delayed-ACK mode (the listening socket's): a whole request's ACK goes with its
answer; a partial one is acknowledged at once (``tcp``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

from vrouter.services.metadata import tcp
from vrouter.services.metadata.http import MAX_PIPELINED, RELAYED_METHODS, Refuse, Request, nova_like_response, simple_response
from vrouter.services.metadata.states import ANSWER_NEXT, AnswerEvent, Answering, Reading, StateError
from vrouter.services.metadata.timers import Deadline
from vrouter.services.metadata.vm_reader import RequestReader, Upgraded

if TYPE_CHECKING:
    from vrouter.services.metadata.core import ProxyCore
    from vrouter.services.metadata.nova_side import NovaConnection, Upstream

log = logging.getLogger("vrouter.metadata")

_IDLE, _HEAD, _BODY, _DONE = Reading.IDLE, Reading.HEAD, Reading.BODY, Reading.DONE
_READY, _CLOSED = Answering.READY, Answering.CLOSED
_RELAY, _ANSWER_STARTS, _ANSWER_ENDS = AnswerEvent.RELAY, AnswerEvent.ANSWER_STARTS, AnswerEvent.ANSWER_ENDS
_clock = time.monotonic  # the journal's durations: the loop's clock (libuv's) is in milliseconds
# why the proxy refused a request before it was whole, for the journal
_LOCAL_REASONS = {400: "bad request", 408: "timeout", 413: "too large", 414: "too large", 431: "too large", 501: "method not relayed"}


def _path(req: Request) -> str:
    return req.target.split(b"?", 1)[0].decode("latin-1")


class VMConnection(asyncio.Protocol):
    """One connection from a VM: queue what is read, answer in order."""

    def __init__(self, proxy: ProxyCore) -> None:
        self.proxy = proxy
        self.transport: asyncio.Transport | None = None
        self.peer_ip = ""
        self._timer = Deadline(self._on_timer)
        self.reader = RequestReader(self._timer, proxy.fairness, self._continue)
        self.queue = self.reader.requests  # read, not yet started
        self.answering = Answering.READY
        self.current: Request | None = None  # relayed, its answer not finished
        self._upstream: Upstream | None = None  # where the current request goes
        self.nova: NovaConnection | None = None  # carrying the current request
        self.write_paused = False  # the transport's buffer towards the VM is full (flow control)
        self._held: list[bytes] | None = None  # an answer held back for a fault's effect to deliver
        self._head_len = 0  # of the held answer
        self._later: asyncio.TimerHandle | None = None  # a fault's effect's next step

    def _answer_state(self, event: AnswerEvent) -> None:
        self.answering = ANSWER_NEXT[self.answering][event] or self._bad(event)

    def _bad(self, event: AnswerEvent) -> NoReturn:
        raise StateError("%s while reading is %s and answering %s" % (event.name, self.reader.state.name, self.answering.name))

    # -- connection -----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport subclasses
        p = self.proxy
        peer = transport.get_extra_info("peername")
        if not peer:
            # reset by the VM before it was accepted (getpeername fails): nobody to identify or to
            # answer.  Read, its request was answered 500 "from unknown source" with a warning
            # each time, which a VM could repeat as fast as it connects and resets (make fuzz).
            self._close(abort=True)
            return
        self.peer_ip = peer[0]
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
        self.reader.stop()
        self.reader.close()  # (a cycle through the parser: see RequestReader.close)
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

    def eof_received(self) -> bool:
        # the VM has sent all it will: answer what is queued, then close
        self.reader.stop()
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
        reader = self.reader
        if reader.state is _DONE or self.answering is _CLOSED:
            return
        try:
            reader.feed(data)
        except Refuse as e:
            self._refuse(e.status)
            return
        except Upgraded:
            # CONNECT or Upgrade: what was parsed is answered (CONNECT gets 501); nothing more is read
            if self.current is None and not self.queue:
                self._refuse(400)
                return
        except Exception as e:  # noqa: BLE001 - a bug must not take the proxy down
            self._internal_error(e)
            return
        if len(self.queue) >= MAX_PIPELINED and self.transport is not None:
            self.transport.pause_reading()
        elif (reader.state is _HEAD or reader.state is _BODY) and self.transport is not None:
            tcp.ack_now(self.transport)  # part of a request: the VM may be waiting for this ACK to send the rest
        self._next()

    def _continue(self) -> None:
        """The request being read asks whether to send its body: yes, if it is the next to answer."""
        if self.current is None and not self.queue:
            self._write(b"HTTP/1.1 100 Continue\r\n\r\n")

    # -- answering ------------------------------------------------------------------------------

    def _refuse(self, status: int) -> None:
        """Answer ``status`` after whatever is queued, then close; read nothing more."""
        partial = self.reader.give_up()
        if partial is not None and status in (413, 414, 431, 408):
            self.proxy.stats.requests += 1  # it was a request, refused before it was complete
        self._timer.clear()
        r = partial or Request(_clock())
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
        reading = self.reader.state
        if reading is _DONE:
            self._close()
        elif reading is _IDLE:
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
            self.relay_now(req)
        else:
            rule.effect.relay(self, req)

    def _local(self, status: int, close: bool, head: bool, req: Request | None = None, reason: str = "", answer: bytes = b"") -> None:
        """An answer of the proxy's own.  Not held for the FIN (``tcp.hold_for_fin``): a refused VM
        may still be sending, and closing with unread data resets the connection, which would
        discard a held answer."""
        data = answer or simple_response(status, close, head)
        self._write(data)
        self.proxy.stats.count(status)
        if req is not None:
            req.out += len(data)
            self.proxy.record(req, self.peer_ip, status, reason)
        if close:
            self.reader.stop()

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
            self.proxy.pool.relay(self, req, self._upstream, 1)

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
        self.reader.stop()
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
            self.reader.stop()
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
        if self.transport is not None and self.answering is not _CLOSED:
            tcp.hold_for_fin(self.transport)

    def close(self, abort: bool = False) -> None:
        """Close the connection (the proxy stopping)."""
        self._close(abort)

    def _close(self, abort: bool = False) -> None:
        self.reader.stop()
        self._timer.clear()
        if self.transport is not None and not self.transport.is_closing():
            if abort:
                self.transport.abort()
            else:
                self.transport.close()

    def _rst(self) -> None:
        """What was written has left; now a RST, not a FIN."""
        self._later = None
        t = self.transport
        if t is None or t.is_closing():
            return
        tcp.reset_at_close(t)
        self._close(abort=True)

    def _on_timer(self) -> None:
        reading = self.reader.state
        if reading is _IDLE or reading is _DONE:
            self._close()  # idle too long
            return
        # slowloris: the head (or the body) did not come in time
        self.proxy.stats.header_timeouts += 1
        self._refuse(408)
