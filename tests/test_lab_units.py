"""vrouter-lab's pure parts, without root: the instance it serves a guest, the SSH session's
sections, the matrix file, the exit status of several runs, and the image check before a boot."""

import email
import json
import subprocess

import pytest

from topology.model import VM, Net
from vrouter_lab.gather import _script, parse_sections
from vrouter_lab.guest import ImageError, check_image
from vrouter_lab.instance import LAB_KEY_NAME, expected, record, user_data_bytes, user_data_kind, with_reporting
from vrouter_lab.runs import Run, load_matrix, worst

VM1 = VM(name="guest1", namespace="", ip="10.1.1.4", mac="02:00:0a:01:00:04", tap="tap12345678-9a", port_uuid="12345678-9abc-4def-8123-456789abcdef",
         instance_uuid="0c6b3a4e-1111-4222-8333-444455556666", project_id="9a7b5c3d-1111-4222-8333-444455556666", vn_uuid="v", gateway="10.1.1.1",
         prefix_len=24, ipv6="fd00:10:1:1::4", kind="qemu")  # fmt: skip
URL = "http://169.254.169.250/events/" + VM1.instance_uuid
NET = Net("lab-net", "v", 1, "dhcpv6-stateful")


def test_the_instance_has_the_users_data_and_keys_and_the_labs_key_and_reporting_beside_them():
    rec = record(VM1, NET, {"hostname": "web", "meta": {"a": "b"}}, "#cloud-config\n{}\n", {"default": "ssh-ed25519 AAAAuser u"},
                 "ssh-ed25519 AAAAlab lab", URL)  # fmt: skip
    assert rec["hostname"] == "web" and rec["meta"] == {"a": "b"} and rec["user_data"] == "#cloud-config\n{}\n"
    assert rec["public_keys"] == {"default": "ssh-ed25519 AAAAuser u", LAB_KEY_NAME: "ssh-ed25519 AAAAlab lab"}
    assert rec["project_id"] == "9a7b5c3d111142228333444455556666" and rec["dhcp"] is True
    assert rec["vendor_data2"]["cloud-init"].splitlines() == [
        "#cloud-config", "reporting:", "  vrouter-lab:", "    type: webhook", "    endpoint: " + URL, "    timeout: 5", "    retries: 3"]  # fmt: skip
    exp = expected(rec, "ConfigDrive", "only", "first")
    assert exp.hostname == "web" and len(exp.keys) == 2 and exp.user_data_kind == "cloud-config" and exp.datasource == "ConfigDrive"
    assert exp.ipv6 == "" and exp.ipv6_peer == ""  # IPv6 judged only when asked
    # dual stack: the port's IPv6 and its subnet, for network_data.json; judged with a peer to reach
    assert (rec["ip6"], rec["ipv6_mode"], rec["ipv6_prefix"], rec["ipv6_gateway"], rec["ipv6_dns_server"]) == (
        "fd00:10:1:1::4", "dhcpv6-stateful", "fd00:10:1:1::/64", "fd00:10:1:1::1", "fd00:10:1:1::2")  # fmt: skip
    exp6 = expected(rec, "", "none", "first", "fd00:10:1:1::3")
    assert (exp6.ipv6, exp6.ipv6_peer) == ("fd00:10:1:1::4", "fd00:10:1:1::3")


def test_a_users_own_vendor_data2_is_kept_beside_the_labs_reporting_in_a_multipart():
    vd2 = with_reporting({"cloud-init": "#cloud-config\npackages: [htop]\n", "other": 1}, URL)
    assert vd2["other"] == 1
    parts = [p.get_payload(decode=True).decode() for p in email.message_from_string(vd2["cloud-init"]).walk() if not p.is_multipart()]
    assert parts[0] == "#cloud-config\npackages: [htop]\n" and "reporting:" in parts[1]


