"""Guests served by the node itself (needs root): DHCP, DNS, ARP, ICMP and router advertisements
from the agent, namespace VMs with a real DHCP client, and a QEMU guest on a real tap that boots
Debian's cloud kernel, takes its lease, resolves another instance by name and reads its own
metadata, with nothing but what comes through the trapped path."""

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import SETUP, unique_prefix, wait_until
from topology.model import GuestBoot

# The node's services and a QEMU guest on a tap in both datapaths; the guest across the overlay (which
# the engine carries in both) in nfqueue mode only
pytestmark = [pytest.mark.netns, pytest.mark.datapaths("nfqueue", "ebpf")]

JUNK = r"""
import sys
from scapy.all import Ether, IP, UDP, ARP, Raw, sendp, conf
conf.verb = 0
mac = sys.argv[1]
cut = b"\x01\x01\x06" + b"\x00" * 233 + b"\x63\x82\x53\x63\x35"  # a DHCP request whose first option is cut
frames = [
    Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67) / Raw(b"\x01" * 30),
    Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67) / Raw(cut),
    Ether(src=mac, dst="00:00:5e:00:01:00") / IP(src=sys.argv[2], dst="10.1.1.2") / UDP(sport=5000, dport=53) / Raw(b"\x00\x01\x01"),
    Ether(src=mac, dst="ff:ff:ff:ff:ff:ff", type=0x0806) / Raw(b"\x00\x01\x08\x00\x08\x04" + b"\x00" * 30),
    Ether(src=mac, dst="ff:ff:ff:ff:ff:ff", type=0x0806) / Raw(b"\x00\x01"),
]
sendp(frames * 5, iface="eth0")
"""

RESOLVE = "import socket, sys; print(socket.gethostbyname(sys.argv[1]))"


@pytest.fixture(scope="module")
def dhcp_host(make_shared_node):
    return make_shared_node(vms=2, dhcp=True)


def test_dhcp_vms_get_the_right_lease_then_their_metadata(dhcp_host):
    h = dhcp_host
    for i, vm in enumerate(h.vms):
        lease = h.lease(i)
        assert lease["event"] == "bound" and lease["ip"] == vm["ip"]
        assert (lease["mask"], lease["subnet"], lease["broadcast"]) == ("24", "255.255.255.0", "10.1.1.255")
        assert lease["serverid"] == "10.1.1.2" and lease["dns"] == "10.1.1.2" and lease["domain"] == "novalocal"
        assert lease["hostname"] == vm["name"] and lease["lease"] == "4294967295"  # the vRouter agent's default: infinite
        # it asked for classless static routes: it got the default route there and no router option (RFC 3442)
        assert lease["staticroutes"] == "0.0.0.0/0 10.1.1.1" and lease["router"] == ""
        addr = h.in_vm(i, "ip", "-4", "-o", "addr", "show", "dev", "eth0").stdout
        assert vm["ip"] + "/24" in addr
        assert "default via 10.1.1.1" in h.in_vm(i, "ip", "route").stdout
        status, body = h.metadata(i)
        assert status == 200 and json.loads(body)["uuid"] == vm["instance_uuid"]
    st = h.cli_json("status")["services"]
    assert st["dhcp_discover"] >= 2 and st["dhcp_offer"] >= 2 and st["dhcp_request"] >= 2 and st["dhcp_ack"] >= 2
    flows = h.cli_json("flow", "-l")
    dhcp_flows = [f for f in flows if (f["src"], f["dst"], f["dport"]) == ("0.0.0.0", "255.255.255.255", 67)]
    assert dhcp_flows and all(f["action"] == "FORWARD" and f["dvrf"] == 0 for f in dhcp_flows)  # trapped to the agent


