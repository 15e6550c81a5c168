"""``vrouter-lab check`` and the pytest plugin, as CI runs them, on the Debian image the project builds
(make test-guests: minutes under TCG).

* a single check on a node that is up (``--prefix``), with user data, a key and ``--config-drive
  only``: cloud-init picks ConfigDrive, the verdict passes, the JUnit file reads back, the
  instance's metadata requests were refused, and only the guest is removed after;
* a matrix that builds its own node, three user data side by side: one passes, one warns (degraded,
  its phone_home post collected), one fails naming the module, and nothing of the node is left;
* bad input: a file that is no image gets a failing verdict with the reason at once, before any
  node is built; wrong arguments exit 1 (never 2, which CI reads as degraded);
* the pytest plugin's example (boot, reboot, rebuild), run as a user runs it, and its make_lab fixture.
"""

import json
import os
import subprocess
import xml.etree.ElementTree as ET

import pytest

from tests.helpers import ROOT

pytestmark = [pytest.mark.netns, pytest.mark.guests]

LAB = ROOT / ".venv" / "bin" / "vrouter-lab"
GOOD = """#cloud-config
runcmd:
  - [sh, -c, 'echo ran > /var/tmp/ran']
"""
# cloud-init 22.4's phone_home reads every host key type, DSA too, which the image has none of: a warning
PHONE = """#cloud-config
phone_home:
  url: http://169.254.169.250/phone-home/$INSTANCE_ID
  post: [instance_id, hostname]
  tries: 3
"""
BAD = """#!/bin/sh
echo "failing on purpose" >&2
exit 3
"""


def lab(*args: str, timeout: float = 1500) -> subprocess.CompletedProcess:
    return subprocess.run([str(LAB), *args], capture_output=True, text=True, timeout=timeout)


def namespaces(prefix: str) -> list[str]:
    return [n for n in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split() if n.startswith(prefix + "-")]


def test_a_config_drive_only_boot_on_a_node_that_is_up_passes_with_configdrive(tmp_path, make_node, debian_image):
    h = make_node(vms=1, ipv6=("dhcpv6-stateful",))  # dual stack: the guest takes its IPv6 address by DHCPv6
    key = tmp_path / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ci", "-f", str(key)], check=True)
    (tmp_path / "ud").write_text(GOOD)
    r = lab("check", str(debian_image), "--prefix", h.prefix, "--user-data", str(tmp_path / "ud"), "--ssh-key", str(key) + ".pub",
            "--config-drive", "only", "--expect-datasource", "ConfigDrive", "--json", str(tmp_path / "r.json"),
            "--junit", str(tmp_path / "j.xml"), "--ipv6", "dhcpv6-stateful")  # fmt: skip
    report = json.loads((tmp_path / "r.json").read_text())
    assert r.returncode == 0, r.stdout + r.stderr
    print("\n" + r.stdout)
    assert report["status"] == "pass" and report["config_drive"] == "only"
    assert report["cloud_init"]["datasource_name"].startswith("ConfigDrive"), report["cloud_init"]
    assert {e["name"]: e["result"] for e in report["expectations"]} == {
        "datasource": "pass", "hostname": "pass", "keys installed": "pass", "user data ran": "pass", "no errors": "pass", "ipv6": "pass"}  # fmt: skip
    # the IPv6 network from the config drive's network_data.json, its address by the agent's
    # DHCPv6 (the guest's own dhclient -6), and vm1 reached over IPv6 after cloud-init
    ipv6 = next(e for e in report["expectations"] if e["name"] == "ipv6")
    assert ipv6["expected"] in ipv6["actual"] and "%s reached" % h.vms[0]["ipv6"] in ipv6["message"], ipv6
    assert [s["name"] for s in report["stages"]] == ["init-local", "init-network", "modules-config", "modules-final"]
    assert all(s["finish"] is not None for s in report["stages"]) and report["timings"]["lease"] is not None
    assert report["sources"]["ssh"] == "used" and report["sources"]["webhook"] > 0
    # the metadata service refused this instance: whatever it asked (if anything) got no answer
    assert all(m["status"] != 200 for m in report["metadata_requests"]), report["metadata_requests"]
    suites = ET.parse(tmp_path / "j.xml").getroot()
    suite = suites if suites.tag == "testsuite" else suites.find("testsuite")
    assert suite is not None and suite.get("failures") == "0" and suite.get("errors") == "0"
    names = [c.get("name") for c in suite.iter("testcase")]
    assert {"stage init-local", "stage modules-final", "datasource", "keys installed"} <= set(names), names
    # only the guest went: the node is up as it was
    assert h.cli_json("port", "list") and len(h.cli_json("port", "list")) == 1
    assert json.loads(open(h.lab.files.path("layout.json")).read())["guests"] == []


