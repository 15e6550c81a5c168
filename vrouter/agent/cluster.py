"""The agent's part in the cloud: the configuration every node shares, kept in etcd.

The real vRouter agent gets the cloud's configuration (global-vrouter-config, virtual networks)
and the routes to other nodes' VMs from the control node over XMPP; here every agent watches the
same etcd.  Keys, under ``[ETCD] key_prefix`` (default ``/vrouter/``), values JSON:

    global-vrouter-config/linklocal/<name>   a link-local service, as ``linklocal list --json``
    virtual-networks/<vn uuid>              a network: subnet, gateway, service address, its VRF's
                                            name (each node numbers the VRF itself), ...
    nodes/<node>                            a compute node: its vhost0 address
    ports/<port uuid>                       a VM port and the node that hosts it
    routes/<vn uuid>/<address>              the port's route: address, network, node, its
                                            vhost0 address, the MPLS label its node gave it

Rules kept here:

* etcd is the truth for what is cloud-wide (link-local services, networks) and for other
  nodes' routes; this node is the truth for its own ports (Nova plugs them here, as nova-compute
  tells the real agent), which it publishes with their routes.
* A change made on this node (``vrouter linklocal add``, ``network add``, ``port add``) is
  applied here at once and written to etcd; while etcd cannot be reached it is kept and written
  when etcd is back (``pending``), so that nothing typed is lost while the agent runs (what
  still waits when it stops is logged by key; its ports are published again at the next start's
  resync, a global change is not).  Changes from etcd are applied
  as they come (``follow``), in one batch per watch event batch.
* Each time the follower (re)connects it loads everything (a resync): the view here is replaced
  by etcd's, with what is pending laid over it; then this node's own keys are made right: its
  node record, each of its ports and routes put, and keys that name this node for ports it no
  longer has deleted.  A port that moved to another node is that node's: only keys that still
  hold this node's record are ever deleted here (compare and delete in one etcd transaction),
  and a port of this node's files that etcd says another node plugged since (it moved while
  this agent was down) is unplugged here, not published again.
* The files the agent keeps (linklocal.json, networks/) are the local cache of what etcd said;
  the view of the other nodes (ports, routes) is cached in ``cluster.json``, so that an agent
  restarted while etcd is down still forwards to the VMs it knew.
* Every etcd call is made from one writer thread or the follower's thread, never the loop's:
  the packets never wait for etcd.

What etcd says becomes changes of the node's state (``NodeState``, origin
``CLUSTER``), applied one after the other in the order etcd said them; what
this node changes reaches etcd because ``Cluster`` is a subscriber of that
state too (``changed``: the changes of origin ``LOCAL`` are published).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from dataplane.core.overlay import label_of
from infra.etcd import ConfigStore, Follower
from infra.etcd_tls import EtcdTls
from infra.etcd_wire import Event, StoreError, StoreRefused
from infra.jsonfile import read_json, write_json_atomic
from vrouter.agent.state import Change, NetworkChanged, NodeState, Origin, PortChanged, ServicesChanged
from vrouter.messages.control import ClusterStatus
from vrouter.model import Network, NetworkError, Port, RemoteRoute, ServiceError, service_schema, validate_service, validate_services
from vrouter.services.dns import Instance

log = logging.getLogger("vrouter.cluster")

LINKLOCAL = "global-vrouter-config/linklocal/"
NETWORKS = "virtual-networks/"
NODES = "nodes/"
PORTS = "ports/"
ROUTES = "routes/"
CACHE_DELAY = 1.0  # seconds from a change of the other nodes' view to its cache file


class DeleteIf:
    """A pending delete of a key that still holds ``value`` (this node's record of it)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:  # noqa: ANN401 - a JSON value
        self.value = value


def route_key(vn_uuid: str, ip: str) -> str:
    return "%s%s/%s" % (ROUTES, vn_uuid, ip)


class Cluster:
    """One agent's link to the cloud's etcd."""

    def __init__(self, state: NodeState, node: str, vhost_ip: str, servers: tuple[str, ...], key_prefix: str, cache_path: str,
                 remote_routes: Callable[[], int], tls: EtcdTls | None = None) -> None:  # fmt: skip
        self.node_state = state
        self.remote_routes = remote_routes  # the routes to other nodes' VMs the dataplane has
        self.node = node
        self.vhost_ip = vhost_ip
        self.servers = list(servers)
        self.store = ConfigStore(list(servers), key_prefix, tls=tls)
        self.view: dict[str, Any] = {}  # etcd's keys (relative) and values, as last heard
        self.pending: dict[str, Any] = {}  # key -> value, or None: a delete; written when etcd answers
        self.revision = 0
        self.resyncs = 0
        self.last_change = 0.0
        self._connected = False
        self._lock = threading.Lock()  # pending: the loop adds, the writer takes
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="etcd-writer")
        self._follower: Follower | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._cache_due: asyncio.TimerHandle | None = None
        self._stopping = False
        self.cache_path = cache_path
        self._applying: asyncio.Queue[Callable[[], Awaitable[None]]] = asyncio.Queue()  # what etcd said, applied in order
        self._applier: asyncio.Task[None] | None = None

    # -- start and stop ---------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Follow etcd from now on; until it answers, the cached view of the other nodes."""
        self._loop = loop
        self._applier = loop.create_task(self._apply_in_order())
        try:
            cached = read_json(self.cache_path)
            if isinstance(cached, dict) and isinstance(cached.get("view"), dict):
                self.view = {k: v for k, v in cached["view"].items() if k.startswith((PORTS, ROUTES, NODES))}
                self._apply(self._apply_remote)
                log.info("cluster: %d routes from the cache until etcd answers", sum(k.startswith(ROUTES) for k in self.view))
        except (OSError, ValueError):
            pass

        def soon(fn: Callable[..., None]) -> Callable[..., None]:
            def call(*args: Any) -> None:  # noqa: ANN401 - the follower's arguments
                loop.call_soon_threadsafe(fn, *args)

            return call

        self._follower = Follower(self.store, soon(self._synced), soon(self._events), soon(self._state))
        self._follower.start()
        log.info("cluster: node %s following etcd at %s (keys under %s)", self.node, ", ".join(self.servers), self.store.prefix)

    async def stop(self) -> None:
        """Stop following and writing (what still waits for etcd is not written: it is published
        again at the next start's resync, or lost if it was a change of the global config made
        while etcd was away); the cache is written first."""
        self._stopping = True  # the writer writes nothing more; what the follower still hands on is ignored
        if self._cache_due is not None:
            self._cache_due.cancel()
            self._write_cache()
        loop = asyncio.get_running_loop()
        if self._follower is not None:
            await loop.run_in_executor(None, self._follower.stop)
        if self._applier is not None:
            self._applier.cancel()
        await loop.run_in_executor(None, lambda: self._writer.shutdown(wait=True, cancel_futures=True))
        if self.pending:
            log.warning("cluster: stopping with %d changes etcd has not had: %s", len(self.pending), ", ".join(sorted(self.pending)))

    @property
    def connected(self) -> bool:
        return self._connected

    def state(self) -> ClusterStatus:
        nodes = {v.get("node") for k, v in self.view.items() if k.startswith(ROUTES) and isinstance(v, dict)} - {self.node}
        error = self._follower.last_error if self._follower is not None and not self._connected else ""
        return ClusterStatus(self.node, self.servers, self._connected, self.revision, self.resyncs, self.remote_routes(), len(nodes),
                             len(self.pending), round(self.last_change * 1000, 1), error)  # fmt: skip

    # -- from the follower (in the loop) -----------------------------------------------------------

    def _state(self, up: bool) -> None:
        if up != self._connected:
            self._connected = up
            if up:
                log.info("cluster: etcd at %s answers", ", ".join(self.servers))
            else:
                log.warning("cluster: etcd at %s does not answer; traffic goes on, changes wait for it", ", ".join(self.servers))

    def _synced(self, snapshot: dict[str, Any], revision: int) -> None:
        if self._stopping:
            return
        self._connected = True
        self.resyncs += 1
        view = dict(snapshot)
        with self._lock:
            pending = dict(self.pending)
        for key, value in pending.items():  # what this node changed meanwhile stands
            if value is None:
                view.pop(key, None)
            elif isinstance(value, DeleteIf):
                if view.get(key) == value.value:  # ours still: it goes; another node's now: it stays
                    view.pop(key)
            else:
                view[key] = value
        own = self._claims(snapshot)
        view.update(own)
        self.view = view
        self.revision = max(self.revision, revision)
        log.info("cluster: resync %d at revision %d: %d keys", self.resyncs, revision, len(snapshot))
        self._apply_all()
        self._submit(self._reconcile, dict(snapshot), own)

    def _claims(self, snapshot: dict[str, Any]) -> dict[str, Any]:
        """This node's own keys as its ports are, less those of ports another node has published
        since (a port moved away while this agent was down or etcd away: the other node hosts it
        now; ``port add`` here claims it back)."""
        own = self._own()
        for port in list(self.node_state.ports.values()):
            there = snapshot.get(PORTS + port.uuid)
            if isinstance(there, dict) and there.get("node") not in (None, self.node):
                log.warning("cluster: port %s is plugged on node %s now (it moved while this node was away): unplugged here",
                            port.uuid, there.get("node"))  # fmt: skip
                for key in self.port_keys(port):
                    own.pop(key, None)
                self._apply(functools.partial(self._give_up, port))
        return own

    async def _give_up(self, port: Port) -> None:
        """Unplug a port that another node hosts now (its tap went with the VM)."""
        if self.node_state.ports.get(port.uuid) is port:  # else changed meanwhile
            await self.node_state.unplug(port.uuid, Origin.CLUSTER)

    def _events(self, events: list[Event]) -> None:
        if self._stopping:
            return
        kinds = set()
        for e in events:
            if e.kind == "put":
                self.view[e.key] = e.value
            else:
                self.view.pop(e.key, None)
            self.revision = max(self.revision, e.revision)
            kinds.add(e.key.split("/", 1)[0])
        self.last_change = time.time()
        if "global-vrouter-config" in kinds:
            self._apply(self._apply_services)
        if "virtual-networks" in kinds:
            self._apply(self._apply_networks)
        if kinds & {"routes", "ports", "nodes"}:
            self._apply(self._apply_remote)

    # -- what etcd says, applied here -------------------------------------------------------------

    def _apply_all(self) -> None:
        for apply in (self._apply_services, self._apply_networks, self._apply_remote):
            self._apply(apply)

    def _apply(self, apply: Callable[[], Awaitable[None]]) -> None:
        """Apply what etcd said after what it said before (each reads the view as it is then)."""
        self._applying.put_nowait(apply)

    async def _apply_in_order(self) -> None:
        while True:
            apply = await self._applying.get()
            if self._stopping:
                continue
            try:
                await apply()
            except Exception:  # a value no check foresaw must not stop the rest, nor the resync
                what = getattr(apply, "__name__", "change").strip("_").replace("apply_", "")
                log.exception("cluster: applying etcd's %s failed; the rest is applied", what)

    async def _apply_services(self) -> None:
        entries, used = [], set()
        for key, raw in sorted(self.view.items()):  # one by one: a bad entry is left out, not all of them
            if not key.startswith(LINKLOCAL):
                continue
            try:
                s = validate_service(raw)
            except (ServiceError, TypeError, ValueError, KeyError, AttributeError) as e:
                log.error("cluster: %s is not a usable link-local service (%s); left out", key, e)
                continue
            if (s.ip, s.port) in used:
                log.error("cluster: %s uses %s:%d, which a service before it has; left out", key, s.ip, s.port)
                continue
            used.add((s.ip, s.port))
            entries.append(raw)
        now = sorted(json.dumps(service_schema(s), sort_keys=True) for s in self.node_state.services.values())
        if sorted(json.dumps(e, sort_keys=True) for e in entries) == now:
            return
        try:
            services = validate_services(entries)
        except (ServiceError, TypeError, ValueError, KeyError, AttributeError) as e:
            log.error("cluster: the global-vrouter-config's link-local services are unusable (%s); the previous ones stay", e)
            return
        removed = await self.node_state.set_services(services, Origin.CLUSTER)
        names = ", ".join(s.name for s in services.values()) or "none"
        log.info("cluster: link-local services now %s (%d flow entries removed)", names, removed)

    async def _apply_networks(self) -> None:
        wanted: dict[str, Network] = {}
        for key, raw in self.view.items():
            if not key.startswith(NETWORKS) or not isinstance(raw, dict):
                continue
            try:
                net = Network.from_dict(raw)
            except (NetworkError, KeyError, TypeError, ValueError, AttributeError) as e:
                log.error("cluster: %s is not a usable network (%s); ignored", key, e)
                continue
            wanted[net.uuid] = net
        changed = False
        for uuid, net in wanted.items():
            if self.node_state.networks.get(uuid) != net:
                await self.node_state.set_network(net, Origin.CLUSTER)
                changed = True
        for uuid in [u for u in self.node_state.networks if u not in wanted]:
            await self.node_state.remove_network(uuid, Origin.CLUSTER)
            changed = True
        if changed:
            log.info("cluster: %d virtual networks", len(wanted))

    async def _apply_remote(self) -> None:
        """The other nodes' VMs: their routes (each checked), and their names for DNS."""
        routes = []
        names: dict[str, list[Instance]] = {}
        for key, r in self.view.items():
            if not isinstance(r, dict) or r.get("node") == self.node:
                continue
            if key.startswith(PORTS) and r.get("vm_name"):
                names.setdefault(str(r.get("vn_uuid")), []).append(
                    Instance(str(r["vm_name"]), str(r.get("ip_address", "")), str(r.get("ipv6_address", "")))
                )
            if not key.startswith(ROUTES):
                continue
            try:
                ipaddress.ip_address(str(r["address"]))
                ipaddress.IPv4Address(str(r["node_ip"]))
                if not 16 <= int(r["label"]) < 1 << 20:
                    raise ValueError("label %r: not an MPLS label of a VM interface (16 to 2^20-1)" % r["label"])
                routes.append(RemoteRoute(str(r.get("vn_uuid")), str(r["address"]), str(r["node"]), str(r["node_ip"]), int(r["label"]),
                                          str(r.get("mac", "")), str(r.get("port_uuid", ""))))  # fmt: skip
            except (KeyError, ValueError, TypeError, AttributeError) as e:
                log.error("cluster: route %s is unusable (%s); ignored", key, e)
        await self.node_state.set_remote(tuple(routes), {vn: tuple(i) for vn, i in names.items()}, Origin.CLUSTER)
        self._cache_later()

    # -- this node's own keys ---------------------------------------------------------------------

    def port_keys(self, port: Port) -> dict[str, Any]:
        record = dict(port.to_dict(), node=self.node)
        route = {
            "address": port.ip_address, "prefix_len": 32, "vn_uuid": port.vn_uuid, "node": self.node, "node_ip": self.vhost_ip,
            "label": label_of(port.vif), "mac": port.mac, "port_uuid": port.uuid, "vm_name": port.vm_name,
        }  # fmt: skip
        keys = {PORTS + port.uuid: record, route_key(port.vn_uuid, port.ip_address): route}
        if port.ipv6_address:  # dual stack: its IPv6 address is a route of its own, to the same label
            keys[route_key(port.vn_uuid, port.ipv6_address)] = dict(route, address=port.ipv6_address, prefix_len=128)
        return keys

    def _own(self) -> dict[str, Any]:
        own: dict[str, Any] = {NODES + self.node: {"name": self.node, "vhost_ip": self.vhost_ip, "encapsulation": "MPLSoUDP"}}
        for port in self.node_state.ports.values():
            own.update(self.port_keys(port))
        return own

    def _reconcile(self, snapshot: dict[str, Any], own: dict[str, Any]) -> None:
        """In the writer: what is pending, then this node's keys (``own``) as its ports are."""
        self._flush()
        if self.pending:
            return  # etcd went again: the next resync does the rest
        try:
            for key, value in own.items():
                if self._stopping:
                    return
                if snapshot.get(key) != value:
                    self.store.put(key, value)
            for key, value in snapshot.items():
                if key.startswith((PORTS, ROUTES)) and isinstance(value, dict) and value.get("node") == self.node and key not in own:
                    self.store.delete_if(key, value)
                    log.info("cluster: %s removed (this node has no such port now)", key)
        except StoreError as e:
            log.warning("cluster: publishing this node's ports: %s; again at the next resync", e)

    def _flush(self) -> None:
        """In the writer: write what is pending, in order; what fails stays pending."""
        while not self._stopping:
            with self._lock:
                if not self.pending:
                    return
                key = next(iter(self.pending))
                value = self.pending[key]
            try:
                if value is None:
                    self.store.delete(key)
                elif isinstance(value, DeleteIf):
                    self.store.delete_if(key, value.value)
                else:
                    self.store.put(key, value)
            except StoreRefused as e:  # asking again would not help: say so, and go on with the rest
                log.error("cluster: etcd refused the change of %s, which is dropped: %s", key, e)
            except StoreError as e:
                log.warning("cluster: %d changes wait for etcd (%s)", len(self.pending), e)
                return
            with self._lock:
                if self.pending.get(key, ...) is value:
                    del self.pending[key]

    # -- changes made here ---------------------------------------------------------------------------

    def _submit(self, fn: Callable[..., None], *args: Any) -> asyncio.Future[None]:  # noqa: ANN401 - the writer's arguments
        assert self._loop is not None
        return self._loop.run_in_executor(self._writer, fn, *args)

    async def write(self, changes: dict[str, Any]) -> bool:
        """Write changes made here (key -> value, None to delete, ``DeleteIf`` to delete what is
        still ours) to etcd, after what is pending; True if etcd took them, False if they wait
        for it (they are kept)."""
        for key, value in changes.items():
            with self._lock:
                self.pending.pop(key, None)  # to the end: written after what was there before
                self.pending[key] = value
            if value is None or isinstance(value, DeleteIf):
                self.view.pop(key, None)
            else:
                self.view[key] = value
        await self._submit(self._flush)
        with self._lock:
            return not any(k in self.pending for k in changes)

    # -- the subscriber: what this node changed, to etcd --

    async def changed(self, change: Change) -> int:
        if change.origin is not Origin.LOCAL:
            return 0  # etcd's own, or the files': etcd has it (or the resync puts this node's ports)
        if isinstance(change, PortChanged):
            port, before = change.port, change.before
            if before is not None and (port is None or (before.ip_address, before.ipv6_address, before.vn_uuid)
                                       != (port.ip_address, port.ipv6_address, port.vn_uuid)):  # fmt: skip
                await _published(self.withdraw_port(before), "port %s%s" % (before.uuid, "" if port is None else "'s old route"))
            if port is not None:
                await _published(self.publish_port(port), "port %s" % port.uuid)
        elif isinstance(change, NetworkChanged):
            net = change.net or change.before
            assert net is not None
            await _published(self.publish_network(net, removed=change.net is None), "network %s" % net.uuid)
        elif isinstance(change, ServicesChanged):
            await _published(self.publish_services(), "link-local services")
        return 0

    async def publish_port(self, port: Port) -> bool:
        return await self.write(self.port_keys(port))

    async def withdraw_port(self, port: Port) -> bool:
        """Delete the port's keys, those that still name this node (a port plugged on another
        node meanwhile is that node's)."""
        changes: dict[str, Any] = {}
        for key, ours in self.port_keys(port).items():
            current = self.view.get(key)
            if current is None or (isinstance(current, dict) and current.get("node") == self.node):
                changes[key] = DeleteIf(ours)  # in etcd too: only if no other node has written it meanwhile
        return await self.write(changes)

    async def publish_services(self) -> bool:
        """This node's link-local services as the global config: put each, delete the others."""
        mine = {LINKLOCAL + s.name.lower(): service_schema(s) for s in self.node_state.services.values()}
        changes: dict[str, Any] = {k: v for k, v in mine.items() if self.view.get(k) != v}
        changes.update({k: None for k in self.view if k.startswith(LINKLOCAL) and k not in mine})
        return await self.write(changes)

    async def publish_network(self, net: Network, removed: bool = False) -> bool:
        """The network as the cloud knows it, with its VRF's name (its routing instance, as
        Tungsten Fabric names them); each node numbers that VRF itself (``vrouter network list``)."""
        record = dict(net.to_dict(), vrf=net.vrf_name)
        return await self.write({NETWORKS + net.uuid: None if removed else record})

    # -- the cache of the other nodes' view ---------------------------------------------------------

    def _cache_later(self) -> None:
        if self._loop is not None and self._cache_due is None:
            self._cache_due = self._loop.call_later(CACHE_DELAY, self._write_cache)

    def _write_cache(self) -> None:
        self._cache_due = None
        view = {k: v for k, v in self.view.items() if k.startswith((PORTS, ROUTES, NODES))}
        try:
            write_json_atomic(self.cache_path, {"node": self.node, "revision": self.revision, "view": view})
        except OSError as e:
            log.error("cluster: cannot write %s: %s", self.cache_path, e)


async def _published(writing: Awaitable[bool], what: str) -> None:
    """A change made here, written to the cloud's etcd; while etcd does not answer it waits there
    (the change stands here)."""
    if not await writing:
        log.warning("%s: changed on this node; etcd does not answer, so the other nodes learn it when it does", what)
