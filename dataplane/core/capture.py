"""vifdump's tap in the dataplane: a copy of each packet of a captured vif, for a reader.

Nobody capturing costs the per-packet path nothing: the dataplane's
``process`` is ``PacketPath.process`` itself, and becomes ``Captures.process``
(the same verdict, then the copies) only while a capture runs.  A packet is
a captured vif's when it came in on it (its RX) or leaves by it (its TX: the
vif of its flow entry); frames the agent's services read and send (ARP,
router solicitations, their answers) are given by the services (``frame``).

Each copy is one record, ``RECORD`` then the bytes: the time (ns), the vif,
the direction (``RX``, ``TX``), the kind (``IP`` as on the vif, ``FRAME`` an
Ethernet frame, ``OTHER_SIDE`` a NAT packet as on the other side of the
rewrite: RX as rewritten, TX before; only with ``rewritten``), the drop
reason (0: none), and whether the packet went to the agent's services.  A
sink that cannot take a record (a slow reader) loses it, counted; it never
waits.  A sink whose reader is gone ends its capture.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from dataplane.core.entries import Entries
from dataplane.core.fastpath import PacketPath, Verdict
from dataplane.core.packet import Malformed, parse
from dataplane.core.vif import Vif, VifTable
from flows.layout import make_key
from flows.table import FlowTable

RECORD = struct.Struct("!QHBBBB")  # time ns, vif, direction, kind, drop reason, to the agent
RX, TX = 0, 1
IP, FRAME, OTHER_SIDE = 0, 1, 2
SNAPLEN = 65535


class Sink:
    """Where one capture's records go; ``send`` returns False for a record it could not take."""

    gone = False  # the reader is gone: the capture ends

    def send(self, record: bytes) -> bool:  # pragma: no cover - an interface
        raise NotImplementedError

    def close(self) -> None:
        pass


@dataclass(eq=False)
class Capture:
    vif: int
    sink: Sink
    rewritten: bool = False
    sent: int = 0
    lost: int = 0

    def emit(self, now: int, direction: int, kind: int, data: bytes, reason: int = 0, trapped: bool = False) -> None:
        if self.sink.send(RECORD.pack(now, self.vif, direction, kind, reason, trapped) + data[:SNAPLEN]):
            self.sent += 1
        else:
            self.lost += 1


class Captures:
    """The captures running, by vif; ``process`` is the per-packet path with them."""

    def __init__(self, path: PacketPath, vifs: VifTable, table: FlowTable, entries: Entries) -> None:
        self.path = path
        self.vifs = vifs
        self.table = table
        self.states = entries.states
        self.by_vif: dict[int, tuple[Capture, ...]] = {}
        self.on_change: Callable[[bool], None] = lambda active: None  # the dataplane swaps its process
        self._held: list[tuple[Vif, int, bytes]] | None = None  # frames sent while a packet is processed

    @property
    def active(self) -> bool:
        return bool(self.by_vif)

    def add(self, c: Capture) -> None:
        self.by_vif[c.vif] = (*self.by_vif.get(c.vif, ()), c)
        self.on_change(True)

    def remove(self, c: Capture) -> bool:
        caps = self.by_vif.get(c.vif, ())
        if c not in caps:
            return False
        rest = tuple(x for x in caps if x is not c)
        if rest:
            self.by_vif[c.vif] = rest
        else:
            del self.by_vif[c.vif]
        c.sink.close()
        self.on_change(self.active)
        return True

    def _reap(self, caps: tuple[Capture, ...]) -> None:
        for c in caps:
            if c.sink.gone:
                self.remove(c)

    def process(self, pkt: bytes, indev: int, now: int | None = None) -> Verdict:
        """``PacketPath.process``, and the packet's copies for the captures of its vifs."""
        if now is None:
            now = time.time_ns()
        self._held = []  # a trapped packet's answer is sent within process: it goes after the packet
        try:
            v = self.path.process(pkt, indev, now)
        finally:
            held, self._held = self._held or [], None
        vifs = self.vifs
        vin = vifs.by_ifindex.get(indev) if indev else vifs.host
        if vin is not None:
            self._copies(pkt, v, vin, now)
        for frame in held:
            self.frame(*frame)
        return v

    def _copies(self, pkt: bytes, v: Verdict, vin: Vif, now: int) -> None:
        caps = self.by_vif.get(vin.index)
        if caps:
            trapped = not v.accept and not v.reason
            for c in caps:
                c.emit(now, RX, IP, pkt, int(v.reason), trapped)
                if c.rewritten and v.payload is not None:
                    c.emit(now, RX, OTHER_SIDE, v.payload)
            self._reap(caps)
        if not v.accept:
            return
        out = self._out_of(pkt, vin)
        if out is None or out is vin:
            return
        caps = self.by_vif.get(out.index)
        if caps:
            for c in caps:
                if c.rewritten and v.payload is not None:
                    c.emit(now, TX, OTHER_SIDE, pkt)
                c.emit(now, TX, IP, v.payload if v.payload is not None else pkt)
            self._reap(caps)

    def _out_of(self, pkt: bytes, vin: Vif) -> Vif | None:
        """The vif a packet that came in on ``vin`` leaves by: its flow entry's."""
        try:
            p = parse(pkt)
        except Malformed:
            return None
        index = self.table.lookup(make_key(vin.index, p.src, p.dst, p.proto, p.sport, p.dport))
        st = self.states[index] if index >= 0 else None
        return st.out if st is not None else None

    def frame(self, vif: Vif, direction: int, frame: bytes) -> None:
        """A frame the agent's services read from (RX) or sent to (TX) ``vif``."""
        if self._held is not None:
            self._held.append((vif, direction, frame))
            return
        caps = self.by_vif.get(vif.index)
        if caps:
            now = time.time_ns()
            for c in caps:
                c.emit(now, direction, FRAME, frame)
            self._reap(caps)
