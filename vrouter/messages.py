"""The messages between the ``vrouter`` CLI, the agent and the agent's metadata proxy process.

Every message is a dataclass here; both ends of each seam use these classes,
so a field renamed on one side is renamed on the other.  On the wire, one JSON
object per line:

    request  {"op": "port.add", "args": {...the request's fields...}}
    answer   {"ok": true, "result": ...the answer...}
             {"ok": false, "error": "a message a user can act on"}

``OPS`` maps each operation to its request class and its answer type.  The
CLI talks to the agent over the control socket (``vrouter.agent.control``);
the agent talks to its proxy process over a socketpair
(``vrouter.services.metadata.supervisor`` and ``.worker``).  Fields that are
None are left out of the JSON, and absent fields take their defaults.

Requests from the CLI carry what the user typed (strings), so that the agent's
validation names the option that is wrong; answers are typed records.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar, Union

from vrouter.services.metadata.fairness import Fairness

T = TypeVar("T")
MAX_MESSAGE = 1 << 24  # bytes of one line (a journal page is the largest)


class MessageError(ValueError):
    """A line that is not a message of this protocol; the text says what is wrong."""


# -- CLI -> agent -------------------------------------------------------------------------------


@dataclass
class StatusRequest:
    pass


@dataclass
class PortAdd:
    """vrouter-port-control's --oper=add fields."""

    uuid: str | None = None
    instance_uuid: str | None = None
    vn_uuid: str | None = None
    vm_project_uuid: str | None = None
    ip_address: str | None = None
    ipv6_address: str | None = None
    mac: str | None = None
    tap_name: str | None = None
    vm_name: str | None = None


@dataclass
class PortDel:
    uuid: str = ""


@dataclass
class PortList:
    pass


@dataclass
class PortRecord:
    """A plugged port, as the agent keeps it."""

    uuid: str
    instance_uuid: str
    vn_uuid: str
    vm_project_uuid: str
    ip_address: str
    mac: str
    tap_name: str
    vm_name: str
    ipv6_address: str
    vif: int
    vrf: int
    metadata_ip: str
    metadata_ip6: str


@dataclass
class PortPlugged(PortRecord):
    tap_present: bool = False


@dataclass
class PortUnplugged(PortRecord):
    flows_removed: int = 0


@dataclass
class LinkLocalAdd:
    """provision_linklocal.py's fields, in global-vrouter-config's names."""

    linklocal_service_name: str | None = None
    linklocal_service_ip: str | None = None
    linklocal_service_port: str | None = None
    ip_fabric_service_ip: list[str] = field(default_factory=list)
    ip_fabric_service_port: str | None = None
    ip_fabric_DNS_service_name: str = ""  # noqa: N815 - the schema's name


@dataclass
class LinkLocalDel:
    linklocal_service_name: str = ""


@dataclass
class LinkLocalList:
    pass


@dataclass
class LinkLocalImport:
    config: dict[str, Any] = field(default_factory=dict)  # a global-vrouter-config, checked by the agent


@dataclass
class LinkLocalEntry:
    """One linklocal_service_entry of global-vrouter-config."""

    linklocal_service_name: str
    linklocal_service_ip: str
    linklocal_service_port: int
    ip_fabric_DNS_service_name: str  # noqa: N815 - the schema's name
    ip_fabric_service_ip: list[str]
    ip_fabric_service_port: int


@dataclass
class LinkLocalChanged:
    name: str
    flows_removed: int


@dataclass
class LinkLocalImported:
    services: int
    flows_removed: int


@dataclass
class NetworkAdd:
    """A virtual network's IPAM, as the controller gives it to an agent."""

    vn_uuid: str | None = None
    subnet: str | None = None
    name: str | None = None
    gateway: str | None = None
    dns_server: str | None = None
    dhcp: bool = True
    mtu: str | None = None
    domain: str | None = None
    host_routes: list[str] = field(default_factory=list)  # "PREFIX/LEN via NEXTHOP"


@dataclass
class NetworkDel:
    vn_uuid: str = ""


@dataclass
class NetworkList:
    pass


@dataclass
class NetworkRecord:
    uuid: str
    name: str
    subnet: str
    gateway: str
    dns_server: str
    dhcp: bool
    mtu: int
    domain: str
    host_routes: list[str]
    vrf: int  # 0 until a port of it is plugged


