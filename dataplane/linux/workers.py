"""The dataplane's workers: processes that each read their own queues over the one flow table.

The agent's own event loop is worker 0 (its ``Dataplane``, as with one worker);
with ``[FLOWS] dataplane_workers`` N > 1 it starts workers 1..N-1 as
``python -m dataplane.linux.worker FD`` (``infra.children.Child``) and drives
them with the messages below.  Which worker reads which queue is
``dataplane.linux.layout``'s.

The dataplane's configuration is an API, ``Dataplanes``: each of its calls
(``add_vif``, ``set_services``, ...) changes worker 0's ``Dataplane`` and, as
a ``Configure`` message naming the same method, every other worker's, in
order; the pool keeps the last call of each key (per vif, per VRF, per name),
so that a worker restarted after a death is given the configuration as it
stands.  A worker that dies is restarted within ``RESTART_DELAY``; its entries
are cleared when the new process opens the table (flushed, never left half
owned) and its counters start from zero; the pool adds what the dead process
last answered to the worker's totals (``retired``), so that the node's counters
never go down.  The packets a worker traps for the
agent's services come to the agent as ``Trapped``.  ``settle`` waits until
every worker has applied every message sent so far: an operation returns only
after that.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dataplane.core.dataplane import Dataplane
from dataplane.core.entries import Limits
from dataplane.core.flowsetup import TraceEntry
from dataplane.core.overlay import Route
from dataplane.core.services import LinkLocalService
from dataplane.core.vif import Vif
from dataplane.linux.totals import WorkerStats, retired
from infra.children import Child, ChildError

log = logging.getLogger("vrouter.dataplane")

WORKER_MODULE = "dataplane.linux.worker"
RESTART_DELAY = 0.5
CALL_TIMEOUT = 10.0


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
    close_ring: int = 0  # ebpf datapath: the id of the ring on which the kernel tells this worker of closed pairs
    vhost_ip6: str = ""  # vhost0's IPv6 address, for link-local services over IPv6


# What a worker's Dataplane may be asked through ``Configure``: the dataplane's configuration API.
CONFIGURE = frozenset({"add_vif", "remove_vif", "set_host_ifindex", "set_services", "set_resolved", "set_guest_addresses", "set_routes"})


@dataclass(frozen=True)
class Configure:
    """Call ``Dataplane.<method>(*args)`` in the worker; the answer is what it returns (the flow
    entries that went, for those that remove some).  ``key``: what a later call replaces, for
    the replay to a restarted worker; ``forget``: the call ends what ``key`` held (none kept)."""

    method: str
    args: tuple[Any, ...]
    key: tuple[Any, ...]
    forget: bool = False


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
class TraceRequest:
    """Answered with the worker's flow trace (``FlowSetup.trace``: its set-ups and refusals)."""


@dataclass(frozen=True)
class Sync:
    """Answered once every message before it is applied."""


@dataclass(frozen=True)
class Trapped:
    """A packet a worker trapped for the agent's services (counted as the vif's RX there)."""

    trap: int
    packet: bytes
    vif: int
    ihl: int


# -- the agent's side ------------------------------------------------------------------------------


class _Worker:
    """Worker ``writer`` of the pool: its process, and the queues it reads (given again when it
    is restarted)."""

    def __init__(self, pool: WorkerPool, writer: int) -> None:
        self.writer = writer
        self.node_queue = pool.setup(writer).node_queue
        self.queues: dict[int, int] = {}  # the queues it reads -> their length
        self.last: WorkerStats | None = None  # what its process last answered a StatsRequest
        self.retired: WorkerStats | None = None  # what its processes that died had counted (when last asked)
        self.child = Child("dataplane worker %d" % writer, WORKER_MODULE, lambda _: pool.set_up(self), pool.on_trap_message, RESTART_DELAY)


