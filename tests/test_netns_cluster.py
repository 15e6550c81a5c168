"""Several compute nodes configured through etcd, VM to VM across them over MPLS over UDP (needs
root).  The cluster: 3 nodes, 2 VMs each, 2 networks (vm1, vm2 on node 1; vm3, vm4 on node 2;
vm5, vm6 on node 3; vm1, vm3, vm5 on the first network, vm2, vm4, vm6 on the second), etcd and
Nova in the fabric namespace."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from infra.etcd import ConfigStore
from tests.emulated_host import EmulatedHost
from tests.helpers import SETUP, VROUTER, unique_prefix, wait_until
from topology import netns
from topology.lab import in_etcd

ECHO = str(Path(__file__).with_name("echo_server.py"))
# The shared cloud's traffic in both datapaths (in ebpf mode the tunnels still go through the
# engine, the rest of a node's traffic through the program); the cloud's configuration and its
# faults, the same in both, in nfqueue mode only
pytestmark = [pytest.mark.netns, pytest.mark.datapaths("nfqueue", "ebpf")]

SINK = """
import hashlib, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((sys.argv[1], 5001)); s.listen(1)
print("listening", flush=True)
c, _ = s.accept(); h = hashlib.sha256(); n = 0
while True:
    b = c.recv(65536)
    if not b:
        break
    h.update(b); n += len(b)
c.sendall(("%d %s" % (n, h.hexdigest())).encode()); c.close()
"""
SEND = """
import os, socket, sys
data = os.urandom(int(sys.argv[2])); s = socket.create_connection((sys.argv[1], 5001), timeout=20)
s.sendall(data); s.shutdown(socket.SHUT_WR); print(s.recv(200).decode(), __import__("hashlib").sha256(data).hexdigest())
"""


@pytest.fixture(scope="module")
def cloud(make_shared_cluster):
    """The cluster the tests that change nothing for good share."""
    return make_shared_cluster(nodes=3, vms=6, networks=2)


def vm(h: EmulatedHost, name: str) -> dict:
    return next(v for v in h.vms if v["name"] == name)


def ping(h: EmulatedHost, src: str, dst: str, count: int = 2, wait: float = 2) -> bool:
    r = h.in_vm(h.vms.index(vm(h, src)), "ping", "-c", str(count), "-W", str(wait), vm(h, dst)["ip"])
    return r.returncode == 0 and " 0% packet loss" in r.stdout


def tcp_transfer(h: EmulatedHost, src: str, dst: str, size: int = 4_000_000) -> None:
    """``size`` random bytes over TCP from ``src`` to ``dst``, and their hash checked at the other end."""
    ip = vm(h, dst)["ip"]
    sink = subprocess.Popen(["ip", "netns", "exec", vm(h, dst)["namespace"], sys.executable, "-c", SINK, ip], stdout=subprocess.PIPE, text=True)
    try:
        assert sink.stdout.readline().strip() == "listening"
        r = h.in_vm(h.vms.index(vm(h, src)), sys.executable, "-c", SEND, ip, str(size), timeout=60)
        assert r.returncode == 0, r.stderr
        got, digest, sent = r.stdout.split()
        assert int(got) == size and digest == sent
    finally:
        sink.kill()
        sink.wait()


def route_nh(h: EmulatedHost, node: int, ip: str) -> dict | None:
    """The route to ``ip`` in node ``node``'s VRF of the first network, as rt --dump shows it."""
    vrf = next(n["vrf"] for n in h.cli_json("network", "list", node=node) if n["subnet"] == "10.1.1.0/24")
    return next((r for r in h.cli_json("rt", "--dump", str(vrf), node=node)["routes"] if r["prefix"] == ip), None)


def etcd_keys(urls: list[str], namespace: str) -> dict:
    """Every key under /vrouter/ and its value, read from ``namespace`` (where that etcd is reached)."""
    return in_etcd(urls, "/vrouter/", namespace, lambda store: store.get_all()[1])


def services(h: EmulatedHost, node: int) -> set[str]:
    return {s["linklocal_service_name"] for s in h.cli_json("linklocal", "list", node=node)["linklocal_services"]["linklocal_service_entry"]}


