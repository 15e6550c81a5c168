"""Nova's config drive for an instance: the files ``nova/virt/configdrive.py`` writes, rendered by
the code the metadata service answers with (``fabric.nova_tree``), in an ISO 9660 image labelled
``config-2`` made with Nova's own command.

``tree(inst)`` is every file by its path on the drive::

    ec2/2009-04-04/meta-data.json, ec2/2009-04-04/user-data (when the instance has user data),
    ec2/latest/...              (Nova's default config_drive_skip_versions leave out older EC2 versions)
    openstack/<version>/meta_data.json, user_data (when set), vendor_data.json (2013-10-17 on),
    network_data.json (2015-10-15 on), vendor_data2.json (2016-10-06 on), for each OpenStack
    version and latest; openstack/content/0000, 0001, ... (the injected files, which
    meta_data.json's ``files`` lists by path and content_path)

The drive's meta_data.json also holds ``admin_pass``; it has no ``password`` file (the guest
posts that to the service).  ``build(inst, iso_path)`` writes the image.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

from fabric.nova_tree import InstanceMetadata

PUBLISHER = "OpenStack Nova vrouter-lab"  # Nova's is "<product_string> <version_string_with_package>": "OpenStack Nova 31.0.0"
LABEL = "config-2"


class ConfigDriveError(RuntimeError):
    """The drive could not be made; the message says why and what to do."""


def tree(inst: dict) -> dict[str, bytes]:
    """Every file of the instance's config drive, by its path relative to the drive's root."""
    return dict(InstanceMetadata(inst, config_drive=True).metadata_for_config_drive())


def mkisofs_command(iso_path: str, directory: str) -> list[str]:
    """Nova's ``_make_iso9660`` command line, with genisoimage, else ``xorriso -as mkisofs``;
    ConfigDriveError when neither is installed."""
    flags = ["-o", iso_path, "-ldots", "-allow-lowercase", "-allow-multidot", "-l", "-publisher", PUBLISHER,
             "-quiet", "-J", "-r", "-V", LABEL, directory]  # fmt: skip
    if shutil.which("genisoimage"):
        return ["genisoimage", *flags]
    if shutil.which("xorriso"):
        return ["xorriso", "-as", "mkisofs", *flags]
    raise ConfigDriveError("neither genisoimage nor xorriso is installed, and a config drive needs one: apt-get install genisoimage")


def build(inst: dict, iso_path: str) -> None:
    """Write the instance's config drive to ``iso_path`` (ISO 9660, Rock Ridge and Joliet, label
    config-2), as Nova does: the tree in a temporary directory, then genisoimage."""
    files = tree(inst)
    with tempfile.TemporaryDirectory(prefix="config-drive-") as tmp:
        for rel, data in files.items():
            path = os.path.join(tmp, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
        cmd = mkisofs_command(iso_path, tmp)
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise ConfigDriveError("%s could not make %s: %s" % (cmd[0], iso_path, e)) from None
        if r.returncode != 0:
            why = (r.stderr or r.stdout).strip() or "exit status %d" % r.returncode
            raise ConfigDriveError("%s could not make %s: %s" % (cmd[0], iso_path, why))
    os.chmod(iso_path, 0o600)  # the instance's user data and password: root's (QEMU runs as root) alone
