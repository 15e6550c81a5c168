"""The hashed flow table: fixed array of 128-byte records in buckets of 4, plus an overflow area.

Pure data structure over a writable buffer (an mmap of a shared-memory file,
or a bytearray in unit tests).  A key hashes (CRC32) to a bucket of
``BUCKET_SIZE`` entries in the main area; when the bucket is full the entry
goes to the overflow area and is linked into the bucket's overflow chain.
Forward and reverse flows are set up and removed together, each holding the
other's index.  Every reuse of a slot bumps its generation id, so a reader
holding an old (index, generation) never takes a new flow for the old one.

Writers.  The table may be shared by several writers (the dataplane's
workers, one process each), and the rule is one writer per entry: **entry i
is written only by writer i % writers** (the count is in the header).  A
writer places its flows only in its own entries of a bucket (with two
writers, ways 0 and 2 or 1 and 3; with four, one way each) and of the
overflow area, keeps the head of its own overflow chain of a bucket in the
first entry of the bucket it owns, and looks up, ages and removes only its
own entries: both halves of a pair are always one writer's, because both
directions of a flow reach the worker that owns it.  Readers (``flow -l``)
see one table and follow every writer's chain.  At most ``MAX_WRITERS``, so
that every writer owns a way of every bucket.  A writer that opens the file
again (a worker restarted) clears its own entries first: their per-flow state
died with the process, so they are flushed, never left half owned.

Who writes which field in the ``ebpf`` datapath (dataplane/ebpf/vrouter.bpf.c), where the table
is a BPF array map that the kernel's program reads while the writers write it: the writers alone
create, change and remove entries (a record first, its flags last: x86 keeps the order of stores).
The program adds to packets and bytes (atomic adds), ORs the TCP flags it sees into the word at
52 (atomic; generation and VRF unchanged), stores last used (an aligned 8-byte store) and clears
New flow on a pair's first answer (an atomic AND of the word at 44; the writers' plain writes of
the flags set or clear other bits only).  A writer's ``hit`` (for a packet the program handed up)
writes the counters plainly: a packet the program counts on the same entry at that instant can be
lost from the count.  The program checks an entry's generation and flags again before it acts.
"""

from __future__ import annotations

import mmap
import os
import re
import struct
import time
import zlib
from array import array
from collections.abc import Iterator
from typing import NamedTuple

from flows.entry import FlowEntry
from flows.layout import (
    BODY,
    BUCKET_SIZE,
    COUNTERS,
    F1_HELD,
    F1_REVERSE,
    F1_SLOW,
    F_ACTIVE,
    F_NEW_FLOW,
    F_RFLOW_VALID,
    HEADER,
    HEADER_SIZE,
    KEY,
    KEY_LEN,
    MAGIC,
    MAX_WRITERS,
    OFF_FLAGS,
    OFF_FLAGS1,
    OFF_GEN,
    OFF_LAST,
    OFF_OFLOW_NEXT,
    OFF_PACKETS,
    OFF_RINDEX,
    OFF_TCPFLAGS,
    OFF_VIF,
    OFF_WRITERS,
    RECORD_SIZE,
    U16,
    U32,
    U64,
    VERSION,
    Action,
    DropReason,
)
from flows.storage import TableFormatError, clear_writer, map_file, set_clock

BUCKET_BYTES = BUCKET_SIZE * RECORD_SIZE
_VIF_FLAGS1 = struct.Struct("<HH")  # source vif and flags1, at OFF_VIF
_PAIR_FLAGS = F_ACTIVE | F_RFLOW_VALID | F_NEW_FLOW


def _tag(h: int) -> int:
    """An entry's tag from its key's CRC-32: the top 8 bits, made odd (0 means a free entry)."""
    return (h >> 24) | 1


_ACTIVE_BYTE = bytes(b & 1 for b in range(256))  # translate: the ACTIVE bit of a flags byte, or a tag in use (odd)
NOT_MINE = 2  # the tag of another writer's entry: even, so no lookup matches it, and not 0 (free)
_ONE = re.compile(b"\x01")

DEFAULT_ENTRIES = 524_288
DEFAULT_OVERFLOW = DEFAULT_ENTRIES // 5