def test_a_matrix_judges_good_warning_and_failing_user_data_side_by_side_on_a_node_of_its_own(tmp_path, debian_image):
    (tmp_path / "good.yaml").write_text(GOOD)
    (tmp_path / "phone.yaml").write_text(PHONE)
    (tmp_path / "bad.sh").write_text(BAD)
    (tmp_path / "m.json").write_text(json.dumps({"images": [str(debian_image)], "user_data": ["good.yaml", "phone.yaml", "bad.sh"],
                                                 "config_drive": ["none"], "parallel": 3}))  # fmt: skip
    r = lab("check", "--matrix", str(tmp_path / "m.json"), "--json", str(tmp_path / "reports"), "--junit", str(tmp_path / "all.xml"))
    print("\n" + r.stdout)
    assert r.returncode == 1, r.stdout + r.stderr  # the worst of the three
    good = json.loads((tmp_path / "reports" / "debian12-good-none.json").read_text())
    phone = json.loads((tmp_path / "reports" / "debian12-phone-none.json").read_text())
    bad = json.loads((tmp_path / "reports" / "debian12-bad-none.json").read_text())
    assert good["status"] == "pass" and good["cloud_init"]["datasource_name"].startswith("OpenStack"), good["reason"]
    assert any(m["path"].endswith("/user_data") and m["status"] == 200 for m in good["metadata_requests"])
    assert good["sources"]["webhook"] > 0 and phone["sources"]["phone_home"] == 1  # both reached the collector on the fabric
    assert (phone["status"], phone["exit_code"]) == ("degraded", 2) and "can not phone home" in phone["reason"], phone["reason"]
    assert bad["status"] == "fail" and bad["exit_code"] == 1 and "scripts-user" in bad["reason"], bad["reason"]
    assert bad["console_tail"]
    suites = ET.parse(tmp_path / "all.xml").getroot()
    assert suites.tag == "testsuites" and len(suites.findall("testsuite")) == 3
    assert sum(int(s.get("failures") or 0) for s in suites.findall("testsuite")) >= 1
    prefix = good["instance"]["prefix"]
    assert (
        bad["instance"]["prefix"] == phone["instance"]["prefix"] == prefix
        and namespaces(prefix) == []
        and not os.path.exists("/run/vrouter/" + prefix)
    )


def test_a_file_that_is_not_an_image_gets_a_failing_verdict_at_once_without_a_node(tmp_path):
    junk = tmp_path / "image.qcow2"
    junk.write_text("not an image\n" * 1000)
    r = lab("check", str(junk), "--json", str(tmp_path / "r.json"), "--no-ssh", timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["status"] == "fail" and "no boot signature" in report["reason"]
    assert "building" not in r.stderr  # judged before any node was built
    for args, says in [(["--timeout", "5"], "an IMAGE or --matrix"), ([str(junk), "--config-drive", "sometimes"], "--config-drive"),
                       ([str(junk), "--timeout", "soon"], "--timeout"), ([str(junk), "--name", "../x"], "--name"),
                       ([str(junk), "--json", str(tmp_path)], "a directory")]:  # fmt: skip
        r = lab("check", *args)
        assert r.returncode == 1 and says in r.stderr, (args, r.returncode, r.stderr)  # wrong arguments: 1, never 2 (degraded)


def test_the_pytest_plugins_example_boots_reboots_and_rebuilds(tmp_path, debian_image):
    r = subprocess.run([str(ROOT / ".venv" / "bin" / "pytest"), "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
                        "--vrouter-lab-image", str(debian_image), "--junitxml", str(tmp_path / "j.xml"),
                        str(ROOT / "examples" / "pytest" / "test_cloud_image.py")],
                       capture_output=True, text=True, timeout=1800, cwd=tmp_path)  # fmt: skip
    print("\n" + r.stdout[-3000:])
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    suite = ET.parse(tmp_path / "j.xml").getroot().find("testsuite")
    assert suite is not None and suite.get("tests") == "1" and suite.get("failures") == "0" and suite.get("skipped") == "0"


def test_the_plugins_make_lab_builds_a_node_with_networks_and_vms_and_removes_it(make_lab):
    lab = make_lab(vms=3, networks=2)
    layout = lab.node.layout
    assert len(layout["networks"]) == 2 and len(layout["vms"]) == 3 and namespaces(lab.prefix)
    assert {v["network"] for v in layout["vms"]} == {n["name"] for n in layout["networks"]}
    lab.down()
    assert namespaces(lab.prefix) == []
