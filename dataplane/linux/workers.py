"""The dataplane's workers: processes that each read their own queues over the one flow table.

The agent's own event loop is worker 0 (its ``Dataplane``, as with one worker);
with ``[FLOWS] dataplane_workers`` N > 1 it starts workers 1..N-1 as
``python -m dataplane.linux.worker FD`` in the compute namespace, one end of a
socketpair each, and drives them with the messages below.  What each owns
(the layout is ``QueueLayout``'s, the nftables rules follow it):

* a VM's service queue (metadata, link-local services, the guests' DHCP, DNS
  and ICMP) and the node's packets back to its metadata IP: worker ``vif % N``,
  so both directions of its metadata and link-local pairs, its per-VM limits
  and the NAT ports of its flows are one worker's;
* a VM's data (VM to VM): a group of N queues, one a worker, that the kernel
  balances by a hash of the addresses that is the same both ways
  (xt_NFQUEUE's), so both directions of a pair between two VMs of this node
  reach the same worker; on a node of a cloud, whose tunnels arrive on one
  queue, a VM's data has one queue, worker 0's;
* the fabric's replies to link-local NAT flows: worker w's NAT ports are a
  range of their own, queued to its node queue;
* the flow table: entry i is worker i % N's (``flows.table``).

Configuration (vifs, link-local services, routes, the guests' addresses) is
replicated: every message is applied by every worker, in order, and kept here
so that a worker restarted after a death is given it all again.  A worker that
dies is restarted within ``RESTART_DELAY``; its entries are cleared when the new
process opens the table (flushed, never left half owned) and its counters start
from zero.  The packets a worker traps for the agent's services come to the
agent as ``Trapped``.  ``settle`` waits until every worker has applied every
message sent so far: an operation returns only after that.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import mmap
import os
import pickle
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dataplane.core.dataplane import Dataplane
from dataplane.core.entries import Limits
from dataplane.core.overlay import Route
from dataplane.core.services import LinkLocalService
from dataplane.core.vif import Vif
from dataplane.linux.children import spawn
from dataplane.linux.nfqueue import QueueShell
from flows.layout import MAX_WRITERS, DropReason

log = logging.getLogger("vrouter.dataplane")

WORKER_MODULE = "dataplane.linux.worker"
RESTART_DELAY = 0.5
CALL_TIMEOUT = 10.0
_LEN = struct.Struct("!I")
MAX_MESSAGE = 64 << 20


@dataclass(frozen=True)
class QueueLayout:
    """Which NFQUEUE queues a node has and which worker reads each.  With one worker it is the
    layout of before: the node's queue, the tunnel queue, then two a VM (data, services)."""

    base: int  # the node's queue (worker 0's)
    workers: int = 1
    groups: bool = True  # a VM's data balanced over the workers (False: worker 0's, on a node of a cloud)

    @property
    def stride(self) -> int:
        return self.workers + 1

    def node_queue(self, worker: int) -> int:
        """Worker ``worker``'s node queue: the fabric's replies to its link-local NAT ports (and,
        for worker 0, the rest: taps not plugged, metadata IPs of no VM)."""
        return self.base + worker

    @property
    def tunnel_queue(self) -> int:
        return self.base + self.workers

    def owner(self, vif: int) -> int:
        """The worker that owns a VM's services, limits and NAT ports."""
        return vif % self.workers

    def data_queues(self, vif: int) -> tuple[int, ...]:
        """A VM's data queues: a group of one a worker (the kernel picks one by the addresses), or one."""
        first = self.base + self.stride * vif
        return tuple(range(first, first + (self.workers if self.groups else 1)))

    def service_queue(self, vif: int) -> int:
        return self.base + self.stride * vif + self.workers

    def queues_of(self, vif: int) -> tuple[int, ...]:
        """Every queue of a VM: its data queues, then its service queue."""
        return (*self.data_queues(vif), self.service_queue(vif))

    def read_by(self, vif: int, worker: int) -> tuple[int, ...]:
        """The queues of a VM that ``worker`` reads."""
        mine = self.data_queues(vif)[worker : worker + 1]  # data queue i is worker i's (one queue: worker 0's)
        return (*mine, self.service_queue(vif)) if self.owner(vif) == worker else mine

    def nat_ports(self, worker: int, first: int, last: int) -> tuple[int, int]:
        """Worker ``worker``'s share of the link-local NAT port range ``first``-``last``."""
        span = (last - first + 1) // self.workers
        lo = first + worker * span
        return lo, (last if worker == self.workers - 1 else lo + span - 1)


