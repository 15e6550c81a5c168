"""Watching and breaking the metadata path of a running agent: vifdump's captures, the proxy's
journal, and the fault rules the proxy applies."""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid as uuidlib
from typing import TYPE_CHECKING

from dataplane.core.capture import Capture
from dataplane.linux.vifdump import DatagramSink
from dataplane.linux.workers import AddCapture
from infra.children import ChildError
from vrouter.agent.queues import RulesError
from vrouter.messages.control import FaultAdd, FaultDel, VifdumpStart, VifdumpStarted, VifdumpStop, VifdumpStopped
from vrouter.messages.proxy import Ack, FaultList, FaultRecord, FaultSpec, JournalMark, JournalPage, JournalQuery
from vrouter.model import PortError
from vrouter.services.metadata.faults import FaultError, Rule, check, effect_text
from vrouter.services.metadata.supervisor import ProxyProcessError

if TYPE_CHECKING:
    from vrouter.agent.node import Node

log = logging.getLogger("vrouter.agent")


class Observation:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.state = node.state
        self.captures: dict[str, Capture] = {}  # by the reader's socket path
        self._capture_ids: dict[str, int] = {}  # ... and its id in the other dataplane workers
        self._capture_id = 0
        self.next_fault_id = 1

    # -- vifdump -------------------------------------------------------------------------------

    async def vifdump_start(self, req: VifdumpStart) -> VifdumpStarted:
        vif = self.node.dp.vifs.get(req.vif)
        if vif is None:
            known = ", ".join("vif0/%d" % i for i in sorted(self.node.dp.vifs))
            raise PortError("vif0/%d does not exist (there are %s; see vrouter vif --list)" % (req.vif, known))
        self._reap_captures()
        if req.socket in self.captures:
            raise PortError("a capture already goes to %s" % req.socket)
        try:
            sink = DatagramSink(req.socket)
        except OSError as e:
            raise PortError("cannot reach the capture socket %s: %s" % (req.socket, e.strerror or e)) from None
        capture = self.captures[req.socket] = Capture(vif.index, sink, req.rewritten)
        self.node.dp.captures.add(capture)
        self._capture_id += 1
        self._capture_ids[req.socket] = self._capture_id
        try:
            await self.node.pool.add_capture(AddCapture(self._capture_id, vif.index, req.socket, req.rewritten))
        except ChildError as e:
            self._end_capture(req.socket, capture)
            raise PortError(str(e)) from None
        try:
            self.node.ksync.capture_changed(vif.index)
        except RulesError as e:
            self._end_capture(req.socket, capture)
            raise PortError(str(e)) from None
        log.info("vifdump: capturing vif0/%d (%s) to %s", vif.index, vif.name, req.socket)
        return VifdumpStarted(vif.index, vif.name, vif.mac or "")

    async def vifdump_stop(self, req: VifdumpStop) -> VifdumpStopped:
        capture = self.captures.get(req.socket)
        if capture is None:
            raise PortError("no capture goes to %s" % req.socket)
        cid = self._capture_ids.get(req.socket, 0)
        sent, lost = (await self.node.ksync.totals()).captures.get(cid, (0, 0))  # the workers' copies
        self._end_capture(req.socket, capture)
        sent, lost = sent + capture.sent, lost + capture.lost
        log.info("vifdump: capture of vif0/%d ended: %d packets, %d lost", capture.vif, sent, lost)
        return VifdumpStopped(sent, lost)

    def _end_capture(self, path: str, capture: Capture) -> None:
        self.node.dp.captures.remove(capture)
        self.captures.pop(path, None)
        self.node.pool.remove_capture(self._capture_ids.pop(path, 0))
        try:
            self.node.ksync.capture_changed(capture.vif)
        except RulesError as e:
            log.error("vifdump: %s", e)

    def _reap_captures(self) -> None:
        """Forget captures whose reader went without saying (the dataplane already ended them)."""
        for path, c in list(self.captures.items()):
            if c.sink.gone or c not in self.node.dp.captures.by_vif.get(c.vif, ()):
                self._end_capture(path, c)

    # -- the metadata path: journal and faults --------------------------------------------------

    async def metadata_log(self, req: JournalQuery) -> JournalPage:
        instance = None if req.instance is None else _instance_uuid(req.instance)
        if req.vif is not None and req.vif < 0:
            raise FaultError("--vif %d: not a vif" % req.vif)
        query = JournalQuery(max(0, req.since), instance, req.vif, min(max(1, req.limit), 5000))
        try:
            return await self.node.proxy.journal(query)
        except ProxyProcessError as e:
            raise FaultError("the journal is the metadata proxy process's: %s" % e) from None

    async def metadata_mark(self, req: JournalMark) -> Ack:
        mark = JournalMark(_instance_uuid(req.instance), req.what.strip("/")[:64] or "mark", req.note[:200], max(0, req.vif))
        try:
            return await self.node.proxy.mark(mark)
        except ProxyProcessError as e:
            raise FaultError("the journal is the metadata proxy process's: %s" % e) from None

    async def _faults_in_force(self) -> list[FaultSpec]:
        """The agent's copy of the rules, less those the proxy has ended (their count or time is up)."""
        proxy = self.node.proxy
        try:
            alive = {r.id: r.applied for r in await proxy.fault_records()}
        except ProxyProcessError:
            return [f for f in proxy.faults if not f.until or time.monotonic() < f.until]
        return [dataclasses.replace(f, applied=alive[f.id]) for f in proxy.faults if f.id in alive]

    async def fault_add(self, req: FaultAdd) -> FaultRecord:
        instance = None if req.instance is None else _instance_uuid(req.instance)
        effect, value = check(instance, req.vif, req.all, req.path, req.status, req.delay, req.throttle, req.reset, req.drop, req.count,
                              req.for_s, req.probability, req.refuse)  # fmt: skip
        fid, self.next_fault_id = self.next_fault_id, self.next_fault_id + 1
        now = time.monotonic()
        spec = FaultSpec(fid, instance or "", req.vif or 0, req.path, effect, value, req.count or 0, now + req.for_s if req.for_s else 0.0,
                         req.probability or 1.0, req.for_s or 0.0)  # fmt: skip
        if instance and not any(p.instance_uuid == instance for p in self.state.ports.values()):
            log.warning("metadata fault %d: no port of this node belongs to instance %s (yet)", fid, instance)
        if req.vif and req.vif not in self.node.dp.vifs:
            log.warning("metadata fault %d: no vif0/%d on this node (yet)", fid, req.vif)
        rules = await self._faults_in_force()
        try:
            await self.node.proxy.set_faults([*rules, spec])
        except ProxyProcessError as e:
            raise FaultError("fault %d kept, but the metadata proxy process did not take it (%s): it applies once the process is back"
                             % (fid, e)) from None  # fmt: skip
        record = Rule.of(spec).record(now)
        log.info("metadata fault %d: %s %s -> %s", fid, record.target, spec.path, effect_text(record))
        return record

    async def fault_list(self, _: FaultList) -> list[FaultRecord]:
        proxy = self.node.proxy
        try:
            records = await proxy.fault_records()
        except ProxyProcessError as e:
            raise FaultError("the metadata proxy process does not answer (%s)" % e) from None
        applied = {r.id: r.applied for r in records}  # what a new proxy process would go on from
        proxy.faults = [dataclasses.replace(f, applied=applied[f.id]) for f in proxy.faults if f.id in applied]
        return records

    async def fault_del(self, req: FaultDel) -> FaultRecord:
        proxy = self.node.proxy
        try:
            records = {r.id: r for r in await proxy.fault_records()}
        except ProxyProcessError as e:
            raise FaultError("the metadata proxy process does not answer (%s)" % e) from None
        if req.id not in records:
            known = ", ".join(str(i) for i in sorted(records)) or "none"
            raise FaultError("no fault %d in force (in force: %s; see vrouter metadata fault list)" % (req.id, known))
        try:
            await proxy.set_faults(
                [dataclasses.replace(f, applied=records[f.id].applied) for f in proxy.faults if f.id != req.id and f.id in records]
            )
        except ProxyProcessError as e:
            raise FaultError("the metadata proxy process did not take the change (%s)" % e) from None
        log.info("metadata fault %d deleted", req.id)
        return records[req.id]


def _instance_uuid(value: str) -> str:
    try:
        return str(uuidlib.UUID(value))
    except ValueError:
        raise FaultError("--instance %r: not a uuid" % value) from None
