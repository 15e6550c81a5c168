"""What a fault rule does to the requests it matches: one class per effect, as values with behaviour.

A rule's effect (``faults.Rule.effect``) is one of these, made from its name and
value (``effect_of``).  The VM's connection calls it at the moments of a
request that it may change, and it acts through the connection's methods
(``Connection``), never by being told apart by name:

* ``before_relay``: it may answer in Nova's place (``status``);
* ``relay``: how the request goes to Nova (now; ``delay``: later; ``drop``: never);
* ``holds_answer`` and ``deliver``: Nova's answer gathered whole, then written to the
  VM its own way (``throttle``: slowly; ``reset``: half of it, then a RST);
* ``answers``: whether an answer ever comes (``drop`` and ``refuse``: no, so a VM that half-closes
  its side is closed at once).

Each effect also checks its value as the user typed it (``checked``, for
``faults.check``) and says itself in words (``text``, for the CLI's tables).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Protocol, TypeVar

RESET_AFTER = 0.05  # seconds between the half answer of a reset fault and its RST (for it to leave)
DROP_HOLD = 600.0  # seconds a drop fault holds a connection whose VM does not give up
THROTTLE_TICK = 0.1  # a throttled body goes out a tenth of its rate every tenth of a second


class FaultError(ValueError):
    """A rule that makes no sense; the message names the option."""


R = TypeVar("R")  # the connection's request: effects hand it back, they do not look inside
Req = TypeVar("Req", contravariant=True)


class Connection(Protocol[Req]):
    """What an effect may do to the VM's connection it applies to."""

    def answer_as_nova(self, req: Req, status: int, close: bool, head: bool) -> None:
        """Answer ``req`` here with ``status``, as Nova would have (not relayed)."""

    def relay_now(self, req: Req) -> None:
        """Send ``req`` (the one in hand) to Nova, unless the VM has gone meanwhile."""

    def hold_open(self, seconds: float) -> None:
        """Answer nothing; keep the connection open so long unless the VM gives up first."""

    def later(self, seconds: float, fn: Callable[..., object], *args: object) -> None:
        """Call ``fn(*args)`` in ``seconds``, unless the connection is lost first (one at a time)."""

    def send(self, req: Req, data: bytes) -> None:
        """Part of ``req``'s answer, to the VM."""

    def end_answer(self, req: Req, ends: bool) -> None:
        """``req``'s answer is all written (``ends``: the connection ends with it)."""

    def reset(self, req: Req, after: float) -> None:
        """What was sent is all the VM gets of ``req``: read nothing more; a RST in ``after`` seconds."""


class Effect:
    """An effect and its value.  This base changes nothing: a subclass steps in at its moments."""

    name: ClassVar[str] = ""
    holds_answer: ClassVar[bool] = False  # Nova's answer is gathered whole, then ``deliver``ed
    answers: ClassVar[bool] = True  # an answer comes (a VM that half-closes still gets it)
    __slots__ = ("value",)

    def __init__(self, value: float = 0.0) -> None:
        self.value = value

    @classmethod
    def checked(cls, given: float) -> float:
        """The value of a rule as the user typed it (``given``); FaultError naming the option."""
        return 0.0

    def text(self) -> str:
        return self.name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Effect) and type(other) is type(self) and other.value == self.value

    def __hash__(self) -> int:
        return hash((self.name, self.value))

    def __repr__(self) -> str:
        return "%s(%g)" % (type(self).__name__, self.value)

    # -- the moments of a request it matched ----------------------------------------------------

    def before_relay(self, conn: Connection[R], req: R, close: bool, head: bool) -> bool:
        """True if it answered ``req`` itself: the request goes no further."""
        return False

    def relay(self, conn: Connection[R], req: R) -> None:
        """``req`` is ready for Nova."""
        conn.relay_now(req)

    def deliver(self, conn: Connection[R], req: R, answer: bytes, head_len: int, ends: bool) -> None:
        """Nova's whole ``answer`` (its head the first ``head_len`` bytes), when ``holds_answer``."""
        conn.send(req, answer)
        conn.end_answer(req, ends)


class Status(Effect):
    """Answered by the proxy itself with this status and a body like Nova's; Nova never sees it."""

    name = "status"
    __slots__ = ()

    @classmethod
    def checked(cls, given: float) -> float:
        if not 200 <= given <= 599:
            raise FaultError("--status %d: an HTTP status from 200 to 599" % given)
        return float(given)

    def text(self) -> str:
        return "status %d" % self.value

    def before_relay(self, conn: Connection[R], req: R, close: bool, head: bool) -> bool:
        conn.answer_as_nova(req, int(self.value), close, head)
        return True


class Delay(Effect):
    """So many seconds before the request goes to Nova."""

    name = "delay"
    __slots__ = ()

    @classmethod
    def checked(cls, given: float) -> float:
        if not 0 < given <= 600:
            raise FaultError("--delay %s: seconds, above 0 and at most 600" % given)
        return given

    def text(self) -> str:
        return "delay %g s" % self.value

    def relay(self, conn: Connection[R], req: R) -> None:
        conn.later(self.value, conn.relay_now, req)


class Drop(Effect):
    """No answer: the connection hangs until the VM gives up (or ``DROP_HOLD`` seconds)."""

    name = "drop"
    answers = False
    __slots__ = ()

    def relay(self, conn: Connection[R], req: R) -> None:
        conn.hold_open(DROP_HOLD)


class Throttle(Effect):
    """The answer's body at so many bytes a second: a tenth of that every tenth of a second."""

    name = "throttle"
    holds_answer = True
    __slots__ = ()

    @classmethod
    def checked(cls, given: float) -> float:
        if given < 1:
            raise FaultError("--throttle %d: bytes a second, at least 1" % given)
        return float(given)

    def text(self) -> str:
        return "throttle %d B/s" % self.value

    def deliver(self, conn: Connection[R], req: R, answer: bytes, head_len: int, ends: bool) -> None:
        conn.send(req, answer[:head_len])
        self._trickle(conn, req, answer[head_len:], ends)

    def _trickle(self, conn: Connection[R], req: R, body: bytes, ends: bool) -> None:
        step = max(1, int(self.value) // 10)
        if body:
            conn.send(req, body[:step])
            body = body[step:]
            if body:
                conn.later(THROTTLE_TICK, self._trickle, conn, req, body, ends)
                return
        conn.end_answer(req, ends)


class Reset(Effect):
    """The connection reset half-way through the answer's body."""

    name = "reset"
    holds_answer = True
    __slots__ = ()

    def deliver(self, conn: Connection[R], req: R, answer: bytes, head_len: int, ends: bool) -> None:
        conn.send(req, answer[: head_len + (len(answer) - head_len) // 2])
        conn.reset(req, RESET_AFTER)


class Refuse(Effect):
    """The connection reset as soon as a request comes, with no answer at all: to the VM, as if
    there were no metadata service (``vrouter-lab --config-drive only`` puts one on its instance)."""

    name = "refuse"
    answers = False
    __slots__ = ()

    def before_relay(self, conn: Connection[R], req: R, close: bool, head: bool) -> bool:
        conn.reset(req, 0.0)
        return True


EFFECTS: dict[str, type[Effect]] = {e.name: e for e in (Status, Delay, Throttle, Reset, Drop, Refuse)}  # in the order the CLI names them


def effect_of(name: str, value: float) -> Effect:
    """The effect called ``name`` with ``value``; FaultError if there is none of that name."""
    cls = EFFECTS.get(name)
    if cls is None:
        raise FaultError("no fault effect %r (one of %s)" % (name, ", ".join(EFFECTS)))
    return cls(value)