class SharedCounts:
    """Each worker's flow count of each vif, in a file every worker maps (``FlowShares``): row w
    (a u32 a vif index) is worker w's, and it is the row's only writer; a worker's check of a
    limit adds the other rows up.  A worker clears its row when it starts (one that died had it)."""

    SLOTS = 1 << 16  # vif indices (a metadata IP holds 16 bits of one)

    def __init__(self, path: str, workers: int, writer: int, create: bool = False) -> None:
        size = workers * self.SLOTS * 4
        fd = os.open(path, os.O_RDWR | (os.O_CREAT | os.O_TRUNC if create else 0), 0o644)
        try:
            if create:
                os.posix_fallocate(fd, 0, size)
            elif os.fstat(fd).st_size < size:
                raise OSError("%s is shorter than %d workers' counts" % (path, workers))
            self._map = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self._all = memoryview(self._map).cast("I")
        self.rows = [self._all[w * self.SLOTS : (w + 1) * self.SLOTS] for w in range(workers)]
        self.mine = self.rows[writer]
        self.mine[:] = memoryview(bytearray(self.SLOTS * 4)).cast("I")
        self._others = [r for w, r in enumerate(self.rows) if w != writer]

    def publish(self, vif: int, count: int) -> None:
        self.mine[vif & 0xFFFF] = count

    def others(self, vif: int) -> int:
        i = vif & 0xFFFF
        return sum(r[i] for r in self._others)

    def close(self) -> None:
        for r in self.rows:
            r.release()
        self._all.release()
        self._map.close()


def default_workers() -> int:
    """The number of cores this process may run on, at most the table's writers (4)."""
    return max(1, min(len(os.sched_getaffinity(0)), MAX_WRITERS))


# -- the messages (agent -> worker, then worker -> agent) ----------------------------------------


@dataclass(frozen=True)
class Setup:
    """The first message: who the worker is and what it reads."""

    writer: int
    workers: int
    table: str  # the flow table's file
    counts: str  # the workers' flow counts of each vif (SharedCounts)
    vhost_ip: str
    proxy_port: int
    limits: Limits
    nat_ports: tuple[int, int]  # its own range of link-local NAT source ports
    node_queue: int
    node_queue_length: int
    flow_cache_timeout: int
    log_level: int = logging.INFO


@dataclass(frozen=True)
class AddVif:
    vif: Vif


@dataclass(frozen=True)
class RemoveVif:
    index: int


@dataclass(frozen=True)
class SetHostIfindex:
    ifindex: int


@dataclass(frozen=True)
class SetServices:
    services: list[LinkLocalService]


@dataclass(frozen=True)
class SetResolved:
    name: str
    addresses: tuple[str, ...]


@dataclass(frozen=True)
class SetGuestAddresses:
    vrf: int
    addresses: tuple[bytes, bytes] | None


@dataclass(frozen=True)
class SetRoutes:
    routes: list[Route]


@dataclass(frozen=True)
class BindQueues:
    """Read queues ``add`` (``max_len`` packets each), stop reading ``remove``."""

    add: tuple[int, ...] = ()
    remove: tuple[int, ...] = ()
    max_len: int = 4096


@dataclass(frozen=True)
class AddCapture:
    id: int
    vif: int
    path: str  # vifdump's socket
    rewritten: bool


@dataclass(frozen=True)
class RemoveCapture:
    id: int


@dataclass(frozen=True)
class StatsRequest:
    pass


@dataclass(frozen=True)
class Sync:
    """Answered once every message before it is applied."""


@dataclass
class WorkerStats:
    """One worker's counters (the answer to ``StatsRequest``)."""

    vifs: dict[int, tuple[int, int, int, int, int, int]] = field(default_factory=dict)  # rx p, rx b, tx p, tx b, drops, flows
    vif_drops: dict[tuple[int, DropReason], int] = field(default_factory=dict)  # (vif, reason) -> packets
    drops: dict[DropReason, int] = field(default_factory=dict)  # reason -> packets
    setups: int = 0
    added: int = 0
    removed: int = 0
    active: int = 0
    errors: int = 0
    verdict_writes: int = 0
    verdict_errors: int = 0
    nat_in_use: int = 0
    captures: dict[int, tuple[int, int]] = field(default_factory=dict)  # id -> sent, lost


@dataclass(frozen=True)
class Reply:
    seq: int
    value: Any = None
    error: str = ""


