"""Property-based tests of the HTTP that VMs and the fabric send: a VM's requests to the metadata
proxy (``VMConnection.data_received``, the bytes of its TCP stream as they arrive, read by llhttp
through httptools), Nova's answers to the proxy (``NovaConnection.data_received``), the paths a VM
asks the Nova stand-in for (``NovaMetadata.handle``), what a guest posts to the reports
collector (``fabric.reports``), and the requests to the agent's introspect port on vhost0
(``introspect.server``: its own request reader).

The proxy runs in an event loop with transports of the test's own: the VM's connection records
what the proxy writes; the connections to Nova are real ``NovaConnection`` objects of the real
pool, whose transport answers each request with what the test says Nova answers.

Properties: any bytes from a VM, in any chunks, are answered, refused with a status, or closed on,
never an internal error; what the proxy writes back parses as HTTP responses; valid requests split
anywhere reach Nova once each, in order, as one request each with the VM's method, target, body
and headers, less the identity and hop-by-hop ones, plus the proxy's signed identity; any answer
from Nova reaches the VM as HTTP or as a 502, never an internal error; the stand-in and the
collector answer any path, method and body with a status."""

from __future__ import annotations

import asyncio
import json
import uuid as uuidlib

import httptools
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from fabric import reports
from fabric.nova_metadata import InstancesError, InstanceStore, NovaMetadata, parse_instances
from fabric.nova_tree import EC2_VERSIONS
from tests.fuzz_helpers import DEEP_JSON, fuzz_settings, json_values, mutated
from vrouter.introspect.server import MAX_HEAD, IntrospectServer, _read_request
from vrouter.model import Identity
from vrouter.services.metadata.core import ProxyCore
from vrouter.services.metadata.http import NOT_RELAYED
from vrouter.services.metadata.nova_side import NovaConnection, NovaPool, Upstream
from vrouter.services.metadata.signing import sign_instance_id
from vrouter.services.metadata.vm_side import VMConnection

PEER = "169.254.0.3"  # vm1's metadata IP: who the proxy sees
IDENT = Identity("21111111-1111-4111-8111-111111111111", "31111111111141118111111111111111", "10.1.1.3", "port-1", "vm1", 3)
SECRET = "s3cret"
NOVA = Upstream("10.10.0.1", 8775)
OK_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


# -- the proxy in a loop, with transports of our own -------------------------------------------------


