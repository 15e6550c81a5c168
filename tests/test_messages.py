"""The typed seams: every message survives its wire as itself, and what is not a message is refused
naming the field."""

import asyncio
import dataclasses
import json

import pytest

from infra import children
from vrouter.messages import control as c
from vrouter.messages import proxy as p
from vrouter.messages import wire as w
from vrouter.messages.proxy import Fairness
from vrouter.model import Identity, NovaAddress

CONTROL = [
    c.StatusRequest(),
    c.PortAdd(uuid="u", instance_uuid="i", ip_address="10.1.1.3", mac="02:00:00:00:00:03"),
    c.PortDel("u"),
    c.LinkLocalAdd("ntp", "169.254.169.123", "123", ["10.10.0.1", "10.10.0.2"], "123"),
    c.LinkLocalImport({"linklocal_services": {"linklocal_service_entry": []}}),
    c.NetworkAdd("v", "10.1.1.0/24", host_routes=["10.8.0.0/16 via 10.1.1.1"]),
]
PROXY = [
    p.ProxyConfig(["10.10.0.2", "fd00:a9fe:a9fe::1"], 8097, "s", 30.0, Fairness(header_timeout=2.5), p.TlsFiles("ca", "c", "k")),
    p.IdentityChanges({"169.254.0.3": Identity("i", "p", "10.1.1.3", "u", "vm1"), "169.254.0.4": None}),
    p.SetUpstream(NovaAddress(["10.10.0.1"], 8775)),
    p.SetUpstream(None),
    p.JournalQuery(since=3, vif=4),
]


async def _read(data: bytes) -> object:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return await children.read_message(reader)


@pytest.mark.parametrize("request_", CONTROL, ids=lambda r: type(r).__name__)
def test_control_requests_cross_the_wire_as_themselves(request_):
    op = c.OP_OF[type(request_)]
    assert w.decode_request(w.encode_request(op, request_), c.OPS) == (op, request_)


@pytest.mark.parametrize("request_", PROXY, ids=lambda r: type(r).__name__)
def test_proxy_requests_cross_the_childrens_framing_as_themselves(request_):
    assert asyncio.run(_read(children.encode((7, request_)))) == (7, request_)


def test_answers_cross_the_wire_as_themselves():
    counters = p.ProxyCounters(requests=3, status={200: 2, 502: 1})
    status = c.ProxyStatus(**dataclasses.asdict(counters), pid=4)
    back = w.decode_answer(c.ProxyStatus, w.encode_answer(status))
    assert back == status and back.status == {200: 2, 502: 1}  # int keys again
    plugged = [c.PortPlugged("u", "i", "v", "p", "10.1.1.3", "02:00:00:00:00:03", "tapu", "vm1", "", 3, 1, tap_present=True)]
    assert plugged[0].metadata_ip == "169.254.0.3" and plugged[0].metadata_ip6 == "fd00:a9fe:a9fe::3"  # from the vif
    line = w.encode_answer(plugged)
    assert json.loads(line)["result"][0]["metadata_ip"] == "169.254.0.3"  # on the wire as the CLI's --json shows it
    assert w.decode_answer(c.OPS["port.list"][1], line) == plugged


def test_none_fields_are_left_out_and_take_their_defaults():
    line = w.encode_answer(c.ProxyStatus(pid=5))
    assert "error" not in json.loads(line)["result"]
    assert w.from_json(c.ProxyStatus, json.loads(line)["result"]).error is None


def test_refusals_and_bad_lines():
    with pytest.raises(w.Refused, match="no such port"):
        w.decode_answer(c.PortUnplugged, w.encode_answer(error="--uuid x: no such port"))
    with pytest.raises(w.MessageError, match="unknown operation 'config'"):
        w.decode_request(w.encode_request("config", p.ProxyConfig([], 1, "", 1.0, Fairness())), c.OPS)  # not the CLI's
    with pytest.raises(w.MessageError, match="not JSON"):
        w.decode_request(b"{nope\n", c.OPS)
    with pytest.raises(w.MessageError, match="unknown field bogus"):
        w.decode_request(b'{"op": "port.del", "args": {"bogus": 1}}\n', c.OPS)
    with pytest.raises(w.MessageError, match="uuid: expected str, got int"):
        w.decode_request(b'{"op": "port.del", "args": {"uuid": 7}}\n', c.OPS)
    bad_route = {"vrf": 1, "network": "n", "vn_uuid": "v", "routes": [{"prefix": "10.1.1.3", "prefix_len": 32, "nh": "x", "label": 16,
                                                                    "flags": "LP", "mac": "", "node": "", "port_uuid": ""}]}  # fmt: skip
    with pytest.raises(w.MessageError, match=r"routes\[0\]\.nh: expected int"):
        w.decode_answer(c.RouteTable, json.dumps({"ok": True, "result": bad_route}).encode())
    with pytest.raises(w.MessageError, match="missing"):
        w.from_json(NovaAddress, {"ips": []})


def test_a_broken_frame_is_the_end_of_the_child_not_a_crash():
    with pytest.raises(EOFError, match="not a message"):
        asyncio.run(_read(b"\0\0\0\4junk"))


def test_every_operation_has_a_request_dataclass_and_an_answer_type():
    for op, (req, answer) in c.OPS.items():
        assert dataclasses.is_dataclass(req), op
        assert answer is not None, op
