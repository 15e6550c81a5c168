"""One way for the unit tests to build a dataplane: vif0/3 and vif0/4 (VRF 1), optionally vif0/5
(VRF 2), the metadata service, on an in-memory table."""

from __future__ import annotations

from dataplane.core.dataplane import Dataplane, Limits
from dataplane.core.entries import PortAllocator
from dataplane.core.services import LinkLocalService
from dataplane.core.vif import Vif
from flows.table import FlowTable

TAP1, TAP2, TAP3 = 11, 12, 13  # the taps' ifindexes
VHOST = 2  # vhost0's ifindex, where the fabric's replies to link-local NAT come in
VHOST_IP = "10.10.0.2"
METADATA = LinkLocalService("metadata", "169.254.169.254", 80, ("10.10.0.1",), 8775)


def dataplane(
    entries: int = 1024,
    limits: Limits | None = None,
    ports: PortAllocator | None = None,
    services: tuple[LinkLocalService, ...] = (METADATA,),
    other_network: bool = False,
) -> Dataplane:
    """vm1 10.1.1.3 (vif 3, TAP1) and vm2 10.1.1.4 (vif 4, TAP2) in VRF 1; with ``other_network``
    also 10.1.1.5 (vif 5, TAP3) in VRF 2."""
    d = Dataplane(FlowTable.in_memory(entries), VHOST_IP, 8097, limits=limits, ports=ports)
    d.set_host_ifindex(VHOST)
    d.add_vif(Vif(3, "tapaaaaaaaa-aa", TAP1, "10.1.1.3", "02:00:00:00:00:03", vrf=1))
    d.add_vif(Vif(4, "tapbbbbbbbb-bb", TAP2, "10.1.1.4", "02:00:00:00:00:04", vrf=1))
    if other_network:
        d.add_vif(Vif(5, "tapcccccccc-cc", TAP3, "10.1.1.5", "02:00:00:00:00:05", vrf=2))
    d.set_services(list(services))
    return d