class Transport:
    """A connection's transport: what is written is kept; closing tells the protocol, soon, that
    the connection is lost (as asyncio's transports do)."""

    def __init__(self, protocol: asyncio.Protocol, peer: str, on_write=None) -> None:
        self.protocol = protocol
        self.peer = peer
        self.out = bytearray()
        self.closing = False
        self.aborted = False
        self.on_write = on_write

    def get_extra_info(self, name: str, default: object = None) -> object:
        return (self.peer, 40000) if name == "peername" else default

    def write(self, data: bytes) -> None:
        if not self.closing:
            self.out += data
            if self.on_write is not None:
                self.on_write(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.aborted = True
        self.close()

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class Nova:
    """The fabric's Nova, as the proxy's pool reaches it: each request written to a connection is
    kept (``requests``), and answered with ``answer(request)`` (bytes, and whether Nova then closes)."""

    def __init__(self, answer) -> None:
        self.answer = answer
        self.requests: list[bytes] = []
        self.connections = 0


class Pool(NovaPool):
    """The real pool, connecting to ``nova`` without sockets."""

    def __init__(self, nova: Nova) -> None:
        super().__init__(read_timeout=30.0)
        self.nova = nova

    async def _open(self, client, req, upstream, attempt) -> None:
        conn = NovaConnection(self, upstream)
        loop = asyncio.get_running_loop()
        nova = self.nova

        def wrote(data: bytes) -> None:
            nova.requests.append(data)
            answer, close = nova.answer(data)
            loop.call_soon(conn.data_received, answer)
            if close:
                loop.call_soon(conn.transport.close)

        nova.connections += 1
        conn.connection_made(Transport(conn, upstream.host, wrote))
        if client.gone:
            self.release(conn)
            return
        conn.begin(client, req, False, attempt)


async def settle() -> None:
    for _ in range(300):
        await asyncio.sleep(0)


async def converse(chunks: list[bytes], answer=lambda req: (OK_ANSWER, False), eof: bool = True) -> tuple[Transport, ProxyCore, Nova]:
    """A VM connection that sends ``chunks``, one at a time (and then its EOF), to a proxy whose
    Nova answers with ``answer``; once everything has settled."""
    nova = Nova(answer)
    core = ProxyCore(lambda ip: IDENT if ip == PEER else None, lambda: NOVA, SECRET)
    core.pool = Pool(nova)
    vm = VMConnection(core)
    t = Transport(vm, PEER)
    vm.connection_made(t)
    for c in chunks:
        if t.closing:
            break
        vm.data_received(c)
        await settle()
    if eof and not t.closing and not vm.eof_received():
        t.close()
    await settle()
    return t, core, nova


def run(chunks: list[bytes], **kw) -> tuple[Transport, ProxyCore, Nova]:
    return asyncio.run(converse(chunks, **kw))


class Messages:
    """httptools callbacks: the messages of a stream, with their heads and bodies."""

    def __init__(self) -> None:
        self.done: list[dict] = []
        self.cur: dict = {}

    def on_message_begin(self) -> None:
        self.cur = {"url": b"", "headers": [], "body": b""}

    def on_url(self, url: bytes) -> None:
        self.cur["url"] += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.cur["headers"].append((name, value))

    def on_body(self, body: bytes) -> None:
        self.cur["body"] += body

    def on_message_complete(self) -> None:
        self.done.append(self.cur)


class Answers(Messages):
    def __init__(self, parser: httptools.HttpResponseParser | None = None) -> None:
        super().__init__()
        self.parser = parser

    def on_headers_complete(self) -> None:
        assert self.parser is not None
        self.cur["status"] = self.parser.get_status_code()
        self.heads.append(self.cur["status"])


def responses(data: bytes, heads: bool = False) -> list:
    """The complete responses in ``data`` (which must parse as HTTP responses, the last perhaps
    not complete yet: ended by the close, or still coming); with ``heads``, the statuses of every
    response that began."""
    m = Answers()
    m.heads = []
    m.parser = httptools.HttpResponseParser(m)
    m.parser.feed_data(data)
    return m.heads if heads else m.done


def relayed(wire: bytes) -> dict:
    """The one request in ``wire`` (what Nova got), parsed."""
    m = Messages()
    p = httptools.HttpRequestParser(m)
    p.feed_data(wire)
    (req,) = m.done
    req["method"] = p.get_method()
    return req


def check_relayed(nova: Nova) -> None:
    """Each request Nova got is one request, with the proxy's identity headers once each, signed."""
    for wire in nova.requests:
        req = relayed(wire)
        names = [n.lower() for n, _ in req["headers"]]
        for name in (b"x-instance-id", b"x-tenant-id", b"x-instance-id-signature", b"x-forwarded-for", b"host"):
            assert names.count(name) == 1, (name, wire)
        h = {n.lower(): v for n, v in req["headers"]}
        assert h[b"x-instance-id"] == IDENT.instance_uuid.encode() and h[b"host"] == b"10.10.0.1:8775"
        assert h[b"x-instance-id-signature"] == sign_instance_id(IDENT.instance_uuid, SECRET).encode()


# -- what a VM sends ---------------------------------------------------------------------------------

TOKEN = st.from_regex(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,12}", fullmatch=True).filter(lambda n: n.lower().encode() not in NOT_RELAYED)
VALUE = st.from_regex(r"[!-~]([ -~]{0,18}[!-~])?", fullmatch=True)
TARGET = st.from_regex(r"/[A-Za-z0-9._~/%-]{0,40}(\?[A-Za-z0-9=&]{0,10})?", fullmatch=True)
FORGED = [
    (b"X-Instance-ID", b"someone-else"),
    (b"X-Tenant-ID", b"other"),
    (b"X-Instance-ID-Signature", b"00"),
    (b"X-Forwarded-For", b"10.1.1.4"),
    (b"x-instance-id", b"lower"),
    (b"Proxy-Connection", b"keep-alive"),
    (b"TE", b"trailers"),
    (b"Keep-Alive", b"timeout=5"),
]


@st.composite
def requests(draw: st.DrawFn, last: bool = False) -> tuple[bytes, dict]:
    """A valid request, and what Nova should get of it (method, target, body, relayed headers)."""
    method = draw(st.sampled_from([b"GET", b"GET", b"GET", b"POST", b"PUT", b"DELETE"]))
    target = draw(TARGET).encode()
    version = draw(st.sampled_from([b"1.1", b"1.1", b"1.0"]))
    headers = [(b"Host", b"169.254.169.254")] if version == b"1.1" else []
    headers += [(n.encode(), v.encode()) for n, v in draw(st.lists(st.tuples(TOKEN, VALUE), max_size=4))]
    headers += draw(st.lists(st.sampled_from(FORGED), max_size=3))
    body = draw(st.binary(max_size=64)) if method in (b"POST", b"PUT") else b""
    framing: list[tuple[bytes, bytes]] = []
    chunked = body and version == b"1.1" and draw(st.booleans())
    if chunked:
        framing.append((b"Transfer-Encoding", b"chunked"))
    elif body or method in (b"POST", b"PUT"):
        framing.append((b"Content-Length", b"%d" % len(body)))
    if version == b"1.0":
        framing.append((b"Connection", b"close" if last else b"keep-alive"))
    elif last:
        framing.append((b"Connection", b"close"))
    all_headers = draw(st.permutations(headers + framing))
    raw = b"%s %s HTTP/%s\r\n" % (method, target, version) + b"".join(b"%s: %s\r\n" % h for h in all_headers) + b"\r\n"
    if chunked:
        cut = draw(st.integers(0, len(body)))
        raw += b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:cut], body[cut:]) if p) + b"0\r\n\r\n"
    else:
        raw += body
    kept = [(n, v) for n, v in all_headers if n.lower() not in NOT_RELAYED]
    return raw, {"method": method, "url": target, "body": body, "headers": kept}


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` in pieces, cut at ``cuts`` (positions modulo its length)."""
    at = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(at, at[1:], strict=False)] or [b""]


@fuzz_settings(80)
@given(st.lists(requests(), min_size=1, max_size=4), requests(last=True), st.lists(st.integers(0, 10_000), max_size=6))
def test_valid_requests_split_anywhere_reach_nova_once_each_as_sent(reqs, last, cuts):
    stream = b"".join(r for r, _ in reqs) + last[0]
    t, core, nova = run(split(stream, cuts))
    want = [w for _, w in reqs] + [last[1]]
    assert core.stats.internal_errors == 0
    got = [relayed(w) for w in nova.requests]
    assert [(g["method"], g["url"], g["body"]) for g in got] == [(w["method"], w["url"], w["body"]) for w in want]
    for g, w in zip(got, want, strict=True):
        ours = [(n, v) for n, v in g["headers"] if n.lower() not in NOT_RELAYED and n.lower() != b"content-length"]
        assert ours == w["headers"]
    check_relayed(nova)
    answered = responses(bytes(t.out))
    assert [a["status"] for a in answered] == [200] * len(want) and all(a["body"] == b"{}" for a in answered)
    assert t.closing  # the last said Connection: close


SPECIAL = [
    b"GET / HTTP/1.1\r\n\r\n",
    b"CONNECT x:1 HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    b"GET / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
    b"BREW /pot HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n",
    b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
    b"HEAD / HTTP/1.0\r\n\r\n",
    b"GET / HTTP/1.1\r\nConnection: close\r\n\r\nGET /after-close HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"\r\n\r\nGET / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
    b"G" * 20000,
]


@fuzz_settings(150)
@given(
    st.lists(requests().flatmap(lambda r: mutated(r[0])) | st.sampled_from(SPECIAL) | st.binary(max_size=60), min_size=1, max_size=4),
    st.lists(st.integers(0, 10_000), max_size=6),
    st.booleans(),
)
@example([b"GET / HTTP/1.1\r\n\r\n" * 40], [], True)  # more pipelined than the proxy reads ahead
@example([b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n"], [17], False)  # a head too large, in two reads
def test_any_bytes_from_a_vm_are_answered_refused_or_closed_never_an_internal_error(pieces, cuts, eof):
    t, core, nova = run(split(b"".join(pieces), cuts), eof=eof)
    assert core.stats.internal_errors == 0
    check_relayed(nova)
    out = bytes(t.out)
    assert out == b"" or out.startswith(b"HTTP/1.1 ")
    if b"HEAD" not in b"".join(pieces):  # llhttp cannot be told that an answer to HEAD has no body
        assert len(responses(out)) == out.count(b"HTTP/1.1 ")


# -- what Nova answers --------------------------------------------------------------------------------

NOVA_ANSWERS = [
    OK_ANSWER,
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Case: Kept\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nno\n",
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.0 200 OK\r\n\r\nthe body ends at the close",
    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 4\r\n\r\nbye\n",
    b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n",
]


@fuzz_settings(250)
@given(
    st.sampled_from(NOVA_ANSWERS).flatmap(mutated) | st.binary(max_size=80),
    st.booleans(),
    st.sampled_from(
        [b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n", b"GET /a HTTP/1.0\r\n\r\n", b"POST /p HTTP/1.1\r\nContent-Length: 1\r\n\r\nx"]
    ),
)
@example(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", True, b"GET /a HTTP/1.1\r\n\r\n")  # Nova closes mid-body
@example(b"not http at all", False, b"GET /a HTTP/1.1\r\n\r\n")
def test_any_answer_from_nova_reaches_the_vm_as_http_or_a_502(answer, close, ask):
    t, core, nova = run([ask], answer=lambda req: (answer, close))
    assert core.stats.internal_errors == 0
    out = bytes(t.out)
    assert out == b"" or out.startswith(b"HTTP/1.1 ")  # nothing yet: Nova's read timeout (30 s) would answer 502
    answered = responses(out, heads=True)
    if close and not t.aborted:  # Nova closed: the VM has its answer, or a 502 (or is cut off mid-answer: aborted)
        assert answered, out


# -- the Nova stand-in's paths ---------------------------------------------------------------------

UUID = "21111111-1111-4111-8111-111111111111"
PATHS = [
    "/",
    "/latest/meta-data/",
    "/openstack/latest/meta_data.json",
    "/openstack/latest/network_data.json",
    "/openstack/latest/password",
    "/latest/user-data",
    "/2009-04-04/meta-data/public-keys/0/openssh-key",
    "/openstack/latest/vendor_data2.json",
    "/../../etc/passwd",
    "/latest/meta-data/block-device-mapping/",
    "/openstack/2012-08-10/",
    "/latest/api/token",
] + ["/%s/meta-data/" % v for v in EC2_VERSIONS[:3]]


def stand_in(tmp_path, instance: dict) -> NovaMetadata:
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"instances": [instance]}))
    store = InstanceStore(str(path))
    assert store.instances, store.error
    return NovaMetadata(store, SECRET)


INSTANCE = {
    "uuid": UUID,
    "name": "vm1",
    "project_id": IDENT.project_uuid,
    "public_keys": {"default": "ssh-ed25519 AAAA k"},
    "user_data": "#cloud-config\n",
    "meta": {"k": "v"},
    "ip": "10.1.1.3",
    "mac": "02:00:0a:01:00:03",
    "files": [{"path": "/etc/x", "contents": "x"}],
}


@pytest.fixture(scope="module")
def nova_api(tmp_path_factory):
    return stand_in(tmp_path_factory.mktemp("nova"), INSTANCE)


def signed(instance: str = UUID, tenant: str = IDENT.project_uuid) -> dict[str, list[str]]:
    return {
        "x-instance-id": [instance],
        "x-tenant-id": [tenant],
        "x-instance-id-signature": [sign_instance_id(instance, SECRET)],
        "x-forwarded-for": ["10.1.1.3"],
    }


@fuzz_settings(300)
@given(
    st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"]),
    st.sampled_from(PATHS)
    | st.text(max_size=40).map(lambda s: "/" + s)
    | st.sampled_from(PATHS).flatmap(lambda p: st.text(max_size=8).map(p.__add__)),
    st.binary(max_size=40),
)
@example("GET", "/%ff%fe/../latest", b"")
@example("POST", "/openstack/latest/password", b"\xff\xfe")  # not UTF-8: 500 as Nova
def test_the_nova_stand_in_answers_any_path_method_and_body_with_a_status(nova_api, method, path, body):
    nova_api.store.passwords.clear()
    a = nova_api.handle(method, path, signed(), body)
    assert a.status in (200, 400, 404, 409, 500) and isinstance(a.body, bytes)


@fuzz_settings(150)
@given(
    st.dictionaries(
        st.sampled_from(["x-instance-id", "x-tenant-id", "x-instance-id-signature", "x-forwarded-for", "host"]),
        st.lists(st.text(max_size=40) | st.sampled_from([UUID, IDENT.project_uuid]), min_size=1, max_size=3),
        max_size=5,
    )
)
def test_the_nova_stand_in_checks_any_identity_headers(nova_api, headers):
    a = nova_api.handle("GET", "/openstack/latest/meta_data.json", headers)
    assert a.status in (200, 400, 403, 404)


RECORD_KEYS = [k for k in INSTANCE if k != "uuid"] + ["admin_pass", "vendor_data", "vendor_data2", "mtu", "gateway", "netmask", "dns_server", "dhcp",
                                                     "ip6", "ipv6_mode", "hostname", "availability_zone"]  # fmt: skip


@fuzz_settings(80)
@given(st.fixed_dictionaries({"uuid": st.just(UUID)}, optional=dict.fromkeys(RECORD_KEYS, json_values())))
@example({"uuid": UUID, "vendor_data2": True})  # was accepted, then vendor_data2.json raised AttributeError: now refused with the file
def test_any_instance_the_file_accepts_is_served_without_a_crash(tmp_path_factory, instance):
    """A record ``parse_instances`` lets through may still hold odd values: every path of it gets
    an answer (500 where Nova itself would fail on it), never an exception."""
    try:
        parse_instances(json.dumps({"instances": [instance]}))
    except InstancesError:
        return
    api = stand_in(tmp_path_factory.mktemp("nova"), instance)
    tenant = instance.get("project_id", "")
    for path in PATHS:
        a = api.handle("GET", path, signed(tenant=tenant if isinstance(tenant, str) else ""))
        assert a.status in (200, 400, 404, 500)


# -- the reports collector -------------------------------------------------------------------------

RUUID = str(uuidlib.UUID(int=7))


@fuzz_settings(300)
@given(
    st.sampled_from(["POST", "POST", "GET", "PUT"]),
    st.sampled_from(["/events/%s" % RUUID, "/phone-home/%s/" % RUUID, "/events/%s?x=1" % RUUID.upper()]) | st.text(max_size=60),
    st.sampled_from([b'{"event_type": "start", "name": "init", "result": "FAIL"}', b"instance_id=i&hostname=vm1&pub_key_rsa=ssh-rsa%20AAA"]).flatmap(
        mutated
    )
    | st.binary(max_size=100),
)
@example("POST", "/events/%s" % RUUID, DEEP_JSON.encode())  # valid JSON too deep for Python's decoder: 400
def test_the_collector_answers_any_report_with_a_status(tmp_path_factory, method, path, body):
    c = reports.Collector(str(tmp_path_factory.mktemp("reports")))
    status, text = c.handle(method, path, {}, body)
    assert status in (200, 400, 404, 405, 413, 429) and text.endswith(b"\n")
    if status == 200:
        (rec,) = reports.read(c.dir, RUUID)
        assert rec["kind"] in ("event", "phone_home") and isinstance(rec["body"], dict)


@fuzz_settings(100)
@given(st.lists(st.binary(max_size=40).filter(lambda b: b"\n" not in b) | json_values().map(lambda v: json.dumps(v).encode()), max_size=5))
@example([DEEP_JSON.encode(), b'{"kind": "event"}'])  # a line too deep for Python's decoder is left out, as a torn last line is
def test_reading_any_reports_file_gives_the_records_it_holds(tmp_path_factory, lines):
    d = tmp_path_factory.mktemp("reports")
    (d / ("%s.jsonl" % RUUID)).write_bytes(b"\n".join(lines))
    records = reports.read(str(d), RUUID)
    assert all(isinstance(r, dict) for r in records) and len(records) <= len(lines)


# -- the introspect port ----------------------------------------------------------------------------

STATUSES = (b"400 Bad Request", b"411 Length Required", b"413 Content Too Large", b"431 Request Header Fields Too Large")


async def introspect_requests(data: bytes) -> list:
    """What the introspect's reader makes of ``data`` (then EOF), request after request, as a
    connection reads them: (words, headers), a status it refuses with (then it closes), "eof"."""
    reader = asyncio.StreamReader(limit=MAX_HEAD)  # as asyncio.start_server(limit=MAX_HEAD) makes it
    reader.feed_data(data)
    reader.feed_eof()
    out: list = []
    while True:
        try:
            got = await _read_request(reader)
        except asyncio.IncompleteReadError:
            return out + ["eof"]
        out.append(got)
        if isinstance(got, bytes):
            return out


async def metrics() -> tuple[str, bytes]:
    return "text/plain", b"up 1\n"


@fuzz_settings(200)
@given(st.lists(requests().map(lambda r: r[0]).flatmap(mutated) | st.sampled_from(SPECIAL) | st.binary(max_size=60), min_size=1, max_size=3))
@example([b"GET /Snh_ItfReq HTTP/1.1\r\nContent-Length: \xb2\r\n\r\n"])  # "²".isdigit() but not int(): was a ValueError, now 400
@example([b"GET / HTTP/1.1\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n"])  # more digits than int() takes: was a ValueError, now 413
@example([b"GET / HTTP/1.1\r\nContent-Length: " + b"0" * 5000 + b"1\r\n\r\nx"])
def test_the_introspect_port_reads_any_bytes_as_requests_or_refuses_them(pieces):
    got = asyncio.run(introspect_requests(b"".join(pieces)))
    server = IntrospectServer(None, metrics)
    for r in got:
        if isinstance(r, tuple):
            words, headers = r
            status, ctype, body = asyncio.run(server._answer(words, headers))
            assert status.split()[0] in (b"200", b"400", b"404") and isinstance(body, bytes)
        else:
            assert r in STATUSES or r == "eof"
