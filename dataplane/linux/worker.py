"""A dataplane worker's process: ``python -m dataplane.linux.worker FD``, started by the agent.

It reads the messages of ``dataplane.linux.workers`` from the socket ``FD``
(one end of a socketpair; the agent holds the other) and answers each, in
order: ``Setup`` maps the flow table as its writer (clearing what a worker
before it left there) and binds its node queue; the configuration messages
change its ``Dataplane`` as the agent's own changes; ``BindQueues`` reads or
stops reading VMs' queues; ``StatsRequest`` answers its counters.  It ages its
own flows, hands the packets it traps for the guests' services to the agent
(``Trapped``), and exits when the socket closes: an agent that dies, even by
SIGKILL, takes its workers with it.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import signal
import socket
import sys

from dataplane.core.capture import Capture
from dataplane.core.dataplane import Dataplane
from dataplane.core.traps import Trap
from dataplane.core.vif import Vif
from dataplane.linux.aging import age_forever
from dataplane.linux.children import run
from dataplane.linux.nfqueue import QueueShell
from dataplane.linux.ports import SocketPortAllocator
from dataplane.linux.vifdump import DatagramSink
from dataplane.linux.workers import (
    MAX_MESSAGE,
    AddCapture,
    AddVif,
    BindQueues,
    RemoveCapture,
    RemoveVif,
    Reply,
    SetGuestAddresses,
    SetHostIfindex,
    SetResolved,
    SetRoutes,
    SetServices,
    Setup,
    SharedCounts,
    StatsRequest,
    Sync,
    Trapped,
    WorkerStats,
    encode,
    read_message,
    stats_of,
)
from flows.table import FlowTable, TableFormatError

log = logging.getLogger("vrouter.dataplane")


class Worker:
    def __init__(self, setup: Setup, out: asyncio.StreamWriter) -> None:
        self.setup = setup
        self.out = out
        self.table = FlowTable.open_writer(setup.table, setup.writer)
        self.counts = SharedCounts(setup.counts, setup.workers, setup.writer)
        self.ports = SocketPortAllocator(setup.vhost_ip, *setup.nat_ports)
        self.dp = Dataplane(self.table, setup.vhost_ip, setup.proxy_port, setup.limits, self.ports, self.counts)
        self.dp.path.on_trap = self._trapped
        self.shell = QueueShell(self.dp, setup.node_queue)
        self.captures: dict[int, Capture] = {}

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.shell.start(loop, self.setup.node_queue_length)

    def _trapped(self, trap: Trap, pkt: bytes, vif: Vif, ihl: int) -> None:
        self.out.write(encode(Trapped(int(trap), pkt, vif.index, ihl)))

    def apply(self, msg: object) -> object:
        """What ``msg`` asks; the answer's value.  Raises what the agent should hear."""
        dp = self.dp
        if isinstance(msg, AddVif):
            dp.add_vif(msg.vif)
        elif isinstance(msg, RemoveVif):
            return dp.remove_vif(msg.index)
        elif isinstance(msg, SetHostIfindex):
            dp.set_host_ifindex(msg.ifindex)
        elif isinstance(msg, SetServices):
            return dp.set_services(msg.services)
        elif isinstance(msg, SetResolved):
            dp.set_resolved(msg.name, msg.addresses)
        elif isinstance(msg, SetGuestAddresses):
            return dp.set_guest_addresses(msg.vrf, msg.addresses)
        elif isinstance(msg, SetRoutes):
            return dp.set_routes(msg.routes)
        elif isinstance(msg, BindQueues):
            for q in msg.remove:
                self.shell.remove(q)
            for q in msg.add:
                try:
                    self.shell.add(q, msg.max_len)
                except OSError as e:
                    why = "cannot bind its NFQUEUE queue %d in dataplane worker %d (%s): is another process using it?" % (q, self.setup.writer, e)
                    raise RuntimeError(why) from None
        elif isinstance(msg, AddCapture):
            try:
                sink = DatagramSink(msg.path)
            except OSError as e:
                raise RuntimeError("worker %d cannot reach the capture socket %s: %s" % (self.setup.writer, msg.path, e.strerror or e)) from None
            c = self.captures[msg.id] = Capture(msg.vif, sink, msg.rewritten)
            dp.captures.add(c)
        elif isinstance(msg, RemoveCapture):
            gone = self.captures.pop(msg.id, None)
            if gone is not None:
                dp.captures.remove(gone)
                gone.sink.close()
        elif isinstance(msg, StatsRequest):
            return self.stats()
        elif isinstance(msg, Sync):
            return None
        else:
            raise RuntimeError("worker %d: unknown message %s" % (self.setup.writer, type(msg).__name__))
        return None

    def stats(self) -> WorkerStats:
        return stats_of(self.dp, self.shell, self.ports.in_use, {i: (c.sent, c.lost) for i, c in self.captures.items()})

    def stop(self) -> None:
        self.shell.stop()
        for c in self.captures.values():
            c.sink.close()
        self.table.close()
        self.counts.close()


async def serve(fd: int) -> None:
    sock = socket.socket(fileno=fd)
    reader, out = await asyncio.open_connection(sock=sock, limit=MAX_MESSAGE)
    loop = asyncio.get_running_loop()
    worker: Worker | None = None
    aging: asyncio.Task[None] | None = None
    try:
        while True:
            try:
                framed = await read_message(reader)
            except EOFError:
                return  # the agent is gone or stopped us
            seq: int = framed[0]  # type: ignore[index]
            msg: object = framed[1]  # type: ignore[index]
            try:
                if worker is None:
                    if not isinstance(msg, Setup):
                        raise RuntimeError("the first message must be Setup, not %s" % type(msg).__name__)
                    logging.getLogger().setLevel(msg.log_level)
                    try:
                        worker = Worker(msg, out)
                    except (OSError, TableFormatError) as e:
                        raise RuntimeError("worker %d cannot map the flow table %s: %s" % (msg.writer, msg.table, e)) from None
                    try:
                        worker.start(loop)
                    except OSError as e:
                        raise RuntimeError("worker %d cannot bind its node queue %d (%s)" % (msg.writer, msg.node_queue, e)) from None
                    aging = loop.create_task(age_forever(worker.dp, functools.partial(float, msg.flow_cache_timeout)))
                    gc.freeze()
                    value: object = None
                else:
                    value = worker.apply(msg)
            except Exception as e:  # said to the agent, which logs it or refuses what it was doing
                if not isinstance(e, RuntimeError):
                    log.exception("dataplane worker: %s failed", type(msg).__name__)
                out.write(encode(Reply(seq, None, str(e) or type(e).__name__)))
            else:
                out.write(encode(Reply(seq, value)))
            await out.drain()
    finally:
        if aging is not None:
            aging.cancel()
        if worker is not None:
            worker.stop()


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the agent stops us, by closing the socket
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s dataplane worker %(process)d: %(message)s")
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        print("usage: python -m dataplane.linux.worker FD (started by the vrouter agent)", file=sys.stderr)
        return 2
    run(serve(int(sys.argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
