"""What a VM can say to the metadata service (169.254.169.254:80) that is not HTTP, or barely.

Each case is a script of steps on a new TCP connection (send bytes, wait, half-close, reset); the
answer is read for a moment and its status lines counted.  ``Slowloris`` keeps many connections
open, each trickling a header line now and then, and reopens those the proxy closes.  Every
answer is searched for the other VMs' instance ids: one found is a leak (the proxy must answer a
VM with its own metadata whatever it sends).
"""

from __future__ import annotations

import random
import re
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from scapy.layers.http import HTTP, HTTPRequest
from scapy.packet import fuzz

from fuzzing.targets import METADATA_IP, Targets

PORT = 80
READ_FOR = 2.0  # seconds an answer is read for (the proxy answers a bad head at once; a partial one waits for more)
Step = tuple[str, object]  # ("send", bytes) | ("sleep", seconds) | ("shutdown", None) | ("reset", None)
STATUS = re.compile(rb"HTTP/1\.[01] (\d{3}) ")
VALID = b"GET /openstack/latest/meta_data.json HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n"
PATHS = (b"/", b"/openstack", b"/openstack/latest/meta_data.json", b"/latest/meta-data/", b"/latest/user-data", b"/2009-04-04/meta-data/instance-id")


def printable(rnd: random.Random, n: int) -> bytes:
    return bytes(rnd.randrange(32, 127) for _ in range(n))


def request(method: bytes = b"GET", path: bytes = b"/openstack/latest/meta_data.json", version: bytes = b"HTTP/1.1", headers: bytes = b"",
            body: bytes = b"") -> bytes:  # fmt: skip
    return method + b" " + path + b" " + version + b"\r\nHost: 169.254.169.254\r\n" + headers + b"\r\n" + body


def garbage(rnd: random.Random, t: Targets) -> list[Step]:
    return [("send", rnd.randbytes(rnd.randrange(1, 4096)))]


def garbage_lines(rnd: random.Random, t: Targets) -> list[Step]:
    return [("send", b"\r\n".join(printable(rnd, rnd.randrange(80)) for _ in range(rnd.randrange(1, 20))) + b"\r\n\r\n")]


def huge_header(rnd: random.Random, t: Targets) -> list[Step]:
    return [("send", request(headers=b"X-Big: " + b"a" * rnd.choice([9000, 17000, 70000]) + b"\r\n"))]


def many_headers(rnd: random.Random, t: Targets) -> list[Step]:
    n = rnd.choice([100, 500, 3000])
    return [("send", request(headers=b"".join(b"X-H%d: v\r\n" % i for i in range(n))))]


def long_request_line(rnd: random.Random, t: Targets) -> list[Step]:
    return [("send", request(path=b"/" + b"a" * rnd.choice([8200, 20000, 65000])))]


BAD_METHODS = (b"FOO", b"G\x00ET", b"get", b"GET GET", b"CONNECT", b"TRACE", b"OPTIONS", b"DELETE", b"PUT", b"PATCH", b"PROPFIND",
               b"M" * 300, b"", b"\xff\xfe", b"GET\t", b"HEAD", b"POST")  # fmt: skip


def bad_method(rnd: random.Random, t: Targets) -> list[Step]:
    return [("send", request(method=rnd.choice(BAD_METHODS), path=rnd.choice(PATHS)))]


BAD_VERSIONS = (b"HTTP/9.9", b"HTTP/1", b"HTTP/1.1 extra", b"FOO/1.1", b"", b"HTTP/0.9", b"HTTP/2.0", b"http/1.1", b"HTTP/1.10", b"HTTP/-1.1")


def bad_version(rnd: random.Random, t: Targets) -> list[Step]:
    return [("send", request(version=rnd.choice(BAD_VERSIONS)))]


BAD_HEADERS = (b"NoColon\r\n", b"Space Before : x\r\n", b" leading-space: x\r\n", b"X: a\r\n folded continuation\r\n", b"X-Nul: a\x00b\r\n",
               b"X-Bare-LF: x\n", b"X-Bare-CR: x\rY: z\r\n", b"X-High: \xff\xfe\xfd\r\n", b": empty-name\r\n", b"Host: a\r\nHost: b\r\n",
               b"Connection: keep-alive, upgrade\r\nUpgrade: websocket\r\n", b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
               b"Expect: 100-continue\r\nContent-Length: 10\r\n", b"X-\xc3\xa9t\xc3\xa9: \xe2\x98\x83\r\n")  # fmt: skip


