"""Raw IP sockets of the compute namespace: how the dataplane sends a packet whose family changed.

A queue's verdict can rewrite a packet but not change its family: the IPv4
hook reinjects IPv4.  A VM's IPv6 packet to a VM on another node leaves in an
IPv4 tunnel (MPLS over UDP), and a tunnel brings IPv6 packets in; for those the
engine drops the queued packet and sends the new one through the compute
namespace's own stack, which routes it as it routes the rest (the outer packet
to the other node's vhost0, the inner one down the VM's tap by its /128 route).
The fabric's IPv6 replies to a VM's link-local address (a link-local service
over IPv6) leave by the same socket, down the VM's tap (the address's scope).
The sockets send only packets with their headers included (IPPROTO_RAW), and
receive nothing.
"""

from __future__ import annotations

import logging
import socket

log = logging.getLogger("vrouter.dataplane")


class RawSender:
    def __init__(self) -> None:
        self._v4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self._v6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
        for s in (self._v4, self._v6):
            s.setblocking(False)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)  # IPPROTO_RAW receives nothing anyway
        self.errors = 0

    def send(self, pkt: bytes, ifindex: int = 0) -> bool:
        """Send an IPv4 or IPv6 packet (its header included) to the address in its header; an
        IPv6 one out of the interface ``ifindex`` when given (a link-local destination's)."""
        try:
            if pkt[0] >> 4 == 4:
                self._v4.sendto(pkt, (socket.inet_ntop(socket.AF_INET, pkt[16:20]), 0))
            else:
                self._v6.sendto(pkt, (socket.inet_ntop(socket.AF_INET6, pkt[24:40]), 0, 0, ifindex))
            return True
        except OSError as e:
            self.errors += 1
            if self.errors == 1 or self.errors % 10000 == 0:
                log.warning("raw send: %s (%d so far)", e, self.errors)
            return False

    def close(self) -> None:
        self._v4.close()
        self._v6.close()