def test_the_agent_answers_dns_arp_and_pings_for_the_network(dhcp_host):
    h = dhcp_host
    # DNS at the service address, through the VM's own resolver file: another instance by name
    r = h.in_vm(0, sys.executable, "-c", RESOLVE, "vm2")
    assert r.returncode == 0 and r.stdout.strip() == h.vms[1]["ip"], r.stderr
    r = h.in_vm(0, sys.executable, "-c", RESOLVE, "vm1.novalocal")
    assert r.stdout.strip() == h.vms[0]["ip"]
    r = h.in_vm(0, sys.executable, "-c", RESOLVE, "nobody.novalocal")
    assert r.returncode != 0  # NXDOMAIN
    # the gateway answers ARP (with the vRouter MAC) and ping
    r = h.in_vm(0, "ping", "-c", "2", "-W", "2", "10.1.1.1")
    assert r.returncode == 0 and " 0% packet loss" in r.stdout
    neigh = h.in_vm(0, "ip", "neigh", "show", "10.1.1.1").stdout
    assert "00:00:5e:00:01:00" in neigh
    st = h.cli_json("status")["services"]
    assert st["dns_answered"] >= 2 and st["dns_nxdomain"] >= 1 and st["arp_replies"] >= 1 and st["icmp_echo_replies"] >= 2
    # IPv6: the router advertisement gives the VM a default route
    wait_until(lambda: "fe80::5e00:100" in h.in_vm(0, "ip", "-6", "route", "show", "default").stdout, 40, "a default route from the RA")


def test_malformed_dhcp_dns_and_arp_are_dropped_and_counted_and_the_others_still_served(dhcp_host):
    h = dhcp_host
    before = h.cli_json("dropstats")
    vm = h.vms[0]
    r = h.in_vm(0, sys.executable, "-c", JUNK, vm["mac"], vm["ip"])
    assert r.returncode == 0, r.stderr

    def counted():
        d = h.cli_json("dropstats")
        return all(d[k] > before[k] for k in ("Invalid DHCP", "Invalid DNS", "Invalid ARP")) and d

    after = wait_until(counted, 10, "the junk counted")
    assert after["Invalid DHCP"] - before["Invalid DHCP"] == 10 and after["Invalid DNS"] - before["Invalid DNS"] == 5
    assert after["Invalid ARP"] - before["Invalid ARP"] == 10
    assert h.cli_json("vif", "--get", str(vm["vif"]))["drops"] >= 25
    # vm2 keeps being served: a new lease, a name, its metadata
    lease_file = os.path.join(h.state_dir, "dhcp", "vm2.lease")
    os.unlink(lease_file)
    subprocess.run(["kill", "-USR1", open(os.path.join(h.state_dir, "dhcp", "vm2.pid")).read().strip()], check=True)  # udhcpc: renew now
    wait_until(lambda: os.path.exists(lease_file), 15, "vm2's renewed lease")
    assert h.lease(1)["event"] == "renew" and h.lease(1)["ip"] == h.vms[1]["ip"]
    assert h.in_vm(1, sys.executable, "-c", RESOLVE, "vm1").stdout.strip() == vm["ip"]
    assert h.metadata(1)[0] == 200


def test_the_network_as_the_agent_has_it_and_a_bad_one_refused(dhcp_host):
    h = dhcp_host
    (net,) = h.cli_json("network", "list")
    assert (net["subnet"], net["gateway"], net["dns_server"], net["vrf"], net["dhcp"]) == ("10.1.1.0/24", "10.1.1.1", "10.1.1.2", 1, True)
    r = h.cli("network", "add", "--vn-uuid", net["uuid"], "--subnet", "10.1.1.0/33")
    assert r.returncode == 1 and "--subnet" in r.stderr
    r = h.cli("network", "add", "--vn-uuid", net["uuid"], "--subnet", "10.1.1.0/24", "--gateway", "10.9.9.9")
    assert r.returncode == 1 and "--gateway 10.9.9.9: not a host address of 10.1.1.0/24" in r.stderr
    assert h.cli_json("network", "list") == [net]  # nothing changed


def test_network_data_describes_the_port_as_nova_does(dhcp_host):
    h = dhcp_host
    status, body = h.metadata(0, "/openstack/latest/network_data.json")
    net = json.loads(body)
    vm = h.vms[0]
    assert status == 200 and net["links"] == [
        {"id": vm["tap"], "vif_id": vm["port_uuid"], "type": "phy", "mtu": 1500, "ethernet_mac_address": vm["mac"]}
    ]
    assert net["networks"] == [
        {"id": "network0", "link": vm["tap"], "network_id": vm["vn_uuid"], "type": "ipv4_dhcp"},
        {"id": "network1", "type": "ipv6", "link": vm["tap"], "ip_address": vm["ipv6"], "netmask": "ffff:ffff:ffff:ffff::",
         "routes": [{"network": "::", "netmask": "::", "gateway": "fd00:10:1:1::1"}], "network_id": vm["vn_uuid"],
         "services": [{"type": "dns", "address": "fd00:10:1:1::2"}]},
    ]  # fmt: skip
    assert net["services"] == [{"type": "dns", "address": "10.1.1.2"}, {"type": "dns", "address": "fd00:10:1:1::2"}]