@dataclass
class VifList:
    pass


@dataclass
class VifRecord:
    """A vRouter interface and its counters, as ``vif --list`` shows it."""

    vif: int
    name: str
    type: str
    ifindex: int
    mac: str
    ip: str
    vrf: int
    metadata_ip: str
    port_uuid: str
    rx_packets: int
    rx_bytes: int
    tx_packets: int
    tx_bytes: int
    drops: int
    flows: int
    drop_reasons: dict[str, int] = field(default_factory=dict)  # as dropstats names them; Queue Overflow: its queue's
    queues: list[int] = field(default_factory=list)  # its NFQUEUE queues: a VM's data and service queues


@dataclass
class DropStatsRequest:
    pass


@dataclass
class DropStats:
    counts: dict[str, int]  # dropstats' names, in its order


# -- the overlay: routes, next hops, labels (vrouter rt, nh, mpls) ------------------------------------


@dataclass
class RouteDump:
    vrf: int


@dataclass
class RouteRecord:
    """One route of a VRF, as ``rt --dump VRF`` shows it."""

    prefix: str  # 10.1.1.3 or fd00:10:1:1::3
    prefix_len: int  # 32 (or 128)
    nh: int  # its next hop's id
    label: int  # the MPLS label a packet to it carries (-1: none, a local route)
    flags: str  # L (label valid), P (proxy ARP): as rt prints them
    mac: str = ""  # the VM's MAC (the stitched MAC of a local route)
    node: str = ""  # the compute node that hosts the address
    port_uuid: str = ""


@dataclass
class RouteTable:
    vrf: int
    network: str  # the virtual network's name ("" if the VRF has none)
    vn_uuid: str
    routes: list[RouteRecord] = field(default_factory=list)


@dataclass
class NhList:
    pass


@dataclass
class NhGet:
    id: int


@dataclass
class NhRecord:
    """A next hop, as ``nh --list`` and ``nh --get ID`` show it."""

    id: int
    type: str  # Encap (a VM interface), Tunnel (MPLS over UDP to another node), Receive (vhost0), Drop
    vrf: int
    ref_count: int  # routes and labels that use it
    flags: list[str]  # Valid, MPLSoUDP, Policy, ...
    oif: int = -1  # the vif it leaves by (Encap, Receive; a tunnel's: vhost0, vif 0)
    mac: str = ""  # Encap: the VM's MAC; Tunnel: none (the fabric's is the kernel's)
    sip: str = ""  # Tunnel: this node's vhost0 address
    dip: str = ""  # Tunnel: the other node's vhost0 address
    node: str = ""  # Tunnel: the other node's name


@dataclass
class MplsDump:
    pass


@dataclass
class MplsRecord:
    label: int
    nh: int


# -- agent -> metadata proxy process --------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """Who is behind a metadata IP: what the proxy signs for."""

    instance_uuid: str
    project_uuid: str
    vm_ip: str
    port_uuid: str
    vm_name: str = ""
    vif: int = 0


@dataclass(frozen=True)
class TlsFiles:
    """[METADATA] metadata_ca_cert, metadata_client_cert, metadata_client_key."""

    ca: str = ""
    cert: str = ""
    key: str = ""


@dataclass
class ProxyConfig:
    """What the proxy process needs to listen and to reach Nova."""

    hosts: list[str]
    port: int
    secret: str
    read_timeout: float
    fairness: Fairness
    tls: TlsFiles | None = None
    journal_size: int = 500  # entries kept per instance
    journal_node_size: int = 50_000  # entries kept in all


@dataclass
class Identities:
    by_metadata_ip: dict[str, Identity]  # IPv4 and IPv6 metadata IPs


@dataclass(frozen=True)
class NovaAddress:
    """Where Nova's metadata API is: its fabric addresses (one picked at random per connection)."""

    ips: list[str]
    port: int


@dataclass
class SetUpstream:
    upstream: NovaAddress | None = None  # None: no metadata service is configured


@dataclass
class Ack:
    pass


@dataclass
class ProxyStatsRequest:
    pass


