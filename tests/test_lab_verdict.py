"""The verdict on a guest's boot (vrouter_lab.verdict, .console, .report): pure, fast, no root.

The console text is cloud-init 22.4.2's on Debian 12 as its source writes it (banners from cmd/main.py, the final message
from cc_final_message, WARNING lines in the logging config's format, the authorized keys table of
cc_ssh_authkey_fingerprints built the way SimpleTable builds it), forwarded by journald (``[  24.86] cloud-init[412]: ``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import xml.etree.ElementTree as ET
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vrouter_lab.console import (
    fingerprint,
    normal_status,
    openssh_fingerprint,
    parse_analyze,
    parse_console,
    parse_events,
    parse_status,
    parse_status_file,
    strip_prefix,
)
from vrouter_lab.evidence import ConsoleLine, Evidence, Expected, Report, Request
from vrouter_lab.report import junit, summary, to_json, xml_text
from vrouter_lab.verdict import SCHEMA, decide, ds_matches

UUID = "5d7f2c4e-3b1a-4c8e-9f60-2a1b3c4d5e6f"


def ed25519(seed: str, comment: str) -> str:
    blob = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + hashlib.sha256(seed.encode()).digest()
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} {comment}"


USER_KEY, LAB_KEY, OTHER_KEY = ed25519("user", "user@ci"), ed25519("lab", "vrouter-lab"), ed25519("other", "other@x")
USER_DATA = b"#cloud-config\nruncmd:\n  - [sh, -c, 'echo hello > /tmp/hello']\n"


def keys_table(user: str, keys: list[str]) -> list[str]:
    """cc_ssh_authkey_fingerprints' table, built as cloudinit/simpletable.py and util.center build it."""
    fields = ["Keytype", "Fingerprint (sha256)", "Options", "Comment"]
    rows = [[k.split()[0], fingerprint(k), "-", k.split()[2]] for k in keys]
    widths = [max(len(r[i]) for r in [fields, *rows]) for i in range(4)]
    hdiv = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def row(cells: list[str]) -> str:
        return "|" + "|".join(c.center(widths[i] + 2) for i, c in enumerate(cells)) + "|"

    table = [hdiv, row(fields), hdiv, *[row(r) for r in rows], hdiv]
    title = "{0:{fill}{align}{size}}".format(
        f"Authorized keys from /home/{user}/.ssh/authorized_keys for user {user}", fill="+", align="^", size=len(hdiv)
    )
    return ["ci-info: " + line for line in [title, *table]]


def j(uptime: float, text: str) -> str:
    """A line of the cloud-init units' output as journald forwards it to the console."""
    return f"[{uptime:12.6f}] cloud-init[412]: {text}"


def banner(stage: str, uptime: float, clock: str = "08:00:24") -> str:
    return j(uptime, f"Cloud-init v. 22.4.2 running '{stage}' at Mon, 07 Dec 2026 {clock} +0000. Up {uptime:.2f} seconds.")


def warning(uptime: float, file: str, message: str) -> str:
    return j(uptime, f"2026-12-07 08:01:{int(uptime) % 60:02d},123 - {file}[WARNING]: {message}")


KERNEL = [
    "SeaBIOS (version 1.16.2-debian-1.16.2-1)",
    "Booting from ROM...",
    "[    0.000000] Linux version 6.1.0-28-cloud-amd64 (debian-kernel@lists.debian.org) (gcc-12 (Debian 12.2.0-14) 12.2.0) #1 SMP PREEMPT_DYNAMIC "
    "Debian 6.1.119-1 (2024-11-22)",
    "[    0.000000] Command line: root=/dev/vda console=ttyS0",
    "[    4.812345] Run /init as init process",
    "[   18.402115] systemd[1]: Detected virtualization qemu.",
]
INIT_LOCAL = [
    "         Starting cloud-init-local.service - Initial cloud-init job (pre-networking)...",
    banner("init-local", 24.80),
    "[  OK  ] Finished cloud-init-local.service - Initial cloud-init job (pre-networking).",
    "[  OK  ] Reached target network-pre.target - Preparation for Network.",
]
INIT = [
    "         Starting cloud-init.service - Initial cloud-init job (metadata service crawler)...",
    banner("init", 52.05, "08:00:52"),
    j(52.3, "ci-info: ++++++++++++++++++++++++++++++++++++Net device info++++++++++++++++++++++++++++++++++++"),
    j(52.3, "ci-info: +--------+------+-----------------------------+---------------+--------+-------------------+"),
    j(52.3, "ci-info: | Device |  Up  |           Address           |      Mask     | Scope  |     Hw-Address    |"),
    j(52.3, "ci-info: +--------+------+-----------------------------+---------------+--------+-------------------+"),
    j(52.3, "ci-info: |  ens3  | True |           10.1.1.3          | 255.255.255.0 | global | 02:7f:00:00:01:03 |"),
    j(52.3, "ci-info: +--------+------+-----------------------------+---------------+--------+-------------------+"),
    j(60.1, "Generating public/private ed25519 key pair."),
    "[  OK  ] Finished cloud-init.service - Initial cloud-init job (metadata service crawler).",
    "[  OK  ] Reached target cloud-config.target - Cloud-config availability.",
]
CONFIG = [
    "         Starting cloud-config.service - Apply the settings specified in cloud-config...",
    banner("modules:config", 70.43, "08:01:10"),
    "[  OK  ] Finished cloud-config.service - Apply the settings specified in cloud-config.",
]
FINAL_START = ["         Starting cloud-final.service - Execute cloud user/final scripts...", banner("modules:final", 80.12, "08:01:20")]
HOST_KEYS = [
    "<14>Dec  7 08:01:21 cloud-init: #############################################################",
    "<14>Dec  7 08:01:21 cloud-init: -----BEGIN SSH HOST KEY FINGERPRINTS-----",
    "<14>Dec  7 08:01:21 cloud-init: 256 SHA256:3iM1xwGXlVSDj6WQ7Nq6q8q2HbY4ZbCkS6ZYVbPLUfs root@guest1 (ED25519)",
    "<14>Dec  7 08:01:21 cloud-init: -----END SSH HOST KEY FINGERPRINTS-----",
    "<14>Dec  7 08:01:21 cloud-init: #############################################################",
]
FINISHED = j(
    95.21, "Cloud-init v. 22.4.2 finished at Mon, 07 Dec 2026 08:01:35 +0000. Datasource DataSourceOpenStackLocal [net,ver=2].  Up 95.21 seconds"
)
LOGIN = ["[  OK  ] Finished cloud-final.service - Execute cloud user/final scripts.", "", "Debian GNU/Linux 12 guest1 ttyS0", "", "guest1 login: "]
RUNCMD_FAILED = [
    j(81.0, "+ false"),
    warning(81.1, "cc_scripts_user.py", "Failed to run module scripts-user (scripts in /var/lib/cloud/instance/scripts)"),
    warning(
        81.1,
        "util.py",
        "Running module scripts-user (<module 'cloudinit.config.cc_scripts_user' from "
        "'/usr/lib/python3/dist-packages/cloudinit/config/cc_scripts_user.py'>) failed",
    ),
]
INIT_TRACEBACK = [
    warning(53.0, "util.py", "failed stage init"),
    j(53.0, "failed run of stage init"),
    j(53.0, "------------------------------------------------------------"),
    j(53.0, "Traceback (most recent call last):"),
    j(53.0, '  File "/usr/lib/python3/dist-packages/cloudinit/cmd/main.py", line 767, in status_wrapper'),
    j(53.0, "    ret = functor(name, args)"),
    j(53.0, '  File "/usr/lib/python3/dist-packages/cloudinit/cmd/main.py", line 433, in main_init'),
    j(53.0, "    init.apply_network_config(bring_up=bring_up_interfaces)"),
    j(53.0, "RuntimeError: no network config"),
    j(53.0, "------------------------------------------------------------"),
]


