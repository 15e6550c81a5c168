"""What the metadata proxy's loopback tests share (no root): a raw Nova stand-in, the proxy in its own
event loop thread, and a raw HTTP exchange with it.  A plain module: test_metadata_proxy.py and
test_metadata_journal.py import from here, not from each other."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable

from vrouter.messages.proxy import Fairness
from vrouter.model import Identity
from vrouter.services.metadata.nova_side import Upstream
from vrouter.services.metadata.proxy import MetadataProxy

VM = Identity("0b9c4f2e-7a51-4c4b-9d6e-0d3c1f5a2b77", "5a3f0c1e-2d4b-4f6a-8c9e-0b1d2f3a4c5e", "10.1.1.3", "port-1")
SECRET = "s3cret"
# /big's body: larger than every buffer between Nova and a VM that does not read (each socket's
# kernel buffers, autotuned up to net.ipv4.tcp_rmem's 32 MiB, and the proxy's own), so that a proxy
# that kept reading Nova would be seen to
BIG = 64 << 20
BIG_CHUNK = 1 << 18  # /big's body goes in writes of this size, each counted once it is sent


class FakeNova:
    """A raw HTTP/1.1 server: records request heads (and when they came), answers by path. Keep-alive,
    chunked on demand.  ``big_sent``: how much of /big's body it has sent so far (its writes block when nobody reads)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.requests: list[tuple[str, list[tuple[str, str]], bytes]] = []
        self.arrived: list[float] = []  # when each request had come (time.monotonic)
        self.connections = 0
        self.big_sent = 0
        self.slow = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket) -> None:
        try:
            self._serve_requests(c)
        except OSError:
            pass  # the proxy reset the connection (a test closing it with data unread): nothing to serve

    def _serve_requests(self, c: socket.socket) -> None:
        f = c.makefile("rb")
        while True:
            line = f.readline()
            if not line:
                break
            method, target, _ = line.decode().split(" ", 2)
            hdrs = []
            while True:
                h = f.readline().decode()
                if h in ("\r\n", ""):
                    break
                n, v = h.rstrip("\r\n").split(":", 1)
                hdrs.append((n, v.strip()))
            length = int(dict((k.lower(), v) for k, v in hdrs).get("content-length", 0))
            body = f.read(length) if length else b""
            self.arrived.append(time.monotonic())
            self.requests.append((method + " " + target, hdrs, body))
            if target == "/chunked":
                c.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Custom-Case: Kept\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
            elif target == "/slow":
                self.slow.wait(10)  # answers nothing until the test ends
                c.close()
                return
            elif target == "/garbage":
                c.sendall(b"this is not HTTP\r\n\r\n")
                c.close()
                return
            elif target == "/big":
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BIG)
                chunk = b"u" * BIG_CHUNK
                for _ in range(BIG // BIG_CHUNK):
                    c.sendall(chunk)
                    self.big_sent += BIG_CHUNK
            elif target == "/no-length":
                c.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nno length here")
                c.close()
                return
            elif target == "/informational":
                c.sendall(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 203 Custom Reason\r\nContent-Length: 2\r\n\r\nok")
            elif target == "/close-mid-body":
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
                c.close()
                return
            else:
                out = json.dumps({"method": method, "target": target}).encode()
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(out))
                if method != "HEAD":
                    c.sendall(out)
        c.close()

    def close(self) -> None:
        self.slow.set()
        self.sock.close()


class ProxyThread:
    """The proxy in its own event loop thread, as in the agent."""

    def __init__(self, upstream_port: int | None, identify: Callable[[str], Identity | None] = lambda ip: VM,
                 fairness: Fairness | None = None) -> None:  # fmt: skip
        self.loop = asyncio.new_event_loop()
        up = Upstream("127.0.0.1", upstream_port) if upstream_port else None
        self.proxy = MetadataProxy(identify, lambda: up, SECRET, connect_timeout=2, read_timeout=2, fairness=fairness)
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.proxy.start("127.0.0.1", self.port), self.loop).result(5)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.proxy.stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def exchange(port: int, raw: bytes, responses: int = 1, head: bool = False, source: str = "", timeout: float = 5) -> bytes:
    """Send raw bytes (from address ``source``, if given), read until `responses` complete responses
    (Content-Length or chunked), EOF or ``timeout``."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0) if source else None) as s:
        s.sendall(raw)
        data = b""
        while True:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            data += chunk
            if _complete(data, head) >= responses:
                break
        return data


def _complete(data: bytes, head: bool = False) -> int:
    n, rest = 0, data
    while b"\r\n\r\n" in rest:
        hdr, rest = rest.split(b"\r\n\r\n", 1)
        lower = hdr.lower()
        if b"transfer-encoding: chunked" in lower:
            if b"0\r\n\r\n" not in rest:
                return n
            rest = rest.split(b"0\r\n\r\n", 1)[1]
        elif b"content-length:" in lower:
            length = 0 if head else int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
            if len(rest) < length:
                return n
            rest = rest[length:]
        n += 1
    return n
