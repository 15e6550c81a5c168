"""The proxy's journal and fault injection over real sockets on loopback (no root), and their pure parts.

Two VMs are told apart by the address they connect from (127.0.0.1 and 127.0.0.2), as the agent
tells them apart by their metadata IPs."""

import socket
import threading
import time

import pytest

from tests.helpers import wait_until
from tests.metadata_helpers import FakeNova, ProxyThread, exchange
from vrouter.messages.proxy import FaultSpec
from vrouter.model import Identity
from vrouter.services.metadata.faults import FaultError, Faults, Rule, check, effect_text
from vrouter.services.metadata.http import nova_like_response
from vrouter.services.metadata.journal import MIN_PER_RING, Journal, Latency

A = Identity("0b9c4f2e-7a51-4c4b-9d6e-0d3c1f5a2b77", "5a3f0c1e-2d4b-4f6a-8c9e-0b1d2f3a4c5e", "10.1.1.3", "port-a", "vm-a", 3)
B = Identity("1c8d5e3f-8b62-4d5c-8e7f-1e4d2a6b3c88", "5a3f0c1e-2d4b-4f6a-8c9e-0b1d2f3a4c5e", "10.1.1.4", "port-b", "vm-b", 4)
WHO = {"127.0.0.1": A, "127.0.0.2": B}
GET = b"GET %s HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n"


@pytest.fixture
def upstream():
    u = FakeNova()
    yield u
    u.close()


@pytest.fixture
def proxy(upstream):
    p = ProxyThread(upstream.port, identify=lambda ip: WHO.get(ip))
    yield p
    p.close()


def get(proxy: ProxyThread, path: str, source: str = "127.0.0.1", timeout: float = 5) -> bytes:
    return exchange(proxy.port, GET % path.encode(), source=source, timeout=timeout)


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def in_loop(proxy: ProxyThread, fn):  # noqa: ANN001, ANN201
    """``fn()`` run in the proxy's own loop, as the worker runs its queries."""
    out = []
    done = threading.Event()
    proxy.loop.call_soon_threadsafe(lambda: (out.append(fn()), done.set()))
    assert done.wait(5)
    return out[0]


def journal(proxy: ProxyThread, **kw):  # noqa: ANN003, ANN201
    return in_loop(proxy, lambda: proxy.proxy.journal.query(**kw))


def set_faults(proxy: ProxyThread, *specs: FaultSpec) -> None:
    done = threading.Event()

    def apply() -> None:
        proxy.proxy.faults.set([Rule.of(f) for f in specs])
        done.set()

    proxy.loop.call_soon_threadsafe(apply)
    assert done.wait(5)


def spec(fid: int, effect: str, value: float = 0, instance: str = "", vif: int = 0, path: str = "/*", count: int = 0, until: float = 0,
         probability: float = 1.0) -> FaultSpec:  # fmt: skip
    return FaultSpec(fid, instance, vif, path, effect, value, count, until, probability, 0.0)


# -- the journal ---------------------------------------------------------------------------------


def test_each_request_is_in_the_journal_with_its_vm_path_status_and_sizes(proxy):
    assert status(get(proxy, "/openstack/latest/meta_data.json")) == 200
    assert status(get(proxy, "/latest/meta-data/hostname", "127.0.0.2")) == 200
    assert status(exchange(proxy.port, b"BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n")) == 501
    wait_until(lambda: len(journal(proxy)) == 3, 5, "three entries")
    a, b, brew = journal(proxy)
    assert (a.instance, a.vif, a.vm_ip, a.method, a.status) == (A.instance_uuid, 3, "10.1.1.3", "GET", 200)
    assert a.path == "/openstack/latest/meta_data.json"
    assert a.bytes_in == len(GET % b"/openstack/latest/meta_data.json") and a.bytes_out > 100 and a.reason == "" and a.fault == 0
    assert 0 <= a.nova_ms <= a.total_ms
    assert (b.instance, b.vif, b.path) == (B.instance_uuid, 4, "/latest/meta-data/hostname")
    assert (brew.status, brew.reason, brew.nova_ms) == (501, "method not relayed", -1)
    assert a.seq < b.seq < brew.seq and a.time <= b.time <= brew.time
    assert [e.path for e in journal(proxy, instance=B.instance_uuid)] == ["/latest/meta-data/hostname"]
    assert [e.seq for e in journal(proxy, since=a.seq)] == [b.seq, brew.seq]
    assert [e.vif for e in journal(proxy, vif=4)] == [4]
    # the agent's own counters, per vif
    c = in_loop(proxy, proxy.proxy.vif_report)[3]
    assert (c.requests, c.responses, c.proxy_sessions) == (2, 2, 2)
    tally = in_loop(proxy, proxy.proxy.journal.bring_up_to_date)
    assert tally.statuses() == {A.instance_uuid: {200: 1, 501: 1}, B.instance_uuid: {200: 1}}
    assert tally.request.message().count == 3 and tally.nova.message().count == 2


