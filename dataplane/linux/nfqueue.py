"""The thin I/O shell: read packets from NFQUEUE, ask the Dataplane, give the verdict.

Runs inside the agent's asyncio loop: the queue's netlink socket is watched
for readability and drained without blocking.  The binding reads and parses
the packets; the verdicts of one drain go back in one write
(``dataplane.linux.verdicts``), not in a system call each.
"""

from __future__ import annotations

import asyncio
import logging
import time

from netfilterqueue import COPY_PACKET, NetfilterQueue, Packet

from dataplane.core.dataplane import Dataplane
from dataplane.linux.verdicts import NF_ACCEPT, NF_DROP, VerdictWriter

log = logging.getLogger("vrouter.dataplane")

QUEUE_MAXLEN = 4096  # packets the kernel holds for us before it drops (fail closed)


class QueueShell:
    def __init__(self, dataplane: Dataplane, queue_num: int = 0) -> None:
        self.dataplane = dataplane
        self.queue_num = queue_num
        self.nfq = NetfilterQueue()
        self.errors = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self.verdicts: VerdictWriter | None = None

    def _handle(self, pkt: Packet) -> None:
        verdicts = self.verdicts
        assert verdicts is not None
        try:
            v = self.dataplane.process(pkt.get_payload(), pkt.indev, time.time_ns())
        except Exception:  # a bug must not stop the dataplane: drop the packet and say so once
            self.errors += 1
            if self.errors == 1 or self.errors % 10000 == 0:
                log.exception("dataplane error on a packet (%d so far); packet dropped", self.errors)
            verdicts.verdict(pkt.id, NF_DROP)
            return
        if not v.accept:
            verdicts.verdict(pkt.id, NF_DROP)
        elif v.payload is None:
            verdicts.accept(pkt.id)
        else:
            verdicts.verdict(pkt.id, NF_ACCEPT, v.payload)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.nfq.bind(self.queue_num, self._handle, max_len=QUEUE_MAXLEN, mode=COPY_PACKET, range=0xFFFF)
        self.verdicts = VerdictWriter(self.nfq.get_fd(), self.queue_num)
        self._loop = loop
        loop.add_reader(self.nfq.get_fd(), self._drain)
        log.info("reading NFQUEUE %d", self.queue_num)

    def _drain(self) -> None:
        try:
            self.nfq.run(block=False)
        finally:
            assert self.verdicts is not None
            self.verdicts.flush()

    def stop(self) -> None:
        if self._loop is not None:
            try:
                self._loop.remove_reader(self.nfq.get_fd())
            except (ValueError, OSError):
                pass
            self._loop = None
        if self.verdicts is not None:
            self.verdicts.flush()
        self.nfq.unbind()
