"""flow -l, flow --match, flow -r, vif and dropstats against real traffic whose size is known
(needs root). One emulated host with 2 VMs serves the module."""

import json
import os
import secrets
import subprocess
import sys
from itertools import pairwise

import pytest

from tests.helpers import SEND_UDP, VROUTER, send_udp, wait_until

pytestmark = pytest.mark.netns


def flow_for(host, src, sport, dst, dport):
    return [f for f in host.cli_json("flow", "-l") if (f["src"], f["sport"], f["dst"], f["dport"]) == (src, sport, dst, dport)]


def test_counters_match_what_was_sent(host):
    a, b = host.vms
    # vm1 resolves vm2's address first (the agent answers its ARP): the vif counts every frame, ARP
    # too, as the vRouter's does
    assert host.in_vm(0, "ping", "-c", "1", "-W", "2", b["ip"]).returncode == 0
    vifs = {v["vif"]: v for v in host.cli_json("vif", "--list")}
    rx_a, tx_b = vifs[a["vif"]]["rx_packets"], vifs[b["vif"]]["tx_packets"]
    send_udp(host, 0, b["ip"], 9999, 50, 100, 41000)
    wait_until(lambda: flow_for(host, a["ip"], 41000, b["ip"], 9999) and flow_for(host, a["ip"], 41000, b["ip"], 9999)[0]["packets"] == 50,
               10, "50 packets on the flow")  # fmt: skip
    f = flow_for(host, a["ip"], 41000, b["ip"], 9999)[0]
    assert f["action"] == "FORWARD" and f["bytes"] == 50 * (20 + 8 + 100)
    assert f["vrf"] == f["dvrf"] == 1  # both VMs are in the first virtual network
    vifs = {v["vif"]: v for v in host.cli_json("vif", "--list")}
    assert vifs[a["vif"]]["rx_packets"] - rx_a == 50
    assert vifs[b["vif"]]["tx_packets"] - tx_b == 50


def test_drops_counted_by_reason(host):
    before = host.cli_json("dropstats")
    vif_before = host.cli_json("vif", "--get", str(host.vms[0]["vif"]))["drops"]
    send_udp(host, 0, "10.9.9.9", 53, 7, 10, 41001)
    after = host.cli_json("dropstats")
    assert after["No L3 Route"] - before["No L3 Route"] == 7
    assert host.cli_json("vif", "--get", str(host.vms[0]["vif"]))["drops"] - vif_before == 7
    drop = flow_for(host, host.vms[0]["ip"], 41001, "10.9.9.9", 53)[0]
    assert drop["action"] == "DROP" and drop["drop_reason"] == "No L3 Route" and drop["packets"] == 7
    assert "D(NoRoute)" in host.cli("flow", "--match", "10.9.9.9:53").stdout
    text = host.cli("dropstats").stdout
    assert "No L3 Route" in text


def test_tools_read_consistently_while_traffic_flows(host):
    # flow -l maps the table read-only while the dataplane writes it: every read is a whole record
    # (its bytes agree with its packets: 64-byte payloads, 92 bytes an IP packet), no counter goes
    # back between reads, and the reads are taken while the packets flow, not only after
    a, b = host.vms
    sender = subprocess.Popen(["ip", "netns", "exec", a["namespace"], sys.executable, "-c", SEND_UDP, b["ip"], "9998", "3000", "64", "41002", "0.01"])
    reads = []
    try:
        wait_until(lambda: flow_for(host, a["ip"], 41002, b["ip"], 9998), 10, "the flow of the traffic")
        while sender.poll() is None:
            (f,) = flow_for(host, a["ip"], 41002, b["ip"], 9998)
            (vif,) = [v for v in host.cli_json("vif", "--list") if v["vif"] == a["vif"]]
            reads.append((f["packets"], f["bytes"], vif["rx_packets"], host.cli_json("dropstats")))
    finally:
        assert sender.wait(60) == 0
    during = [packets for packets, *_ in reads if 0 < packets < 3000]
    assert during, "no read while the traffic flowed: %r" % [r[:3] for r in reads]
    for packets, nbytes, _, _ in reads:
        assert nbytes == packets * (20 + 8 + 64), (packets, nbytes)
    for (p0, _, rx0, drops0), (p1, _, rx1, drops1) in pairwise(reads):
        assert p0 <= p1 and rx0 <= rx1, (p0, p1, rx0, rx1)
        assert all(drops0[k] <= drops1[k] for k in drops0), (drops0, drops1)
    wait_until(lambda: flow_for(host, a["ip"], 41002, b["ip"], 9998)[0]["packets"] == 3000, 20, "all 3000 packets counted")


