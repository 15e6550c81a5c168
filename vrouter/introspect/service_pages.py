"""``services.xml`` and ``sandesh_trace.xml``: what the agent's services for guests and its
metadata proxy did, and the trace buffers.

The counters come from where ``vrouter status`` reads them: the services'
``ServiceCounters``, the dataplane's drops (added up over the workers), and the
metadata proxy process's report.  The vRouter agent also keeps the last packets
of each protocol (``DhcpPktSandesh`` and the like); this one keeps their
exchanges in the trace buffers instead, so ``pkt_list`` is always empty.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dataplane.linux.totals import Totals
from flows.layout import DropReason
from vrouter.introspect import sandesh
from vrouter.introspect.schema import STRUCTS
from vrouter.introspect.traces import METADATA_SIZE, ConfigTrace, flow_lines, metadata_lines
from vrouter.introspect.writer import written
from vrouter.messages.proxy import JournalQuery, ProxyReport
from vrouter.services.metadata.supervisor import ProxyProcessError

if TYPE_CHECKING:
    from vrouter.agent.node import Node

FLOW, METADATA = "Flow", "Metadata"


def _known(struct: str, values: dict[str, Any]) -> dict[str, Any]:
    """The values the struct has fields for (the vRouter's protocols count things ours do not,
    and the other way round)."""
    names = {f.name for f in STRUCTS[struct]}
    return {k: v for k, v in values.items() if k in names}


async def _report(node: Node) -> ProxyReport | None:
    try:
        report: ProxyReport = await node.proxy.report()
    except ProxyProcessError:
        return None
    return report


def _metadata(node: Node, r: ProxyReport | None) -> dict[str, Any]:
    s = r.stats if r is not None else None
    return {
        "metadata_server_port": node.cfg.metadata.proxy_port,
        "metadata_requests": s.requests if s else 0,
        "metadata_responses": s.responses if s else 0,
        "metadata_proxy_sessions": s.proxy_sessions if s else 0,
        "metadata_internal_errors": s.internal_errors if s else 0,
    }


async def metadata_info(node: Node) -> bytes:
    """``Snh_MetadataInfo``: the proxy's counters (all 0 while its process does not answer)."""
    return sandesh.document([sandesh.response("MetadataResponse", _metadata(node, await _report(node)))])


def _dhcp_stats(node: Node, totals: Totals) -> dict[str, Any]:
    c = node.services.stats
    return {
        "dhcp_discover": c.dhcp_discover, "dhcp_request": c.dhcp_request, "dhcp_inform": c.dhcp_inform, "dhcp_decline": c.dhcp_decline,
        "dhcp_other": c.dhcp_release, "dhcp_errors": totals.drops.get(DropReason.INVALID_DHCP, 0), "offers_sent": c.dhcp_offer,
        "acks_sent": c.dhcp_ack, "nacks_sent": c.dhcp_nak,
    }  # fmt: skip


async def dhcp_info(node: Node) -> bytes:
    """``Snh_DhcpInfo``: DhcpStats, then the (empty) packet list."""
    return sandesh.document([
        sandesh.response("DhcpStats", _dhcp_stats(node, await node.ksync.totals()), more=True),
        sandesh.response("DhcpPktSandesh", {"type": "Dhcp", "pkt_list": []}),
    ])  # fmt: skip


