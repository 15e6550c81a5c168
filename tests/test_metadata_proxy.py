"""The metadata proxy over real sockets on loopback (no root): headers, errors, streaming, keep-alive.

The identity lookup is given as a function of the peer address, as the agent
gives it; the upstream is a real HTTP server on loopback.
"""

import socket
import time

import pytest

from tests.helpers import wait_until
from tests.metadata_helpers import BIG, SECRET, VM, FakeNova, ProxyThread, exchange
from vrouter.messages.proxy import Fairness
from vrouter.model import Identity
from vrouter.services.metadata.fairness import RateLimiter
from vrouter.services.metadata.signing import sign_instance_id


@pytest.fixture
def upstream():
    u = FakeNova()
    yield u
    u.close()


@pytest.fixture
def proxy(upstream):
    p = ProxyThread(upstream.port)
    yield p
    p.close()


def test_identity_headers_replaced_and_signed(proxy, upstream):
    raw = (
        b"GET /openstack/latest/meta_data.json HTTP/1.1\r\nHost: 169.254.169.254\r\n"
        b"X-Instance-ID: someone-else\r\nx-tenant-id: evil\r\nX-Instance-ID-Signature: forged\r\n"
        b"X-Forwarded-For: 6.6.6.6\r\nUser-Agent: cloud-init/23.1\r\n\r\n"
    )
    resp = exchange(proxy.port, raw)
    assert resp.startswith(b"HTTP/1.1 200")
    target, hdrs, _ = upstream.requests[-1]
    assert target == "GET /openstack/latest/meta_data.json"
    names = [n.lower() for n, _ in hdrs]
    for h in ("x-instance-id", "x-tenant-id", "x-instance-id-signature", "x-forwarded-for", "host"):
        assert names.count(h) == 1, h
    d = {n.lower(): v for n, v in hdrs}
    assert d["x-instance-id"] == VM.instance_uuid
    assert d["x-tenant-id"] == VM.project_uuid.replace("-", "")
    assert d["x-instance-id-signature"] == sign_instance_id(VM.instance_uuid, SECRET)
    assert d["x-forwarded-for"] == "10.1.1.3"
    assert d["host"] == "127.0.0.1:%d" % upstream.port
    assert d["user-agent"] == "cloud-init/23.1"


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PUT", "DELETE"])
def test_relayed_methods(proxy, upstream, method):
    body = b"pw" if method in ("POST", "PUT") else b""
    raw = b"%s /openstack/latest/password HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (method.encode(), len(body), body)
    resp = exchange(proxy.port, raw, head=method == "HEAD")
    assert resp.startswith(b"HTTP/1.1 200"), resp
    assert upstream.requests[-1][0].startswith(method + " ")
    assert upstream.requests[-1][2] == body


