"""The one error of the lab builder that its users catch (``scripts/netns_setup.sh``, the tests, the benchmarks)."""

from __future__ import annotations


class LabError(Exception):
    """The node cannot be built or changed; the message says why and what to do."""
