"""MPLS over UDP to a node's tunnel port (vhost0:6635), as another node of the cloud sends it.

A VM has no route to the fabric, so these are sent from the fabric namespace, to the attacked
node's vhost0 only: IP packets (raw socket, so the outer source can be the other node's vhost0,
as its tunnel packets are, or the fabric's, or any address of the fabric's subnet), UDP to 6635,
then an MPLS label stack and an inner packet, each part valid or fuzzed:

* the outer UDP header: fuzz(UDP()) (source port, the length now and then a lie), checksum 0 or not;
* the labels: fuzz(MPLS()) (label, traffic class, bottom of stack, TTL), or the label of one of
  the node's VMs (16 + vif) as the other node sets it, one label or a stack of up to four;
* the inner packet: from the other node's VM to one of this node's VMs, its IP header valid or
  fuzz(IP()) and fuzz(TCP()/UDP()/ICMP()) above; IPv6 likewise; an Ethernet frame; garbage; nothing.
"""

from __future__ import annotations

import random
from typing import Any

from scapy.contrib.mpls import MPLS
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw, fuzz

from fuzzing.packets import rbytes, rmac
from fuzzing.targets import TUNNEL_PORT, Targets


def outer_source(t: Targets, rnd: random.Random) -> str:
    """The other node's vhost0 mostly (a node the attacked one has routes to), else the fabric's
    own address, the attacked node's own, or another of the fabric's subnet (nodes it does not know)."""
    if t.peer_vhost0 and rnd.random() < 0.7:
        return t.peer_vhost0
    base = t.vhost0.rsplit(".", 1)[0] + "."
    return rnd.choice([t.fabric, t.vhost0, base + str(rnd.randrange(3, 255))])


def labels(t: Targets, rnd: random.Random) -> Packet:
    """One label or a stack: a VM's of the node, or fuzzed."""
    depth = 1 if rnd.random() < 0.8 else rnd.randrange(2, 5)
    stack: Packet | None = None
    for i in range(depth):
        bottom = 1 if i == depth - 1 else 0
        if t.labels and rnd.random() < 0.75:
            one = MPLS(label=rnd.choice(t.labels), s=bottom, ttl=rnd.choice([64, 255, 1, 0]))
        else:
            one = fuzz(MPLS(s=bottom)) if rnd.random() < 0.7 else fuzz(MPLS())
        stack = one if stack is None else stack / one
    assert stack is not None
    return stack


def inner(t: Targets, rnd: random.Random) -> Packet:
    """What the labels carry."""
    k = rnd.randrange(10)
    src = t.peer_vm if t.peer_vm and rnd.random() < 0.8 else rnd.choice(t.others + [t.ip])
    dst = rnd.choice(t.node_vms + [t.gateway, t.dns])
    l4 = fuzz(rnd.choice([TCP, UDP, ICMP])())
    if k < 4:
        return IP(src=src, dst=dst) / l4 / Raw(rbytes(rnd, 100))
    if k < 6:
        return fuzz(IP(src=src, dst=dst)) / l4 / Raw(rbytes(rnd, 100))
    if k == 6 and t.node_vms6:
        src6 = t.peer_vm6 or rnd.choice(t.others6)
        return IPv6(src=src6, dst=rnd.choice(t.node_vms6)) / fuzz(rnd.choice([ICMPv6EchoRequest, UDP, TCP])())
    if k == 7:
        return fuzz(IPv6(src=t.peer_vm6 or "::", dst=rnd.choice(t.node_vms6 or ["ff02::1"]))) / Raw(rbytes(rnd, 60))
    if k == 8:
        return Ether(dst=rmac(rnd), src=rmac(rnd)) / IP(src=src, dst=dst) / ICMP()
    return Raw(rbytes(rnd, 40))


def mpls_over_udp(t: Targets, rnd: random.Random) -> tuple[str, bytes]:
    """One tunnel packet: (the outer IP destination, the whole IP packet)."""
    udp: dict[str, Any] = {"dport": TUNNEL_PORT}
    if rnd.random() < 0.6:
        udp["chksum"] = 0  # as the vRouter sends it
    if rnd.random() < 0.15:
        udp["len"] = rnd.choice([0, 7, 8, 9, 11, 65535, rnd.randrange(65536)])
    head = IP(src=outer_source(t, rnd), dst=t.vhost0) / fuzz(UDP(**udp))
    k = rnd.random()
    if k < 0.85:
        pkt = head / labels(t, rnd) / inner(t, rnd)
    elif k < 0.95:
        pkt = head / Raw(rbytes(rnd, 3))  # less than a label
    else:
        pkt = head / Raw(rbytes(rnd, 200))
    return t.vhost0, bytes(pkt)[:1500]
