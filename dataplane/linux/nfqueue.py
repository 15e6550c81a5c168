"""The thin I/O shell: read packets from NFQUEUE, ask the Dataplane, give the verdict.

Runs inside the agent's asyncio loop, and in each dataplane worker's
(``dataplane.linux.worker``).  There are queues per VM (and one for the node:
the fabric's replies, taps not plugged), each its own netlink socket, watched
for readability; a shell reads those of its worker.  The binding reads and parses the packets; the
verdicts of one drain go back in one write (``dataplane.linux.verdicts``), not
in a system call each.

Fairness: a drain of one queue takes at most ``DRAIN_BUDGET`` packets, then
gives the loop back, so that every other queue with packets waiting is drained
before this one again: a VM flooding its queue takes its share of the loop and
no more, and the kernel drops what overflows its queue (its length is the
VM's limit of queued packets), counted for that queue.  The budget is kept by
the packet callback, which ends the binding's read loop by raising after the
packet it has just given a verdict (one packet is one netlink message, so
nothing read is left without a verdict).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable

from netfilterqueue import COPY_PACKET, NetfilterQueue, Packet

from dataplane.core.dataplane import Dataplane, Verdict
from dataplane.linux.verdicts import NF_ACCEPT, NF_DROP, VerdictWriter

log = logging.getLogger("vrouter.dataplane")

QUEUE_MAXLEN = 4096  # packets the kernel holds for the node's queue before it drops (fail closed)
Process = Callable[[bytes, int, int], Verdict]  # (packet, ifindex it came in on, now) -> verdict
HOLD_LINGER = 0.002  # s from a drain that emptied a queue to the release of the flows it held (ebpf)
# ... and at most this long a hold lasts while the queue never empties: a flood of one flow that the
# engine cannot keep up with would otherwise keep the flow in the engine for good (its packets keep
# the queue full), where the kernel would forward it; a few may then overtake (docs/datapath.md)
HOLD_MAX = 0.05
DRAIN_BUDGET = 128  # packets one drain of one queue takes before the others get their turn
NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_NO_ENOBUFS = 5


def no_enobufs(fd: int) -> None:
    """Have the kernel drop, and count, what does not fit in the socket's receive buffer without
    telling us with ENOBUFS.  The error is a socket error: epoll reports it as EPOLLERR, and libuv
    (uvloop, the agent's and the workers' loop) takes an EPOLLERR on a polled descriptor as fatal
    and stops polling it for good.  A queue whose socket once overflowed was then never read again:
    its packets overflowed the socket (``user_dropped``) while the loop idled (the stuck queue of
    docs/dataplane-workers.md).  The drops stay counted by the kernel (/proc's ``user_dropped``)."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER, fileno=os.dup(fd)) as s:
        s.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)


class _Enough(Exception):
    """This drain has had its budget."""


class _Fixed:
    """A queue's own per-packet function (the tunnel queue's), in the place of the dataplane's."""

    __slots__ = ("process",)

    def __init__(self, process: Process) -> None:
        self.process = process


