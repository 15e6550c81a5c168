"""Every Sandesh request, response and struct the introspect serves, gathered from one module per page.

The declarations live in ``schema_<program>.py``, one per ``.sandesh`` file (agent, services, kstate, pkt,
sandesh_trace), as their upstream files declare them; this module joins them and refuses a name declared twice.
"""

from __future__ import annotations

from types import ModuleType

from vrouter.introspect import schema_agent, schema_kstate, schema_pkt, schema_services, schema_trace
from vrouter.introspect.declaration import Field

_PAGES: dict[str, ModuleType] = {
    "agent.xml": schema_agent,
    "services.xml": schema_services,
    "kstate.xml": schema_kstate,
    "pkt.xml": schema_pkt,
    "sandesh_trace.xml": schema_trace,
}


def _joined(attribute: str) -> dict[str, tuple[Field, ...]]:
    joined: dict[str, tuple[Field, ...]] = {}
    for part in _PAGES.values():
        declared: dict[str, tuple[Field, ...]] = getattr(part, attribute)
        for name, fields in declared.items():
            if name in joined:
                raise ValueError(f"Sandesh type {name} is declared twice (again in {part.__name__})")
            joined[name] = fields
    return joined


STRUCTS: dict[str, tuple[Field, ...]] = _joined("STRUCTS")
"""Every struct and every response by name (responses without ``more``)."""
REQUESTS: dict[str, tuple[Field, ...]] = _joined("REQUESTS")
"""Every request we answer, by name (without the ``Snh_`` prefix)."""
RESPONSES: frozenset[str] = frozenset().union(*(part.RESPONSES for part in _PAGES.values()))
"""Which STRUCTS names are response sandeshes."""
MODULES: dict[str, tuple[str, ...]] = {page: part.PAGE for page, part in _PAGES.items()}
"""The module pages and their requests, in page order (the .sandesh file's declaration order). Read-only requests
only: contrail-scrape calls every listed request with no arguments."""