@pytest.mark.datapaths("nfqueue")
def test_layout_names_each_vms_node(cloud):
    h = cloud
    assert [n["namespace"] for n in h.nodes] == ["%s-compute%d" % (h.prefix, i) for i in (1, 2, 3)]
    assert [(v["name"], v["node"], v["ip"]) for v in h.vms] == [
        ("vm1", 1, "10.1.1.3"), ("vm2", 1, "10.1.2.3"), ("vm3", 2, "10.1.1.4"),
        ("vm4", 2, "10.1.2.4"), ("vm5", 3, "10.1.1.5"), ("vm6", 3, "10.1.2.5"),
    ]  # fmt: skip
    assert h.layout["etcd"]["namespace"] == h.prefix + "-fabric"
    for node in (1, 2, 3):
        c = h.cli_json("status", node=node)["cluster"]
        assert c["connected"] and c["remote_routes"] == 8 and c["remote_nodes"] == 2  # 4 VMs, dual stack
    r = subprocess.run(["ip", "netns", "exec", h.nodes[1]["namespace"], "curl", "-s", "-f", "http://%s:8085/metrics" % h.nodes[1]["vhost0"]],
                       capture_output=True, text=True, timeout=15)  # fmt: skip
    assert "vrouter_cluster_connected 1.0" in r.stdout and "vrouter_cluster_remote_routes 8.0" in r.stdout, r.stdout[-500:]
    st = h.setup("status")
    assert st.returncode == 0 and all("node %d (%s-compute%d):" % (n, h.prefix, n) in st.stdout for n in (1, 2, 3)), st.stdout
    assert st.stdout.count("cluster: node") == 3 and "etcd pid" in st.stdout
    # each agent's introspect on its own vhost0, named in the layout and the status, read from the fabric
    for n, node in enumerate(h.nodes, 1):
        assert node["introspect"] == "http://%s:8085/" % node["vhost0"] and "introspect %s" % node["introspect"] in st.stdout
        r = subprocess.run(["ip", "netns", "exec", h.layout["namespaces"]["fabric"], "curl", "-s", "-f", node["introspect"] + "Snh_ItfReq"],
                           capture_output=True, text=True, timeout=15)  # fmt: skip
        assert r.returncode == 0 and all(v["tap"] in r.stdout for v in h.vms if v["node"] == n), r.stdout[-300:]
        assert not any(v["tap"] in r.stdout for v in h.vms if v["node"] != n)
    # ... and no VM reaches etcd, though its node's agent does
    etcd = h.layout["etcd"]["urls"][0]
    status, body = h.curl(0, etcd + "/version", max_time=2)
    assert status == 0, body[:200]


def test_every_vm_reads_its_own_metadata(cloud):
    for i, v in enumerate(cloud.vms):
        status, body = cloud.metadata(i)
        assert status == 200 and v["instance_uuid"] in body, (v["name"], status, body[:200])


def test_vms_on_different_nodes_ping_and_talk_tcp_and_networks_stay_apart(cloud):
    h = cloud
    assert ping(h, "vm1", "vm3") and ping(h, "vm1", "vm5") and ping(h, "vm6", "vm2")
    tcp_transfer(h, "vm1", "vm5")
    tcp_transfer(h, "vm4", "vm2", 1_000_000)
    assert not ping(h, "vm1", "vm4", count=1, wait=1)  # another network, on another node
    assert not ping(h, "vm2", "vm5", count=1, wait=1)


ASK = """
import socket, sys, dpkt
q = dpkt.dns.DNS(id=7, qd=[dpkt.dns.DNS.Q(name=sys.argv[2], type=dpkt.dns.DNS_A)])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3); s.sendto(bytes(q), (sys.argv[1], 53))
a = dpkt.dns.DNS(s.recv(2048))
print(" ".join(socket.inet_ntoa(r.rdata) for r in a.an if r.type == dpkt.dns.DNS_A) or "rcode%d" % a.rcode)
"""


