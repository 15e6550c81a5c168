"""A dataplane worker's process: ``python -m dataplane.linux.worker FD``, started by the agent.

It answers the messages of ``dataplane.linux.workers`` on the socket ``FD``
(``infra.children.serve``), in order: ``Setup`` maps the flow table as its
writer (clearing what a worker before it left there) and binds its node
queue; ``Configure`` calls the named method of its ``Dataplane``, as the
agent's own ``Dataplanes`` call does on worker 0; ``BindQueues`` reads or
stops reading VMs' queues; ``StatsRequest`` answers its counters,
``TraceRequest`` its flow trace.  It ages its own flows, hands the packets it
traps for the guests' services to the agent (``Trapped``), and exits when the
socket closes: an agent that dies, even by SIGKILL, takes its workers with it.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from dataplane.core.capture import Capture
from dataplane.core.dataplane import Dataplane
from dataplane.core.traps import Trap
from dataplane.core.vif import Vif
from dataplane.linux.aging import age_forever
from dataplane.linux.ebpf import watch_closes
from dataplane.linux.layout import SharedCounts
from dataplane.linux.nfqueue import QueueShell
from dataplane.linux.ports import SocketPortAllocator
from dataplane.linux.raw import RawSender
from dataplane.linux.ringbuf import RingBuffer
from dataplane.linux.totals import WorkerStats, stats_of
from dataplane.linux.vifdump import DatagramSink
from dataplane.linux.workers import (
    CONFIGURE,
    AddCapture,
    BindQueues,
    Configure,
    RemoveCapture,
    Setup,
    StatsRequest,
    Sync,
    TraceRequest,
    Trapped,
)
from flows import bpfmap
from flows.table import FlowTable, TableFormatError
from infra.children import Refusal, run, serve

log = logging.getLogger("vrouter.dataplane")


class Worker:
    def __init__(self, setup: Setup, push: Callable[[object], None]) -> None:
        self.setup = setup
        self.push = push
        self.table = FlowTable.open_writer(setup.table, setup.writer)
        self.counts = SharedCounts(setup.counts, setup.workers, setup.writer)
        self.ports = SocketPortAllocator(setup.vhost_ip, *setup.nat_ports, address6=setup.vhost_ip6)
        self.dp = Dataplane(self.table, setup.vhost_ip, setup.proxy_port, setup.limits, self.ports, self.counts)
        self.dp.path.on_trap = self._trapped
        self.dp.path.inject = RawSender().send  # IPv6 into and out of the tunnels (the worker's life long)
        self.dp.flow_setup.vhost_ip6 = setup.vhost_ip6
        self.shell = QueueShell(self.dp, setup.node_queue)
        self.captures: dict[int, Capture] = {}
        self._ring: tuple[int, RingBuffer, asyncio.AbstractEventLoop] | None = None  # ebpf: the kernel's closed pairs
        self.handlers: dict[type, Callable[[Any], object]] = {
            Configure: self._configure,
            BindQueues: self._bind,
            AddCapture: self._add_capture,
            RemoveCapture: self._remove_capture,
            StatsRequest: lambda _: self.stats(),
            TraceRequest: lambda _: list(self.dp.flow_setup.trace),
            Sync: lambda _: None,
        }

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.shell.start(loop, self.setup.node_queue_length)
        if self.setup.close_ring:  # the ebpf datapath
            self.dp.flow_setup.hold = True
            fd = bpfmap.map_fd_by_id(self.setup.close_ring)
            self._ring = (fd, watch_closes(loop, fd, self.dp.lifecycle), loop)

    def _trapped(self, trap: Trap, pkt: bytes, vif: Vif, ihl: int) -> None:
        self.push(Trapped(int(trap), pkt, vif.index, ihl))

    def apply(self, msg: object) -> object:
        """What ``msg`` asks; the answer's value.  Raises what the agent should hear."""
        handler = self.handlers.get(type(msg))
        if handler is None:
            raise Refusal("worker %d: unknown message %s" % (self.setup.writer, type(msg).__name__))
        return handler(msg)

    def _configure(self, msg: Configure) -> object:
        if msg.method not in CONFIGURE:
            raise Refusal("worker %d: %s is not a configuration call" % (self.setup.writer, msg.method))
        return getattr(self.dp, msg.method)(*msg.args)

    def _bind(self, msg: BindQueues) -> None:
        for q in msg.remove:
            self.shell.remove(q)
        for q in msg.add:
            try:
                self.shell.add(q, msg.max_len)
            except OSError as e:
                raise Refusal("cannot bind its NFQUEUE queue %d in dataplane worker %d (%s): is another process using it?"
                              % (q, self.setup.writer, e)) from None  # fmt: skip

    def _add_capture(self, msg: AddCapture) -> None:
        try:
            sink = DatagramSink(msg.path)
        except OSError as e:
            raise Refusal("worker %d cannot reach the capture socket %s: %s" % (self.setup.writer, msg.path, e.strerror or e)) from None
        c = self.captures[msg.id] = Capture(msg.vif, sink, msg.rewritten)
        self.dp.captures.add(c)

    def _remove_capture(self, msg: RemoveCapture) -> None:
        gone = self.captures.pop(msg.id, None)
        if gone is not None:
            self.dp.captures.remove(gone)
            gone.sink.close()

    def stats(self) -> WorkerStats:
        return stats_of(self.dp, self.shell, self.ports.in_use, {i: (c.sent, c.lost) for i, c in self.captures.items()})

    def stop(self) -> None:
        self.shell.stop()
        if self._ring is not None:
            fd, ring, loop = self._ring
            loop.remove_reader(fd)
            ring.close()
            os.close(fd)
        for c in self.captures.values():
            c.sink.close()
        self.table.close()
        self.counts.close()


class Process:
    """The worker's process: a ``Worker`` once ``Setup`` came, and its aging."""

    def __init__(self) -> None:
        self.worker: Worker | None = None
        self.aging: asyncio.Task[None] | None = None
        self.push: Callable[[object], None] = lambda _: None

    async def handle(self, msg: object) -> object:
        if self.worker is not None:
            return self.worker.apply(msg)
        if not isinstance(msg, Setup):
            raise Refusal("the first message must be Setup, not %s" % type(msg).__name__)
        logging.getLogger().setLevel(msg.log_level)
        try:
            worker = Worker(msg, self.push)
        except (OSError, TableFormatError) as e:
            raise Refusal("worker %d cannot map the flow table %s: %s" % (msg.writer, msg.table, e)) from None
        loop = asyncio.get_running_loop()
        try:
            worker.start(loop)
        except OSError as e:
            worker.stop()
            raise Refusal("worker %d cannot bind its node queue %d (%s)" % (msg.writer, msg.node_queue, e)) from None
        self.worker = worker
        self.aging = loop.create_task(age_forever(worker.dp, functools.partial(float, msg.flow_cache_timeout)))
        gc.freeze()
        return None

    def set_push(self, push: Callable[[object], None]) -> None:
        self.push = push

    async def serve(self, fd: int) -> None:
        try:
            await serve(fd, self.handle, self.set_push)
        finally:
            if self.aging is not None:
                self.aging.cancel()
            if self.worker is not None:
                self.worker.stop()


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the agent stops us, by closing the socket
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s dataplane worker %(process)d: %(message)s")
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        print("usage: python -m dataplane.linux.worker FD (started by the vrouter agent)", file=sys.stderr)
        return 2
    run(Process().serve(int(sys.argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