def test_unknown_sources_and_local_answers_are_journaled_with_their_reason(upstream):
    p = ProxyThread(upstream.port, identify=lambda ip: None)
    try:
        assert status(exchange(p.port, GET % b"/latest")) == 500
        assert status(exchange(p.port, b"GET /\x01 HTTP/1.1\r\n\r\n")) == 400
        wait_until(lambda: len(journal(p)) == 2, 5, "two entries")
        e500, e400 = journal(p)
        assert (e500.instance, e500.status, e500.reason, e500.vm_ip) == ("", 500, "unknown source", "127.0.0.1")
        assert (e400.status, e400.reason) == (400, "bad request")
    finally:
        p.close()


def test_a_full_ring_drops_its_oldest_and_rings_are_per_instance():
    j = Journal(size=3)
    for i in range(5):
        j.add(float(i), 3, "a", "10.1.1.3", b"GET", b"/%d" % i, 200, 10, 20, 0.001, 0.002)
    j.add(9.0, 4, "b", "10.1.1.4", b"GET", b"/b", 200, 10, 20, 0.001, 0.002)
    assert [e.path for e in j.query(instance="a")] == ["/2", "/3", "/4"]
    assert j.dropped == 2 and j.last == 6
    assert [e.path for e in j.query()] == ["/2", "/3", "/4", "/b"]  # merged in the order they were made
    assert [e.path for e in j.query(since=4)] == ["/4", "/b"]
    assert [e.path for e in j.query(limit=2)] == ["/2", "/3"]
    assert j.query(instance="nobody") == []
    off = Journal(size=0)
    off.add(0.0, 3, "a", "", b"GET", b"/", 200, 1, 1, 0.001, 0.001)
    assert off.query() == [] and off.bring_up_to_date().request.message().count == 1  # not kept, but counted


def test_a_mark_is_an_entry_between_an_instances_requests_but_not_a_request():
    j = Journal(size=3)
    j.add(1.0, 3, "a", "10.1.1.3", b"GET", b"/openstack", 200, 10, 20, 0.001, 0.002)
    j.mark(2.0, 3, "a", "reboot", "vrouter-lab: boot 2 (reboot)")
    j.add(3.0, 3, "a", "10.1.1.3", b"GET", b"/latest", 200, 10, 20, 0.001, 0.002)
    entries = j.query(instance="a")
    assert [(e.method, e.path, e.status, e.reason) for e in entries] == [
        ("GET", "/openstack", 200, ""), ("LAB", "/reboot", 0, "vrouter-lab: boot 2 (reboot)"), ("GET", "/latest", 200, "")]  # fmt: skip
    assert [e.seq for e in entries] == [1, 2, 3]
    assert j.bring_up_to_date().request.message().count == 2  # the mark is no request


def test_many_instances_share_the_nodes_bound_equally():
    j = Journal(size=100, node_size=1000)
    for n in range(20):  # 20 instances of 100 entries each would be 2,000: each keeps 1000 / 20
        for i in range(100):
            j.add(float(i), 3 + n, "vm%d" % n, "10.1.1.3", b"GET", b"/%d" % i, 200, 10, 20, 0.001, 0.002)
    assert j.count <= 1000 and j.per_ring == 50
    assert all(len(ring) <= 50 for ring in j.rings.values())
    assert [e.path for e in j.query(instance="vm0")][-1] == "/99"  # the newest stay
    assert j.dropped == 2000 - j.count
    crowd = Journal(size=100, node_size=1000)
    for _ in range(20):  # a share is never under MIN_PER_RING
        for n in range(200):
            crowd.add(0.0, 3, "vm%d" % n, "", b"GET", b"/", 200, 1, 1, 0.001, 0.001)
    assert crowd.per_ring == MIN_PER_RING and crowd.count == 200 * MIN_PER_RING


