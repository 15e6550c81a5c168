"""The schedule of aging: the lifecycle's steps, many a second, in whichever loop runs a dataplane.

In small steps, ``AGING_STEPS`` a second: closed TCP pairs go (at most
``EVICT_PER_STEP`` a step) and a bounded share of the live flows is looked at
for idleness (``AGING_BUDGET`` a second), so that aging never stalls the
packets behind it for more than a few milliseconds.  The agent's loop and each
dataplane worker's run it over their own entries.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from dataplane.core.dataplane import Dataplane

log = logging.getLogger("vrouter.dataplane")

AGING_BUDGET = 20_000  # flows looked at per second for idleness
AGING_STEPS = 50  # aging steps per second: each looks at AGING_BUDGET / AGING_STEPS flows
EVICT_PER_STEP = 100  # closed TCP pairs removed per step at most (5,000 pairs/s, about 1 ms a step)


async def age_forever(dp: Dataplane, idle_s: Callable[[], float], every_second: Callable[[], None] | None = None) -> None:
    """Age ``dp``'s flows until cancelled: idle for ``idle_s()`` seconds is gone."""
    budget, slots = AGING_BUDGET // AGING_STEPS, dp.table.capacity // AGING_STEPS
    step = 0
    while True:
        await asyncio.sleep(1.0 / AGING_STEPS)
        step += 1
        if every_second is not None and step % AGING_STEPS == 0:
            every_second()
        n = dp.age_step(idle_s(), budget, evict_limit=EVICT_PER_STEP, slots=slots)
        if n:
            log.debug("removed %d flow entries", n)
