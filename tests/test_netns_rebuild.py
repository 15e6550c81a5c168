"""The nftables tables made anew while a VM floods its own queues, fifty times: no queue is left
unread (the stuck queue: a queue's netlink socket that overflowed got ENOBUFS, which epoll reports
as an error and libuv, under uvloop, took as the end of the descriptor: it was never polled again;
a rebuild made the overflow likely, since deleting the table dropped what waited in every queue
while its messages stayed in the sockets), and a plugged VM's rules are in force when ``port add``
answers.  The VMs' queues are made longer than their sockets hold, so that the flood overflows
the sockets whatever a rebuild does.  A node of 3 VMs and two dataplane
workers; vm1 floods, vm3 is unplugged and plugged again, each unplug a rebuild."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.emulated_host import EmulatedHost
from tests.helpers import configure, wait_until
from vrouter.agent.control import call
from vrouter.messages.control import PortAdd, PortDel, StatusRequest

pytestmark = [pytest.mark.netns, pytest.mark.datapaths("nfqueue", "ebpf")]

REBUILDS = 50


def queue_stats(h: EmulatedHost) -> dict[int, tuple[int, int, int, int]]:
    """Every bound queue: (waiting for a verdict, dropped as full, dropped as the socket was full, packets seen)."""
    text = h.in_compute("cat", "/proc/net/netfilter/nfnetlink_queue").stdout
    rows = [line.split() for line in text.splitlines() if line.split()]
    return {int(r[0]): (int(r[2]), int(r[5]), int(r[6]), int(r[7])) for r in rows}


def queues_of(h: EmulatedHost, vm: dict) -> list[int]:
    rec = h.cli_json("vif", "--get", str(vm["vif"]))
    return (rec[0] if isinstance(rec, list) else rec)["queues"]


@pytest.fixture(scope="module")
def node(make_shared_node) -> EmulatedHost:  # noqa: ANN001
    h = make_shared_node(vms=3)
    # queues longer than their sockets hold: a flood overflows the socket (the kernel's user_dropped)
    configure(h, FLOWS={"dataplane_workers": 2, "vm_queue_length": 65536})
    wait_until(lambda: all(h.metadata(i)[0] == 200 for i in range(3)), 20, "every VM's metadata")
    return h


def plug_again(h: EmulatedHost, vm: dict) -> None:
    """Unplug the VM's port (a rebuild of the tables, waited for) and plug it again."""
    sock = os.path.join(h.state_dir, "agent.sock")
    call(sock, PortDel(uuid=vm["port_uuid"]))
    wait_until(lambda: not call(sock, StatusRequest()).rules_pending, 10, "the tables made anew")
    call(sock, PortAdd(uuid=vm["port_uuid"], instance_uuid=vm["instance_uuid"], vn_uuid=vm["vn_uuid"], vm_project_uuid=vm["project_id"],
                       ip_address=vm["ip"], mac=vm["mac"], tap_name=vm["tap"]))  # fmt: skip
    assert not call(sock, StatusRequest()).rules_pending  # plugged: its rules appended, no rebuild waits


def test_a_connection_opened_as_port_add_answers_survives_the_next_rebuild(node):
    """With two workers, a connection a VM opened before its rules were in force went through the
    node's queue (worker 0's) and broke when the rebuild moved its packets to its own worker."""
    vm3_queues = queues_of(node, node.vms[2])
    plug_again(node, node.vms[2])
    seen = sum(queue_stats(node)[q][3] for q in vm3_queues)
    # two requests on one connection, 0.5 s apart: across the 0.2 s in which a rebuild used to follow
    r = node.in_vm(2, sys.executable, "-c", TWO_REQUESTS)
    assert r.returncode == 0 and r.stdout.split() == ["200", "200"], r.stdout + r.stderr
    assert sum(queue_stats(node)[q][3] for q in vm3_queues) > seen  # through its own queues from the first packet


TWO_REQUESTS = """
import http.client, time
c = http.client.HTTPConnection("169.254.169.254", 80, timeout=5)
for _ in range(2):
    c.request("GET", "/openstack/latest/meta_data.json")
    r = c.getresponse()
    r.read()
    print(r.status)
    time.sleep(0.5)
"""


@pytest.mark.datapaths("nfqueue")  # ebpf: each flood is one flow, which the program forwards in the kernel: no queue fills
def test_fifty_rebuilds_while_a_vm_floods_its_queues_leave_every_queue_read(node):
    vm1, vm2 = node.vms[0], node.vms[1]
    flood_queues = queues_of(node, vm1)
    floods = [
        subprocess.Popen(
            ["ip", "netns", "exec", node.vm_ns(0), "hping3", "--flood", "-q", "--udp", "-k", "-s", str(port), "-p", str(dport), dst],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        for port, dport, dst in ((40001, 9, vm2["ip"]), (40002, 53, vm1["gateway"]))
    ]  # its data queues (UDP to vm2) and its service queue (its gateway's DNS port), one flow each
    try:
        start = queue_stats(node)
        for _ in range(REBUILDS):
            plug_again(node, node.vms[2])  # each a rebuild while vm1's queues are full
        end = queue_stats(node)
        overflowed = sum(end[q][2] - start[q][2] for q in flood_queues)
        assert overflowed > 0, "vm1's flood did not overflow its queues' sockets: the test tested nothing"
        # during the flood: the other VMs are served, and vm1 itself (its share)
        assert node.metadata(1)[0] == 200 and node.metadata(2)[0] == 200
        wait_until(lambda: node.metadata(0, max_time=2)[0] == 200, 20, "vm1's metadata during its flood")
    finally:
        for p in floods:
            p.kill()
            p.wait(10)
    wait_until(lambda: not any(queue_stats(node)[q][0] for q in flood_queues), 10, "vm1's queues emptied")
    before = queue_stats(node)
    assert node.metadata(0)[0] == 200
    assert node.in_vm(0, "ping", "-c", "3", "-i", "0.2", "-W", "2", "-w", "20", vm2["ip"]).returncode == 0
    after = queue_stats(node)
    assert all(after[q][2] == before[q][2] for q in flood_queues)  # nothing more dropped for want of a reader
