"""The metadata proxy's process: ``python -m vrouter.services.metadata.worker FD``, started by the agent.

It reads the messages of ``vrouter.messages`` from the socket ``FD`` (one end
of a socketpair; the agent holds the other, see ``supervisor``) and answers
each: ``ProxyConfig`` starts the proxy (the answer comes once it listens),
``Identities`` and ``SetUpstream`` replace who is behind each metadata IP and
where Nova is (a fabric IP is picked at random per connection),
``ProxyStatsRequest`` reports its counters, load and memory,
``ProxyJournalQuery`` reads the journal, ``SetFaults`` replaces the fault
rules and ``ProxyFaultList`` lists them as they stand (how often each applied).
It exits when the socket closes.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import random
import signal
import socket
import ssl
import sys
import time

from vrouter import eventloop
from vrouter.agent.procinfo import own_memory
from vrouter.messages import (
    MAX_MESSAGE,
    PROXY_OPS,
    Ack,
    Identities,
    Identity,
    JournalPage,
    MessageError,
    ProxyConfig,
    ProxyFaultList,
    ProxyJournalQuery,
    ProxyReport,
    ProxyStatsRequest,
    SetFaults,
    SetUpstream,
    decode_request,
    encode_answer,
)
from vrouter.services.metadata.faults import Rule
from vrouter.services.metadata.nova_side import Upstream, client_tls
from vrouter.services.metadata.proxy import MetadataProxy

log = logging.getLogger("vrouter.metadata")


class WorkerError(Exception):
    """A request the worker cannot carry out; the text goes back to the agent."""


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
        if isinstance(request, Identities):
            self.identities = request.by_metadata_ip
            return Ack()
        if isinstance(request, SetUpstream):
            up = request.upstream
            self.upstreams = [Upstream(ip, up.port, self.tls) for ip in up.ips] if up else []
            return Ack()
        p = self.proxy
        if p is None:
            raise WorkerError("%s before the proxy is configured" % type(request).__name__)
        if isinstance(request, ProxyStatsRequest):
            tally = p.journal.bring_up_to_date()
            return ProxyReport(p.stats, p.load(), own_memory(), os.getpid(), p.vif_report(), tally.statuses(), tally.nova.message(),
                               tally.request.message(), p.journal.dropped)  # fmt: skip
        if isinstance(request, ProxyJournalQuery):
            entries = p.journal.query(request.since, request.instance, request.vif, request.limit)
            return JournalPage([e.message() for e in entries], p.journal.last, p.journal.dropped)
        if isinstance(request, SetFaults):
            applied = {r.id: r.applied for r in p.faults.rules}
            rules = []
            for f in request.rules:
                rule = Rule.of(f)
                rule.applied = max(applied.get(f.id, 0), f.applied)
                rules.append(rule)
            p.faults.set(rules)
            return Ack()
        if isinstance(request, ProxyFaultList):
            now = time.monotonic()
            p.faults.expire(now)
            return [r.record(now) for r in p.faults.rules]
        raise WorkerError("%s before the proxy is configured" % type(request).__name__)

    async def _configure(self, c: ProxyConfig) -> None:
        try:
            if c.tls is not None:
                self.tls = client_tls(c.tls.ca, c.tls.cert, c.tls.key)
        except (OSError, ssl.SSLError) as e:
            raise WorkerError("[METADATA] TLS files: %s" % e) from None
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
            raise WorkerError("metadata proxy cannot listen on %s port %s: %s" % (", ".join(c.hosts), c.port, e.strerror or e)) from None


async def serve(fd: int) -> None:
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_connection(sock=sock, limit=MAX_MESSAGE)
    worker = Worker()
    try:
        while line := await reader.readline():
            try:
                _, request = decode_request(line, PROXY_OPS)
                answer = encode_answer(await worker.handle(request))
            except MessageError as e:
                answer = encode_answer(error="bad request: %s" % e)
            except WorkerError as e:
                answer = encode_answer(error=str(e))
            writer.write(answer)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    if worker.proxy is not None:
        await worker.proxy.stop()


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the agent stops us, by closing the socket
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s[proxy]: %(message)s")
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        print("usage: python -m vrouter.services.metadata.worker FD (started by vrouter agent)", file=sys.stderr)
        return 2
    try:
        eventloop.run(serve(int(sys.argv[1])))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
