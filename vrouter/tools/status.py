"""``vrouter status``: is the agent up, and how are it and its proxy process doing."""

from __future__ import annotations

from vrouter.messages.control import Status


def format_status(st: Status) -> str:
    text = "agent pid %d up %.0f s: vhost0 %s, metadata proxy port %d, %d ports, %d link-local services, %d active flow entries" % (
        st.pid, st.uptime_s, st.vhost_ip, st.metadata_proxy_port, st.ports, st.linklocal_services, st.flows_active,
    )  # fmt: skip
    if st.introspect:
        text += "\nintrospect %s (metrics for Prometheus at %smetrics)" % (st.introspect, st.introspect)
    if st.datapath == "ebpf":
        text += "\ndatapath ebpf: programs %s on %d devices, flow table map %d" % (
            " ".join(str(i) for i in st.bpf_programs), len(st.bpf_devices), st.bpf_flow_map,
        )  # fmt: skip
    else:
        text += "\ndatapath %s" % st.datapath
    if len(st.dataplane_workers) > 1:
        text += "\ndataplane workers: %d, pids %s (restarts: %d)" % (
            len(st.dataplane_workers), " ".join(str(p) if p else "(restarting)" for p in st.dataplane_workers), st.dataplane_worker_restarts,
        )  # fmt: skip
    proxy = st.proxy
    if proxy.error is not None:
        text += "\nmetadata proxy process: %s" % proxy.error
    elif proxy.pid:
        text += "\nmetadata proxy process pid %d (restarts: %d): %d requests, %d VM connections open, %d idle to Nova" % (
            proxy.pid, proxy.restarts, proxy.requests, proxy.vm_connections, proxy.upstream_idle,
        )  # fmt: skip
    if proxy.per_vif:
        text += "\nmetadata per vif (the vRouter agent's counters):\n    vif      requests  responses  proxy sessions  internal errors"
        for vif, c in sorted(proxy.per_vif.items()):
            text += "\n    vif0/%-3d %8d  %9d  %14d  %15d" % (vif, c.requests, c.responses, c.proxy_sessions, c.internal_errors)
    cl = st.cluster
    if cl is not None:
        text += "\ncluster: node %s, etcd %s %s, revision %d, %d resyncs, %d routes to %d other nodes%s" % (
            cl.node, ", ".join(cl.servers), "connected" if cl.connected else "NOT REACHABLE" + (" (%s)" % cl.error if cl.error else ""),
            cl.revision, cl.resyncs, cl.remote_routes,
            cl.remote_nodes, ", %d changes waiting for etcd" % cl.pending if cl.pending else "",
        )  # fmt: skip
    if st.verdict_write_errors:
        text += "\nNFQUEUE verdict writes failed %d times (their packets were dropped; see the agent's log)" % st.verdict_write_errors
    return text