@pytest.mark.guests
def test_a_qemu_guest_on_a_tap_takes_its_lease_resolves_an_instance_and_reads_its_metadata(make_node, guest_initramfs):
    boot = GuestBoot(kernel=str(guest_initramfs / "vmlinuz"), initrd=str(guest_initramfs / "initramfs.cpio.gz"),
                     append="panic=-1 guest.test=lease,dns,metadata,ping guest.resolve=vm1 guest.ping=10.1.1.1", accel="tcg")  # fmt: skip
    h = make_node(vms=1, qemu=1, boot=boot)
    g = h.guests[0]
    assert g["kind"] == "qemu" and g["pid"] > 0 and g["tap"].startswith("tap") and g["console"].endswith("guest1.console")
    # its only NIC is its tap, in the compute namespace
    assert h.in_compute("ip", "link", "show", g["tap"]).returncode == 0
    cmdline = open("/proc/%d/cmdline" % g["pid"]).read().split("\0")
    assert "-nodefaults" in cmdline and not any("user" in a.split(",")[0] for a in cmdline if a.startswith(("-netdev", "-nic")))
    results = wait_until(lambda: (r := h.guest_results(0)).get("done") is not None and r, 180, "the guest's tests")
    assert results["dmi.product_name"] == "OpenStack Nova" and results["dmi.sys_vendor"] == "OpenStack Foundation"
    assert results["dmi.product_uuid"].lower() == results["dmi.product_serial"].lower() == g["instance_uuid"]
    assert results["dhcp"] == "bound" and results["lease.ip"] == g["ip"] and results["lease.staticroutes"] == "0.0.0.0/0 10.1.1.1"
    assert "default via 10.1.1.1" in results["net.routes"]
    assert results["lease.dns"] == "10.1.1.2" and results["lease.hostname"] == "guest1" and results["lease.mask"] == "24"
    assert results["dns.vm1"] == "ok" and h.vms[0]["ip"] in results["dns.vm1.addresses"]
    assert results["metadata.status"] == "200" and g["instance_uuid"] in results["metadata.body"]
    assert results["ping.10.1.1.1.rc"] == "0"
    # its packets made flows, and its vif counted them
    vif = h.cli_json("vif", "--get", str(g["vif"]))
    assert vif["rx_packets"] > 10 and vif["tx_packets"] > 10
    h.down()
    assert not os.path.exists(g["console"])  # down removed the state directory with the overlay and console


@pytest.mark.datapaths("nfqueue")
@pytest.mark.guests
def test_a_qemu_guest_on_another_node_reaches_a_vm_over_the_overlay(make_cluster, guest_initramfs):
    """Two nodes: vm1 (a namespace) on node 1, guest1 (QEMU) on node 2; the guest's DHCP, DNS for
    vm1, metadata, and a ping to vm1 through the tunnel between the nodes."""
    boot = GuestBoot(kernel=str(guest_initramfs / "vmlinuz"), initrd=str(guest_initramfs / "initramfs.cpio.gz"),
                     append="panic=-1 guest.test=lease,dns,metadata,ping guest.resolve=vm1 guest.ping=10.1.1.3", accel="tcg")  # fmt: skip
    h = make_cluster(nodes=2, vms=1, qemu=1, boot=boot)
    g = h.guests[0]
    assert g["node"] == 2 and h.vms[0]["node"] == 1
    results = wait_until(lambda: (r := h.guest_results(0)).get("done") is not None and r, 180, "the guest's tests")
    assert results["dhcp"] == "bound" and results["lease.ip"] == g["ip"]
    assert results["dns.vm1"] == "ok" and h.vms[0]["ip"] in results["dns.vm1.addresses"]  # an instance of node 1
    assert results["metadata.status"] == "200" and g["instance_uuid"] in results["metadata.body"]
    assert results["ping.10.1.1.3.rc"] == "0"  # vm1, on node 1, through the tunnel
    assert h.cli_json("status", node=2)["cluster"]["remote_routes"] == 2  # the guest's two addresses


