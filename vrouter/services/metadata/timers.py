"""One timer per connection, moved lazily."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Deadline:
    """A request moves a connection's deadline three or four times (head, body, Nova's answer,
    idle); setting a later deadline is an assignment, and the timer, when it fires before the
    deadline, re-arms itself for what is left."""

    __slots__ = ("loop", "callback", "deadline", "handle", "at")

    def __init__(self, callback: Callable[[], None]) -> None:
        self.loop = asyncio.get_running_loop()
        self.callback = callback
        self.deadline = 0.0  # 0: nothing to wait for
        self.handle: asyncio.TimerHandle | None = None
        self.at = 0.0

    def set(self, seconds: float) -> None:
        d = self.deadline = self.loop.time() + seconds
        if self.handle is None or self.at > d:
            if self.handle is not None:
                self.handle.cancel()
            self.handle = self.loop.call_at(d, self._fire)
            self.at = d

    def clear(self) -> None:
        self.deadline = 0.0

    def cancel(self) -> None:
        """For good: also lets go of the callback (its connection), so that no reference cycle is
        left for the garbage collector to find."""
        self.deadline = 0.0
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        self.callback = _nothing

    def _fire(self) -> None:
        self.handle = None
        if not self.deadline:
            return
        if self.loop.time() < self.deadline:
            self.handle = self.loop.call_at(self.deadline, self._fire)
            self.at = self.deadline
            return
        self.deadline = 0.0
        self.callback()


def _nothing() -> None:
    pass
