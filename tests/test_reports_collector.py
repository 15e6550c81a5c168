"""The reports collector: cloud-init's webhook events and phone_home posts, kept per instance."""

import http.client
import json
import logging
import os
import socket
import stat
import threading
from urllib.parse import urlencode

import pytest

from fabric.reports import Collector, Report, instance_of, interpret, make_server, read
from vrouter.commands.daemons import start_reports

UUID = "0b9c4f2e-7a51-4c4b-9d6e-0d3c1f5a2b77"
EVENT = {"name": "init-network/config-ssh", "description": "running config-ssh", "event_type": "finish", "origin": "cloudinit",
         "timestamp": 1760000000.5, "result": "SUCCESS"}  # fmt: skip
PHONE = {"instance_id": UUID, "hostname": "vm1", "fqdn": "vm1.lab", "pub_key_ed25519": "ssh-ed25519 AAAA root@vm1"}


def test_paths_name_the_kind_and_the_instance():
    assert instance_of("/events/" + UUID) == ("event", UUID)
    assert instance_of("/phone-home/%s/" % UUID.upper()) == ("phone_home", UUID)  # phone_home's url ends in "/"
    assert instance_of("/phone-home/%s?x=1" % UUID) == ("phone_home", UUID)
    for bad in ("/events/../../etc/passwd", "/events/" + UUID + "/x", "/events/" + UUID[:-1], "/events/", "/other/" + UUID,
                "/events/%s%%2F" % UUID, "/events/" + UUID.replace("-", "")):  # fmt: skip
        assert instance_of(bad) is None, bad


@pytest.mark.parametrize(
    "method, path, body, status",
    [
        ("POST", "/events/" + UUID, json.dumps(EVENT).encode(), 200),
        ("POST", "/phone-home/%s/" % UUID, urlencode(PHONE).encode(), 200),
        ("POST", "/events/" + UUID, b"{not json", 400),
        ("POST", "/events/" + UUID, b"[1, 2]", 400),  # an object, not any JSON
        ("POST", "/events/" + UUID, b"\xff\xfe", 400),
        ("POST", "/phone-home/" + UUID, b'{"hostname": "vm1"}', 400),  # a form, not JSON
        ("POST", "/phone-home/" + UUID, b"", 400),
        ("POST", "/phone-home/" + UUID, b"a=\xff", 400),
        ("POST", "/", b"{}", 404),
        ("POST", "/events/not-a-uuid", b"{}", 404),
        ("GET", "/events/" + UUID, b"", 405),
        ("PUT", "/phone-home/" + UUID, b"a=b", 405),
        ("POST", "/events/" + UUID, b'{"a": "' + b"x" * 65536 + b'"}', 413),
    ],
)
def test_each_answer(tmp_path, method, path, body, status):
    got = Collector(str(tmp_path)).handle(method, path, {}, body)
    assert got[0] == status and got[1]
    assert (os.listdir(tmp_path) == [UUID + ".jsonl"]) == (status == 200)


def test_interpret_is_the_pure_part():
    got = interpret("POST", "/phone-home/" + UUID, urlencode(PHONE).encode())
    assert got == Report(UUID, "phone_home", PHONE)
    assert interpret("POST", "/events/" + UUID, b"{}") == Report(UUID, "event", {})
    assert interpret("DELETE", "/events/" + UUID, b"{}") == (405, b"POST only\n")


def test_each_report_is_a_line_of_its_instances_file(tmp_path):
    times = iter([100.5, 101.25])
    c = Collector(str(tmp_path), clock=lambda: next(times))
    old = os.umask(0o077)
    try:
        assert c.handle("POST", "/events/" + UUID, {}, json.dumps(EVENT).encode()) == (200, b"ok\n")
        form = {"content-type": ["application/x-www-form-urlencoded"]}
        assert c.handle("POST", "/phone-home/%s/" % UUID.upper(), form, urlencode(PHONE).encode())[0] == 200
    finally:
        os.umask(old)
    path = tmp_path / (UUID + ".jsonl")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    lines = path.read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"received": 100.5, "kind": "event", "body": EVENT},
        {"received": 101.25, "kind": "phone_home", "body": PHONE},
    ]
    assert read(str(tmp_path), UUID) == [json.loads(line) for line in lines]


