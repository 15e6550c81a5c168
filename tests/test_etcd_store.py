"""The etcd layer: infra.etcd (ConfigStore, Follower), infra.etcd_wire and topology.etcd.

Pure parts (keys, ranges, the watch stream's messages, the Follower's states against a fake
store) need no root.  The rest runs a real etcd in a namespace of its own (``PREFIX-etcd``, etcd
on 10.77.0.1 on its lo) with every client call made from a thread inside that namespace, and
stops etcd, hangs it (SIGSTOP) and restarts it on the same data directory under a Follower.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
import requests
from etcd3gw.client import Etcd3Client

from infra import etcd_wire as wire
from infra.etcd import ConfigStore, Endpoint, Follower
from infra.etcd_wire import Event, StoreError
from tests.helpers import unique_prefix, wait_until
from topology import etcd, netns
from topology.processes import Processes

IP = "10.77.0.1"
PREFIX = b"/vrouter/"
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def b64(text: str) -> str:
    return wire.b64(text.encode())


# -- keys, values, ranges -------------------------------------------------------------------------


def test_prefix_ranges():
    assert wire.range_end(b"/vrouter/") == b"/vrouter0"
    assert wire.range_end(b"a\xff\xff") == b"b"
    assert wire.range_end(b"\xff") == b"\0" and wire.range_end(b"") == b"\0"
    assert wire.normalize_prefix("/vrouter") == "/vrouter/" and wire.normalize_prefix("/x/") == "/x/"
    with pytest.raises(ValueError):
        wire.normalize_prefix("")


def test_keys_are_relative():
    store = ConfigStore(["http://10.77.0.1:2379"], prefix="/lab")  # no connection until a call
    assert store.prefix == "/lab/" and store.endpoints == ["http://10.77.0.1:2379"] and store.endpoint == "http://10.77.0.1:2379"
    for bad in ("/ports/p1", ""):
        with pytest.raises(ValueError, match="relative|empty"):
            store.put(bad, 1)  # refused before anything is sent
    with pytest.raises(ValueError, match="relative"):
        store.get_all("/ports")
    assert wire.relative_key(b"/lab/ports/p1", b"/lab/") == "ports/p1"
    assert wire.relative_key(b"/other/p1", b"/lab/") is None


def test_endpoints():
    ep = Endpoint.parse("http://[fd00::1]:2379/")
    assert (ep.url, ep.protocol, ep.host, ep.port) == ("http://[fd00::1]:2379", "http", "fd00::1", 2379)
    assert Endpoint.parse("https://etcd.lab").port == 2379
    for bad in ("10.10.0.1:2379", "http://10.10.0.1:99999", "ftp://x", "http://x:2379/v3"):
        with pytest.raises(ValueError, match="client URL"):
            ConfigStore([bad])
    with pytest.raises(ValueError, match="no etcd endpoint"):
        ConfigStore([])
    # what agent.conf and netns_setup.sh take
    assert all(wire.is_client_url(u) for u in ("http://10.10.0.1:2379", "https://etcd.lab", "http://10.10.0.1:2379/"))
    assert not any(wire.is_client_url(u) for u in ("10.10.0.1:2379", "http://x:0", "http://x:99999", "ftp://x", "http://x:2379/v3"))


def test_values_are_sorted_json():
    assert wire.encode_value({"b": 1, "a": [True, None]}) == b'{"a":[true,null],"b":1}'
    assert wire.decode_value(b'{"a":1}') == (True, {"a": 1})
    assert wire.decode_value(b"not json") == (False, None)
    assert wire.decode_value(b"\xff") == (False, None)
    with pytest.raises(TypeError):
        wire.encode_value({1, 2})


def test_watch_stream_lines():
    chunks = [b'{"a":', b"1}\n\n", b'{"b":2}\n{"c"', b":3}\n", b'{"d":4}']
    assert [json.loads(line) for line in wire.lines(chunks)] == [{"a": 1}, {"b": 2}, {"c": 3}, {"d": 4}]


def _message(*events: dict, revision: int = 7) -> dict:
    return {"result": {"header": {"revision": str(revision)}, "events": list(events)}}


def test_watch_messages(caplog):
    assert wire.watch_events({"result": {"header": {"revision": "4"}, "created": True}}, PREFIX) == []
    put = {"kv": {"key": b64("/vrouter/ports/p1"), "mod_revision": "7", "value": b64('{"ip":"10.0.0.3"}')}}
    delete = {"type": "DELETE", "kv": {"key": b64("/vrouter/ports/p0"), "mod_revision": "7"}}
    outside = {"kv": {"key": b64("/vrouterx"), "mod_revision": "7", "value": b64("1")}}
    broken = {"kv": {"key": b64("/vrouter/ports/p9"), "mod_revision": "7", "value": b64("{oops")}}
    with caplog.at_level(logging.WARNING, logger="vrouter.cluster"):
        events = wire.watch_events(_message(put, delete, outside, broken), PREFIX)
    assert events == [Event("put", "ports/p1", {"ip": "10.0.0.3"}, 7), Event("delete", "ports/p0", None, 7)]
    assert [r.getMessage() for r in caplog.records] == ["etcd key /vrouter/ports/p9 is not JSON: its change at revision 7 is skipped"]
    with pytest.raises(StoreError, match="compacted.*revisions from 12"):
        wire.watch_events({"result": {"canceled": True, "compact_revision": "12"}}, PREFIX)
    with pytest.raises(StoreError, match="transport is closing"):
        wire.watch_events({"error": {"grpc_code": 14, "message": "transport is closing"}}, PREFIX)
    with pytest.raises(StoreError, match="cancelled the watch"):
        wire.watch_events({"result": {"canceled": True}}, PREFIX)


def test_etcd_command_line(monkeypatch):
    args = etcd.arguments("fabric", IP, "/var/lib/x", 2379, 2380)
    flags = dict(zip(args[::2], args[1::2], strict=True))
    urls = [v for k, v in flags.items() if k.endswith("-urls")] + [flags["--initial-cluster"].split("=", 1)[1]]
    assert urls and all(u.startswith("http://10.77.0.1:") for u in urls)
    assert "--listen-metrics-urls" not in flags and "--enable-pprof" not in flags
    assert flags["--initial-cluster"] == "fabric=http://10.77.0.1:2380" and flags["--data-dir"] == "/var/lib/x"
    assert etcd.url("fd00::1", 12379) == "http://[fd00::1]:12379"
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(etcd.EtcdError, match="apt-get install etcd-server"):
        etcd.binary()


# -- the Follower against a fake store ------------------------------------------------------------


class FakeStore:
    """get_all and watch_batches as the test scripts them: ``answers`` holds, per attempt, an
    exception or a (revision, snapshot, batches) the watch yields before it blocks or fails."""

    endpoint = "http://fake:2379"

    def __init__(self, answers: list) -> None:
        self.answers = answers
        self.attempts = 0
        self.cancelled = threading.Event()

    def _next(self):
        self.attempts += 1
        answer = self.answers.pop(0) if self.answers else StoreError("etcd at http://fake:2379: connection refused")
        return answer

    def get_all(self, under: str = ""):
        answer = self._next()
        if isinstance(answer, Exception):
            raise answer
        self.pending = answer
        return answer[0], answer[1]

    def watch_batches(self, start_revision: int):
        revision, _, batches, end = self.pending
        assert start_revision == revision + 1
        cancelled = threading.Event()

        def iterate():
            yield from batches
            if end is None:  # blocks like a quiet watch, until cancelled
                cancelled.wait()
                return
            raise end

        def cancel():
            cancelled.set()
            self.cancelled.set()

        return iterate(), cancel


class Recorder:
    """The consumer: every callback, in order, and the view they build."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.view: dict = {}
        self.states: list[bool] = []
        self.syncs = 0
        self.gate: threading.Event | None = None  # on_state(False) waits on it when set

    def on_sync(self, snapshot: dict, revision: int) -> None:
        self.calls.append(("sync", revision))
        self.view = dict(snapshot)
        self.syncs += 1

    def on_events(self, events: list[Event]) -> None:
        self.calls.append(("events", [e.key for e in events]))
        for e in events:
            if e.kind == "put":
                self.view[e.key] = e.value
            else:
                self.view.pop(e.key, None)

    def on_state(self, up: bool) -> None:
        self.calls.append(("state", up))
        self.states.append(up)
        if not up and self.gate is not None:
            assert self.gate.wait(30), "the test never opened the gate"

    def follower(self, store, retry: float = 0.05) -> Follower:
        return Follower(store, self.on_sync, self.on_events, self.on_state, retry=retry)


