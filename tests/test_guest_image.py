"""The full boot of the Debian cloud image (make test-guests: minutes under TCG).

cloud-init must find the OpenStack datasource from the SMBIOS product, run its local stage with an
ephemeral DHCP lease from the agent, set the host name from meta_data.json, install the key and
run the user data; then a namespace VM on the same network logs in to the guest by SSH with that
key (VM to VM through the dataplane) and reads what the user data wrote.  Nothing reaches the
guest but through its tap: no seed disk, no config drive."""

import subprocess
import time

import pytest

from tests.helpers import wait_until
from topology.model import GuestBoot

pytestmark = [pytest.mark.netns, pytest.mark.guests]

USER_DATA = """#!/bin/sh
echo "ran as $(id -un) on $(hostname)" > /var/tmp/user-data-result
"""


def test_debian_cloud_image_configures_itself_from_the_node_and_takes_ssh_from_a_vm(tmp_path, make_node, debian_image):
    key = tmp_path / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test", "-f", str(key)], check=True)
    t0 = time.monotonic()
    h = make_node(vms=1, qemu=1, boot=GuestBoot(image=str(debian_image)), user_data=USER_DATA, ssh_key=key.with_suffix(".pub").read_text().strip())
    g = h.guests[0]
    console = lambda: open(g["console"], errors="replace").read()  # noqa: E731
    wait_until(lambda: "finished at" in console() and "Cloud-init v." in console(), 900, "cloud-init to finish", interval=2)
    booted = time.monotonic() - t0
    text = console()
    assert "DataSourceOpenStackLocal" in text or "OpenStackLocal" in text, text[-3000:]
    ssh = ["ssh", "-i", str(key), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
           "-o", "ConnectTimeout=10", "-o", "BatchMode=yes", "debian@" + g["ip"]]  # fmt: skip

    def login(command: str) -> str:
        r = h.in_vm(0, *ssh, command, timeout=60)
        return r.stdout if r.returncode == 0 else ""

    hostname = wait_until(lambda: login("hostname").strip(), 120, "SSH into the guest")
    assert hostname == "guest1"
    assert login("cat /var/tmp/user-data-result").strip() == "ran as root on guest1"
    assert login("cloud-init query platform").strip() == "openstack"
    # its resolver is the agent's (from DHCP), which knows the other instances of the network
    assert login("getent ahostsv4 vm1").split()[0] == h.vms[0]["ip"] and login("getent ahostsv6 vm1").split()[0] == h.vms[0]["ipv6"]
    assert login("cat ~/.ssh/authorized_keys").split()[1] == key.with_suffix(".pub").read_text().split()[1]
    accel = "TCG" if "-accel\0tcg" in open("/proc/%d/cmdline" % g["pid"]).read() else "KVM"
    print("\nguest: cloud-init finished %.0f s after up began (%s)" % (booted, accel))
    requests = h.cli_json("status")["services"]
    assert requests["dhcp_ack"] >= 1


def test_cloud_init_meeting_503_on_meta_data_json_is_in_the_journal(make_node, debian_image):
    """The fault is added as soon as the node is up, before the guest's cloud-init starts (tens of
    seconds later under TCG); the journal then shows what cloud-init 22.4 does with a 503 on a
    mandatory file: it asks once in its local stage and once in its network stage (its OpenStack
    reader retries no answer of 400 or more), then boots without a datasource."""
    h = make_node(vms=0, qemu=1, boot=GuestBoot(image=str(debian_image)))
    g = h.guests[0]
    rule = h.cli_json("metadata", "fault", "add", "--instance", g["instance_uuid"], "--path", "/openstack/*/meta_data.json",
                      "--status", "503", "--count", "3")  # fmt: skip
    console = lambda: open(g["console"], errors="replace").read()  # noqa: E731
    wait_until(lambda: "finished at" in console() and "Cloud-init v." in console(), 900, "cloud-init to finish", interval=2)
    log = h.cli_json("metadata", "log", "--instance", g["instance_uuid"])
    md = [e for e in log if e["path"].endswith("/meta_data.json")]
    assert md and all(e["status"] == 503 and e["fault"] == rule["id"] for e in md), log
    assert len(md) == 2  # init-local, then init: one try each
    assert md[0]["seq"] > [e for e in log if e["path"] == "/openstack"][0]["seq"]  # after it found the service
    assert console().count("Missing mandatory path: http://169.254.169.254/openstack/") == 2
    assert "Datasource DataSourceNone" in console()
    (left,) = h.cli_json("metadata", "fault", "list")
    assert left["applied"] == 2  # the third 503 was never asked for
