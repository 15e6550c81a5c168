"""The event loop the agent and its proxy process run on: uvloop (a dependency), else asyncio's
(``infra.children.run``, which the dataplane's workers run on too)."""

from __future__ import annotations

from infra.children import run

__all__ = ["run"]
