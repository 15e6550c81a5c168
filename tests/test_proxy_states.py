"""The proxy's connection states, as pure tables: the paths a connection takes, and the events a
state must not meet."""

import pytest

from vrouter.services.metadata.states import (
    ANSWER_NEXT,
    ANSWERING,
    READ_NEXT,
    READING,
    UPSTREAM,
    UPSTREAM_NEXT,
    AnswerEvent,
    Answering,
    ReadEvent,
    Reading,
    StateError,
    Upstream,
    UpstreamEvent,
    step,
)


def walk(table, state, *events):
    for e in events:
        state = step(table, state, e)
    return state


def test_reading_keep_alive_then_close():
    s = walk(READ_NEXT, Reading.IDLE, ReadEvent.HEAD_BEGINS, ReadEvent.HEAD_ENDS, ReadEvent.REQUEST_ENDS)
    assert s is Reading.IDLE
    s = walk(READ_NEXT, s, ReadEvent.HEAD_BEGINS, ReadEvent.HEAD_ENDS, ReadEvent.LAST_REQUEST_ENDS)
    assert s is Reading.DONE
    assert step(READ_NEXT, s, ReadEvent.STOP) is Reading.DONE  # stopping twice is harmless


@pytest.mark.parametrize("state", list(Reading))
def test_any_reading_state_can_stop(state):
    assert step(READ_NEXT, state, ReadEvent.STOP) is Reading.DONE


@pytest.mark.parametrize(
    "state, event",
    [
        (Reading.IDLE, ReadEvent.HEAD_ENDS),
        (Reading.HEAD, ReadEvent.REQUEST_ENDS),
        (Reading.DONE, ReadEvent.HEAD_BEGINS),
        (Reading.BODY, ReadEvent.HEAD_BEGINS),
    ],
)
def test_reading_refuses_what_cannot_happen(state, event):
    with pytest.raises(StateError, match="in state"):
        step(READ_NEXT, state, event)


def test_answering_relay_answer_and_failures():
    assert walk(ANSWER_NEXT, Answering.READY, AnswerEvent.RELAY, AnswerEvent.ANSWER_STARTS, AnswerEvent.ANSWER_ENDS) is Answering.READY
    # Nova failed before answering: 502 and ready for the next request
    assert walk(ANSWER_NEXT, Answering.READY, AnswerEvent.RELAY, AnswerEvent.FAILED) is Answering.READY
    # ... after the head went: the VM is cut off
    assert walk(ANSWER_NEXT, Answering.READY, AnswerEvent.RELAY, AnswerEvent.ANSWER_STARTS, AnswerEvent.FAILED) is Answering.CLOSED
    with pytest.raises(StateError):
        step(ANSWER_NEXT, Answering.READY, AnswerEvent.ANSWER_STARTS)  # an answer with no request relayed
    with pytest.raises(StateError):
        step(ANSWER_NEXT, Answering.CLOSED, AnswerEvent.RELAY)


def test_upstream_pool_cycle_interim_and_close():
    s = walk(UPSTREAM_NEXT, Upstream.IDLE, UpstreamEvent.REQUEST_SENT, UpstreamEvent.INTERIM_HEAD, UpstreamEvent.INTERIM_ENDS,
             UpstreamEvent.HEAD, UpstreamEvent.ANSWER_ENDS)  # fmt: skip
    assert s is Upstream.IDLE
    for state in Upstream:
        assert step(UPSTREAM_NEXT, state, UpstreamEvent.CLOSE) is Upstream.CLOSED
    with pytest.raises(StateError):
        step(UPSTREAM_NEXT, Upstream.SENT, UpstreamEvent.REQUEST_SENT)  # one request at a time


def test_every_table_covers_every_state_and_the_compiled_tables_say_the_same():
    tables = ((READING, READ_NEXT, Reading, ReadEvent), (ANSWERING, ANSWER_NEXT, Answering, AnswerEvent),
              (UPSTREAM, UPSTREAM_NEXT, Upstream, UpstreamEvent))  # fmt: skip
    for table, compiled, states, events in tables:
        assert set(table) == set(states)
        for state in states:
            for event in events:
                assert compiled[state][event] == table[state].get(event)
        assert all(compiled[0][e] is None for e in events) and all(state for state in states)  # no state is 0 (false)
