"""Virtual networks and many VMs a node (needs root): VMs dealt out to several networks, each its
own subnet and VRF, served DHCP and DNS for their own network and kept apart from the others; and a
node of a few hundred VMs (the time it took to build is printed, not checked) where every VM reads
its own metadata at once (``make soak SOAK_VMS=1000`` does the thousand)."""

import sys
import time

import pytest

from topology.clients import CloudInitClients

# The networks in both datapaths; the node of 300 VMs in nfqueue mode only (its time)
pytestmark = [pytest.mark.netns, pytest.mark.datapaths("nfqueue", "ebpf")]

RESOLVE = "import socket, sys; print(socket.gethostbyname(sys.argv[1]))"


@pytest.fixture(scope="module")
def two_networks(make_shared_node):
    return make_shared_node(vms=4, dhcp=True, networks=2)  # vm1, vm3 on the first; vm2, vm4 on the second


def test_each_network_has_its_subnet_vrf_lease_and_names(two_networks):
    h = two_networks
    nets = h.layout["networks"]
    assert [n["subnet"] for n in nets] == ["10.1.1.0/24", "10.1.2.0/24"]
    assert [vm["ip"] for vm in h.vms] == ["10.1.1.3", "10.1.2.3", "10.1.1.4", "10.1.2.4"]
    vrfs = [h.cli_json("vif", "--get", str(vm["vif"]))["vrf"] for vm in h.vms]
    assert vrfs[0] == vrfs[2] and vrfs[1] == vrfs[3] and vrfs[0] != vrfs[1]
    lease = h.lease(1)
    assert lease["ip"] == "10.1.2.3" and lease["serverid"] == "10.1.2.2" and lease["staticroutes"] == "0.0.0.0/0 10.1.2.1"
    assert "default via 10.1.2.1" in h.in_vm(1, "ip", "route").stdout
    # DNS answers the instances of the VM's own network, not the other's
    r = h.in_vm(1, sys.executable, "-c", RESOLVE, "vm4")
    assert r.returncode == 0 and r.stdout.strip() == "10.1.2.4", r.stderr
    assert h.in_vm(1, sys.executable, "-c", RESOLVE, "vm3").returncode != 0
    # each VM reads its own metadata, whatever its network
    for i, vm in enumerate(h.vms):
        status, body = h.metadata(i)
        assert status == 200 and vm["instance_uuid"] in body


def test_vms_of_one_network_reach_each_other_and_not_the_other_network(two_networks):
    h = two_networks
    before = h.cli_json("dropstats")["No L3 Route"]
    same = h.in_vm(0, "ping", "-c", "2", "-W", "2", "10.1.1.4")
    assert " 0% packet loss" in same.stdout, same.stdout
    other = h.in_vm(0, "ping", "-c", "2", "-W", "1", "10.1.2.3")
    assert other.returncode != 0 and "100% packet loss" in other.stdout
    assert h.in_vm(1, "ping", "-c", "1", "-W", "1", "10.1.1.3").returncode != 0  # nor the other way
    assert h.cli_json("dropstats")["No L3 Route"] >= before + 3  # no route in the sender's VRF


@pytest.mark.datapaths("nfqueue")
def test_a_node_of_300_vms_on_two_networks_and_each_reads_its_own_metadata(make_node):
    t = time.monotonic()
    h = make_node(vms=300)
    took = time.monotonic() - t
    assert len(h.layout["networks"]) == 2  # 252 VMs a network: as many as they need
    assert len({vm["vif"] for vm in h.vms}) == 300
    clients = CloudInitClients(h.vms)
    try:
        results = clients.once()  # every VM at once: cloud-init's sequence, a new connection a request
    finally:
        clients.close()
    assert sum(r["failed"] for r in results) == 0, [e for r in results for e in r["errors"]][:5]
    assert all(r["ok"] == 13 for r in results)  # meta_data.json among them, checked to be the VM's own
    for i in (0, 150, 299):  # over LEARNED_GATEWAYS VMs: each is given its gateways' MAC (topology/vms.py)
        shown = h.in_vm(i, "ip", "neigh", "show", "dev", "eth0").stdout
        for gateway in (h.vms[i]["gateway"], "fe80::5e00:100"):
            assert "%s lladdr 00:00:5e:00:01:00 PERMANENT" % gateway in shown, shown
    status = h.cli_json("status")
    assert status["ports"] == 300
    print("\n300 VMs up in %.1f s (%.3f s a VM); agent and proxy RSS %d KiB"
          % (took, took / 300, status["memory"]["rss_kib"] + status["memory"]["proxy_rss_kib"]))  # fmt: skip