def test_dns_answers_for_the_networks_vms_on_other_nodes(cloud):
    h = cloud
    r = h.in_vm(0, sys.executable, "-c", ASK, "10.1.1.2", "vm5")  # vm1 on node 1 asks for vm5 on node 3
    assert r.stdout.strip() == "10.1.1.5", r.stdout + r.stderr
    r = h.in_vm(0, sys.executable, "-c", ASK, "10.1.1.2", "vm4")  # another network's VM
    assert r.stdout.strip().startswith("rcode"), r.stdout + r.stderr


def test_the_overlay_tools_show_routes_tunnels_labels_and_flows(cloud):
    h = cloud
    r = route_nh(h, 1, "10.1.1.5")  # vm5, on node 3
    assert r is not None and r["node"] == h.nodes[2]["name"] and "L" in r["flags"] and r["label"] >= 16
    tunnel = h.cli_json("nh", "--get", str(r["nh"]), node=1)
    assert tunnel["type"] == "Tunnel" and tunnel["sip"] == h.nodes[0]["vhost0"] and tunnel["dip"] == h.nodes[2]["vhost0"]
    assert "MPLSoUDP" in tunnel["flags"]
    # the label node 1 uses for vm5 is the one node 3 gave vm5's interface
    labels = {m["label"]: m["nh"] for m in h.cli_json("mpls", "--dump", node=3)}
    assert labels[r["label"]] == vm(h, "vm5")["vif"]
    text = h.cli("rt", "--dump", str(tunnel["vrf"] or 1), node=1).stdout
    assert "vRouter inet4 routing table" in text
    assert "Sip:%s Dip:%s" % (h.nodes[0]["vhost0"], h.nodes[2]["vhost0"]) in h.cli("nh", "--list", node=1).stdout
    assert ping(h, "vm1", "vm5", count=1)
    flows = h.cli_json("flow", "-l", node=3)
    assert any(f["nh"] >= 0x10000 and f["src"] == "10.1.1.3" for f in flows), flows  # keyed by the tunnel's next hop
    assert "Sinfo %s)" % h.nodes[0]["vhost0"] in h.cli("flow", "-l", node=3).stdout  # the node it came from
    # inside a node's namespace the tools act on that node
    inside = subprocess.run(["ip", "netns", "exec", h.nodes[1]["namespace"], str(VROUTER), "mpls", "--dump", "--json"], capture_output=True,
                            text=True)  # fmt: skip
    assert inside.returncode == 0 and {m["nh"] for m in json.loads(inside.stdout)} == {vm(h, "vm3")["vif"], vm(h, "vm4")["vif"]}