class WorkerPool:
    """Workers 1..N-1 of a node's dataplane, as the agent (worker 0) sees them."""

    def __init__(self, setup: Callable[[int], Setup], workers: int, on_trap: Callable[[Trapped], None]) -> None:
        """``workers``: all of them, the agent's own loop (worker 0) included."""
        self.setup = setup  # the Setup of worker w
        self.on_trap = on_trap
        self.workers = [_Worker(self, w) for w in range(1, workers)]
        self._config: dict[tuple[Any, ...], Configure] = {}  # what every worker must be given again when restarted
        self._captures: dict[int, AddCapture] = {}

    # -- processes --

    async def start(self) -> None:
        """Start every worker; ChildError (naming the worker and why) if one cannot start."""
        for w in self.workers:
            await w.child.start()

    async def set_up(self, w: _Worker) -> None:
        """A worker's process has started: its Setup, the configuration as it stands, its queues."""
        child = w.child
        if w.last is not None:  # a process before this one: its counts stay in the totals
            w.retired, w.last = retired(w.retired, w.last), None
        await child.call(self.setup(w.writer), 30)
        for msg in list(self._config.values()):
            child.send(msg).add_done_callback(_logged)
        if w.queues:
            await child.call(BindQueues(tuple(w.queues), (), max(w.queues.values())), CALL_TIMEOUT)
        for c in self._captures.values():
            child.send(c).add_done_callback(_logged)

    def on_trap_message(self, msg: object) -> None:
        if isinstance(msg, Trapped):
            self.on_trap(msg)

    async def stop(self) -> None:
        for w in self.workers:
            await w.child.stop()  # a worker exits when its socket closes

    @property
    def pids(self) -> list[int]:
        return [w.child.pid for w in self.workers]

    @property
    def restarts(self) -> int:
        return sum(w.child.restarts for w in self.workers)

    def _running(self) -> list[Child]:
        return [w.child for w in self.workers if w.child.up]

    # -- configuration, replicated --

    def configure(self, msg: Configure, local: int = 0) -> asyncio.Future[int]:
        """Every worker applies ``msg`` (in the order sent; the last of its key kept for restarted
        workers); the future is ``local`` plus what they answer (entries removed)."""
        self._config.pop(msg.key, None)  # to the end: given again after what was there before
        if not msg.forget:
            self._config[msg.key] = copy.deepcopy(msg)  # as it is now: worker 0's own Vif goes on counting
        futs = [c.send(msg) for c in self._running()]
        total: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        if not futs:
            total.set_result(local)
            return total

        async def add_up() -> None:
            total.set_result(local + sum(n for n in await self._wait(futs, 0) if isinstance(n, int)))

        asyncio.get_running_loop().create_task(add_up())
        return total

    async def _wait(self, futs: list[asyncio.Future[Any]], instead: Any) -> list[Any]:  # noqa: ANN401 - an answer
        """The answers; ``instead`` for a worker that refused, went or did not answer in time."""
        out = []
        for fut in futs:
            try:
                out.append(await asyncio.wait_for(fut, CALL_TIMEOUT))
            except (ChildError, TimeoutError) as e:
                log.error("dataplane worker: %s", e or "no answer in %g s" % CALL_TIMEOUT)
                out.append(instead)
        return out

    async def settle(self) -> None:
        """Return when every running worker has applied every message sent before."""
        await self._wait([c.send(Sync()) for c in self._running()], None)

    async def bind(self, writer: int, queues: tuple[int, ...], max_len: int) -> None:
        """Worker ``writer`` reads ``queues`` too; ChildError if it cannot bind one (it says
        which and why: nothing of them stays bound)."""
        w = self.workers[writer - 1]
        for q in queues:
            w.queues[q] = max_len
        if not w.child.up:
            return  # given when it starts again
        try:
            await w.child.call(BindQueues(queues, (), max_len), CALL_TIMEOUT)
        except ChildError:
            self.unbind(writer, queues)
            raise

    def unbind(self, writer: int, queues: tuple[int, ...]) -> None:
        """Worker ``writer`` no longer reads ``queues``."""
        w = self.workers[writer - 1]
        for q in queues:
            w.queues.pop(q, None)
        if w.child.up:
            w.child.send(BindQueues((), queues)).add_done_callback(_logged)

    def queues(self) -> set[int]:
        """Every queue the workers read (their node queues and the VMs')."""
        return {q for w in self.workers for q in w.queues} | {w.node_queue for w in self.workers}

    async def add_capture(self, c: AddCapture) -> None:
        """Every worker copies the packets of ``c.vif`` to ``c.path`` too; ChildError if one
        cannot (nothing of the capture stays)."""
        self._captures[c.id] = c
        try:
            for fut in [child.send(c) for child in self._running()]:
                await asyncio.wait_for(fut, CALL_TIMEOUT)
        except (ChildError, TimeoutError) as e:
            self.remove_capture(c.id)
            raise ChildError(str(e) or "a dataplane worker did not answer in %g s" % CALL_TIMEOUT) from None

    def remove_capture(self, cid: int) -> None:
        if self._captures.pop(cid, None) is not None:
            for child in self._running():
                child.send(RemoveCapture(cid)).add_done_callback(_logged)

    async def stats(self) -> list[WorkerStats]:
        """Every worker's counters: what its process answers (what it answered last, if it does not
        answer now), and what its processes that died had counted."""
        running = [(w, w.child.restarts) for w in self.workers if w.child.up]
        out = await self._wait([w.child.send(StatsRequest()) for w, _ in running], None)
        for (w, process), s in zip(running, out, strict=True):
            if isinstance(s, WorkerStats) and w.child.restarts == process:  # not a process that died meanwhile (set_up took its last)
                w.last = s
        return [s for w in self.workers for s in (w.last, w.retired) if s is not None]

    def forget_vif(self, index: int) -> None:
        """A vif went: what dead processes counted of it goes too (a VM plugged later at its index
        starts from zero, as with workers that never died)."""
        for w in self.workers:
            if w.retired is not None:
                w.retired.vifs.pop(index, None)
                for key in [k for k in w.retired.vif_drops if k[0] == index]:
                    del w.retired.vif_drops[key]

    async def traces(self) -> list[TraceEntry]:
        """Every running worker's flow trace, in one list (not sorted)."""
        out = await self._wait([c.send(TraceRequest()) for c in self._running()], None)
        return [e for t in out if isinstance(t, list) for e in t]


