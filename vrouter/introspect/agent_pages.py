"""``agent.xml``'s requests: the interfaces, VRFs, routes, next hops, MPLS labels and link-local
services of a running node, as the vRouter agent's oper DB tables answer them.

Each table is a function from the node to its rows (dicts of the Sandesh
struct's fields) and the whole table's size, so that a request and a later
``PageReq`` for its next page walk the same rows.  The names of Tungsten
Fabric's tables are kept (``db.interface.0``, ``db.vrf.0``,
``db.nexthop.0``, ``db.mpls.0``, ``<vrf>.uc.route.0``, ``<vrf>.uc.route6.0``,
``<vrf>.l2.route.0``), since the page keys and the clients that build them
(nlewo's CLI asks ``Snh_PageReq?x=begin:-1,end:-1,table:db.interface.0,``)
name them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, overload

from dataplane.core.overlay import DROP_NH, RECEIVE_NH, label_of
from dataplane.core.vif import Vif
from vrouter.agent.inspection import Inspection
from vrouter.introspect import sandesh
from vrouter.introspect.writer import written
from vrouter.messages.control import NhRecord, RouteDump, RouteRecord
from vrouter.model import FABRIC_VRF_NAME, PROJECT_FQ_NAME, Network, Port, PortError

if TYPE_CHECKING:
    from vrouter.agent.node import Node

Row = dict[str, Any]
NO_UUID = "00000000-0000-0000-0000-000000000000"
ITF_TABLE, VRF_TABLE, NH_TABLE, MPLS_TABLE = "db.interface.0", "db.vrf.0", "db.nexthop.0", "db.mpls.0"
PREFERENCE_LOW, PREFERENCE_HIGH = 100, 200  # PathPreference: a remote path, a local VM's


@dataclass(frozen=True)
class Table:
    """A table request: its response and list field, its Sandesh table name, and the filter
    arguments that go into its page keys."""

    resp: str
    list_field: str
    rows: Callable[[Node, Mapping[str, Any]], tuple[Sequence[Row], int]]  # (the rows the filter passes, the table's size)
    keys: Mapping[str, str]  # request field -> its name in page keys


def _mac(m: str) -> str:
    """A next hop's MAC as the agent prints it: no zero padding (``2:42:ac:11:0:2``)."""
    return ":".join("%x" % int(b, 16) for b in m.split(":")) if m else "0:0:0:0:0:0"


def vrf_names(node: Node) -> dict[int, str]:
    """VRF id -> name: 0 the fabric's, then each network's."""
    names = {0: FABRIC_VRF_NAME}
    for vn, vrf in node.state.vrfs.items():
        net = node.state.networks.get(vn)
        names[vrf] = net.vrf_name if net else "%s:%s:%s" % (PROJECT_FQ_NAME, vn, vn)
    return names


