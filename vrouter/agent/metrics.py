"""The agent's metrics for Prometheus, at ``http://<vhost0 address>:<metrics_port>/metrics``.

Port 8085 by default: the vRouter agent's introspect port (``[DEFAULT]
http_server_port`` there), which serves the introspect pages beside them
(``vrouter.introspect.server``); ``[DEFAULT] metrics_port`` here, 0 to serve
neither.  It listens on vhost0's address in the compute namespace only.

The text is made by the official client (prometheus_client) from what the
agent and its proxy process hold at the moment of the scrape: nothing is
counted twice, and nothing is kept for Prometheus between scrapes.  A scrape
asks the proxy process for its report first (``vrouter_metadata_proxy_up`` is
0 when it does not answer, and its metrics are left out).

Names follow Prometheus' conventions: ``vrouter_`` first, base units
(seconds, bytes), ``_total`` on counters.  A flow is one entry of the table
(one direction), as ``flow -l`` lists them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from dataplane.linux.totals import Totals
from flows.layout import DROP_NAMES
from vrouter.agent.rate import RATE_WINDOW
from vrouter.messages.proxy import Histogram, ProxyReport

if TYPE_CHECKING:
    from vrouter.agent.node import Node

log = logging.getLogger("vrouter.agent")


def _histogram(name: str, doc: str, h: Histogram) -> HistogramMetricFamily:
    buckets = [("%g" % le, n) for le, n in zip(h.bounds, h.counts, strict=True)] + [("+Inf", h.count)]
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=h.sum)


class AgentCollector(Collector):
    """The metrics of one agent, from its state and the proxy's last report."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.report: ProxyReport | None = None  # set before each scrape
        self.totals: Totals | None = None  # ... and the dataplane workers' counters added up

    def collect(self) -> Iterator[Metric]:
        node = self.node
        dp = node.dp
        t = self.totals
        if t is None:
            return
        vifs = sorted(dp.vifs.values(), key=lambda v: v.index)
        packets = CounterMetricFamily("vrouter_vif_packets", "Packets through a vif.", labels=["vif", "name", "direction"])
        octets = CounterMetricFamily("vrouter_vif_bytes", "IP bytes through a vif.", labels=["vif", "name", "direction"])
        drops = CounterMetricFamily("vrouter_vif_drops", "Packets of a vif the dataplane dropped, by reason (as dropstats names them).",
                                    labels=["vif", "name", "reason"])  # fmt: skip
        flows = GaugeMetricFamily("vrouter_vif_flows", "Flow entries that count against a vif's limit.", labels=["vif", "name"])
        by_vif: dict[int, list[tuple[str, int]]] = {}
        for (index, reason), n in sorted(t.vif_drops.items()):
            by_vif.setdefault(index, []).append((DROP_NAMES.get(reason, str(reason)), n))
        overflows = node.queues.drops.read()
        for v in vifs:
            i = str(v.index)
            overflow = node.queues.overflows_of(v, overflows)
            if overflow:
                drops.add_metric([i, v.name, "Queue Overflow"], overflow)
            rx_p, rx_b, tx_p, tx_b, _, nflows = t.vif(v.index)
            packets.add_metric([i, v.name, "rx"], rx_p)
            packets.add_metric([i, v.name, "tx"], tx_p)
            octets.add_metric([i, v.name, "rx"], rx_b)
            octets.add_metric([i, v.name, "tx"], tx_b)
            for name, n in by_vif.get(v.index, ()):
                drops.add_metric([i, v.name, name], n)
            flows.add_metric([i, v.name], nflows)
        yield from (packets, octets, drops, flows)
        node_drops = CounterMetricFamily("vrouter_drops", "Packets the dataplane dropped, by reason, on every vif and none.", labels=["reason"])
        for reason, n in sorted(t.drops.items()):
            node_drops.add_metric([DROP_NAMES.get(reason, str(reason))], n)
        node_drops.add_metric(["Queue Overflow"], node.queues.all_overflows(overflows))
        yield node_drops
        yield GaugeMetricFamily("vrouter_flows_active", "Flow entries in the table (one direction each, as flow -l lists them).",
                                value=t.active)  # fmt: skip
        yield CounterMetricFamily("vrouter_flow_setups", "Flow entries set up since the agent started.", value=t.added)
        yield CounterMetricFamily("vrouter_flow_removals", "Flow entries removed (aged, closed, or with their vif or service).",
                                  value=t.removed)  # fmt: skip
        yield GaugeMetricFamily("vrouter_flow_setups_per_second", "Flow entries set up per second over the last %g s." % RATE_WINDOW,
                                value=node.setup_rate.rate())  # fmt: skip
        yield GaugeMetricFamily("vrouter_ports", "VM ports plugged.", value=len(node.state.ports))
        if node.cluster is not None:
            cl = node.cluster.state()
            yield GaugeMetricFamily("vrouter_cluster_connected", "Whether the cloud's etcd answers this node.", value=int(cl.connected))
            yield GaugeMetricFamily("vrouter_cluster_remote_routes", "Routes to VMs on other nodes (through their tunnels).", value=cl.remote_routes)
            yield GaugeMetricFamily("vrouter_cluster_pending_changes", "Changes made on this node that wait for etcd.", value=cl.pending)
            yield CounterMetricFamily("vrouter_cluster_resyncs", "Full loads from etcd (one per (re)connection).", value=cl.resyncs)
            yield GaugeMetricFamily("vrouter_cluster_revision", "etcd's revision of the last change applied on this node.", value=cl.revision)
        yield CounterMetricFamily("vrouter_metadata_proxy_restarts", "Times the metadata proxy process was restarted.", value=node.proxy.restarts)
        r = self.report
        yield GaugeMetricFamily("vrouter_metadata_proxy_up", "Whether the metadata proxy process answered this scrape.", value=int(r is not None))
        if r is None:
            return
        by = CounterMetricFamily("vrouter_metadata_requests", "Metadata requests answered, by instance and status ('unknown': no instance).",
                                 labels=["instance", "status"])  # fmt: skip
        for instance, statuses in sorted(r.by_instance.items()):
            for status, n in sorted(statuses.items()):
                by.add_metric([instance or "unknown", str(status)], n)
        yield by
        per = {
            "requests": CounterMetricFamily("vrouter_metadata_vif_requests", "Metadata requests from a vif (the vRouter agent's counter).",
                                            labels=["vif"]),
            "responses": CounterMetricFamily("vrouter_metadata_vif_responses", "Metadata responses to a vif.", labels=["vif"]),
            "proxy_sessions": CounterMetricFamily("vrouter_metadata_vif_proxy_sessions", "Connections from a vif to the proxy.", labels=["vif"]),
            "internal_errors": CounterMetricFamily("vrouter_metadata_vif_internal_errors", "Internal errors serving a vif.", labels=["vif"]),
        }  # fmt: skip
        for vif, c in sorted(r.per_vif.items()):
            for name, family in per.items():
                family.add_metric([str(vif)], getattr(c, name))
        yield from per.values()
        if r.nova_seconds is not None:
            yield _histogram("vrouter_metadata_nova_latency_seconds", "From a request's relay to Nova to the head of Nova's answer.", r.nova_seconds)
        if r.request_seconds is not None:
            yield _histogram("vrouter_metadata_request_duration_seconds", "From a request's first byte to its answer's last.", r.request_seconds)
        yield GaugeMetricFamily("vrouter_metadata_proxy_vm_connections", "Connections from VMs open at the proxy.", value=r.load.vm_connections)
        yield GaugeMetricFamily("vrouter_metadata_proxy_nova_idle_connections", "Idle keep-alive connections to Nova.", value=r.load.upstream_idle)
        s = r.stats
        yield CounterMetricFamily("vrouter_metadata_proxy_upstream_errors", "Requests Nova failed.", value=s.upstream_errors)
        yield CounterMetricFamily("vrouter_metadata_proxy_rate_limited", "Requests answered 429 by the rate limit.", value=s.rate_limited)
        yield CounterMetricFamily("vrouter_metadata_journal_dropped", "Journal entries pushed out of full rings.", value=r.journal_dropped)


class Metrics:
    """``GET /metrics`` (the introspect server routes it here): the collector's text, from the
    agent's state and the proxy's report fetched for this scrape."""

    def __init__(self, collector: AgentCollector, refresh: Callable[[], Awaitable[tuple[ProxyReport | None, Totals]]]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        self.collector = collector
        self.refresh = refresh
        self.scrapes = 0

    async def scrape(self) -> tuple[str, bytes]:
        """(Content-Type, body)."""
        self.collector.report, self.collector.totals = await self.refresh()
        self.scrapes += 1
        began = time.perf_counter()
        body = generate_latest(self.registry)
        log.debug("metrics scrape: %d bytes in %.1f ms", len(body), (time.perf_counter() - began) * 1000)
        return CONTENT_TYPE_LATEST, body
