"""Nova's config drive: its files (paths, version gating, the service's bytes), and an ISO built
with genisoimage or xorriso, read back."""

import base64
import json
import os
import shutil
import subprocess
import sys

import pytest

from fabric import config_drive
from fabric.config_drive import ConfigDriveError, build, tree
from fabric.nova_metadata import NovaMetadata, parse_instances
from fabric.nova_tree import ec2_md_print
from vrouter.services.metadata.signing import sign_instance_id

UUID = "0b9c4f2e-7a51-4c4b-9d6e-0d3c1f5a2b77"
PROJECT = "5a3f0c1e2d4b4f6a8c9e0b1d2f3a4c5e"
SECRET = "s3cret"
INST = {
    "uuid": UUID,
    "name": "vm1",
    "project_id": PROJECT,
    "public_keys": {"demo": "ssh-ed25519 AAAA demo"},
    "user_data": "#cloud-config\nhostname: vm1\n",
    "vendor_data": {"site": "lab"},
    "meta": {"role": "db"},
    "ip": "10.1.1.3",
    "mac": "02:00:0a:01:00:03",
    "port_uuid": "11111111-2222-3333-4444-555555555555",
    "gateway": "10.1.1.1",
}
FILES = [{"path": "/etc/motd", "contents": "hello\n"}, {"path": "/root/blob", "contents": {"base64": base64.b64encode(b"\x00\xff").decode()}}]
OPENSTACK = ["2012-08-10", "2013-04-04", "2013-10-17", "2015-10-15", "2016-06-30", "2016-10-06", "2017-02-22", "2018-08-27",
             "2020-10-14", "2025-04-04", "latest"]  # fmt: skip


class _Store:
    def __init__(self, inst):
        self.inst, self.passwords = inst, {}

    def get(self, uuid):
        return self.inst if uuid == self.inst["uuid"] else None


def served(inst, path):
    """The metadata service's answer to GET ``path`` for ``inst``."""
    headers = {"x-instance-id": [UUID], "x-tenant-id": [PROJECT], "x-instance-id-signature": [sign_instance_id(UUID, SECRET)]}
    return NovaMetadata(_Store(inst), SECRET).handle("GET", "/" + path, headers)


def test_the_drive_holds_novas_files_for_each_version():
    files = tree(dict(INST, files=FILES))
    expected = {"ec2/%s/%s" % (v, n) for v in ("2009-04-04", "latest") for n in ("meta-data.json", "user-data")}
    for n, version in enumerate(OPENSTACK):
        names = ["meta_data.json", "user_data"]
        names += ["vendor_data.json"] * (n >= 2) + ["network_data.json"] * (n >= 3) + ["vendor_data2.json"] * (n >= 5)
        expected |= {"openstack/%s/%s" % (version, name) for name in names}
    expected |= {"openstack/content/0000", "openstack/content/0001"}
    assert set(files) == expected
    assert not [p for p in files if p.endswith("password")]  # the guest posts that to the service
    assert all(isinstance(b, bytes) for b in files.values())


def test_without_user_data_there_is_no_user_data_file():
    files = tree({k: v for k, v in INST.items() if k != "user_data"})
    assert not [p for p in files if p.endswith(("user_data", "user-data"))]
    assert "openstack/latest/meta_data.json" in files


def test_the_drives_files_are_the_services_bytes():
    """The same code renders both: every openstack file of the drive is what the service answers
    to its path (random_seed included), for an instance without injected files."""
    files = tree(INST)
    for path, data in files.items():
        if path.startswith("openstack/"):
            answer = served(INST, path)
            assert answer.status == 200 and answer.body == data, path


def test_the_drives_ec2_json_holds_what_the_service_answers_key_by_key():
    for version in ("2009-04-04", "latest"):
        md = json.loads(tree(INST)["ec2/%s/meta-data.json" % version])
        assert md["public-keys"] == {"0": {"openssh-key": "ssh-ed25519 AAAA demo"}}  # Nova drops "_name" on the drive
        assert md["ami-launch-index"] == 0 and md["security-groups"] == ["default"]
        for key, value in md.items():
            if not isinstance(value, dict):
                assert served(INST, "%s/meta-data/%s" % (version, key)).body == ec2_md_print(value), key
        assert served(INST, "%s/meta-data/placement/availability-zone" % version).body == b"nova"
        assert tree(INST)["ec2/%s/user-data" % version] == served(INST, "%s/user-data" % version).body


