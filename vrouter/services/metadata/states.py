"""The states of the proxy's connections and the transitions between them, as h11's ``_state.py``.

Pure: no I/O.  A connection from a VM runs two machines side by side, as h11
runs one per peer: reading its requests (``Reading``) and answering them in
order (``Answering``); requests read ahead of their answer wait in a queue
(pipelining).  A connection to Nova runs one (``Upstream``): it carries one
request at a time and then waits in the keep-alive pool.

An event that a state does not expect is a bug, not the peer's fault (the
peer's mistakes are events too): ``step`` raises ``StateError``, and the
connection answers 500 and closes.

The tables are written as dicts (``READING``, ``ANSWERING``, ``UPSTREAM``) and
used as ``compile_table``'s tuples indexed by state and event: states and
events are IntEnums, so a step is two tuple reads, written in place where a
connection moves: ``self.reading = READ_NEXT[self.reading][event] or
self._bad(...)``.  (A dict of Enum members
hashes each member in Python, twice a step: that cost the proxy 15% of its
keep-alive rate.)

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


class Reading(enum.IntEnum):
    IDLE = 1  # between requests
    HEAD = 2  # a request's head is arriving
    BODY = 3  # its head is complete, its body (if any) is arriving
    DONE = 4  # nothing more is read: the VM closed its side, a request said close, or one was refused


class ReadEvent(enum.IntEnum):
    HEAD_BEGINS = 0
    HEAD_ENDS = 1
    REQUEST_ENDS = 2  # ... and the connection stays open for more
    LAST_REQUEST_ENDS = 3  # ... with Connection: close (or HTTP/1.0 without keep-alive)
    STOP = 4  # EOF from the VM, a refusal, an upgrade, or the connection closing


class Answering(enum.IntEnum):
    READY = 1  # no request in hand: the next queued one may start
    RELAYED = 2  # the current request is with Nova; nothing answered yet
    STREAMING = 3  # Nova's answer head has gone to the VM; its body follows
    CLOSED = 4  # the connection is gone


class AnswerEvent(enum.IntEnum):
    RELAY = 0
    ANSWER_STARTS = 1
    ANSWER_ENDS = 2
    FAILED = 3  # Nova failed: 502 if nothing was answered (READY again), else the VM is cut off
    CLOSE = 4


class Upstream(enum.IntEnum):
    IDLE = 1  # connected, no request: in the pool
    SENT = 2  # a request is written, no answer head yet
    INTERIM = 3  # a 1xx answer is being skipped
    STREAMING = 4  # the final answer is being passed to the VM
    CLOSED = 5


class UpstreamEvent(enum.IntEnum):
    REQUEST_SENT = 0
    INTERIM_HEAD = 1
    INTERIM_ENDS = 2
    HEAD = 3
    ANSWER_ENDS = 4
    CLOSE = 5


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

S = TypeVar("S", bound=enum.IntEnum)
E = TypeVar("E", bound=enum.IntEnum)


def compile_table(table: dict[S, dict[E, S]], events: type[E]) -> tuple[tuple[S | None, ...], ...]:
    """``table`` as tuples: [state][event] is the next state, or None where none is expected.
    States are numbered from 1 (row 0 is empty), so that a next state is never false and a
    connection can step with ``TABLE[state][event] or self.bad(event)``."""
    rows: list[tuple[S | None, ...]] = [(None,) * len(events)] * (max(table) + 1)
    for state, moves in table.items():
        rows[state] = tuple(moves.get(e) for e in events)
    return tuple(rows)


def step(table: tuple[tuple[S | None, ...], ...], state: S, event: E) -> S:
    """The state after ``event`` in ``state``; StateError if ``state`` does not expect it."""
    nxt = table[state][event]
    if nxt is None:
        raise StateError("%s in state %s" % (event.name.lower(), state.name.lower()))
    return nxt


READ_NEXT = compile_table(READING, ReadEvent)
ANSWER_NEXT = compile_table(ANSWERING, AnswerEvent)
UPSTREAM_NEXT = compile_table(UPSTREAM, UpstreamEvent)
