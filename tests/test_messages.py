"""The typed seams: every message survives the wire as itself, and what is not a message is refused
naming the field."""

import dataclasses
import json

import pytest

from vrouter import messages as m
from vrouter.services.metadata.fairness import Fairness

EXAMPLES = [
    m.StatusRequest(),
    m.PortAdd(uuid="u", instance_uuid="i", ip_address="10.1.1.3", mac="02:00:00:00:00:03"),
    m.PortDel("u"),
    m.LinkLocalAdd("ntp", "169.254.169.123", "123", ["10.10.0.1", "10.10.0.2"], "123"),
    m.LinkLocalImport({"linklocal_services": {"linklocal_service_entry": []}}),
    m.ProxyConfig(["10.10.0.2", "fd00:a9fe:a9fe::1"], 8097, "s", 30.0, Fairness(header_timeout=2.5), m.TlsFiles("ca", "c", "k")),
    m.Identities({"169.254.0.3": m.Identity("i", "p", "10.1.1.3", "u", "vm1")}),
    m.SetUpstream(m.NovaAddress(["10.10.0.1"], 8775)),
    m.SetUpstream(None),
]


@pytest.mark.parametrize("request_", EXAMPLES, ids=lambda r: type(r).__name__)
def test_requests_cross_the_wire_as_themselves(request_):
    ops = m.CONTROL_OPS if m.OP_OF[type(request_)] in m.CONTROL_OPS else m.PROXY_OPS
    op, back = m.decode_request(m.encode_request(request_), ops)
    assert op == m.OP_OF[type(request_)] and back == request_


def test_answers_cross_the_wire_as_themselves():
    counters = m.ProxyCounters(requests=3, status={200: 2, 502: 1})
    report = m.ProxyReport(counters, m.ProxyLoad(1, 2), {"rss_kib": 10}, 99)
    back = m.decode_answer("stats", m.encode_answer(report))
    assert back == report and back.stats.status == {200: 2, 502: 1}  # int keys again
    plugged = [m.PortPlugged("u", "i", "v", "p", "10.1.1.3", "02:00:00:00:00:03", "tapu", "vm1", "", 3, 1, "169.254.0.3", "fd00:a9fe:a9fe::3", True)]
    assert m.decode_answer("port.list", m.encode_answer(plugged)) == plugged


def test_none_fields_are_left_out_and_take_their_defaults():
    line = m.encode_answer(m.ProxyStatus(pid=5))
    assert "error" not in json.loads(line)["result"]
    assert m.from_json(m.ProxyStatus, json.loads(line)["result"]).error is None


def test_refusals_and_bad_lines():
    with pytest.raises(m.Refused, match="no such port"):
        m.decode_answer("port.del", m.encode_answer(error="--uuid x: no such port"))
    with pytest.raises(m.MessageError, match="unknown operation 'config'"):
        m.decode_request(m.encode_request(m.ProxyConfig([], 1, "", 1.0, Fairness())), m.CONTROL_OPS)  # not the CLI's
    with pytest.raises(m.MessageError, match="not JSON"):
        m.decode_request(b"{nope\n", m.CONTROL_OPS)
    with pytest.raises(m.MessageError, match="unknown field bogus"):
        m.decode_request(b'{"op": "port.del", "args": {"bogus": 1}}\n', m.CONTROL_OPS)
    with pytest.raises(m.MessageError, match="uuid: expected str, got int"):
        m.decode_request(b'{"op": "port.del", "args": {"uuid": 7}}\n', m.CONTROL_OPS)
    with pytest.raises(m.MessageError, match=r"by_metadata_ip.169.254.0.3.vm_ip"):
        m.decode_request(b'{"op": "identities", "args": {"by_metadata_ip": {"169.254.0.3": {"instance_uuid": "i", "project_uuid": "p", '
                         b'"vm_ip": 1, "port_uuid": "u"}}}}\n', m.PROXY_OPS)  # fmt: skip
    with pytest.raises(m.MessageError, match="missing"):
        m.from_json(m.NovaAddress, {"ips": []})


def test_every_operation_has_a_request_dataclass_and_an_answer_type():
    for op, (req, answer) in m.OPS.items():
        assert dataclasses.is_dataclass(req), op
        assert answer is not None, op
