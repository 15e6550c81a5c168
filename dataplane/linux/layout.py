"""Which NFQUEUE queues a node has, which dataplane worker reads each, and the workers' shared flow counts.

What each worker owns (the nftables rules follow this layout):

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
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass

from flows.layout import MAX_WRITERS


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
