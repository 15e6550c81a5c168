"""The emulated host as data (pure), how a tool finds its agent (pure), and namespaces made
without ip(8) (root)."""

import os
import socket
import subprocess

import pytest

from tests.helpers import ROOT, unique_prefix
from topology import netns
from topology.model import MAX_VMS, Topology
from vrouter.tools import locate


def test_plan_gives_every_vm_its_own_names_and_addresses():
    t = Topology.plan("ab", 50, "/run/vrouter/ab", secret="s")
    for attr in ("name", "namespace", "ip", "mac", "tap", "port_uuid", "instance_uuid", "ipv6"):
        assert len({getattr(v, attr) for v in t.vms}) == 50, attr
    assert t.vms[0].ip == "10.1.1.3" and t.vms[0].tap == "tap" + t.vms[0].port_uuid[:11] and t.vms[49].namespace == "ab-vm50"
    assert all(len(v.tap) <= 15 for v in t.vms)  # an interface name
    with pytest.raises(ValueError, match="from 1 to %d" % MAX_VMS):
        Topology.plan("ab", MAX_VMS + 1, "/x")


def test_vms_are_dealt_out_to_networks_each_its_own_subnet():
    t = Topology.plan("ab", 7, "/x", secret="s", networks=3)
    assert [n.subnet for n in t.networks] == ["10.1.1.0/24", "10.1.2.0/24", "10.1.3.0/24"]
    assert [v.ip for v in t.vms] == ["10.1.1.3", "10.1.2.3", "10.1.3.3", "10.1.1.4", "10.1.2.4", "10.1.3.4", "10.1.1.5"]
    assert [v.gateway for v in t.vms[:3]] == ["10.1.1.1", "10.1.2.1", "10.1.3.1"]
    assert len({v.mac for v in t.vms}) == 7 and len({v.ipv6 for v in t.vms}) == 7
    assert t.vms[1].vn_uuid == t.networks[1].uuid and t.vms[1].network == "ab-net2"
    inst = t.instances()["instances"]
    assert inst[2]["dns_server"] == "10.1.3.2" and inst[2]["vn_uuid"] == t.networks[2].uuid
    assert [n["subnet"] for n in t.layout()["networks"]] == [n.subnet for n in t.networks]
    one = Topology.plan("ab", 252, "/x")  # one network as long as the VMs fit, as before
    assert len(one.networks) == 1 and one.vms[-1].ip == "10.1.1.254"
    many = Topology.plan("ab", 1000, "/x")  # as many as they need
    assert len(many.networks) == 4 and len({v.ip for v in many.vms}) == 1000
    for bad in (2, 8):
        with pytest.raises(ValueError, match="--networks"):
            Topology.plan("ab", 7 if bad == 8 else 600, "/x", networks=bad)


def test_layout_and_instances_describe_the_same_vms():
    t = Topology.plan("ab", 2, "/run/vrouter/ab", secret="s", tls=True)
    layout, inst = t.layout(), t.instances()["instances"]
    assert layout["namespaces"] == {"compute": "ab-compute", "computes": ["ab-compute"], "fabric": "ab-fabric", "vms": ["ab-vm1", "ab-vm2"]}
    assert layout["nova"]["url"] == "https://10.10.0.1:8775" and layout["secret"] == "s"
    assert [i["uuid"] for i in inst] == [v["instance_uuid"] for v in layout["vms"]]
    assert inst[0]["project_id"] == layout["vms"][0]["project_id"].replace("-", "")  # Nova's form: no dashes
    assert "metadata_use_ssl = true" in t.agent_conf() and "/run/vrouter/ab/tls/ca.pem" in t.agent_conf()


def test_a_compute_namespace_names_its_prefix():
    assert locate.prefix_of_namespace("demo-compute") == "demo"
    assert locate.prefix_of_namespace("demo-fabric") is None
    assert locate.prefix_of_namespace("demo-vm1") is None