def first_boot(final: list[str] | None = None, keys: list[str] | None = None) -> list[str]:
    table = keys_table("debian", keys if keys is not None else [USER_KEY, LAB_KEY])
    return KERNEL + INIT_LOCAL + INIT + CONFIG + FINAL_START + (final or []) + table + HOST_KEYS + [FINISHED] + LOGIN


def console(text: list[str]) -> list[ConsoleLine]:
    """Lines stamped as the lab stamps them: when read, half a second after the guest's uptime in their prefix."""
    out, t = [], 0.5
    for line in text:
        m = re.match(r"\[\s*(\d+\.\d+)\]", line)
        t = max(t, float(m.group(1)) + 0.5) if m else t + 0.01
        out.append(ConsoleLine(round(t, 3), line))
    return out


def evidence(lines: list[str] | None = None, **kw: Any) -> Evidence:
    given = {
        "hostname": "guest1",
        "keys": [USER_KEY, LAB_KEY],
        "user_data_sha256": hashlib.sha256(USER_DATA).hexdigest(),
        "user_data_kind": "cloud-config",
    }
    expected = Expected(**{**given, **kw.pop("expected", {})})
    requests = [
        Request(50.9, "GET", "/openstack", 200, 120),
        Request(51.0, "GET", "/openstack/2018-08-27/meta_data.json", 200, 900),
        Request(51.1, "GET", "/openstack/2018-08-27/user_data", 200, len(USER_DATA)),
    ]
    base: dict[str, Any] = dict(image="/var/lib/images/debian-12-generic.qcow2", instance={"name": "guest1", "uuid": UUID, "ip": "10.1.1.3"},
                                expected=expected, console=console(first_boot() if lines is None else lines), requests=requests,
                                lease_t=50.5, waited=96.0, ssh_error="not asked for")  # fmt: skip
    base.update(kw)
    return Evidence(**base)


FREQ = {"config-bootcmd": "always", "config-update-hostname": "always", "config-final-message": "always", "config-scripts-per-boot": "always"}
MODULES = {
    "init-network": [
        "config-seed-random",
        "config-bootcmd",
        "config-write-files",
        "config-set-hostname",
        "config-update-hostname",
        "config-users-groups",
        "config-ssh",
    ],
    "modules-config": ["config-locale", "config-set-passwords", "config-timezone", "config-runcmd"],
    "modules-final": [
        "config-scripts-per-boot",
        "config-scripts-user",
        "config-ssh-authkey-fingerprints",
        "config-keys-to-console",
        "config-final-message",
    ],
}
STAGE_T = {"init-local": (25.3, 26.0), "init-network": (52.5, 66.0), "modules-config": (70.9, 72.0), "modules-final": (80.6, 95.9)}
STAGE_DESC = {"init-local": "searching for local datasources", "init-network": "searching for network datasources",
              "modules-config": "running modules for config", "modules-final": "running modules for final"}  # fmt: skip


def webhook(reboot: bool = False, fail: str = "", ran_again: str = "") -> list[Report]:
    """The events cloud-init's webhook handler posts for one boot (reporting/events.py's as_dict, modules.py's descriptions)."""
    out: list[Report] = []

    def post(t: float, body: dict[str, Any]) -> None:
        out.append(Report(t, "event", {"origin": "cloudinit", "timestamp": 1796630400.0 + t - 0.5, **body}))

    for stage, (t0, t1) in STAGE_T.items():
        post(t0, {"name": stage, "description": STAGE_DESC[stage], "event_type": "start"})
        if stage == "init-local":
            post(
                t0 + 0.1,
                {
                    "name": "init-local/search-OpenStackLocal",
                    "description": "searching for local data from DataSourceOpenStackLocal",
                    "event_type": "start",
                },
            )
            post(t0 + 0.5, {"name": "init-local/search-OpenStackLocal", "description": "found local data from DataSourceOpenStackLocal",
                            "event_type": "finish", "result": "SUCCESS"})  # fmt: skip
        result = "SUCCESS"
        for i, module in enumerate(MODULES.get(stage, [])):
            freq = FREQ.get(module, "once-per-instance")
            post(t0 + 0.2 + i * 0.01, {"name": f"{stage}/{module}", "description": f"running {module} with frequency {freq}", "event_type": "start"})
            if module == fail:
                desc, res = f"running {module} with frequency {freq}", "FAIL"
                result = "FAIL"
            elif reboot and freq == "once-per-instance" and module != ran_again:
                desc, res = f"{module} previously ran", "SUCCESS"
            else:
                desc, res = f"{module} ran successfully", "SUCCESS"
            post(t0 + 0.25 + i * 0.01, {"name": f"{stage}/{module}", "description": desc, "event_type": "finish", "result": res})
        post(t1, {"name": stage, "description": STAGE_DESC[stage], "event_type": "finish", "result": result})
    return out


