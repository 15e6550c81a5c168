"""``kstate.xml`` and ``pkt.xml``: the flow table as the vRouter agent's introspect shows it.

``Snh_KFlowReq`` walks the table (the kernel's, in the vRouter; here the
shared table both datapaths use) from index 0, 100 entries an answer;
``flow_handle`` is where the next answer starts (``Snh_NextKFlowReq?x=N``), and
"0" once the walk has reached the end.  ``Snh_KFlowReq?flow_idx=N`` is one
entry.  ``Snh_FetchFlowRecord`` looks a flow up by its key (next hop, addresses,
ports, protocol) and answers the agent's view of it.  Reads only: the table is
read in place, nothing is changed.
"""

from __future__ import annotations

import ipaddress
import uuid
from typing import TYPE_CHECKING, Any

from flows.entry import FlowEntry
from flows.layout import DROP_NAMES, DROP_SHORT, Action, DropReason, Flag, make_key
from vrouter.introspect import sandesh
from vrouter.model import PROJECT_FQ_NAME

if TYPE_CHECKING:
    from vrouter.agent.node import Node

PER_ANSWER = 100  # kstate's kMaxEntriesPerResponse
_FLAG_NAMES = ((Flag.ACTIVE, "ACTIVE"), (Flag.SNAT, "SNAT"), (Flag.SPAT, "SPAT"), (Flag.DNAT, "DNAT"), (Flag.DPAT, "DPAT"),
               (Flag.LINK_LOCAL, "LINK_LOCAL"), (Flag.EVICT_CANDIDATE, "EVICT_CANDIDATE"), (Flag.NEW_FLOW, "NEW_FLOW"),
               (Flag.RFLOW_VALID, "RFLOW_VALID"))  # fmt: skip
# An entry keeps the TCP header flags seen in its direction (SYN, FIN, RST, ACK); the agent's names for
# them (vr_flow.h's VR_FLOW_TCP_*, which also say which direction: ours are per entry): ACK means established
_TCP_NAMES = ((0x02, "SYN"), (0x10, "ESTB"), (0x01, "FIN"), (0x04, "RST"))
TRAFFIC_PASS, TRAFFIC_DENY = 1 << 5, 1 << 3  # the agent's TrafficAction bits


def _flags(flags: int) -> str:
    names = [name for bit, name in _FLAG_NAMES if flags & bit]
    return "|".join(" %s " % n for n in names)


def _tcp_flags(bits: int) -> str:
    return "|".join(" %s " % n for bit, n in _TCP_NAMES if bits & bit)


def _drop_reason(reason: int) -> str:
    r = DropReason(reason) if reason in DropReason._value2member_map_ else DropReason.NONE
    return DROP_SHORT.get(r) or DROP_NAMES.get(r, "Unknown").replace(" ", "")


def _addr(raw: bytes) -> str:
    return str(ipaddress.ip_address(raw))


def kflow_info(e: FlowEntry) -> dict[str, Any]:
    row: dict[str, Any] = {
        "index": e.index, "rflow": e.rindex, "sip": _addr(e.src), "sport": e.sport, "dip": _addr(e.dst), "dport": e.dport,
        "proto": e.proto, "vrf_id": e.vrf, "action": Action(e.action).name if e.action in Action._value2member_map_ else "INVALID",
        "flags": _flags(e.flags), "d_vrf_id": e.dvrf, "bytes": e.bytes & 0x7FFFFFFF, "pkts": e.packets & 0x7FFFFFFF, "nhid": e.nh,
        "underlay_udp_sport": 0, "gen_id": e.gen, "qos_id": -1, "underlay_gw_index": -1,
    }  # fmt: skip
    if e.proto == 6:
        row["tcp_flags"] = _tcp_flags(e.tcp_flags)
    if e.action == Action.DROP:
        row["drop_reason"] = _drop_reason(e.drop_reason)
    return row