def test_a_linklocal_service_added_on_node_1_is_used_from_node_3(cloud):
    h = cloud
    fabric = h.layout["namespaces"]["fabric"]
    echo = subprocess.Popen(["ip", "netns", "exec", fabric, sys.executable, ECHO, "7007", "10.10.0.1"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert echo.stdout.readline().strip() == "ready"
        r = h.cli("linklocal", "add", "--name", "echo", "--ip", "169.254.10.10",
                  "--port", "7", "--fabric-ip", "10.10.0.1", "--fabric-port", "7007", node=1)  # fmt: skip
        assert r.returncode == 0, r.stderr
        wait_until(lambda: "echo" in services(h, 3), 10,
                   "the service on node 3")  # fmt: skip
        with h.open_connection(4, "169.254.10.10", 7, b"hello from node 3\n") as (_, answer):
            # NATed to the fabric from node 3's vhost0
            assert answer.startswith(b"10.10.0.1:7007 %s:" % h.nodes[2]["vhost0"].encode()) and b"hello from node 3" in answer
    finally:
        h.cli("linklocal", "del", "--name", "echo", node=2)  # deleted from any node: gone everywhere
        echo.stdin.close()
        echo.wait(10)
    wait_until(lambda: all(services(h, n) == {"metadata"} for n in (1, 2, 3)), 10, "the service gone everywhere")


@pytest.mark.datapaths("nfqueue")
def test_malformed_values_in_etcd_are_left_out_and_nothing_else(cloud):
    h = cloud
    store = ConfigStore(h.layout["etcd"]["urls"])
    junk = {
        "global-vrouter-config/linklocal/bad": {"linklocal_service_name": "bad", "linklocal_service_ip": 5},
        "routes/%s/10.1.1.77" % h.vms[0]["vn_uuid"]: {"address": "10.1.1.77", "vn_uuid": h.vms[0]["vn_uuid"], "node": "x",
                                                       "node_ip": "10.10.0.9", "label": 1 << 24},
        "virtual-networks/not-a-uuid": {"subnet": 7},
    }  # fmt: skip
    good = {"linklocal_service_name": "ntp", "linklocal_service_ip": "169.254.10.12", "linklocal_service_port": 123,
            "ip_fabric_service_ip": ["10.10.0.1"], "ip_fabric_service_port": 123}  # fmt: skip
    with netns.Namespace(h.layout["namespaces"]["fabric"]) as ns:
        ns.run(lambda: [store.put(k, v) for k, v in junk.items()])
        try:
            ns.run(lambda: store.put("global-vrouter-config/linklocal/ntp", good))
            wait_until(lambda: all("ntp" in services(h, n) for n in (1, 2, 3)), 10, "the good service on every node")
            for n in (1, 2, 3):
                assert services(h, n) == {"metadata", "ntp"}
                c = h.cli_json("status", node=n)["cluster"]
                assert c["connected"] and c["remote_routes"] == 8  # the bad route left out
            assert ping(h, "vm1", "vm5")
            for node in h.nodes:
                log = open(node["agent_log"]).read()
                assert "Traceback" not in log and "left out" in log and "is unusable" in log
        finally:
            ns.run(lambda: [store.delete(k) for k in [*junk, "global-vrouter-config/linklocal/ntp"]])
    wait_until(lambda: all(services(h, n) == {"metadata"} for n in (1, 2, 3)), 10, "the services as before")


@pytest.fixture
def cluster(make_cluster):
    """A cluster of its own, for a test that breaks something."""
    return make_cluster(nodes=3, vms=6, networks=2)


def port_add_args(v: dict, project: str) -> list[str]:
    return ["port", "add", "--uuid", v["port_uuid"], "--instance-uuid", v["instance_uuid"], "--vn-uuid", v["vn_uuid"], "--vm-project-uuid",
            project, "--ip-address", v["ip"], "--mac", v["mac"], "--tap-name", v["tap"], "--vm-name", v["name"]]  # fmt: skip


@pytest.mark.datapaths("nfqueue")
def test_etcd_stopped_then_started_again(cluster):
    h = cluster
    vm3 = vm(h, "vm3")
    assert h.cli("port", "del", "--uuid", vm3["port_uuid"], node=2).returncode == 0
    wait_until(lambda: route_nh(h, 1, "10.1.1.4") is None, 10, "vm3's route gone from node 1")
    r = h.setup("stop-etcd")
    assert r.returncode == 0, r.stderr
    wait_until(lambda: not h.cli_json("status", node=1)["cluster"]["connected"], 10, "node 1 to notice etcd is gone")
    # traffic between the VMs that were up goes on
    assert ping(h, "vm1", "vm5") and ping(h, "vm6", "vm2")
    # changes made now wait: a port plugged on node 2, a service added on node 1
    assert h.cli(*port_add_args(vm3, vm3["project_id"]), node=2).returncode == 0
    r = h.cli("linklocal", "add", "--name", "ntp", "--ip", "169.254.10.11", "--linklocal_service_port",
              "123", "--fabric-ip", "10.10.0.1", "--fabric-port", "123", node=1)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert h.cli_json("status", node=1)["cluster"]["pending"] >= 1
    assert not ping(h, "vm1", "vm3", count=1, wait=1)  # node 1 has not heard of it
    resyncs = {n: h.cli_json("status", node=n)["cluster"]["resyncs"] for n in (1, 2, 3)}
    r = h.setup("start-etcd")
    assert r.returncode == 0, r.stderr
    for n in (1, 2, 3):
        wait_until(lambda n=n: h.cli_json("status", node=n)["cluster"]["resyncs"] > resyncs[n], 15, "node %d to resync" % n)
    wait_until(lambda: route_nh(h, 1, "10.1.1.4") is not None, 10, "vm3's route on node 1 again")
    assert ping(h, "vm1", "vm3")
    wait_until(lambda: "ntp" in services(h, 3), 10, "ntp on node 3")
    assert all(h.cli_json("status", node=n)["cluster"]["pending"] == 0 for n in (1, 2, 3))


@pytest.mark.datapaths("nfqueue")
def test_an_agent_killed_and_restarted_converges_and_the_others_keep_their_routes(cluster):
    h = cluster
    assert ping(h, "vm3", "vm1")
    pid = int(open(os.path.join(h.nodes[0]["state_dir"], "agent.pid")).read())
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not os.path.exists("/proc/%d" % pid) or open("/proc/%d/stat" % pid).read().split()[2] == "Z", 10, "the agent gone")
    # node 2 and 3 keep the routes to node 1's VMs (vm1 is still up, just unreachable for now)
    assert route_nh(h, 2, "10.1.1.3") is not None and route_nh(h, 3, "10.1.1.3") is not None
    r = h.setup("start-agent", "--node", "1")
    assert r.returncode == 0, r.stderr
    wait_until(lambda: h.cli_json("status", node=1)["cluster"]["remote_routes"] == 8, 15, "node 1 to converge from etcd")
    assert ping(h, "vm3", "vm1") and ping(h, "vm1", "vm5")
    assert route_nh(h, 2, "10.1.1.3") is not None


@pytest.mark.datapaths("nfqueue")
def test_an_agent_restarted_while_etcd_is_away_forwards_from_its_cache(cluster):
    h = cluster
    assert h.setup("stop-etcd").returncode == 0
    assert h.setup("stop-agent", "--node", "1").returncode == 0
    r = h.setup("start-agent", "--node", "1")
    assert r.returncode == 0, r.stderr
    c = h.cli_json("status", node=1)["cluster"]
    assert not c["connected"] and c["remote_routes"] == 8  # the other nodes' routes, from cluster.json
    assert ping(h, "vm1", "vm3") and ping(h, "vm5", "vm1")
    status, body = h.metadata(0)
    assert status == 200 and vm(h, "vm1")["instance_uuid"] in body  # its services from its own files
    assert h.setup("start-etcd").returncode == 0
    wait_until(lambda: h.cli_json("status", node=1)["cluster"]["connected"], 15, "node 1 back on etcd")


@pytest.mark.datapaths("nfqueue")
def test_a_port_moved_to_another_node_is_reached_there_and_no_stale_route_stays(cluster):
    h = cluster
    vm5 = vm(h, "vm5")  # on node 3; moves to node 2 as a live migration moves it
    assert h.cli("port", "del", "--uuid", vm5["port_uuid"], node=3).returncode == 0
    subprocess.run(["ip", "-n", h.nodes[2]["namespace"], "link", "set", vm5["tap"], "netns", h.nodes[1]["namespace"]], check=True)
    assert h.cli(*port_add_args(vm5, vm5["project_id"]), node=2).returncode == 0
    wait_until(lambda: (route_nh(h, 1, "10.1.1.5") or {}).get("node") == h.nodes[1]["name"], 10, "node 1's route to vm5 via node 2")
    assert ping(h, "vm1", "vm5") and ping(h, "vm5", "vm1")
    tunnel = h.cli_json("nh", "--get", str(route_nh(h, 1, "10.1.1.5")["nh"]), node=1)
    assert tunnel["dip"] == h.nodes[1]["vhost0"]
    # node 3 now reaches it through node 2, and etcd has one route and one port record for it
    assert (route_nh(h, 3, "10.1.1.5") or {}).get("node") == h.nodes[1]["name"]
    assert ping(h, "vm6", "vm4")

    everything = etcd_keys(h.layout["etcd"]["urls"], h.layout["namespaces"]["fabric"])
    assert [k for k in everything if k.endswith("/10.1.1.5")] == ["routes/%s/10.1.1.5" % vm5["vn_uuid"]]
    assert everything["ports/" + vm5["port_uuid"]]["node"] == h.nodes[1]["name"]
    net = everything["virtual-networks/" + vm5["vn_uuid"]]
    assert net["subnet"] == "10.1.1.0/24" and net["vrf"] == "default-domain:default-project:%s:%s" % (net["name"], net["name"])


@pytest.mark.datapaths("nfqueue")
def test_a_node_restarted_after_its_port_moved_away_does_not_take_it_back(cluster):
    h = cluster
    vm5 = vm(h, "vm5")
    assert h.setup("stop-agent", "--node", "3").returncode == 0  # its port files stay
    subprocess.run(["ip", "-n", h.nodes[2]["namespace"], "link", "set", vm5["tap"], "netns", h.nodes[1]["namespace"]], check=True)
    assert h.cli(*port_add_args(vm5, vm5["project_id"]), node=2).returncode == 0
    wait_until(lambda: (route_nh(h, 1, "10.1.1.5") or {}).get("node") == h.nodes[1]["name"], 10, "node 1's route to vm5 via node 2")
    resyncs = h.cli_json("status", node=1)["cluster"]["resyncs"]
    r = h.setup("start-agent", "--node", "3")
    assert r.returncode == 0, r.stderr
    wait_until(lambda: h.cli_json("status", node=3)["cluster"]["resyncs"] >= 1, 15, "node 3 to resync")
    assert (route_nh(h, 1, "10.1.1.5") or {}).get("node") == h.nodes[1]["name"]  # still node 2's
    assert (route_nh(h, 3, "10.1.1.5") or {}).get("node") == h.nodes[1]["name"]  # node 3 reaches it there too
    assert ping(h, "vm1", "vm5") and ping(h, "vm6", "vm2")
    assert h.cli_json("status", node=1)["cluster"]["resyncs"] == resyncs


@pytest.mark.datapaths("nfqueue")
def test_a_node_removed_takes_its_keys_and_routes_with_it(cluster):
    h = cluster
    r = h.setup("down", "--node", "3")
    assert r.returncode == 0, r.stderr
    assert not netns.exists(h.nodes[2]["namespace"]) and not netns.exists(vm(h, "vm5")["namespace"])
    for n in (1, 2):
        wait_until(lambda n=n: h.cli_json("status", node=n)["cluster"]["remote_routes"] == 4, 10, "node %d without node 3's routes" % n)
    assert route_nh(h, 1, "10.1.1.5") is None
    assert ping(h, "vm1", "vm3")
    layout = h.lab.layout()
    assert [n["node"] for n in layout["nodes"]] == [1, 2] and len(layout["vms"]) == 4
    h.down()  # the rest goes as usual
    assert not netns.exists(h.nodes[0]["namespace"])


@pytest.mark.datapaths("nfqueue")
def test_a_second_prefix_joins_the_cloud_through_its_etcd(make_cluster):
    """Nodes on several machines, as two prefixes on this one: the second lab's node joins the
    first's cloud (its etcd, its Nova, its networks) over a veth fabric link."""
    a = make_cluster(nodes=2, vms=2)
    b_prefix = unique_prefix()
    b = None
    try:
        r = subprocess.run(["bash", str(SETUP), "up", "--prefix", b_prefix, "--vms", "2", "--join", ",".join(a.layout["etcd"]["urls"]),
                            "--node-id", "3", "--secret", a.layout["secret"], "--fabric-link", a.layout["namespaces"]["fabric"], "--json"],
                           capture_output=True, text=True, timeout=120)  # fmt: skip
        assert r.returncode == 0, r.stderr
        b = json.loads(r.stdout)
        assert [n["vhost0"] for n in b["nodes"]] == ["10.10.0.4"]
        assert b["networks"][0]["uuid"] == a.layout["networks"][0]["uuid"]  # the cloud's network
        assert [v["ip"] for v in b["vms"]] == ["10.1.1.5", "10.1.1.6"]  # after the cloud's vm1 and vm2
        # each of its VMs reads its own metadata from the cloud's Nova, and reaches the cloud's VMs
        for v in b["vms"]:
            r = subprocess.run(["ip", "netns", "exec", v["namespace"], "curl", "-s", "-m", "5", "http://169.254.169.254/openstack/latest/meta_data.json"],
                               capture_output=True, text=True, timeout=15)  # fmt: skip
            assert v["instance_uuid"] in r.stdout, r.stdout[:300]
        r = subprocess.run(
            ["ip", "netns", "exec", b["vms"][0]["namespace"], "ping", "-c", "2", "-W", "2", "10.1.1.3"], capture_output=True, text=True
        )
        assert " 0% packet loss" in r.stdout, r.stdout
        assert ping(a, "vm2", "vm1")
        assert (route_nh(a, 1, "10.1.1.5") or {}).get("node") == b_prefix + "-compute"
        assert a.cli_json("status", node=2)["cluster"]["remote_nodes"] == 2
        r = subprocess.run(["bash", str(SETUP), "down", "--prefix", b_prefix], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        b = None
        # what it told the cloud went with it: no route to its VMs stays
        wait_until(lambda: a.cli_json("status", node=1)["cluster"]["remote_routes"] == 2, 10, "node 1 without the other lab's routes")
        keys = etcd_keys(a.layout["etcd"]["urls"], a.layout["namespaces"]["fabric"])
        assert not [k for k, v in keys.items() if isinstance(v, dict) and v.get("node") == b_prefix + "-compute"]
        assert not [k for k in keys if k.startswith("instances/")]
        assert ping(a, "vm2", "vm1")
    finally:
        if b is not None:
            subprocess.run(["bash", str(SETUP), "down", "--prefix", b_prefix], capture_output=True, timeout=60)


def test_a_cloud_on_an_existing_etcd_reached_through_a_fabric_link(tmp_path):
    """up --nodes 2 --etcd URL --fabric-link NS: the nodes' configuration in an etcd the lab did not
    start (here one in a namespace of this test's, on its bridge br-fabric), and at down the
    nodes' keys deleted from it while it stays."""
    from topology import etcd
    from topology.processes import Processes

    ext = unique_prefix() + "-etcd"
    netns.create(ext)
    procs = Processes(str(tmp_path), say=lambda text: None)
    prefix = unique_prefix()
    try:
        with netns.Namespace(ext) as ns:
            ns.ipr.link("set", index=ns.index("lo"), state="up")
            ns.ipr.link("add", ifname="br-fabric", kind="bridge")
            br = ns.index("br-fabric")
            ns.ipr.link("set", index=br, mtu=9000, state="up")
            ns.ipr.addr("add", index=br, address="10.10.0.250", prefixlen=24)
        etcd.start(procs, ext, "10.10.0.250", str(tmp_path / "data"))
        url = "http://10.10.0.250:2379"
        r = subprocess.run(["bash", str(SETUP), "up", "--prefix", prefix, "--nodes", "2", "--vms", "2", "--etcd", url, "--fabric-link", ext,
                            "--json"], capture_output=True, text=True, timeout=120)  # fmt: skip
        assert r.returncode == 0, r.stderr
        layout = json.loads(r.stdout)
        assert layout["etcd"]["namespace"] is None and layout["etcd"]["urls"] == [url]
        a, b = layout["vms"]
        r = subprocess.run(["ip", "netns", "exec", a["namespace"], "ping", "-c", "2", "-W", "2", b["ip"]], capture_output=True, text=True)
        assert " 0% packet loss" in r.stdout, r.stdout
        keys = etcd_keys([url], ext)
        assert {k for k in keys if k.startswith("nodes/")} == {"nodes/%s-compute1" % prefix, "nodes/%s-compute2" % prefix}
        r = subprocess.run(["bash", str(SETUP), "down", "--prefix", prefix], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        keys = etcd_keys([url], ext)
        assert not [k for k in keys if k.startswith(("nodes/", "ports/", "routes/"))]  # its nodes' keys went
        assert [k for k in keys if k.startswith("virtual-networks/")]  # what it wrote for the cloud stays
    finally:
        subprocess.run(["bash", str(SETUP), "down", "--prefix", prefix], capture_output=True, timeout=60)
        etcd.stop(procs)
        netns.delete(ext)
