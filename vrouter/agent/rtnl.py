"""A port's tap made ready in one rtnetlink transaction: its MAC and state, the /32 and /128 routes
and permanent neighbours of the VM's and metadata addresses, the link-local addresses on it.

pyroute2 (``host.HostNetwork._nl``) costs about a millisecond a message in Python, on a thread;
a plug is a dozen messages, which made ``up --vms 4000`` spend 12 ms a port in it.  Here the
messages are packed by hand and sent in one ``sendmsg``, each acknowledged: the same requests
``ip link set``, ``ip route replace``, ``ip neigh replace`` and ``ip addr replace`` send
(``NLM_F_CREATE | NLM_F_REPLACE``, protocol static, as pyroute2 made them).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from collections.abc import Iterable

from infra import netlink

RTM_NEWLINK = 16
RTM_NEWADDR = 20
RTM_NEWROUTE = 24
RTM_DELROUTE = 25
RTM_NEWNEIGH = 28
RTM_DELNEIGH = 29
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_REPLACE = 0x100
NLM_F_CREATE = 0x400
IFF_UP = 0x1
IFLA_ADDRESS = 1
IFA_ADDRESS = 1
IFA_FLAGS = 8
IFA_F_NODAD = 0x02
RTA_DST = 1
RTA_OIF = 4
RT_TABLE_MAIN = 254
RTPROT_STATIC = 4
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RT_SCOPE_NOWHERE = 255  # in a deletion: a route of any scope
RTN_UNICAST = 1
NDA_DST = 1
NDA_LLADDR = 2
NUD_PERMANENT = 0x80

Message = tuple[int, int, bytes]  # (type, extra flags, body)


class RtnlError(OSError):
    """The kernel refused one of the transaction's messages; errno says why."""


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * ((-length) % 4)


def _mac(mac: str) -> bytes:
    return bytes(int(b, 16) for b in mac.split(":"))


def link_up(index: int, mac: str) -> Message:
    """``ip link set`` the interface up, with this MAC."""
    return RTM_NEWLINK, 0, struct.pack("=BxHiII", socket.AF_UNSPEC, 0, index, IFF_UP, IFF_UP) + _attr(IFLA_ADDRESS, _mac(mac))


def route(index: int, address: str) -> Message:
    """``ip route replace ADDRESS/32 dev IF scope link`` (IPv4), or ``ADDRESS/128 dev IF`` (IPv6)."""
    ip = ipaddress.ip_address(address)
    v6 = ip.version == 6
    head = struct.pack("=BBBBBBBBI", socket.AF_INET6 if v6 else socket.AF_INET, 128 if v6 else 32, 0, 0, RT_TABLE_MAIN, RTPROT_STATIC,
                       RT_SCOPE_UNIVERSE if v6 else RT_SCOPE_LINK, RTN_UNICAST, 0)  # fmt: skip
    return RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, head + _attr(RTA_DST, ip.packed) + _attr(RTA_OIF, struct.pack("=i", index))


def route_gone(index: int, address: str) -> Message:
    """``ip route del ADDRESS/32 [dev IF]`` (``index`` 0: whatever the device), or ``/128``."""
    ip = ipaddress.ip_address(address)
    v6 = ip.version == 6
    head = struct.pack("=BBBBBBBBI", socket.AF_INET6 if v6 else socket.AF_INET, 128 if v6 else 32, 0, 0, RT_TABLE_MAIN, 0, RT_SCOPE_NOWHERE, 0, 0)
    return RTM_DELROUTE, 0, head + _attr(RTA_DST, ip.packed) + (_attr(RTA_OIF, struct.pack("=i", index)) if index else b"")


def neighbour_gone(index: int, address: str) -> Message:
    """``ip neigh del ADDRESS dev IF``."""
    ip = ipaddress.ip_address(address)
    head = struct.pack("=BBHiHBB", socket.AF_INET6 if ip.version == 6 else socket.AF_INET, 0, 0, index, 0, 0, 0)
    return RTM_DELNEIGH, 0, head + _attr(NDA_DST, ip.packed)


def neighbour(index: int, address: str, mac: str) -> Message:
    """``ip neigh replace ADDRESS lladdr MAC dev IF nud permanent``."""
    ip = ipaddress.ip_address(address)
    head = struct.pack("=BBHiHBB", socket.AF_INET6 if ip.version == 6 else socket.AF_INET, 0, 0, index, NUD_PERMANENT, 0, 0)
    return RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, head + _attr(NDA_DST, ip.packed) + _attr(NDA_LLADDR, _mac(mac))


def address6(index: int, address: str, prefixlen: int) -> Message:
    """``ip -6 addr replace ADDRESS/PREFIXLEN dev IF nodad``."""
    ip = ipaddress.IPv6Address(address)
    head = struct.pack("=BBBBI", socket.AF_INET6, prefixlen, IFA_F_NODAD, RT_SCOPE_UNIVERSE, index)
    return RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, head + _attr(IFA_ADDRESS, ip.packed) + _attr(IFA_FLAGS, struct.pack("=I", IFA_F_NODAD))


class Rtnl:
    """A NETLINK_ROUTE socket of this network namespace, for transactions of acknowledged requests."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self.sock.settimeout(5)  # the kernel answers as it takes each request; a lost answer must not hang the agent
        self.sock.bind((0, 0))
        self.seq = int.from_bytes(os.urandom(3), "big")

    def close(self) -> None:
        self.sock.close()

    def apply(self, messages: Iterable[Message]) -> None:
        """Send the messages in one write; RtnlError for the first the kernel refused (the others
        are applied: each is a request of its own), TimeoutError if its answers do not come."""
        parts, waiting = [], set()
        for mtype, flags, body in messages:
            self.seq += 1
            waiting.add(self.seq)
            parts.append(struct.pack("=IHHII", 16 + len(body), mtype, NLM_F_REQUEST | NLM_F_ACK | flags, self.seq, 0) + body)
        if not parts:
            return
        self.sock.sendall(b"".join(parts))
        error = 0
        while waiting:
            for mtype, seq, body in netlink.messages(self.sock.recv(1 << 16)):
                if mtype == netlink.NLMSG_ERROR and seq in waiting:
                    waiting.discard(seq)
                    error = error or -netlink.error_code(body)
        if error:
            raise RtnlError(error, os.strerror(error))
