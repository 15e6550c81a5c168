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
    def __init__(self, address: str, first: int = PORT_RANGE[0], last: int = PORT_RANGE[1]) -> None:
        self.address = address
        self.first = first
        self.last = last
        self._next = {TCP: first, UDP: first}
        self.in_use = 0

    def reserve(self, proto: int) -> tuple[int, socket.socket]:
        """A free port in the range, held by a bound socket; OSError when the range is used up."""
        kind = socket.SOCK_STREAM if proto == TCP else socket.SOCK_DGRAM
        span = self.last - self.first + 1
        port = self._next[proto]
        for _ in range(span):
            s = socket.socket(socket.AF_INET, kind)
            try:
                s.bind((self.address, port))
            except OSError as e:
                s.close()
                if e.errno != errno.EADDRINUSE:
                    raise
                port = self.first if port >= self.last else port + 1
                continue
            self._next[proto] = self.first if port >= self.last else port + 1
            self.in_use += 1
            return port, s
        raise OSError(errno.EADDRINUSE, "every link-local NAT port in %d-%d is in use" % (self.first, self.last))

    def release(self, handle: object) -> None:
        if isinstance(handle, socket.socket):
            handle.close()
            self.in_use -= 1