STATUS_22_4 = json.dumps(
    {
        "_schema_version": "1",
        "boot_status_code": "enabled-by-generator",
        "datasource": "openstacklocal",
        "detail": "DataSourceOpenStackLocal [net,ver=2]",
        "errors": [],
        "last_update": "Mon, 07 Dec 2026 08:01:35 +0000",
        "schemas": {"1": {"datasource": "openstacklocal", "status": "done"}},
        "status": "done",
    },
    indent=2,
    sort_keys=True,
)
RUNPARTS_ERROR = "('scripts-user', RuntimeError('Runparts: 1 failures (runcmd) in 1 attempted commands'))"
STATUS_22_4_ERROR = json.dumps({**json.loads(STATUS_22_4), "status": "error", "errors": [RUNPARTS_ERROR], "detail": RUNPARTS_ERROR}, indent=2)
STATUS_JSON_22_4 = json.dumps(
    {
        "v1": {
            "datasource": "DataSourceOpenStackLocal [net,ver=2]",
            "init": {"errors": [], "finished": 1796630465.6, "start": 1796630452.0},
            "init-local": {"errors": [], "finished": 1796630425.8, "start": 1796630424.8},
            "modules-config": {"errors": [], "finished": 1796630471.6, "start": 1796630470.4},
            "modules-final": {"errors": [RUNPARTS_ERROR], "finished": 1796630495.4, "start": 1796630480.1},
            "modules-init": {"errors": [], "finished": None, "start": None},
            "stage": None,
        }
    }
)


def status_24(extended: str, recoverable: dict[str, list[str]], errors: list[str] | None = None) -> str:
    stage = {"errors": [], "recoverable_errors": {}, "start": 24.8, "finished": 25.8}
    final = {"errors": errors or [], "recoverable_errors": recoverable, "start": 80.1, "finished": 95.4}
    body = {"boot_status_code": "enabled-by-generator", "datasource": "openstacklocal", "detail": "DataSourceOpenStackLocal [net,ver=2]",
            "errors": errors or [], "extended_status": extended, "last_update": "Mon, 07 Dec 2026 08:01:35 +0000",
            "recoverable_errors": recoverable, "status": extended.split()[-1] if extended.startswith("degraded") else extended.split(" - ")[0],
            "init": stage, "init-local": stage, "modules-config": stage, "modules-final": final, "stage": None}  # fmt: skip
    return json.dumps(body, indent=2, sort_keys=True)


def ssh_outputs(**changes: str) -> dict[str, str]:
    out = {
        "status": STATUS_22_4,
        "hostname": "guest1\n",
        "authorized_keys": f"{USER_KEY}\n{LAB_KEY}\n",
        "user_data_sha256": f"{hashlib.sha256(USER_DATA).hexdigest()}  /var/lib/cloud/instance/user-data.txt\n",
        "instance_id": UUID + "\n",
        "boot_id": "0b2f5d0e-1d1c-4b8f-8f0b-6c3f1f2e9a11\n",
    }
    out.update(changes)
    return out


