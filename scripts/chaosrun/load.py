"""The VMs' traffic during the chaos soak, in a process of its own, so that what the driver does
(killing, restarting, building a node) never delays a sample or its timestamp.

    python -m scripts.chaosrun.load [--interval S] [--stream-interval S] [--stream-timeout S]

Every VM runs cloud-init's OpenStack datasource sequence again and again (``topology.clients``:
the same requests, a new connection each, each answer checked to be the VM's own, with
``CloudInitClients.get``), ``--interval`` between requests; each VM has a TCP and a UDP echo
server, and streams go between VMs: a TCP connection kept open that exchanges a line every
``--stream-interval`` (on a failure it is closed and made again), and a UDP socket that does the
same.  Every request and exchange is a sample: what, from when to when (``time.monotonic``, the
same clock for every process), ok or not.  All of it from one asyncio loop, each socket made in
its VM's namespace (``topology.netns.socket_in``).

Commands on stdin, one JSON object a line, each acknowledged (``["ack", ID]``) once done:

* ``{"id": N, "op": "add", "vms": [{"namespace", "instance_uuid", "ip"}, ...], "streams": [[SRC, DST, "tcp"|"udp"], ...]}``:
  VMs (by namespace) start their loops and echo servers, then the streams start (a stream's VMs
  must have been added, in this command or before);
* ``{"id": N, "op": "drop", "namespaces": [...]}``: those VMs' loops, servers and every stream
  from or to them stop, and their sockets and namespace handles are closed (before their
  namespaces are deleted: a handle would keep a namespace alive);
* ``{"id": N, "op": "stop"}`` (or stdin closed): everything stops; requests in flight are not
  samples.

On stdout, one JSON array a line: ``["ack", N]``, or a sample ``[KIND, SUBJECT, START, END, OK,
DETAIL]``: KIND ``m`` (a metadata request; SUBJECT the VM's namespace), ``t`` or ``u`` (a TCP or
UDP exchange; SUBJECT ``SRC>DST/tcp``); DETAIL what failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Coroutine
from typing import Any

from topology import netns
from topology.clients import CloudInitClients, sequence

ECHO_TCP = 7007
ECHO_UDP = 7008


def subject_of(src: str, dst: str, proto: str) -> str:
    """A stream's name in the samples."""
    return "%s>%s/%s" % (src, dst, proto)


