"""The messages between the agent and its metadata proxy process (``vrouter.services.metadata``).

The agent's ``ProxyProcess`` sends them and the process's ``worker`` answers
each (framed by ``infra.children``): the proxy's configuration, who is behind
each metadata IP (as changes: a port plugged sends its own identity), where
Nova is, the fault rules, and the questions about its counters, journal and
rules.  The journal's and the rules' records go on to the CLI as they are
(``vrouter.messages.control`` answers with them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vrouter.model import Identity, NovaAddress


@dataclass
class IdentityChanges:
    """Who is behind these metadata IPs (IPv4 and IPv6) now; None: nobody.  ``replace``: these are
    all of them (a new process's first)."""

    by_metadata_ip: dict[str, Identity | None]
    replace: bool = False


@dataclass(frozen=True)
class Fairness:
    """What one VM may take of the proxy.

    ``header_timeout``: seconds a client has to send a whole request head once it has started
    (slowloris: 408 and close); ``body_timeout``: the same for its body.
    ``max_connections_per_vm``: open connections per VM (more: 429 and close).  Rate limit, as
    Neutron's metadata agent configures it: more than ``base_limit`` requests in ``base_window``
    seconds, or more than ``burst_limit`` in ``burst_window``: 429.
    """

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections_per_vm: int = 64
    rate_limit: bool = False
    base_window: float = 10.0
    base_limit: int = 10
    burst_window: float = 10.0
    burst_limit: int = 10


@dataclass(frozen=True)
class TlsFiles:
    """[METADATA] metadata_ca_cert, metadata_client_cert, metadata_client_key."""

    ca: str = ""
    cert: str = ""
    key: str = ""


@dataclass
class ProxyConfig:
    """What the proxy process needs to listen and to reach Nova."""

    hosts: list[str]
    port: int
    secret: str
    read_timeout: float
    fairness: Fairness
    tls: TlsFiles | None = None
    journal_size: int = 500  # entries kept per instance
    journal_node_size: int = 50_000  # entries kept in all


@dataclass
class SetUpstream:
    upstream: NovaAddress | None = None  # None: no metadata service is configured


@dataclass
class Ack:
    pass


@dataclass
class ProxyStatsRequest:
    pass


@dataclass
class ProxyCounters:
    """The proxy's counters: the vRouter agent's (requests, responses, proxy sessions, internal
    errors) and this project's."""

    requests: int = 0
    responses: int = 0
    proxy_sessions: int = 0
    internal_errors: int = 0
    upstream_errors: int = 0
    rate_limited: int = 0
    connections_refused: int = 0
    header_timeouts: int = 0
    status: dict[int, int] = field(default_factory=dict)

    def count(self, status: int) -> None:
        """An answer with ``status`` went to a VM."""
        self.responses += 1
        self.status[status] = self.status.get(status, 0) + 1


@dataclass
class ProxyLoad:
    vm_connections: int  # open connections from VMs
    upstream_idle: int  # idle in the keep-alive pool towards Nova


@dataclass
class VifMetadataCounters:
    """The vRouter agent's own metadata counters, for one vif."""

    requests: int = 0
    responses: int = 0
    proxy_sessions: int = 0
    internal_errors: int = 0


@dataclass
class Histogram:
    """Prometheus-style: cumulative counts per upper bound (seconds), then the sum and count."""

    bounds: list[float]
    counts: list[int]
    sum: float = 0.0
    count: int = 0


@dataclass
class ProxyReport:
    stats: ProxyCounters
    load: ProxyLoad
    memory: dict[str, int]
    pid: int
    per_vif: dict[int, VifMetadataCounters] = field(default_factory=dict)
    by_instance: dict[str, dict[int, int]] = field(default_factory=dict)  # instance -> status -> answers
    nova_seconds: Histogram | None = None
    request_seconds: Histogram | None = None
    journal_dropped: int = 0


def _sum_histograms(a: Histogram | None, b: Histogram | None) -> Histogram | None:
    if a is None or b is None or a.bounds != b.bounds:
        return b if b is not None else a
    return Histogram(b.bounds, [x + y for x, y in zip(a.counts, b.counts, strict=True)], a.sum + b.sum, a.count + b.count)


def add_reports(before: ProxyReport, now: ProxyReport) -> ProxyReport:
    """``now``'s report with ``before``'s counters added (what proxy processes that died counted);
    the load, memory and pid are ``now``'s."""
    a, b = before.stats, now.stats
    stats = ProxyCounters(**{k: getattr(a, k) + getattr(b, k) for k in ProxyCounters.__dataclass_fields__ if k != "status"})
    stats.status = {s: a.status.get(s, 0) + b.status.get(s, 0) for s in a.status.keys() | b.status.keys()}
    per_vif = {v: VifMetadataCounters() for v in before.per_vif.keys() | now.per_vif.keys()}
    for part in (before.per_vif, now.per_vif):
        for v, c in part.items():
            mine = per_vif[v]
            mine.requests += c.requests
            mine.responses += c.responses
            mine.proxy_sessions += c.proxy_sessions
            mine.internal_errors += c.internal_errors
    by_instance: dict[str, dict[int, int]] = {}
    for part2 in (before.by_instance, now.by_instance):
        for inst, statuses in part2.items():
            mine2 = by_instance.setdefault(inst, {})
            for st, n in statuses.items():
                mine2[st] = mine2.get(st, 0) + n
    return ProxyReport(stats, now.load, now.memory, now.pid, per_vif, by_instance, _sum_histograms(before.nova_seconds, now.nova_seconds),
                       _sum_histograms(before.request_seconds, now.request_seconds), before.journal_dropped + now.journal_dropped)  # fmt: skip


@dataclass
class JournalQuery:
    """Entries after number ``since``; of one instance or vif if given."""

    since: int = 0
    instance: str | None = None
    vif: int | None = None
    limit: int = 1000


@dataclass
class JournalEntry:
    seq: int
    time: float
    vif: int
    instance: str
    vm_ip: str
    method: str
    path: str
    status: int
    bytes_in: int
    bytes_out: int
    nova_ms: float
    total_ms: float
    reason: str
    fault: int


@dataclass
class JournalPage:
    entries: list[JournalEntry]
    last: int  # the number of the newest entry of the whole journal
    dropped: int  # entries pushed out of full rings so far


@dataclass
class FaultSpec:
    """A rule as the proxy process applies it."""

    id: int
    instance: str
    vif: int
    path: str
    effect: str
    value: float
    count: int
    until: float  # CLOCK_MONOTONIC deadline, 0: none
    probability: float
    for_s: float
    applied: int = 0  # times it applied so far, as the agent last heard (a new proxy process goes on from there)


@dataclass
class JournalMark:
    """An event of an instance's life put in its journal between its requests (``vrouter-lab``
    marks power-on, reboot and rebuild): method ``LAB``, path ``/<what>``, no status."""

    instance: str
    what: str  # boot, reboot, rebuild, ...
    note: str = ""  # shown as the entry's reason
    vif: int = 0


@dataclass
class SetFaults:
    rules: list[FaultSpec]


@dataclass
class FaultList:
    pass


@dataclass
class FaultRecord:
    id: int
    target: str  # "instance U", "vif N" or "all"
    path: str
    effect: str
    value: float
    count: int  # 0: not bounded by a count
    for_s: float
    probability: float
    applied: int
    left_s: float | None = None  # seconds until it ends, when bounded by time