def test_other_methods_are_501(proxy, upstream):
    resp = exchange(proxy.port, b"PATCH / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert resp.startswith(b"HTTP/1.1 501")
    assert upstream.requests == []


def test_unknown_source_is_500(upstream):
    p = ProxyThread(upstream.port, identify=lambda ip: None)
    try:
        assert exchange(p.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 500")
    finally:
        p.close()
    assert upstream.requests == []


def test_no_metadata_service_is_500():
    p = ProxyThread(None)
    try:
        assert exchange(p.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 500")
    finally:
        p.close()


def test_nova_unreachable_is_502():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = s.getsockname()[1]
    s.close()  # nothing listens there now
    p = ProxyThread(dead)
    try:
        resp = exchange(p.port, b"GET /openstack HTTP/1.1\r\nHost: x\r\n\r\n")
        assert resp.startswith(b"HTTP/1.1 502")
        assert resp.endswith(b"Bad Gateway\n")
    finally:
        p.close()


def test_nova_too_slow_is_502(proxy):
    resp = exchange(proxy.port, b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")  # the proxy's read timeout is 2 s here
    assert resp.startswith(b"HTTP/1.1 502")


def test_chunked_answer_streamed_with_headers_as_sent(proxy):
    resp = exchange(proxy.port, b"GET /chunked HTTP/1.1\r\nHost: x\r\n\r\n")
    head, body = resp.split(b"\r\n\r\n", 1)
    assert b"Transfer-Encoding: chunked" in head
    assert b"X-Custom-Case: Kept" in head
    assert body.endswith(b"0\r\n\r\n")
    chunks = body.split(b"\r\n")
    assert b"".join(c for i, c in enumerate(chunks) if i % 2 == 1) == b"hello world"


def test_nova_closing_mid_body_closes_the_vm_connection(proxy):
    resp = exchange(proxy.port, b"GET /close-mid-body HTTP/1.1\r\nHost: x\r\n\r\n")
    assert resp.startswith(b"HTTP/1.1 200") and resp.endswith(b"partial")  # then EOF: never a complete body


def test_keep_alive_on_both_sides(proxy, upstream):
    raw = b"".join(b"GET /openstack/%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(5))
    resp = exchange(proxy.port, raw, responses=5)
    assert resp.count(b"HTTP/1.1 200") == 5
    assert [r[0] for r in upstream.requests] == ["GET /openstack/%d" % i for i in range(5)]
    assert upstream.connections == 1
    # a second VM connection reuses the pooled upstream connection
    exchange(proxy.port, b"GET /again HTTP/1.1\r\nHost: x\r\n\r\n")
    assert upstream.connections == 1


def test_malformed_request_gets_400(proxy, upstream):
    assert exchange(proxy.port, b"NOT HTTP AT ALL\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert upstream.requests == []


def test_oversized_headers_are_refused(proxy, upstream):
    resp = exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
    assert resp.startswith(b"HTTP/1.1 431")
    resp = exchange(proxy.port, b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert resp.startswith(b"HTTP/1.1 414")
    resp = exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100000 + b"\r\n\r\n")
    assert resp.startswith(b"HTTP/1.1 431") or resp.startswith(b"HTTP/1.1 400")
    assert upstream.requests == []


def test_nova_answering_garbage_is_502(proxy):
    assert exchange(proxy.port, b"GET /garbage HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 502")


def test_pipelined_requests_answered_in_order(proxy, upstream):
    raw = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /chunked HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n"
    resp = exchange(proxy.port, raw, responses=3)
    assert resp.index(b'"/a"') < resp.index(b"hello") < resp.index(b'"/b"')


def test_huge_body_is_413(proxy, upstream):
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        s.sendall(b"POST /openstack/latest/password HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n")
        try:
            for _ in range(40):
                s.sendall(b"x" * 65536)
        except OSError:
            pass  # the proxy may close before the VM has sent it all
        assert s.recv(200).startswith(b"HTTP/1.1 413")
    assert upstream.requests == []


def test_slowloris_gets_408_and_the_connection_closed(upstream):
    p = ProxyThread(upstream.port, fairness=Fairness(header_timeout=0.5))
    try:
        with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.1\r\n")
            s.sendall(b"X-Slow: 1\r\n")  # and never the rest
            data = b""
            while chunk := s.recv(1000):
                data += chunk
        assert data.startswith(b"HTTP/1.1 408") and p.proxy.stats.header_timeouts == 1
        # a client that is merely idle between requests is not hurried
        assert exchange(p.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 200")
    finally:
        p.close()
    assert upstream.requests[-1][0] == "GET /"


def test_connections_per_vm_are_capped(upstream):
    p = ProxyThread(upstream.port, fairness=Fairness(max_connections_per_vm=3))
    idle = [socket.create_connection(("127.0.0.1", p.port), timeout=5) for _ in range(3)]
    try:
        resp = exchange(p.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert resp.startswith(b"HTTP/1.1 429")
        idle.pop().close()  # the proxy notices the close asynchronously: wait for it
        wait_until(lambda: exchange(p.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 200"), 5, "a free slot")
    finally:
        for s in idle:
            s.close()
        p.close()


def test_rate_limit_answers_429_per_vm(upstream):
    other = Identity("99999999-9999-9999-9999-999999999999", VM.project_uuid, "10.1.1.4", "port-2")
    who = {"vm": VM}
    p = ProxyThread(upstream.port, identify=lambda ip: who["vm"], fairness=Fairness(rate_limit=True, base_limit=3, burst_limit=3))
    try:
        codes = [exchange(p.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")[9:12] for _ in range(5)]
        assert codes == [b"200", b"200", b"200", b"429", b"429"]
        who["vm"] = other  # another VM has its own window
        assert exchange(p.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 200")
    finally:
        p.close()


def test_rate_limiter_windows():
    r = RateLimiter(Fairness(rate_limit=True, base_window=10, base_limit=5, burst_window=1, burst_limit=2))
    assert [r.allow("a", 0.0), r.allow("a", 0.1), r.allow("a", 0.2)] == [True, True, False]  # burst
    assert r.allow("a", 1.5) and r.allow("a", 1.6) and not r.allow("a", 1.7)
    assert r.allow("a", 3.0)  # the 5th in the base window of 10 s
    assert not r.allow("a", 4.5)  # the base window is full
    assert r.allow("a", 10.05)  # the first request has left it
    assert r.allow("b", 4.5)  # another VM counts alone


def test_answer_without_length_is_rechunked_for_http11_and_closed_for_http10(proxy):
    resp = exchange(proxy.port, b"GET /no-length HTTP/1.1\r\nHost: x\r\n\r\n")
    head, body = resp.split(b"\r\n\r\n", 1)
    assert b"Transfer-Encoding: chunked" in head and b"Connection: close" not in head
    assert body == b"e\r\nno length here\r\n0\r\n\r\n"
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        s.sendall(b"GET /no-length HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):  # the proxy closes: that is where the body ends
            data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    assert b"Transfer-Encoding" not in head and b"Connection: close" in head and body == b"no length here"


def test_http10_keep_alive_is_kept(proxy, upstream):
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        for i in range(2):
            s.sendall(b"GET /k%d HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" % i)
            data = b""
            while b'"}' not in data:
                data += s.recv(65536)
            assert b"Connection: keep-alive" in data
    assert [r[0] for r in upstream.requests] == ["GET /k0", "GET /k1"]


def test_expect_100_continue(proxy, upstream):
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        s.sendall(b"POST /openstack/latest/password HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
        assert s.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(b"pw")
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
    assert upstream.requests[-1][2] == b"pw"
    assert "expect" not in [n.lower() for n, _ in upstream.requests[-1][1]]


def test_unknown_method_is_501_and_garbage_is_400(proxy, upstream):
    assert exchange(proxy.port, b"FROB / HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 501")
    assert exchange(proxy.port, b"CONNECT nova:8775 HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 501")
    assert exchange(proxy.port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03").startswith(b"HTTP/1.1 400")  # TLS to port 80
    assert upstream.requests == []


def test_nova_informational_answer_is_skipped_and_reason_kept(proxy):
    resp = exchange(proxy.port, b"GET /informational HTTP/1.1\r\nHost: x\r\n\r\n")
    assert resp.startswith(b"HTTP/1.1 203 Custom Reason\r\n") and resp.endswith(b"\r\n\r\nok")
    assert b"100 Continue" not in resp


def steady(read, what: str, still: float = 1.0, timeout: float = 30) -> int:
    """``read()`` once it has not changed for ``still`` seconds (within ``timeout``)."""
    last, since = read(), time.monotonic()

    def settled() -> bool:
        nonlocal last, since
        now = read()
        if now != last:
            last, since = now, time.monotonic()
        return time.monotonic() - since >= still

    wait_until(settled, timeout, what)
    return last


def test_slow_vm_reader_stops_the_proxy_reading_nova_then_gets_the_whole_answer(proxy, upstream):
    # the VM does not read: the proxy stops reading Nova (bounded buffers), so Nova's writes block
    # part of the way through the body; when the VM reads, the rest passes on, and the Nova
    # connection goes back to the pool reading
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        s.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_until(lambda: upstream.requests and upstream.requests[-1][0] == "GET /big", 5, "the request to reach Nova")
        stalled = steady(lambda: upstream.big_sent, "Nova's writes to stall or end while the VM reads nothing")
        assert stalled < BIG // 2, "Nova sent %d of %d bytes to a VM that reads nothing: the proxy kept reading it" % (stalled, BIG)
        data = bytearray()
        while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + BIG:
            chunk = s.recv(1 << 20)
            assert chunk, "the proxy closed before the whole answer"
            data += chunk
    assert upstream.big_sent == BIG
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"u" * 1000) and data.count(b"u") == BIG
    assert exchange(proxy.port, b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 200")
    assert upstream.connections == 1  # the same pooled connection served the next request