def test_tools_use_the_one_node_up_and_name_them_all_when_several(tmp_path, monkeypatch):
    monkeypatch.setenv("VROUTER_STATE_ROOT", str(tmp_path))
    monkeypatch.delenv("VROUTER_STATE_DIR", raising=False)
    monkeypatch.setattr(locate, "current_namespace", lambda: "")
    assert locate.state_dir(None, None) == str(tmp_path / "vr")  # none up: the default, which then says so
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "agent.sock").touch()
    (tmp_path / "stopped").mkdir()  # a node whose agent is not running does not count
    assert locate.state_dir(None, None) == str(tmp_path / "one")
    (tmp_path / "two").mkdir()
    (tmp_path / "two" / "flows.shm").touch()
    with pytest.raises(locate.Ambiguous, match=r"2 vrouter nodes are up \(one, two\).*--prefix"):
        locate.state_dir(None, None)
    assert locate.state_dir(None, "two") == str(tmp_path / "two")
    assert locate.state_dir("/elsewhere", "two") == "/elsewhere"
    assert locate.state_dir(None, None, single_node=False) == str(tmp_path / "vr")  # the agent itself does not guess
    monkeypatch.setattr(locate, "current_namespace", lambda: "three-compute")
    assert locate.state_dir(None, None) == str(tmp_path / "three")  # inside a node: that node, whatever else is up


@pytest.mark.netns
def test_namespaces_are_made_entered_and_removed_without_ip():
    a, b = unique_prefix() + "-a", unique_prefix() + "-b"
    netns.create(a)
    netns.create(b)
    try:
        with pytest.raises(netns.NamespaceError, match="exists already"):
            netns.create(a)
        host_links = socket.if_nameindex()
        with netns.Namespace(a) as na, netns.Namespace(b) as nb:
            assert [link.get_attr("IFLA_IFNAME") for link in na.ipr.get_links()] == ["lo"]  # not the host's
            na.ipr.link("add", ifname="va", kind="veth", peer={"ifname": "vb", "net_ns_fd": nb.fd})
            nb.sysctl({"net.ipv6.conf.vb.accept_dad": "0"})
            assert nb.run(lambda: open("/proc/sys/net/ipv6/conf/vb/accept_dad").read().strip()) == "0"
            assert nb.index("vb") > 0
            with pytest.raises(netns.NamespaceError, match="no interface"):
                na.index("vb")
        assert socket.if_nameindex() == host_links  # nothing appeared on the host
        fds = len(os.listdir("/proc/self/fd"))
        for _ in range(5):
            netns.Namespace(a).close()
        assert len(os.listdir("/proc/self/fd")) == fds  # nothing left open
    finally:
        assert netns.delete(a) and netns.delete(b)
    assert not netns.exists(a) and not netns.delete(a)


@pytest.mark.netns
def test_the_demo_runs_and_leaves_nothing_behind():
    """make demo's script, under a prefix of its own: each step works, and down removes the node."""
    prefix = unique_prefix()
    r = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh"), prefix], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.count('"uuid"') == 2 and "vm1: 503" in r.stdout and "vm2: 200" in r.stdout and "hostname: changed-live" in r.stdout
    assert "fault 1" in r.stdout and "down: prefix %s removed" % prefix in r.stdout + r.stderr
    assert not [n for n in netns.names() if n.startswith(prefix + "-")]


@pytest.mark.netns
def test_the_cloud_demo_runs_and_leaves_nothing_behind():
    """make demo NODES=1: three nodes, each VM's metadata, pings over the overlay, the tools."""
    prefix = unique_prefix()
    r = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh"), prefix, "nodes"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.count("0% packet loss") == 6 and "100%" not in r.stdout
    assert all("hostname from the metadata service: vm%d" % i in r.stdout for i in (1, 2, 3))
    assert "Sip:10.10.0.2 Dip:10.10.0.4" in r.stdout and "MPLS Input Label Map" in r.stdout and "ntp " in r.stdout
    assert "down: prefix %s removed" % prefix in r.stdout + r.stderr
    assert not [n for n in netns.names() if n.startswith(prefix + "-")]


