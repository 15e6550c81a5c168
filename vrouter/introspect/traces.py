"""The trace buffers the introspect shows (``sandesh_trace.xml``), as the vRouter agent's.

What an operator reads when a guest gets nothing: ``Config`` (ports plugged and
unplugged, networks and link-local services changed: the agent's ``Config`` and
``Oper db.interface.0`` buffers in one), ``Dhcp`` and ``Dhcpv6`` (each message
a guest sent and each answer, kept by the services), ``Flow`` (every flow
set-up and refusal, kept by each dataplane worker and gathered when read) and
``Metadata`` (the metadata proxy's requests and answers: its journal, read
when asked, so nothing is kept twice).  Each buffer is bounded: its oldest
entries go first.  A line is ``<µs since the epoch> <Kind>Trace: <text>``, as
Sandesh prints a trace.
"""

from __future__ import annotations

import socket

from dataplane.core.flowsetup import FLOW_TRACE, TraceEntry
from flows.layout import DROP_NAMES, KEY, Action
from infra.trace import TraceBuffer
from vrouter.agent.state import Change, NetworkChanged, PortChanged, RemoteChanged, ResolvedChanged, ServicesChanged
from vrouter.messages.proxy import JournalEntry

CONFIG_SIZE = 2000  # as the vRouter agent's Config buffer
METADATA_SIZE = 500  # the vRouter agent's Metadata buffer: the last 500 requests and answers
_PROTO = {1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPv6"}
_DROPS = {int(r): name for r, name in DROP_NAMES.items()}
_ACTIONS = {int(a): a.name for a in Action}


class ConfigTrace:
    """A subscriber of the node's state that writes each change to the ``Config`` buffer."""

    def __init__(self) -> None:
        self.buffer = TraceBuffer("Config", CONFIG_SIZE, "ConfigTrace")

    async def changed(self, change: Change) -> int:
        add = self.buffer.add
        origin = change.origin.value
        if isinstance(change, PortChanged):
            p = change.port or change.before
            assert p is not None
            what = "plugged" if change.before is None else "unplugged" if change.port is None else "changed"
            add("Port %s %s (%s): tap %s vif0/%d VRF %d IP %s%s MAC %s VM %s (%s)" % (
                p.uuid, what, origin, p.tap_name, p.vif, p.vrf, p.ip_address, " " + p.ipv6_address if p.ipv6_address else "",
                p.mac, p.vm_name or "-", p.instance_uuid))  # fmt: skip
        elif isinstance(change, NetworkChanged):
            n = change.net or change.before
            assert n is not None
            what = "added" if change.before is None else "removed" if change.net is None else "changed"
            add("Network %s %s %s (%s): subnet %s%s" % (n.name, n.uuid, what, origin, n.subnet, " " + n.subnet6 if n.subnet6 else ""))
        elif isinstance(change, ServicesChanged):
            names = ", ".join(sorted(s.name for s in change.services.values())) or "none"
            add("Link-local services set (%s): %s" % (origin, names))
        elif isinstance(change, ResolvedChanged):
            add("Fabric DNS name %s resolved to %s" % (change.name, ", ".join(change.addresses) or "nothing"))
        elif isinstance(change, RemoteChanged):
            add("Routes to other nodes' VMs (%s): %d" % (origin, len(change.routes)))
        return 0


def flow_lines(entries: list[TraceEntry], count: int = 0) -> list[str]:
    """The ``Flow`` buffer: the workers' traces merged by time, the last FLOW_TRACE of them (the
    first ``count`` of those, as Sandesh reads a buffer), made into text only then."""
    entries = sorted(entries, key=lambda e: e[0])[-FLOW_TRACE:]
    if count:
        entries = entries[:count]
    out = []
    for t, vif, key, index, action, reason in entries:
        nh, src, dst, sport, dport, proto, family = KEY.unpack(key)
        af, alen = (socket.AF_INET, 4) if family == 4 else (socket.AF_INET6, 16)
        flow = "%s %s:%d -> %s:%d nh %d" % (_PROTO.get(proto, str(proto)), socket.inet_ntop(af, src[:alen]), sport,
                                            socket.inet_ntop(af, dst[:alen]), dport, nh)  # fmt: skip
        if index < 0:
            out.append("%d FlowTrace: refused on vif0/%d: %s; drop reason %s" % (t, vif, flow, _DROPS.get(reason, str(reason))))
        else:
            out.append("%d FlowTrace: set up on vif0/%d: %s; index %d action %s" % (t, vif, flow, index, _ACTIONS.get(action, str(action))))
    return out


def metadata_lines(entries: list[JournalEntry]) -> list[str]:
    """The ``Metadata`` buffer from the proxy's journal: a request and its answer per entry, as
    the vRouter agent's MetadataTrace words them."""
    out = []
    for e in entries:
        t = int(e.time * 1_000_000)
        if e.method == "LAB":
            out.append("%d MetadataTrace: %s for VM : %s (%s)" % (t, e.path.strip("/"), e.vm_ip or "-", e.reason or "lab mark"))
            continue
        out.append("%d MetadataTrace: %s request for VM : %s URL : %s" % (t, e.method, e.vm_ip, e.path))
        t_end = t + int(e.total_ms * 1000)
        if e.status:
            out.append("%d MetadataTrace: Metadata for VM : %s Response : %d%s" % (t_end, e.vm_ip, e.status, " (%s)" % e.reason if e.reason else ""))
        else:
            out.append("%d MetadataTrace: Metadata for VM : %s Error : %s" % (t_end, e.vm_ip, e.reason or "no answer"))
    return out[-2 * METADATA_SIZE :]