def expectation(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(e for e in report["expectations"] if e["name"] == name)


# --- the console -----------------------------------------------------------------------------------------------------


def test_console_facts_of_a_debian_first_boot():
    facts = parse_console(console(first_boot()))
    assert [(b.stage, b.raw, b.uptime, b.version) for b in facts.banners] == [
        ("init-local", "init-local", 24.8, "22.4.2"),
        ("init-network", "init", 52.05, "22.4.2"),
        ("modules-config", "modules:config", 70.43, "22.4.2"),
        ("modules-final", "modules:final", 80.12, "22.4.2"),
    ]
    assert facts.finished and facts.finished.datasource == "DataSourceOpenStackLocal [net,ver=2]" and facts.finished.uptime == 95.21
    assert facts.kernel and not facts.logs and not facts.tracebacks
    assert [u.stage for u in facts.units] == ["init-local", "init-network", "modules-config", "modules-final"] and all(u.ok for u in facts.units)
    assert [(t.user, t.path) for t in facts.key_tables] == [("debian", "/home/debian/.ssh/authorized_keys")]
    assert [row[1] for row in facts.key_tables[0].rows] == [fingerprint(USER_KEY), fingerprint(LAB_KEY)]
    assert [h for _, h in facts.hostnames] == ["guest1", "guest1"]


def test_prefixes_are_stripped():
    assert strip_prefix("[   24.869213] cloud-init[412]: Cloud-init v. 22.4.2 running") == "Cloud-init v. 22.4.2 running"
    assert strip_prefix("[    0.000000] Linux version 6.1.0") == "Linux version 6.1.0"
    assert strip_prefix("<14>Dec  7 08:01:21 cloud-init: -----BEGIN SSH HOST KEY FINGERPRINTS-----") == "-----BEGIN SSH HOST KEY FINGERPRINTS-----"
    assert strip_prefix(j(53.0, "    ret = functor(name, args)")) == "    ret = functor(name, args)"  # indentation kept


def test_module_failures_and_tracebacks_on_the_console():
    facts = parse_console(console(first_boot(final=RUNCMD_FAILED) + INIT_TRACEBACK))
    assert [(m.module, m.detail) for m in facts.module_failures] == [("config-scripts-user", "scripts in /var/lib/cloud/instance/scripts")]
    assert [log.level for log in facts.logs] == ["WARNING"] * 3
    assert len(facts.tracebacks) == 1 and facts.tracebacks[0].last == "RuntimeError: no network config"
    assert facts.tracebacks[0].lines[0] == "Traceback (most recent call last):" and len(facts.tracebacks[0].lines) == 6


def test_fingerprints_are_cloud_inits_and_openssh_forms():
    blob = base64.b64decode(USER_KEY.split()[1])
    assert fingerprint(USER_KEY) == ":".join(re.findall("..", hashlib.sha256(blob).hexdigest()))
    assert openssh_fingerprint(USER_KEY) == "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    assert fingerprint("ssh-rsa not-base64!") == "" and openssh_fingerprint("") == ""


def test_failed_unit_is_seen():
    facts = parse_console(console(["[FAILED] Failed to start cloud-final.service - Execute cloud user/final scripts."]))
    assert [(u.stage, u.ok) for u in facts.units] == [("modules-final", False)]


# --- cloud-init's other outputs --------------------------------------------------------------------------------------


def test_status_outputs_of_22_4_and_24_x():
    old = parse_status("..." + STATUS_22_4)
    assert old and (old.status, old.extended, old.datasource, old.detail, old.errors, old.stages) == (
        "done", None, "openstacklocal", "DataSourceOpenStackLocal [net,ver=2]", [], {})  # fmt: skip
    new = parse_status(status_24("degraded done", {"WARNING": ["Used fallback datasource"]}))
    assert new and new.status == "degraded done" and new.recoverable == {"WARNING": ["Used fallback datasource"]}
    assert set(new.stages) == {"init-local", "init-network", "modules-config", "modules-final"} and new.stages["modules-final"]["finished"] == 95.4
    assert normal_status("error", "error - done") == "error" and normal_status("not started", "not started") == "not run"
    assert normal_status("running", None) == "running" and parse_status("not json") is None and parse_status("[1, 2]") is None


def test_status_and_result_files():
    status = parse_status_file(STATUS_JSON_22_4)
    assert status and status.datasource == "DataSourceOpenStackLocal [net,ver=2]" and status.stage is None
    assert status.stages["modules-final"]["errors"] == [RUNPARTS_ERROR] and status.stages["init-network"]["start"] == 1796630452.0
    result = parse_status_file(json.dumps({"v1": {"datasource": "DataSourceNone", "errors": ["boom"]}}))
    assert result and (result.datasource, result.errors) == ("DataSourceNone", ["boom"])


ANALYZE = """-- Boot Record 01 --
The total time elapsed since completing an event is printed after the "@" character.
The time the event takes is printed after the "+" character.

Starting stage: init-local
|`->no cache found @00.01700s +00.00200s
|`->found local data from DataSourceOpenStackLocal @00.11000s +00.40300s
Finished stage: (init-local) 00.94200 seconds

Starting stage: modules-final
|`->config-scripts-user ran successfully @16.87400s +00.00200s
Finished stage: (modules-final) 00.10300 seconds

Total Time: 1.04500 seconds

-- Boot Record 02 --
The total time elapsed since completing an event is printed after the "@" character.
The time the event takes is printed after the "+" character.

Starting stage: init-local
|`->found local data from DataSourceOpenStackLocal @00.11000s +00.40300s
Finished stage: (init-local) 00.94200 seconds

Starting stage: modules-final
|`->config-scripts-user previously ran @16.87400s +00.00200s
|`->running config-phone-home with frequency once-per-instance @16.88000s +00.10000s
|`->config-final-message ran successfully @16.93700s +00.00500s
Finished stage: (modules-final) 00.10300 seconds

Total Time: 1.04500 seconds

2 boot records analyzed
"""


def test_analyze_show_last_boot_record():
    modules, finished, found = parse_analyze(ANALYZE)
    assert [(m.name, m.stage, m.result, m.ran) for m in modules] == [
        ("config-scripts-user", "modules-final", "SUCCESS", False),
        ("config-phone-home", "modules-final", "FAIL", True),
        ("config-final-message", "modules-final", "SUCCESS", True),
    ]
    assert finished == ["init-local", "modules-final"] and found == {"init-local": "found local data from DataSourceOpenStackLocal"}


def test_webhook_events():
    events = parse_events(webhook() + [Report(1.0, "phone_home", {"hostname": "guest1"}), Report(2.0, "event", {"name": 3})])
    assert events[0].name == "init-local" and events[0].kind == "start" and events[0].stage == "init-local"
    final = [e for e in events if e.name == "modules-final" and e.kind == "finish"]
    assert final and final[0].result == "SUCCESS" and final[0].t == 95.9 and final[0].timestamp == 1796630400.0 + 95.4


# --- the verdict -----------------------------------------------------------------------------------------------------


def test_clean_first_boot_from_the_console_alone():
    report = decide(evidence())
    assert (report["schema"], report["status"], report["exit_code"], report["reason"]) == (SCHEMA, "pass", 0, "")
    assert report["cloud_init"] == {"version": "22.4.2", "datasource": "DataSourceOpenStackLocal [net,ver=2]", "datasource_name": "OpenStackLocal",
                                    "status": "done", "errors": [], "recoverable_errors": {}, "finished_uptime": 95.21}  # fmt: skip
    stages = report["stages"]
    assert [s["name"] for s in stages] == ["init-local", "init-network", "modules-config", "modules-final"]
    assert all(s["source"] == "console" and s["result"] == "SUCCESS" and s["start"] < s["finish"] for s in stages)
    assert stages[0]["uptime_start"] == 24.8 and stages[0]["start"] == 25.3
    assert {e["name"]: e["result"] for e in report["expectations"]} == {
        "datasource": "pass", "hostname": "pass", "keys installed": "pass", "user data ran": "pass", "no errors": "pass"}  # fmt: skip
    assert "fingerprints in the console" in expectation(report, "keys installed")["message"]
    assert "fetched user_data at 51.1 s (journal)" in expectation(report, "user data ran")["message"]
    assert report["timings"]["lease"] == 50.5 and report["timings"]["first_metadata"] == 50.9 and report["timings"]["finished"] == 95.71
    assert report["sources"] == {
        "console": len(first_boot()),
        "webhook": 0,
        "phone_home": 0,
        "ssh": "not used: not asked for",
        "journal": 3,
        "lease": True,
    }
    assert report["console_tail"] == "" and report["warnings"] == [] and json.loads(to_json(report)) == report


def test_clean_first_boot_with_webhook_and_ssh():
    report = decide(
        evidence(reports=webhook() + [Report(96.0, "phone_home", {"hostname": "guest1", "instance_id": UUID})], ssh=ssh_outputs(), ssh_error="")
    )
    assert report["status"] == "pass" and report["sources"]["ssh"] == "used" and report["sources"]["webhook"] == 42
    assert [s["source"] for s in report["stages"]] == ["webhook"] * 4 and report["stages"][3]["finish"] == 95.9
    final = [m for m in report["modules"] if m["stage"] == "modules-final"]
    assert final[1] == {"name": "config-scripts-user", "stage": "modules-final", "result": "SUCCESS",
                        "description": "config-scripts-user ran successfully", "ran": True, "frequency": "once-per-instance"}  # fmt: skip
    assert expectation(report, "hostname")["message"] == "guest1 (SSH hostname)"
    assert expectation(report, "keys installed")["message"] == "all 2 in authorized_keys (SSH)"
    assert expectation(report, "user data ran")["message"].startswith("user-data.txt's sha256 matches (SSH); config-scripts-user ran (webhook)")


def test_failed_runcmd_names_the_module_and_the_script():
    ev = evidence(first_boot(final=RUNCMD_FAILED), ssh=ssh_outputs(status=STATUS_22_4_ERROR, status_json=STATUS_JSON_22_4), ssh_error="")
    ev.console[-5] = ConsoleLine(ev.console[-5].t, "[FAILED] Failed to start cloud-final.service - Execute cloud user/final scripts.")
    report = decide(ev)
    assert (report["status"], report["exit_code"]) == ("fail", 1)
    assert report["reason"].startswith("modules-final: config-scripts-user failed (runcmd exited non-zero)")
    final = report["stages"][3]
    assert final["result"] == "FAIL" and final["errors"] == ["config-scripts-user failed (runcmd exited non-zero)", "its systemd unit failed"]
    assert expectation(report, "user data ran")["result"] == "fail" and expectation(report, "no errors")["result"] == "fail"
    assert report["cloud_init"]["errors"] == [RUNPARTS_ERROR] and "+ false" in report["console_tail"]
    assert report["stages"][2]["result"] == "SUCCESS" and report["stages"][1]["finish"] == 60.61  # systemd's "Finished cloud-init.service"
    assert [s["source"] for s in report["stages"]] == ["console"] * 4


def test_a_failed_module_from_the_webhook_alone():
    report = decide(evidence(console=[], reports=webhook(fail="config-scripts-user")))
    assert report["status"] == "fail" and report["reason"].startswith("modules-final: config-scripts-user failed")
    assert report["stages"][3]["result"] == "FAIL" and report["stages"][3]["errors"] == ["config-scripts-user failed"]
    assert report["cloud_init"]["datasource"] == "DataSourceOpenStackLocal" and report["cloud_init"]["status"] == "error"


def test_a_traceback_fails_its_stage():
    report = decide(evidence(KERNEL + INIT_LOCAL + INIT[:2] + INIT_TRACEBACK + INIT[2:] + CONFIG + FINAL_START + [FINISHED] + LOGIN))
    assert report["status"] == "fail" and report["stages"][1]["errors"] == ["traceback: RuntimeError: no network config"]
    assert report["tracebacks"][0].endswith("RuntimeError: no network config") and "traceback" in report["reason"]
    assert expectation(report, "keys installed")["result"] == "skip"


def test_how_far_a_boot_got_when_it_timed_out():
    nothing = decide(evidence([], timed_out=True, waited=600.0, requests=[]))
    assert nothing["reason"] == "cloud-init did not finish within 600 s: no console output at all" and nothing["exit_code"] == 1
    assert [s["result"] for s in nothing["stages"]] == [None] * 4 and nothing["cloud_init"]["status"] is None
    kernel = decide(evidence(KERNEL, timed_out=True, waited=600.0))
    assert kernel["reason"].endswith("the kernel booted but cloud-init never started") and kernel["cloud_init"]["status"] == "not run"
    stuck = decide(evidence(KERNEL + INIT_LOCAL + INIT[:3], timed_out=True, waited=600.0))
    assert stuck["reason"] == f"cloud-init did not finish within 600 s: stage init-network started at {52.55:.1f} s but did not finish"
    assert stuck["stages"][0]["result"] == "SUCCESS" and stuck["stages"][1]["result"] is None and stuck["cloud_init"]["status"] == "running"
    crashed = decide(evidence(KERNEL + INIT_LOCAL, qemu_exit=1))
    assert (
        crashed["reason"] == f"QEMU exited with status 1 during the boot: stage init-local finished at {25.31:.1f} s but init-network never started"
    )
    assert crashed["status"] == "fail" and "[  OK  ] Finished cloud-init-local.service" in crashed["console_tail"]


def test_start_and_image_errors():
    error = decide(evidence([], start_error="QEMU: Could not access KVM kernel module"))
    assert (error["status"], error["exit_code"]) == ("error", 3) and "could not start the guest: QEMU" in error["reason"]
    image = decide(evidence([], image_error="not a disk image: no boot sector"))
    assert (image["status"], image["exit_code"], image["reason"]) == ("fail", 1, "the image cannot boot: not a disk image: no boot sector")


def test_warnings_are_degraded_on_22_4():
    lines = first_boot(final=[warning(81.0, "cc_phone_home.py", "Configuration entry 'tries' is not an integer, using 10 instead")])
    report = decide(evidence(lines))
    assert (report["status"], report["exit_code"]) == ("degraded", 2)
    assert report["reason"] == "1 warning: cc_phone_home.py[WARNING]: Configuration entry 'tries' is not an integer, using 10 instead"
    assert report["stages"][3]["result"] == "WARN" and report["cloud_init"]["status"] == "degraded done" and report["console_tail"]


POST_FAILED = (
    'Failed posting event: {"name": "init-local/check-cache", "event_type": "start"}. This was caused by: '
    "HTTPConnectionPool(host='169.254.169.250', port=80): Max retries exceeded with url: /events/" + UUID
)


def test_the_labs_own_reporting_failing_before_the_network_is_up_is_no_warning_of_the_image():
    """On a reboot, cloud-init's cached reporting config posts the local stage's events with no network yet."""
    giving_up = "Multiple consecutive failures in WebHookHandler. Cancelling all queued events."
    lines = first_boot(final=[warning(26.0, "handlers.py", POST_FAILED), warning(26.1, "handlers.py", giving_up)])
    report = decide(evidence(lines))
    assert (report["status"], report["exit_code"], report["warnings"]) == ("pass", 0, [])
    theirs = decide(evidence(first_boot(final=[warning(81.0, "handlers.py", giving_up)])))  # a webhook of the user's own, failing
    assert theirs["status"] == "degraded" and giving_up in theirs["reason"]
    assert all(s["result"] == "SUCCESS" for s in report["stages"])
    new = decide(evidence(ssh=ssh_outputs(status=status_24("degraded done", {"WARNING": [POST_FAILED]})), ssh_error=""))
    assert (new["status"], new["exit_code"]) == ("pass", 0)
    both = decide(evidence(ssh=ssh_outputs(status=status_24("degraded done", {"WARNING": [POST_FAILED, "Used fallback datasource"]})),
                           ssh_error=""))  # fmt: skip
    assert both["status"] == "degraded" and both["reason"] == "cloud-init says degraded done (WARNING: Used fallback datasource)"


def test_23_4_status_decides_degraded():
    warned = ssh_outputs(status=status_24("degraded done", {"WARNING": ["Used fallback datasource"]}))
    report = decide(evidence(ssh=warned, ssh_error=""))
    assert (report["status"], report["exit_code"]) == ("degraded", 2) and report[
        "reason"
    ] == "cloud-init says degraded done (WARNING: Used fallback datasource)"
    assert report["cloud_init"]["status"] == "degraded done" and report["cloud_init"]["recoverable_errors"] == {
        "WARNING": ["Used fallback datasource"]
    }
    assert report["stages"][3]["result"] == "WARN" and report["stages"][3]["uptime_finish"] == 95.4  # status.json's (24.2+)
    clean = decide(evidence(ssh=ssh_outputs(status=status_24("done", {})), ssh_error=""))
    assert clean["status"] == "pass"
    failed = decide(evidence(ssh=ssh_outputs(status=status_24("error - done", {}, [RUNPARTS_ERROR])), ssh_error=""))
    assert failed["status"] == "fail" and failed["reason"].startswith("modules-final: config-scripts-user failed (runcmd exited non-zero)")


def test_datasource_none_fails_unless_expected():
    none_line = j(95.21, "Cloud-init v. 22.4.2 finished at Mon, 07 Dec 2026 08:01:35 +0000. Datasource DataSourceNone.  Up 95.21 seconds")
    lines = [none_line if line == FINISHED else line for line in first_boot()]
    report = decide(evidence(lines))
    assert report["status"] == "fail" and report["cloud_init"]["datasource_name"] == "None"
    assert "datasource: cloud-init found no datasource" in report["reason"]
    assert decide(evidence(lines, expected={"datasource": "None"}))["status"] == "pass"


def test_datasource_names_match_their_variants():
    assert ds_matches("ConfigDrive", "ConfigDrive") and ds_matches("ConfigDrive", "ConfigDriveNet") and ds_matches("OpenStack", "OpenStackLocal")
    assert ds_matches("DataSourceOpenStack", "openstacklocal") and not ds_matches("OpenStack", "ConfigDrive") and not ds_matches("Ec2", "None")
    drive = j(
        95.21,
        "Cloud-init v. 22.4.2 finished at Mon, 07 Dec 2026 08:01:35 +0000. "
        "Datasource DataSourceConfigDrive [net,ver=2][source=/dev/sr0].  Up 95.21 seconds",
    )
    lines = [drive if line == FINISHED else line for line in first_boot()]
    assert decide(evidence(lines, expected={"datasource": "ConfigDrive", "config_drive": "only"}, requests=[]))["status"] == "pass"
    wrong = decide(evidence(expected={"datasource": "ConfigDrive"}))
    assert wrong["status"] == "fail" and expectation(wrong, "datasource")["actual"] == "DataSourceOpenStackLocal [net,ver=2]"


def test_hostname_from_each_source():
    assert expectation(decide(evidence(ssh=ssh_outputs(hostname="localhost\n"), ssh_error="")), "hostname")["result"] == "fail"
    phone = decide(evidence(first_boot()[:-3], reports=[Report(96.0, "phone_home", {"hostname": "guest1"})]))
    assert expectation(phone, "hostname")["message"] == "guest1 (phone_home post)"
    assert expectation(decide(evidence(expected={"hostname": "guest1.novalocal"})), "hostname")["result"] == "pass"
    unseen = expectation(decide(evidence(first_boot()[:-4])), "hostname")
    assert unseen["result"] == "skip" and "no login prompt" in unseen["message"]


def test_keys_missing_from_console_or_ssh():
    report = decide(evidence(first_boot(keys=[USER_KEY]), expected={"keys": [USER_KEY, OTHER_KEY]}))
    keys = expectation(report, "keys installed")
    assert keys["result"] == "fail" and keys["actual"] == ["user@ci"] and "missing other@x" in keys["message"] and report["status"] == "fail"
    ssh = expectation(decide(evidence(ssh=ssh_outputs(authorized_keys=USER_KEY + "\n"), ssh_error="")), "keys installed")
    assert ssh["result"] == "fail" and ssh["message"] == "missing vrouter-lab: not in authorized_keys (SSH)"
    no_keys = [line for line in first_boot() if "ci-info: " not in line or "Net device" in line] + [
        "ci-info: no authorized SSH keys fingerprints found for user debian."
    ]
    assert expectation(decide(evidence(no_keys)), "keys installed")["result"] == "fail"


def test_ipv6_judged_only_when_asked_from_the_guests_addresses_and_its_ping():
    assert "ipv6" not in [e["name"] for e in decide(evidence())["expectations"]]
    want = {"ipv6": "fd00:10:1:1::4", "ipv6_peer": "fd00:10:1:1::3"}
    addrs = "2: eth0    inet6 fd00:10:1:1::4/128 scope global dynamic noprefixroute \\       valid_lft 86374sec preferred_lft 86374sec\n"
    good = decide(evidence(expected=want, ssh=ssh_outputs(ipv6_addresses=addrs), ssh_exit={"ipv6_ping": 0}, ssh_error=""))
    e = expectation(good, "ipv6")
    assert e["result"] == "pass" and e["actual"] == ["fd00:10:1:1::4"] and "fd00:10:1:1::3 reached" in e["message"] and good["status"] == "pass"
    unreached = decide(evidence(expected=want, ssh=ssh_outputs(ipv6_addresses=addrs), ssh_exit={"ipv6_ping": 1}, ssh_error=""))
    assert expectation(unreached, "ipv6")["result"] == "fail" and unreached["status"] == "fail"
    none = expectation(decide(evidence(expected=want, ssh=ssh_outputs(ipv6_addresses=""), ssh_exit={"ipv6_ping": 2}, ssh_error="")), "ipv6")
    assert none["result"] == "fail" and "not configured" in none["message"]
    assert expectation(decide(evidence(expected=want)), "ipv6")["result"] == "skip"  # no SSH


def test_user_data_checks():
    wrong = decide(evidence(ssh=ssh_outputs(user_data_sha256="0" * 64 + "  /var/lib/cloud/instance/user-data.txt\n"), ssh_error=""))
    assert expectation(wrong, "user data ran")["result"] == "fail" and wrong["status"] == "fail"
    never = decide(evidence(requests=[Request(51.0, "GET", "/openstack/2018-08-27/meta_data.json", 200, 900)]))
    assert expectation(never, "user data ran")["message"] == "the guest never fetched user_data (journal)"
    drive = expectation(decide(evidence(requests=[], expected={"config_drive": "only"})), "user data ran")
    assert drive["result"] == "pass" and drive["message"] == "on the config drive (config drive only)"
    none = expectation(decide(evidence(expected={"user_data_sha256": "", "user_data_kind": ""})), "user data ran")
    assert none["result"] == "skip"


def reboot_console() -> list[str]:
    return KERNEL + INIT_LOCAL + INIT + CONFIG + FINAL_START + [FINISHED] + LOGIN


def test_reboot_skips_per_instance_modules():
    report = decide(evidence(reboot_console(), reports=webhook(reboot=True), expected={"boot": "reboot"}))
    check = expectation(report, "per-instance modules skipped")
    assert report["status"] == "pass" and check["result"] == "pass" and check["message"] == "12 per-instance modules previously ran (webhook)"
    assert "config-scripts-user" in check["actual"] and [e["name"] for e in report["expectations"]][3] == "per-instance modules skipped"
    assert expectation(report, "keys installed")["message"].endswith("(the fingerprints are printed on an instance's first boot only)")
    again = decide(evidence(reboot_console(), reports=webhook(reboot=True, ran_again="config-scripts-user"), expected={"boot": "reboot"}))
    assert again["status"] == "fail" and "ran again on the reboot: config-scripts-user (webhook)" in again["reason"]
    table = decide(evidence(first_boot(), expected={"boot": "reboot"}))
    assert expectation(table, "per-instance modules skipped")["result"] == "fail"
    by_id = decide(evidence(reboot_console(), ssh=ssh_outputs(), ssh_error="", expected={"boot": "reboot"}))
    assert expectation(by_id, "per-instance modules skipped")["message"].startswith("instance-id unchanged")
    by_analyze = decide(
        evidence(
            reboot_console(),
            ssh=ssh_outputs(
                analyze=ANALYZE.replace("running config-phone-home with frequency once-per-instance", "config-phone-home previously ran")
            ),
            ssh_error="",
            expected={"boot": "reboot"},
        )
    )
    assert expectation(by_analyze, "per-instance modules skipped")["message"] == "2 per-instance modules previously ran (analyze show)"


def test_status_json_times_placed_on_the_host_clock():
    """22.4's status.json has epoch times; the webhook's timestamps place them on the host's clock (half a second late here)."""
    report = decide(
        evidence(
            [],
            reports=[r for r in webhook() if r.body["name"] == "init-local"],
            ssh=ssh_outputs(status=STATUS_22_4_ERROR, status_json=STATUS_JSON_22_4),
            ssh_error="",
        )
    )
    config = report["stages"][2]
    assert config["source"] == "ssh" and config["start"] == round(1796630470.4 - 1796630400.0 + 0.5, 3) and config["finish"] == 72.1


# --- the reports -----------------------------------------------------------------------------------------------------


def parse_junit(text: str) -> ET.Element:
    root = ET.fromstring(text.encode())
    assert root.tag == "testsuites"
    for suite in root:
        cases = suite.findall("testcase")
        assert int(suite.get("tests", -1)) == len(cases)
        assert int(suite.get("failures", -1)) == sum(1 for c in cases if c.find("failure") is not None)
        assert int(suite.get("errors", -1)) == sum(1 for c in cases if c.find("error") is not None)
        assert int(suite.get("skipped", -1)) == sum(1 for c in cases if c.find("skipped") is not None)
        assert suite.get("timestamp") and suite.get("time") is not None and suite.get("name")
    return root


def test_junit_of_a_pass_a_failure_and_a_start_error():
    passed = decide(evidence())
    failed = decide(
        evidence(
            first_boot(final=RUNCMD_FAILED + ["\x1b[31mbad\x00 bytes\x07 \ud800 here\x1b[0m"]),
            ssh=ssh_outputs(status=STATUS_22_4_ERROR, status_json=STATUS_JSON_22_4),
            ssh_error="",
        )
    )
    error = decide(evidence([], start_error='QEMU <exited> & said "no"'))
    text = junit([passed, failed, error], timestamp="2026-12-07T08:00:00")
    root = parse_junit(text)
    assert (root.get("tests"), root.get("failures"), root.get("errors"), root.get("skipped")) == ("19", "3", "1", "0")
    suites = root.findall("testsuite")
    assert suites[0].get("name") == "guest1 debian-12-generic.qcow2 config-drive=none"
    assert [c.get("name") for c in suites[0]] [1:] == ["stage init-local", "stage init-network", "stage modules-config", "stage modules-final",
                                                       "datasource", "hostname", "keys installed", "user data ran", "no errors"]  # fmt: skip
    failures = [c for c in suites[1].findall("testcase") if c.find("failure") is not None]
    assert [c.get("name") for c in failures] == ["stage modules-final", "user data ran", "no errors"]
    out = failures[0].findtext("system-out") or ""
    assert "bad bytes" in out and "\x00" not in out and "\x07" not in out and "+ false" in out
    assert failures[0].find("failure").get("type") == "StageFailed"  # type: ignore[union-attr]
    [start] = suites[2].findall("testcase")
    assert start.get("name") == "start" and start.find("error").get("message") == 'could not start the guest: QEMU <exited> & said "no"'  # type: ignore[union-attr]


def test_junit_skips_and_unfinished_stages():
    report = decide(evidence(KERNEL + INIT_LOCAL, timed_out=True, waited=600.0, requests=[], expected={"keys": []}))
    root = parse_junit(junit([report], timestamp="2026-12-07T08:00:00"))
    cases = {c.get("name"): c for c in root.iter("testcase")}
    assert cases["stage init-local"].find("failure") is None
    assert cases["stage init-network"].find("failure").get("message") == "not reached"  # type: ignore[union-attr]
    assert cases["keys installed"].find("skipped").get("message") == "no keys given"  # type: ignore[union-attr]
    assert root.find("testsuite").get("time") == "600.000"  # type: ignore[union-attr]


def test_summary_is_short_and_says_why():
    failed = decide(evidence(first_boot(final=RUNCMD_FAILED), ssh=ssh_outputs(status=STATUS_22_4_ERROR, status_json=STATUS_JSON_22_4), ssh_error=""))
    text = summary(failed)
    lines = text.splitlines()
    assert 5 <= len(lines) <= 12
    assert lines[0].startswith("FAIL (exit 1): modules-final: config-scripts-user failed (runcmd exited non-zero)")
    assert "cloud-init 22.4.2" in text and "DataSourceOpenStackLocal [net,ver=2]" in text and "timings: lease 50.5 s" in text
    assert any(line.strip().startswith("modules-final") and "FAIL" in line for line in lines) and "failed: user data ran" in text
    assert summary(decide(evidence([], start_error="no qemu"))).startswith("ERROR (exit 3): could not start the guest: no qemu")


# --- properties ------------------------------------------------------------------------------------------------------

any_text = st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("utf-8", "replace")))
scalars = st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers() | st.text(max_size=20)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5), max_leaves=20
)
cloud_words = st.sampled_from(["Cloud-init v. 22.4.2 running 'init' at x. Up 3 seconds.", "Traceback (most recent call last):", "  File x",
                               "ci-info: +++Authorized keys from /x for user y+++", "ci-info: | a | b |", "[  OK  ] Finished cloud-init.service",
                               "2026-12-07 08:00:01,123 - util.py[WARNING]: Running module x (y) failed", "guest1 login:", "ci-info: +--+",
                               "Cloud-init v. 22.4.2 finished at x. Datasource DataSourceNone.  Up ?? seconds"])  # fmt: skip