@dataclass(frozen=True)
class Trapped:
    """A packet a worker trapped for the agent's services (counted as the vif's RX there)."""

    trap: int
    packet: bytes
    vif: int
    ihl: int


def encode(msg: object) -> bytes:
    data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    return _LEN.pack(len(data)) + data


async def read_message(reader: asyncio.StreamReader) -> object:
    """The next message; EOFError when the other end closed."""
    try:
        head = await reader.readexactly(_LEN.size)
        (n,) = _LEN.unpack(head)
        if n > MAX_MESSAGE:
            raise EOFError("a message of %d bytes" % n)
        return pickle.loads(await reader.readexactly(n))
    except asyncio.IncompleteReadError:
        raise EOFError("closed") from None


class WorkerError(Exception):
    """A worker refused a message or is not running."""


# -- the agent's side ------------------------------------------------------------------------------


class _Worker:
    def __init__(self, writer: int, node_queue: int) -> None:
        self.writer = writer
        self.node_queue = node_queue
        self.proc: asyncio.subprocess.Process | None = None
        self.out: asyncio.StreamWriter | None = None
        self.seq = 0
        self.waiting: dict[int, asyncio.Future[Any]] = {}
        self.reader_task: asyncio.Task[None] | None = None
        self.queues: dict[int, int] = {}  # the queues it reads -> their length
        self.up = False
        self.restarting = False

    def send(self, msg: object) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.out is None or not self.up:
            fut.set_exception(WorkerError("dataplane worker %d is not running" % self.writer))
            return fut
        self.seq += 1
        self.waiting[self.seq] = fut
        self.out.write(encode((self.seq, msg)))
        return fut

    def fail_waiting(self, why: str) -> None:
        for fut in self.waiting.values():
            if not fut.done():
                fut.set_exception(WorkerError(why))
        self.waiting.clear()


