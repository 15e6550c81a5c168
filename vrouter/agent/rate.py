"""Flow set-ups per second, as ``vrouter_flow_setups_per_second`` shows them."""

from __future__ import annotations

from collections import deque

RATE_WINDOW = 10.0  # seconds over which vrouter_flow_setups_per_second is measured


class SetupRate:
    """Flow entries set up per second over the last ``RATE_WINDOW`` seconds, sampled by the agent."""

    def __init__(self) -> None:
        self.samples: deque[tuple[float, int]] = deque()

    def sample(self, now: float, added: int) -> None:
        self.samples.append((now, added))
        while len(self.samples) > 2 and now - self.samples[1][0] >= RATE_WINDOW:
            self.samples.popleft()

    def rate(self) -> float:
        if len(self.samples) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self.samples[0], self.samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0
