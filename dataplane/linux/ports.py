"""Source ports for link-local NAT to the fabric, reserved by binding real sockets.

A flow to a fabric service leaves the compute node from vhost0's address with
a source port that no local program can take while the flow lives: the port
is held by a socket bound to it (TCP or UDP, as the flow), closed when the
flow goes.  Ports come from a dedicated range that the agent also lists in
``net.ipv4.ip_local_reserved_ports`` of the compute namespace, so neither
ephemeral ports nor the metadata proxy's connections to Nova collide with
them, and the nftables table can send the fabric's replies (destination port
in the range, arriving on vhost0) to the dataplane.
"""

from __future__ import annotations

import errno
import socket

from dataplane.core.packet import TCP, UDP

PORT_RANGE = (61000, 65535)


class SocketPortAllocator:
    """``address``: vhost0's IPv4 address; ``address6``: its IPv6 one, for the flows of VMs that
    reach a link-local service over IPv6 ("": none; those flows then get no port)."""

    def __init__(self, address: str, first: int = PORT_RANGE[0], last: int = PORT_RANGE[1], address6: str = "") -> None:
        self.address = address
        self.address6 = address6
        self.first = first
        self.last = last
        self._next = {(TCP, False): first, (UDP, False): first, (TCP, True): first, (UDP, True): first}
        self.in_use = 0

    def reserve(self, proto: int, v6: bool = False) -> tuple[int, socket.socket]:
        """A free port in the range, held by a bound socket; OSError when the range is used up."""
        kind = socket.SOCK_STREAM if proto == TCP else socket.SOCK_DGRAM
        family, address = (socket.AF_INET6, self.address6) if v6 else (socket.AF_INET, self.address)
        if not address:
            raise OSError(errno.EADDRNOTAVAIL, "vhost0 has no IPv6 address")
        span = self.last - self.first + 1
        port = self._next[proto, v6]
        for _ in range(span):
            s = socket.socket(family, kind)
            try:
                s.bind((address, port))
            except OSError as e:
                s.close()
                if e.errno != errno.EADDRINUSE:
                    raise
                port = self.first if port >= self.last else port + 1
                continue
            self._next[proto, v6] = self.first if port >= self.last else port + 1
            self.in_use += 1
            return port, s
        raise OSError(errno.EADDRINUSE, "every link-local NAT port in %d-%d is in use" % (self.first, self.last))

    def release(self, handle: object) -> None:
        if isinstance(handle, socket.socket):
            handle.close()
            self.in_use -= 1