def _walk(node: Node, start: int) -> bytes:
    table = node.dp.table
    indices = table.active_from(start, PER_ANSWER + 1)
    page = indices[:PER_ANSWER]
    handle = str(indices[PER_ANSWER]) if len(indices) > PER_ANSWER else "0"
    flows = [kflow_info(table.read(i)) for i in page]
    return sandesh.document([sandesh.response("KFlowResp", {"flow_list": flows, "flow_handle": handle})])


def kflow(node: Node, args: dict[str, Any]) -> bytes:
    """``Snh_KFlowReq``: one entry (``flow_idx``) or the first 100."""
    idx = int(args.get("flow_idx", -1))
    if idx == -1:
        return _walk(node, 0)
    table = node.dp.table
    if not 0 <= idx < table.capacity or not table.read(idx).flags & Flag.ACTIVE:
        return sandesh.error(name="ErrResp")
    return sandesh.document([sandesh.response("KFlowResp", {"flow_list": [kflow_info(table.read(idx))], "flow_handle": "0"})])


def next_kflow(node: Node, args: dict[str, Any]) -> bytes:
    """``Snh_NextKFlowReq?x=N``: the next 100 from index N (from 0 when N is empty or not a number)."""
    text = str(args.get("flow_handle", "")).split(" ")[0]
    start = int(text) if text.isdigit() else 0
    return _walk(node, start)


def fetch_flow_record(node: Node, args: dict[str, Any]) -> bytes:
    """``Snh_FetchFlowRecord``: the flow with that key, or FlowErrorResp."""
    try:
        src = ipaddress.ip_address(str(args.get("sip", "")).strip())
        dst = ipaddress.ip_address(str(args.get("dip", "")).strip())
        if src.version != dst.version:
            raise ValueError("mixed families")
        key = make_key(int(args.get("nh", 0)) & 0xFFFFFFFF, src.packed, dst.packed, int(args.get("protocol", 0)) & 0xFF,
                       int(args.get("src_port", 0)) & 0xFFFF, int(args.get("dst_port", 0)) & 0xFFFF)  # fmt: skip
    except ValueError:
        return sandesh.flow_error()
    table = node.dp.table
    index = table.find(key)
    if index < 0:
        return sandesh.flow_error()
    return sandesh.document([sandesh.response("FlowRecordResp", {"record": flow_record(node, table.read(index))})])


def flow_record(node: Node, e: FlowEntry) -> dict[str, Any]:
    """The agent's SandeshFlowData of an entry."""
    drop = e.action == Action.DROP
    vif = node.dp.vifs.get(e.vif)
    port = node.state.by_vif(e.vif) if vif is not None else None
    vn = node.state.networks.get(port.vn_uuid) if port else None
    record: dict[str, Any] = {
        "vrf": e.vrf, "sip": _addr(e.src), "dip": _addr(e.dst), "src_port": e.sport, "dst_port": e.dport, "protocol": e.proto,
        "dest_vrf": e.dvrf, "uuid": str(uuid.UUID(int=(e.index << 64) | e.gen)),
        "action": TRAFFIC_DENY if drop else TRAFFIC_PASS, "action_str": [{"action": "deny" if drop else "pass"}],
        "direction": "egress" if e.reverse else "ingress", "stats_bytes": e.bytes, "stats_packets": e.packets,
        "nat": "enabled" if e.action == Action.NAT else "disabled", "gen_id": e.gen, "flow_handle": e.index, "refcount": 1,
        "implicit_deny": "no", "short_flow": "no", "local_flow": "yes", "src_vn_list": [vn.fq_name] if vn else [],
        "dst_vn_list": [vn.fq_name] if vn else [], "src_vn_match": vn.fq_name if vn else "", "dst_vn_match": vn.fq_name if vn else "",
        "reverse_flow": "yes" if e.reverse else "no", "fip": "0.0.0.0", "nh": e.nh, "src_ip_nh": e.src_nh, "rpf_nh": e.src_nh,
        "enable_rpf": True, "l3_flow": True, "table_id": 65535, "deleted": False,
    }  # fmt: skip
    if drop:
        record["drop_reason"] = _drop_reason(e.drop_reason)
    if port is not None:
        record["vmi"] = "%s:%s" % (PROJECT_FQ_NAME, port.uuid)
    return record
