"""The emulated host as data, in the spirit of mininet's ``Topo``: nodes, VMs, links, addresses.

Pure: ``Topology.plan`` decides every name, address and uuid of a node with N
namespace VMs and M QEMU guests; ``lab.Lab`` builds it in namespaces and
removes it.  The picture::

    netns P-vmI                 netns P-compute                         netns P-fabric
    eth0 10.1.1.(I+2)/24  ---   tap<port uuid[:11]>
    gw 10.1.1.1                 vhost0 10.10.0.2/24  ----------------  eth0 10.10.0.1/24
                                agent, dataplane, metadata proxy        nova-metadata :8775
    QEMU guestJ (virtio-net) -- tap<port uuid[:11]>   (the QEMU process runs in P-compute)

Every VM and guest is a port of a virtual network: network J (1 to K) is
10.1.J.0/24, with gateway 10.1.J.1 and service address (DHCP server, DNS)
10.1.J.2, as Tungsten Fabric allocates them, and a VRF of its own in the agent.
The VMs are dealt out to the networks in turn (vm1 to network 1, vm2 to network
2, ...); VMs of different networks do not reach each other, as on a vRouter
with no policy between them.  One network, 10.1.1.0/24, unless the VMs need
more (252 a network) or ``networks`` asks for more.  ``layout()`` is what ``scripts/netns_setup.sh up --json``
prints and writes to ``/run/vrouter/P/layout.json``; ``instances()`` is Nova's
instance records, with their user data, keys and passwords.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from dataplane.core.frames6 import eui64_address
from infra.etcd_tls import EtcdTls
from vrouter.model import AUTOCONF_MODES, IPV6_MODES

FABRIC_NET = "10.10.0"
FABRIC_NET6 = "fd00:10:10::"  # the fabric's IPv6 /64 (dual stack): the fabric ::1, node n's vhost0 ::(1 + n)
VM_NET = "10.1.1"  # the first network's
VM_NET_BASE = "10.1"
NOVA_PORT = 8775
REPORTS_PORT = 8776  # nova-metadata's collector of cloud-init's event reports and phone_home posts (plain HTTP)
REPORTS_IP = "169.254.169.250"  # the link-local service ``lab-reports`` that guests post to (port 80), NATed to it
PROXY_PORT = 8097
INTROSPECT_PORT = 8085  # each agent's introspect pages and metrics, on its vhost0 (agent.conf's metrics_port)
MAX_VMS = 4096  # namespace VMs and guests together
PER_NETWORK = 252  # a /24 with .1 (gateway), .2 (service address) and .255 taken
MAX_NETWORKS = 250
MAX_NODES = 64
ETCD_PORT = 2379
ETCD_KEY_PREFIX = "/vrouter/"
FABRIC_MTU = 9000  # the fabric's links with several nodes: room for MPLS over UDP around a VM's 1500
DEMO_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDemoKeyFor%sOnly%s demo@%s"
INSTANCE_KEYS = {"name", "hostname", "public_keys", "user_data", "admin_pass", "vendor_data", "vendor_data2", "meta", "availability_zone", "files"}


@dataclass
class Net:
    """A virtual network: its own subnet and, in the agent, its own VRF."""

    name: str
    uuid: str
    number: int  # J of 10.1.J.0/24
    ipv6_mode: str = "none"  # its IPv6 subnet fd00:10:1:J::/64's address mode (Neutron's ipv6_address_mode)

    @classmethod
    def of_record(cls, record: dict[str, Any]) -> Net | None:
        """A network as the cloud's etcd holds it (``virtual-networks/UUID``), if it is one of ours
        (10.1.J.0/24, the gateway .1 and service address .2)."""
        subnet = str(record.get("subnet", ""))
        parts = subnet.split(".")
        if len(parts) != 4 or ".".join(parts[:2]) != VM_NET_BASE or parts[3] != "0/24" or not parts[2].isdigit():
            return None
        net = cls(str(record.get("name") or ""), str(record.get("uuid") or ""), int(parts[2]), str(record.get("ipv6_mode") or "none"))
        return net if net.uuid and (record.get("gateway"), record.get("dns_server")) == (net.gateway, net.dns_server) else None

    @property
    def subnet(self) -> str:
        return "%s.%d.0/24" % (VM_NET_BASE, self.number)

    @property
    def gateway(self) -> str:
        return "%s.%d.1" % (VM_NET_BASE, self.number)

    @property
    def dns_server(self) -> str:
        return "%s.%d.2" % (VM_NET_BASE, self.number)

    @property
    def subnet6(self) -> str:
        return "fd00:10:1:%x::/64" % self.number

    @property
    def gateway6(self) -> str:
        return "fd00:10:1:%x::1" % self.number

    @property
    def dns_server6(self) -> str:
        return "fd00:10:1:%x::2" % self.number

    def host(self, n: int) -> tuple[str, str, str]:
        """Host ``n`` of the network: (its IPv4 address, its MAC, its IPv6 address: ::n, or where
        the guest makes its own by SLAAC, the EUI-64 address of its MAC, as Neutron's IPAM)."""
        mac = "02:00:0a:%02x:00:%02x" % (self.number, n)
        ip6 = eui64_address(self.subnet6, mac) if self.ipv6_mode in AUTOCONF_MODES else "fd00:10:1:%x::%x" % (self.number, n)
        return "%s.%d.%d" % (VM_NET_BASE, self.number, n), mac, ip6

    def as_dict(self, dhcp: bool) -> dict[str, Any]:
        return {"name": self.name, "uuid": self.uuid, "subnet": self.subnet, "gateway": self.gateway, "dns_server": self.dns_server, "dhcp": dhcp,
                "subnet6": self.subnet6, "gateway6": self.gateway6, "dns_server6": self.dns_server6, "ipv6_mode": self.ipv6_mode}  # fmt: skip


@dataclass
class VM:
    """A VM: a namespace whose eth0 is one end of a veth (``kind`` namespace), or a QEMU guest
    whose virtio NIC is a tap (``kind`` qemu); either way a port on a tap of the compute node."""

    name: str
    namespace: str  # "" for a guest
    ip: str
    mac: str
    tap: str
    port_uuid: str
    instance_uuid: str
    project_id: str
    vn_uuid: str
    gateway: str
    prefix_len: int
    ipv6: str
    kind: str = "namespace"
    network: str = ""  # its network's name
    node: int = 1  # the compute node that hosts it (1 to K)
    vif: int = 0  # the agent's, once the port is plugged
    metadata_ip: str = ""
    metadata_ip6: str = ""
    pid: int = 0  # a guest's QEMU
    console: str = ""  # a guest's serial console, a file


@dataclass(frozen=True)
class GuestBoot:
    """How the QEMU guests boot: from ``image`` (on a copy-on-write overlay) by its own boot loader,
    or from ``kernel`` and ``initrd`` (with or without an image as its disk)."""

    image: str = ""
    kernel: str = ""
    initrd: str = ""
    append: str = ""
    accel: str = "auto"  # auto, kvm or tcg
    memory: int = 0  # MiB; 0: 1024 with an image, 256 without


@dataclass
class Topology:
    """One compute node, the fabric with Nova, the VMs and the guests, all under ``prefix``."""

    prefix: str
    state_dir: str
    secret: str
    project: str
    networks: list[Net]
    vms: list[VM] = field(default_factory=list)
    guests: list[VM] = field(default_factory=list)
    tls: bool = False
    dhcp: bool = False  # namespace VMs take their address with a DHCP client
    boot: GuestBoot = field(default_factory=GuestBoot)
    user_data: str | None = None  # every instance's, unless ``instance_data`` says otherwise
    ssh_key: str | None = None  # every instance's public key, likewise
    instance_data: dict[str, dict[str, Any]] = field(default_factory=dict)  # by instance name
    nodes: int = 1  # compute nodes; several: P-compute1..K on a fabric bridge, configured through etcd
    etcd_servers: list[str] = field(default_factory=list)  # an existing etcd cluster's; none: our own (for several nodes)
    etcd_prefix: str = ETCD_KEY_PREFIX
    join: bool = False  # a lab joining the cloud of etcd_servers: its Nova, networks and services are the cloud's
    node_base: int = 1  # the cloud's number of this lab's first node (--node-id): its vhost0 is 10.10.0.(1 + it)
    fabric_link: str = ""  # a namespace whose bridge br-fabric is the cloud's fabric: reached by a veth
    etcd_tls: EtcdTls | None = None  # the files an https etcd is reached with (--etcd-ca ..., or our own etcd's with --etcd-tls)
    flow_entries: int = 0  # each agent's flow table ([FLOWS] flow_entries); 0: the agent's default
    flow_cache_timeout: int = 180  # seconds before an idle flow goes ([FLOWS] flow_cache_timeout)
    datapath: str = "nfqueue"  # each agent's ([FLOWS] datapath): nfqueue or ebpf

    @property
    def compute(self) -> str:
        """The first node's namespace."""
        return self.compute_of(1)

    def compute_of(self, node: int) -> str:
        return self.prefix + "-compute" if self.nodes == 1 else "%s-compute%d" % (self.prefix, node)

    def vhost_ip_of(self, node: int) -> str:
        return "%s.%d" % (FABRIC_NET, self.node_base + node)

    def state_of(self, node: int) -> str:
        """Node ``node``'s agent's state directory."""
        return self.state_dir if self.nodes == 1 else "%s/compute%d" % (self.state_dir, node)

    @property
    def clustered(self) -> bool:
        """The nodes' configuration is in etcd (several nodes, or an etcd given)."""
        return self.nodes > 1 or bool(self.etcd_servers)

    @property
    def own_etcd(self) -> bool:
        return self.clustered and not self.etcd_servers

    @property
    def own_nova(self) -> bool:
        return not self.join

    @property
    def etcd_urls(self) -> list[str]:
        return self.etcd_servers or ["%s://%s:%d" % ("https" if self.etcd_tls else "http", self.nova_ip, ETCD_PORT)]

    def own_etcd_tls(self) -> None:
        """Our own etcd over TLS with client certificates (--etcd-tls): the files ``up`` makes in
        ``etcd-tls/`` of the state directory (``topology.etcd``), the clients' ones named here."""
        t = self.state_dir + "/etcd-tls/"
        self.etcd_tls = EtcdTls(t + "ca.pem", t + "client.pem", t + "client.key")

    def adopt(self, networks: list[Net], used: set[str]) -> None:
        """Join a cloud: its networks (from etcd) instead of our own, the VMs dealt to them in turn,
        each VM the next address of its network that no VM of the cloud has (``used``).
        ValueError if a network is full."""
        if not networks:
            raise ValueError("the cloud has no virtual network (nothing under virtual-networks/ in etcd)")
        self.networks = networks
        host = {n.uuid: 3 for n in networks}
        for i, vm in enumerate(self.ports):
            net = networks[i % len(networks)]
            h = host[net.uuid]
            while net.host(h)[0] in used:
                h += 1
            if h > 254:
                raise ValueError("network %s (%s) has no free address for %s" % (net.name, net.subnet, vm.name))
            host[net.uuid] = h + 1
            vm.ip, vm.mac, vm.ipv6 = net.host(h)
            vm.vn_uuid, vm.gateway, vm.network = net.uuid, net.gateway, net.name

    def vms_of(self, node: int) -> list[VM]:
        return [vm for vm in self.ports if vm.node == node]

    @property
    def fabric(self) -> str:
        return self.prefix + "-fabric"

    @property
    def vhost_ip(self) -> str:
        return FABRIC_NET + ".2"

    @property
    def nova_ip(self) -> str:
        return FABRIC_NET + ".1"

    @property
    def fabric_ip6(self) -> str:
        """The fabric namespace's IPv6 address (Nova's side): for link-local services over IPv6."""
        return FABRIC_NET6 + "1"

    def vhost_ip6_of(self, node: int) -> str:
        return "%s%x" % (FABRIC_NET6, self.node_base + node)

    @property
    def vn(self) -> str:
        """The first network's uuid."""
        return self.networks[0].uuid

    @property
    def subnet(self) -> str:
        return self.networks[0].subnet

    @property
    def gateway(self) -> str:
        return self.networks[0].gateway

    @property
    def dns_server(self) -> str:
        return self.networks[0].dns_server

    def network_of(self, vm: VM) -> Net:
        return next(n for n in self.networks if n.uuid == vm.vn_uuid)

    @property
    def ports(self) -> list[VM]:
        return self.vms + self.guests

    @classmethod
    def plan(cls, prefix: str, vms: int, state_dir: str, secret: str | None = None, tls: bool = False, qemu: int = 0, networks: int = 0,
             nodes: int = 1, ipv6: tuple[str, ...] = ("none",)) -> Topology:  # fmt: skip
        """Names, addresses and uuids for ``nodes`` compute nodes with ``vms`` namespace VMs and
        ``qemu`` guests in all on ``networks`` virtual networks (0: as many as they need, 252 VMs a
        network).  The VMs are dealt to the nodes in blocks (vm1 and vm2 on node 1 of 3 nodes with
        6 VMs), to the networks in turn, so that each node has VMs of several networks.  ``ipv6``:
        the networks' IPv6 address modes in order, the last for the rest."""
        total = vms + qemu
        if not 1 <= total <= MAX_VMS or vms < 0 or qemu < 0:
            raise ValueError("--vms %d and --qemu %d: from 1 to %d in all" % (vms, qemu, MAX_VMS))
        if not 1 <= nodes <= min(MAX_NODES, total):
            raise ValueError("--nodes %d: from 1 to %d (one VM a node at least)" % (nodes, min(MAX_NODES, total)))
        need = -(-total // PER_NETWORK)
        k = networks or need
        if not need <= k <= min(MAX_NETWORKS, total):
            raise ValueError(
                "--networks %d: from %d (%d VMs and guests, %d a network) to %d" % (k, need, total, PER_NETWORK, min(MAX_NETWORKS, total))
            )
        project = str(uuid.uuid4())
        for mode in ipv6:
            if mode not in IPV6_MODES:
                raise ValueError("--ipv6 %s: one of %s" % (mode, ", ".join(IPV6_MODES)))
        modes = list(ipv6) + [ipv6[-1]] * k if ipv6 else ["none"] * k
        nets = [Net("%s-net" % prefix if j == 1 else "%s-net%d" % (prefix, j), str(uuid.uuid4()), j, modes[j - 1]) for j in range(1, k + 1)]
        topo = cls(prefix, state_dir, secrets.token_hex(16) if secret is None else secret, project, nets, tls=tls, nodes=nodes)
        for i in range(1, total + 1):
            port = str(uuid.uuid4())
            net = nets[(i - 1) % k]
            host = (i - 1) // k + 3
            guest = i > vms
            name = "guest%d" % (i - vms) if guest else "vm%d" % i
            ip, mac, ip6 = net.host(host)
            vm = VM(
                name=name, namespace="" if guest else "%s-%s" % (prefix, name), ip=ip, mac=mac, tap="tap" + port[:11], port_uuid=port,
                instance_uuid=str(uuid.uuid4()), project_id=project, vn_uuid=net.uuid, gateway=net.gateway, prefix_len=24,
                ipv6=ip6, kind="qemu" if guest else "namespace", network=net.name,
                node=(i - 1) * nodes // total + 1,
            )  # fmt: skip
            if guest:
                vm.console = "%s/guests/%s.console" % (state_dir, name)
            (topo.guests if guest else topo.vms).append(vm)
        return topo

    def instances(self) -> dict[str, Any]:
        """Nova's records of the instances, as ``vrouter nova-metadata --instances`` reads them."""
        out = []
        for vm in self.ports:
            net = self.network_of(vm)
            rec: dict[str, Any] = {
                "uuid": vm.instance_uuid, "name": vm.name, "hostname": vm.name, "project_id": uuid.UUID(self.project).hex,
                "availability_zone": "nova", "launch_index": 0, "instance_type": "m1.small",
                "public_keys": {"demo": DEMO_KEY % (vm.name, self.prefix, self.prefix)},
                "user_data": "#cloud-config\nhostname: %s\n" % vm.name, "meta": {"role": "demo"},
                "ip": vm.ip, "mac": vm.mac, "port_uuid": vm.port_uuid, "vn_uuid": vm.vn_uuid,
                "gateway": vm.gateway, "netmask": "255.255.255.0", "dns_server": net.dns_server, "mtu": 1500,
                # how the instance takes its address, as network_data.json says: a guest and a
                # --dhcp VM by DHCP (ipv4_dhcp), a static namespace VM by its fixed address (ipv4)
                "dhcp": vm.kind == "qemu" or self.dhcp, "security_groups": ["default"],
                # dual stack: the port's IPv6 address and its subnet, as network_data.json renders them
                "ip6": vm.ipv6, "ipv6_mode": net.ipv6_mode, "ipv6_prefix": net.subnet6, "ipv6_gateway": net.gateway6,
                "ipv6_dns_server": net.dns_server6,
            }  # fmt: skip
            if self.ssh_key is not None:
                rec["public_keys"] = {"default": self.ssh_key}
            if self.user_data is not None:
                rec["user_data"] = self.user_data
            rec.update(self.instance_data.get(vm.name, {}))
            out.append(rec)
        return {"instances": out}

    def agent_conf(self, node: int = 1) -> str:
        ssl = "metadata_use_ssl = false"
        if self.tls:
            t = self.state_dir + "/tls"
            ssl = "metadata_use_ssl = true\nmetadata_ca_cert = %s/ca.pem\n" % t
            ssl += "metadata_client_cert = %s/agent.pem\nmetadata_client_key = %s/agent.key" % (t, t)
        cluster = ""
        if self.clustered:
            cluster = "hostname = %s\n\n[ETCD]\nservers = %s\nkey_prefix = %s\n" % (self.compute_of(node), ",".join(self.etcd_urls), self.etcd_prefix)
            if self.etcd_tls is not None:
                e = self.etcd_tls
                cluster += "ca_cert = %s\n" % e.ca + ("certfile = %s\nkeyfile = %s\n" % (e.cert, e.key) if e.cert else "")
        return (
            "# Written by netns_setup.sh for prefix %s\n[DEFAULT]\nlog_level = SYS_INFO\n%s\n"
            "[VIRTUAL-HOST-INTERFACE]\nname = vhost0\nip = %s/24\ngateway = %s\n\n"
            "[METADATA]\nmetadata_proxy_secret = %s\nmetadata_proxy_port = %d\n%s\n\n"
            "[FLOWS]\nflow_cache_timeout = %d\ndatapath = %s\n%s"
        ) % (
            self.prefix,
            cluster,
            self.vhost_ip_of(node),
            self.nova_ip,
            self.secret,
            PROXY_PORT,
            ssl,
            self.flow_cache_timeout,
            self.datapath,
            "flow_entries = %d\n" % self.flow_entries if self.flow_entries else "",
        )

    def introspect_of(self, n: int) -> str:
        """Node n's introspect (reachable from its namespace and the fabric's)."""
        return "http://%s:%d/" % (self.vhost_ip_of(n), INTROSPECT_PORT)

    def layout(self) -> dict[str, Any]:
        """What netns_setup.sh up --json prints (and writes to layout.json)."""
        s = self.state_dir
        return {
            "prefix": self.prefix,
            "datapath": self.datapath,
            "state_dir": s,
            "namespaces": {"compute": self.compute, "computes": [self.compute_of(n) for n in range(1, self.nodes + 1)], "fabric": self.fabric,
                           "vms": [v.namespace for v in self.vms]},  # fmt: skip
            "vhost0": {"ip": self.vhost_ip, "ip6": self.vhost_ip6_of(1), "namespace": self.compute},
            "introspect": self.introspect_of(1),
            "nova": {
                "ip": self.nova_ip,
                "ip6": self.fabric_ip6,
                "port": NOVA_PORT,
                "namespace": self.fabric,
                "url": "%s://%s:%d" % ("https" if self.tls else "http", self.nova_ip, NOVA_PORT),
                "tls": {"ca": s + "/tls/ca.pem", "cert": s + "/tls/nova.pem", "key": s + "/tls/nova.key"} if self.tls else None,
            },  # fmt: skip
            "network": self.networks[0].as_dict(self.dhcp),  # the first, as before there were several
            "networks": [n.as_dict(self.dhcp) for n in self.networks],
            "metadata_service": {"ip": "169.254.169.254", "ip6": "fe80::a9fe:a9fe", "port": 80},
            "metadata_proxy": {"ip": self.vhost_ip, "ip6": "fd00:a9fe:a9fe::1", "port": PROXY_PORT},
            "secret": self.secret,
            "vms": [asdict(v) for v in self.vms],
            "guests": [asdict(v) for v in self.guests],
            "logs": {"agent": self.state_of(1) + "/agent.log", "nova": s + "/nova.log"},
            "nodes": [
                {"node": n, "name": self.compute_of(n), "namespace": self.compute_of(n), "vhost0": self.vhost_ip_of(n),
                 "vhost0_ip6": self.vhost_ip6_of(n), "introspect": self.introspect_of(n), "state_dir": self.state_of(n),
                 "agent_log": self.state_of(n) + "/agent.log", "vms": [v.name for v in self.vms_of(n)]}
                for n in range(1, self.nodes + 1)
            ],
            "etcd": {"urls": self.etcd_urls, "key_prefix": self.etcd_prefix, "namespace": self.fabric if self.own_etcd else None,
                     "joined": self.join, "fabric_link": self.fabric_link or None,
                     "tls": {"ca": self.etcd_tls.ca, "cert": self.etcd_tls.cert, "key": self.etcd_tls.key} if self.etcd_tls else None}
            if self.clustered else None,
        }  # fmt: skip


def check_instance_data(data: Any, source: str) -> dict[str, dict[str, Any]]:
    """``--instances FILE``'s content: {"instances": [{"name": ..., ...}]} or {name: {...}}; each
    entry may set name, hostname, public_keys, user_data, admin_pass, vendor_data, vendor_data2,
    meta, availability_zone.  ValueError names what is wrong."""
    items = data.get("instances", data) if isinstance(data, dict) else data
    if isinstance(items, dict):
        items = [dict(v, name=k) if isinstance(v, dict) else v for k, v in items.items()]
    if not isinstance(items, list):
        raise ValueError('%s: expected {"instances": [...]} or an object by instance name' % source)
    out: dict[str, dict[str, Any]] = {}
    for n, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ValueError('%s: entry %d: an object with a "name" (vm1, guest1, ...)' % (source, n))
        unknown = set(item) - INSTANCE_KEYS
        if unknown:
            known = ", ".join(sorted(INSTANCE_KEYS))
            raise ValueError("%s: %s: unknown keys %s (known: %s)" % (source, item["name"], ", ".join(sorted(unknown)), known))
        if "public_keys" in item and not (isinstance(item["public_keys"], dict) and all(isinstance(v, str) for v in item["public_keys"].values())):
            raise ValueError("%s: %s: public_keys must map key names to keys" % (source, item["name"]))
        for key in ("user_data", "admin_pass", "hostname"):
            if key in item and not isinstance(item[key], str):
                raise ValueError("%s: %s: %s must be a string" % (source, item["name"], key))
        out[item["name"]] = {k: v for k, v in item.items() if k != "name"}
    return out
