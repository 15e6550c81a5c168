"""vifdump's sink: a capture's records as datagrams to the reader's Unix socket.

The reader (``vrouter vifdump``) binds a datagram socket and names it to the
agent; each record is one datagram, sent without waiting: when the reader's
queue is full the record is lost (counted), so a slow reader never holds the
dataplane up.  A reader that is gone (its socket closed or removed) ends the
capture.
"""

from __future__ import annotations

import errno
import socket

from dataplane.core.capture import Sink

SNDBUF = 4 << 20
_GONE = (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTCONN, errno.EPIPE)


class DatagramSink(Sink):
    def __init__(self, path: str) -> None:
        """OSError if nothing is bound at ``path``."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
            s.connect(path)
        except OSError:
            s.close()
            raise
        s.setblocking(False)
        self.sock = s
        self.path = path

    def send(self, record: bytes) -> bool:
        try:
            self.sock.send(record)
            return True
        except BlockingIOError:
            return False
        except OSError as e:
            if e.errno in _GONE:
                self.gone = True
            return False

    def close(self) -> None:
        self.sock.close()
