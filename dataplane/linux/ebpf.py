"""The ebpf datapath's kernel side: its programs loaded, its maps made and kept, the programs
attached to the node's devices, and the kernel's counters read back.

``KernelDatapath.load`` opens ``dataplane/ebpf/vrouter.bpf.o`` (built from the C source beside it
by ``make install``), sizes the flow table's map to the agent's table and loads it.  The flow table
is the map's memory (``table_memory``), in which the agent's Python engine writes entries as it writes the
file in nfqueue mode; ``flows/table.py`` says who writes which field.  The agent tells the kernel
which device is which vif (``set_vif``), attaches the programs to each tap (ingress and egress)
and to vhost0 (ingress), and reads the kernel's per-vif and per-reason counts (``stats``), which
the node's totals add to the engine's.  The kernel tells each writer's engine of the pairs whose
second FIN it forwarded on a ring buffer of its own (``close_rings``, ``watch_closes``).

Nothing is pinned: the maps live while the agent holds them or a program on a device uses them,
and the programs while they are attached.  ``close`` removes the clsact qdisc of every device it
attached to that still exists (a tap that went took its programs with it), so that after the agent
stops no program or map of its node is left in the kernel.

A kernel or a machine that cannot run it (no libbpf, no object file, BPF refused, no clsact)
raises ``DatapathError`` with what is missing; the agent then refuses to start in ebpf mode and
nfqueue mode is unaffected.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import struct
import time

from dataplane.core.lifecycle import Lifecycle
from dataplane.linux import libbpf
from dataplane.linux.ringbuf import RingBuffer
from flows import bpfmap
from flows.layout import HEADER_RECORDS, MAX_WRITERS, RECORD_SIZE, DropReason
from flows.storage import set_clock

log = logging.getLogger("vrouter.ebpf")

HERE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "ebpf")
OBJECT = os.path.join(HERE, "vrouter.bpf.o")
SOURCE = os.path.join(HERE, "vrouter.bpf.c")

MAX_VIFS = 65536  # as in the C source: every vif index the agent gives (0 to 0xFFFF)
MAX_REASONS = 32
FAST_MARK = 0x7672_0001  # skb->mark of what the program passed up; nftables accepts it first
VIF_TAP = 1
VIF_CAPTURE = 2

_VIF = struct.Struct("=IH6sI")  # struct vif: ifindex, flags, mac, pad
_CONFIG = struct.Struct("=II6sH")  # struct config: host vif, fast mark, vRouter MAC, pad
_VIFSTATS = struct.Struct("=QQQQQ")  # rx packets, rx bytes, tx packets, tx bytes, drops (of 64 bytes)
_U32 = struct.Struct("=I")


class DatapathError(Exception):
    """The ebpf datapath cannot run here; the message says what is missing."""


def _mac(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))


class KernelDatapath:
    """The loaded programs, their maps, and the devices they are attached to."""

    def __init__(self, obj: libbpf.BpfObject, table_size: int) -> None:
        self._obj = obj
        self.flows_fd = obj.map_fd("vr_flows")
        self._ifvif = obj.map_fd("vr_ifvif")
        self._vifs = obj.map_fd("vr_vifs")
        self._config = obj.map_fd("vr_config")
        self.ingress_fd = obj.prog_fd("vr_ingress")
        self.egress_fd = obj.prog_fd("vr_egress")
        self.table_memory = bpfmap.map_memory(self.flows_fd, table_size, writable=True)
        self._vifstats_fd = obj.map_fd("vr_vifstats")
        self._drops_fd = obj.map_fd("vr_drops")
        self._vifstats = bpfmap.map_memory(self._vifstats_fd, MAX_VIFS * 64, writable=False)
        self._drops = bpfmap.map_memory(self._drops_fd, (MAX_VIFS + 1) * MAX_REASONS * 8, writable=False)
        self.flows_map_id = bpfmap.map_info(self.flows_fd).id
        self.close_rings = [obj.map_fd("vr_close%d" % w) for w in range(MAX_WRITERS)]  # by writer
        self.close_ring_ids = [bpfmap.map_info(fd).id for fd in self.close_rings]
        self.prog_ids = (bpfmap.prog_id(self.ingress_fd), bpfmap.prog_id(self.egress_fd))
        self._attached: dict[int, str] = {}  # ifindex -> name, for close and the logs
        self._vif_ifindex: dict[int, int] = {}

    @classmethod
    def load(cls, entries: int, overflow: int) -> KernelDatapath:
        """Load the programs with a flow table map of ``entries + overflow`` records (``entries``
        already rounded to whole buckets); DatapathError if this machine cannot."""
        if not os.path.exists(OBJECT):
            raise DatapathError("%s is missing: build it with `make install` (clang, libbpf-dev from Debian)" % OBJECT)
        if os.path.exists(SOURCE) and os.path.getmtime(SOURCE) > os.path.getmtime(OBJECT):
            raise DatapathError("%s is older than its source: rebuild it with `make install`" % OBJECT)
        try:
            obj = libbpf.BpfObject(OBJECT)
        except libbpf.LibbpfError as e:
            raise DatapathError(str(e)) from None
        try:
            obj.set_max_entries("vr_flows", HEADER_RECORDS + entries + overflow)
            obj.load()
            return cls(obj, (HEADER_RECORDS + entries + overflow) * RECORD_SIZE)
        except libbpf.LibbpfError as e:
            obj.close()
            hint = ""
            if e.errno in (errno.EPERM, errno.EACCES):
                hint = ": the kernel refused BPF to this process (it needs CAP_BPF and CAP_NET_ADMIN, or root)"
            raise DatapathError("the ebpf datapath cannot be loaded: %s%s" % (e, hint)) from None
        except OSError as e:
            obj.close()
            raise DatapathError("the ebpf datapath's maps cannot be mapped: %s" % e) from None

    def configure(self, host_vif: int, vrouter_mac: str) -> None:
        bpfmap.update_elem(self._config, _U32.pack(0), _CONFIG.pack(host_vif, FAST_MARK, _mac(vrouter_mac), 0))

    def refresh_clock(self) -> None:
        set_clock(self.table_memory)

    # -- devices ----------------------------------------------------------------------------------

    def set_vif(self, vif: int, ifindex: int, mac: str = "00:00:00:00:00:00", tap: bool = True, capture: bool = False) -> None:
        """Tell the kernel that ``ifindex`` is ``vif`` (a VM's tap with the VM's ``mac``, or the
        node's own device); a vif whose ifindex changed forgets the old one."""
        if not 0 <= vif < MAX_VIFS:
            raise DatapathError("vif %d is beyond the ebpf datapath's %d vifs" % (vif, MAX_VIFS))
        old = self._vif_ifindex.get(vif)
        if old and old != ifindex:
            bpfmap.delete_elem(self._ifvif, _U32.pack(old))
        flags = (VIF_TAP if tap else 0) | (VIF_CAPTURE if capture else 0)
        bpfmap.update_elem(self._vifs, _U32.pack(vif), _VIF.pack(ifindex, flags, _mac(mac), 0))
        if ifindex:
            bpfmap.update_elem(self._ifvif, _U32.pack(ifindex), _U32.pack(vif))
        self._vif_ifindex[vif] = ifindex

    def set_capture(self, vif: int, on: bool) -> None:
        """Everything of a vif to the engine while a vifdump captures it, or not."""
        raw = bpfmap.lookup_elem(self._vifs, _U32.pack(vif), _VIF.size)
        if raw is None:
            return
        ifindex, flags, mac, _ = _VIF.unpack(raw)
        flags = flags | VIF_CAPTURE if on else flags & ~VIF_CAPTURE
        bpfmap.update_elem(self._vifs, _U32.pack(vif), _VIF.pack(ifindex, flags, mac, 0))

    def remove_vif(self, vif: int) -> None:
        """Forget a vif, and what the kernel counted for it (a port plugged later at the same
        index starts from zero, as the engine's counts do)."""
        ifindex = self._vif_ifindex.pop(vif, 0)
        if ifindex:
            bpfmap.delete_elem(self._ifvif, _U32.pack(ifindex))
        bpfmap.update_elem(self._vifs, _U32.pack(vif), bytes(_VIF.size))
        if 0 <= vif < MAX_VIFS:
            bpfmap.update_elem(self._vifstats_fd, _U32.pack(vif), bytes(64))
            for r in DropReason:
                bpfmap.update_elem(self._drops_fd, _U32.pack(vif * MAX_REASONS + r), bytes(8))

    def attach(self, ifindex: int, name: str, egress: bool = True) -> None:
        """The programs on a device: ingress always, egress for a VM's tap."""
        try:
            libbpf.tc_attach(ifindex, libbpf.BPF_TC_INGRESS, self.ingress_fd)
            if egress:
                libbpf.tc_attach(ifindex, libbpf.BPF_TC_EGRESS, self.egress_fd)
        except libbpf.LibbpfError as e:
            raise DatapathError("cannot attach the ebpf datapath to %s: %s" % (name, e)) from None
        self._attached[ifindex] = name

    def detach(self, ifindex: int) -> None:
        name = self._attached.pop(ifindex, None)
        if name is not None:
            try:
                libbpf.tc_detach_all(ifindex)
            except libbpf.LibbpfError as e:
                log.warning("detaching the ebpf datapath from %s: %s", name, e)

    def attached(self) -> dict[int, str]:
        return dict(self._attached)

    # -- counters ---------------------------------------------------------------------------------

    def stats(self) -> tuple[dict[int, tuple[int, int, int, int, int, int]], dict[tuple[int, DropReason], int], dict[DropReason, int]]:
        """What the kernel counted: per vif (rx packets, rx bytes, tx packets, tx bytes, drops,
        0 flows), per (vif, reason), per reason.  Only vifs it was told of, and reasons it used."""
        vifs: dict[int, tuple[int, int, int, int, int, int]] = {}
        vif_drops: dict[tuple[int, DropReason], int] = {}
        for vif in self._vif_ifindex:
            counts = _VIFSTATS.unpack_from(self._vifstats, vif * 64)
            if any(counts):
                vifs[vif] = (*counts, 0)
            if counts[4]:
                for r in DropReason:
                    n = struct.unpack_from("=Q", self._drops, (vif * MAX_REASONS + r) * 8)[0]
                    if n:
                        vif_drops[vif, r] = n
        drops = {}
        for r in DropReason:
            n = struct.unpack_from("=Q", self._drops, (MAX_VIFS * MAX_REASONS + r) * 8)[0]
            if n:
                drops[r] = n
        return vifs, vif_drops, drops

    def close(self) -> None:
        """Detach from every device still there, and let the kernel free the programs and maps."""
        for ifindex in list(self._attached):
            self.detach(ifindex)
        for m in (self._vifstats, self._drops):
            m.close()
        try:
            self.table_memory.close()
        except BufferError:
            pass  # a FlowTable still views it: freed with it
        self._obj.close()


def detach_stale(prefix: str, vhost: str) -> list[str]:
    """Remove the clsact qdisc (and so any program) from this namespace's taps (``prefix``*) and
    vhost0: a killed agent's programs stay attached and forward its old flows.  Called at every
    start, whichever the datapath; nothing to do where libbpf is missing (nothing could attach)."""
    removed = []
    for ifindex, name in socket.if_nameindex():
        if name.startswith(prefix) or name == vhost:
            try:
                if libbpf.tc_detach_all(ifindex):
                    removed.append(name)
            except libbpf.LibbpfError:
                return removed  # no libbpf, or it cannot: nothing of ours can be there either
    return removed


_CLOSE = struct.Struct("=IB3x")  # struct close_event: index, generation


def watch_closes(loop: asyncio.AbstractEventLoop, ring_fd: int, lifecycle: Lifecycle) -> RingBuffer:
    """Read the kernel's closed pairs for one writer's engine as they come (the ring's descriptor
    is readable while events wait); the caller closes the ring and removes the reader."""
    ring = RingBuffer(ring_fd)

    def closed(data: bytes) -> None:
        index, gen = _CLOSE.unpack_from(data)
        lifecycle.fin_seen(index, gen, time.time_ns())

    loop.add_reader(ring_fd, ring.drain, closed)
    return ring
