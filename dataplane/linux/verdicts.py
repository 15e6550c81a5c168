"""Verdicts for NFQUEUE packets, written to the queue's netlink socket several at a time.

The ``netfilterqueue`` binding gives each packet's verdict in a system call of its own.  This
module writes them instead, in the nfnetlink_queue protocol the binding's library speaks, on the
binding's own socket (the kernel takes verdicts only from the socket bound to the queue), and
gathers the verdicts of one drain of the socket into one write:

* a run of packets accepted unchanged (VM-to-VM forwarding) becomes one
  ``NFQNL_MSG_VERDICT_BATCH``: accept everything still queued up to this packet id;
* a packet accepted with a new payload (NAT) or dropped gets its own ``NFQNL_MSG_VERDICT``,
  in the same write.

Order: the messages are written in the order the packets came, and the kernel handles them in
that order, so a batch verdict never takes a packet whose own verdict comes later.  Every packet
with a lower id than a batch's has been seen (the queue hands them out in order), so a batch
accepts only packets of its run.  At most ``limit`` verdicts wait: a drain of a full queue does
not hold back thousands of packets (they count against the queue's length).

What it buys is measured by ``benchmarks/run.py`` (see benchmarks/README.md).
"""

from __future__ import annotations

import logging
import os
import socket
import struct
from collections.abc import Callable

log = logging.getLogger("vrouter.dataplane")

NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_VERDICT_BATCH = 3
NFQA_VERDICT_HDR = 2
NFQA_PAYLOAD = 10
NLM_F_REQUEST = 1
NF_DROP = 0
NF_ACCEPT = 1

# nlmsghdr (len, type, flags, seq, pid), nfgenmsg (family, version, res_id: the queue, big-endian),
# then the NFQA_VERDICT_HDR attribute (len, type, verdict and packet id, big-endian)
_MSG = struct.Struct("=IHHIIBBHHH")
_VERDICT_HDR = struct.Struct("!II")
_ATTR = struct.Struct("=HH")
_HEAD_LEN = _MSG.size + _VERDICT_HDR.size  # 32: a verdict without payload
_LEN = struct.Struct("=I")
_ID = struct.Struct("!I")
_PAD = (b"", b"\0", b"\0\0", b"\0\0\0")

LIMIT = 64  # verdicts that may wait for the end of a drain
MAX_BYTES = 1 << 16  # ... or this many bytes of messages


def verdict_message(queue: int, packet_id: int, verdict: int, payload: bytes | None = None, batch: bool = False) -> bytes:
    """One netlink message: a packet's verdict (with its new payload, if any), or with ``batch``
    the verdict of every packet still queued up to ``packet_id``."""
    kind = (NFNL_SUBSYS_QUEUE << 8) | (NFQNL_MSG_VERDICT_BATCH if batch else NFQNL_MSG_VERDICT)
    tail = b""
    if payload is not None:
        alen = _ATTR.size + len(payload)
        tail = _ATTR.pack(alen, NFQA_PAYLOAD) + payload + b"\0" * (-alen % 4)
    head = _MSG.pack(_HEAD_LEN + len(tail), kind, NLM_F_REQUEST, 0, 0, socket.AF_UNSPEC, 0, socket.htons(queue), 12, NFQA_VERDICT_HDR)
    return head + _VERDICT_HDR.pack(verdict, packet_id) + tail


class VerdictWriter:
    """Collects one drain's verdicts and writes them to ``fd`` (the queue's netlink socket) at
    once; ``flush`` at the end of each drain.  ``write`` is for tests.

    The messages are built in one buffer from templates made once (``verdict_message``'s
    bytes): per packet, the varying fields are packed in place."""

    def __init__(self, fd: int, queue: int, limit: int = LIMIT, write: Callable[[int, bytes | bytearray], int] = os.write) -> None:
        self.fd = fd
        self.queue = queue
        self.limit = limit
        self._write = write
        self._buf = bytearray()
        self._run = -1  # the last packet id of the open run of unchanged accepts, or -1
        self._waiting = 0
        self._single = verdict_message(queue, 0, NF_DROP)
        self._batch = verdict_message(queue, 0, NF_ACCEPT, batch=True)
        self._with_payload = verdict_message(queue, 0, NF_ACCEPT, b"")  # + the payload, padded
        self.writes = 0
        self.errors = 0

    def accept(self, packet_id: int) -> None:
        """Accept a packet unchanged: it joins the open run."""
        self._run = packet_id
        self._waiting += 1
        if self._waiting >= self.limit:
            self.flush()

    def _close_run(self) -> None:
        buf = self._buf
        off = len(buf)
        buf += self._batch
        _ID.pack_into(buf, off + 28, self._run)
        self._run = -1

    def verdict(self, packet_id: int, verdict: int, payload: bytes | None = None) -> None:
        """Accept with a new payload, or drop: a message of its own, after the open run's."""
        if self._run >= 0:
            self._close_run()
        buf = self._buf
        off = len(buf)
        if payload is None:
            buf += self._single
        else:
            n = len(payload)
            buf += self._with_payload
            buf += payload
            buf += _PAD[-n % 4]
            _LEN.pack_into(buf, off, 36 + n + (-n % 4))
            _ATTR.pack_into(buf, off + 32, 4 + n, NFQA_PAYLOAD)
        _VERDICT_HDR.pack_into(buf, off + 24, verdict, packet_id)
        self._waiting += 1
        if self._waiting >= self.limit or len(buf) >= MAX_BYTES:
            self.flush()

    def flush(self) -> None:
        if self._run >= 0:
            self._close_run()
        if not self._buf:
            return
        self._waiting = 0
        try:
            self._write(self.fd, self._buf)
            self.writes += 1
        except OSError as e:
            # the packets stay queued until the queue is unbound, then the kernel drops them
            self.errors += 1
            if self.errors == 1 or self.errors % 10000 == 0:
                log.error("NFQUEUE verdicts could not be written (%d times so far): %s", self.errors, e)
        finally:
            self._buf.clear()