def bad_headers(rnd: random.Random, t: Targets) -> list[Step]:
    hs = b"".join(rnd.choice(BAD_HEADERS) for _ in range(rnd.randrange(1, 4)))
    return [("send", request(path=rnd.choice(PATHS), headers=hs))]


BAD_LENGTHS = (b"Content-Length: -1\r\n", b"Content-Length: abc\r\n", b"Content-Length: 99999999999999999999999\r\n",
               b"Content-Length: 5\r\nContent-Length: 6\r\n", b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
               b"Transfer-Encoding: chunked, identity\r\n", b"Transfer-Encoding: gzip\r\n", b"Content-Length: 1048577\r\n",
               b"Content-Length: 100\r\n", b"Content-Length:  0x10\r\n")  # fmt: skip
CHUNKS = (b"ZZZ\r\nabc\r\n0\r\n\r\n", b"fffffffffffffffff\r\nabc\r\n", b"5;ext=\x01\r\nhello\r\n0\r\nTrailer: x\r\n\r\n", b"3\r\nabcdef\r\n",
          b"-1\r\n\r\n", b"0\r\n", b"1\r\na\r\n" * 200 + b"0\r\n\r\n")  # fmt: skip


def bad_body(rnd: random.Random, t: Targets) -> list[Step]:
    method = rnd.choice([b"POST", b"PUT", b"GET"])
    if rnd.random() < 0.5:
        return [("send", request(method, headers=rnd.choice(BAD_LENGTHS), body=rnd.randbytes(rnd.randrange(64))))]
    return [("send", request(method, headers=b"Transfer-Encoding: chunked\r\n", body=rnd.choice(CHUNKS)))]


ODD_TARGETS = (b"http://169.254.169.254/openstack", b"http://evil.example/", b"*", b"/../../etc/passwd", b"/openstack/%00", b"/%zz",
               b"//openstack//latest", b"/?" + b"a" * 1000, b"/openstack#frag", b"/\xc3\xa9", b"/openstack/latest/meta_data.json/../../..",
               b"", b"openstack", b"/openstack/latest/meta_data.json?" + b"&".join(b"k%d=v" % i for i in range(500)))  # fmt: skip


def odd_target(rnd: random.Random, t: Targets) -> list[Step]:
    return [("send", request(path=rnd.choice(ODD_TARGETS)))]


def forged_identity(rnd: random.Random, t: Targets) -> list[Step]:
    """Another VM's instance id and address in the proxy's own headers: the answer must be ours."""
    them = rnd.choice(t.other_uuids) if t.other_uuids else "00000000-0000-0000-0000-000000000000"
    other_ip = rnd.choice(t.others) if t.others else "10.1.1.250"
    hs = (b"X-Instance-ID: %s\r\nX-Tenant-ID: x\r\nX-Forwarded-For: %s\r\nX-Instance-ID-Signature: %s\r\n"
          % (them.encode(), other_ip.encode(), b"0" * 64))  # fmt: skip
    return [("send", request(headers=hs * rnd.randrange(1, 3)))]


def partial(rnd: random.Random, t: Targets) -> list[Step]:
    """A valid request cut anywhere, then closed, half-closed or left open."""
    cut = VALID[: rnd.randrange(1, len(VALID))]
    end: Step = rnd.choice([("shutdown", None), ("sleep", 0.2), ("reset", None)])
    return [("send", cut), end]


