"""A trace buffer: the last N events of one kind, as a Sandesh trace buffer keeps them.

The vRouter agent keeps its recent history in named rings (``Dhcp``, ``Metadata``,
``Flow``, ``Config``, ...) that its introspect shows as text lines, each
``<µs since the epoch> <Kind>Trace: <text>``.  This is one such ring: bounded in
memory, cheap to add to (a tuple on a deque), made into text only when read.
"""

from __future__ import annotations

import time
from collections import deque


class TraceBuffer:
    def __init__(self, name: str, size: int, message: str) -> None:
        """``name`` as the buffer list shows it (``Dhcp``); ``message`` the trace's kind (``DhcpTrace``)."""
        self.name = name
        self.message = message
        self._ring: deque[tuple[int, str]] = deque(maxlen=size)

    @property
    def size(self) -> int:
        return self._ring.maxlen or 0

    def add(self, text: str) -> None:
        self._ring.append((time.time_ns() // 1000, text))

    def __len__(self) -> int:
        return len(self._ring)

    def lines(self) -> list[str]:
        """Oldest first, as Sandesh reads a buffer."""
        return ["%d %s: %s" % (t, self.message, text) for t, text in self._ring]
