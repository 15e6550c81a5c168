"""A Nova-compatible metadata API (``vrouter nova-metadata``) for demos and tests.

It behaves like nova-api-metadata with ``[neutron] service_metadata_proxy =
True``: ``GET /`` lists versions before any check; every other path needs
X-Instance-ID, X-Instance-ID-Signature and X-Tenant-ID (400 with Nova's texts
when one is missing), a signature that matches (403, constant-time compare),
a known instance (404) whose project is X-Tenant-ID (404).  Instances come
from a JSON file, re-read when it changes (``vrouter instance set`` edits it;
a file that does not parse is refused and the instances read before stay)::

    {"instances": [{"uuid": "...", "name": "vm1", "project_id": "<32 hex>",
                    "public_keys": {"default": "ssh-ed25519 ..."}, "user_data": "#cloud-config...",
                    "admin_pass": "...", "vendor_data": {...}, "vendor_data2": {...}, "meta": {...},
                    "ip": "10.1.1.3", "mac": "02:...", "port_uuid": "...", "vn_uuid": "...",
                    "gateway": "10.1.1.1", "netmask": "255.255.255.0", "dns_server": "10.1.1.2",
                    "dhcp": true, "mtu": 1500, "files": [{"path": "/etc/x", "contents": "..."}]}]}

What each path holds is ``fabric.nova_tree``'s (the config drive renders from it too);
``handle`` is pure (method, path, headers in, status, headers, body out) and answers as Nova's
``MetadataRequestHandler`` does: any method (Nova checks none but the password path's),
trailing slashes and ``..`` normalised away, 404 for what Nova has not (``PUT /latest/api/token``
among them), Nova's content types (webob's: ``text/plain; charset=UTF-8``, ``application/json``,
``text/html; charset=UTF-8`` for the password path).  The HTTP shell around it is a threading
HTTP/1.1 server with keep-alive.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import posixpath
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import unquote

from fabric.httpd import Handler, Server
from fabric.nova_tree import (
    APPLICATION_JSON,
    EC2_VERSIONS,
    IPV6_MODES,
    TEXT_PLAIN,
    Broken,
    InstanceMetadata,
    InvalidPath,
    Password,
    ec2_md_print,
)
from fabric.nova_tree import meta_data as meta_data  # benchmarks/run.py's

if TYPE_CHECKING:
    from infra.etcd_tls import EtcdTls

log = logging.getLogger("vrouter.nova")

TEXT = "text/plain; charset=UTF-8"  # webob adds the charset to text/*
JSON = APPLICATION_JSON
HTML = "text/html; charset=UTF-8"  # webob's default, which the password path's answers keep
PASSWORD_MAX = 4 * 255  # Nova keeps a password as 4 chunks of 255 in system metadata


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    content_type: str = TEXT


def _webob_error(status: int, title: str, detail: str = "") -> Answer:
    """Nova answers errors through webob; its plain-text page is status, blank line, detail."""
    text = "%d %s\n\n%s\n\n   " % (status, title, detail) if detail else "%d %s\n\n" % (status, title)
    return Answer(status, text.encode())


NOT_FOUND = _webob_error(404, "Not Found", "The resource could not be found.")
INTERNAL_ERROR = _webob_error(500, "Internal Server Error", "The server has either erred or is incapable of performing the requested operation.")


def signature_matches(instance_id: str, secret: str, signature: str) -> bool:
    """Nova's check of X-Instance-ID-Signature: hex(HMAC-SHA256(secret, instance id)), compared in
    constant time.  Nova checks it on its own; so does this stand-in (it is not the vRouter's code)."""
    expected = hmac.new(secret.encode(), instance_id.encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), signature.encode())


class InstancesError(ValueError):
    """An instances file that cannot be used; the message names the instance and key."""


