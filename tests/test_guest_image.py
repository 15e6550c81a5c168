"""The Debian cloud image meeting a broken metadata service (make test-guests: minutes under TCG).

Its passing boots (the OpenStack datasource from the SMBIOS product, an ephemeral DHCP lease from
the agent, the host name, the key and the user data, SSH from a namespace VM through the
dataplane; and the config drive) are vrouter-lab's tests, in tests/test_lab_check.py."""

import pytest

from tests.helpers import wait_until
from topology.model import GuestBoot

pytestmark = [pytest.mark.netns, pytest.mark.guests]


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