def test_the_reader_skips_a_partial_last_line_and_knows_no_reports(tmp_path):
    assert read(str(tmp_path), UUID) == []
    rec = {"received": 1.0, "kind": "event", "body": EVENT}
    (tmp_path / (UUID + ".jsonl")).write_text(json.dumps(rec) + "\n" + json.dumps(rec)[:20])
    assert read(str(tmp_path), UUID.upper()) == [rec]
    with pytest.raises(ValueError, match="not an instance uuid"):
        read(str(tmp_path), "../x")


def test_an_instance_is_capped_and_it_is_said_once(tmp_path, caplog):
    other = "1" * 8 + UUID[8:]
    c = Collector(str(tmp_path), max_lines=2)
    with caplog.at_level(logging.WARNING, logger="vrouter.reports"):
        assert [c.handle("POST", "/events/" + UUID, {}, b"{}")[0] for _ in range(4)] == [200, 200, 429, 429]
        assert c.handle("POST", "/events/" + other, {}, b"{}")[0] == 200  # each instance has its own
    assert len([r for r in caplog.records if UUID in r.getMessage()]) == 1
    assert len(read(str(tmp_path), UUID)) == 2
    assert Collector(str(tmp_path), max_lines=2).handle("POST", "/events/" + UUID, {}, b"{}")[0] == 429  # a file's lines count
    line = len(json.dumps({"received": 0.0, "kind": "event", "body": {}})) + 1
    small = Collector(str(tmp_path), clock=lambda: 0.0, max_bytes=line)
    third = "2" * 8 + UUID[8:]
    assert [small.handle("POST", "/events/" + third, {}, b"{}")[0] for _ in range(2)] == [200, 429]


def _serve(server):
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    return t


def test_the_server_over_loopback(tmp_path):
    """In-process, on 127.0.0.1: a webhook event as cloud-init sends it (no Content-Type), a
    phone_home form, a GET, and a body over 64 KiB refused before it is read."""
    server = make_server("127.0.0.1", 0, Collector(str(tmp_path)))
    _serve(server)
    port = server.server_address[1]
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", "/events/" + UUID, body=json.dumps(EVENT).encode())
        r = conn.getresponse()
        assert (r.status, r.read()) == (200, b"ok\n")
        conn.request("POST", "/phone-home/%s/" % UUID, body=urlencode(PHONE), headers={"Content-Type": "application/x-www-form-urlencoded"})
        r = conn.getresponse()
        assert (r.status, r.read()) == (200, b"ok\n")
        conn.request("GET", "/events/" + UUID)
        r = conn.getresponse()
        r.read()
        assert r.status == 405 and r.getheader("Allow") == "POST"
        conn.close()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"POST /events/%s HTTP/1.1\r\nHost: x\r\nContent-Length: 70000\r\n\r\n" % UUID.encode())
            answer = s.makefile("rb").read()  # the server closes: the body was never read
        assert answer.startswith(b"HTTP/1.1 413 ")
        assert [r["kind"] for r in read(str(tmp_path), UUID)] == ["event", "phone_home"]
    finally:
        server.shutdown()
        server.server_close()


def test_the_daemon_starts_it_in_a_thread_and_makes_the_directory(tmp_path):
    reports = tmp_path / "reports"
    server = start_reports("127.0.0.1", 0, str(reports))
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
        conn.request("POST", "/events/" + UUID, body=b"{}")
        assert conn.getresponse().status == 200
        conn.close()
        assert read(str(reports), UUID)[0]["body"] == {}
    finally:
        server.shutdown()
        server.server_close()
