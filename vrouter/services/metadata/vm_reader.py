"""Reading a VM's requests off its connection: llhttp (httptools) callbacks, the limits, the head and body timers.

One state machine (``states.Reading``).  Whole requests go into ``requests``,
in order, for the connection (``vm_side.VMConnection``) to answer; a request
past a limit, or not HTTP, ends reading (``feed`` raises ``Refuse`` with the
status to answer).  The connection's one timer (``timers.Deadline``) is set
here to the head's and the body's deadlines; the connection sets it otherwise.

Limits (``http``): a head that never ends, or a request line plus headers over
``MAX_HEADERS``: 431; a target over ``MAX_TARGET``: 414; a body over
``MAX_BODY``: 413; malformed HTTP: 400; a well-formed request line with a
method llhttp does not know: 501.  CONNECT and Upgrade end reading
(``Upgraded``): what was parsed is answered.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import NoReturn

import httptools

from vrouter.messages.proxy import Fairness
from vrouter.services.metadata.http import MAX_BODY, MAX_HEADERS, MAX_TARGET, REQUEST_LINE, Refuse, Request
from vrouter.services.metadata.states import READ_NEXT, ReadEvent, Reading, StateError
from vrouter.services.metadata.timers import Deadline

_HEAD = Reading.HEAD
_HEAD_BEGINS, _HEAD_ENDS, _REQUEST_ENDS, _LAST_REQUEST_ENDS, _STOP = (
    ReadEvent.HEAD_BEGINS,
    ReadEvent.HEAD_ENDS,
    ReadEvent.REQUEST_ENDS,
    ReadEvent.LAST_REQUEST_ENDS,
    ReadEvent.STOP,
)
_clock = time.monotonic  # the journal's durations: the loop's clock (libuv's) is in milliseconds


class Upgraded(Exception):
    """The VM asked for CONNECT or an Upgrade: nothing more is read."""


class RequestReader:
    """The requests of one VM connection, as they arrive."""

    __slots__ = ("parser", "state", "requests", "_timer", "_fairness", "_expects_continue", "_req", "_url", "_head_size", "_head_bytes",
                 "_body", "_body_size")  # fmt: skip

    def __init__(self, timer: Deadline, fairness: Fairness, expects_continue: Callable[[], None]) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.state = Reading.IDLE
        self.requests: deque[Request] = deque()  # whole, not yet answered
        self._timer = timer
        self._fairness = fairness
        self._expects_continue = expects_continue  # the request being read said Expect: 100-continue
        self._req: Request | None = None  # being read
        self._url: list[bytes] = []
        self._head_size = 0
        self._head_bytes = 0
        self._body: list[bytes] = []
        self._body_size = 0

    def _bad(self, event: ReadEvent) -> NoReturn:
        raise StateError("%s while reading is %s" % (event.name, self.state.name))

    def feed(self, data: bytes) -> None:
        """Parse what arrived.  ``Refuse``: answer its status and read nothing more; ``Upgraded``:
        read nothing more; any other exception is a bug."""
        if self.state is _HEAD:
            self._head_bytes += len(data)
            if self._head_bytes > 2 * MAX_HEADERS:  # a head that never ends: do not buffer it
                raise Refuse(431)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as e:
            ctx = e.__context__
            if isinstance(ctx, Refuse):
                raise ctx from None
            raise ctx or e
        except httptools.HttpParserInvalidMethodError:
            # a well-formed request line with a method llhttp does not know is 501, anything else 400
            raise Refuse(501 if REQUEST_LINE.match(data) else 400) from None
        except httptools.HttpParserUpgrade:
            self.stop()
            raise Upgraded() from None
        except httptools.HttpParserError:
            raise Refuse(400) from None

    def stop(self) -> None:
        """Read nothing more (EOF from the VM, a refusal, an upgrade, or the connection closing)."""
        self.state = READ_NEXT[self.state][_STOP] or self._bad(_STOP)

    def give_up(self) -> Request | None:
        """Read nothing more; the request that was being read, if any."""
        self.stop()
        req, self._req = self._req, None
        return req

    def close(self) -> None:
        """The connection is gone: the parser holds this reader for its callbacks, and this reader
        the connection: break the cycle, so that a closed connection is freed at once and not left
        to the collector's full passes (which stalled the proxy for milliseconds after bursts of
        short connections)."""
        self.parser = None  # type: ignore[assignment]
        self._expects_continue = _nothing

    # -- parser callbacks -----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.state = READ_NEXT[self.state][_HEAD_BEGINS] or self._bad(_HEAD_BEGINS)
        self._req = Request(_clock())
        self._url = []
        self._head_size = 0
        self._head_bytes = 0
        self._body = []
        self._body_size = 0
        self._timer.set(self._fairness.header_timeout)

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
        self.state = READ_NEXT[self.state][_HEAD_ENDS] or self._bad(_HEAD_ENDS)
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
        if expect and req.http11:
            self._expects_continue()
        self._timer.set(self._fairness.body_timeout)

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
        self.state = READ_NEXT[self.state][ends] or self._bad(ends)
        if self._body:
            req.body = b"".join(self._body)
            self._body = []
        req.size = len(req.method) + 14 + self._head_size + self._body_size  # as on the wire (less chunked framing)
        self._timer.clear()
        self.requests.append(req)


def _nothing() -> None:
    pass