def test_tools_find_the_nodes_of_a_cluster(tmp_path, monkeypatch):
    monkeypatch.setenv("VROUTER_STATE_ROOT", str(tmp_path))
    monkeypatch.delenv("VROUTER_STATE_DIR", raising=False)
    monkeypatch.setattr(locate, "current_namespace", lambda: "")
    for n in (1, 2, 3):
        (tmp_path / "cl" / ("compute%d" % n)).mkdir(parents=True)
        (tmp_path / "cl" / ("compute%d" % n) / "agent.sock").touch()
    assert locate.node_of_namespace("cl-compute2") == ("cl", 2) and locate.node_of_namespace("cl-compute") == ("cl", 0)
    assert locate.state_dir(None, "cl", node=2) == str(tmp_path / "cl" / "compute2")
    assert locate.state_dir(None, None, node=3) == str(tmp_path / "cl" / "compute3")  # the one cluster up
    with pytest.raises(locate.Ambiguous, match=r"cluster of 3 nodes: say which with --node I \(1, 2, 3\)"):
        locate.state_dir(None, "cl")
    with pytest.raises(locate.Ambiguous, match=r"prefix cl has no node 9 \(its nodes: 1, 2, 3\)"):
        locate.state_dir(None, "cl", node=9)
    with pytest.raises(locate.Ambiguous, match=r"3 vrouter nodes are up \(cl/compute1, cl/compute2, cl/compute3\)"):
        locate.state_dir(None, None)
    monkeypatch.setattr(locate, "current_namespace", lambda: "cl-compute3")
    assert locate.state_dir(None, None) == str(tmp_path / "cl" / "compute3")  # inside node 3
    # a single node's --node 1 is the node
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "agent.sock").touch()
    assert locate.state_dir(None, "one", node=1) == str(tmp_path / "one")


def test_a_cluster_plan_spreads_the_vms_over_nodes_and_networks():
    t = Topology.plan("cl", 6, "/run/vrouter/cl", nodes=3, networks=2)
    assert [(v.name, v.node, v.network) for v in t.vms] == [
        ("vm1", 1, "cl-net"), ("vm2", 1, "cl-net2"), ("vm3", 2, "cl-net"), ("vm4", 2, "cl-net2"), ("vm5", 3, "cl-net"), ("vm6", 3, "cl-net2"),
    ]  # fmt: skip
    assert [t.compute_of(n) for n in (1, 2, 3)] == ["cl-compute1", "cl-compute2", "cl-compute3"]
    assert [t.vhost_ip_of(n) for n in (1, 2, 3)] == ["10.10.0.2", "10.10.0.3", "10.10.0.4"]
    assert t.clustered and t.own_etcd and t.etcd_urls == ["http://10.10.0.1:2379"]
    conf = t.agent_conf(2)
    assert "hostname = cl-compute2" in conf and "servers = http://10.10.0.1:2379" in conf and "ip = 10.10.0.3/24" in conf
    layout = t.layout()
    assert [n["state_dir"] for n in layout["nodes"]] == ["/run/vrouter/cl/compute%d" % n for n in (1, 2, 3)]
    assert layout["nodes"][1]["vms"] == ["vm3", "vm4"] and layout["etcd"]["namespace"] == "cl-fabric"
    assert "flow_entries" not in conf
    t.flow_entries = 16384
    assert "flow_entries = 16384" in t.agent_conf(3)
    single = Topology.plan("one", 2, "/run/vrouter/one")
    assert single.compute_of(1) == "one-compute" and single.state_of(1) == "/run/vrouter/one" and not single.clustered
    assert "[ETCD]" not in single.agent_conf() and single.layout()["etcd"] is None
    with pytest.raises(ValueError, match="--nodes 4: from 1 to 3"):
        Topology.plan("cl", 3, "/x", nodes=4)
