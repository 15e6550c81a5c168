"""The metadata proxy's process: ``python -m vrouter.services.metadata.worker FD``, started by the agent.

It answers the messages of ``vrouter.messages.proxy`` on the socket ``FD``
(``infra.children.serve``; the agent holds the other end, see ``supervisor``): ``ProxyConfig`` starts the proxy (the answer comes once it listens),
``IdentityChanges`` says who is behind some metadata IPs now (all of them, to a
new process), ``SetUpstream`` where Nova is (a fabric IP is picked at random per connection),
``ProxyStatsRequest`` reports its counters, load and memory,
``JournalQuery`` reads the journal, ``JournalMark`` puts an event in it, ``SetFaults`` replaces the fault
rules and ``FaultList`` lists them as they stand (how often each applied).
It exits when the socket closes.
"""

from __future__ import annotations

import gc
import logging
import os
import random
import signal
import ssl
import sys
import time
from collections.abc import Callable
from typing import Any

from infra.children import Refusal, run, serve
from infra.procinfo import own_memory
from vrouter.messages.proxy import (
    Ack,
    FaultList,
    FaultRecord,
    IdentityChanges,
    JournalMark,
    JournalPage,
    JournalQuery,
    ProxyConfig,
    ProxyReport,
    ProxyStatsRequest,
    SetFaults,
    SetUpstream,
)
from vrouter.model import Identity
from vrouter.services.metadata.faults import Rule
from vrouter.services.metadata.nova_side import Upstream, client_tls
from vrouter.services.metadata.proxy import MetadataProxy

log = logging.getLogger("vrouter.metadata")


class Worker:
    def __init__(self) -> None:
        self.proxy: MetadataProxy | None = None
        self.identities: dict[str, Identity] = {}
        self.upstreams: list[Upstream] = []
        self.tls: ssl.SSLContext | None = None

    def identify(self, peer_ip: str) -> Identity | None:
        return self.identities.get(peer_ip.split("%", 1)[0])

    def upstream(self) -> Upstream | None:
        if not self.upstreams:
            return None
        return self.upstreams[0] if len(self.upstreams) == 1 else random.choice(self.upstreams)

    async def handle(self, request: object) -> object:
        if isinstance(request, ProxyConfig):
            await self._configure(request)
            return Ack()
        if isinstance(request, IdentityChanges):
            if request.replace:
                self.identities = {}
            for ip, who in request.by_metadata_ip.items():
                if who is None:
                    self.identities.pop(ip, None)
                else:
                    self.identities[ip] = who
            return Ack()
        if isinstance(request, SetUpstream):
            up = request.upstream
            self.upstreams = [Upstream(ip, up.port, self.tls) for ip in up.ips] if up else []
            return Ack()
        p = self.proxy
        handler = _QUERIES.get(type(request))
        if p is None or handler is None:
            raise Refusal("%s before the proxy is configured" % type(request).__name__)
        return handler(p, request)

    async def _configure(self, c: ProxyConfig) -> None:
        try:
            if c.tls is not None:
                self.tls = client_tls(c.tls.ca, c.tls.cert, c.tls.key)
        except (OSError, ssl.SSLError) as e:
            raise Refusal("[METADATA] TLS files: %s" % e) from None
        try:
            self.proxy = MetadataProxy(
                self.identify,
                self.upstream,
                c.secret,
                read_timeout=c.read_timeout,
                fairness=c.fairness,
                journal_size=c.journal_size,
                journal_node_size=c.journal_node_size,
            )
            await self.proxy.start(c.hosts, c.port)
            gc.freeze()  # start-up's objects stay: out of the collector's full passes
        except OSError as e:
            raise Refusal("metadata proxy cannot listen on %s port %s: %s" % (", ".join(c.hosts), c.port, e.strerror or e)) from None


def _report(p: MetadataProxy, _: ProxyStatsRequest) -> ProxyReport:
    tally = p.journal.bring_up_to_date()
    return ProxyReport(p.stats, p.load(), own_memory(), os.getpid(), p.vif_report(), tally.statuses(), tally.nova.message(),
                       tally.request.message(), p.journal.dropped)  # fmt: skip


def _journal(p: MetadataProxy, q: JournalQuery) -> JournalPage:
    entries = p.journal.query(q.since, q.instance, q.vif, q.limit)
    return JournalPage([e.message() for e in entries], p.journal.last, p.journal.dropped)


def _mark(p: MetadataProxy, m: JournalMark) -> Ack:
    p.journal.mark(time.monotonic(), m.vif, m.instance, m.what, m.note)
    return Ack()


def _set_faults(p: MetadataProxy, request: SetFaults) -> Ack:
    applied = {r.id: r.applied for r in p.faults.rules}
    rules = []
    for f in request.rules:
        rule = Rule.of(f)
        rule.applied = max(applied.get(f.id, 0), f.applied)
        rules.append(rule)
    p.faults.set(rules)
    return Ack()


def _fault_list(p: MetadataProxy, _: FaultList) -> list[FaultRecord]:
    now = time.monotonic()
    p.faults.expire(now)
    return [r.record(now) for r in p.faults.rules]


# the questions a configured proxy answers, by the request's type
_QUERIES: dict[type, Callable[[MetadataProxy, Any], object]] = {
    ProxyStatsRequest: _report,
    JournalQuery: _journal,
    JournalMark: _mark,
    SetFaults: _set_faults,
    FaultList: _fault_list,
}


async def _serve(fd: int) -> None:
    worker = Worker()
    try:
        await serve(fd, worker.handle)
    finally:
        if worker.proxy is not None:
            await worker.proxy.stop()


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the agent stops us, by closing the socket
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s[proxy]: %(message)s")
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        print("usage: python -m vrouter.services.metadata.worker FD (started by vrouter agent)", file=sys.stderr)
        return 2
    try:
        run(_serve(int(sys.argv[1])))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
