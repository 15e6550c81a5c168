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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vrouter.model import Identity
    from vrouter.services.metadata.faults import Rule

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

    __slots__ = ("method", "target", "headers", "body", "keep_alive", "http11", "local", "wire", "t0", "t_relay", "t_nova", "size",
                 "out", "status", "ident", "fault", "recorded")  # fmt: skip

    def __init__(self, t0: float = 0.0) -> None:
        self.method = b""
        self.target = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.keep_alive = True
        self.http11 = True
        self.local = 0  # a status the proxy answers itself, then closes
        self.wire = b""  # the request as sent to Nova (kept for one retry on a new connection)
        # for the journal
        self.t0 = t0  # when it began (time.monotonic)
        self.t_relay = 0.0  # when it went to Nova
        self.t_nova = 0.0  # when Nova's answer head came
        self.size = 0  # bytes of its head and body
        self.out = 0  # bytes of its answer
        self.status = 0  # of its answer, once it started
        self.ident: Identity | None = None  # who asked, once known
        self.fault: Rule | None = None  # the fault rule it met
        self.recorded = False


class Refuse(Exception):
    """Raised inside a parser callback: answer ``status`` and close."""

    def __init__(self, status: int) -> None:
        self.status = status


# What Nova (through webob) says with a status, for a fault that answers with it
_NOVA_TEXT = {
    400: "The server could not comply with the request since it is either malformed or otherwise incorrect.",
    403: "Access was denied to this resource.",
    404: "The resource could not be found.",
    429: "Too many requests.",
    500: "The server has either erred or is incapable of performing the requested operation.",
    502: "Bad gateway.",
    503: "The server is currently unavailable. Please try again at a later time.",
    504: "The gateway has timed out.",
}
NOVA_REASONS = {200: b"OK", 204: b"No Content", 301: b"Moved Permanently", 302: b"Found", 304: b"Not Modified", 401: b"Unauthorized",
                403: b"Forbidden", 404: b"Not Found", 405: b"Method Not Allowed", 409: b"Conflict", 503: b"Service Unavailable",
                504: b"Gateway Timeout"}  # fmt: skip


def nova_like_response(status: int, close: bool, head: bool = False) -> bytes:
    """An answer as Nova's metadata API would give it with ``status`` (webob's plain-text page)."""
    reason = NOVA_REASONS.get(status) or REASONS.get(status, b"Error")
    if status < 300:
        body = b"" if status == 204 else b"{}"
        ctype = b"application/json"
    else:
        detail = _NOVA_TEXT.get(status, "")
        body = ("%d %s\n\n%s\n\n   " % (status, reason.decode(), detail) if detail else "%d %s\n\n" % (status, reason.decode())).encode()
        ctype = b"text/plain; charset=UTF-8"
    out = b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n" % (status, reason, ctype, len(body))
    if close:
        out += b"Connection: close\r\n"
    return out + b"\r\n" + (b"" if head else body)


def simple_response(status: int, close: bool, head: bool = False) -> bytes:
    """A local answer: the status, its reason as a text/plain body."""
    reason = REASONS.get(status, b"Error")
    body = reason + b"\n"
    out = b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=UTF-8\r\nContent-Length: %d\r\n" % (status, reason, len(body))
    if close:
        out += b"Connection: close\r\n"
    return out + b"\r\n" + (b"" if head else body)