def test_latency_histogram_is_cumulative_with_an_inf_bucket():
    h = Latency((0.01, 0.1))
    for s in (0.005, 0.05, 0.05, 5.0):
        h.observe(s)
    m = h.message()
    assert m.bounds == [0.01, 0.1] and m.counts == [1, 3] and m.count == 4 and abs(m.sum - 5.105) < 1e-9


# -- faults --------------------------------------------------------------------------------------


def test_status_fault_on_one_instance_path_ends_after_its_count_and_spares_the_other(proxy, upstream):
    set_faults(proxy, spec(1, "status", 503, instance=A.instance_uuid, path="/openstack/*/meta_data.json", count=2))
    path = "/openstack/latest/meta_data.json"
    answers = [get(proxy, path) for _ in range(3)]
    assert [status(a) for a in answers] == [503, 503, 200]
    assert b"Service Unavailable" in answers[0] and b"Content-Type: text/plain" in answers[0]
    assert status(get(proxy, path, "127.0.0.2")) == 200  # the other VM
    assert status(get(proxy, "/openstack/latest/user_data")) == 200  # another path
    wait_until(lambda: len(journal(proxy)) == 5, 5, "five entries")
    entries = journal(proxy)
    assert [(e.status, e.fault) for e in entries[:3]] == [(503, 1), (503, 1), (200, 0)]
    assert entries[0].reason == "fault" and entries[0].nova_ms == -1
    assert not proxy.proxy.faults.rules  # its count is used up
    assert sum(1 for r in upstream.requests if r[0].endswith("meta_data.json")) == 2  # Nova saw only the unfaulted ones


def test_delay_fault_holds_the_request_before_nova(proxy, upstream):
    set_faults(proxy, spec(1, "delay", 0.4, vif=3))
    t0 = time.monotonic()
    assert status(get(proxy, "/latest")) == 200
    assert time.monotonic() - t0 >= 0.4
    wait_until(lambda: journal(proxy), 5, "an entry")
    slow = journal(proxy, vif=3)[0]
    assert slow.total_ms >= 400 and slow.fault == 1 and slow.status == 200
    assert upstream.arrived[-1] - t0 >= 0.4  # held before it went to Nova, not after


def test_delay_fault_holds_only_its_target(proxy, upstream):
    set_faults(proxy, spec(1, "delay", 600, vif=3))
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as held:
        held.sendall(GET % b"/held")
        wait_until(lambda: in_loop(proxy, lambda: proxy.proxy.stats.requests) == 1, 5, "the proxy to hold vif 3's request")
        # meanwhile the other vif is answered, and without the rule
        assert status(get(proxy, "/latest", "127.0.0.2")) == 200
        wait_until(lambda: journal(proxy), 5, "an entry")
        (other,) = journal(proxy)
        assert (other.vif, other.status, other.fault) == (4, 200, 0)
        assert [r[0] for r in upstream.requests] == ["GET /latest"]  # vif 3's is still held


def test_reset_fault_cuts_the_answer_half_way(proxy):
    set_faults(proxy, spec(1, "reset", instance=A.instance_uuid))
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        s.sendall(GET % b"/openstack/latest/meta_data.json")
        data, reset = b"", False
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                reset = True
                break
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    assert status(data) == 200 and 0 < len(body) < length and reset
    wait_until(lambda: journal(proxy), 5, "an entry")
    assert journal(proxy)[0].fault == 1


