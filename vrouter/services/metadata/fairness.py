"""What one VM may take of the metadata proxy: its limits, and the rate limiter.

The vRouter agent has none of these; they are this project's, named after
Neutron's metadata agent where it has the same thing (``[metadata_rate_limiting]``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Fairness:
    """What one VM may take of the proxy.

    ``header_timeout``: seconds a client has to send a whole request head once it has started
    (slowloris: 408 and close); ``body_timeout``: the same for its body.
    ``max_connections_per_vm``: open connections per VM (more: 429 and close).  Rate limit, as
    Neutron's metadata agent configures it: more than ``base_limit`` requests in ``base_window``
    seconds, or more than ``burst_limit`` in ``burst_window``: 429.
    """

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections_per_vm: int = 64
    rate_limit: bool = False
    base_window: float = 10.0
    base_limit: int = 10
    burst_window: float = 10.0
    burst_limit: int = 10


class RateLimiter:
    """Sliding windows of request times per VM."""

    def __init__(self, f: Fairness) -> None:
        self.f = f
        self.seen: dict[str, deque[float]] = {}
        self.longest = max(f.base_window, f.burst_window)

    def allow(self, vm: str, now: float) -> bool:
        q = self.seen.setdefault(vm, deque())
        while q and now - q[0] > self.longest:
            q.popleft()
        base = sum(1 for t in q if now - t <= self.f.base_window)
        burst = base if self.f.burst_window == self.f.base_window else sum(1 for t in q if now - t <= self.f.burst_window)
        if base >= self.f.base_limit or burst >= self.f.burst_limit:
            return False
        q.append(now)
        return True