def parse_instances(text: str) -> dict[str, dict]:
    """The instances of an instances file's text, by uuid; InstancesError naming what is wrong."""
    try:
        data = json.loads(text)
    except ValueError as e:
        raise InstancesError("not JSON: %s" % e) from None
    except RecursionError:
        raise InstancesError("not JSON that can be read: nested too deeply") from None
    items = data.get("instances") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise InstancesError('expected {"instances": [...]} or a list of instances')
    out: dict[str, dict] = {}
    for n, inst in enumerate(items):
        where = "instance %d" % n
        if not isinstance(inst, dict) or not isinstance(inst.get("uuid"), str) or not inst["uuid"]:
            raise InstancesError("%s: an object with a uuid (a string)" % where)
        where = "instance %s" % inst["uuid"]
        if inst["uuid"] in out:
            raise InstancesError("%s: twice" % where)
        for key, kind in (("meta", dict), ("public_keys", dict), ("vendor_data2", dict), ("name", str), ("hostname", str), ("project_id", str)):
            if key in inst and not isinstance(inst[key], kind):
                raise InstancesError("%s: %s must be %s" % (where, key, "an object" if kind is dict else "a string"))
        for key in ("meta", "public_keys"):
            bad = [k for k, v in inst.get(key, {}).items() if not isinstance(v, str)]
            if bad:
                raise InstancesError("%s: %s.%s must be a string" % (where, key, bad[0]))
        if not _text_or_base64(inst.get("user_data")):
            raise InstancesError('%s: user_data must be a string or {"base64": "..."}' % where)
        _check_files(where, inst.get("files"))
        _check_ipv6(where, inst)
        out[inst["uuid"]] = inst
    return out


def _check_ipv6(where: str, inst: dict) -> None:
    """The port's IPv6 fields, which network_data.json renders: addresses, a prefix, a mode."""
    for key, parse in (("ip6", ipaddress.IPv6Address), ("ipv6_gateway", ipaddress.IPv6Address), ("ipv6_dns_server", ipaddress.IPv6Address),
                       ("ipv6_prefix", lambda v: ipaddress.IPv6Network(v, strict=False))):  # fmt: skip
        if inst.get(key):
            try:
                parse(str(inst[key]))
            except ValueError:
                raise InstancesError(
                    "%s: %s %r is not an IPv6 %s" % (where, key, inst[key], "prefix" if key == "ipv6_prefix" else "address")
                ) from None
    if inst.get("ipv6_mode") and inst["ipv6_mode"] not in IPV6_MODES:
        raise InstancesError("%s: ipv6_mode %r: one of %s" % (where, inst["ipv6_mode"], ", ".join(IPV6_MODES)))


def _text_or_base64(data: object) -> bool:
    """None, a string, or {"base64": "<valid base64>"}."""
    if data is None or isinstance(data, str):
        return True
    try:
        base64.b64decode(data["base64"], validate=True)  # type: ignore[index]
    except (TypeError, KeyError, ValueError, binascii.Error):
        return False
    return True


def _check_files(where: str, files: object) -> None:
    """``files``, the injected files (Nova's personality; the config drive has them): a list of
    {"path": "/etc/x", "contents": "text" or {"base64": "..."}}, each path once."""
    if files is None:
        return
    if not isinstance(files, list):
        raise InstancesError('%s: files must be a list of {"path": ..., "contents": ...}' % where)
    seen = set()
    for n, f in enumerate(files):
        if not isinstance(f, dict) or not isinstance(f.get("path"), str) or not f["path"]:
            raise InstancesError('%s: files[%d] must be an object with a "path" (a string)' % (where, n))
        unknown = sorted(set(f) - {"path", "contents"})
        if unknown:
            raise InstancesError("%s: files[%d]: unknown keys %s (known: contents, path)" % (where, n, ", ".join(unknown)))
        if "contents" not in f or f["contents"] is None or not _text_or_base64(f["contents"]):
            raise InstancesError('%s: files[%d] (%s): contents must be a string or {"base64": "..."}' % (where, n, f["path"]))
        if f["path"] in seen:
            raise InstancesError("%s: files: %s twice" % (where, f["path"]))
        seen.add(f["path"])


