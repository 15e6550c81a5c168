"""A consumer of a BPF ring buffer (BPF_MAP_TYPE_RINGBUF), over its memory, as libbpf's
``ring_buffer__consume`` reads it: the kernel's program writes records, this reads them in order
and moves the consumer position on.  The map's descriptor is readable (epoll) while records wait,
so an event loop can watch it.

Layout (kernel/bpf/ringbuf.c): page 0, the consumer position (the reader writes it); page 1, the
producer position; then the data, ``size`` bytes mapped twice in a row so that a record never
wraps.  Each record: a 32-bit length (bit 31: still being written, bit 30: discarded), a 32-bit
page offset, then the data, padded to 8 bytes.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Callable

from flows import bpfmap

BUSY = 1 << 31
DISCARD = 1 << 30
HEADER = 8
_U64 = struct.Struct("=Q")
_U32 = struct.Struct("=I")


class RingBuffer:
    def __init__(self, fd: int) -> None:
        """``fd``: the ring's map (kept open by the caller while this reads it)."""
        info = bpfmap.map_info(fd)
        if info.type != bpfmap.BPF_MAP_TYPE_RINGBUF:
            raise ValueError("map %d (%s) is not a ring buffer" % (info.id, info.name))
        self.fd = fd
        self.size = info.max_entries
        self.mask = self.size - 1
        page = mmap.PAGESIZE
        self._consumer = mmap.mmap(fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._data = mmap.mmap(fd, page + 2 * self.size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)

    def drain(self, handle: Callable[[bytes], None], limit: int = 4096) -> int:
        """Hand each waiting record's data to ``handle``, oldest first, at most ``limit``; how many."""
        cons = _U64.unpack_from(self._consumer, 0)[0]
        prod = _U64.unpack_from(self._data, 0)[0]
        n = 0
        data, base = self._data, mmap.PAGESIZE
        while cons < prod and n < limit:
            off = base + (cons & self.mask)
            length = _U32.unpack_from(data, off)[0]
            if length & BUSY:
                break
            size = length & ~(BUSY | DISCARD)
            if not length & DISCARD:
                handle(data[off + HEADER : off + HEADER + size])
                n += 1
            cons += (HEADER + size + 7) & ~7
            _U64.pack_into(self._consumer, 0, cons)  # x86: this store follows the reads above
        return n

    def close(self) -> None:
        self._consumer.close()
        self._data.close()