class _Queue:
    """One NFQUEUE queue: its binding, its verdict writer, its share of each turn."""

    def __init__(self, shell: QueueShell, num: int, max_len: int, process: Process | None = None) -> None:
        self.shell = shell
        # what gives the verdicts: the dataplane, whose ``process`` a capture may replace (so it is
        # looked up per packet, as before there were other kinds of queue), or ``process`` itself
        self.source: Dataplane | _Fixed = shell.dataplane if process is None else _Fixed(process)
        self.num = num
        self.nfq = NetfilterQueue()
        self.nfq.bind(num, self.handle, max_len=max_len, mode=COPY_PACKET, range=0xFFFF)
        no_enobufs(self.nfq.get_fd())
        self.verdicts = VerdictWriter(self.nfq.get_fd(), num)
        self.left = DRAIN_BUDGET
        self.held: list[tuple[int, int]] = []  # (index, generation) of flows Held until this queue is empty
        self._release: asyncio.TimerHandle | None = None
        self._holding_since = 0.0  # when the first of ``held`` was set up

    def handle(self, pkt: Packet) -> None:
        verdicts = self.verdicts
        try:
            v = self.source.process(pkt.get_payload(), pkt.indev, time.time_ns())
        except Exception:  # a bug must not stop the dataplane: drop the packet and say so once
            self.shell.failed()
            verdicts.verdict(pkt.id, NF_DROP)
        else:
            if not v.accept:
                verdicts.verdict(pkt.id, NF_DROP)
            elif v.payload is None:
                verdicts.accept(pkt.id)
            else:
                verdicts.verdict(pkt.id, NF_ACCEPT, v.payload)
        self.left -= 1
        if not self.left:
            raise _Enough

    def drain(self) -> None:
        self._run()
        if self.held and self._release is None:  # ebpf: flows it holds, to release once all is out
            self._holding_since = time.monotonic()
            self._release = self.shell.loop.call_later(HOLD_LINGER, self._let_go)

    def _run(self) -> bool:
        """Handle what waits, up to the budget, and send the verdicts; whether the queue emptied."""
        self.left = DRAIN_BUDGET
        self.shell.dataplane.flow_setup.held = self.held  # the flows set up from this queue's packets
        try:
            self.nfq.run(block=False)
            return True
        except _Enough:
            return False  # the rest waits in the socket; the loop calls again once the others had a turn
        finally:
            self.verdicts.flush()

    def _let_go(self) -> None:
        """Held flows go to the kernel once every packet the queue had of them is out, and had
        ``HOLD_LINGER`` to leave this CPU's backlog (the kernel may forward the next ones on
        another CPU, and they would overtake): what came meanwhile is handled first; or, when the
        queue has not emptied for ``HOLD_MAX``, at once."""
        self._release = None
        if not self._run() and time.monotonic() - self._holding_since < HOLD_MAX:
            self._release = self.shell.loop.call_later(HOLD_LINGER, self._let_go)
            return
        release = self.shell.dataplane.table.release
        for index, gen in self.held:
            release(index, gen)
        self.held.clear()

    def close(self) -> None:
        self.verdicts.flush()
        self.nfq.unbind()


class QueueShell:
    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None
        return self._loop

    def __init__(self, dataplane: Dataplane, queue_num: int = 0) -> None:
        self.dataplane = dataplane
        self.queue_num = queue_num  # the node's queue
        self.queues: dict[int, _Queue] = {}
        self.errors = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop, max_len: int = QUEUE_MAXLEN) -> None:
        """Read the node's queue (OSError if it cannot be bound)."""
        self._loop = loop
        self.add(self.queue_num, max_len)
        log.info("reading NFQUEUE %d", self.queue_num)

    def add(self, num: int, max_len: int, process: Process | None = None) -> None:
        """Read queue ``num`` too, with ``process`` for its packets (default: the dataplane's
        per-packet path); OSError if it cannot be bound: another process has it."""
        if num in self.queues:
            return
        assert self._loop is not None
        q = _Queue(self, num, max_len, process)
        self.queues[num] = q
        self._loop.add_reader(q.nfq.get_fd(), q.drain)

    def remove(self, num: int) -> None:
        q = self.queues.pop(num, None)
        if q is None:
            return
        if self._loop is not None:
            try:
                self._loop.remove_reader(q.nfq.get_fd())
            except (ValueError, OSError):
                pass
        q.close()

    def failed(self) -> None:
        self.errors += 1
        if self.errors == 1 or self.errors % 10000 == 0:
            log.exception("dataplane error on a packet (%d so far); packet dropped", self.errors)

    @property
    def verdict_writes(self) -> int:
        return sum(q.verdicts.writes for q in self.queues.values())

    @property
    def verdict_errors(self) -> int:
        return sum(q.verdicts.errors for q in self.queues.values())

    def stop(self) -> None:
        for num in list(self.queues):
            self.remove(num)
        self._loop = None