class TableFull(Exception):
    """No free slot for a new flow (its bucket and the overflow area are full)."""


class FlowSpec(NamedTuple):  # a tuple: two are made for every flow set up
    """What a new flow entry holds besides its key."""

    action: Action
    flags: int = 0  # Flag bits
    vrf: int = 0
    dvrf: int = 0
    nat_sport: int = 0
    src_nh: int = 0
    vif: int = 0
    drop_reason: DropReason = DropReason.NONE


def table_size(entries: int, overflow: int) -> int:
    return HEADER_SIZE + (entries + overflow) * RECORD_SIZE


class FlowTable:
    """A flow table over ``buf``; ``writable`` tables keep the free lists the dataplane needs."""

    def __init__(self, buf: mmap.mmap | bytearray, writable: bool, writer: int = 0) -> None:
        """``writer``: which of the header's writers this one is (writable tables only)."""
        magic, version, rec, bucket, entries, overflow, _pid = HEADER.unpack_from(buf, 0)
        if magic != MAGIC or version != VERSION or rec != RECORD_SIZE or bucket != BUCKET_SIZE:
            raise TableFormatError("not a flow table of this version (magic %r, version %d)" % (magic, version))
        self.writers = U32.unpack_from(buf, OFF_WRITERS)[0] or 1
        if not 0 <= writer < self.writers or self.writers > MAX_WRITERS:
            raise TableFormatError("writer %d of a table for %d writers (at most %d)" % (writer, self.writers, MAX_WRITERS))
        self.writer = writer
        self.buf = buf
        self.view = memoryview(buf)
        self.entries = entries
        self.overflow = overflow
        self.capacity = entries + overflow
        self.nbuckets = entries // BUCKET_SIZE
        self.writable = writable
        self.active = 0
        self._free_overflow: list[int] = []
        # The writer's private index: one byte per entry, 0 when the entry is free, else 8 bits of
        # its key's hash (odd, so never 0).  A lookup reads the bucket's 4 tags (from 640 KB that
        # stay in the CPU's caches) and compares the key of the one entry whose tag matches,
        # instead of reading 512 bytes of records: this keeps a lookup in a full table close to
        # its cost in an empty one.
        self._tags = bytearray(self.capacity if writable else 0)
        # ... and a private copy of the overflow chains (index + 1, 0 ends a chain): the head of
        # each bucket's chain and the next link of each overflow entry.  The records keep their
        # links for the readers; the writer walks its copy, so a flow in the overflow area (11%
        # of them in a table 76% full) and a miss read no record but the one that matches.
        # The copy is doubly linked, and each overflow entry knows its bucket, so that removing
        # one unlinks it without walking its chain or hashing its key again.
        self._head = array("I", bytes(4 * self.nbuckets if writable else 0))
        self._next = array("I", bytes(4 * overflow if writable else 0))
        self._prev = array("I", bytes(4 * overflow if writable else 0))  # 0: the chain's first
        self._bucket_of = array("I", bytes(4 * overflow if writable else 0))
        self.active_known = False  # the tags hold this writer's entries (set once they are read from the records)
        if writable:
            _index_own_entries(self)

    # -- construction -------------------------------------------------------------------------

    @staticmethod
    def new_buffer(entries: int, overflow: int, writers: int = 1) -> bytearray:
        """An empty table in memory, for tests and tools."""
        entries = round_entries(entries)
        buf = bytearray(table_size(entries, overflow))
        HEADER.pack_into(buf, 0, MAGIC, VERSION, RECORD_SIZE, BUCKET_SIZE, entries, overflow, 0)
        U32.pack_into(buf, OFF_WRITERS, _writers(writers))
        return buf

    @classmethod
    def in_memory(cls, entries: int = 1024, overflow: int | None = None) -> FlowTable:
        if overflow is None:
            overflow = max(BUCKET_SIZE, entries // 5)
        return cls(cls.new_buffer(entries, overflow), writable=True)

    @classmethod
    def create_file(cls, path: str, entries: int = DEFAULT_ENTRIES, overflow: int | None = None, writers: int = 1) -> FlowTable:
        """Create (or replace) the shared-memory file and map it read-write, as writer 0 of
        ``writers``; the whole table is allocated at once, so a full machine fails here and
        not at the 100,000th flow."""
        writers = _writers(writers)
        entries = round_entries(entries)
        if overflow is None:
            overflow = entries // 5
        size = table_size(entries, overflow)
        tmp = path + ".new"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.posix_fallocate(fd, 0, size)
            mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        HEADER.pack_into(mm, 0, MAGIC, VERSION, RECORD_SIZE, BUCKET_SIZE, entries, overflow, os.getpid())
        U32.pack_into(mm, OFF_WRITERS, writers)
        os.replace(tmp, path)
        return cls(mm, writable=True)

    @classmethod
    def open_writer(cls, path: str, writer: int) -> FlowTable:
        """Map an agent's table read-write as one of its writers (a dataplane worker).  What the
        file holds in this writer's entries (a worker that died had them) is cleared first: the
        per-flow state of those flows went with the process.  TableFormatError if the file is
        not a table for this writer."""
        mm = map_file(path, writable=True)
        try:
            clear_writer(mm, writer)
            return cls(mm, writable=True, writer=writer)
        except TableFormatError:
            mm.close()
            raise

    @classmethod
    def open_readonly(cls, path: str) -> FlowTable:
        """Map an agent's table read-only, as ``flow -l`` does while the dataplane writes."""
        mm = map_file(path, writable=False)
        table = cls(mm, writable=False)
        if len(mm) < table_size(table.entries, table.overflow):
            raise TableFormatError("%s is shorter than its header says" % path)
        return table

    @classmethod
    def in_map(cls, mm: mmap.mmap, entries: int, overflow: int, writers: int = 1) -> FlowTable:
        """A new, empty table in the memory of the ebpf datapath's map (``entries`` already
        rounded, the map exactly ``table_size`` bytes), as writer 0 of ``writers``."""
        writers = _writers(writers)
        mm[: len(mm)] = bytes(len(mm))
        HEADER.pack_into(mm, 0, MAGIC, VERSION, RECORD_SIZE, BUCKET_SIZE, entries, overflow, os.getpid())
        U32.pack_into(mm, OFF_WRITERS, writers)
        set_clock(mm)
        return cls(mm, writable=True)

    def close(self) -> None:
        self.view.release()
        if isinstance(self.buf, mmap.mmap):
            self.buf.close()

    # -- lookups --------------------------------------------------------------------------------

    def flags(self, index: int) -> int:
        return U16.unpack_from(self.buf, HEADER_SIZE + index * RECORD_SIZE + OFF_FLAGS)[0]

    def set_flags(self, index: int, flags: int) -> None:
        U16.pack_into(self.buf, HEADER_SIZE + index * RECORD_SIZE + OFF_FLAGS, flags)

    def update_pair_flags(self, index: int, set_bits: int = 0, clear_bits: int = 0) -> None:
        """Set and clear flag bits on an entry and on its reverse, if it has one: the dataplane's
        pair-wide changes (first answer, closed) in one call."""
        buf = self.buf
        off = HEADER_SIZE + index * RECORD_SIZE
        flags = U16.unpack_from(buf, off + OFF_FLAGS)[0]
        U16.pack_into(buf, off + OFF_FLAGS, (flags | set_bits) & ~clear_bits)
        if flags & F_RFLOW_VALID:
            off = HEADER_SIZE + U32.unpack_from(buf, off + OFF_RINDEX)[0] * RECORD_SIZE
            U16.pack_into(buf, off + OFF_FLAGS, (U16.unpack_from(buf, off + OFF_FLAGS)[0] | set_bits) & ~clear_bits)

    def tcp_flags(self, index: int) -> int:  # the TCP flags seen on an entry so far
        return self.buf[HEADER_SIZE + index * RECORD_SIZE + OFF_TCPFLAGS]

    def set_tcp_flags(self, index: int, tcp_flags: int) -> None:
        self.buf[HEADER_SIZE + index * RECORD_SIZE + OFF_TCPFLAGS] = tcp_flags

    def _bucket(self, key: bytes) -> int:
        """The bucket a key hashes to (its entries start at bucket * BUCKET_SIZE)."""
        return zlib.crc32(key) % self.nbuckets

    def lookup(self, key: bytes) -> int:
        """The index of the active entry with ``key``, or -1: the bucket's tags, then its
        overflow chain (tags first there too).  A table opened read-only has no tags and scans."""
        if not self.writable:
            return self._scan(key)
        h = zlib.crc32(key)
        bucket = h % self.nbuckets
        first = bucket * BUCKET_SIZE
        tag = _tag(h)
        tags, buf = self._tags, self.buf
        i = tags.find(tag, first, first + BUCKET_SIZE)
        while i >= 0:
            off = HEADER_SIZE + i * RECORD_SIZE
            if buf[off : off + KEY_LEN] == key:
                return i
            i = tags.find(tag, i + 1, first + BUCKET_SIZE)
        nxt = self._head[bucket]
        if nxt:
            links, entries = self._next, self.entries
            while nxt:
                i = nxt - 1
                if tags[i] == tag:
                    off = HEADER_SIZE + i * RECORD_SIZE
                    if buf[off : off + KEY_LEN] == key:
                        return i
                nxt = links[i - entries]
        return -1

    def _scan(self, key: bytes) -> int:
        """A reader's lookup: the bucket's records, then each writer's overflow chain."""
        buf = self.buf
        first = self._bucket(key) * BUCKET_SIZE
        base = HEADER_SIZE + first * RECORD_SIZE
        end = base + BUCKET_BYTES
        pos = buf.find(key, base, end)
        while pos >= 0:
            rel = pos - base
            if not rel % RECORD_SIZE and buf[pos + OFF_FLAGS] & 1:
                return first + rel // RECORD_SIZE
            pos = buf.find(key, pos + 1, end)
        for head in range(first, first + min(self.writers, BUCKET_SIZE)):
            nxt = U32.unpack_from(buf, HEADER_SIZE + head * RECORD_SIZE + OFF_OFLOW_NEXT)[0]
            while nxt:
                i = nxt - 1
                off = HEADER_SIZE + i * RECORD_SIZE
                if buf[off : off + KEY_LEN] == key and buf[off + OFF_FLAGS] & 1:
                    return i
                nxt = U32.unpack_from(buf, off + OFF_OFLOW_NEXT)[0]
        return -1

    def _head_slot(self, bucket: int) -> int:
        """The entry that holds the head of this writer's overflow chain of ``bucket``: the first
        of the bucket's entries it owns."""
        first = bucket * BUCKET_SIZE
        return first + (self.writer - first) % self.writers

    def read(self, index: int) -> FlowEntry:
        off = HEADER_SIZE + index * RECORD_SIZE
        nh, src, dst, sport, dport, proto, family = KEY.unpack_from(self.buf, off)
        (flags, action, drop, rindex, gen, tcpf, vrf, dvrf, nsport, snh, pkts, byts, setup, last) = BODY.unpack_from(self.buf, off + KEY_LEN)
        vif, flags1 = _VIF_FLAGS1.unpack_from(self.buf, off + OFF_VIF)
        alen = 4 if family == 4 else 16
        return FlowEntry(
            index, nh, src[:alen], dst[:alen], sport, dport, proto, family, flags, action, drop, rindex, gen,
            tcpf, vrf, dvrf, nsport, snh, pkts, byts, setup, last, vif, flags1,
        )  # fmt: skip

    def generation(self, index: int) -> int:
        return self.buf[HEADER_SIZE + index * RECORD_SIZE + OFF_GEN]

    def active_indices(self) -> Iterator[int]:
        """Indices of active entries: a writer's own, from its tags (one byte an entry, in its
        cache); a reader's, from one strided copy of the records' flag bytes; searched at C speed."""
        if self.writable and self.active_known:
            yield from (m.start() for m in _ONE.finditer(self._tags.translate(_ACTIVE_BYTE)))
            return
        yield from self.every_active()

    def every_active(self) -> list[int]:
        """Indices of the active entries of every writer, from the records (as a reader sees them:
        what the introspect lists, in the agent whose own table is one writer's)."""
        low = bytes(self.view[HEADER_SIZE + OFF_FLAGS :: RECORD_SIZE])[: self.capacity]
        return [m.start() for m in _ONE.finditer(low.translate(_ACTIVE_BYTE))]

    def active_from(self, start: int, limit: int) -> list[int]:
        """The first ``limit`` indices of active entries from ``start`` on, every writer's (a page
        of the introspect's flow walk): the records' flag bytes read a window at a time, until it
        has them."""
        out: list[int] = []
        start = max(0, start)
        window = 8192
        while start < self.capacity and len(out) < limit:
            end = min(self.capacity, start + window)
            base = HEADER_SIZE + OFF_FLAGS
            low = self.view[base + start * RECORD_SIZE : base + end * RECORD_SIZE : RECORD_SIZE].tobytes()
            out += [start + m.start() for m in _ONE.finditer(low.translate(_ACTIVE_BYTE))][: limit - len(out)]
            start, window = end, window * 2
        return out

    def find(self, key: bytes) -> int:
        """The index of the active entry with ``key`` whichever writer made it, or -1."""
        return self._scan(key)

    def active_between(self, start: int, end: int) -> list[int]:
        """Indices of the active entries in [start, end): the walk of aging, a slice of the table
        at a time.  The writer reads its tags (one contiguous byte an entry, 0 when free); a
        reader copies the flag bytes out of the records."""
        if self.writable:  # its own entries in use: an odd tag
            return [start + m.start() for m in _ONE.finditer(self._tags[start:end].translate(_ACTIVE_BYTE))]
        base = HEADER_SIZE + OFF_FLAGS
        low = self.view[base + start * RECORD_SIZE : base + end * RECORD_SIZE : RECORD_SIZE].tobytes()
        return [start + m.start() for m in _ONE.finditer(low.translate(_ACTIVE_BYTE))]

    def dump(self) -> list[FlowEntry]:
        return [self.read(i) for i in self.active_indices()]

    # -- changes (dataplane only) ---------------------------------------------------------------

    def _place(self, key: bytes, spec: FlowSpec, rindex: int, now: int) -> int:
        """Write a new entry for ``key`` (not yet ACTIVE: the caller sets its flags last, so that
        readers never see half an entry) in a free slot of its bucket, else of the overflow area
        linked into the bucket's chain; return its index.  The key is hashed once, for both the
        bucket and the tag."""
        h = zlib.crc32(key)
        bucket = h % self.nbuckets
        first = bucket * BUCKET_SIZE
        i = self._tags.find(0, first, first + BUCKET_SIZE)
        if i < 0:
            if not self._free_overflow:
                raise TableFull()
            i = self._free_overflow.pop()
            # linked at the chain's head: in the records (for readers) and in the writer's copy
            head = self._head[bucket]
            U32.pack_into(self.buf, HEADER_SIZE + i * RECORD_SIZE + OFF_OFLOW_NEXT, head)
            U32.pack_into(self.buf, HEADER_SIZE + self._head_slot(bucket) * RECORD_SIZE + OFF_OFLOW_NEXT, i + 1)
            o = i - self.entries
            self._next[o] = head
            self._prev[o] = 0
            self._bucket_of[o] = bucket
            if head:
                self._prev[head - 1 - self.entries] = i + 1
            self._head[bucket] = i + 1
        off = HEADER_SIZE + i * RECORD_SIZE
        gen = (self.buf[off + OFF_GEN] + 1) & 0xFF
        self.buf[off : off + KEY_LEN] = key
        self._tags[i] = _tag(h)
        BODY.pack_into(
            self.buf, off + KEY_LEN, 0, spec.action, spec.drop_reason, rindex, gen, 0,
            spec.vrf, spec.dvrf, spec.nat_sport, spec.src_nh, 0, 0, now, now,
        )  # fmt: skip
        _VIF_FLAGS1.pack_into(self.buf, off + OFF_VIF, spec.vif, 0)
        return i

    def _release(self, index: int) -> None:
        off = HEADER_SIZE + index * RECORD_SIZE
        U16.pack_into(self.buf, off + OFF_FLAGS, 0)
        self._tags[index] = 0
        if index < self.entries:
            return
        entries, links, back = self.entries, self._next, self._prev
        o = index - entries
        prev, after = back[o], links[o]  # the entries (index + 1) before and after it; 0: none
        if prev:
            links[prev - 1 - entries] = after
            U32.pack_into(self.buf, HEADER_SIZE + (prev - 1) * RECORD_SIZE + OFF_OFLOW_NEXT, after)
        else:  # the chain's first: the bucket's head moves
            bucket = self._bucket_of[o]
            if self._head[bucket] == index + 1:  # always, for an entry this table linked
                self._head[bucket] = after
                U32.pack_into(self.buf, HEADER_SIZE + self._head_slot(bucket) * RECORD_SIZE + OFF_OFLOW_NEXT, after)
        if after:
            back[after - 1 - entries] = prev
        links[o] = back[o] = 0
        U32.pack_into(self.buf, off + OFF_OFLOW_NEXT, 0)
        self._free_overflow.append(index)

    def add_pair(self, fkey: bytes, fspec: FlowSpec, rkey: bytes, rspec: FlowSpec, now: int | None = None, held: bool = False,
                 slow: bool = False) -> tuple[int, int]:  # fmt: skip
        """Set up a forward flow and its reverse together (``held``: the forward marked Held;
        ``slow``: both halves the engine's alone);
        raise TableFull (leaving nothing) if either cannot be placed.  Keys must be new."""
        if now is None:
            now = time.time_ns()
        fi = self._place(fkey, fspec, 0, now)
        U16.pack_into(self.buf, HEADER_SIZE + fi * RECORD_SIZE + OFF_FLAGS, F_ACTIVE)  # reserve
        try:
            ri = self._place(rkey, rspec, fi, now)
        except TableFull:
            self._release(fi)
            raise
        U32.pack_into(self.buf, HEADER_SIZE + fi * RECORD_SIZE + OFF_RINDEX, ri)
        slow_bit = F1_SLOW if slow else 0
        _VIF_FLAGS1.pack_into(self.buf, HEADER_SIZE + ri * RECORD_SIZE + OFF_VIF, rspec.vif, F1_REVERSE | slow_bit)
        _VIF_FLAGS1.pack_into(self.buf, HEADER_SIZE + fi * RECORD_SIZE + OFF_VIF, fspec.vif, (F1_HELD if held else 0) | slow_bit)
        U16.pack_into(self.buf, HEADER_SIZE + ri * RECORD_SIZE + OFF_FLAGS, rspec.flags | _PAIR_FLAGS)
        U16.pack_into(self.buf, HEADER_SIZE + fi * RECORD_SIZE + OFF_FLAGS, fspec.flags | _PAIR_FLAGS)
        self.active += 2
        return fi, ri

    def add_single(self, key: bytes, spec: FlowSpec, now: int | None = None) -> int:
        """A flow with no reverse (a Drop flow)."""
        if now is None:
            now = time.time_ns()
        i = self._place(key, spec, 0, now)
        U16.pack_into(self.buf, HEADER_SIZE + i * RECORD_SIZE + OFF_FLAGS, spec.flags | F_ACTIVE | F_NEW_FLOW)
        self.active += 1
        return i

    def delete(self, index: int) -> list[int]:
        """Remove an entry and, if it has one, its reverse; return the indices removed."""
        off = HEADER_SIZE + index * RECORD_SIZE
        flags = U16.unpack_from(self.buf, off + OFF_FLAGS)[0]
        if not flags & F_ACTIVE:
            return []
        self._release(index)
        self.active -= 1
        removed = [index]
        if flags & F_RFLOW_VALID:
            r = U32.unpack_from(self.buf, off + OFF_RINDEX)[0]
            if U16.unpack_from(self.buf, HEADER_SIZE + r * RECORD_SIZE + OFF_FLAGS)[0] & F_ACTIVE:
                self._release(r)
                self.active -= 1
                removed.append(r)
        return removed

    def hit(self, index: int, nbytes: int, now: int, tcp_flags: int = 0) -> None:
        """Count one packet of ``nbytes`` on an entry."""
        off = HEADER_SIZE + index * RECORD_SIZE
        buf = self.buf
        # packets, bytes, setup time and last used are one read and one write (setup unchanged)
        pkts, byts, setup, _ = COUNTERS.unpack_from(buf, off + OFF_PACKETS)
        COUNTERS.pack_into(buf, off + OFF_PACKETS, pkts + 1, byts + nbytes, setup, now)
        if tcp_flags:
            buf[off + OFF_TCPFLAGS] |= tcp_flags

    def release(self, index: int, gen: int) -> None:
        """The engine has let out every packet of the flow it held: Held off (if still that flow)."""
        off = HEADER_SIZE + index * RECORD_SIZE
        if self.buf[off + OFF_GEN] == gen:
            U16.pack_into(self.buf, off + OFF_FLAGS1, U16.unpack_from(self.buf, off + OFF_FLAGS1)[0] & ~F1_HELD)

    def pair_last_used(self, index: int) -> int:
        """When either half of an entry's pair (or the lone entry) last saw a packet.  Called
        20,000 times a second by aging: the record is read here, not through the accessors."""
        buf = self.buf
        off = HEADER_SIZE + index * RECORD_SIZE
        last = U64.unpack_from(buf, off + OFF_LAST)[0]
        if U16.unpack_from(buf, off + OFF_FLAGS)[0] & F_RFLOW_VALID:
            other = U64.unpack_from(buf, HEADER_SIZE + U32.unpack_from(buf, off + OFF_RINDEX)[0] * RECORD_SIZE + OFF_LAST)[0]
            if other > last:
                last = other
        return last

    def is_reverse(self, index: int) -> bool:
        """Whether the entry at ``index`` is the reverse half of its pair."""
        return bool(U16.unpack_from(self.buf, HEADER_SIZE + index * RECORD_SIZE + OFF_FLAGS1)[0] & F1_REVERSE)

    def reverse_of(self, index: int) -> int:
        return U32.unpack_from(self.buf, HEADER_SIZE + index * RECORD_SIZE + OFF_RINDEX)[0]

    def set_owner(self, pid: int) -> None:
        U32.pack_into(self.buf, HEADER.size - 4, pid)  # the header's last field

    def owner(self) -> int:
        return HEADER.unpack_from(self.buf, 0)[6]


def _index_own_entries(t: FlowTable) -> None:
    """A writer's private index, read from the records it owns: their tags and the count of them,
    its free overflow entries, and its copy of the overflow chains (a worker restarted on a table
    whose other writers went on, or an agent that maps a table again)."""
    n, w = t.writers, t.writer
    if n > 1:  # another writer's entries: never free, never matched
        for other in range(n):
            if other != w:
                t._tags[other::n] = bytes([NOT_MINE]) * len(range(other, t.capacity, n))
    mine = range(t.entries + (w - t.entries) % n, t.capacity, n)  # its entries of the overflow area
    low = bytes(t.view[HEADER_SIZE + mine.start * RECORD_SIZE + OFF_FLAGS :: n * RECORD_SIZE])[: len(mine)]
    t._free_overflow = [i for i, f in zip(mine, low, strict=True) if not f & F_ACTIVE][::-1]
    for i in t.active_indices():
        if i % n == w:
            off = HEADER_SIZE + i * RECORD_SIZE
            t._tags[i] = _tag(zlib.crc32(t.buf[off : off + KEY_LEN]))
            t.active += 1
    if len(t._free_overflow) < len(mine):  # some chains: copy them
        for b in range(t.nbuckets):
            t._head[b] = U32.unpack_from(t.buf, HEADER_SIZE + t._head_slot(b) * RECORD_SIZE + OFF_OFLOW_NEXT)[0]
        for i in range((w - t.entries) % n, t.overflow, n):
            t._next[i] = U32.unpack_from(t.buf, HEADER_SIZE + (t.entries + i) * RECORD_SIZE + OFF_OFLOW_NEXT)[0]
        for b, nxt in enumerate(t._head):
            prev = 0
            while nxt:
                t._prev[nxt - 1 - t.entries] = prev
                t._bucket_of[nxt - 1 - t.entries] = b
                prev, nxt = nxt, t._next[nxt - 1 - t.entries]
    t.active_known = True


def _writers(writers: int) -> int:
    if not 1 <= writers <= MAX_WRITERS:
        raise ValueError("a flow table has 1 to %d writers, not %d" % (MAX_WRITERS, writers))
    return writers


def round_entries(entries: int) -> int:
    if entries < BUCKET_SIZE:
        raise ValueError("a flow table needs at least %d entries" % BUCKET_SIZE)
    return entries - entries % BUCKET_SIZE
