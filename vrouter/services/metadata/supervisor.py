"""The agent's side of the metadata proxy process: start it, keep it told, restart it if it dies.

On one core the agent was CPU-bound with the NFQUEUE dataplane and the proxy in
one event loop, while the second core idled; the real vRouter also keeps its
dataplane (the kernel module) and the agent's proxy apart.  So the agent runs
``python -m vrouter.services.metadata.worker FD`` as one of the node's child
processes (``infra.children.Child``: one framing, one restart, for it and the
dataplane workers) and drives it with the messages of
``vrouter.messages.proxy``: ``ProxyConfig``, ``IdentityChanges``,
``SetUpstream``, ``SetFaults``, and the queries ``ProxyStatsRequest``,
``JournalQuery``, ``FaultList``, each answered.  Every update is
acknowledged, so that when ``vrouter port add`` returns the proxy already
knows the port; a port plug sends that port's identity, not every port's.  A
restarted process gets the identities, Nova's address and the fault rules
again; its journal starts empty, and its counters from zero, to which the
agent adds what the processes before it counted when last asked (``report``:
the node's counters never go down).  A process that does not answer a request
in time is killed, and so restarted.
"""

from __future__ import annotations

import logging
from typing import Any

from infra.children import Child, ChildError
from vrouter.messages.proxy import (
    Ack,
    FaultList,
    FaultRecord,
    FaultSpec,
    IdentityChanges,
    JournalMark,
    JournalPage,
    JournalQuery,
    ProxyConfig,
    ProxyReport,
    ProxyStatsRequest,
    SetFaults,
    SetUpstream,
    add_reports,
)
from vrouter.model import Identity, NovaAddress

log = logging.getLogger("vrouter.metadata")

RESTART_DELAY = 1.0
WORKER_MODULE = "vrouter.services.metadata.worker"


class ProxyProcessError(Exception):
    """The proxy process could not start or does not answer."""


class ProxyProcess:
    """The metadata proxy's process, as the agent sees it."""

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.identities: dict[str, Identity] = {}  # by metadata IP (IPv4 and IPv6)
        self.upstream: NovaAddress | None = None
        self.faults: list[FaultSpec] = []
        self._started = False  # before start, changes are only kept (the process is given them all)
        self._last: ProxyReport | None = None  # the last report, of the process then running
        self._retired: ProxyReport | None = None  # what processes that died had counted when last asked
        self._child = Child("the metadata proxy process", WORKER_MODULE, self._set_up, restart_delay=RESTART_DELAY, kill_on_timeout=True)

    @property
    def pid(self) -> int:
        return self._child.pid

    @property
    def restarts(self) -> int:
        return self._child.restarts

    async def start(self) -> None:
        try:
            await self._child.start()
        except ChildError as e:
            raise ProxyProcessError(str(e)) from None
        self._started = True

    async def _set_up(self, child: Child) -> None:
        await child.call(self.config, 30)
        await child.call(IdentityChanges(dict(self.identities), replace=True), 10)
        await child.call(SetUpstream(self.upstream), 10)
        if self.faults:
            await child.call(SetFaults(self.faults), 10)

    async def _call(self, request: Any, timeout: float = 10.0) -> Any:  # noqa: ANN401 - the request's answer
        try:
            return await self._child.call(request, timeout)
        except ChildError as e:
            raise ProxyProcessError(str(e)) from None

    async def change_identities(self, changes: dict[str, Identity | None]) -> None:
        """Who is behind these metadata IPs now (None: nobody)."""
        for ip, who in changes.items():
            if who is None:
                self.identities.pop(ip, None)
            else:
                self.identities[ip] = who
        await self._tell(IdentityChanges(changes))

    async def set_upstream(self, upstream: NovaAddress | None) -> None:
        if upstream == self.upstream:
            return
        self.upstream = upstream
        await self._tell(SetUpstream(upstream))

    async def _tell(self, msg: Any) -> None:  # noqa: ANN401 - an update
        if not self._started:
            return
        try:
            await self._call(msg)
        except ProxyProcessError as e:  # it is restarted with the current state
            log.error("%s", e)

    async def set_faults(self, rules: list[FaultSpec]) -> None:
        """Replace the fault rules; ProxyProcessError if the process did not take them (they are
        kept, and given to the next process)."""
        self.faults = rules
        await self._call(SetFaults(rules), timeout=3)

    async def report(self) -> ProxyReport:
        """Its counters, load and memory; ProxyProcessError if it does not answer.  The counters
        include what the processes before it (restarted after a death) had counted when last asked:
        they never go down."""
        now = await self._call(ProxyStatsRequest(), timeout=3)  # well inside the CLI's own 10 s
        last = self._last
        if last is not None and last.pid != now.pid:
            self._retired = last if self._retired is None else add_reports(self._retired, last)
        self._last = now
        return now if self._retired is None else add_reports(self._retired, now)

    async def journal(self, query: JournalQuery) -> JournalPage:
        return await self._call(query, timeout=3)

    async def mark(self, mark: JournalMark) -> Ack:
        return await self._call(mark, timeout=3)

    async def fault_records(self) -> list[FaultRecord]:
        """The rules in force as the process applies them (how often each applied, what time is left)."""
        return await self._call(FaultList(), timeout=3)

    async def stop(self) -> None:
        await self._child.stop()
