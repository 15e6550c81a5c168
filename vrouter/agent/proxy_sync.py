"""The metadata proxy process kept told of the node's state: who is behind each metadata IP, and
where Nova is.

A subscriber of ``NodeState``.  A port plugged or unplugged sends the proxy
that port's identity (at its IPv4 and IPv6 metadata IPs) and nothing else: a
thousand ports plugged one by one are a thousand small messages, not a
thousand copies of every identity.  A change of the link-local services, or of
what their DNS names resolved to, sends Nova's address if it changed.  Each is
acknowledged before the change's operation answers.
"""

from __future__ import annotations

from collections.abc import Callable

from dataplane.core.services import LinkLocalService
from vrouter.agent.state import Change, NodeState, PortChanged, ResolvedChanged, ServicesChanged
from vrouter.model import Identity, NovaAddress
from vrouter.services.metadata.supervisor import ProxyProcess


def identities(state: NodeState) -> dict[str, Identity]:
    """Who is behind each metadata IP (IPv4 and IPv6), as a new proxy process is told."""
    out: dict[str, Identity] = {}
    for p in state.ports.values():
        out[p.metadata_ip] = out[p.metadata_ip6] = p.identity
    return out


class ProxySync:
    def __init__(self, state: NodeState, proxy: ProxyProcess, service_ips: Callable[[LinkLocalService], tuple[str, ...]]) -> None:
        self.state = state
        self.proxy = proxy
        self.service_ips = service_ips  # a service's fabric addresses as the dataplane resolved them

    def upstream(self) -> NovaAddress | None:
        """Where Nova is: the metadata service's fabric IPs, or what its DNS name resolved to."""
        s = self.state.metadata_service()
        if s is None:
            return None
        ips = list(self.service_ips(s))
        return NovaAddress(ips, s.fabric_port) if ips else None

    async def changed(self, change: Change) -> int:
        if isinstance(change, PortChanged):
            changes: dict[str, Identity | None] = {}
            if change.before is not None:
                changes[change.before.metadata_ip] = changes[change.before.metadata_ip6] = None
            if change.port is not None:
                changes[change.port.metadata_ip] = changes[change.port.metadata_ip6] = change.port.identity
            await self.proxy.change_identities(changes)
        elif isinstance(change, ServicesChanged | ResolvedChanged):
            await self.proxy.set_upstream(self.upstream())
        return 0
