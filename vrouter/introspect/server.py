"""The agent's HTTP port (8085, ``[DEFAULT] metrics_port``): the introspect pages as the vRouter
agent's Sandesh HTTP server serves them, and ``/metrics`` for Prometheus.

* ``/`` (and ``/index.html``): the index of module pages; ``/agent.xml``,
  ``/services.xml``, ``/kstate.xml``, ``/pkt.xml``, ``/sandesh_trace.xml``: each
  module's requests, as forms in a browser.
* ``/Snh_<Request>?a=...``: a request's answer, Sandesh's XML (``text/xml``,
  the stylesheet named in its first line, no XML declaration).
* ``/universal_parse.xsl`` and ``/css/style.css``: the stylesheet the pages
  name (this project's own) and its CSS.
* Anything else: 404 with Sandesh's body, NUL byte included.

The same pages rendered on the server (our stylesheet applied here, so that a
browser without XSLT shows what one with it would) go to whoever asks for HTML
first in its ``Accept`` header, as a browser's navigation does; scripts
(python-requests, curl, Go) ask for ``*/*`` or nothing and get the XML.  A
``format=html`` or ``format=xml`` argument overrides that and is not passed to
the request (a departure: the vRouter agent would take it for the first field).

Like Sandesh's server, the method is not looked at (HEAD gets no body, a body is
read and dropped) and connections stay open.  Unlike it, it bounds what a client
may take: a head over 8 KiB is answered 431 and a body over 64 KiB 413, then the
connection is closed; so is one that sends no whole request within 5 s or does
not read an answer within 10 s; past ``MAX_CLIENTS`` connections at once a new
one is answered 503.  An error in a page is a 500 that names it (logged), never
a dead agent.  Tables are written, and pages rendered as HTML, on one thread of
their own (``writer``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING
from urllib.parse import unquote

from vrouter.introspect import agent_pages, flow_pages, render, sandesh, service_pages
from vrouter.introspect.schema import MODULES
from vrouter.introspect.writer import written

if TYPE_CHECKING:
    from vrouter.agent.node import Node

log = logging.getLogger("vrouter.agent")

MAX_HEAD = 8192
READ_TIMEOUT = 5.0
MAX_CLIENTS = 64
MAX_QUERY = 4096  # characters of a query that are read (Sandesh's own limit is its header size)
MAX_TARGET = MAX_HEAD  # ... and of a path and query given through the control socket
XML = "text/xml"
HTML = "text/html; charset=utf-8"
WRITE_TIMEOUT = 10.0  # for an answer to leave: a client that does not read is dropped
MAX_BODY = 65536  # a request's body is read and dropped (Sandesh ignores it too); a longer one is refused
NOT_FOUND = b"404 Not Found"
Answer = tuple[bytes, str, bytes]  # status, Content-Type, body


class Introspect:
    """The pages of one running node."""

    def __init__(self, node: Node) -> None:
        self.node = node
        config = node.config_trace
        self.handlers: dict[str, Callable[[dict], Awaitable[bytes]]] = {
            "LinkLocalServiceInfo": self._sync(lambda a: agent_pages.linklocal(node)),
            "PageReq": lambda a: agent_pages.page(node, str(a.get("key", ""))),
            "DhcpInfo": lambda a: service_pages.dhcp_info(node),
            "MetadataInfo": lambda a: service_pages.metadata_info(node),
            "ShowAllInfo": lambda a: service_pages.show_all(node),
            "KFlowReq": self._sync(lambda a: flow_pages.kflow(node, a)),
            "NextKFlowReq": self._sync(lambda a: flow_pages.next_kflow(node, a)),
            "FetchFlowRecord": self._sync(lambda a: flow_pages.fetch_flow_record(node, a)),
            "SandeshTraceRequest": lambda a: service_pages.trace(node, config, a),
            "SandeshTraceBufferListRequest": self._sync(lambda a: service_pages.trace_list(node)),
        }
        for name in agent_pages.TABLES:
            self.handlers[name] = lambda a, name=name: agent_pages.table(node, name, a)  # type: ignore[misc]

    @staticmethod
    def _sync(f: Callable[[dict], bytes]) -> Callable[[dict], Awaitable[bytes]]:
        async def run(args: dict) -> bytes:
            return f(args)

        return run

    async def request(self, name: str, query: str) -> bytes | None:
        """The answer to ``/Snh_<name>?<query>``; None when there is no such request (a 404)."""
        handler = self.handlers.get(name)
        if handler is None:
            return None
        return await handler(sandesh.parse_query(name, query))

    async def get(self, target: str, accept: str | None = None) -> Answer:
        """The answer to ``GET target`` (a path and its query) with that Accept header."""
        path, _, query = target.partition("?")
        path = unquote(path)
        static = render.STATIC.get(path)
        if static is not None:
            return b"200 OK", static[0], static[1]
        query, fmt = split_query(query)
        if path in ("/", "/index.html"):
            return b"200 OK", "text/html", sandesh.index_page()
        xml: bytes | None = None
        if path.startswith("/") and path[1:] in MODULES:
            xml = sandesh.module_page(path[1:])
        elif path.startswith("/Snh_"):
            xml = await self.request(path[5:], query)
        if xml is None:
            return NOT_FOUND, "text/html; charset=UTF-8", sandesh.NOT_FOUND
        if render.wants_html(accept, fmt):
            return b"200 OK", HTML, await written(lambda: render.to_html(xml))
        return b"200 OK", XML, xml


async def _read_request(reader: asyncio.StreamReader) -> tuple[list[bytes], dict[bytes, str]] | bytes:
    """The request line's words and the headers, its body read and dropped; or, for a request this
    server will not take, the status to answer it with before closing.  Lines may end in CRLF or
    a bare LF.  IncompleteReadError when the client goes away."""
    size = 0
    lines: list[bytes] = []
    while True:
        try:
            raw = await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError:
            return b"431 Request Header Fields Too Large"
        size += len(raw)
        if size > MAX_HEAD:
            return b"431 Request Header Fields Too Large"
        text = raw.rstrip(b"\r\n")
        if not text:
            if lines:
                break
            continue  # empty lines before a request are allowed (RFC 9112 2.2)
        lines.append(text)
    headers = {}
    for h in lines[1:]:
        k, _, v = h.partition(b":")
        headers[k.strip().lower()] = v.strip().decode("latin-1")
    if "chunked" in headers.get(b"transfer-encoding", "").lower():
        return b"411 Length Required"
    length = headers.get(b"content-length", "0").strip().lstrip("0") or "0"
    if not (length.isascii() and length.isdigit()):  # (str.isdigit takes "²", which int does not)
        return b"400 Bad Request"
    if len(length) > 9 or int(length) > MAX_BODY:  # (int takes at most 4300 digits)
        return b"413 Content Too Large"
    if int(length):
        await reader.readexactly(int(length))
    return lines[0].split(), headers


def _error(status: bytes) -> Answer:
    return status, "text/plain; charset=utf-8", b"%s\n" % status


def split_query(query: str) -> tuple[str, str | None]:
    """(the query without its ``format=`` arguments, the last one's value or None)."""
    kept, fmt = [], None
    for token in query[:MAX_QUERY].split("&"):
        if token.split("=", 1)[0] == "format":
            fmt = unquote(token.partition("=")[2]).lower()
        else:
            kept.append(token)
    return "&".join(kept), fmt


class IntrospectServer:
    """HTTP/1.1 on vhost0's address, in the agent's event loop."""

    def __init__(self, pages: Introspect | None, metrics: Callable[[], Awaitable[tuple[str, bytes]]]) -> None:
        self.pages = pages
        self.metrics = metrics
        self.clients = 0
        self.requests = 0
        self._server: asyncio.base_events.Server | None = None

    async def start(self, host: str, port: int) -> None:
        """OSError (with the address) if the port cannot be had."""
        self._server = await asyncio.start_server(self._client, host, port, reuse_address=True, limit=MAX_HEAD)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.clients >= MAX_CLIENTS:  # said, not silently closed; the others stay served
            writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 38\r\nRetry-After: 1\r\n"
                         b"Connection: close\r\n\r\ntoo many connections to the introspect\n")  # fmt: skip
            writer.close()
            return
        self.clients += 1
        try:
            while True:
                try:
                    request = await asyncio.wait_for(_read_request(reader), READ_TIMEOUT)
                except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                    return
                if isinstance(request, bytes):  # what was wrong with it, said before closing
                    await self._send(writer, *_error(request), close=True, head_only=False)
                    return
                line, headers = request
                close = headers.get(b"connection", "").lower() == "close" or len(line) != 3 or line[2] != b"HTTP/1.1"
                try:
                    status, ctype, body = await self._answer(line, headers)
                except Exception as e:  # a bug in a page: say so, and keep serving
                    log.exception("introspect: %s failed", b" ".join(line)[:200].decode("latin-1"))
                    status, ctype, body = b"500 Internal Server Error", "text/plain; charset=utf-8", ("%s: %s\n" % (type(e).__name__, e)).encode()
                if not await self._send(writer, status, ctype, body, close, bool(line) and line[0] == b"HEAD"):
                    return
                self.requests += 1
                if close:
                    return
        except ConnectionError:
            pass
        finally:
            self.clients -= 1
            writer.close()

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, status: bytes, ctype: str, body: bytes, close: bool, head_only: bool) -> bool:
        """Whether the answer went out within WRITE_TIMEOUT (a client that does not read is dropped)."""
        writer.write(b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n" % (
            status, ctype.encode(), len(body), b"Connection: close\r\n" if close else b""))  # fmt: skip
        if not head_only:
            writer.write(body)
        try:
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
        except (TimeoutError, ConnectionError):
            writer.transport.abort()
            return False
        return True

    async def _answer(self, line: list[bytes], headers: dict[bytes, str]) -> Answer:
        if len(line) != 3 or not line[2].startswith(b"HTTP/1."):
            return b"400 Bad Request", "text/plain; charset=utf-8", b"not an HTTP/1.x request\n"
        target = line[1].decode("latin-1")
        if target.partition("?")[0] == "/metrics":
            ctype, body = await self.metrics()
            return b"200 OK", ctype, body
        if self.pages is None:
            return NOT_FOUND, "text/html; charset=UTF-8", sandesh.NOT_FOUND
        return await self.pages.get(target, headers.get(b"accept"))