def pipelined(rnd: random.Random, t: Targets) -> list[Step]:
    """Requests pipelined on one connection: valid ones then garbage, many at once, one cut short."""
    k = rnd.randrange(4)
    if k == 0:
        return [("send", VALID + rnd.randbytes(rnd.randrange(1, 2000)))]
    if k == 1:
        return [("send", VALID * rnd.randrange(2, 60))]
    if k == 2:
        return [("send", VALID + VALID[: rnd.randrange(1, len(VALID))]), ("shutdown", None)]
    return [("send", VALID + b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGARBAGE\r\n\r\n" + VALID)]


def other_protocols(rnd: random.Random, t: Targets) -> list[Step]:
    """HTTP/2's preface, a TLS ClientHello, an SSH banner: what a confused client sends to port 80."""
    hello = b"\x16\x03\x01" + struct.pack("!H", 200) + b"\x01\x00\x00\xc4\x03\x03" + rnd.randbytes(194)
    return [("send", rnd.choice([b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + rnd.randbytes(40), hello, b"SSH-2.0-OpenSSH_9.2\r\n"]))]


HTTP_FIELDS = [f.name for f in HTTPRequest.fields_desc if f.name not in ("Method", "Path", "Http_Version", "Unknown_Headers")]


def scapy_fuzzed(rnd: random.Random, t: Targets) -> list[Step]:
    """scapy's fuzz(HTTPRequest()): method, path and version random (or kept), and some of its
    header fields given random values."""
    fields: dict[str, Any] = {name: printable(rnd, rnd.randrange(1, 60)) for name in rnd.sample(HTTP_FIELDS, rnd.randrange(8))}
    if rnd.random() < 0.5:
        fields.update(Method=b"GET", Path=rnd.choice(PATHS), Http_Version=b"HTTP/1.1")
    return [("send", bytes(HTTP() / fuzz(HTTPRequest(**fields))))]


def reset_mid(rnd: random.Random, t: Targets) -> list[Step]:
    """A valid request, then a reset before (or while) the answer comes."""
    return [("send", VALID), ("sleep", rnd.choice([0, 0.001, 0.01])), ("reset", None)]


def trickled(rnd: random.Random, t: Targets) -> list[Step]:
    """A valid request a few bytes at a time, well within the header timeout: must be answered."""
    steps: list[Step] = []
    i = 0
    while i < len(VALID):
        n = rnd.randrange(1, 12)
        steps += [("send", VALID[i : i + n]), ("sleep", 0.02)]
        i += n
    return steps


def valid(rnd: random.Random, t: Targets) -> list[Step]:
    return [("send", VALID)]


CASES: dict[str, Callable[[random.Random, Targets], list[Step]]] = {
    "garbage": garbage,
    "garbage_lines": garbage_lines,
    "huge_header": huge_header,
    "many_headers": many_headers,
    "long_request_line": long_request_line,
    "bad_method": bad_method,
    "bad_version": bad_version,
    "bad_headers": bad_headers,
    "bad_body": bad_body,
    "odd_target": odd_target,
    "forged_identity": forged_identity,
    "partial": partial,
    "pipelined": pipelined,
    "other_protocols": other_protocols,
    "scapy_fuzz": scapy_fuzzed,
    "reset_mid": reset_mid,
    "trickled": trickled,
    "valid": valid,
}


@dataclass
class HttpTally:
    """What the HTTP abuse did and got, shared by its threads."""

    cases: Counter[str] = field(default_factory=Counter)  # requests sent, by case
    answers: Counter[str] = field(default_factory=Counter)  # status lines received ("none": no answer before close or timeout)
    connect_failures: int = 0
    own_metadata: int = 0  # answers carrying the attacker's own instance id
    leaks: list[str] = field(default_factory=list)  # answers carrying another VM's instance id
    slowloris_opened: int = 0
    slowloris_closed_by_proxy: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def as_dict(self) -> dict[str, object]:
        with self.lock:
            return {
                "requests": sum(self.cases.values()) + self.slowloris_opened,
                "cases": dict(sorted(self.cases.items())),
                "answers": dict(sorted(self.answers.items())),
                "connect_failures": self.connect_failures,
                "own_metadata_answers": self.own_metadata,
                "leaks": len(self.leaks),
                "leak_examples": self.leaks[:3],
                "slowloris_connections": self.slowloris_opened,
                "slowloris_closed_by_proxy": self.slowloris_closed_by_proxy,
            }

    def judge(self, t: Targets, data: bytes) -> None:
        codes = STATUS.findall(data)
        with self.lock:
            for code in codes or [b"none"]:
                self.answers[code.decode()] += 1
            if t.uuid.encode() in data:
                self.own_metadata += 1
            for other in t.other_uuids:
                if other.encode() in data:
                    self.leaks.append("%s in %r" % (other, data[:200]))


def connect(timeout: float) -> socket.socket:
    return socket.create_connection((METADATA_IP, PORT), timeout=timeout)


def run_case(name: str, steps: list[Step], t: Targets, tally: HttpTally) -> None:
    try:
        s = connect(3)
    except OSError:
        with tally.lock:
            tally.connect_failures += 1
        return
    with tally.lock:
        tally.cases[name] += 1
    data = b""
    try:
        for op, arg in steps:
            if op == "send":
                assert isinstance(arg, bytes)
                s.sendall(arg)
            elif op == "sleep":
                assert isinstance(arg, float | int)
                time.sleep(arg)
            elif op == "shutdown":
                s.shutdown(socket.SHUT_WR)
            elif op == "reset":
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
        s.settimeout(READ_FOR)
        until = time.monotonic() + READ_FOR
        while time.monotonic() < until and len(data) < 1 << 20:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass  # the proxy closed or reset it: what it sent so far is the answer
    finally:
        s.close()
    tally.judge(t, data)


def cases_loop(t: Targets, seed: int, rate: float, until: float, stop: threading.Event, tally: HttpTally, workers: int = 8) -> None:
    """The cases in turn, ``rate`` connections a second at most, until ``until`` or ``stop``: on
    ``workers`` threads, since a case may wait for its answer (READ_FOR) or trickle."""
    names = list(CASES)
    lock = threading.Lock()
    turn = [0, time.monotonic()]  # the next case, when it is due

    def worker(rnd: random.Random) -> None:
        while not stop.is_set():
            with lock:
                i, due = int(turn[0]), float(turn[1])
                turn[0], turn[1] = i + 1, max(due + 1 / rate, time.monotonic() - 1)
            if due > until:
                return
            if stop.wait(max(0.0, due - time.monotonic())):
                return
            name = names[i % len(names)]
            run_case(name, CASES[name](rnd, t), t, tally)

    threads = [threading.Thread(target=worker, args=(random.Random(seed * 100 + w),), daemon=True) for w in range(workers)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()


def slowloris(t: Targets, rnd: random.Random, conns: int, until: float, stop: threading.Event, tally: HttpTally) -> None:
    """``conns`` connections (past the proxy's 64 a VM), each sending a header line every second
    or two and never ending its head; the proxy closes them (408 after its header timeout, 429
    past its limit): they are opened again, 20 a second at most."""
    open_: list[tuple[socket.socket, float]] = []
    try:
        while time.monotonic() < until and not stop.is_set():
            for _ in range(min(20, conns - len(open_))):
                try:
                    s = connect(2)
                    s.setblocking(False)
                    s.send(b"GET /openstack/latest/meta_data.json HTTP/1.1\r\nHost: 169.254.169.254\r\n")
                except OSError:
                    with tally.lock:
                        tally.connect_failures += 1
                    continue
                open_.append((s, time.monotonic() + rnd.uniform(1, 2)))
                with tally.lock:
                    tally.slowloris_opened += 1
            keep: list[tuple[socket.socket, float]] = []
            for s, due in open_:
                alive = True
                try:
                    data = s.recv(65536)  # an answer (408, 429) or the end: the proxy is done with it
                    alive = False
                    if data:
                        tally.judge(t, data)
                except BlockingIOError:
                    pass
                except OSError:
                    alive = False
                if alive and time.monotonic() >= due:
                    try:
                        s.send(b"X-Slow-%d: %s\r\n" % (rnd.randrange(10**6), printable(rnd, 8)))
                        due = time.monotonic() + rnd.uniform(1, 2)
                    except OSError:
                        alive = False
                if alive:
                    keep.append((s, due))
                else:
                    s.close()
                    with tally.lock:
                        tally.slowloris_closed_by_proxy += 1
            open_ = keep
            stop.wait(0.2)
    finally:
        for s, _ in open_:
            s.close()