@dataclass
class ProxyCounters:
    """The proxy's counters: the vRouter agent's (requests, responses, proxy sessions, internal
    errors) and this project's."""

    requests: int = 0
    responses: int = 0
    proxy_sessions: int = 0
    internal_errors: int = 0
    upstream_errors: int = 0
    rate_limited: int = 0
    connections_refused: int = 0
    header_timeouts: int = 0
    status: dict[int, int] = field(default_factory=dict)

    def count(self, status: int) -> None:
        """An answer with ``status`` went to a VM."""
        self.responses += 1
        self.status[status] = self.status.get(status, 0) + 1


@dataclass
class ProxyLoad:
    vm_connections: int  # open connections from VMs
    upstream_idle: int  # idle in the keep-alive pool towards Nova


@dataclass
class VifMetadataCounters:
    """The vRouter agent's own metadata counters, for one vif."""

    requests: int = 0
    responses: int = 0
    proxy_sessions: int = 0
    internal_errors: int = 0


@dataclass
class Histogram:
    """Prometheus-style: cumulative counts per upper bound (seconds), then the sum and count."""

    bounds: list[float]
    counts: list[int]
    sum: float = 0.0
    count: int = 0


@dataclass
class ProxyReport:
    stats: ProxyCounters
    load: ProxyLoad
    memory: dict[str, int]
    pid: int
    per_vif: dict[int, VifMetadataCounters] = field(default_factory=dict)
    by_instance: dict[str, dict[int, int]] = field(default_factory=dict)  # instance -> status -> answers
    nova_seconds: Histogram | None = None
    request_seconds: Histogram | None = None
    journal_dropped: int = 0


@dataclass
class JournalQuery:
    """Entries after number ``since``; of one instance or vif if given."""

    since: int = 0
    instance: str | None = None
    vif: int | None = None
    limit: int = 1000


@dataclass
class ProxyJournalQuery(JournalQuery):
    """The same, from the agent to its proxy process."""


@dataclass
class JournalEntry:
    seq: int
    time: float
    vif: int
    instance: str
    vm_ip: str
    method: str
    path: str
    status: int
    bytes_in: int
    bytes_out: int
    nova_ms: float
    total_ms: float
    reason: str
    fault: int


@dataclass
class JournalPage:
    entries: list[JournalEntry]
    last: int  # the number of the newest entry of the whole journal
    dropped: int  # entries pushed out of full rings so far


@dataclass
class FaultAdd:
    """``vrouter metadata fault add``, as typed."""

    instance: str | None = None
    vif: int | None = None
    all: bool = False
    path: str = "/*"
    status: int | None = None
    delay: float | None = None
    throttle: int | None = None
    reset: bool = False
    drop: bool = False
    count: int | None = None
    for_s: float | None = None
    probability: float | None = None


@dataclass
class FaultSpec:
    """A rule as the proxy process applies it."""

    id: int
    instance: str
    vif: int
    path: str
    effect: str
    value: float
    count: int
    until: float  # CLOCK_MONOTONIC deadline, 0: none
    probability: float
    for_s: float
    applied: int = 0  # times it applied so far, as the agent last heard (a new proxy process goes on from there)


@dataclass
class SetFaults:
    rules: list[FaultSpec]


@dataclass
class FaultList:
    pass


@dataclass
class ProxyFaultList(FaultList):
    """The same, from the agent to its proxy process."""


@dataclass
class FaultDel:
    id: int = 0


@dataclass
class FaultRecord:
    id: int
    target: str  # "instance U", "vif N" or "all"
    path: str
    effect: str
    value: float
    count: int  # 0: not bounded by a count
    for_s: float
    probability: float
    applied: int
    left_s: float | None = None  # seconds until it ends, when bounded by time


@dataclass
class VifdumpStart:
    """Send vif ``vif``'s packets, as the dataplane sees them, to the datagram socket ``socket``."""

    vif: int = 0
    socket: str = ""
    rewritten: bool = False


@dataclass
class VifdumpStarted:
    vif: int
    name: str
    mac: str  # the VM's MAC ("" for vhost0), for the frames a pcap shows


@dataclass
class VifdumpStop:
    socket: str = ""


@dataclass
class VifdumpStopped:
    sent: int
    lost: int  # packets the reader was too slow for