def test_match_and_follow(host):
    a, b = host.vms
    follower = subprocess.Popen(
        [str(VROUTER), "flow", "-r", "--json", "--duration", "6", "--match", "%s:7777" % b["ip"], "--state-dir", host.state_dir],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert "following new flows" in follower.stderr.readline()  # its snapshot of existing flows is taken
    send_udp(host, 0, b["ip"], 7777, 3, 10, 41003)
    send_udp(host, 0, b["ip"], 7778, 3, 10, 41004)  # not matched
    out, _ = follower.communicate(timeout=30)
    seen = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert any(f["sport"] == 41003 and f["dport"] == 7777 for f in seen), seen
    assert not any(f["dport"] == 7778 for f in seen)
    r = host.cli("flow", "--match", "%s:7777 & %s" % (b["ip"], a["ip"]), "--json")
    assert r.returncode == 0, r.stderr
    # the pair of the flow matched, both halves, and nothing else (not the flow to 7778)
    assert sorted((f["src"], f["sport"], f["dst"], f["dport"]) for f in json.loads(r.stdout)) == [
        (a["ip"], 41003, b["ip"], 7777), (b["ip"], 7777, a["ip"], 41003)]  # fmt: skip
    assert host.cli("flow", "--match", "nonsense").returncode == 1


def test_closed_tcp_flows_leave_the_table(host):
    status, _ = host.metadata(0, "/openstack", "--local-port", "45678")
    assert status == 200
    wait_until(lambda: not flow_for(host, host.vms[0]["ip"], 45678, "169.254.169.254", 80), 15, "the closed metadata flow to go")


def test_tools_act_on_the_node_whose_namespace_they_run_in(host):
    # no --prefix, no --state-dir: inside P-compute the tools use prefix P
    r = host.in_compute(str(VROUTER), "vif", "--list", "--json")
    assert r.returncode == 0, r.stderr
    assert {v["name"] for v in json.loads(r.stdout)} >= {vm["tap"] for vm in host.vms}
    r = host.in_compute(str(VROUTER), "flow", "-l")
    assert r.returncode == 0 and r.stdout.startswith("Flow table"), r.stderr


@pytest.fixture
def state_root():
    """A state root of the test's own, removed after it (and after the nodes in it: ask for it
    before make_node)."""
    root = "/run/vrouter-%s" % secrets.token_hex(4)
    yield root
    try:
        os.rmdir(root)
    except OSError:
        pass


def test_outside_any_node_the_one_node_up_is_used_and_several_are_named(state_root, make_node):
    env = dict(os.environ, VROUTER_STATE_ROOT=state_root)
    env.pop("VROUTER_STATE_DIR", None)
    first = make_node(vms=1, state_root=state_root)
    r = subprocess.run([str(VROUTER), "status", "--json"], capture_output=True, text=True, timeout=30, env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["ports"] == 1
    second = make_node(vms=1, state_root=state_root)
    r = subprocess.run([str(VROUTER), "dropstats"], capture_output=True, text=True, timeout=30, env=env)
    assert r.returncode == 1 and first.prefix in r.stderr and second.prefix in r.stderr and "--prefix" in r.stderr
    r = subprocess.run([str(VROUTER), "dropstats", "--prefix", second.prefix], capture_output=True, text=True, timeout=30, env=env)
    assert r.returncode == 0 and "Invalid Packet" in r.stdout
