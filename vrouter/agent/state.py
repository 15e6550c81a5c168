"""The node's state in one place, and the subscribers that carry its changes out.

As tf-controller's agent keeps an oper DB that its config side writes and
KSync, the services and the introspect read, the agent keeps one ``NodeState``:
the VM ports (with the vif index and VRF each was given), the virtual networks,
the link-local services, what their fabric DNS names resolved to, and the
routes to VMs on the other nodes of a cloud.  Whoever wants something changed
(the CLI's operations, the etcd follower, the start-up load of the local
cache) calls one of its methods (``plug``, ``unplug``, ``set_network``,
``set_services``, ...), the only way in; the state checks the change, takes it,
and tells each subscriber, in the order they subscribed, what changed (one of
the ``Change`` values below, with what was there before): the dataplane and its
workers (``ksync``), the files (``persist``), the metadata proxy process
(``proxy_sync``), and the cloud's etcd (``vrouter.agent.cluster``).  The
first subscriber may refuse a change (a port whose queues cannot be bound):
then the state is as before, and no other subscriber heard of it.

``Origin`` says where a change came from: the etcd publisher writes only what
was changed here (``LOCAL``), never what etcd itself said (``CLUSTER``) or what
the agent's own files held (``CACHE``).
"""

from __future__ import annotations

import enum
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from dataplane.core.services import LinkLocalService
from dataplane.core.vif import FIRST_VM_VIF
from vrouter.model import Network, NetworkError, Port, PortError, RemoteRoute, ServiceError, network_uuid, port_uuid
from vrouter.services.dns import Instance, Zone

log = logging.getLogger("vrouter.agent")


class Origin(enum.Enum):
    LOCAL = "local"  # the CLI's operations on this node
    CLUSTER = "cluster"  # the cloud's etcd
    CACHE = "cache"  # the agent's own files, at start-up


# -- the changes -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PortChanged:
    """A port plugged (``before`` None), replaced, or unplugged (``port`` None)."""

    port: Port | None
    before: Port | None
    origin: Origin


@dataclass(frozen=True)
class NetworkChanged:
    """A network set (``before`` None if new) or removed (``net`` None)."""

    net: Network | None
    before: Network | None
    origin: Origin


@dataclass(frozen=True)
class ServicesChanged:
    services: dict[str, LinkLocalService]  # by lowercased name
    before: dict[str, LinkLocalService]
    origin: Origin


@dataclass(frozen=True)
class ResolvedChanged:
    name: str
    addresses: tuple[str, ...]
    origin: Origin


@dataclass(frozen=True)
class RemoteChanged:
    """The other nodes' VMs: their routes, and their names for the networks' DNS zones."""

    routes: tuple[RemoteRoute, ...]
    names: dict[str, tuple[Instance, ...]]  # vn uuid -> the named VMs elsewhere
    origin: Origin


Change = PortChanged | NetworkChanged | ServicesChanged | ResolvedChanged | RemoteChanged


class Subscriber(Protocol):
    def changed(self, change: Change) -> Awaitable[int]:
        """Carry ``change`` out; how many flow entries went with it."""
        ...


# -- the state -------------------------------------------------------------------------------------