@dataclass
class ServiceCounters:
    """What the agent's services for guests answered (and dropped, in dropstats)."""

    dhcp_discover: int = 0
    dhcp_request: int = 0
    dhcp_inform: int = 0
    dhcp_release: int = 0
    dhcp_decline: int = 0
    dhcp_offer: int = 0
    dhcp_ack: int = 0
    dhcp_nak: int = 0
    dns_queries: int = 0
    dns_answered: int = 0
    dns_nxdomain: int = 0
    dns_forwarded: int = 0
    dns_refused: int = 0
    dns_notimp: int = 0
    arp_requests: int = 0
    arp_replies: int = 0
    icmp_echo_replies: int = 0
    router_solicitations: int = 0
    router_advertisements: int = 0


# -- agent -> CLI: status ---------------------------------------------------------------------------


@dataclass
class ProxyStatus(ProxyCounters):
    """The proxy process as ``vrouter status`` shows it: its counters, load, pid and restarts, or
    why it does not answer."""

    vm_connections: int = 0
    upstream_idle: int = 0
    pid: int = 0
    restarts: int = 0
    error: str | None = None
    per_vif: dict[int, VifMetadataCounters] = field(default_factory=dict)


@dataclass
class ClusterStatus:
    """The node's link to the cloud's etcd (``vrouter.agent.cluster``)."""

    node: str
    servers: list[str]
    connected: bool
    revision: int  # etcd's revision of the last change applied on this node
    resyncs: int  # full loads since start (one per (re)connection)
    remote_routes: int
    remote_nodes: int
    pending: int  # changes made on this node that wait for etcd
    last_change_ms: float  # when the last change from etcd was applied (ms since the epoch)


@dataclass
class Status:
    pid: int
    uptime_s: float
    vhost_ip: str
    metadata_proxy_port: int
    ports: int
    linklocal_services: int
    flows_active: int
    flow_setups: int
    memory: dict[str, int]  # the agent's rss_kib, heap_kib, open_files, and its proxy's as proxy_*
    flow_table: str
    proxy: ProxyStatus
    services: ServiceCounters
    linklocal_nat_ports_in_use: int
    dataplane_errors: int
    verdict_write_errors: int  # failed writes of verdicts: their packets were dropped
    verdict_writes: int
    cluster: ClusterStatus | None = None  # None: no etcd configured, the local files alone
    dataplane_workers: list[int] = field(default_factory=list)  # each worker's pid (0: being restarted), the agent's first
    dataplane_worker_restarts: int = 0
    rules_pending: bool = False  # a change of the ports or networks waits for the nftables tables' rebuild


# -- the operations -----------------------------------------------------------------------------------

# op -> (request class, answer type): the CLI to the agent
CONTROL_OPS: dict[str, tuple[type, Any]] = {
    "status": (StatusRequest, Status),
    "port.add": (PortAdd, PortPlugged),
    "port.del": (PortDel, PortUnplugged),
    "port.list": (PortList, list[PortPlugged]),
    "linklocal.add": (LinkLocalAdd, LinkLocalChanged),
    "linklocal.del": (LinkLocalDel, LinkLocalChanged),
    "linklocal.list": (LinkLocalList, list[LinkLocalEntry]),
    "linklocal.import": (LinkLocalImport, LinkLocalImported),
    "network.add": (NetworkAdd, NetworkRecord),
    "network.del": (NetworkDel, NetworkRecord),
    "network.list": (NetworkList, list[NetworkRecord]),
    "vif.list": (VifList, list[VifRecord]),
    "dropstats": (DropStatsRequest, DropStats),
    "metadata.log": (JournalQuery, JournalPage),
    "metadata.fault.add": (FaultAdd, FaultRecord),
    "metadata.fault.list": (FaultList, list[FaultRecord]),
    "metadata.fault.del": (FaultDel, FaultRecord),
    "vifdump.start": (VifdumpStart, VifdumpStarted),
    "vifdump.stop": (VifdumpStop, VifdumpStopped),
    "rt.dump": (RouteDump, RouteTable),
    "nh.list": (NhList, list[NhRecord]),
    "nh.get": (NhGet, NhRecord),
    "mpls.dump": (MplsDump, list[MplsRecord]),
}
# ... the agent to its metadata proxy process
PROXY_OPS: dict[str, tuple[type, Any]] = {
    "config": (ProxyConfig, Ack),
    "identities": (Identities, Ack),
    "upstream": (SetUpstream, Ack),
    "stats": (ProxyStatsRequest, ProxyReport),
    "journal": (ProxyJournalQuery, JournalPage),
    "faults": (SetFaults, Ack),
    "faults.list": (ProxyFaultList, list[FaultRecord]),
}
OPS = CONTROL_OPS | PROXY_OPS
OP_OF: dict[type, str] = {req: op for op, (req, _) in OPS.items()}
assert len(OP_OF) == len(OPS), "each operation has a request class of its own"


