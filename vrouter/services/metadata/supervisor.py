"""The agent's side of the metadata proxy process: start it, keep it told, restart it if it dies.

On one core the agent was CPU-bound with the NFQUEUE dataplane and the proxy in
one event loop, while the second core idled; the real vRouter also keeps its
dataplane (the kernel module) and the agent's proxy apart.  So the agent starts
``python -m vrouter.services.metadata.worker FD`` in the compute namespace with
one end of a socketpair and drives it with the messages of ``vrouter.messages``
(``ProxyConfig``, ``Identities``, ``SetUpstream``, ``SetFaults``, and the
queries ``ProxyStatsRequest``, ``ProxyJournalQuery``, ``ProxyFaultList``),
each answered.  Every update is acknowledged, so that when ``vrouter port add``
returns the proxy already knows the port.  The worker exits when the socket
closes: an agent that dies, even by SIGKILL, takes its proxy with it.  A
restarted process gets the identities, Nova's address and the fault rules
again; its journal and counters start empty.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

from dataplane.linux.children import spawn
from vrouter.messages import (
    MAX_MESSAGE,
    OP_OF,
    FaultRecord,
    FaultSpec,
    Identities,
    Identity,
    JournalPage,
    MessageError,
    NovaAddress,
    ProxyConfig,
    ProxyFaultList,
    ProxyJournalQuery,
    ProxyReport,
    ProxyStatsRequest,
    Refused,
    SetFaults,
    SetUpstream,
    decode_answer,
    encode_request,
)

log = logging.getLogger("vrouter.metadata")

RESTART_DELAY = 1.0
WORKER_MODULE = "vrouter.services.metadata.worker"


class ProxyProcessError(Exception):
    """The proxy process could not start or does not answer."""


class ProxyProcess:
    """The metadata proxy's process, as the agent sees it."""

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.identities: dict[str, Identity] = {}
        self.upstream: NovaAddress | None = None
        self.faults: list[FaultSpec] = []
        self.restarts = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()
        self._watch: asyncio.Task | None = None
        self._stopping = False

    @property
    def pid(self) -> int:
        return self._proc.pid if self._proc is not None else 0

    async def start(self) -> None:
        await self._spawn()
        self._watch = asyncio.get_running_loop().create_task(self._watchdog())

    async def _spawn(self) -> None:
        try:
            self._proc, self._reader, self._writer = await spawn(WORKER_MODULE, MAX_MESSAGE)
        except OSError as e:
            raise ProxyProcessError("cannot start the metadata proxy process (%s -m %s): %s" % (sys.executable, WORKER_MODULE, e)) from None
        try:
            await self._call(self.config, timeout=30)
        except ProxyProcessError:
            await self._kill()
            raise
        await self._call(Identities(self.identities))
        await self._call(SetUpstream(self.upstream))
        if self.faults:
            await self._call(SetFaults(self.faults))

    async def _call(self, request: Any, timeout: float = 10.0) -> Any:
        async with self._lock:
            if self._writer is None or self._reader is None:
                raise ProxyProcessError("the metadata proxy process is not running")
            try:
                self._writer.write(encode_request(request))
                await self._writer.drain()
                line = await asyncio.wait_for(self._reader.readline(), timeout)
            except (OSError, TimeoutError) as e:
                # a late answer would be taken for the next one's: this process is done with;
                # the watchdog starts another
                self._close_pipe()
                if self._proc is not None and self._proc.returncode is None:
                    self._proc.kill()
                why = "nothing within %.0f s" % timeout if isinstance(e, TimeoutError) else str(e)
                raise ProxyProcessError("the metadata proxy process does not answer (%s); it is restarted" % why) from None
            if not line:
                raise ProxyProcessError("the metadata proxy process has exited")
            try:
                return decode_answer(OP_OF[type(request)], line)
            except Refused as e:
                raise ProxyProcessError(str(e)) from None
            except MessageError as e:
                raise ProxyProcessError("the metadata proxy process answered badly: %s" % e) from None

    async def set_identities(self, identities: dict[str, Identity]) -> None:
        self.identities = identities
        await self._tell(Identities(identities))

    async def set_upstream(self, upstream: NovaAddress | None) -> None:
        self.upstream = upstream
        await self._tell(SetUpstream(upstream))

    async def _tell(self, msg: Any) -> None:
        try:
            await self._call(msg)
        except ProxyProcessError as e:  # the watchdog restarts it with the current state
            log.error("%s", e)

    async def set_faults(self, rules: list[FaultSpec]) -> None:
        """Replace the fault rules; ProxyProcessError if the process did not take them (they are
        kept, and given to the next process)."""
        self.faults = rules
        await self._call(SetFaults(rules), timeout=3)

    async def report(self) -> ProxyReport:
        """Its counters, load and memory; ProxyProcessError if it does not answer."""
        return await self._call(ProxyStatsRequest(), timeout=3)  # well inside the CLI's own 10 s

    async def journal(self, query: ProxyJournalQuery) -> JournalPage:
        return await self._call(query, timeout=3)

    async def fault_records(self) -> list[FaultRecord]:
        """The rules in force as the process applies them (how often each applied, what time is left)."""
        return await self._call(ProxyFaultList(), timeout=3)

    async def _watchdog(self) -> None:
        while not self._stopping:
            proc = self._proc
            if proc is not None:
                code = await proc.wait()
                if self._stopping:
                    return
                log.error("the metadata proxy process (pid %d) exited with %s: restarting it", proc.pid, code)
            self._close_pipe()
            await asyncio.sleep(RESTART_DELAY)  # no tight loop if it cannot start
            try:
                await self._spawn()
                self.restarts += 1
                log.info("metadata proxy process restarted (pid %d)", self.pid)
            except (ProxyProcessError, OSError) as e:
                log.error("could not restart the metadata proxy process: %s", e)
                self._proc = None

    def _close_pipe(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    async def _kill(self) -> None:
        self._close_pipe()
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        try:
            await asyncio.wait_for(proc.wait(), 5)  # it exits when the socket closes
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def stop(self) -> None:
        self._stopping = True
        if self._watch is not None:
            self._watch.cancel()
        await self._kill()