def test_injected_files_and_admin_pass_are_on_the_drive():
    inst = dict(INST, files=FILES, admin_pass="pw")
    files = tree(inst)
    assert files["openstack/content/0000"] == b"hello\n" and files["openstack/content/0001"] == b"\x00\xff"
    md = json.loads(files["openstack/latest/meta_data.json"])
    assert md["files"] == [{"path": "/etc/motd", "content_path": "/content/0000"}, {"path": "/root/blob", "content_path": "/content/0001"}]
    assert md["admin_pass"] == "pw" and list(md)[:4] == ["uuid", "meta", "files", "admin_pass"]
    # the service's meta_data.json is the drive's without the files (Nova's service has no record of them)
    assert json.loads(served(inst, "openstack/latest/meta_data.json").body) == {k: v for k, v in md.items() if k != "files"}


def test_meta_data_json_is_gated_by_version_on_the_drive():
    files = tree(INST)
    assert "random_seed" not in json.loads(files["openstack/2012-08-10/meta_data.json"])
    assert "project_id" not in json.loads(files["openstack/2013-10-17/meta_data.json"])
    assert "devices" in json.loads(files["openstack/2016-06-30/meta_data.json"])
    assert "dedicated_cpus" in json.loads(files["openstack/latest/meta_data.json"])
    assert json.loads(files["openstack/latest/vendor_data2.json"]) == {"static": {"site": "lab"}}


def test_an_instance_record_the_service_accepts_makes_a_drive():
    inst = parse_instances(json.dumps({"instances": [dict(INST, files=FILES, user_data={"base64": "AP8="})]}))[UUID]
    assert tree(inst)["openstack/latest/user_data"] == b"\x00\xff"


def test_no_tool_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(config_drive.shutil, "which", lambda _name: None)
    with pytest.raises(ConfigDriveError, match="apt-get install genisoimage"):
        build(INST, str(tmp_path / "cd.iso"))


def test_a_failing_tool_says_what_it_said(monkeypatch, tmp_path):
    def failing(iso_path, directory):
        return [sys.executable, "-c", "import sys; sys.exit('cannot write %s')" % iso_path]

    monkeypatch.setattr(config_drive, "mkisofs_command", failing)
    with pytest.raises(ConfigDriveError, match="cannot write .*cd.iso"):
        build(INST, str(tmp_path / "cd.iso"))


def test_the_command_is_novas():
    if not (shutil.which("genisoimage") or shutil.which("xorriso")):
        pytest.skip("neither genisoimage nor xorriso is installed")
    cmd = config_drive.mkisofs_command("/x.iso", "/d")
    flags = ["-o", "/x.iso", "-ldots", "-allow-lowercase", "-allow-multidot", "-l", "-publisher", config_drive.PUBLISHER,
             "-quiet", "-J", "-r", "-V", "config-2", "/d"]  # fmt: skip
    assert cmd in (["genisoimage", *flags], ["xorriso", "-as", "mkisofs", *flags])


def _iso_read(iso, path):
    """A file's bytes from the image, by its Rock Ridge name."""
    if shutil.which("isoinfo"):
        return subprocess.run(["isoinfo", "-R", "-i", iso, "-x", "/" + path], capture_output=True, check=True, timeout=30).stdout
    out = os.path.join(os.path.dirname(iso), "extracted")
    subprocess.run(["xorriso", "-osirrox", "on", "-indev", iso, "-extract", "/" + path, out], capture_output=True, check=True, timeout=30)
    with open(out, "rb") as f:
        return f.read()


def _iso_label_and_names(iso):
    if shutil.which("isoinfo"):
        info = subprocess.run(["isoinfo", "-d", "-i", iso], capture_output=True, text=True, check=True, timeout=30).stdout
        label = next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("Volume id:"))
        assert "Rock Ridge signatures" in info and "Joliet" in info
        names = subprocess.run(["isoinfo", "-R", "-f", "-i", iso], capture_output=True, text=True, check=True, timeout=30).stdout
        return label, {n.lstrip("/") for n in names.split()}
    r = subprocess.run(["xorriso", "-indev", iso, "-pvd_info", "-find", "/", "-type", "f"], capture_output=True, text=True, check=True, timeout=30)
    label = next(line.split(":", 1)[1].strip().strip("'") for line in r.stdout.splitlines() if line.startswith("Volume Id"))
    return label, {n.strip("'").lstrip("/") for n in r.stdout.split() if n.startswith("'/")}


def test_the_iso_is_labelled_config_2_with_rock_ridge_names(tmp_path):
    if not (shutil.which("genisoimage") or shutil.which("xorriso")):
        pytest.skip("neither genisoimage nor xorriso is installed")
    inst = dict(INST, files=FILES)
    iso = str(tmp_path / "cd.iso")
    build(inst, iso)
    label, names = _iso_label_and_names(iso)
    assert label == "config-2"
    files = tree(inst)
    assert set(files) <= names  # lowercase names with underscores and dots, as cloud-init reads them
    for path in ("openstack/latest/meta_data.json", "openstack/2013-10-17/vendor_data.json", "ec2/latest/meta-data.json", "openstack/content/0001"):
        assert _iso_read(iso, path) == files[path], path