def test_user_data_that_is_not_text_is_kept_as_base64_and_read_back_whole():
    blob = b"\x1f\x8b\x08\x00binary\xff"
    rec = record(VM1, NET, {}, blob, {}, "", URL)
    assert rec["user_data"].keys() == {"base64"} and user_data_bytes(rec["user_data"]) == blob
    assert LAB_KEY_NAME not in rec["public_keys"]
    assert [user_data_kind(d) for d in (b"#!/bin/sh\n", b"  #cloud-config\n", blob, b"Content-Type: multipart/mixed", b"x", None)] == [
        "script", "cloud-config", "gzip", "multipart", "other", ""]  # fmt: skip


def test_the_ssh_session_is_cut_back_into_each_commands_output_and_exit_code():
    out = subprocess.run(["sh", "-c", _script().replace("sudo ", "")], capture_output=True, text=True).stdout
    texts, codes = parse_sections(out)
    assert set(texts) == set(codes) and "hostname" in texts and codes["hostname"] == 0
    assert texts["hostname"].strip() == subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
    assert parse_sections("@@@vrouter-lab:begin:a\nx\ny\n@@@vrouter-lab:end:a:3\n@@@vrouter-lab:begin:b\ncut") == ({"a": "x\ny"}, {"a": 3})


def test_a_matrix_is_the_product_of_images_user_data_and_config_drive_modes(tmp_path):
    (tmp_path / "ok.yaml").write_text("#cloud-config\n{}\n")
    m = tmp_path / "m.json"
    m.write_text(json.dumps({"images": ["a.qcow2", "/abs/b.qcow2"], "user_data": ["ok.yaml", None], "config_drive": ["none", "only"],
                             "expect_datasource": {"only": "ConfigDrive"}, "parallel": 3, "timeout": 60}))  # fmt: skip
    runs, parallel = load_matrix(str(m), Run(image=""), lambda _o, p: open(p, "rb").read())
    assert parallel == 3 and len(runs) == 8
    assert [r.label for r in runs[:4]] == ["a-ok-none", "a-ok-only", "a-no-user-data-none", "a-no-user-data-only"]
    assert runs[0].image == str(tmp_path / "a.qcow2") and runs[4].image == "/abs/b.qcow2" and runs[0].user_data == b"#cloud-config\n{}\n"
    assert [r.expect_datasource for r in runs[:2]] == ["", "ConfigDrive"] and all(r.timeout == 60 for r in runs)
    toml = tmp_path / "m.toml"
    toml.write_text('images = ["a.qcow2"]\nconfig_drive = ["both"]\n')
    runs, parallel = load_matrix(str(toml), Run(image=""), lambda _o, p: b"")
    assert parallel is None and [(r.label, r.config_drive, r.user_data) for r in runs] == [("a-no-user-data-both", "both", None)]


@pytest.mark.parametrize(
    ("content", "says"),
    [("[]", "an object"), ('{"images": []}', "images: a list"), ('{"images": ["a"], "config_drive": ["sometimes"]}', "config_drive: a list"),
     ('{"images": ["a"], "colour": 1}', "unknown keys colour"), ("{", "not JSON"), ('{"images": ["a"], "parallel": 0}', "parallel")],
)  # fmt: skip
def test_a_matrix_that_makes_no_sense_is_refused_naming_what(tmp_path, content, says):
    m = tmp_path / "m.json"
    m.write_text(content)
    with pytest.raises(ValueError, match=says):
        load_matrix(str(m), Run(image=""), lambda _o, p: b"")


def test_several_runs_exit_with_the_worst_a_fail_before_an_error_before_degraded():
    assert [worst(c) for c in ([0, 0], [0, 2], [2, 3], [3, 1], [])] == [0, 2, 3, 1, 0]


def test_a_file_that_is_no_bootable_disk_is_refused_before_any_boot(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("this is not an image\n" * 100)
    with pytest.raises(ImageError, match="no boot signature"):
        check_image(str(text))
    mbr = tmp_path / "disk.raw"
    mbr.write_bytes(b"\0" * 510 + b"\x55\xaa" + b"\0" * 4096)
    check_image(str(mbr))
    qcow = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(mbr), str(qcow)], check=True)
    check_image(str(qcow))
    with pytest.raises(ImageError, match="no boot signature"):
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(tmp_path / "empty.qcow2"), "1M"], check=True)
        check_image(str(tmp_path / "empty.qcow2"))
