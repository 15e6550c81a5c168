"""The messages between the ``vrouter`` CLI and the agent, over the control socket.

Every request and answer is a dataclass here (or a model of ``vrouter.model``,
or a record of the proxy's, ``vrouter.messages.proxy``); both ends use these
classes, so a field renamed on one side is renamed on the other.  ``OPS`` maps
each operation to its request class and its answer type; ``vrouter.messages.wire``
puts them on the wire as one JSON object a line.  Requests carry what the user
typed (strings), so that the agent's validation names the option that is
wrong; answers are typed records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vrouter.messages.proxy import Ack, FaultList, FaultRecord, JournalMark, JournalPage, JournalQuery, ProxyCounters, VifMetadataCounters
from vrouter.model import Port


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
class PortPlugged(Port):
    """A plugged port, as the agent keeps it, whether its tap is there, and its DHCP lease: the
    state (free, offered, bound), when it was last acknowledged, and the times of the last few
    acknowledgements (seconds since the epoch; 0 and []: never)."""

    tap_present: bool = False
    dhcp_state: str = "free"
    dhcp_bound_at: float = 0.0
    dhcp_acks: list[float] = field(default_factory=list)


@dataclass
class PortUnplugged(Port):
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
    subnet6: str | None = None  # dual stack: its IPv6 subnet
    gateway6: str | None = None
    dns_server6: str | None = None
    ipv6_mode: str | None = None  # none, slaac, dhcpv6-stateful, dhcpv6-stateless


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
    subnet6: str = ""
    gateway6: str = ""
    dns_server6: str = ""
    ipv6_mode: str = ""


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
    ip6: str = ""  # its port's IPv6 address (dual stack)


@dataclass
class DropStatsRequest:
    pass


@dataclass
class DropStats:
    counts: dict[str, int]  # dropstats' names, in its order


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
    refuse: bool = False


@dataclass
class FaultDel:
    id: int = 0


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
    neighbor_solicitations: int = 0
    neighbor_advertisements: int = 0
    nd_forged: int = 0  # a VM's advertisement for an address not its own, a VM's router advertisement or redirect
    dhcp6_solicit: int = 0
    dhcp6_request: int = 0
    dhcp6_confirm: int = 0
    dhcp6_renew: int = 0
    dhcp6_rebind: int = 0
    dhcp6_release: int = 0
    dhcp6_decline: int = 0
    dhcp6_information_request: int = 0
    dhcp6_advertise: int = 0
    dhcp6_reply: int = 0


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
    error: str = ""  # while not connected: why (etcd unreachable, TLS refused, ...)


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
    datapath: str = "nfqueue"  # or ebpf: live flows forwarded by the kernel's program
    bpf_programs: list[int] = field(default_factory=list)  # ebpf: the ids of the loaded programs (ingress, egress)
    bpf_flow_map: int = 0  # ebpf: the id of the flow table's map
    bpf_devices: list[str] = field(default_factory=list)  # ebpf: the devices the programs are attached to
    introspect: str = ""  # the introspect's URL (the metrics are at its /metrics); "": metrics_port 0


@dataclass
class IntrospectGet:
    """A page of the agent's introspect (``vrouter introspect``): the path and query as in its URL."""

    target: str
    html: bool = False  # rendered as a browser would get it


@dataclass
class IntrospectPage:
    status: int  # 200, or 404 as the HTTP port answers
    content_type: str
    body: str


# op -> (request class, answer type)
OPS: dict[str, tuple[type, Any]] = {
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
    "metadata.mark": (JournalMark, Ack),
    "metadata.fault.add": (FaultAdd, FaultRecord),
    "metadata.fault.list": (FaultList, list[FaultRecord]),
    "metadata.fault.del": (FaultDel, FaultRecord),
    "vifdump.start": (VifdumpStart, VifdumpStarted),
    "vifdump.stop": (VifdumpStop, VifdumpStopped),
    "rt.dump": (RouteDump, RouteTable),
    "nh.list": (NhList, list[NhRecord]),
    "nh.get": (NhGet, NhRecord),
    "mpls.dump": (MplsDump, list[MplsRecord]),
    "introspect": (IntrospectGet, IntrospectPage),
}
OP_OF: dict[type, str] = {req: op for op, (req, _) in OPS.items()}
assert len(OP_OF) == len(OPS), "each operation has a request class of its own"
