"""Property-based tests of the wire formats the node reads: the control socket's JSON lines
(``vrouter.messages.wire``, what ``ControlServer`` decodes from a client and the CLI from the agent)
and etcd's (``infra.etcd_wire``: values, the JSON gateway's watch stream and its messages).

Properties: every request and every answer of every operation, built with arbitrary field values,
decodes to what was encoded; any line, any JSON as a request's arguments and any valid line with
bytes changed is a request, an answer or a ``MessageError``, never another exception; the control
server answers any line with one JSON answer; any etcd value decodes or is "not JSON"; a watch
stream cut anywhere gives the same lines; a watch message gives the events it holds."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import types
import typing
from types import SimpleNamespace
from typing import Any, Union

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from infra import etcd_wire
from infra.etcd_wire import Event, StoreError
from tests.fuzz_helpers import DEEP_JSON, fuzz_settings, json_values, mutated
from vrouter.agent.control import ControlServer
from vrouter.agent.operations import Operations
from vrouter.agent.state import NodeState
from vrouter.messages.control import OPS, LinkLocalImport
from vrouter.messages.wire import MessageError, Refused, decode_answer, decode_request, encode_answer, encode_request, to_json
from vrouter.model import NetworkError, PortError, ServiceError
from vrouter.services.metadata.faults import FaultError

# -- values of the messages' types ------------------------------------------------------------------

# what a user types: mostly plausible (uuids, addresses, prefixes, MACs, names), sometimes anything
PLAUSIBLE = ["11111111-1111-4111-8111-111111111111", "7c0c2e5e-0e16-4f43-a6b6-5d1c0c1e9a01", "10.1.1.3", "10.1.1.0/24", "10.1.1.1", "10.1.1.2",
             "fd00:10:1:1::/64", "fd00:10:1:1::3", "02:00:0a:01:00:03", "tapaaaaaaaa-aa", "vm1", "169.254.169.254", "80", "10.8.0.0/16 via 10.1.1.1",
             "slaac", "dhcpv6-stateful", "1450", "novalocal", "metadata", "10.10.0.1", "8775", ""]  # fmt: skip
TEXT = st.sampled_from(PLAUSIBLE) | st.text(max_size=10)
FLOATS = st.floats(allow_nan=False, allow_infinity=False)  # NaN is not equal to itself: the round trip could not be checked


def values_of(tp: Any) -> st.SearchStrategy:  # noqa: ANN401 - a type hint
    """Any value of type ``tp`` (a message's field type)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return json_values()
    if origin in (Union, types.UnionType):
        return st.one_of(*[st.none() if a is type(None) else values_of(a) for a in typing.get_args(tp)])
    if origin is list:
        return st.lists(values_of(typing.get_args(tp)[0]), max_size=3)
    if origin is dict:
        k, v = typing.get_args(tp)
        return st.dictionaries(values_of(k), values_of(v), max_size=3)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return messages(tp)
    return {str: TEXT, int: st.integers(-(2**53), 2**53), float: FLOATS, bool: st.booleans()}[tp]


def messages(cls: type) -> st.SearchStrategy:
    """Instances of the dataclass ``cls``, every field drawn (those with defaults too)."""
    hints = typing.get_type_hints(cls)
    return st.builds(cls, **{f.name: st.deferred(lambda h=hints[f.name]: values_of(h)) for f in dataclasses.fields(cls) if f.init})


OP_NAMES = sorted(OPS)


@fuzz_settings(150)
@given(st.sampled_from(OP_NAMES).flatmap(lambda op: st.tuples(st.just(op), messages(OPS[op][0]))))
def test_every_request_decodes_to_what_was_encoded(op_request):
    op, request = op_request
    line = encode_request(op, request)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode_request(line, OPS) == (op, request)


@fuzz_settings(150)
@given(st.sampled_from(OP_NAMES).flatmap(lambda op: st.tuples(st.just(op), values_of(OPS[op][1]))))
def test_every_answer_decodes_to_what_was_encoded(op_answer):
    op, answer = op_answer
    line = encode_answer(answer)
    assert line.count(b"\n") == 1
    assert to_json(decode_answer(OPS[op][1], line)) == to_json(answer)


@fuzz_settings(100)
@given(TEXT)
def test_a_refusal_is_refused_with_its_text(text):
    with pytest.raises(Refused) as e:
        decode_answer(OPS["status"][1], encode_answer(error=text))
    assert str(e.value) == text


def valid_lines() -> st.SearchStrategy[bytes]:
    return st.sampled_from(OP_NAMES).flatmap(lambda op: messages(OPS[op][0]).map(lambda r: encode_request(op, r)))


@fuzz_settings(200)
@given(valid_lines().flatmap(mutated) | st.binary(max_size=80) | json_values().map(lambda v: json.dumps(v).encode()))
@example(DEEP_JSON.encode())  # valid JSON nested deeper than Python's decoder goes: a bad request, not a RecursionError
@example(b'{"op": "port.add", "args": {"uuid": ' + b"1" * 5000 + b"}}")  # an integer longer than Python converts
@example(b'{"op": "port.add", "args": ' + DEEP_JSON.encode() + b"}")
@example(b'{"op": "status", "args": []}')
def test_any_line_is_a_request_or_a_message_error(line):
    try:
        op, request = decode_request(line, OPS)
    except MessageError:
        return
    assert isinstance(request, OPS[op][0])


def arguments(op: str) -> st.SearchStrategy:
    """Any JSON as ``op``'s arguments, mostly an object of its fields with values of any kind (a
    field a client got wrong)."""
    fields = [f.name for f in dataclasses.fields(OPS[op][0])]
    names = st.sampled_from(fields) | st.text(max_size=8) if fields else st.text(max_size=8)
    return st.dictionaries(names, json_values(), max_size=4) | json_values()


@fuzz_settings(120)
@given(st.sampled_from(OP_NAMES).flatmap(lambda op: st.tuples(st.just(op), arguments(op))))
def test_any_json_as_a_requests_arguments_is_that_request_or_a_message_error(op_args):
    op, args = op_args
    try:
        got_op, request = decode_request(json.dumps({"op": op, "args": args}).encode(), OPS)
    except MessageError:
        return
    assert got_op == op and isinstance(request, OPS[op][0])


@fuzz_settings(300)
@given(st.sampled_from(OP_NAMES), st.binary(max_size=60) | json_values().map(lambda v: json.dumps({"ok": True, "result": v}).encode()))
@example("status", b'{"ok": true, "result": ' + DEEP_JSON.encode() + b"}")
@example("status", DEEP_JSON.encode())
def test_any_answer_line_is_a_result_a_refusal_or_a_message_error(op, line):
    try:
        decode_answer(OPS[op][1], line)
    except (MessageError, Refused):
        pass


class _Expected(Exception):
    pass


def _handlers() -> dict:
    def handle(request: object) -> object:
        if isinstance(request, OPS["port.del"][0]):
            raise _Expected("no such port")
        return None

    return dict.fromkeys(OPS, handle)


@fuzz_settings(200)
@given(valid_lines().flatmap(mutated) | st.binary(max_size=80) | valid_lines())
@example(DEEP_JSON.encode() + b"\n")
def test_the_control_server_answers_any_line_with_one_answer(line):
    server = ControlServer("/nonexistent/control.sock", _handlers(), (_Expected,))
    answer = asyncio.run(server._dispatch(line))
    assert answer.endswith(b"\n") and answer.count(b"\n") == 1
    msg = json.loads(answer)
    assert msg["ok"] in (True, False) and (msg["ok"] or msg["error"])


CHANGES = ["port.add", "port.del", "network.add", "network.del", "linklocal.add", "linklocal.del", "linklocal.import"]
EXPECTED = (PortError, ServiceError, NetworkError, FaultError)  # what the agent answers as the user's mistake (agent.py)
ENTRY = st.fixed_dictionaries({}, optional={k: st.sampled_from(PLAUSIBLE) | json_values() for k in (
    "linklocal_service_name", "linklocal_service_ip", "linklocal_service_port", "ip_fabric_service_ip", "ip_fabric_service_port",
    "ip_fabric_DNS_service_name")})  # fmt: skip
IMPORTS = st.builds(LinkLocalImport, st.dictionaries(st.sampled_from(["linklocal_services", "x"]), json_values(), max_size=2)
                    | st.lists(ENTRY | json_values(), max_size=3).map(lambda e: {"linklocal_services": {"linklocal_service_entry": e}}))  # fmt: skip


# per field, what a user would type for it, mostly right: so that changes are also taken, and then undone
def _choose(good: list, bad: list) -> st.SearchStrategy:
    """One of ``good`` mostly, one of ``bad`` (a mistake a user makes) now and then."""
    return st.sampled_from(good * 4 + bad)


FIELDS: dict[str, st.SearchStrategy] = {
    "uuid": _choose(["11111111-1111-4111-8111-11111111111%d" % i for i in range(3)], []),
    "instance_uuid": st.uuids().map(str),
    "vn_uuid": _choose([PLAUSIBLE[1], "7c0c2e5e-0e16-4f43-a6b6-5d1c0c1e9a02"], []),
    "vm_project_uuid": st.uuids().map(str),
    "ip_address": st.integers(3, 6).map("10.1.1.%d".__mod__),
    "ipv6_address": _choose([None, "fd00:10:1:1::3"], ["fe80::1"]),
    "mac": st.integers(3, 6).map("02:00:0a:01:00:%02x".__mod__),
    "tap_name": _choose([None, "tapaaaaaaaa-aa"], ["x" * 16]),
    "subnet": _choose(["10.1.1.0/24"], ["10.1.1.0/30", "10.1.1.1/24"]),
    "gateway": _choose([None, "10.1.1.1"], ["10.1.2.1"]),
    "dns_server": _choose([None, "10.1.1.2"], ["10.1.1.1"]),
    "mtu": _choose([None, "1450"], ["70000", "x"]),
    "host_routes": st.lists(_choose(["10.8.0.0/16 via 10.1.1.1"], ["10.8.0.0/16"]), max_size=2),
    "subnet6": _choose([None, "fd00:10:1:1::/64"], ["fe80::/64"]),
    "ipv6_mode": _choose([None], ["slaac", "bogus"]),
    "name": _choose([None, "demo-net"], ["bad name"]),
    "domain": _choose([None, "novalocal"], ["-x-"]),
    "gateway6": _choose([None], ["fd00:10:1:1::1"]),
    "dns_server6": _choose([None], ["fd00:10:1:1::1"]),
    "linklocal_service_name": _choose(["metadata", "ntp"], [""]),
    "linklocal_service_ip": _choose(["169.254.169.254", "169.254.169.123"], ["10.0.0.1"]),
    "linklocal_service_port": _choose(["80", "123"], ["0"]),
    "ip_fabric_service_ip": st.lists(_choose(["10.10.0.1", "fd00::1"], ["x"]), max_size=2),
    "ip_fabric_service_port": _choose(["8775", "123"], ["x"]),
}


def typed(cls: type) -> st.SearchStrategy:
    """A request of ``cls`` as a user would type it: each field mostly plausible, sometimes anything."""
    hints = typing.get_type_hints(cls)
    return st.builds(cls, **{f.name: _mostly(FIELDS.get(f.name), values_of(hints[f.name])) for f in dataclasses.fields(cls)})


def _mostly(good: st.SearchStrategy | None, anything: st.SearchStrategy) -> st.SearchStrategy:
    """``good`` 7 times in 8, else ``anything``."""
    return anything if good is None else st.integers(0, 7).flatmap(lambda n: good if n else anything)


def _node() -> SimpleNamespace:
    """What the change operations use of the agent's node: its state (real), no dataplane vif, no lease, no cluster."""
    return SimpleNamespace(state=NodeState(), dp=SimpleNamespace(vifs={}), services=SimpleNamespace(dhcp=SimpleNamespace(leases={})), cluster=None)


@fuzz_settings(120)
@given(st.lists(st.sampled_from(CHANGES).flatmap(
    lambda op: st.tuples(st.just(op), IMPORTS if op == "linklocal.import" else typed(OPS[op][0]))), min_size=1, max_size=6))  # fmt: skip
@example(
    [
        (
            "linklocal.import",
            LinkLocalImport(
                {
                    "linklocal_services": {
                        "linklocal_service_entry": [
                            {
                                "linklocal_service_name": "x",
                                "linklocal_service_ip": "169.254.1.1",
                                "linklocal_service_port": 1,
                                "ip_fabric_service_port": 1,
                                "ip_fabric_service_ip": 5,
                            }
                        ]
                    }
                }
            ),
        )
    ]
)  # was a TypeError: 'internal error' and a traceback in the agent's log; now the user's error
def test_the_agents_changes_take_any_request_or_refuse_it_as_the_users_mistake(requests):
    """The agent's own handlers (``Operations``) for the changes the CLI sends, with a request as the
    control socket decodes it: an answer of the operation's type, or an error the agent answers as
    the user's mistake (not "internal error")."""
    handlers = Operations(_node()).handlers()  # type: ignore[arg-type]

    async def run_all() -> None:
        for op, request in requests:
            request = decode_request(encode_request(op, request), OPS)[1]  # as the agent gets it
            try:
                answer = handlers[op](request)
                if asyncio.iscoroutine(answer):
                    answer = await answer
            except EXPECTED:
                continue
            assert to_json(decode_answer(OPS[op][1], encode_answer(answer))) == to_json(answer)

    asyncio.run(run_all())


# -- etcd's wire ------------------------------------------------------------------------------------

PREFIX = b"/vrouter/"


@fuzz_settings(300)
@given(st.binary(max_size=60) | json_values().map(lambda v: json.dumps(v).encode()).flatmap(mutated))
def test_any_etcd_value_decodes_or_is_not_json(raw):
    ok, value = etcd_wire.decode_value(raw)
    if ok:
        assert etcd_wire.decode_value(etcd_wire.encode_value(value)) == (True, value)
    else:
        assert value is None


@fuzz_settings(200)
@given(json_values())
def test_a_value_put_is_the_value_read(value):
    assert etcd_wire.decode_value(etcd_wire.encode_value(value)) == (True, value)


def test_a_value_nested_too_deep_is_not_json():
    """A value that another node (or anyone with etcd's ear) put, nested deeper than Python's
    decoder goes: it should be skipped as "not JSON", not stop the follower's thread."""
    assert etcd_wire.decode_value(DEEP_JSON.encode()) == (False, None)


@fuzz_settings(200)
@given(st.lists(st.binary(max_size=20).filter(lambda b: b"\n" not in b), max_size=6), st.lists(st.integers(0, 500), max_size=6))
def test_a_watch_stream_cut_anywhere_gives_the_same_lines(lines, cuts):
    stream = b"\n".join(lines)
    at = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    chunks = [stream[a:b] for a, b in zip(at, at[1:], strict=False)]
    assert list(etcd_wire.lines(chunks)) == [line for line in lines if line.strip()]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@st.composite
def watch_messages(draw: st.DrawFn) -> tuple[dict, list[Event]]:
    """A message of the JSON gateway's watch stream, and the events it holds for PREFIX."""
    raw_events, want = [], []
    for _ in range(draw(st.integers(0, 4))):
        key = draw(st.sampled_from([b"ports/p1", b"routes/vn/10.1.1.3", b"nodes/\xff\xfe"]) | st.binary(max_size=12))
        full = draw(st.sampled_from([PREFIX, PREFIX, b"/other/"])) + key
        rev = draw(st.integers(1, 2**40))
        kv: dict[str, Any] = {"key": _b64(full), "mod_revision": str(rev)}
        under = full.startswith(PREFIX)
        rel = full[len(PREFIX) :].decode("utf-8", "replace")
        if draw(st.booleans()):
            raw_events.append({"type": "DELETE", "kv": kv})
            if under:
                want.append(Event("delete", rel, None, rev))
            continue
        if draw(st.booleans()):
            value = draw(json_values())
            kv["value"] = _b64(json.dumps(value).encode())
            if under:
                want.append(Event("put", rel, value, rev))
        else:
            kv["value"] = _b64(draw(st.binary(max_size=10).filter(lambda b: not etcd_wire.decode_value(b)[0])))  # not JSON: skipped
        raw_events.append({"kv": kv})
    msg = {"result": {"header": {"revision": "9"}, "events": raw_events}}
    return json.loads(json.dumps(msg)), want


@fuzz_settings(100)
@given(watch_messages())
def test_a_watch_message_gives_the_events_it_holds_under_the_prefix(built):
    msg, want = built
    assert etcd_wire.watch_events(msg, PREFIX) == want


@fuzz_settings(120)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "error": json_values(),
            "result": st.fixed_dictionaries(
                {},
                optional={
                    "canceled": json_values(),
                    "compact_revision": json_values(),
                    "cancel_reason": json_values(),
                    "events": st.lists(
                        st.fixed_dictionaries(
                            {},
                            optional={
                                "type": st.sampled_from(["DELETE", "PUT", 0]),
                                "kv": st.fixed_dictionaries(
                                    {},
                                    optional={
                                        "key": st.sampled_from([_b64(PREFIX + b"k"), "!!", ""]),
                                        "value": st.sampled_from([_b64(b"{}"), _b64(b"\xff"), "%"]),
                                        "mod_revision": st.sampled_from(["7", 7, "x", None]),
                                    },
                                ),
                            },
                        ),
                        max_size=3,
                    ),
                },
            ),
        },
    )
)
def test_a_broken_watch_message_ends_the_watch_or_gives_events(msg):
    """What etcd's gateway sends, with fields missing or of the wrong kind: events, the end of the
    watch (StoreError), or an error the stream's reader takes as a broken connection (it resyncs)."""
    try:
        events = etcd_wire.watch_events(msg, PREFIX)
    except StoreError:
        return
    except (ValueError, TypeError, AttributeError):  # the reader: "the watch's connection broke", and a resync
        return
    assert all(e.kind in ("put", "delete") for e in events)
