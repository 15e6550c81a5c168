"""How a Sandesh struct, request or response is declared here: its fields, as its ``.sandesh`` file
declares them (``vrouter.introspect.schema``), for the writer and the argument parser
(``vrouter.introspect.sandesh``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Field:
    """One field of a Sandesh struct, request or response, as its ``.sandesh`` file declares it.

    ``type`` is a base type (``sandesh.BASE_TYPES``), ``"struct"`` (``of`` names the struct) or ``"list"`` (``of`` names the
    element type: a base type or a struct). ``link`` is the request the value links to (``link="..."``).
    ``optional`` fields are written only when given; ``default`` is the declared default (None: ""/0/false by type).
    """

    name: str
    id: int
    type: str
    of: str = ""
    link: str = ""
    optional: bool = False
    default: object = None