# -- interfaces --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Itf:
    """What an interface's row is made of, taken in the agent's loop (the row is made later, on
    the writer's thread, only if its page shows it)."""

    vif: Vif
    port: Port | None
    net: Network | None
    vrf_name: str
    ip6: str
    limit: int

    @property
    def filtered(self) -> tuple[str, str, str, str, str, str, str]:
        """The fields ItfReq filters on: name, type, uuid, VN, MAC, IPv4, IPv6."""
        v = self.vif
        return (v.name, "vport" if self.port else "vhost", v.port_uuid or NO_UUID, self.net.fq_name if self.net else "",
                v.mac or "00:00:00:00:00:00", v.ip or "0.0.0.0", self.ip6 or "::")  # fmt: skip

    def row(self) -> Row:
        v, port, net = self.vif, self.port, self.net
        vm = port is not None
        name, kind, uuid, vn, mac, ip, ip6 = self.filtered
        return {
            "index": v.index, "name": name, "uuid": uuid, "vrf_name": self.vrf_name,
            "active": "Inactive < no-dev >" if vm and not v.ifindex else "Active",
            "ipv4_active": "Active" if v.ip else "Ipv4 Inactive < no-ipv4-addr  >", "l2_active": "L2 Active",
            "ip6_active": "Active" if self.ip6 else "Ipv6 Inactive < no-ipv6-addr  >", "health_check_active": "Active",
            "dhcp_service": "Enable" if vm and (net is None or net.dhcp) else "Disable",
            "dhcp_service_v6": "Enable" if net is not None and net.ipv6_mode.startswith("dhcpv6") else "Disable",
            "dns_service": "Enable" if vm else "Disable", "type": kind,
            "label": label_of(v.index) if vm else -1, "l2_label": label_of(v.index) if vm else -1, "vn_name": vn,
            "vm_uuid": port.instance_uuid if port else "", "vm_name": port.vm_name if port else "", "ip_addr": ip, "mac_addr": mac,
            "policy": "Enable" if vm else "Disable", "mdata_ip_addr": v.metadata_ip if vm else "0.0.0.0", "os_ifindex": v.ifindex,
            "fabric_port": "NotFabricPort", "alloc_linklocal_ip": "LL-Enable" if vm else "LL-Disable",
            "config_name": "%s:%s" % (PROJECT_FQ_NAME, v.port_uuid) if vm else "",
            "vm_project_uuid": port.vm_project_uuid if port else "", "admin_state": "Enabled", "flow_key_idx": v.nh,
            "allowed_address_pair_list": [], "ip6_addr": ip6, "tx_vlan_id": -1, "rx_vlan_id": -1, "subnet": "--NA--",
            "sub_type": "Tap" if vm else "--NA--", "vrf_assign_acl_uuid": "--NA--", "vmi_type": "Virtual Machine" if vm else "--NA--",
            "transport": "Ethernet", "logical_interface_uuid": NO_UUID, "flood_unknown_unicast": False,
            "fixed_ip4_list": [v.ip] if vm and v.ip else [], "fixed_ip6_list": [v.ip6] if vm and v.ip6 else [],
            "metadata_ip_active": "Active" if vm else "Inactive", "service_health_check_ip": "0.0.0.0",
            "drop_new_flows": v.flow_limited, "si_other_end_vmi": NO_UUID, "max_flows": self.limit if vm else 0,
        }  # fmt: skip