def _up(prefix, *args):
    return subprocess.run(["bash", str(SETUP), "up", "--prefix", prefix, "--vms", "1", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "args, says",
    [
        (["--qemu", "1"], "--qemu needs --image FILE or --kernel"),
        (["--qemu", "1", "--image", "/nonexistent.qcow2"], "--image /nonexistent.qcow2: no such file"),
        (["--qemu", "1", "--image", "BADQCOW"], "Unsupported cluster size"),
        (["--qemu", "1", "--image", "/tmp"], "--image /tmp"),
        (["--qemu", "1", "--kernel", "NOTAKERNEL"], "guest guest1: QEMU exited"),
        (["--qemu", "1", "--initrd", "NOTAKERNEL"], "--initrd needs --kernel"),
        (["--qemu", "1", "--image", "BADQCOW", "--accel", "fast"], "--accel fast"),
        (["--kernel", "NOTAKERNEL"], "--kernel goes with --qemu"),
        (["--ssh-key", "NOTAKERNEL"], "not one OpenSSH public key"),
        (["--ssh-key", "/nonexistent.pub"], "--ssh-key /nonexistent.pub"),
        (["--instances", "INSTANCES"], "no instance vm9"),
        (["--user-data", "/nonexistent"], "--user-data /nonexistent"),
    ],
)
def test_bad_guest_and_instance_options_are_refused_naming_them_and_leave_nothing(tmp_path, args, says):
    bad = tmp_path / "bad.qcow2"  # a qcow2 whose header says clusters of 2^(2^32-1) bytes
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(bad), "1M"], check=True)
    with open(bad, "r+b") as f:
        f.seek(20)
        f.write(b"\xff\xff\xff\xff")
    kernel = tmp_path / "notakernel"
    kernel.write_text("not a kernel\n")
    instances = tmp_path / "instances.json"
    instances.write_text(json.dumps({"vm9": {"user_data": "#!/bin/sh\n"}}))
    subs = {"BADQCOW": str(bad), "NOTAKERNEL": str(kernel), "INSTANCES": str(instances)}
    args = [subs.get(a, a) for a in args]
    says = subs.get(says, says) if says in subs else says.replace("BADQCOW", str(bad))
    prefix = unique_prefix()
    r = _up(prefix, *args)
    assert r.returncode == 1 and says in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not any(n.startswith(prefix + "-") for n in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())
    assert not os.path.exists("/run/vrouter/" + prefix)


def test_instances_get_their_user_data_keys_password_and_vendor_data(tmp_path):
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIForTheTestsOnly test@example"
    (tmp_path / "key.pub").write_text(key + "\n")
    (tmp_path / "ud").write_text("#cloud-config\nruncmd: [touch /tmp/x]\n")
    (tmp_path / "inst.json").write_text(json.dumps({"instances": [
        {"name": "vm2", "hostname": "db-2", "user_data": "#!/bin/sh\necho vm2\n", "admin_pass": "s3cret", "vendor_data": {"site": "lab"},
         "meta": {"role": "db"}}]}))  # fmt: skip
    prefix = unique_prefix()
    r = subprocess.run(["bash", str(SETUP), "up", "--prefix", prefix, "--vms", "2", "--json", "--ssh-key", str(tmp_path / "key.pub"),
                        "--user-data", str(tmp_path / "ud"), "--instances", str(tmp_path / "inst.json")],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    try:
        assert r.returncode == 0, r.stderr
        layout = json.loads(r.stdout)

        def md(i, path):
            out = subprocess.run(["ip", "netns", "exec", layout["vms"][i]["namespace"], "curl", "-s", "-m", "5", "http://169.254.169.254" + path],
                                 capture_output=True, text=True, timeout=20)  # fmt: skip
            return out.stdout

        m1, m2 = json.loads(md(0, "/openstack/latest/meta_data.json")), json.loads(md(1, "/openstack/latest/meta_data.json"))
        assert m1["public_keys"] == {"default": key} == m2["public_keys"]
        assert md(0, "/openstack/latest/user_data") == "#cloud-config\nruncmd: [touch /tmp/x]\n"
        assert md(1, "/openstack/latest/user_data") == "#!/bin/sh\necho vm2\n"
        assert m2["hostname"] == "db-2" and m2["admin_pass"] == "s3cret" and m2["meta"] == {"role": "db"} and "admin_pass" not in m1
        assert json.loads(md(1, "/openstack/latest/vendor_data.json")) == {"site": "lab"}
        assert md(0, "/latest/meta-data/public-keys/0/openssh-key") == key
    finally:
        subprocess.run(["bash", str(SETUP), "down", "--prefix", prefix], capture_output=True, timeout=120)
