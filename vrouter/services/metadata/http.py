"""The proxy's HTTP: what it relays, what it strips, its limits, and the answers it gives itself.

Limits (a request past one is answered locally and its connection closed):
a request target over 8 KiB: 414; a request line plus headers over 16 KiB: 431;
a body over 1 MiB: 413; malformed HTTP: 400; a method other than GET, HEAD,
POST, PUT, DELETE: 501 (the vRouter agent's list).  Identity headers a VM sends
are removed (the vRouter agent forwards them; Neutron removes them), as are
hop-by-hop headers; Host is the Nova host's.
"""

from __future__ import annotations

import re

RELAYED_METHODS = {b"GET", b"HEAD", b"POST", b"PUT", b"DELETE"}
IDENTITY_HEADERS = {b"x-instance-id", b"x-tenant-id", b"x-instance-id-signature", b"x-forwarded-for"}
HOP_BY_HOP = {
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"te",
    b"trailer",
    b"upgrade",
    b"expect",
}
NOT_RELAYED = IDENTITY_HEADERS | HOP_BY_HOP | {b"host", b"content-length", b"transfer-encoding"}
NOT_RETURNED = HOP_BY_HOP | {b"content-length", b"transfer-encoding"}
MAX_HEADERS = 16 * 1024  # request line plus headers: 431 past this
MAX_TARGET = 8 * 1024  # request target: 414 past this
MAX_BODY = 1 << 20  # request bodies are buffered (metadata requests carry at most a password)
MAX_PIPELINED = 32  # requests queued on one connection before the proxy stops reading it
REQUEST_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+ \S+ HTTP/\d\.\d\r?\n")  # to tell 501 from 400

REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    413: b"Payload Too Large",
    414: b"URI Too Long",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    502: b"Bad Gateway",
}


class Request:
    """One request from a VM, as parsed, and what relaying it needs."""

    __slots__ = ("method", "target", "headers", "body", "keep_alive", "http11", "local", "wire")

    def __init__(self) -> None:
        self.method = b""
        self.target = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.keep_alive = True
        self.http11 = True
        self.local = 0  # a status the proxy answers itself, then closes
        self.wire = b""  # the request as sent to Nova (kept for one retry on a new connection)


class Refuse(Exception):
    """Raised inside a parser callback: answer ``status`` and close."""

    def __init__(self, status: int) -> None:
        self.status = status


def simple_response(status: int, close: bool, head: bool = False) -> bytes:
    """A local answer: the status, its reason as a text/plain body."""
    reason = REASONS.get(status, b"Error")
    body = reason + b"\n"
    out = b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=UTF-8\r\nContent-Length: %d\r\n" % (status, reason, len(body))
    if close:
        out += b"Connection: close\r\n"
    return out + b"\r\n" + (b"" if head else body)
