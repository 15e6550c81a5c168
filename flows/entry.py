"""One record of the flow table, decoded: what the inspection tools read (``FlowTable.read``)."""

from __future__ import annotations

from dataclasses import dataclass

from flows.layout import F1_REVERSE


@dataclass(frozen=True)
class FlowEntry:
    """One decoded record, for the inspection tools."""

    index: int
    nh: int
    src: bytes
    dst: bytes
    sport: int
    dport: int
    proto: int
    family: int
    flags: int
    action: int
    drop_reason: int
    rindex: int
    gen: int
    tcp_flags: int
    vrf: int
    dvrf: int
    nat_sport: int
    src_nh: int
    packets: int
    bytes: int
    setup_ns: int
    last_ns: int
    vif: int
    flags1: int = 0

    @property
    def reverse(self) -> bool:
        """Whether this entry is the reverse half of its pair."""
        return bool(self.flags1 & F1_REVERSE)