# -- the wire -----------------------------------------------------------------------------------------


def to_json(obj: Any) -> Any:
    """A message (or a list or dict of them) as plain JSON data; None fields are left out."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_json(v) for f in dataclasses.fields(obj) if (v := getattr(obj, f.name)) is not None}
    if isinstance(obj, list | tuple):
        return [to_json(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_json(v) for k, v in obj.items()}
    return obj


_HINTS: dict[type, dict[str, Any]] = {}


def from_json(tp: Any, data: Any, where: str = "") -> Any:
    """``data`` (parsed JSON) as a value of type ``tp``, checked field by field; MessageError
    names the first field that does not fit."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return data
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if data is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return from_json(inner, data, where)
    if origin is list:
        if not isinstance(data, list):
            raise MessageError("%s: expected a list, got %s" % (where or "message", _kind(data)))
        (item,) = typing.get_args(tp)
        return [from_json(item, v, "%s[%d]" % (where, i)) for i, v in enumerate(data)]
    if origin is dict:
        if not isinstance(data, dict):
            raise MessageError("%s: expected an object, got %s" % (where or "message", _kind(data)))
        kt, vt = typing.get_args(tp)
        out = {}
        for k, v in data.items():
            try:
                key = kt(k)
            except ValueError:
                raise MessageError("%s: key %r is not %s" % (where or "message", k, kt.__name__)) from None
            out[key] = from_json(vt, v, "%s.%s" % (where, k) if where else str(k))
        return out
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _dataclass(tp, data, where)
    if tp is float and isinstance(data, int | float) and not isinstance(data, bool):
        return float(data)
    if tp in (str, int, bool) and type(data) is tp:
        return data
    raise MessageError("%s: expected %s, got %s" % (where or "message", getattr(tp, "__name__", tp), _kind(data)))


def _dataclass(cls: type[T], data: Any, where: str) -> T:
    if not isinstance(data, dict):
        raise MessageError("%s: expected an object, got %s" % (where or cls.__name__, _kind(data)))
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - names
    if unknown:
        raise MessageError("%s: unknown field %s" % (where or cls.__name__, ", ".join(sorted(unknown))))
    kwargs = {k: from_json(hints[k], v, "%s.%s" % (where, k) if where else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise MessageError("%s: %s" % (where or cls.__name__, str(e).split(") ", 1)[-1])) from None


def _kind(data: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(type(data), type(data).__name__)


def encode_request(request: Any) -> bytes:
    return json.dumps({"op": OP_OF[type(request)], "args": to_json(request)}).encode() + b"\n"


def decode_request(line: bytes, ops: dict[str, tuple[type, Any]]) -> tuple[str, Any]:
    """(op, request) from a request line for one of ``ops``; MessageError if it is not one."""
    try:
        msg = json.loads(line)
    except ValueError as e:
        raise MessageError("not JSON: %s" % e) from None
    if not isinstance(msg, dict) or not isinstance(msg.get("op"), str):
        raise MessageError('expected {"op": ..., "args": {...}}')
    op = msg["op"]
    if op not in ops:
        raise MessageError("unknown operation %r" % op)
    return op, from_json(ops[op][0], msg.get("args") or {}, "")


def encode_answer(result: Any = None, error: str | None = None) -> bytes:
    if error is not None:
        return json.dumps({"ok": False, "error": error}).encode() + b"\n"
    return json.dumps({"ok": True, "result": to_json(result)}).encode() + b"\n"


class Refused(Exception):
    """The other end refused a request; the message is its own."""


def decode_answer(op: str, line: bytes) -> Any:
    """The result of ``op`` from an answer line; Refused with the other end's message, or
    MessageError if the line is not an answer."""
    try:
        msg = json.loads(line)
    except ValueError:
        raise MessageError("the answer is not JSON: %r" % line[:200]) from None
    if not isinstance(msg, dict) or "ok" not in msg:
        raise MessageError("not an answer: %r" % line[:200])
    if not msg["ok"]:
        raise Refused(str(msg.get("error", "request failed")))
    return from_json(OPS[op][1], msg.get("result"), "")
