"""The reports collector: where a guest's cloud-init posts its webhook events and phone_home.

The lab maps the link-local service 169.254.169.250:80 to it on the fabric, so a guest's
cloud-config points at it by address, with the instance in the path (cloud-init substitutes
``$INSTANCE_ID`` in phone_home's url)::

    reporting: {lab: {type: webhook, endpoint: "http://169.254.169.250/events/<uuid>"}}
    phone_home: {url: "http://169.254.169.250/phone-home/$INSTANCE_ID/", post: [...], tries: 3}

``POST /events/<uuid>``: one cloud-init event, a JSON object (cloud-init sends no Content-Type).
``POST /phone-home/<uuid>``: phone_home's form (``instance_id``, ``hostname``, ``fqdn``,
``pub_key_*``).  A trailing slash and a query are allowed.  Each accepted report is one line
``{"received": <unix time>, "kind": "event" | "phone_home", "body": {...}}`` appended to
``<reports-dir>/<uuid>.jsonl`` (mode 0644); ``read`` gives them back.  Answers: 200 ``ok``; 400 a
body that does not parse; 404 another path or not a uuid; 405 another method; 413 a body over 64 KiB;
429 once the instance has 10,000 lines or 8 MiB (logged once).  Plain HTTP.

``Collector.handle`` is the whole request semantics without sockets (``interpret`` is its pure
part, without the file); ``make_server`` is the threading HTTP shell around it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl

from fabric.httpd import Handler, Server

log = logging.getLogger("vrouter.reports")

MAX_BODY = 64 * 1024
MAX_LINES = 10_000
MAX_BYTES = 8 * 1024 * 1024
UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
PATH = re.compile(r"/(events|phone-home)/([^/]*)/?")
KINDS = {"events": "event", "phone-home": "phone_home"}
OK = b"ok\n"


@dataclass(frozen=True)
class Report:
    """An accepted report, not yet written."""

    uuid: str  # lowercase
    kind: str  # "event" or "phone_home"
    body: dict


def instance_of(path: str) -> tuple[str, str] | None:
    """(kind, lowercase uuid) of a collector path, or None when it is not one."""
    m = PATH.fullmatch(path.split("?", 1)[0])
    if m is None or not UUID.fullmatch(m.group(2)):
        return None
    return KINDS[m.group(1)], m.group(2).lower()


def _form(body: bytes) -> dict | None:
    try:
        fields = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=True)
    except (UnicodeDecodeError, ValueError):
        return None
    return dict(fields) if fields else None  # a field sent twice: the last


def _event(body: bytes) -> dict | None:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: nested deeper than Python's decoder goes
        return None
    return data if isinstance(data, dict) else None


def refusal(method: str, path: str, length: int) -> tuple[int, bytes] | None:
    """The answer to a request refused before its body is read (path, method, length), or None."""
    if instance_of(path) is None:
        return 404, b"not found: POST /events/<instance uuid> or /phone-home/<instance uuid>\n"
    if method != "POST":
        return 405, b"POST only\n"
    if length > MAX_BODY:
        return 413, b"a report is at most 64 KiB\n"
    return None


def interpret(method: str, path: str, body: bytes) -> Report | tuple[int, bytes]:
    """What a request is: a Report to keep, or the (status, body) to answer it with."""
    refused = refusal(method, path, len(body))
    if refused is not None:
        return refused
    where = instance_of(path)
    assert where is not None
    kind, uuid = where
    data = _event(body) if kind == "event" else _form(body)
    if data is None:
        return 400, (b"an event is a JSON object\n" if kind == "event" else b"phone_home posts a form (application/x-www-form-urlencoded)\n")
    return Report(uuid, kind, data)


def _path(reports_dir: str, uuid: str) -> str:
    if not UUID.fullmatch(uuid):
        raise ValueError("%r is not an instance uuid" % uuid)
    return os.path.join(reports_dir, uuid.lower() + ".jsonl")


def read(reports_dir: str, uuid: str) -> list[dict]:
    """The reports kept for an instance, oldest first; [] when there are none.  A line that does
    not parse (the last, while it is being written) is left out.  ValueError for a bad uuid."""
    try:
        with open(_path(reports_dir, uuid), "rb") as f:
            lines = f.read().split(b"\n")
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            rec = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


class Collector:
    """The reports of every instance under ``reports_dir``, each capped at ``max_lines`` lines
    and ``max_bytes`` bytes (what a file already holds counts)."""

    def __init__(self, reports_dir: str, clock: Callable[[], float] = time.time, max_lines: int = MAX_LINES, max_bytes: int = MAX_BYTES) -> None:
        self.dir = reports_dir
        self.clock = clock
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._sizes: dict[str, tuple[int, int]] = {}  # uuid -> (lines, bytes) of its file
        self._capped: set[str] = set()

    def _size(self, uuid: str) -> tuple[int, int]:
        if uuid not in self._sizes:
            try:
                with open(_path(self.dir, uuid), "rb") as f:
                    data = f.read()
                self._sizes[uuid] = (data.count(b"\n"), len(data))
            except FileNotFoundError:
                self._sizes[uuid] = (0, 0)
        return self._sizes[uuid]

    def handle(self, method: str, path: str, headers: Mapping[str, list[str]], body: bytes) -> tuple[int, bytes]:
        """Answer a request (``headers``: lowercased name -> values; none is needed), keeping
        the report it carries."""
        got = interpret(method, path, body)
        if not isinstance(got, Report):
            return got
        line = (json.dumps({"received": self.clock(), "kind": got.kind, "body": got.body}) + "\n").encode()
        with self._lock:
            lines, size = self._size(got.uuid)
            if lines >= self.max_lines or size + len(line) > self.max_bytes:
                if got.uuid not in self._capped:
                    self._capped.add(got.uuid)
                    log.warning("instance %s: %d reports (%d bytes) kept, the most for an instance; answering 429 to more", got.uuid, lines, size)
                return 429, b"this instance has sent too many reports\n"
            fd = os.open(_path(self.dir, got.uuid), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            try:
                if os.fstat(fd).st_size == 0:
                    os.fchmod(fd, 0o644)  # whatever the umask
                os.write(fd, line)
            finally:
                os.close(fd)
            self._sizes[got.uuid] = (lines + 1, size + len(line))
        if got.kind == "phone_home":
            log.info("instance %s phoned home (hostname %s)", got.uuid, got.body.get("hostname", "?"))
        elif got.body.get("result") == "FAIL":
            log.info("instance %s: cloud-init %s %s: FAIL", got.uuid, got.body.get("event_type", "?"), got.body.get("name", "?"))
        return 200, OK


class _Handler(Handler):
    server_version = "vrouter-lab-reports"
    log = log  # its requests are logged (at debug level) under its own logger
    collector: Collector

    def _answer(self, status: int, body: bytes, close: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        if status == 405:
            self.send_header("Allow", "POST")
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _do(self) -> None:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            self._answer(411, b"a report needs a Content-Length\n", close=True)
            return
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self._answer(400, b"bad Content-Length\n", close=True)
            return
        refused = (400, b"bad Content-Length\n") if n < 0 else refusal(self.command, self.path, n) if n > MAX_BODY else None
        if refused is not None:
            self._answer(*refused, close=True)  # the body is not read: this connection is done
            return
        data = self.rfile.read(n)
        status, body = self.collector.handle(self.command, self.path, self.header_lists(), data)
        self._answer(status, body)


class ReportsServer(Server):
    pass


def make_server(host: str, port: int, collector: Collector) -> ReportsServer:
    """The collector on host:port (port 0: any free port, ``server_address`` says which)."""
    return ReportsServer((host, port), type("Handler", (_Handler,), {"collector": collector}))
