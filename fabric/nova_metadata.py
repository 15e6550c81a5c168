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
                    "dhcp": true, "mtu": 1500}]}

``handle`` is pure (method, path, headers in, status, headers, body out); the
HTTP shell around it is a threading HTTP/1.1 server with keep-alive.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger("vrouter.nova")

EC2_VERSIONS = [
    "1.0", "2007-01-19", "2007-03-01", "2007-08-29", "2007-10-10", "2007-12-15",
    "2008-02-01", "2008-09-01", "2009-04-04",
]  # fmt: skip
OPENSTACK_VERSIONS = [
    "2012-08-10", "2013-04-04", "2013-10-17", "2015-10-15", "2016-06-30",
    "2016-10-06", "2017-02-22", "2018-08-27", "2020-10-14",
]  # fmt: skip
EC2_META_KEYS = [
    "ami-id", "ami-launch-index", "ami-manifest-path", "block-device-mapping/", "hostname",
    "instance-action", "instance-id", "instance-type", "local-hostname", "local-ipv4", "placement/",
    "public-hostname", "public-ipv4", "public-keys/", "reservation-id", "security-groups",
]  # fmt: skip

TEXT = "text/plain; charset=UTF-8"
JSON = "application/json"


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
        for key, kind in (("meta", dict), ("public_keys", dict), ("name", str), ("hostname", str), ("project_id", str)):
            if key in inst and not isinstance(inst[key], kind):
                raise InstancesError("%s: %s must be %s" % (where, key, "an object" if kind is dict else "a string"))
        for key in ("meta", "public_keys"):
            bad = [k for k, v in inst.get(key, {}).items() if not isinstance(v, str)]
            if bad:
                raise InstancesError("%s: %s.%s must be a string" % (where, key, bad[0]))
        data = inst.get("user_data")
        if data is not None and not isinstance(data, str):
            try:
                base64.b64decode(data["base64"], validate=True)
            except (TypeError, KeyError, ValueError):
                raise InstancesError('%s: user_data must be a string or {"base64": "..."}' % where) from None
        out[inst["uuid"]] = inst
    return out


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

    def follow(self, endpoints: list[str], prefix: str) -> object:
        """Also serve the instances under ``prefix``instances/ in etcd (one record each, as in the
        file, by uuid), which labs that joined the cloud write there; followed live.  Returns the
        follower (``stop`` it at exit)."""
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

        follower = Follower(ConfigStore(endpoints, prefix.rstrip("/") + "/instances/"), synced, events, state)
        follower.start()
        return follower

    def watch(self, stop: threading.Event, interval: float = 0.5) -> None:
        """Look for changes until ``stop`` is set (run it in a thread)."""
        while not stop.wait(interval):
            self.refresh()


def meta_data(inst: dict) -> dict:
    keys = inst.get("public_keys") or {}
    return {
        "uuid": inst["uuid"],
        "meta": inst.get("meta", {}),
        "public_keys": keys,
        "keys": [{"name": k, "type": "ssh", "data": v} for k, v in keys.items()],
        "hostname": inst.get("hostname", inst.get("name", "")),
        "name": inst.get("name", ""),
        "launch_index": inst.get("launch_index", 0),
        "availability_zone": inst.get("availability_zone", "nova"),
        "random_seed": base64.b64encode(hashlib.sha512(inst["uuid"].encode()).digest()).decode(),
        "project_id": inst.get("project_id", ""),
        "devices": inst.get("devices", []),
        "dedicated_cpus": [],
        **({"admin_pass": inst["admin_pass"]} if inst.get("admin_pass") else {}),
    }