async def show_all(node: Node) -> bytes:
    """``Snh_ShowAllInfo``: the packet counters of every service, then the metadata proxy's."""
    c = node.services.stats
    totals = await node.ksync.totals()
    dhcp = _dhcp_stats(node, totals)
    dhcp_rcvd = c.dhcp_discover + c.dhcp_request + c.dhcp_inform + c.dhcp_decline + c.dhcp_release
    dhcp_sent = c.dhcp_offer + c.dhcp_ack + c.dhcp_nak
    dns_sent = c.dns_answered + c.dns_nxdomain + c.dns_refused + c.dns_notimp
    arp_rcvd = c.arp_requests
    icmp_rcvd = icmp_sent = c.icmp_echo_replies
    drops = sum(totals.drops.get(r, 0) for r in (DropReason.INVALID_DHCP, DropReason.INVALID_DNS, DropReason.INVALID_ARP))
    pkt = {
        "total_rcvd": dhcp_rcvd + c.dns_queries + arp_rcvd + icmp_rcvd, "dhcp_rcvd": dhcp_rcvd, "arp_rcvd": arp_rcvd,
        "dns_rcvd": c.dns_queries, "icmp_rcvd": icmp_rcvd, "flow_rcvd": totals.setups, "dropped": drops,
        "total_sent": dhcp_sent + dns_sent + c.arp_replies + icmp_sent, "dhcp_sent": dhcp_sent, "arp_sent": c.arp_replies,
        "dns_sent": dns_sent, "icmp_sent": icmp_sent,
    }  # fmt: skip
    arp = {"arp_requests": c.arp_requests, "arp_replies": c.arp_replies, "arp_invalid_packets": totals.drops.get(DropReason.INVALID_ARP, 0)}
    dns = {"dns_requests": c.dns_queries, "dns_resolved": c.dns_answered + c.dns_forwarded, "dns_unsupported": c.dns_notimp,
           "dns_failures": c.dns_nxdomain + c.dns_refused, "dns_drops": totals.drops.get(DropReason.INVALID_DNS, 0)}  # fmt: skip
    icmp = {"icmp_gw_ping": c.icmp_echo_replies}
    return sandesh.document([
        sandesh.response("PktStats", pkt, more=True),
        sandesh.response("DhcpStats", dhcp, more=True),
        sandesh.response("DhcpPktSandesh", {"type": "Dhcp", "pkt_list": []}, more=True),
        sandesh.response("ArpStats", _known("ArpStats", arp), more=True),
        sandesh.response("DnsStats", _known("DnsStats", dns), more=True),
        sandesh.response("IcmpStats", _known("IcmpStats", icmp), more=True),
        sandesh.response("MetadataResponse", _metadata(node, await _report(node))),
    ])  # fmt: skip


# -- traces ------------------------------------------------------------------------------------------


def buffer_names(node: Node) -> list[str]:
    return sorted({*node.services.traces, "Config", FLOW, METADATA})


def trace_list(node: Node) -> bytes:
    """``Snh_SandeshTraceBufferListRequest``: the buffers' names, each linking to its lines."""
    names = [{"trace_buf_name": n} for n in buffer_names(node)]
    return sandesh.document([sandesh.response("SandeshTraceBufferListResponse", {"trace_buffer_list": names})])


async def trace(node: Node, config: ConfigTrace, args: dict[str, Any]) -> bytes:
    """``Snh_SandeshTraceRequest?x=NAME[&count=N]``: a buffer's lines, oldest first (the first N
    with ``count``, as Sandesh reads them); an unknown name answers none."""
    name = str(args.get("buf_name", ""))
    count = max(0, int(args.get("count", 0) or 0))
    if name == FLOW:
        entries = [*node.dp.flow_setup.trace, *await node.pool.traces()]
        lines = await written(lambda: flow_lines(entries, count))
    elif name == METADATA:
        lines = metadata_lines(await _journal(node))
    elif name == "Config":
        lines = config.buffer.lines()
    elif name in node.services.traces:
        lines = node.services.traces[name].lines()
    else:
        lines = []
    if count:
        lines = lines[:count]
    return sandesh.document([sandesh.response("SandeshTraceTextResponse", {"traces": lines})])


async def _journal(node: Node) -> list:
    """The newest entries of the proxy's journal (none while its process does not answer)."""
    try:
        last = (await node.proxy.journal(JournalQuery(since=0, limit=1))).last
        page = await node.proxy.journal(JournalQuery(since=max(0, last - METADATA_SIZE), limit=METADATA_SIZE))
    except ProxyProcessError:
        return []
    return list(page.entries)