def test_throttle_fault_trickles_the_body(proxy):
    set_faults(proxy, spec(1, "throttle", 100, path="/latest/*"))
    t0 = time.monotonic()
    answer = get(proxy, "/latest/meta-data/hostname")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert status(answer) == 200 and len(body) == int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    assert time.monotonic() - t0 >= (len(body) // 10 - 1) * 0.1  # ten bytes a tenth of a second
    assert len(body) > 20


def test_drop_fault_never_answers_until_the_vm_gives_up(proxy):
    set_faults(proxy, spec(1, "drop", instance=A.instance_uuid))
    assert get(proxy, "/latest", timeout=0.5) == b""
    wait_until(lambda: journal(proxy), 5, "the dropped request in the journal once the VM left")
    e = journal(proxy)[0]
    assert (e.status, e.fault, e.bytes_out) == (0, 1, 0)
    assert status(get(proxy, "/latest", "127.0.0.2")) == 200


def test_probability_fault_applies_to_about_that_share():
    faults = Faults()
    faults.set([Rule.of(spec(1, "status", 500, probability=0.5))])
    hits = sum(faults.match("i", 3, "/x", 0.0) is not None for _ in range(400))
    assert 120 < hits < 280


def test_rules_match_by_target_glob_and_order_and_end_in_time():
    faults = Faults()
    faults.set([Rule.of(spec(2, "status", 500, path="/openstack/*/vendor_data2.json")), Rule.of(spec(1, "delay", 1, vif=4, until=10.0))])
    assert faults.match("i", 4, "/openstack/latest/vendor_data2.json", 0.0).id == 1  # the first by id
    assert faults.match("i", 3, "/openstack/latest/vendor_data2.json", 0.0).id == 2
    assert faults.match("i", 3, "/openstack/latest/meta_data.json", 0.0) is None
    assert faults.match("i", 4, "/openstack/latest/vendor_data2.json", 11.0).id == 2  # rule 1's time is up
    assert [r.id for r in faults.rules] == [2]


@pytest.mark.parametrize(
    ("kw", "names"),
    [
        ({}, "--instance UUID, --vif N or --all"),
        ({"all_": True, "vif": 3}, "--instance UUID, --vif N or --all"),
        ({"all_": True}, "one effect"),
        ({"all_": True, "status": 503, "drop": True}, "--status, --drop"),
        ({"all_": True, "status": 99}, "--status 99"),
        ({"all_": True, "delay": -1.0}, "--delay -1.0"),
        ({"all_": True, "throttle": 0}, "--throttle 0"),
        ({"all_": True, "reset": True, "count": 0}, "--count 0"),
        ({"all_": True, "reset": True, "for_s": 0.0}, "--for 0.0"),
        ({"all_": True, "reset": True, "probability": 1.5}, "--probability 1.5"),
        ({"all_": True, "reset": True, "path": "meta_data.json"}, "--path 'meta_data.json'"),
        ({"vif": 0, "reset": True}, "--vif 0"),
    ],
)
def test_rules_that_make_no_sense_are_refused_naming_the_option(kw, names):
    args = {"instance": None, "vif": None, "all_": False, "path": "/*", "status": None, "delay": None, "throttle": None, "reset": False,
            "drop": False, "count": None, "for_s": None, "probability": None} | kw  # fmt: skip
    with pytest.raises(FaultError, match=names.replace("(", r"\(")):
        check(**args)


def test_a_sensible_rule_is_its_effect_and_value():
    args = {"instance": None, "vif": None, "all_": True, "path": "/*", "status": None, "delay": 2.5, "throttle": None, "reset": False,
            "drop": False, "count": 3, "for_s": None, "probability": None}  # fmt: skip
    assert check(**args) == ("delay", 2.5)


@pytest.mark.parametrize(
    ("effect", "value", "text"),
    [
        ("status", 503, "status 503"),
        ("delay", 2.5, "delay 2.5 s"),
        ("throttle", 100, "throttle 100 B/s"),
        ("reset", 0, "reset"),
        ("drop", 0, "drop"),
        ("refuse", 0, "refuse"),
    ],
)
def test_a_rule_lists_its_effect_as_it_was_given(effect, value, text):
    record = Rule.of(spec(1, effect, value)).record(0.0)
    assert (record.effect, record.value, effect_text(record)) == (effect, value, text)


def test_a_rule_bounded_in_time_never_has_more_left_than_its_bound():
    now = 1000.003  # (now + 60) - now is 60.000000000000114 in floating point
    rule = Rule.of(FaultSpec(1, "", 0, "/*", "drop", 0.0, 0, now + 60, 1.0, 60.0))
    assert rule.record(now).left_s == 60 and rule.record(now + 59.5).left_s == pytest.approx(0.5) and rule.record(now + 61).left_s == 0


def test_a_rule_of_an_unknown_effect_is_refused():
    with pytest.raises(FaultError, match="no fault effect 'explode'"):
        Rule.of(spec(1, "explode"))


def test_a_local_answer_looks_like_novas():
    out = nova_like_response(503, close=False)
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n") and b"Content-Length: %d" % len(body) in head
    assert body.startswith(b"503 Service Unavailable\n\n")
    assert nova_like_response(404, close=True, head=True).endswith(b"Connection: close\r\n\r\n")
