"""The emulated host as data, in the spirit of mininet's ``Topo``: nodes, VMs, links, addresses.

Pure: ``Topology.plan`` decides every name, address and uuid of a node with N
VMs; ``lab.Lab`` builds it in namespaces and removes it.  The picture::

    netns P-vmI                 netns P-compute                         netns P-fabric
    eth0 10.1.1.(I+2)/24  ---   tap<port uuid[:11]>
    gw 10.1.1.1                 vhost0 10.10.0.2/24  ----------------  eth0 10.10.0.1/24
                                agent, dataplane, metadata proxy        nova-metadata :8775

``layout()`` is what ``scripts/netns_setup.sh up --json`` prints and writes to
``/run/vrouter/P/layout.json``; ``instances()`` is Nova's instance records.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

FABRIC_NET = "10.10.0"
VM_NET = "10.1.1"
NOVA_PORT = 8775
PROXY_PORT = 8097
MAX_VMS = 200
DEMO_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDemoKeyFor%sOnly%s demo@%s"


@dataclass
class VM:
    """A VM: a namespace whose eth0 is one end of a veth, the other end the port's tap."""

    name: str
    namespace: str
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
    vif: int = 0  # the agent's, once the port is plugged
    metadata_ip: str = ""
    metadata_ip6: str = ""


@dataclass
class Topology:
    """One compute node, the fabric with Nova, and the VMs, all under ``prefix``."""

    prefix: str
    state_dir: str
    secret: str
    project: str
    vn: str
    vms: list[VM] = field(default_factory=list)
    tls: bool = False

    @property
    def compute(self) -> str:
        return self.prefix + "-compute"

    @property
    def fabric(self) -> str:
        return self.prefix + "-fabric"

    @property
    def vhost_ip(self) -> str:
        return FABRIC_NET + ".2"

    @property
    def nova_ip(self) -> str:
        return FABRIC_NET + ".1"

    @classmethod
    def plan(cls, prefix: str, vms: int, state_dir: str, secret: str | None = None, tls: bool = False) -> Topology:
        """Names, addresses and uuids for a node with ``vms`` VMs on one network (10.1.1.0/24)."""
        if not 1 <= vms <= MAX_VMS:
            raise ValueError("--vms %d: a number from 1 to %d" % (vms, MAX_VMS))
        project, vn = str(uuid.uuid4()), str(uuid.uuid4())
        topo = cls(prefix, state_dir, secrets.token_hex(16) if secret is None else secret, project, vn, tls=tls)
        for i in range(1, vms + 1):
            port = str(uuid.uuid4())
            host = i + 2
            topo.vms.append(VM(
                name="vm%d" % i, namespace="%s-vm%d" % (prefix, i), ip="%s.%d" % (VM_NET, host),
                mac="02:00:0a:01:%02x:%02x" % (host >> 8, host & 0xFF), tap="tap" + port[:11], port_uuid=port,
                instance_uuid=str(uuid.uuid4()), project_id=project, vn_uuid=vn, gateway=VM_NET + ".1", prefix_len=24,
                ipv6="fd00:10:1:1::%x" % host,
            ))  # fmt: skip
        return topo

    def instances(self) -> dict[str, Any]:
        """Nova's records of the instances, as ``vrouter nova-metadata --instances`` reads them."""
        out = []
        for vm in self.vms:
            out.append({
                "uuid": vm.instance_uuid, "name": vm.name, "hostname": vm.name, "project_id": uuid.UUID(self.project).hex,
                "availability_zone": "nova", "launch_index": 0, "instance_type": "m1.small",
                "public_keys": {"demo": DEMO_KEY % (vm.name, self.prefix, self.prefix)},
                "user_data": "#cloud-config\nhostname: %s\n" % vm.name, "meta": {"role": "demo"},
                "ip": vm.ip, "mac": vm.mac, "port_uuid": vm.port_uuid, "vn_uuid": vm.vn_uuid,
                "gateway": vm.gateway, "netmask": "255.255.255.0", "security_groups": ["default"],
            })  # fmt: skip
        return {"instances": out}

    def agent_conf(self) -> str:
        ssl = "metadata_use_ssl = false"
        if self.tls:
            t = self.state_dir + "/tls"
            ssl = "metadata_use_ssl = true\nmetadata_ca_cert = %s/ca.pem\n" % t
            ssl += "metadata_client_cert = %s/agent.pem\nmetadata_client_key = %s/agent.key" % (t, t)
        return (
            "# Written by netns_setup.sh for prefix %s\n[DEFAULT]\nlog_level = SYS_INFO\n\n"
            "[VIRTUAL-HOST-INTERFACE]\nname = vhost0\nip = %s/24\ngateway = %s\n\n"
            "[METADATA]\nmetadata_proxy_secret = %s\nmetadata_proxy_port = %d\n%s\n\n"
            "[FLOWS]\nflow_cache_timeout = 180\n"
        ) % (self.prefix, self.vhost_ip, self.nova_ip, self.secret, PROXY_PORT, ssl)

    def layout(self) -> dict[str, Any]:
        """What netns_setup.sh up --json prints (and writes to layout.json)."""
        s = self.state_dir
        return {
            "prefix": self.prefix,
            "state_dir": s,
            "namespaces": {"compute": self.compute, "fabric": self.fabric, "vms": [v.namespace for v in self.vms]},
            "vhost0": {"ip": self.vhost_ip, "namespace": self.compute},
            "nova": {
                "ip": self.nova_ip,
                "port": NOVA_PORT,
                "namespace": self.fabric,
                "url": "%s://%s:%d" % ("https" if self.tls else "http", self.nova_ip, NOVA_PORT),
                "tls": {"ca": s + "/tls/ca.pem", "cert": s + "/tls/nova.pem", "key": s + "/tls/nova.key"} if self.tls else None,
            },  # fmt: skip
            "metadata_service": {"ip": "169.254.169.254", "ip6": "fe80::a9fe:a9fe", "port": 80},
            "metadata_proxy": {"ip": self.vhost_ip, "ip6": "fd00:a9fe:a9fe::1", "port": PROXY_PORT},
            "secret": self.secret,
            "vms": [asdict(v) for v in self.vms],
            "logs": {"agent": s + "/agent.log", "nova": s + "/nova.log"},
        }