class Lazy(Sequence[Row]):
    """Rows made when a page reads them (``paged`` slices the rows it shows)."""

    def __init__(self, items: list[_Itf]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    @overload
    def __getitem__(self, i: int) -> Row: ...

    @overload
    def __getitem__(self, i: slice) -> list[Row]: ...

    def __getitem__(self, i: int | slice) -> Row | list[Row]:
        if isinstance(i, slice):
            return [it.row() for it in self.items[i]]
        return self.items[i].row()


def _itf_rows(node: Node, args: Mapping[str, Any]) -> tuple[Sequence[Row], int]:
    dp, state = node.dp, node.state
    vrfs = vrf_names(node)
    limit = node.cfg.flows.vm_flow_limit(dp.table.capacity)
    items = []
    for v in sorted(dp.vifs.values(), key=lambda v: v.index):
        port = state.by_vif(v.index) if v.kind == "Virtual" else None
        net = state.networks.get(port.vn_uuid) if port else None
        item = _Itf(v, port, net, vrfs.get(v.vrf, "--ERROR--") if port else FABRIC_VRF_NAME, v.ip6 if port else dp.flow_setup.vhost_ip6, limit)
        if _itf_passes(item.filtered, args):
            items.append(item)
    return Lazy(items), len(dp.vifs)


def _itf_passes(fields: tuple[str, str, str, str, str, str, str], a: Mapping[str, Any]) -> bool:
    """ItfReq's filters, as the agent applies them: substrings of the name, VN and MAC, the
    type's word, the uuid and the primary addresses exactly; any of vn, mac or an address
    makes it VM interfaces only."""
    name, kind, uuid, vn, mac, ip, ip6 = fields
    types = {"vmi": "vport", "inet": "vhost"}
    if a.get("name") and a["name"] not in name:
        return False
    if a.get("type") and types.get(a["type"], a["type"]) != kind:
        return False
    if a.get("uuid") and a["uuid"] != uuid:
        return False
    vm_only = any(a.get(k) for k in ("vn", "mac", "ipv4_address", "ipv6_address"))
    if vm_only and kind != "vport":
        return False
    if a.get("vn") and a["vn"] not in vn:
        return False
    if a.get("mac") and a["mac"].lower() not in mac:
        return False
    if a.get("ipv4_address") and a["ipv4_address"] != ip:
        return False
    return not (a.get("ipv6_address") and _norm6(a["ipv6_address"]) != _norm6(ip6))


def _norm6(text: str) -> str:
    try:
        return str(ipaddress.IPv6Address(text))
    except ValueError:
        return text


# -- VRFs --------------------------------------------------------------------------------------------


def _vrf_rows(node: Node, args: Mapping[str, Any]) -> tuple[list[Row], int]:
    names = vrf_names(node)
    nets = {vrf: node.state.networks.get(vn) for vn, vrf in node.state.vrfs.items()}
    rows = []
    for vrf, name in sorted(names.items()):
        net = nets.get(vrf)
        row: Row = {
            "name": name, "ucindex": vrf, "mcindex": vrf, "l2index": vrf, "source": "Config; ", "uc6index": vrf,
            "vn": net.fq_name if net else "N/A", "table_label": -1 if vrf == 0 else vrf, "evpnindex": vrf, "brindex": vrf,
            "RD": "%s:%d" % (node.vhost_ip, vrf), "mac_aging_time": 300,
        }  # fmt: skip
        if not args.get("name") or args["name"] in name:
            rows.append(row)
    return rows, len(names)


# -- next hops and labels ----------------------------------------------------------------------------


def nh_data(nh: NhRecord, names: Mapping[int, str]) -> Row:
    """An NhSandeshData of one of the node's next hops."""
    row: Row = {"ref_count": nh.ref_count, "valid": "true", "policy": "enabled" if "Policy" in nh.flags else "disabled", "nh_index": nh.id}
    if nh.type == "Receive":
        row.update(type="receive", vrf=FABRIC_VRF_NAME, itf="vhost0")
    elif nh.type == "Drop":
        row.update(type="discard")
    elif nh.type == "Encap":
        row.update(type="interface", itf="", mac=[_mac(nh.mac)], mcast="disabled", vrf=names.get(nh.vrf, ""))  # itf: the caller's
    elif nh.type == "Tunnel":
        row.update(type="tunnel", sip=nh.sip, dip=nh.dip, vrf=FABRIC_VRF_NAME, tunnel_type="MPLSoUDP", mac=[_mac("")])
    return row


def _nexthops(node: Node) -> list[Row]:
    names = vrf_names(node)
    out = []
    for nh in Inspection(node).nexthops():
        row = nh_data(nh, names)
        if nh.type == "Encap":
            v = node.dp.vifs.get(nh.oif)
            row["itf"] = v.name if v else ""
        out.append(row)
    return out


def _nh_rows(node: Node, args: Mapping[str, Any]) -> tuple[list[Row], int]:
    rows = _nexthops(node)
    total = len(rows)
    if args.get("type"):
        rows = [r for r in rows if r["type"] == args["type"]]
    if args.get("nh_index"):
        rows = [r for r in rows if str(r["nh_index"]) == str(args["nh_index"]).strip()]
    if args.get("policy_enabled"):
        rows = [r for r in rows if args["policy_enabled"] in r["policy"]]
    return rows, total


def _mpls_rows(node: Node, args: Mapping[str, Any]) -> tuple[list[Row], int]:
    by_nh = {r["nh_index"]: r for r in _nexthops(node)}
    labels = sorted(node.dp.overlay.by_label.items())
    rows: list[Row] = [{"label": label, "type": "", "nh": by_nh.get(vif.nh, {"type": "invalid", "nh_index": vif.nh})} for label, vif in labels]
    if args.get("label"):
        rows = [r for r in rows if str(r["label"]) == str(args["label"]).strip()]
    if args.get("type"):
        rows = [r for r in rows if r["nh"]["type"] == args["type"]]
    return rows, len(labels)


# -- routes ------------------------------------------------------------------------------------------


def _path(node: Node, r: RouteRecord, nhs: Mapping[int, Row], vn: str) -> Row:
    local = r.label < 0 or r.node in ("", getattr(node.cluster, "node", ""))
    nh = nhs.get(r.nh) or {"type": "discard", "nh_index": DROP_NH, "ref_count": 0, "valid": "true", "policy": "disabled"}
    return {
        "nh": nh,
        "label": r.label,
        "peer": "LocalVmPort" if local else r.node or "BGP",
        "dest_vn_list": [vn] if vn else [],
        "unresolved": "false",
        "supported_tunnel_type": "MPLSoUDP ",
        "active_tunnel_type": "MPLSoUDP",
        "path_preference_data": {
            "sequence": 0,
            "preference": PREFERENCE_HIGH if local else PREFERENCE_LOW,
            "ecmp": False,
            "wait_for_traffic": False,
        },  # fmt: skip
        "active_label": r.label,
        "origin_vn": vn,
    }


def _route_table(node: Node, vrf: int, family: int) -> tuple[list[Row], list[Row]] | None:
    """(unicast rows, layer-2 rows) of a VRF, or None when there is no such VRF."""
    names = vrf_names(node)
    if vrf not in names:
        return None
    nhs = {r["nh_index"]: r for r in _nexthops(node)}
    if vrf == 0:  # the fabric's: vhost0's own addresses, received
        plen = 32 if family == 4 else 128
        ips = [node.vhost_ip] if family == 4 else [a for a in (node.dp.flow_setup.vhost_ip6,) if a]
        recv = nhs.get(RECEIVE_NH, {})
        routes = [{"src_ip": ip, "src_plen": plen, "src_vrf": FABRIC_VRF_NAME, "multicast": False, "intf_route_type": "",
                   "ipam_subnet_route": False, "ipam_host_route": False, "proxy_arp": False,
                   "path_list": [{"nh": recv, "label": -1, "peer": "Local", "unresolved": "false", "active_tunnel_type": "Native",
                                  "supported_tunnel_type": "Native ", "active_label": -1,
                                  "path_preference_data": {"sequence": 0, "preference": PREFERENCE_HIGH}}]} for ip in ips]  # fmt: skip
        return routes, []
    try:
        table = Inspection(node).rt_dump(RouteDump(vrf))
    except PortError:
        return None
    net = node.state.networks.get(table.vn_uuid)
    vn = net.fq_name if net else ""
    uc, l2 = [], []
    for r in table.routes:
        path = _path(node, r, nhs, vn)
        if (6 if ":" in r.prefix else 4) == family:
            uc.append({"src_ip": r.prefix, "src_plen": r.prefix_len, "src_vrf": names[vrf], "path_list": [path],
                       "ipam_subnet_route": False, "ipam_host_route": True, "proxy_arp": "P" in r.flags, "multicast": False,
                       "intf_route_type": "interface" if path["peer"] == "LocalVmPort" else ""})  # fmt: skip
        if r.mac and family == 4 and ":" not in r.prefix:
            l2.append({"mac": r.mac, "src_vrf": names[vrf], "path_list": [path]})
    return uc, l2


def route_rows(family: int, l2: bool = False) -> Callable[[Node, Mapping[str, Any]], tuple[list[Row], int]]:
    def rows(node: Node, args: Mapping[str, Any]) -> tuple[list[Row], int]:
        got = _route_table(node, int(args.get("vrf_index") or 0), family)
        if got is None:
            raise LookupError("no VRF %s" % args.get("vrf_index"))
        table = got[1] if l2 else got[0]
        total = len(table)
        if l2 and args.get("mac"):
            table = [r for r in table if r["mac"] == str(args["mac"]).lower()]
        elif not l2 and args.get("src_ip"):
            want, plen = _norm6(str(args["src_ip"])), int(args.get("prefix_len") or 0)
            table = [r for r in table if _norm6(r["src_ip"]) == want and (not plen or r["src_plen"] == plen)]
        return table, total

    return rows


def route_table_name(node: Node, vrf: int, suffix: str) -> str:
    return "%s.%s" % (vrf_names(node).get(vrf, str(vrf)), suffix)


# -- link-local services -----------------------------------------------------------------------------


def linklocal(node: Node) -> bytes:
    services = []
    for s in sorted(node.state.services.values(), key=lambda s: s.name):
        ips = list(s.fabric_ips) or list(node.state.resolved.get(s.fabric_dns_name, ()))
        services.append({"linklocal_service_name": s.name, "linklocal_service_ip": s.ip, "linklocal_service_port": s.port,
                         "ipfabric_dns_name": s.fabric_dns_name, "ipfabric_ip": ips, "ipfabric_port": s.fabric_port})  # fmt: skip
    return sandesh.document([sandesh.response("LinkLocalServiceResponse", {"service_list": services})])


# -- the tables and their pages ----------------------------------------------------------------------

TABLES: dict[str, Table] = {
    "ItfReq": Table(
        "ItfResp",
        "itf_list",
        _itf_rows,
        {
            "name": "name",
            "type": "type",
            "uuid": "uuid",
            "vn": "vn",
            "mac": "mac",
            "ipv4_address": "ipv4",
            "ipv6_address": "ipv6",
            "parent_uuid": "parent",
            "ip_active": "ip-active",
            "ip6_active": "ip6-active",
            "l2_active": "l2-active",
        },
    ),  # fmt: skip
    "VrfListReq": Table("VrfListResp", "vrf_list", _vrf_rows, {"name": "name"}),
    "NhListReq": Table("NhListResp", "nh_list", _nh_rows, {"type": "type", "nh_index": "nh_index", "policy_enabled": "policy_enabled"}),
    "MplsReq": Table("MplsResp", "mpls_list", _mpls_rows, {"type": "type", "label": "label"}),
    "Inet4UcRouteReq": Table("Inet4UcRouteResp", "route_list", route_rows(4), {}),
    "Inet6UcRouteReq": Table("Inet6UcRouteResp", "route_list", route_rows(6), {}),
    "Layer2RouteReq": Table("Layer2RouteResp", "route_list", route_rows(4, l2=True), {}),
}
_FIXED_TABLES = {ITF_TABLE: "ItfReq", VRF_TABLE: "VrfListReq", NH_TABLE: "NhListReq", MPLS_TABLE: "MplsReq"}
_ROUTE_SUFFIXES = {"uc.route.0": "Inet4UcRouteReq", "uc.route6.0": "Inet6UcRouteReq", "l2.route.0": "Layer2RouteReq"}


def _table_name(node: Node, request: str, args: Mapping[str, Any]) -> str:
    for name, req in _FIXED_TABLES.items():
        if req == request:
            return name
    suffix = next(s for s, r in _ROUTE_SUFFIXES.items() if r == request)
    return route_table_name(node, int(args.get("vrf_index") or 0), suffix)


async def table(node: Node, request: str, args: Mapping[str, Any], begin: int = 0, end: int = 99) -> bytes:
    """A table request's answer: its first page (or the page ``begin``..``end``).  What the rows
    are made of is taken here, in the agent's loop; the rows the page shows are made, and its XML
    written, on the writer's thread (a whole table of a thousand interfaces takes 0.1 s), so that
    the loop goes on forwarding meanwhile."""
    t = TABLES[request]
    try:
        rows, size = t.rows(node, args)
    except LookupError:
        return sandesh.error()
    filters = {key: str(args[f]) for f, key in t.keys.items() if args.get(f) not in (None, "")}
    name = _table_name(node, request, args)
    return await written(lambda: sandesh.document(sandesh.paged(t.resp, t.list_field, name, rows, size, begin, end, filters)))


async def page(node: Node, key: str) -> bytes:
    """``Snh_PageReq?x=KEY``: another page of a table, KEY as the Pagination links give it."""
    k = sandesh.decode_key(key)
    if k is None:
        return sandesh.error("Invalid request")
    request = _FIXED_TABLES.get(k.table)
    args: dict[str, Any] = {}
    if request is not None:
        t = TABLES[request]
        by_key = {v: f for f, v in t.keys.items()}
        args = {by_key[name]: value for name, value in k.filters.items() if name in by_key}
    else:
        vrf_name, _, suffix = k.table.rpartition(".uc.") if ".uc." in k.table else k.table.rpartition(".l2.")
        suffix = ("uc." if ".uc." in k.table else "l2.") + suffix
        request = _ROUTE_SUFFIXES.get(suffix)
        vrf = next((i for i, n in vrf_names(node).items() if n == vrf_name), None)
        if request is None or vrf is None:
            return sandesh.error("Invalid DBTable")
        args = {"vrf_index": vrf}
    return await table(node, request, args, k.begin, k.end)
