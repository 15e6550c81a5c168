"""The thin I/O shell: read packets from NFQUEUE, ask the Dataplane, give the verdict.

Runs inside the agent's asyncio loop: the queue's netlink socket is watched
for readability and drained without blocking.
"""

from __future__ import annotations

import asyncio
import logging
import time

from netfilterqueue import COPY_PACKET, NetfilterQueue

from dataplane.forwarding import Dataplane

log = logging.getLogger("vrouter.dataplane")

QUEUE_MAXLEN = 4096  # packets the kernel holds for us before it drops (fail closed)


class QueueShell:
    def __init__(self, dataplane: Dataplane, queue_num: int = 0) -> None:
        self.dataplane = dataplane
        self.queue_num = queue_num
        self.nfq = NetfilterQueue()
        self.errors = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    def _handle(self, pkt) -> None:  # noqa: ANN001 - netfilterqueue.Packet
        try:
            v = self.dataplane.process(pkt.get_payload(), pkt.indev, time.time_ns())
        except Exception:  # a bug must not stop the dataplane: drop the packet and say so once
            self.errors += 1
            if self.errors == 1 or self.errors % 10000 == 0:
                log.exception("dataplane error on a packet (%d so far); packet dropped", self.errors)
            pkt.drop()
            return
        if not v.accept:
            pkt.drop()
            return
        if v.payload is not None:
            pkt.set_payload(v.payload)
        pkt.accept()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.nfq.bind(self.queue_num, self._handle, max_len=QUEUE_MAXLEN, mode=COPY_PACKET, range=0xFFFF)
        self._loop = loop
        loop.add_reader(self.nfq.get_fd(), self._drain)
        log.info("reading NFQUEUE %d", self.queue_num)

    def _drain(self) -> None:
        self.nfq.run(block=False)

    def stop(self) -> None:
        if self._loop is not None:
            try:
                self._loop.remove_reader(self.nfq.get_fd())
            except (ValueError, OSError):
                pass
            self._loop = None
        self.nfq.unbind()