class WorkerPool:
    """Workers 1..N-1 of a node's dataplane, as the agent (worker 0) sees them."""

    def __init__(self, setup: Callable[[int], Setup], workers: int, on_trap: Callable[[Trapped], None]) -> None:
        """``workers``: all of them, the agent's own loop (worker 0) included."""
        self.setup = setup  # the Setup of worker w
        self.on_trap = on_trap
        self.workers = [_Worker(w, setup(w).node_queue) for w in range(1, workers)]
        self.restarts = 0
        self._config: dict[object, object] = {}  # what every worker must be given again when restarted
        self._captures: dict[int, AddCapture] = {}
        self._stopping = False
        self._watch: list[asyncio.Task[None]] = []

    # -- processes --

    async def start(self) -> None:
        """Start every worker; WorkerError (naming the worker and why) if one cannot start."""
        for w in self.workers:
            await self._spawn(w)

    async def _spawn(self, w: _Worker) -> None:
        try:
            w.proc, reader, w.out = await spawn(WORKER_MODULE, MAX_MESSAGE)
        except OSError as e:
            raise WorkerError("cannot start dataplane worker %d (%s -m %s): %s" % (w.writer, sys.executable, WORKER_MODULE, e)) from None
        w.up = True
        w.reader_task = asyncio.get_running_loop().create_task(self._read(w, reader))
        try:
            await asyncio.wait_for(w.send(self.setup(w.writer)), 30)
            for msg in list(self._config.values()):
                w.send(msg)
            if w.queues:
                await asyncio.wait_for(w.send(BindQueues(tuple(w.queues), (), max(w.queues.values()))), CALL_TIMEOUT)
            for c in self._captures.values():
                w.send(c)
        except (WorkerError, TimeoutError) as e:
            await self._kill(w)
            raise WorkerError("dataplane worker %d did not start: %s" % (w.writer, e or "no answer in time")) from None
        log.info("dataplane worker %d up (pid %d)", w.writer, w.proc.pid)

    async def _read(self, w: _Worker, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                msg = await read_message(reader)
                if isinstance(msg, Reply):
                    fut = w.waiting.pop(msg.seq, None)
                    if fut is not None and not fut.done():
                        if msg.error:
                            fut.set_exception(WorkerError(msg.error))
                        else:
                            fut.set_result(msg.value)
                elif isinstance(msg, Trapped):
                    try:
                        self.on_trap(msg)
                    except Exception:
                        log.exception("the agent's services failed on a packet trapped by worker %d", w.writer)
        except (EOFError, OSError, pickle.UnpicklingError) as e:
            if not self._stopping:
                log.error("dataplane worker %d is gone (%s); restarting it, its flows flushed", w.writer, e)
        finally:
            w.up = False
            w.fail_waiting("dataplane worker %d is gone" % w.writer)
        if not w.restarting:  # (a process that failed to start is the restart's own)
            self._restart_later(w)

    def _restart_later(self, w: _Worker) -> None:
        if not self._stopping:
            self._watch = [t for t in self._watch if not t.done()]
            self._watch.append(asyncio.get_running_loop().create_task(self._restart(w)))

    async def _restart(self, w: _Worker) -> None:
        w.restarting = True
        try:
            await self._kill(w)
            while not self._stopping:
                await asyncio.sleep(RESTART_DELAY)
                try:
                    await self._spawn(w)
                except WorkerError as e:
                    log.error("%s; trying again", e)
                    continue
                self.restarts += 1
                break
        finally:
            w.restarting = False
        if not w.up:  # it died again before this restart was over
            self._restart_later(w)

    async def _kill(self, w: _Worker) -> None:
        w.up = False
        if w.out is not None:
            w.out.close()
            w.out = None
        if w.proc is not None and w.proc.returncode is None:
            try:
                await asyncio.wait_for(w.proc.wait(), 2)
            except TimeoutError:
                w.proc.kill()
                await w.proc.wait()

    async def stop(self) -> None:
        self._stopping = True
        for t in self._watch:
            t.cancel()
        for w in self.workers:
            await self._kill(w)  # a worker exits when its socket closes
            if w.reader_task is not None:
                w.reader_task.cancel()

    @property
    def pids(self) -> list[int]:
        return [w.proc.pid if w.proc is not None and w.up else 0 for w in self.workers]

    # -- configuration, replicated --

    def _keep(self, msg: object) -> None:
        """Keep what a restarted worker must be given again: the last of each kind (per vif, per
        VRF, per name), in the order of the last change."""
        if isinstance(msg, Sync | StatsRequest):
            return
        if isinstance(msg, AddVif | RemoveVif):
            key: object = ("vif", msg.vif.index if isinstance(msg, AddVif) else msg.index)
        elif isinstance(msg, SetResolved):
            key = ("resolved", msg.name)
        elif isinstance(msg, SetGuestAddresses):
            key = ("guest", msg.vrf)
        else:
            key = type(msg)
        self._config.pop(key, None)
        if not isinstance(msg, RemoveVif):  # as it is now: the agent's own Vif goes on counting its packets
            self._config[key] = copy.deepcopy(msg)

    def _broadcast(self, msg: object) -> list[asyncio.Future[Any]]:
        self._keep(msg)
        return [w.send(msg) for w in self.workers if w.up]

    def apply(self, msg: object, local: int = 0) -> asyncio.Future[int]:
        """Every worker applies ``msg`` (in the order sent; kept for restarted workers); the
        future is ``local`` plus what they answer (entries removed), for those who wait for it."""
        futs = self._broadcast(msg)
        total: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        if not futs:
            total.set_result(local)
            return total

        async def add_up() -> None:
            total.set_result(local + sum(n for n in await self._wait(futs, 0) if isinstance(n, int)))

        asyncio.get_running_loop().create_task(add_up())
        return total

    async def _wait(self, futs: list[asyncio.Future[Any]], instead: Any) -> list[Any]:
        """The answers; ``instead`` for a worker that refused, went or did not answer in time."""
        out = []
        for fut in futs:
            try:
                out.append(await asyncio.wait_for(fut, CALL_TIMEOUT))
            except (WorkerError, TimeoutError) as e:
                log.error("dataplane worker: %s", e or "no answer in %g s" % CALL_TIMEOUT)
                out.append(instead)
        return out

    async def settle(self) -> None:
        """Return when every running worker has applied every message sent before."""
        await self._wait([w.send(Sync()) for w in self.workers if w.up], None)

    async def bind(self, writer: int, queues: tuple[int, ...], max_len: int) -> None:
        """Worker ``writer`` reads ``queues`` too; WorkerError if it cannot bind one (it says
        which and why: nothing of them stays bound)."""
        w = self.workers[writer - 1]
        for q in queues:
            w.queues[q] = max_len
        if not w.up:
            return  # given when it starts again
        try:
            await asyncio.wait_for(w.send(BindQueues(queues, (), max_len)), CALL_TIMEOUT)
        except (WorkerError, TimeoutError) as e:
            self.unbind(writer, queues)
            raise WorkerError(str(e) or "dataplane worker %d did not answer in %g s" % (writer, CALL_TIMEOUT)) from None

    def unbind(self, writer: int, queues: tuple[int, ...]) -> None:
        """Worker ``writer`` no longer reads ``queues``."""
        w = self.workers[writer - 1]
        for q in queues:
            w.queues.pop(q, None)
        if w.up:
            w.send(BindQueues((), queues)).add_done_callback(_logged)

    def queues(self) -> set[int]:
        """Every queue the workers read (their node queues and the VMs')."""
        return {q for w in self.workers for q in w.queues} | {w.node_queue for w in self.workers}

    async def add_capture(self, c: AddCapture) -> None:
        """Every worker copies the packets of ``c.vif`` to ``c.path`` too; WorkerError if one
        cannot (nothing of the capture stays)."""
        self._captures[c.id] = c
        try:
            for fut in [w.send(c) for w in self.workers if w.up]:
                await asyncio.wait_for(fut, CALL_TIMEOUT)
        except (WorkerError, TimeoutError) as e:
            self.remove_capture(c.id)
            raise WorkerError(str(e) or "a dataplane worker did not answer in %g s" % CALL_TIMEOUT) from None

    def remove_capture(self, cid: int) -> None:
        if self._captures.pop(cid, None) is not None:
            for w in self.workers:
                if w.up:
                    w.send(RemoveCapture(cid)).add_done_callback(_logged)

    async def stats(self) -> list[WorkerStats]:
        """Every running worker's counters (a worker that does not answer counts nothing)."""
        out = await self._wait([w.send(StatsRequest()) for w in self.workers if w.up], None)
        return [s if isinstance(s, WorkerStats) else WorkerStats() for s in out]


def stats_of(dp: Dataplane, shell: QueueShell, nat_in_use: int, captures: dict[int, tuple[int, int]]) -> WorkerStats:
    """A dataplane's counters, as a worker reports them."""
    return WorkerStats(
        vifs={v.index: (v.rx_packets, v.rx_bytes, v.tx_packets, v.tx_bytes, v.drops, v.flows) for v in dp.vifs.values()},
        vif_drops=dict(dp.path.vif_drops),
        drops=dict(dp.drops),
        setups=dp.setups,
        added=dp.entries.added,
        removed=dp.entries.removed,
        active=dp.table.active,
        errors=shell.errors,
        verdict_writes=shell.verdict_writes,
        verdict_errors=shell.verdict_errors,
        nat_in_use=nat_in_use,
        captures=captures,
    )


def _logged(fut: asyncio.Future[Any]) -> None:
    if fut.cancelled():
        return
    e = fut.exception()
    if e is not None:
        log.error("dataplane worker: %s", e)


@dataclass
class Totals:
    """The node's counters: the agent's own dataplane (worker 0) and every worker's, added up."""

    vifs: dict[int, list[int]]  # vif -> rx packets, rx bytes, tx packets, tx bytes, drops, flows
    vif_drops: dict[tuple[int, DropReason], int]
    drops: dict[DropReason, int]
    setups: int
    added: int
    removed: int
    active: int
    errors: int
    verdict_writes: int
    verdict_errors: int
    nat_in_use: int
    captures: dict[int, tuple[int, int]]  # capture id -> sent, lost by the workers

    @classmethod
    def of(cls, local: WorkerStats, remote: list[WorkerStats]) -> Totals:
        t = cls({}, {}, {}, 0, 0, 0, 0, 0, 0, 0, 0, {})
        for s in (local, *remote):
            for i, counts in s.vifs.items():
                have = t.vifs.setdefault(i, [0] * 6)
                for k, n in enumerate(counts):
                    have[k] += n
            for key, n in s.vif_drops.items():
                t.vif_drops[key] = t.vif_drops.get(key, 0) + n
            for r, n in s.drops.items():
                t.drops[r] = t.drops.get(r, 0) + n
            for c, (sent, lost) in s.captures.items():
                was = t.captures.get(c, (0, 0))
                t.captures[c] = (was[0] + sent, was[1] + lost)
            t.setups += s.setups
            t.added += s.added
            t.removed += s.removed
            t.active += s.active
            t.errors += s.errors
            t.verdict_writes += s.verdict_writes
            t.verdict_errors += s.verdict_errors
            t.nat_in_use += s.nat_in_use
        return t

    def vif(self, index: int) -> list[int]:
        return self.vifs.get(index, [0] * 6)
