"""A tool run inside a node's namespace acts on that node, also when --prefix names its cluster
(``ip netns exec P-compute2 vrouter ... --prefix P``), in a cluster of two nodes."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.helpers import VROUTER

pytestmark = pytest.mark.netns


def run(namespace, *args):
    cmd = [str(VROUTER), *args]
    if namespace:
        cmd = ["ip", "netns", "exec", namespace, *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


def test_a_tool_in_a_nodes_namespace_acts_on_that_node_with_or_without_prefix(make_cluster):
    h = make_cluster(nodes=2, vms=2)
    p = h.prefix
    node1, node2 = h.nodes
    for node in (node1, node2):
        for prefix in ((), ("--prefix", p)):
            r = run(node["namespace"], "status", "--json", *prefix)
            assert r.returncode == 0, r.stderr
            assert json.loads(r.stdout)["vhost_ip"] == node["vhost0"], (node["namespace"], prefix)
    # --node wins over the namespace
    r = run(node2["namespace"], "status", "--json", "--prefix", p, "--node", "1")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["vhost_ip"] == node1["vhost0"]
    # the command: no "say which with --node I"
    r = run(node2["namespace"], "linklocal", "add", "--linklocal_service_name", "ntpx", "--linklocal_service_ip", "169.254.1.123",
            "--linklocal_service_port", "123", "--ipfabric_service_ip", "10.99.0.1", "--ipfabric_service_port", "123", "--prefix", p)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "link-local service ntpx set" in r.stdout
    # outside the cluster's nodes, --prefix P alone still asks which node
    r = run("", "status", "--prefix", p)
    assert r.returncode == 1 and "prefix %s is a cluster of 2 nodes: say which with --node I (1, 2)" % p in r.stderr, r.stderr
