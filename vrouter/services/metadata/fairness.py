"""What one VM may take of the metadata proxy: the rate limiter of its limits (``Fairness``, the
settings the proxy process is given in its ``ProxyConfig``).

The vRouter agent has none of these; they are this project's, named after
Neutron's metadata agent where it has the same thing (``[metadata_rate_limiting]``).
"""

from __future__ import annotations

from collections import deque

from vrouter.messages.proxy import Fairness


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