console_lines = st.lists(st.one_of(any_text, cloud_words), max_size=40)
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(console_lines)
def test_console_parser_never_raises(texts: list[str]):
    facts = parse_console([ConsoleLine(float(i), t) for i, t in enumerate(texts)])
    assert facts.lines == len(texts) and all(b.n < len(texts) for b in facts.banners)


@FAST
@given(any_text, json_values)
def test_output_parsers_never_raise(text: str, value: Any):
    for blob in (text, json.dumps(value), json.dumps({"v1": value}), json.dumps({"status": "done", "v1": value, "init": value})):
        parse_status(blob)
        parse_status_file(blob)
        parse_analyze(blob)
    parse_events([Report(1.0, "event", value if isinstance(value, dict) else {"name": text, "event_type": "finish", "result": value})])


@FAST
@given(
    console_lines,
    st.dictionaries(
        st.sampled_from(["status", "status_json", "result_json", "analyze", "hostname", "authorized_keys", "user_data_sha256", "instance_id"]),
        any_text,
    ),  # fmt: skip
    st.lists(json_values.filter(lambda v: isinstance(v, dict)), max_size=5),
    st.booleans(),
    st.sampled_from(["first", "reboot", "rebuild"]),
)
def test_decide_never_raises_and_reports_read_back(texts: list[str], ssh: dict[str, str], bodies: list[Any], timed_out: bool, boot: str):
    ev = evidence(texts, ssh=ssh, reports=[Report(float(i), "event", b) for i, b in enumerate(bodies)], timed_out=timed_out, expected={"boot": boot})
    report = decide(ev)
    assert [s["name"] for s in report["stages"]] == ["init-local", "init-network", "modules-config", "modules-final"]
    assert (report["status"], report["exit_code"]) in {("pass", 0), ("fail", 1), ("degraded", 2)} and (report["reason"] == "") == (
        report["status"] == "pass"
    )
    assert json.loads(to_json(report)) == json.loads(json.dumps(report, default=str))
    root = parse_junit(junit([report], timestamp="2026-12-07T08:00:00"))
    assert root.find("testsuite/properties/property[@name='reason']").get("value") == xml_text(report["reason"])  # type: ignore[union-attr]
    assert isinstance(summary(report), str)