def test_follower_states():
    batch = [Event("put", "a", 2, 6), Event("delete", "b", None, 6)]
    lost = StoreError("etcd at http://fake:2379 ended the watch")
    refused = StoreError("etcd at http://fake:2379: connection refused")
    store = FakeStore([refused, refused, (5, {"a": 1, "b": 1}, [batch], lost), refused, (9, {"c": 3}, [], None)])
    rec = Recorder()
    f = rec.follower(store)
    f.start()
    try:
        wait_until(lambda: rec.syncs == 2, 10, "the resync")
        assert f.connected
        assert rec.calls == [("state", False), ("state", True), ("sync", 5), ("events", ["a", "b"]), ("state", False), ("state", True), ("sync", 9)]
        assert rec.view == {"c": 3} and store.attempts == 5
    finally:
        started = time.monotonic()
        f.stop()
        assert time.monotonic() - started < 2 and store.cancelled.is_set() and not f._thread.is_alive()


def test_follower_callback_failure_resyncs(caplog):
    store = FakeStore([(5, {"a": 1}, [], None), (6, {"a": 2}, [], None)])
    rec = Recorder()
    original = rec.on_sync

    def failing_once(snapshot, revision):
        original(snapshot, revision)
        if rec.syncs == 1:
            raise RuntimeError("consumer bug")

    f = Follower(store, failing_once, rec.on_events, rec.on_state, retry=0.05)
    f.start()
    try:
        wait_until(lambda: rec.syncs == 2, 10, "the resync after the callback failed")
        assert rec.states == [True] and rec.view == {"a": 2}
        assert any("a callback failed" in r.getMessage() for r in caplog.records)
    finally:
        f.stop()


