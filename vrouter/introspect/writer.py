"""The one thread the introspect writes its pages on: a table's XML and a page's HTML.

Writing a page is pure work on what the agent's loop gathered (a whole interface table
of a thousand VMs is 4 MB of XML, 0.14 s), kept off the loop so that it goes on
forwarding and answering guests.  One thread for every page: they wait for each other,
not for the loop.  While the thread writes, the loop still needs the interpreter for
each packet; Python hands it over every switch interval (5 ms by default), which made
a ping between VMs through the agent's own worker average 15 ms and peak at 31 ms while
four clients asked for a 200-VM table in a loop.  The agent's switch interval is
0.5 ms from the first page written: the same ping then averaged 2.4 ms (peak 6 ms) and
the clients got as many pages.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

SWITCH_INTERVAL = 0.0005
_WRITER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="introspect")


async def written(fn: Callable[[], T]) -> T:
    """``fn()`` on the writer's thread."""
    sys.setswitchinterval(SWITCH_INTERVAL)
    return await asyncio.get_running_loop().run_in_executor(_WRITER, fn)
