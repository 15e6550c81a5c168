"""The VMs' NFQUEUE queues: bound in the dataplane worker that reads each, and the nftables tables
that send each VM's packets to them.

Which worker reads which queue is ``dataplane.linux.layout``'s.  A VM plugged
has its queues bound at once (each in its worker; none of them if one cannot
be), and its rules appended to the tables in force before ``port add``
answers: its packets go to its own queues from the first.  Other changes (a VM
unplugged, the networks' service addresses, a capture) have the tables made
anew within ``RULES_DELAY``, once for all the changes made meanwhile; so does a
VM plugged that changes how many buckets the tables have (at 17 and 513 VMs),
at once.  A VM unplugged keeps its queues until the tables no longer send to
them (what is in them then is dropped); their kernel drop counts are kept
(``gone``) so that the node's total does not go down.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass

from dataplane.core.dataplane import Dataplane
from dataplane.core.vif import Vif
from dataplane.linux.layout import QueueLayout
from dataplane.linux.nfqueue import QueueShell
from dataplane.linux.nftables import NftError, NftSocket, QueueRules, VmQueue, buckets_for
from dataplane.linux.ports import PORT_RANGE
from dataplane.linux.workers import WorkerPool
from infra.children import ChildError
from vrouter.agent.kernel_stats import QueueDrops
from vrouter.agent.state import NodeState
from vrouter.model import PortError

log = logging.getLogger("vrouter.agent")

RULES_DELAY = 0.2  # seconds from a change of the VMs to the tables' rebuild, for every change meanwhile


class RulesError(Exception):
    """The nftables tables cannot be made; the message says why."""


@dataclass(frozen=True)
class QueueSettings:
    """What the tables and the queues need of agent.conf."""

    vhost_name: str
    vm_queue_length: int
    tunnels: bool  # a node of a cloud: MPLS over UDP from the other nodes to the tunnel queue
    fast_mark: int = 0  # the ebpf datapath's mark (0: nfqueue datapath)


class VmQueues:
    def __init__(self, layout: QueueLayout, settings: QueueSettings, shell: QueueShell, pool: WorkerPool, dp: Dataplane,
                 state: NodeState) -> None:  # fmt: skip
        self.layout = layout
        self.settings = settings
        self.shell = shell
        self.pool = pool
        self.dp = dp
        self.state = state  # the networks: what the VMs send to a gateway or service address goes to their service queues
        self.started = False  # the queues are bound from then on (before: at start, all at once)
        self.made_table = False  # our nftables table exists: delete it at stop
        self.gone = 0  # queue overflows of VMs unplugged since start
        self.drops = QueueDrops()  # the kernel's drop counts of every queue, kept across a worker's restart
        self._due: asyncio.TimerHandle | None = None  # the tables' next rebuild
        self._leaving: set[int] = set()  # queues of unplugged VMs, unbound at the next rebuild
        self.captured: set[int] = set()  # vifs under a vifdump capture (ebpf: the node's replies to them stay queued)
        self.buckets = 0  # the bucket chains of the tables in force
        self._in_force: dict[int, int] = {}  # vif index -> the tap's ifindex its rules in force match

    # -- which queues --

    def of(self, vif_index: int) -> tuple[int, ...]:
        """A VM's own NFQUEUE queues: its data queues (one a worker), then its service queue."""
        return self.layout.queues_of(vif_index)

    def overflows_of(self, vif: Vif, overflows: dict[int, int]) -> int:
        """What the kernel dropped from a VM's queues (0 for a host vif), given every queue's count
        (``drops.read()``)."""
        return sum(overflows.get(q, 0) for q in self.of(vif.index)) if vif.kind == "Virtual" else 0

    def all_overflows(self, overflows: dict[int, int]) -> int:
        """What the kernel dropped from every queue the dataplane reads, and from those of VMs gone."""
        return sum(overflows.get(q, 0) for q in set(self.shell.queues) | self.pool.queues()) + self.gone

    # -- binding --

    async def start(self) -> None:
        """Bind the queues of every VM plugged so far; PortError if one cannot be."""
        self.started = True
        for vif in list(self.dp.vifs.values()):
            if vif.kind == "Virtual":
                await self.add(vif.index)

    async def add(self, vif_index: int) -> None:
        """Bind a VM's queues, each in the worker that reads it; PortError (nothing of them left
        bound) if one cannot be."""
        layout = self.layout
        self._leaving.difference_update(self.of(vif_index))  # unplugged and plugged again before the rules changed: kept
        try:
            for q in layout.read_by(vif_index, 0):
                if q not in self.shell.queues:
                    try:
                        self.shell.add(q, self.settings.vm_queue_length)
                    except OSError as e:
                        raise PortError("vif0/%d: cannot bind its NFQUEUE queue %d (%s): is another process using it?" % (vif_index, q, e)) from None
            for w in range(1, layout.workers):
                try:
                    await self.pool.bind(w, layout.read_by(vif_index, w), self.settings.vm_queue_length)
                except ChildError as e:
                    raise PortError("vif0/%d: %s" % (vif_index, e)) from None
        except PortError:
            for q in self.of(vif_index):
                self._unbind(q)
            raise

    def plugged(self, vif_index: int) -> None:
        """A VM's queues are bound: its rules in force now, appended to the tables (or the tables
        made anew, when it changes their buckets); at the next rebuild if that fails."""
        vif = self.dp.vifs.get(vif_index)
        if not self.made_table or vif is None:
            return  # the tables are made at start, with the VMs plugged by then
        if self._in_force.get(vif_index) == vif.ifindex:
            return  # a rebuild while its queues were bound has them already
        virtual = sum(1 for v in self.dp.vifs.values() if v.kind == "Virtual")
        try:
            if buckets_for(virtual) != self.buckets or vif_index in self.captured:
                self.apply_rules()
                return
            with NftSocket() as nft:
                nft.append_vms((self._vm_queue(vif),), self.buckets)
        except (RulesError, NftError) as e:
            log.error("vif0/%d: cannot add its rules to the nftables tables (%s); they follow with the next rebuild", vif_index, e)
            self.rules_changed()
            return
        stale = self._in_force.get(vif_index)
        self._in_force[vif_index] = vif.ifindex
        if stale is not None and stale != vif.ifindex:
            self.rules_changed()  # its tap's old rule goes with the next rebuild

    def _vm_queue(self, v: Vif) -> VmQueue:
        layout = self.layout
        data = layout.data_queues(v.index)
        return VmQueue(v.ifindex, data[0], layout.service_queue(v.index), v.metadata_ip_bytes, v.metadata_ip6_bytes, len(data))

    def leave(self, vif_index: int) -> None:
        """A VM was unplugged: its queues go at the tables' next rebuild."""
        self._leaving.update(self.of(vif_index))
        self.rules_changed()

    def _unbind(self, q: int) -> None:
        """Stop reading queue ``q`` (in the worker that reads it), keeping its count of drops."""
        local = q in self.shell.queues
        remote = [w for w in self.pool.workers if q in w.queues]
        if local or remote:
            self.gone += self.drops.forget(q)  # its count leaves /proc with it
        if local:
            self.shell.remove(q)
        for w in remote:
            self.pool.unbind(w.writer, (q,))

    # -- the tables --

    @property
    def rules_pending(self) -> bool:
        """Whether the tables' rebuild for a change of the ports or networks is still to come."""
        return self._due is not None

    def rules_changed(self) -> None:
        """The VMs or the networks changed: the tables follow within ``RULES_DELAY``."""
        if self._due is None and self.made_table:
            self._due = asyncio.get_running_loop().call_later(RULES_DELAY, self._apply_due)

    def _apply_due(self) -> None:
        self._due = None
        try:
            self.apply_rules()
        except RulesError as e:
            log.error("%s; the previous tables stay, and the VMs plugged since share the node's queue", e)

    def apply_rules(self) -> None:
        """The nftables tables as the vifs are now: each VM's tap and metadata IPs to its queues;
        then the queues of VMs unplugged meanwhile go.  RulesError if they cannot be made."""
        self.cancel()
        self.made_table = True  # also when half made: a failed batch leaves nothing, delete is a no-op
        layout = self.layout
        virtual = [v for v in sorted(self.dp.vifs.values(), key=lambda v: v.index) if v.kind == "Virtual"]
        vms = tuple(self._vm_queue(v) for v in virtual)
        captured = tuple(vm for v, vm in zip(virtual, vms, strict=True) if v.index in self.captured)
        nat = tuple((*layout.nat_ports(w, *PORT_RANGE), layout.node_queue(w)) for w in range(layout.workers)) if layout.workers > 1 else ()
        rules = QueueRules(queue_num=layout.base, vhost_name=self.settings.vhost_name, nat_ports=PORT_RANGE, vms=vms, service_ips=self._service_ips(),
                           service_ips6=self._service_ips6(),
                           tunnel_queue=layout.tunnel_queue if self.settings.tunnels else -1, nat_ranges=nat, fast_mark=self.settings.fast_mark,
                           captured=captured)  # fmt: skip
        try:
            with NftSocket() as nft:
                nft.create_queue_tables(rules)  # both families at once, or neither
        except NftError as e:
            raise RulesError("cannot create the nftables table: %s" % e) from None
        self.buckets = buckets_for(len(vms))
        self._in_force = {v.index: v.ifindex for v in virtual}
        leaving, self._leaving = self._leaving, set()
        for q in leaving:
            self._unbind(q)

    def _service_ips(self) -> tuple[bytes, ...]:
        """The networks' gateways and service addresses, packed."""
        return tuple(socket.inet_aton(a) for n in self.state.networks.values() for a in (n.gateway, n.dns_server) if a)

    def _service_ips6(self) -> tuple[bytes, ...]:
        """The dual-stack networks' IPv6 gateways and service addresses, packed."""
        return tuple(socket.inet_pton(socket.AF_INET6, a) for n in self.state.networks.values() for a in (n.gateway6, n.dns_server6) if a)

    def cancel(self) -> None:
        if self._due is not None:
            self._due.cancel()
            self._due = None

    def delete_rules(self) -> None:
        self.cancel()
        if self.made_table:
            try:
                with NftSocket() as nft:
                    nft.delete_tables()
            except OSError as e:
                log.error("could not delete the nftables table: %s", e)