class Load(CloudInitClients):
    """Every VM's loops, servers and streams, added and dropped as the driver says."""

    def __init__(self, interval: float, stream_interval: float, stream_timeout: float) -> None:
        super().__init__([])
        self.interval = interval
        self.stream_interval = stream_interval
        self.timeout = stream_timeout
        self.fds: dict[str, int] = {}  # a VM's namespace handle, by namespace
        self.tasks: dict[str, set[asyncio.Task]] = {}  # what involves a VM, by its namespace
        self.servers: dict[str, list[socket.socket]] = {}
        self.ips: dict[str, str] = {}  # a VM's address, by namespace
        self.lines: list[str] = []

    # -- samples ----------------------------------------------------------------------------------

    def emit(self, kind: str, subject: str, start: float, ok: bool, detail: str = "") -> None:
        self.lines.append(json.dumps([kind, subject, round(start, 4), round(time.monotonic(), 4), ok, detail[:160]]))

    async def flusher(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            self.flush()

    def flush(self) -> None:
        if self.lines:
            sys.stdout.write("\n".join(self.lines) + "\n")
            sys.stdout.flush()
            self.lines.clear()

    def spawn(self, coro: Coroutine[Any, Any, None], *namespaces: str) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        for ns in namespaces:
            self.tasks.setdefault(ns, set()).add(task)
            task.add_done_callback(self.tasks[ns].discard)

    # -- what each VM does ------------------------------------------------------------------------

    @staticmethod
    async def pause(seconds: float) -> None:
        """Between two samples.  A task cancelled while its exchange ended at the same moment (the
        peer's echo server cancelled with it, say) has its cancellation swallowed by
        ``asyncio.wait_for`` (Python 3.11): it stops here, since it is still being cancelled."""
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise asyncio.CancelledError()
        await asyncio.sleep(seconds)

    async def metadata(self, ns: str, uuid: str) -> None:
        """cloud-init's sequence, again and again, each request a sample."""
        fd = self.fds[ns]
        while True:
            for path, want in sequence(uuid):
                st: dict = {"ok": 0, "failed": 0, "worst": 0.0, "errors": []}
                t0 = time.monotonic()
                try:
                    await self.get(fd, path, want, st)
                except OSError as e:  # the socket could not be made in the namespace
                    st["failed"], st["errors"] = 1, ["%s: %r" % (path, e)]
                self.emit("m", ns, t0, st["failed"] == 0, st["errors"][0] if st["errors"] else "")
                await self.pause(self.interval)

    def serve(self, ns: str, ip: str) -> None:
        """The VM's echo servers: TCP (each connection echoed by a task of its own) and UDP."""
        loop = asyncio.get_running_loop()
        tcp = netns.socket_in(self.fds[ns], self.home)
        udp = netns.socket_in(self.fds[ns], self.home, socket.AF_INET, socket.SOCK_DGRAM)
        self.servers[ns] = [tcp, udp]
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind((ip, ECHO_TCP))
        tcp.listen(128)
        tcp.setblocking(False)
        udp.bind((ip, ECHO_UDP))
        udp.setblocking(False)

        def echo_udp() -> None:
            try:
                while True:
                    data, peer = udp.recvfrom(2048)
                    udp.sendto(data, peer)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                pass  # an ICMP error queued on the socket: the next datagram goes on

        loop.add_reader(udp.fileno(), echo_udp)

        async def echo(conn: socket.socket) -> None:
            try:
                while data := await loop.sock_recv(conn, 4096):
                    await loop.sock_sendall(conn, data)
            except OSError:
                pass
            finally:
                conn.close()

        async def accept() -> None:
            while True:
                conn, _ = await loop.sock_accept(tcp)
                conn.setblocking(False)
                self.spawn(echo(conn), ns)

        self.spawn(accept(), ns)

    async def tcp_stream(self, src: str, dst: str, ip: str) -> None:
        """A connection kept open from ``src`` to ``dst``'s echo server: a line every interval, each a sample."""
        loop = asyncio.get_running_loop()
        name = subject_of(src, dst, "tcp")
        s: socket.socket | None = None
        n = 0
        try:
            while True:
                t0 = time.monotonic()
                n += 1
                msg = b"%015d\n" % n
                try:
                    if s is None:
                        s = netns.socket_in(self.fds[src], self.home)
                        s.setblocking(False)
                        await asyncio.wait_for(loop.sock_connect(s, (ip, ECHO_TCP)), self.timeout)
                    await asyncio.wait_for(self._exchange(loop, s, msg), self.timeout)
                    self.emit("t", name, t0, True)
                except (TimeoutError, OSError, ValueError) as e:
                    self.emit("t", name, t0, False, repr(e))
                    if s is not None:
                        s.close()
                        s = None
                await self.pause(self.stream_interval)
        finally:
            if s is not None:
                s.close()

    @staticmethod
    async def _exchange(loop: asyncio.AbstractEventLoop, s: socket.socket, msg: bytes) -> None:
        await loop.sock_sendall(s, msg)
        got = b""
        while len(got) < len(msg):
            data = await loop.sock_recv(s, len(msg) - len(got))
            if not data:
                raise ValueError("connection closed by the peer")
            got += data
        if got != msg:
            raise ValueError("echoed %r, sent %r" % (got, msg))

    async def udp_stream(self, src: str, dst: str, ip: str) -> None:
        """A datagram every interval from ``src`` to ``dst``'s echo server, answered within the timeout: each a sample."""
        loop = asyncio.get_running_loop()
        name = subject_of(src, dst, "udp")
        s = netns.socket_in(self.fds[src], self.home, socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.setblocking(False)
            s.connect((ip, ECHO_UDP))
            n = 0
            while True:
                t0 = time.monotonic()
                n += 1
                msg = b"%015d\n" % n

                async def answered(msg: bytes = msg) -> None:
                    await loop.sock_sendall(s, msg)
                    while await loop.sock_recv(s, 2048) != msg:
                        pass  # a late answer to an earlier datagram

                try:
                    await asyncio.wait_for(answered(), self.timeout)
                    self.emit("u", name, t0, True)
                except (TimeoutError, OSError) as e:
                    self.emit("u", name, t0, False, repr(e))
                await self.pause(self.stream_interval)
        finally:
            s.close()

    # -- commands ---------------------------------------------------------------------------------

    def add(self, vms: list[dict], streams: list[list[str]]) -> None:
        for vm in vms:
            ns = vm["namespace"]
            self.fds[ns] = os.open(netns.path_of(ns), os.O_RDONLY)
            self.serve(ns, vm["ip"])
            self.ips[ns] = vm["ip"]
            self.spawn(self.metadata(ns, vm["instance_uuid"]), ns)
        for src, dst, proto in streams:
            run = self.tcp_stream if proto == "tcp" else self.udp_stream
            self.spawn(run(src, dst, self.ips[dst]), src, dst)

    async def drop(self, namespaces: list[str]) -> None:
        loop = asyncio.get_running_loop()
        doomed: set[asyncio.Task] = set()
        for ns in namespaces:
            doomed |= self.tasks.pop(ns, set())
        for task in doomed:
            task.cancel()
        if doomed:
            await asyncio.wait(doomed, timeout=10)
        for ns in namespaces:
            for s in self.servers.pop(ns, []):
                if s.type == socket.SOCK_DGRAM:
                    loop.remove_reader(s.fileno())
                s.close()
            fd = self.fds.pop(ns, None)
            if fd is not None:
                os.close(fd)

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        commands: asyncio.Queue[str] = asyncio.Queue()

        def read() -> None:  # stdin from a thread: the loop never blocks on it
            for line in sys.stdin:
                loop.call_soon_threadsafe(commands.put_nowait, line)
            loop.call_soon_threadsafe(commands.put_nowait, '{"op": "stop"}')

        threading.Thread(target=read, daemon=True).start()
        flusher = loop.create_task(self.flusher())
        while True:
            cmd = json.loads(await commands.get())
            if cmd["op"] == "add":
                self.add(cmd.get("vms", []), cmd.get("streams", []))
            elif cmd["op"] == "drop":
                await self.drop(cmd["namespaces"])
            await asyncio.sleep(0)
            self.flush()
            if cmd["op"] == "stop":
                await self.drop(list(self.fds))
                flusher.cancel()
                self.flush()
                if "id" in cmd:
                    print(json.dumps(["ack", cmd["id"]]), flush=True)
                return
            print(json.dumps(["ack", cmd["id"]]), flush=True)

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        os.close(self.home)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--interval", type=float, default=0.1, help="seconds between a VM's metadata requests")
    ap.add_argument("--stream-interval", type=float, default=0.2, help="seconds between a stream's exchanges")
    ap.add_argument("--stream-timeout", type=float, default=3.0, help="seconds an exchange may take (a connect included)")
    args = ap.parse_args()
    load = Load(args.interval, args.stream_interval, args.stream_timeout)
    try:
        asyncio.run(load.main())
    finally:
        load.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
