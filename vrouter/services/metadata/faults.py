"""Faults the proxy injects into chosen instances' requests, to see what a guest agent does.

A rule names its target (one instance, one vif, or all), a path glob, one
effect, and a bound:

* effects (``effects``, a class each, that the VM's connection calls at the
  moments of a request): ``status`` (answered by the proxy itself with a body
  like Nova's), ``delay`` (seconds before the request goes to Nova),
  ``throttle`` (the answer's body at so many bytes a second), ``reset`` (the
  connection reset half-way through the body), ``refuse`` (reset at the request, nothing
  answered: as if there were no metadata service), ``drop`` (no answer: the
  connection hangs until the VM gives up);
* bounds: ``count`` (the first N matching requests), ``for_s`` (seconds from
  when it was added), ``probability`` (each matching request, by chance),
  or none (until deleted).

The first rule (by id) that matches a request applies to it.  Rules change live:
the next request sees them.  ``check`` refuses a rule that makes no sense,
naming the option, before it is anywhere.
"""

from __future__ import annotations

import fnmatch
import random
import re
from dataclasses import dataclass, field

from vrouter.messages.proxy import FaultRecord, FaultSpec
from vrouter.services.metadata.effects import EFFECTS, Effect, FaultError, effect_of


@dataclass
class Rule:
    id: int
    instance: str  # "" unless the target is one instance
    vif: int  # 0 unless the target is one vif
    path: str  # a glob
    effect: Effect  # with its value: the status, the delay's seconds, the throttle's bytes a second
    count: int = 0  # 0: not bounded by a count
    until: float = 0.0  # monotonic deadline; 0: none
    probability: float = 1.0
    for_s: float = 0.0
    applied: int = 0
    _match: re.Pattern[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._match = re.compile(fnmatch.translate(self.path))

    @classmethod
    def of(cls, f: FaultSpec) -> Rule:
        return cls(f.id, f.instance, f.vif, f.path, effect_of(f.effect, f.value), f.count, f.until, f.probability, f.for_s)

    def targets(self, instance: str, vif: int) -> bool:
        return (not self.instance or self.instance == instance) and (not self.vif or self.vif == vif)

    def record(self, now: float) -> FaultRecord:
        target = "instance " + self.instance if self.instance else ("vif %d" % self.vif if self.vif else "all")
        left = max(0.0, self.until - now) if self.until else None
        if left is not None and self.for_s:
            left = min(left, self.for_s)  # (now + for_s) - now can round above for_s
        e = self.effect
        return FaultRecord(self.id, target, self.path, e.name, e.value, self.count, self.for_s, self.probability, self.applied, left)


def effect_text(r: FaultRecord) -> str:
    """``status 503``, ``delay 2 s``, ``throttle 100 B/s``, ``reset``, ``drop`` or ``refuse``."""
    cls = EFFECTS.get(r.effect)
    return cls(r.value).text() if cls is not None else r.effect


def check(instance: str | None, vif: int | None, all_: bool, path: str, status: int | None, delay: float | None, throttle: int | None,
          reset: bool, drop: bool, count: int | None, for_s: float | None, probability: float | None,
          refuse: bool = False) -> tuple[str, float]:  # fmt: skip
    """The effect and its value of a rule as the user typed it; FaultError naming what is wrong."""
    if sum(x for x in (instance is not None, vif is not None, all_)) != 1:
        raise FaultError("say whose requests: one of --instance UUID, --vif N or --all")
    if vif is not None and vif < 1:
        raise FaultError("--vif %d: not a VM's vif" % vif)
    if not path.startswith("/"):
        raise FaultError("--path %r: a glob of request paths, starting with / (e.g. '/openstack/*/meta_data.json')" % path)
    given = [(e, v) for e, v in zip(EFFECTS, (status, delay, throttle, reset or None, drop or None, refuse or None), strict=True) if v is not None]
    if len(given) != 1:
        raise FaultError("one effect: --status CODE, --delay SECONDS, --throttle BYTES_PER_S, --reset, --drop or --refuse (got %s)"
                         % (", ".join("--" + e for e, _ in given) or "none"))  # fmt: skip
    if count is not None and count < 1:
        raise FaultError("--count %d: at least 1" % count)
    if for_s is not None and not 0 < for_s <= 86400:
        raise FaultError("--for %s: seconds, above 0 and at most 86400" % for_s)
    if probability is not None and not 0 < probability <= 1:
        raise FaultError("--probability %s: above 0 and at most 1" % probability)
    effect, value = given[0]
    return effect, EFFECTS[effect].checked(value)


class Faults:
    """The rules in force, by id."""

    def __init__(self) -> None:
        self.rules: list[Rule] = []

    def set(self, rules: list[Rule]) -> None:
        self.rules = sorted(rules, key=lambda r: r.id)

    def expire(self, now: float) -> None:
        """Remove the rules whose time is up."""
        self.rules = [r for r in self.rules if not r.until or now < r.until]

    def match(self, instance: str, vif: int, path: str, now: float) -> Rule | None:
        """The rule that applies to this request, if any (and counts it)."""
        if not self.rules:
            return None
        for r in list(self.rules):
            if r.until and now >= r.until:
                self.rules.remove(r)
                continue
            if not r.targets(instance, vif) or not r._match.match(path):
                continue
            if r.probability < 1 and random.random() >= r.probability:
                continue
            r.applied += 1
            if r.count and r.applied >= r.count:
                self.rules.remove(r)  # its last
            return r
        return None