class Dataplanes:
    """The node's dataplanes configured as one: worker 0's (``local``, this process's) and every
    other worker's.  Each call applies to all of them; its future is how many flow entries went
    in all (for the calls that remove some), once every worker has answered."""

    def __init__(self, local: Dataplane, pool: WorkerPool) -> None:
        self.local = local
        self.pool = pool

    def _call(self, method: str, args: tuple[Any, ...], key: tuple[Any, ...], forget: bool = False) -> asyncio.Future[int]:
        assert method in CONFIGURE
        here = getattr(self.local, method)(*args)
        return self.pool.configure(Configure(method, args, key, forget), here if isinstance(here, int) else 0)

    def add_vif(self, vif: Vif) -> asyncio.Future[int]:
        return self._call("add_vif", (vif,), ("vif", vif.index))

    def remove_vif(self, index: int) -> asyncio.Future[int]:
        self.pool.forget_vif(index)
        return self._call("remove_vif", (index,), ("vif", index), forget=True)

    def set_host_ifindex(self, ifindex: int) -> asyncio.Future[int]:
        return self._call("set_host_ifindex", (ifindex,), ("host",))

    def set_services(self, services: list[LinkLocalService]) -> asyncio.Future[int]:
        return self._call("set_services", (services,), ("services",))

    def set_resolved(self, name: str, addresses: tuple[str, ...]) -> asyncio.Future[int]:
        return self._call("set_resolved", (name, addresses), ("resolved", name))

    def set_guest_addresses(self, vrf: int, addresses: tuple[bytes, ...] | None) -> asyncio.Future[int]:
        return self._call("set_guest_addresses", (vrf, addresses), ("guest", vrf))

    def set_routes(self, routes: list[Route]) -> asyncio.Future[int]:
        return self._call("set_routes", (routes,), ("routes",))


def _logged(fut: asyncio.Future[Any]) -> None:
    if fut.cancelled():
        return
    e = fut.exception()
    if e is not None:
        log.error("dataplane worker: %s", e)
