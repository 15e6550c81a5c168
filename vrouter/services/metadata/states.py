"""The states of the proxy's connections and the transitions between them, as h11's ``_state.py``.

Pure: no I/O.  A connection from a VM runs two machines side by side, as h11
runs one per peer: reading its requests (``Reading``) and answering them in
order (``Answering``); requests read ahead of their answer wait in a queue
(pipelining).  A connection to Nova runs one (``Upstream``): it carries one
request at a time and then waits in the keep-alive pool.

An event that a state does not expect is a bug, not the peer's fault (the
peer's mistakes are events too): ``step`` raises ``StateError``, and the
connection answers 500 and closes.

What each machine's state decides besides:

* the VM connection's timer: ``Reading.IDLE`` with nothing to answer runs the
  idle timer, ``HEAD`` the head timer (slowloris: 408), ``BODY`` the body timer;
* when it closes: when ``Reading`` is ``DONE`` and nothing is left to answer;
* the Nova connection's timer runs while it waits for Nova (``SENT``,
  ``INTERIM``, ``STREAMING``), and is paused while the VM does not read.
"""

from __future__ import annotations

import enum
from typing import TypeVar


class StateError(RuntimeError):
    """An event in a state that does not expect it."""


class Reading(enum.Enum):
    IDLE = "idle"  # between requests
    HEAD = "head"  # a request's head is arriving
    BODY = "body"  # its head is complete, its body (if any) is arriving
    DONE = "done"  # nothing more is read: the VM closed its side, a request said close, or one was refused


class ReadEvent(enum.Enum):
    HEAD_BEGINS = "head begins"
    HEAD_ENDS = "head ends"
    REQUEST_ENDS = "request ends"  # ... and the connection stays open for more
    LAST_REQUEST_ENDS = "last request ends"  # ... with Connection: close (or HTTP/1.0 without keep-alive)
    STOP = "stop"  # EOF from the VM, a refusal, an upgrade, or the connection closing


class Answering(enum.Enum):
    READY = "ready"  # no request in hand: the next queued one may start
    RELAYED = "relayed"  # the current request is with Nova; nothing answered yet
    STREAMING = "streaming"  # Nova's answer head has gone to the VM; its body follows
    CLOSED = "closed"  # the connection is gone


class AnswerEvent(enum.Enum):
    RELAY = "relay"
    ANSWER_STARTS = "answer starts"
    ANSWER_ENDS = "answer ends"
    FAILED = "failed"  # Nova failed: 502 if nothing was answered (READY again), else the VM is cut off
    CLOSE = "close"


class Upstream(enum.Enum):
    IDLE = "idle"  # connected, no request: in the pool
    SENT = "sent"  # a request is written, no answer head yet
    INTERIM = "interim"  # a 1xx answer is being skipped
    STREAMING = "streaming"  # the final answer is being passed to the VM
    CLOSED = "closed"


class UpstreamEvent(enum.Enum):
    REQUEST_SENT = "request sent"
    INTERIM_HEAD = "interim head"
    INTERIM_ENDS = "interim ends"
    HEAD = "head"
    ANSWER_ENDS = "answer ends"
    CLOSE = "close"


R, RE = Reading, ReadEvent
READING: dict[Reading, dict[ReadEvent, Reading]] = {
    R.IDLE: {RE.HEAD_BEGINS: R.HEAD, RE.STOP: R.DONE},
    R.HEAD: {RE.HEAD_ENDS: R.BODY, RE.STOP: R.DONE},
    R.BODY: {RE.REQUEST_ENDS: R.IDLE, RE.LAST_REQUEST_ENDS: R.DONE, RE.STOP: R.DONE},
    R.DONE: {RE.STOP: R.DONE},
}

A, AE = Answering, AnswerEvent
ANSWERING: dict[Answering, dict[AnswerEvent, Answering]] = {
    A.READY: {AE.RELAY: A.RELAYED, AE.CLOSE: A.CLOSED},
    A.RELAYED: {AE.ANSWER_STARTS: A.STREAMING, AE.FAILED: A.READY, AE.CLOSE: A.CLOSED},
    A.STREAMING: {AE.ANSWER_ENDS: A.READY, AE.FAILED: A.CLOSED, AE.CLOSE: A.CLOSED},
    A.CLOSED: {AE.CLOSE: A.CLOSED},
}

U, UE = Upstream, UpstreamEvent
UPSTREAM: dict[Upstream, dict[UpstreamEvent, Upstream]] = {
    U.IDLE: {UE.REQUEST_SENT: U.SENT, UE.CLOSE: U.CLOSED},
    U.SENT: {UE.INTERIM_HEAD: U.INTERIM, UE.HEAD: U.STREAMING, UE.CLOSE: U.CLOSED},
    U.INTERIM: {UE.INTERIM_ENDS: U.SENT, UE.CLOSE: U.CLOSED},
    U.STREAMING: {UE.ANSWER_ENDS: U.IDLE, UE.CLOSE: U.CLOSED},
    U.CLOSED: {UE.CLOSE: U.CLOSED},
}

S = TypeVar("S", bound=enum.Enum)
E = TypeVar("E", bound=enum.Enum)


def step(table: dict[S, dict[E, S]], state: S, event: E) -> S:
    """The state after ``event`` in ``state``; StateError if ``state`` does not expect it."""
    try:
        return table[state][event]
    except KeyError:
        raise StateError("%s in state %s" % (event.value, state.value)) from None