class InstanceStore:
    """Instances by uuid from a JSON file, re-read when it changes (its inode, size or mtime: an
    atomic replace is a new inode).  A file that cannot be used is refused, logged once, and the
    instances it would have replaced stay.  Every request looks (one stat), so the next request
    after a change sees it; ``watch`` also looks twice a second, to log reloads as they happen."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._seen: tuple[int, int, int] | None = None
        self._lock = threading.Lock()
        self.instances: dict[str, dict] = {}
        self.passwords: dict[str, str] = {}
        self.loads = 0
        self.error = ""  # why the file as it is now was refused, if it was
        self.shared: dict[str, dict] = {}  # instances of other labs of the cloud, from etcd (``follow``)
        self.refresh()

    def refresh(self) -> None:
        try:
            st = os.stat(self.path)
        except OSError as e:
            self._refuse(None, "cannot read it: %s" % e.strerror)
            return
        seen = (st.st_ino, st.st_size, st.st_mtime_ns)
        if seen == self._seen:
            return
        with self._lock:
            if seen == self._seen:
                return
            try:
                with open(self.path, encoding="utf-8") as f:
                    instances = parse_instances(f.read())
            except (OSError, UnicodeDecodeError, InstancesError) as e:
                self._refuse(seen, str(getattr(e, "strerror", None) or e))
                return
            self._seen = seen
            first = self.loads == 0
            self.instances, self.error = instances, ""
            self.loads += 1
            if not first:
                log.info("reloaded %s: %d instances", self.path, len(instances))

    def _refuse(self, seen: tuple[int, int, int] | None, why: str) -> None:
        if seen is not None and seen == self._seen:
            return
        self._seen = seen
        if why != self.error:
            self.error = why
            log.error("refused %s: %s (keeping the %d instances read before)", self.path, why, len(self.instances))

    def get(self, uuid: str) -> dict | None:
        self.refresh()
        return self.instances.get(uuid) or self.shared.get(uuid)

    def follow(self, endpoints: list[str], prefix: str, tls: EtcdTls | None = None) -> object:
        """Also serve the instances under ``prefix``instances/ in etcd (one record each, as in the
        file, by uuid), which labs that joined the cloud write there; followed live (``tls``: for
        https endpoints).  Returns the follower (``stop`` it at exit)."""
        from infra.etcd import ConfigStore, Follower
        from infra.etcd_wire import Event

        def usable(key: str, value: object) -> dict | None:
            try:
                return parse_instances(json.dumps({"instances": [value]}))[key]
            except (InstancesError, KeyError, TypeError, ValueError):
                log.error("etcd: instances/%s is not a usable instance record; ignored", key)
                return None

        def synced(snapshot: dict, _revision: int) -> None:
            self.shared = {k: v for k, v in ((k, usable(k, v)) for k, v in snapshot.items()) if v is not None}
            log.info("etcd: %d instances of the cloud's other labs", len(self.shared))

        def events(batch: list[Event]) -> None:
            shared = dict(self.shared)
            for e in batch:
                rec = usable(e.key, e.value) if e.kind == "put" else None
                if rec is None:
                    shared.pop(e.key, None)
                else:
                    shared[e.key] = rec
            self.shared = shared

        def state(up: bool) -> None:
            log.log(logging.INFO if up else logging.WARNING, "etcd at %s %s", ", ".join(endpoints), "answers" if up else "does not answer")

        follower = Follower(ConfigStore(endpoints, prefix.rstrip("/") + "/instances/", tls=tls), synced, events, state)
        follower.start()
        return follower

    def watch(self, stop: threading.Event, interval: float = 0.5) -> None:
        """Look for changes until ``stop`` is set (run it in a thread)."""
        while not stop.wait(interval):
            self.refresh()


class NovaMetadata:
    """The request semantics, without I/O: Nova's ``MetadataRequestHandler.__call__`` behind a
    proxy.  Nova looks at no method but the password path's: PUT, DELETE and the rest are looked
    up like GET (so ``PUT /latest/api/token``, IMDSv2's token request, is a 404: EC2 has no
    ``api``); HEAD is GET without the body (the server drops it)."""

    def __init__(self, store: InstanceStore, secret: str) -> None:
        self.store = store
        self.secret = secret

    def handle(self, method: str, path: str, headers: Mapping[str, list[str]], body: bytes = b"") -> Answer:
        """``headers``: lowercased name -> every value received under that name."""
        path = unquote(path.split("?", 1)[0], errors="replace")
        if posixpath.normpath(path) == "/":
            return Answer(200, ec2_md_print(EC2_VERSIONS + ["latest"]))
        inst, error = self._identify(headers)
        if error is not None:
            return error
        assert inst is not None
        forwarded = headers.get("x-forwarded-for")
        try:
            found = InstanceMetadata(inst, address=forwarded[0] if forwarded else None).lookup(path)
        except InvalidPath:
            return NOT_FOUND
        except Broken as e:
            log.warning("instance %s: %s %s fails in Nova too (%s): 500", inst["uuid"], method, path, e)
            return INTERNAL_ERROR
        if isinstance(found.data, Password):
            return self._password(method, inst, body)
        return Answer(200, ec2_md_print(found.data), TEXT if found.mimetype == TEXT_PLAIN else found.mimetype)

    def _identify(self, headers: Mapping[str, list[str]]) -> tuple[dict | None, Answer | None]:
        instance_id = headers.get("x-instance-id")
        signature = headers.get("x-instance-id-signature")
        tenant_id = headers.get("x-tenant-id")
        if instance_id is None:
            return None, _webob_error(400, "Bad Request", "X-Instance-ID header is missing from request.")
        if signature is None:
            return None, _webob_error(400, "Bad Request", "X-Instance-ID-Signature header is missing from request.")
        if tenant_id is None:
            return None, _webob_error(400, "Bad Request", "X-Tenant-ID header is missing from request.")
        if len(instance_id) > 1:
            return None, _webob_error(400, "Bad Request", "Multiple X-Instance-ID headers found within request.")
        if len(tenant_id) > 1:
            return None, _webob_error(400, "Bad Request", "Multiple X-Tenant-ID headers found within request.")
        if not signature_matches(instance_id[0], self.secret, signature[0]):
            log.warning("X-Instance-ID-Signature %s does not match instance %s", signature[0][:16], instance_id[0])
            return None, _webob_error(403, "Forbidden", "Invalid proxy request signature.")
        inst = self.store.get(instance_id[0])
        if inst is None:
            return None, NOT_FOUND
        if str(inst.get("project_id", "")) != tenant_id[0]:
            log.warning("Tenant_id %s does not match tenant_id of instance %s.", tenant_id[0], instance_id[0])
            return None, NOT_FOUND
        return inst, None

    def _password(self, method: str, inst: dict, body: bytes) -> Answer:
        """Nova's ``password.handle_password``: GET reads it, POST sets it once (409 after; 400 over
        4 chunks of 255), any other method (HEAD too) is a 400; its answers are webob's defaults."""
        uuid = inst["uuid"]
        if method == "GET":
            return Answer(200, self.store.passwords.get(uuid, "").encode(), HTML)
        if method != "POST":
            return _webob_error(400, "Bad Request", "GET and POST only are supported.")
        if self.store.passwords.get(uuid):
            return _webob_error(409, "Conflict", "There was a conflict when trying to complete your request.")
        if len(body) > PASSWORD_MAX:
            return _webob_error(400, "Bad Request", "Request is too large.")
        try:
            self.store.passwords[uuid] = body.decode("utf-8")
        except UnicodeDecodeError:
            return INTERNAL_ERROR  # Nova's convert_password decodes it without a net
        return Answer(200, b"", HTML)


class _Handler(Handler):
    server_version = "nova-metadata-emulator"
    log = log  # its requests are logged (at debug level) under its own logger
    api: NovaMetadata

    def _do(self) -> None:
        length = self.headers.get("Content-Length")
        body = b""
        if length:
            try:
                n = int(length)
            except ValueError:
                self.send_error(400, "Bad Content-Length")
                return
            if n > 1 << 20:
                self.send_error(413)
                return
            body = self.rfile.read(n)
        ans = self.api.handle(self.command, self.path, self.header_lists(), body)
        self.send_response(ans.status)
        self.send_header("Content-Type", ans.content_type)
        self.send_header("Content-Length", str(len(ans.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(ans.body)


class NovaServer(Server):  # every method reaches ``handle``: Nova's handler looks at none but the password's
    request_queue_size = 1024


def make_server(host: str, port: int, api: NovaMetadata, ssl_context: object | None = None) -> NovaServer:
    handler = type("Handler", (_Handler,), {"api": api})
    server = NovaServer((host, port), handler)
    if ssl_context is not None:
        server.socket = ssl_context.wrap_socket(server.socket, server_side=True)  # type: ignore[attr-defined]
    return server
