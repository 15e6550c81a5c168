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

Like Sandesh's server, the method is not looked at (HEAD gets no body) and
connections stay open.  Unlike it, a head over 8 KiB, a request that does not
come within 5 s, or more than ``MAX_CLIENTS`` connections at once are closed,
and an error in a page is a 500 that names it (logged), never a dead agent.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING
from urllib.parse import unquote

from vrouter.introspect import agent_pages, flow_pages, render, sandesh, service_pages
from vrouter.introspect.schema import MODULES

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
NOT_FOUND = b"404 Not Found"
Answer = tuple[bytes, str, bytes]  # status, Content-Type, body
# Pages rendered as HTML (lxml's XSLT, which lets the GIL go) on one thread of their own: off the
# agent's loop, one at a time, and the stylesheet always used by the thread that compiled it.
_HTML = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="introspect-html")


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
            return b"200 OK", HTML, await asyncio.get_running_loop().run_in_executor(_HTML, render.to_html, xml)
        return b"200 OK", XML, xml


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
        if self.clients >= MAX_CLIENTS:
            writer.close()
            return
        self.clients += 1
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
                    return
                lines = head.split(b"\r\n")
                line = lines[0].split()
                headers = {}
                for h in lines[1:]:
                    k, _, v = h.partition(b":")
                    headers[k.strip().lower()] = v.strip().decode("latin-1")
                close = headers.get(b"connection", "").lower() == "close" or len(line) != 3 or line[2] != b"HTTP/1.1"
                try:
                    status, ctype, body = await self._answer(line, headers)
                except Exception as e:  # a bug in a page: say so, and keep serving
                    log.exception("introspect: %s failed", lines[0][:200].decode("latin-1"))
                    status, ctype, body = b"500 Internal Server Error", "text/plain; charset=utf-8", ("%s: %s\n" % (type(e).__name__, e)).encode()
                writer.write(b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n" % (
                    status, ctype.encode(), len(body), b"Connection: close\r\n" if close else b""))  # fmt: skip
                if not (line and line[0] == b"HEAD"):
                    writer.write(body)
                await writer.drain()
                self.requests += 1
                if close:
                    return
        except ConnectionError:
            pass
        finally:
            self.clients -= 1
            writer.close()

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