@dataclass
class NodeState:
    """What the node is configured to be; read by anyone, changed only by its methods below."""

    ports: dict[str, Port] = field(default_factory=dict)  # by uuid
    vrfs: dict[str, int] = field(default_factory=dict)  # vn uuid -> the VRF its ports are in here
    networks: dict[str, Network] = field(default_factory=dict)  # by uuid
    services: dict[str, LinkLocalService] = field(default_factory=dict)  # by lowercased name
    resolved: dict[str, tuple[str, ...]] = field(default_factory=dict)  # fabric DNS name -> addresses
    remote: tuple[RemoteRoute, ...] = ()
    remote_names: dict[str, tuple[Instance, ...]] = field(default_factory=dict)
    subscribers: list[Subscriber] = field(default_factory=list)
    _by_vif: dict[int, Port] = field(default_factory=dict)

    def subscribe(self, s: Subscriber) -> None:
        self.subscribers.append(s)

    async def _tell(self, change: Change, undo: Callable[[], None] | None = None) -> int:
        """Every subscriber, in order; the first may refuse (``undo`` puts the state back)."""
        flows = 0
        for i, s in enumerate(self.subscribers):
            try:
                flows += await s.changed(change)
            except (PortError, NetworkError, ServiceError):
                if i == 0 and undo is not None:
                    undo()
                raise
        return flows

    # -- ports --

    def port(self, uuid: str) -> Port:
        key = port_uuid(uuid)
        p = self.ports.get(key)
        if p is None:
            raise PortError("--uuid %s: no such port" % key)
        return p

    def by_vif(self, vif: int) -> Port | None:
        return self._by_vif.get(vif)

    def _place(self, port: Port) -> Port:
        """The port with its vif index (its old one if it was plugged) and its network's VRF."""
        for other in self.ports.values():
            if other.uuid == port.uuid:
                continue
            if other.tap_name == port.tap_name:
                raise PortError("--tap-name %s: already used by port %s" % (port.tap_name, other.uuid))
            if other.vn_uuid == port.vn_uuid and other.ip_address == port.ip_address:
                raise PortError("--ip-address %s: already used by port %s in that network" % (port.ip_address, other.uuid))
            if port.ipv6_address and other.vn_uuid == port.vn_uuid and other.ipv6_address == port.ipv6_address:
                raise PortError("--ipv6-address %s: already used by port %s in that network" % (port.ipv6_address, other.uuid))
        net = self.networks.get(port.vn_uuid)
        if (
            port.ipv6_address
            and net is not None
            and net.subnet6
            and ipaddress.IPv6Address(port.ipv6_address) not in ipaddress.IPv6Network(net.subnet6)
        ):
            raise PortError("--ipv6-address %s: not in the network's IPv6 subnet %s" % (port.ipv6_address, net.subnet6))
        old = self.ports.get(port.uuid)
        vif = old.vif if old is not None else self._free_vif()
        vrf = self.vrfs.get(port.vn_uuid) or max(self.vrfs.values(), default=0) + 1
        return port.placed(vif, vrf)

    def _free_vif(self) -> int:
        n = FIRST_VM_VIF
        while n in self._by_vif:
            n += 1
        if n > 0xFFFF:
            raise PortError("no free vif index")
        return n

    def _put(self, port: Port) -> None:
        old = self.ports.get(port.uuid)
        if old is not None:
            self._by_vif.pop(old.vif, None)
        self.ports[port.uuid] = port
        self._by_vif[port.vif] = port
        self.vrfs.setdefault(port.vn_uuid, port.vrf)

    def _drop(self, port: Port) -> None:
        self.ports.pop(port.uuid, None)
        if self._by_vif.get(port.vif) is port:
            del self._by_vif[port.vif]

    async def plug(self, port: Port, origin: Origin = Origin.LOCAL) -> Port:
        """Plug (or replace) a port; the port as placed.  A port from the agent's files keeps the
        vif index and VRF it had."""
        placed = port if origin is Origin.CACHE else self._place(port)
        before = self.ports.get(placed.uuid)
        had_vrf = placed.vn_uuid in self.vrfs

        def undo() -> None:
            self._drop(placed)
            if before is not None:
                self._put(before)
            if not had_vrf and not any(p.vn_uuid == placed.vn_uuid for p in self.ports.values()):
                self.vrfs.pop(placed.vn_uuid, None)

        self._put(placed)
        await self._tell(PortChanged(placed, before, origin), undo)
        return placed

    async def unplug(self, uuid: str, origin: Origin = Origin.LOCAL) -> tuple[Port, int]:
        """Unplug a port; it and how many flow entries went with it."""
        port = self.port(uuid)
        self._drop(port)
        return port, await self._tell(PortChanged(None, port, origin))

    # -- networks --

    async def set_network(self, net: Network, origin: Origin = Origin.LOCAL) -> Network:
        before = self.networks.get(net.uuid)
        self.networks[net.uuid] = net
        await self._tell(NetworkChanged(net, before, origin))
        return net

    async def remove_network(self, uuid: str, origin: Origin = Origin.LOCAL) -> Network:
        key = network_uuid(uuid)
        net = self.networks.pop(key, None)
        if net is None:
            raise NetworkError("--vn-uuid %s: no such network" % key)
        await self._tell(NetworkChanged(None, net, origin))
        return net

    # -- link-local services --

    async def set_services(self, services: dict[str, LinkLocalService], origin: Origin = Origin.LOCAL) -> int:
        """Take ``services`` (by lowercased name, checked by ``validate_services``) as the whole
        table; how many flow entries went with services that changed or went."""
        before, self.services = self.services, dict(services)
        return await self._tell(ServicesChanged(self.services, before, origin))

    async def add_service(self, service: LinkLocalService, origin: Origin = Origin.LOCAL) -> int:
        for key, other in self.services.items():
            if key != service.name.lower() and (other.ip, other.port) == (service.ip, service.port):
                raise ServiceError(
                    "--linklocal_service_ip/--linklocal_service_port %s:%d: already used by service %r" % (service.ip, service.port, other.name)
                )
        return await self.set_services({**self.services, service.name.lower(): service}, origin)

    async def remove_service(self, name: str, origin: Origin = Origin.LOCAL) -> tuple[LinkLocalService, int]:
        s = self.services.get(name.lower())
        if s is None:
            raise ServiceError("--linklocal_service_name %s: no such service" % name)
        return s, await self.set_services({k: v for k, v in self.services.items() if k != name.lower()}, origin)

    def metadata_service(self) -> LinkLocalService | None:
        return next((s for s in self.services.values() if s.is_metadata), None)

    async def set_resolved(self, name: str, addresses: tuple[str, ...], origin: Origin = Origin.LOCAL) -> None:
        self.resolved[name] = addresses
        await self._tell(ResolvedChanged(name, addresses, origin))

    # -- the other nodes --

    async def set_remote(self, routes: tuple[RemoteRoute, ...], names: dict[str, tuple[Instance, ...]], origin: Origin = Origin.CLUSTER) -> int:
        self.remote, self.remote_names = routes, names
        return await self._tell(RemoteChanged(routes, names, origin))


class GuestDirectory:
    """What the services for guests ask of the state (``vrouter.services.guests.Directory``)."""

    def __init__(self, state: NodeState, dns_domain: str) -> None:
        self.state = state
        self.dns_domain = dns_domain  # for networks that name none

    def port_of(self, vif_index: int) -> Port | None:
        return self.state.by_vif(vif_index)

    def network_of(self, vn_uuid: str) -> Network | None:
        return self.state.networks.get(vn_uuid)

    def zone_of(self, vn_uuid: str) -> Zone:
        """A network's names: its VMs here, and those the other nodes published."""
        net = self.state.networks.get(vn_uuid)
        domain = (net.domain if net is not None else "") or self.dns_domain
        names = tuple(Instance(p.vm_name, p.ip_address, p.ipv6_address) for p in self.state.ports.values() if p.vn_uuid == vn_uuid and p.vm_name)
        return Zone(domain, names + self.state.remote_names.get(vn_uuid, ()))
