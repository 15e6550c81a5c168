"""The lab as the fuzzer sees it: every address it may send to, all inside the lab's namespaces.

The sending processes get a ``Targets`` as JSON on their command line.  Every destination address
the generators use comes from here (and the link-scoped multicast and broadcast groups of the VM's
own link), so that nothing is ever addressed outside the lab.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

ROUTER_MAC = "00:00:5e:00:01:00"  # the vRouter's MAC: the gateway's, as the VMs see it
METADATA_IP = "169.254.169.254"
METADATA_IP6 = "fe80::a9fe:a9fe"
TUNNEL_PORT = 6635  # MPLS over UDP between the nodes' vhost0
LABEL_BASE = 16  # a VM interface's MPLS label: 16 + its vif index


@dataclass
class Targets:
    """The attacker VM, its network's addresses, the other VMs, the node's and the fabric's."""

    iface: str
    mac: str
    ip: str
    ip6: str
    uuid: str  # the attacker's instance: its own metadata's
    gateway: str
    gateway6: str
    dns: str
    dns6: str
    subnet_prefix: str  # "10.1.1." : for addresses of the subnet that no VM has
    vhost0: str  # the attacked node's
    fabric: str  # the fabric namespace's (Nova's)
    others: list[str] = field(default_factory=list)  # the other VMs' IPv4 addresses (their node's first)
    others6: list[str] = field(default_factory=list)
    other_uuids: list[str] = field(default_factory=list)  # their instances: never to be seen in the attacker's answers
    metadata_ips: list[str] = field(default_factory=list)  # the node's VMs' 169.254.0.x
    # the cloud: the other node's vhost0, its VM (the inner source of its tunnel packets), the labels
    # of the attacked node's VMs
    peer_vhost0: str = ""
    peer_vm: str = ""
    peer_vm6: str = ""
    labels: list[int] = field(default_factory=list)
    node_vms: list[str] = field(default_factory=list)  # the attacked node's VMs' IPv4 addresses
    node_vms6: list[str] = field(default_factory=list)

    def dumps(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def loads(cls, text: str) -> Targets:
        return cls(**json.loads(text))

    @classmethod
    def of_layout(cls, layout: dict[str, Any], attacker: str) -> Targets:
        """The attacker VM ``attacker`` (a name: vm1) of a lab's layout, and the rest of the lab."""
        vms = {v["name"]: v for v in layout["vms"]}
        me = vms[attacker]
        net = next(n for n in layout["networks"] if n["uuid"] == me["vn_uuid"])
        node = next(n for n in layout["nodes"] if n["node"] == me["node"])
        peers = [n for n in layout["nodes"] if n["node"] != me["node"]]
        mine = [v for v in layout["vms"] if v["node"] == me["node"]]
        theirs = [v for v in layout["vms"] if v["node"] != me["node"]]
        others = [v for v in mine + theirs if v["name"] != attacker]
        return cls(
            iface="eth0",
            mac=me["mac"],
            ip=me["ip"],
            ip6=me["ipv6"],
            uuid=me["instance_uuid"],
            gateway=net["gateway"],
            gateway6=net["gateway6"],
            dns=net["dns_server"],
            dns6=net["dns_server6"],
            subnet_prefix=net["subnet"].rsplit(".", 1)[0] + ".",
            vhost0=node["vhost0"],
            fabric=layout["nova"]["ip"],
            others=[v["ip"] for v in others],
            others6=[v["ipv6"] for v in others],
            other_uuids=[v["instance_uuid"] for v in others],
            metadata_ips=[v["metadata_ip"] for v in mine if v.get("metadata_ip")],
            peer_vhost0=peers[0]["vhost0"] if peers else "",
            peer_vm=theirs[0]["ip"] if theirs else "",
            peer_vm6=theirs[0]["ipv6"] if theirs else "",
            labels=[LABEL_BASE + v["vif"] for v in mine if v.get("vif")],
            node_vms=[v["ip"] for v in mine],
            node_vms6=[v["ipv6"] for v in mine],
        )

    def ipv4_destinations(self) -> list[str]:
        """Where a VM's IPv4 packets go: the node's services, the VMs, the metadata service and
        the VMs' metadata IPs, vhost0 and the fabric (no route: dropped), the subnet's broadcast
        and an address of it that no VM has, the link's broadcast and all-hosts groups."""
        return [self.gateway, self.dns, self.ip, METADATA_IP, self.vhost0, self.fabric, self.subnet_prefix + "255",
                self.subnet_prefix + "200", "255.255.255.255", "224.0.0.1"] + self.others + self.metadata_ips  # fmt: skip

    def ipv6_destinations(self) -> list[str]:
        """The same for IPv6, with the link's multicast groups (all nodes, all routers, DHCPv6
        servers, MLDv2 routers) and the metadata service's addresses (the gateway's solicited-node
        group is the generators', from scapy)."""
        return [self.gateway6, self.dns6, self.ip6, "ff02::1", "ff02::2", "ff02::1:2", "ff02::16", METADATA_IP6, "fe80::1",
                "fd00:a9fe:a9fe::1"] + self.others6  # fmt: skip
