"""Testing a cloud image, or the guest agent inside it, with vrouter-lab's pytest plugin: copy this file.

The plugin comes with the project (``pip install`` of it is enough); run, as root::

    pytest --vrouter-lab-image debian12.qcow2 test_cloud_image.py

Each test gets ``lab``, a Tungsten Fabric compute node in network namespaces (built once for the
session, removed at the end), and every guest a test boots is removed after it, pass or fail.
The guest learns everything from the node, as on a cloud: DHCP from the vRouter agent, its
instance from the metadata service through the vRouter's trap (or a config drive).
"""

USER_DATA = """#cloud-config
runcmd:
  - [sh, -c, 'echo "first boot of $(cat /var/lib/cloud/data/instance-id)" > /var/tmp/marker']
bootcmd:
  - [sh, -c, 'echo boot >> /var/tmp/boots']
"""

REBUILT = """#!/bin/sh
echo rebuilt > /var/tmp/marker
"""


def test_the_image_boots_from_the_node_reboots_and_rebuilds(lab, lab_image):
    guest = lab.boot(lab_image, user_data=USER_DATA)

    # The verdict of `vrouter-lab check`: from the console, cloud-init's own reports, the node and SSH.
    verdict = guest.wait_for_cloud_init(timeout=900)
    assert verdict.passed, verdict.summary()
    assert verdict.report["cloud_init"]["datasource_name"].startswith("OpenStack")
    assert guest.ssh("cat /var/tmp/marker").stdout.strip() == "first boot of %s" % guest.uuid

    # What the instance asked the metadata service, as the vRouter agent's proxy saw it.
    asked = {e["path"] for e in guest.metadata_log() if e["status"] == 200}
    assert any(p.endswith("/meta_data.json") for p in asked), asked

    # A reboot: the same instance; per-boot modules (bootcmd) run again, per-instance ones (runcmd) do not.
    guest.reboot()
    verdict = guest.wait_for_cloud_init(timeout=900)
    assert verdict.passed, verdict.summary()
    assert guest.ssh("cat /var/tmp/boots").stdout.split() == ["boot", "boot"]
    assert guest.ssh("cat /var/tmp/marker").stdout.startswith("first boot")

    # A rebuild with new user data: the same uuid, a fresh disk; cloud-init runs as on a first boot.
    guest.rebuild(user_data=REBUILT)
    verdict = guest.wait_for_cloud_init(timeout=900)
    assert verdict.passed, verdict.summary()
    assert guest.ssh("cat /var/tmp/marker").stdout.strip() == "rebuilt"
    assert guest.ssh("cat /var/lib/cloud/data/instance-id").stdout.strip() == guest.uuid
