"""The node's state on disk: the agent's local cache, written as changes come and read at start.

Like the real agent's port files, each port is a JSON file ``ports/<uuid>.json``
and each network ``networks/<uuid>.json`` (``JsonDir``: one file a key,
written atomically, so a restarted agent plugs the same ports again with the
same vif index and VRF); the link-local services are one file,
``linklocal.json``, in global-vrouter-config's schema (what ``vrouter
linklocal import`` takes, so an operator can hand it to a real agent's
provisioning as it is).  ``Persistence`` is the subscriber that writes them;
``load`` reads them back, one message for each file it cannot use.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from dataplane.core.services import LinkLocalService
from infra.jsonfile import read_json, write_json_atomic
from vrouter.agent.paths import StatePaths
from vrouter.agent.state import Change, NetworkChanged, Origin, PortChanged, ServicesChanged
from vrouter.model import Network, Port, ServiceError, service_schema, validate_port, validate_service

log = logging.getLogger("vrouter.agent")

T = TypeVar("T")


class JsonDir(Generic[T]):
    """Values of one kind by key, one JSON file each in ``directory``."""

    def __init__(self, directory: str, to_dict: Callable[[T], dict[str, Any]], from_dict: Callable[[dict[str, Any]], T]) -> None:
        self.directory = directory
        self.to_dict = to_dict
        self.from_dict = from_dict

    def _path(self, key: str) -> str:
        return os.path.join(self.directory, key + ".json")

    def put(self, key: str, value: T) -> None:
        write_json_atomic(self._path(key), self.to_dict(value))

    def delete(self, key: str) -> None:
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            pass

    def load(self, problems: list[str]) -> Iterator[T]:
        """Every value that can be read; a message in ``problems`` for each file that cannot."""
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        for name in sorted(os.listdir(self.directory)):
            if not name.endswith(".json"):
                continue
            path = os.path.join(self.directory, name)
            try:
                yield self.from_dict(read_json(path))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
                problems.append("%s: %s" % (path, e))


def _port(d: dict[str, Any]) -> Port:
    if "vif" not in d or "vrf" not in d:
        raise KeyError("vif" if "vif" not in d else "vrf")
    return validate_port(d)


@dataclass
class Cache:
    """What the files held at start: ports (with their vif indices and VRFs), networks, services."""

    ports: list[Port] = field(default_factory=list)
    networks: list[Network] = field(default_factory=list)
    services: dict[str, LinkLocalService] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


class Persistence:
    """The subscriber that keeps the files as the state is (what came from them is not written back)."""

    def __init__(self, paths: StatePaths) -> None:
        self.ports: JsonDir[Port] = JsonDir(paths.ports, Port.to_dict, _port)
        self.networks: JsonDir[Network] = JsonDir(paths.networks, Network.to_dict, Network.from_dict)
        self.linklocal = paths.linklocal

    def load(self) -> Cache:
        cache = Cache()
        cache.ports = list(self.ports.load(cache.problems))
        cache.networks = list(self.networks.load(cache.problems))
        cache.services = self._load_services(cache.problems)
        return cache

    def _load_services(self, problems: list[str]) -> dict[str, LinkLocalService]:
        if not os.path.exists(self.linklocal):
            return {}
        try:
            entries = read_json(self.linklocal)["linklocal_services"]["linklocal_service_entry"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            problems.append("%s: %s" % (self.linklocal, e))
            return {}
        if not isinstance(entries, list):
            problems.append("%s: linklocal_service_entry is not a list" % self.linklocal)
            return {}
        services = {}
        for raw in entries:  # one by one: a bad entry is left out, not all of them
            try:
                s = validate_service(raw)
            except (ServiceError, AttributeError) as e:
                problems.append("%s: %s" % (self.linklocal, e))
                continue
            services[s.name.lower()] = s
        return services

    async def changed(self, change: Change) -> int:
        if change.origin is Origin.CACHE:
            return 0
        if isinstance(change, PortChanged):  # a port replaced keeps its uuid, so its file
            if change.port is None:
                assert change.before is not None
                self.ports.delete(change.before.uuid)
            else:
                self.ports.put(change.port.uuid, change.port)
        elif isinstance(change, NetworkChanged):
            if change.net is None:
                assert change.before is not None
                self.networks.delete(change.before.uuid)
            else:
                self.networks.put(change.net.uuid, change.net)
        elif isinstance(change, ServicesChanged):
            entries = [service_schema(s) for s in sorted(change.services.values(), key=lambda s: s.name.lower())]
            write_json_atomic(self.linklocal, {"linklocal_services": {"linklocal_service_entry": entries}})
        return 0