def network_data(inst: dict) -> dict:
    """The port as Nova's ``nova/virt/netutils.py`` describes it: the link (``tap`` + the first 11
    of the port uuid, Nova's "phy" for a vRouter VIF, its MAC and MTU); the network, ``ipv4_dhcp``
    when the subnet has DHCP (as Nova 2024.1 and later say for a Neutron subnet with DHCP on),
    else ``ipv4`` with the fixed address, netmask, default route and DNS; the DNS service."""
    if not inst.get("ip"):
        return {"links": [], "networks": [], "services": []}
    link = "tap" + str(inst.get("port_uuid", ""))[:11]
    dns = inst.get("dns_server")
    services = [{"type": "dns", "address": dns}] if dns else []
    net: dict = {"id": "network0", "link": link, "network_id": inst.get("vn_uuid", "")}
    if inst.get("dhcp"):
        net["type"] = "ipv4_dhcp"
    else:
        net.update(type="ipv4", ip_address=inst["ip"], netmask=inst.get("netmask", "255.255.255.0"), routes=[], services=services)
        if inst.get("gateway"):
            net["routes"] = [{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": inst["gateway"]}]
    return {
        "links": [
            {
                "id": link,
                "vif_id": inst.get("port_uuid", ""),
                "type": "phy",
                "mtu": inst.get("mtu", 1500),
                "ethernet_mac_address": inst.get("mac", ""),
            }
        ],
        "networks": [net],
        "services": services,
    }


def ec2_meta(inst: dict) -> dict[str, object]:
    """The EC2 tree: leaf path -> value (str), directory -> dict."""
    keys = inst.get("public_keys") or {}
    hostname = inst.get("hostname", inst.get("name", ""))
    return {
        "ami-id": inst.get("ami_id", "ami-00000001"),
        "ami-launch-index": str(inst.get("launch_index", 0)),
        "ami-manifest-path": "FIXME",
        "block-device-mapping": {"ami": "vda", "root": "/dev/vda"},
        "hostname": hostname,
        "instance-action": "none",
        "instance-id": inst.get("ec2_id", "i-%08x" % (int(hashlib.md5(inst["uuid"].encode()).hexdigest()[:7], 16))),
        "instance-type": inst.get("instance_type", "m1.small"),
        "local-hostname": hostname,
        "local-ipv4": inst.get("ip", ""),
        "placement": {"availability-zone": inst.get("availability_zone", "nova")},
        "public-hostname": hostname,
        "public-ipv4": inst.get("floating_ip", ""),
        "public-keys": {"%d=%s" % (i, name): {"openssh-key": key} for i, (name, key) in enumerate(keys.items())},
        "reservation-id": inst.get("reservation_id", "r-00000001"),
        "security-groups": "\n".join(inst.get("security_groups", ["default"])),
    }


def _ec2_lookup(tree: dict, parts: list[str]) -> Answer:
    node: object = tree
    for part in parts:
        if not isinstance(node, dict):
            return NOT_FOUND
        if part in node:
            node = node[part]
            continue
        # public-keys/0/openssh-key: index before "=" names the key
        match = [k for k in node if k.split("=", 1)[0] == part]
        if not match:
            return NOT_FOUND
        node = node[match[0]]
    if isinstance(node, dict):
        if "=" in next(iter(node), ""):
            return Answer(200, "\n".join(node).encode())
        return Answer(200, "\n".join(k + "/" if isinstance(v, dict) else k for k, v in node.items()).encode())
    return Answer(200, str(node).encode())


class NovaMetadata:
    """The request semantics, without I/O."""

    def __init__(self, store: InstanceStore, secret: str) -> None:
        self.store = store
        self.secret = secret

    def handle(self, method: str, path: str, headers: Mapping[str, list[str]], body: bytes = b"") -> Answer:
        """``headers``: lowercased name -> every value received under that name."""
        path = "/" + path.split("?", 1)[0].strip("/")
        if method not in ("GET", "HEAD", "POST"):
            return _webob_error(405, "Method Not Allowed", "The method %s is not allowed for this resource." % method)
        if path == "/":
            return Answer(200, "\n".join(EC2_VERSIONS + ["latest"]).encode())
        inst, error = self._identify(headers)
        if error is not None:
            return error
        assert inst is not None
        parts = [p for p in path.split("/") if p]
        if parts[0] == "openstack":
            return self._openstack(method, inst, parts[1:], body)
        if method == "POST":
            return _webob_error(405, "Method Not Allowed", "The method POST is not allowed for this resource.")
        return self._ec2(inst, parts)

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

    def _openstack(self, method: str, inst: dict, parts: list[str], body: bytes) -> Answer:
        if not parts:
            return Answer(200, "\n".join(OPENSTACK_VERSIONS + ["latest"]).encode())
        version = parts[0]
        if version not in OPENSTACK_VERSIONS and version != "latest":
            return NOT_FOUND
        files = ["meta_data.json", "password", "vendor_data.json", "network_data.json", "vendor_data2.json"]
        if inst.get("user_data") is not None:
            files.insert(1, "user_data")
        if len(parts) == 1:
            if method == "POST":
                return _webob_error(405, "Method Not Allowed", "The method POST is not allowed for this resource.")
            return Answer(200, "\n".join(files).encode())
        if len(parts) != 2 or parts[1] not in files:
            return NOT_FOUND
        name = parts[1]
        if name == "password":
            return self._password(method, inst, body)
        if method == "POST":
            return _webob_error(405, "Method Not Allowed", "The method POST is not allowed for this resource.")
        if name == "meta_data.json":
            return Answer(200, json.dumps(meta_data(inst)).encode(), JSON)
        if name == "user_data":
            data = inst["user_data"]
            return Answer(200, data.encode() if isinstance(data, str) else base64.b64decode(data["base64"]),
                          "application/octet-stream")  # fmt: skip
        if name == "network_data.json":
            return Answer(200, json.dumps(network_data(inst)).encode(), JSON)
        return Answer(200, json.dumps(inst.get(name.replace(".json", ""), {})).encode(), JSON)

    def _password(self, method: str, inst: dict, body: bytes) -> Answer:
        uuid = inst["uuid"]
        if method != "POST":
            return Answer(200, self.store.passwords.get(uuid, "").encode())
        if len(body) > 256:
            return _webob_error(400, "Bad Request", "Request is too large.")
        if self.store.passwords.get(uuid):
            return _webob_error(409, "Conflict", "Password already set.")
        self.store.passwords[uuid] = body.decode("utf-8", "replace")
        return Answer(200, b"")

    def _ec2(self, inst: dict, parts: list[str]) -> Answer:
        version = parts[0]
        if version not in EC2_VERSIONS and version != "latest":
            return NOT_FOUND
        if len(parts) == 1:
            return Answer(200, b"meta-data/\nuser-data" if inst.get("user_data") is not None else b"meta-data/")
        if parts[1] == "user-data" and len(parts) == 2:
            if inst.get("user_data") is None:
                return NOT_FOUND
            data = inst["user_data"]
            return Answer(200, data.encode() if isinstance(data, str) else base64.b64decode(data["base64"]))
        if parts[1] != "meta-data":
            return NOT_FOUND
        return _ec2_lookup(ec2_meta(inst), parts[2:])


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall
    server_version = "nova-metadata-emulator"
    sys_version = ""
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
        headers: dict[str, list[str]] = {}
        for name, value in self.headers.items():
            headers.setdefault(name.lower(), []).append(value)
        ans = self.api.handle(self.command, self.path, headers, body)
        self.send_response(ans.status)
        self.send_header("Content-Type", ans.content_type)
        self.send_header("Content-Length", str(len(ans.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(ans.body)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _do

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - BaseHTTPRequestHandler's name
        log.debug("%s %s", self.address_string(), format % args)


class NovaServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024


def make_server(host: str, port: int, api: NovaMetadata, ssl_context: object | None = None) -> NovaServer:
    handler = type("Handler", (_Handler,), {"api": api})
    server = NovaServer((host, port), handler)
    if ssl_context is not None:
        server.socket = ssl_context.wrap_socket(server.socket, server_side=True)  # type: ignore[attr-defined]
    return server