@FAST
@given(st.from_regex(r"\d{1,2}\.\d{1,2}(\.\d)?", fullmatch=True), st.sampled_from(["init-local", "init", "modules:config", "modules:final"]),
       st.floats(min_value=0, max_value=1e6, allow_nan=False).map(lambda f: round(f, 2)))  # fmt: skip
def test_banner_round_trip(version: str, stage: str, uptime: float):
    line = j(uptime, f"Cloud-init v. {version} running '{stage}' at Mon, 07 Dec 2026 08:00:24 +0000. Up {uptime:.2f} seconds.")
    [banner] = parse_console([ConsoleLine(1.0, line)]).banners
    assert (banner.version, banner.raw, banner.uptime) == (version, stage, uptime)


@FAST
@given(st.lists(st.tuples(st.binary(min_size=1, max_size=64), st.from_regex(r"[a-z]{1,10}@[a-z]{1,8}", fullmatch=True)), min_size=1, max_size=4),
       st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True))  # fmt: skip
def test_key_table_round_trip(blobs: list[tuple[bytes, str]], user: str):
    keys = [f"ssh-ed25519 {base64.b64encode(b).decode()} {comment}" for b, comment in blobs]
    [table] = parse_console(console(keys_table(user, keys) + ["next line"])).key_tables
    assert table.user == user and [row[1] for row in table.rows] == [fingerprint(k) for k in keys]
    assert [row[2] for row in table.rows] == [comment for _, comment in blobs]


@FAST
@given(st.text(max_size=300))
def test_xml_text_survives_a_round_trip(text: str):
    element = ET.Element("x", {"a": xml_text(text)})
    element.text = xml_text(text)
    back = ET.fromstring(ET.tostring(element, encoding="unicode").encode())
    clean = xml_text(text)
    assert back.get("a") == clean and (back.text or "") == clean.replace("\r\n", "\n").replace("\r", "\n")  # XML's line ends
