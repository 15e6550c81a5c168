"""The HTTP/1.1 shell the fabric's little servers share (the Nova stand-in, the reports collector):
keep-alive, no Nagle, every method to one ``_do``, the request's headers by lowercased name, and a
log line per request only at debug level."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall
    sys_version = ""
    log = logging.getLogger("vrouter.fabric")

    def _do(self) -> None:
        raise NotImplementedError

    def header_lists(self) -> dict[str, list[str]]:
        """Every value received under each (lowercased) header name."""
        headers: dict[str, list[str]] = {}
        for name, value in self.headers.items():
            headers.setdefault(name.lower(), []).append(value)
        return headers

    def __getattr__(self, name: str) -> Callable[[], None]:
        """Every method reaches ``_do`` (what a method may do is the handler's to say)."""
        if name.startswith("do_"):
            return self._do
        raise AttributeError(name)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - BaseHTTPRequestHandler's name
        self.log.debug("%s %s", self.address_string(), format % args)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that reset or dropped its connection (the metadata proxy closes an upstream
        connection with unread data when its VM goes away mid-answer: the kernel sends a RST)
        ends that connection, logged at debug level; anything else is a bug: socketserver's
        traceback on stderr, as before."""
        e = sys.exception()
        if isinstance(e, ConnectionError):
            Handler.log.debug("%s: %s", client_address, e)
            return
        super().handle_error(request, client_address)