# -- against a real etcd in a namespace -----------------------------------------------------------


def _enter(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")


@dataclass
class Cloud:
    ns: netns.Namespace
    procs: Processes
    data_dir: str
    inside: ThreadPoolExecutor  # one thread in the namespace: the client side of every test
    url: str = etcd.url(IP)

    def run(self, fn, timeout: float = 15):
        return self.inside.submit(fn).result(timeout)

    def start(self) -> int:
        return etcd.start(self.procs, self.ns.name, IP, self.data_dir, timeout=20)

    def pid(self) -> int:
        return self.procs.pid(etcd.PIDFILE)


@pytest.fixture
def cloud(tmp_path):
    name = unique_prefix() + "-etcd"
    netns.create(name)
    ns = inside = procs = None
    try:
        ns = netns.Namespace(name)
        ns.ipr.link("set", index=ns.index("lo"), state="up")
        ns.ipr.addr("add", index=ns.index("lo"), address=IP, prefixlen=32)
        procs = Processes(str(tmp_path / "state"), say=lambda text: None)
        inside = ThreadPoolExecutor(max_workers=1, initializer=_enter, initargs=(ns.fd,), thread_name_prefix=name)
        c = Cloud(ns, procs, str(tmp_path / "data"), inside)
        c.start()
        yield c
    finally:
        if procs is not None:
            pid = procs.pid(etcd.PIDFILE)
            if pid:
                os.kill(pid, signal.SIGCONT)  # a test may have left it stopped
            etcd.stop(procs)
        if inside is not None:
            inside.shutdown(wait=True)
        if ns is not None:
            ns.close()
        netns.delete(name)


@pytest.mark.netns  # a real etcd in a namespace of its own
def test_store_round_trip(cloud, caplog):
    # only the given address, in the namespace: clients and peers, no metrics listener
    listening = subprocess.run(["ip", "netns", "exec", cloud.ns.name, "ss", "-ltnH"], capture_output=True, text=True, check=True).stdout
    local = sorted(line.split()[3] for line in listening.splitlines())
    assert local == ["10.77.0.1:2379", "10.77.0.1:2380"], listening

    def body():
        store = ConfigStore(["http://10.77.0.1:2399", cloud.url], timeout=2)  # the first refuses: the second is remembered
        try:
            r1 = store.put("ports/p1", {"ip": "10.0.0.3", "mac": "02:00:00:00:00:03"})
            r2 = store.put("ports/p2", {"ip": "10.0.0.4"})
            r3 = store.put("networks/n1", {"subnet": "10.0.0.0/24"})
            assert r1 < r2 < r3 and store.endpoint == cloud.url
            session = requests.Session()
            session.trust_env = False  # no proxy
            raw = Etcd3Client(host=IP, port=2379, timeout=2, session=session)
            assert raw.get("/vrouter/ports/p1") == [b'{"ip":"10.0.0.3","mac":"02:00:00:00:00:03"}']  # sorted, compact
            raw.put("/vrouter/ports/junk", "not json")
            raw.put("/vrouterx", "1")  # beside the prefix, not under it
            assert store.get("ports/p2") == {"ip": "10.0.0.4"} and store.get("ports/none") is None
            revision, values = store.get_all()
            assert revision == r3 + 2
            assert values == {"ports/p1": {"ip": "10.0.0.3", "mac": "02:00:00:00:00:03"}, "ports/p2": {"ip": "10.0.0.4"},
                              "networks/n1": {"subnet": "10.0.0.0/24"}}  # fmt: skip
            assert store.get_all("ports/")[1].keys() == {"ports/p1", "ports/p2"}
            events, cancel = store.watch(revision + 1)
            store.put("ports/p2", {"ip": "10.0.0.5"})
            assert store.delete("ports/p1") and not store.delete("ports/p1")
            assert [next(events), next(events)] == [
                Event("put", "ports/p2", {"ip": "10.0.0.5"}, revision + 1),
                Event("delete", "ports/p1", None, revision + 2),
            ]
            cancel()
            assert list(events) == []  # ends once cancelled
            # compare and delete: only while the key holds what we wrote
            assert not store.delete_if("ports/p2", {"ip": "10.0.0.4"}) and store.get("ports/p2") == {"ip": "10.0.0.5"}
            assert store.delete_if("ports/p2", {"ip": "10.0.0.5"}) and store.get("ports/p2") is None
            store.put("ports/p2", {"ip": "10.0.0.5"})
            assert store.delete_prefix("ports/") == 2 and store.get_all("ports/")[1] == {}
            assert store.get_all()[1] == {"networks/n1": {"subnet": "10.0.0.0/24"}}
            assert store.healthy()
            raw.session.close()
        finally:
            store.close()

    with caplog.at_level(logging.WARNING, logger="vrouter.cluster"):
        cloud.run(body)
    assert [r.getMessage() for r in caplog.records] == ["etcd key /vrouter/ports/junk is not JSON: skipped"] * 2  # one for each get_all


@pytest.mark.netns  # a real etcd in a namespace of its own
def test_follower_stop_restart_resync(cloud):
    store = ConfigStore([cloud.url], timeout=1.0)
    writer = ConfigStore([cloud.url], timeout=1.0)
    rec = Recorder()
    cloud.run(lambda: writer.put("ports/p1", {"ip": "10.0.0.3"}))
    f = rec.follower(store, retry=0.2)
    cloud.run(f.start)  # its thread starts in the namespace of the one that starts it
    try:
        wait_until(lambda: rec.syncs == 1, 10, "the first load")
        assert rec.states == [True] and rec.view == {"ports/p1": {"ip": "10.0.0.3"}} and f.connected
        cloud.run(lambda: (writer.put("ports/p2", {"ip": "10.0.0.4"}), writer.put("ports/p1", {"ip": "10.0.0.9"}), writer.delete("ports/p2")))
        changed = lambda: [key for call in rec.calls[2:] for key in call[1]]  # noqa: E731
        wait_until(lambda: len(changed()) == 3, 10, "the three changes")
        assert changed() == ["ports/p2", "ports/p1", "ports/p2"] and rec.view == {"ports/p1": {"ip": "10.0.0.9"}}

        # etcd stops: the follower says so once, within seconds; calls fail within their timeout
        # (the bounds below are the store's documented behaviour, with a margin of a second)
        rec.gate = threading.Event()  # the follower waits in on_state(False) until etcd is back
        etcd.stop(cloud.procs)
        wait_until(lambda: rec.states == [True, False], 5, "on_state(False)")
        assert not f.connected
        for call in (lambda: writer.get("ports/p1"), lambda: writer.put("x", 1), lambda: writer.get_all()):
            began = time.monotonic()
            with pytest.raises(StoreError, match="etcd unreachable.*10.77.0.1:2379"):
                cloud.run(call)
            assert time.monotonic() - began < writer.timeout + 1

        # etcd again on the same data: a key written before the follower reconnects is in its resync
        cloud.start()
        cloud.run(lambda: writer.put("ports/p3", {"ip": "10.0.0.10"}))
        rec.gate.set()
        wait_until(lambda: rec.syncs == 2, 10, "the resync")
        assert rec.states == [True, False, True] and f.connected
        assert rec.view == {"ports/p1": {"ip": "10.0.0.9"}, "ports/p3": {"ip": "10.0.0.10"}}
        cloud.run(lambda: writer.put("ports/p4", 4))
        wait_until(lambda: "ports/p4" in rec.view, 10, "an event after the resync")
    finally:
        began = time.monotonic()
        f.stop()
        assert time.monotonic() - began < 2
        cloud.run(lambda: (store.close(), writer.close()))
    assert not f._thread.is_alive()


@pytest.mark.netns  # a real etcd in a namespace of its own
def test_follower_hung_etcd(cloud):
    """SIGSTOP: the connection stays, nothing answers on it; the follower notices by probing."""
    store = ConfigStore([cloud.url], timeout=1.0)
    rec = Recorder()
    f = rec.follower(store, retry=0.2)
    cloud.run(f.start)
    pid = cloud.pid()
    try:
        wait_until(lambda: rec.syncs == 1, 10, "the first load")
        os.kill(pid, signal.SIGSTOP)
        hung = time.monotonic()
        wait_until(lambda: rec.states == [True, False], 6, "on_state(False) for a hung etcd")
        assert time.monotonic() - hung < wire.WATCH_PROBE + 2 * store.timeout + 1
        began = time.monotonic()
        with pytest.raises(StoreError, match="no answer within 1 s"):
            cloud.run(lambda: store.get("anything"))
        assert time.monotonic() - began < store.timeout + 1  # the call's timeout is the behaviour
        os.kill(pid, signal.SIGCONT)
        wait_until(lambda: rec.syncs == 2 and rec.states == [True, False, True], 10, "the resync after SIGCONT")
        os.kill(pid, signal.SIGSTOP)  # hung again while the follower retries: stop does not wait for it
        wait_until(lambda: rec.states[-1] is False, 6, "on_state(False) again")
    finally:
        began = time.monotonic()
        f.stop()
        assert time.monotonic() - began < 2.2
        os.kill(pid, signal.SIGCONT)
        cloud.run(store.close)


@pytest.mark.netns  # a real etcd in a namespace of its own
def test_etcd_start_failure_is_clear(cloud, tmp_path):
    """Another etcd on the address, a port taken, no namespace: start says which, with the end of the log."""
    other = Processes(str(tmp_path / "other"), say=lambda text: None)
    with pytest.raises(etcd.EtcdError, match="an etcd already answers at http://10.77.0.1:2379"):
        etcd.start(other, cloud.ns.name, IP, str(tmp_path / "other-data"), timeout=10)
    with pytest.raises(etcd.EtcdError, match="already runs"):
        cloud.start()
    taken = cloud.run(lambda: socket.create_server((IP, 2479)))  # a socket made in the namespace
    try:
        with pytest.raises(etcd.EtcdError, match="(?s)etcd exited with .*address already in use"):
            etcd.start(other, cloud.ns.name, IP, str(tmp_path / "other-data"), client_port=2479, peer_port=2480, timeout=10)
    finally:
        taken.close()
    assert not other.pid(etcd.PIDFILE) and cloud.pid()  # the first one still runs
    with pytest.raises(etcd.EtcdError, match="does not exist"):
        etcd.start(other, cloud.ns.name + "-none", IP, str(tmp_path / "other-data"))
