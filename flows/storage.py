"""Where a flow table's bytes live: a shared-memory file (nfqueue datapath), or the values of the
ebpf datapath's BPF array map, whose id a small file in the same place names (``MAP_POINTER``).
Both are mapped the same way and hold the same bytes (flows/layout.py)."""

from __future__ import annotations

import mmap
import os
import struct
import time

from flows import bpfmap
from flows.layout import HEADER, HEADER_SIZE, MAP_POINTER, OFF_CLOCK, OFF_FLAGS, OFF_OFLOW_NEXT, OFF_WRITERS, RECORD_SIZE, U32


class TableFormatError(Exception):
    """The file is not a flow table of this version."""


def set_clock(buf: mmap.mmap | bytearray) -> None:
    """Write CLOCK_REALTIME minus CLOCK_MONOTONIC into the header, for the kernel's stamps (the
    agent does again now and then, so that a stepped clock is followed)."""
    struct.pack_into("<q", buf, OFF_CLOCK, time.time_ns() - time.monotonic_ns())


def write_map_pointer(path: str, map_id: int) -> None:
    """Where nfqueue mode keeps the table's file, the id of the ebpf datapath's map."""
    tmp = path + ".new"
    with open(tmp, "wb") as f:
        f.write(MAP_POINTER + b"%d\n" % map_id)
    os.replace(tmp, path)


def map_file(path: str, writable: bool) -> mmap.mmap:
    """The table at ``path`` mapped: the file itself, or the BPF map whose id it holds."""
    fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        head = os.pread(fd, 32, 0)
        if head.startswith(MAP_POINTER):
            return _map_bpf(path, head, writable)
        if size < HEADER_SIZE:
            raise TableFormatError("%s is too short to be a flow table" % path)
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        return mmap.mmap(fd, size, mmap.MAP_SHARED, prot)
    finally:
        os.close(fd)


def _map_bpf(path: str, head: bytes, writable: bool) -> mmap.mmap:
    try:
        map_id = int(head[len(MAP_POINTER) :].split(b"\n", 1)[0])
    except ValueError:
        raise TableFormatError("%s names no BPF map" % path) from None
    try:
        fd = bpfmap.map_fd_by_id(map_id)  # a read-only descriptor of a map cannot be mapped: PROT_READ does it
    except OSError as e:
        raise TableFormatError("%s names BPF map %d, which cannot be opened (%s): is the agent running?" % (path, map_id, e.strerror)) from None
    try:
        info = bpfmap.map_info(fd)
        if info.name != "vr_flows" or info.value_size != RECORD_SIZE or info.type != bpfmap.BPF_MAP_TYPE_ARRAY:
            raise TableFormatError("BPF map %d (%s) is not a flow table: the agent that made %s has gone" % (map_id, info.name, path))
        return bpfmap.map_memory(fd, info.max_entries * RECORD_SIZE, writable)
    finally:
        os.close(fd)


_ACTIVE_BYTE = bytes(b & 1 for b in range(256))  # translate: the ACTIVE bit of a flags byte


def clear_writer(buf: mmap.mmap | bytearray, writer: int) -> int:
    """Clear every entry of ``writer`` (flags and overflow links: its chain heads are in its own
    entries too); return how many were active.  Strided copies, not a loop over the entries."""
    _magic, _version, _rec, _bucket, entries, overflow, _pid = HEADER.unpack_from(buf, 0)
    n = U32.unpack_from(buf, OFF_WRITERS)[0] or 1
    view = memoryview(buf)
    try:
        first, step = HEADER_SIZE + writer * RECORD_SIZE, n * RECORD_SIZE
        end = HEADER_SIZE + (entries + overflow) * RECORD_SIZE
        count = len(range(first, end, step))
        cleared = bytes(view[first + OFF_FLAGS : end : step]).translate(_ACTIVE_BYTE).count(1)
        zeros = bytes(count)
        for off in (OFF_FLAGS, OFF_FLAGS + 1, *range(OFF_OFLOW_NEXT, OFF_OFLOW_NEXT + 4)):
            view[first + off : end : step] = zeros
    finally:
        view.release()
    return cleared
