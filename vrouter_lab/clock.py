"""Guest time to host time: the guest's uptimes and wall clock placed on the host's seconds since
power-on, from the console's stage banners (uptime and date) and the webhook events' timestamps."""

from __future__ import annotations

from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from vrouter_lab.console import ConsoleFacts, Event


@dataclass
class Clock:
    """Guest time to host time: host seconds since power-on minus the guest's uptime, and minus its wall clock."""

    uptime_offset: float | None = None
    wall_offset: float | None = None

    def host(self, guest: float | None) -> float | None:
        """status.json's times: epoch seconds up to 24.1, uptimes from 24.2."""
        if guest is None:
            return None
        offset = self.wall_offset if guest > 1e8 else self.uptime_offset
        return None if offset is None else round(guest + offset, 3)

    def uptime(self, host: float | None) -> float | None:
        return None if host is None or self.uptime_offset is None else round(host - self.uptime_offset, 3)


def clock_of(console: ConsoleFacts, events: list[Event]) -> Clock:
    uptimes = [b.t - b.uptime for b in console.banners if b.uptime is not None]
    walls = [e.t - e.timestamp for e in events if e.timestamp is not None and e.timestamp > 1e8]
    for banner in console.banners:
        try:
            walls.append(banner.t - parsedate_to_datetime(banner.wall).timestamp())
        except (TypeError, ValueError, IndexError, OverflowError):
            continue
    return Clock(min(uptimes) if uptimes else None, min(walls) if walls else None)
