"""The verdict on one boot of one guest: ``decide(Evidence) -> report`` (pure; no I/O, no clock).

The report is a JSON-able dict, schema ``vrouter-lab/check/v1``:

``schema``        "vrouter-lab/check/v1".
``image``         the image's path as given.  ``instance``: a copy of ``Evidence.instance`` (name, uuid, hostname, ip, mac, node prefix).
``started``       power-on, UTC, ISO 8601 (added by the lab's gathering, not by ``decide``).
``config_drive``  "none", "only" or "both"; ``boot``: "first", "reboot" or "rebuild" (as ``Expected`` says).
``status``        "pass" (exit 0), "degraded" (2: finished, no errors, but warnings), "fail" (1), "error" (3: the node or QEMU could
                  not start, not the image's fault).  ``exit_code``: that number.  ``reason``: one line, why not pass ("" on pass).
``cloud_init``    what cloud-init says of itself:
                  ``version`` ("22.4.2", from the console's banners) or None; ``datasource``: the datasource as cloud-init prints it
                  ("DataSourceOpenStackLocal [net,ver=2]") or None; ``datasource_name``: its class name without "DataSource"
                  ("OpenStackLocal", "ConfigDrive", "None"; lower case when only ``cloud-init status`` told it, e.g. "openstacklocal");
                  ``status``: "done", "running", "error", "degraded done", "degraded running", "not run", "disabled" (from
                  ``cloud-init status`` over SSH; without it derived from the console and the webhook: "done", "error",
                  "degraded done", "running", "not run") or None when nothing was seen; ``errors``: what status, status.json and
                  result.json list; ``recoverable_errors``: {level: [message]} (23.4+); ``finished_uptime``: the guest's uptime at
                  the final message, or None.
``stages``        the four stages, always, in order (init-local, init-network, modules-config, modules-final), each
                  ``{name, start, finish, uptime_start, uptime_finish, errors, result, source}``: start and finish in seconds since
                  power-on (None: not seen); the guest's uptimes at both; ``errors``: [str] from status.json, the webhook (FAIL),
                  the console (tracebacks, modules that failed, a unit that failed); ``result``: the webhook's "SUCCESS", "WARN",
                  "FAIL", else derived (FAIL with errors, WARN with warnings, SUCCESS when finished), None when not finished;
                  ``source``: where the finish (or, unfinished, the start) came from: "webhook", "console" or "ssh"; None: not seen.
                  Start: the console banner, else the webhook's start event, else status.json.  Finish: the webhook's finish event,
                  else systemd's "Finished <unit>" line, else (modules-final) the final message, else the next stage's banner,
                  else status.json.
``modules``       ``[{name: "config-scripts-user", stage, result, description, ran, frequency}]`` from the webhook's events (from
                  ``cloud-init analyze show`` when there are none); ``ran`` is False for "previously ran"; ``result`` None for a
                  module that started and never finished; ``frequency`` ("once-per-instance", "always", "once") or None.
``expectations``  ``[{name, result: "pass"|"fail"|"skip", expected, actual, message}]``, in this order: "datasource" (the
                  expected name, or any but None), "hostname", "keys installed", "user data ran" (first boot and rebuild) or
                  "per-instance modules skipped" (reboot), "no errors", and with ``check --ipv6`` "ipv6" (the port's IPv6
                  address configured, the namespace VM pinged over IPv6, both over SSH).  ``message`` says which evidence
                  decided, or why skipped.
``metadata_requests``  the metadata journal: ``[{t, method, path, status, bytes, reason}]``.
``lease``         ``{"t": seconds since power-on when the agent acknowledged the lease, or None}``.
``timings``       ``{lease, first_metadata, init-local, init-network, modules-config, modules-final, finished, waited}``: seconds
                  since power-on (a stage's value is its finish) or None.
``sources``       ``{console: lines, webhook: events, phone_home: posts, ssh: "used" | "not used: why" | "failed: why",
                  journal: requests, lease: bool}``.
``warnings``      console WARNING (and ERROR, CRITICAL, DEPRECATED: cloud-init counts them all as recoverable) lines, webhook
                  WARN results and status's recoverable errors, deduplicated, at most 50; not cloud-init's failures to post
                  to the lab's collector (``lab_artifact``: on a reboot its reporting posts before the network is up).
``tracebacks``    each Python traceback seen on the console (text, at most 20 of 60 lines each).
``console_tail``  the last 60 console lines when the status is not pass, else "".

Rules: exit 3 on ``Evidence.start_error``.  Exit 1 when the image cannot boot, cloud-init did not finish (timeout or QEMU
exited; the reason says how far it got), cloud-init reported errors (the reason names the modules that failed), or an
expectation failed (a DataSourceNone is a failed "datasource" unless it was expected).  Exit 2 when warnings remain:
23.4+'s "degraded" status when ``cloud-init status`` answered, else any warning line or WARN event (22.4 has no degraded).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from topology.model import REPORTS_IP
from vrouter_lab.clock import Clock, clock_of
from vrouter_lab.console import (
    FOUND_DATASOURCE,
    FREQUENCY,
    STAGES,
    ConsoleFacts,
    Event,
    Module,
    StatusFile,
    StatusOutput,
    key_blob,
    openssh_fingerprint,
    parse_analyze,
    parse_console,
    parse_events,
    parse_status,
    parse_status_file,
)
from vrouter_lab.console import fingerprint as key_fingerprint
from vrouter_lab.evidence import Evidence

SCHEMA = "vrouter-lab/check/v1"
TAIL_LINES = 60
MAX_WARNINGS = 50
# Per-instance modules of a Debian cloud.cfg, for when no event told a module's frequency (``analyze show``).
PER_INSTANCE = frozenset({"config-scripts-user", "config-runcmd", "config-ssh", "config-users-groups", "config-write-files",
                          "config-set-hostname", "config-phone-home", "config-ssh-authkey-fingerprints", "config-keys-to-console"})  # fmt: skip
_STATUS_ERROR = re.compile(r"^\('([^']+)', (\w+)\((.*)\)\)$", re.S)
_RUNPARTS = re.compile(r"Runparts: \d+ failures? \(([^)]*)\) in \d+ attempted commands")


@dataclass
class Failure:
    stage: str | None
    module: str  # "config-scripts-user"
    detail: str


@dataclass
class Facts:
    """Everything read from the evidence, parsed once."""

    ev: Evidence
    console: ConsoleFacts
    events: list[Event]
    status: StatusOutput | None
    status_file: StatusFile | None
    result_file: StatusFile | None
    analyze: tuple[list[Module], list[str], dict[str, str]]
    clock: Clock

    @property
    def ssh_stages(self) -> dict[str, dict[str, Any]]:
        return self.status_file.stages if self.status_file and self.status_file.stages else (self.status.stages if self.status else {})

    def event(self, name: str, kind: str) -> Event | None:
        return next((e for e in self.events if e.kind == kind and "/" not in e.name and e.stage == name), None)

    def window(self, n: int) -> str | None:
        """The stage whose banner came last before console line ``n``."""
        stage = None
        for banner in self.console.banners:
            if banner.n <= n and banner.stage:
                stage = banner.stage
        return stage


def gather_facts(ev: Evidence) -> Facts:
    console = parse_console(ev.console)
    events = parse_events(ev.reports)
    ssh = ev.ssh
    return Facts(ev, console, events, parse_status(ssh.get("status", "")), parse_status_file(ssh.get("status_json", "")),
                 parse_status_file(ssh.get("result_json", "")), parse_analyze(ssh.get("analyze", "")),
                 clock_of(console, events))  # fmt: skip


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def stage_report(name: str, f: Facts, failed: list[Failure]) -> dict[str, Any]:
    later = STAGES[STAGES.index(name) + 1 :]
    banner = next((b for b in f.console.banners if b.stage == name), None)
    after = next((b for b in f.console.banners if b.stage in later and b.n > banner.n), None) if banner else None
    unit = next((u for u in f.console.units if u.stage == name), None)
    final = f.console.finished if name == "modules-final" else None
    start_event, finish_event = f.event(name, "start"), f.event(name, "finish")
    sj = f.ssh_stages.get(name, {})
    ssh_start, ssh_finish = f.clock.host(sj.get("start")), f.clock.host(sj.get("finished"))
    ssh_up = (_uptime(sj.get("start")), _uptime(sj.get("finished")))
    starts = [(_t(banner), "console", banner.uptime if banner else None), (_t(start_event), "webhook", None), (ssh_start, "ssh", ssh_up[0])]
    finishes = [(_t(finish_event), "webhook", None), (_t(unit), "console", None), (_t(final), "console", final.uptime if final else None),
                (_t(after), "console", after.uptime if after else None), (ssh_finish, "ssh", ssh_up[1])]  # fmt: skip
    start, start_source, uptime_start = next((s for s in starts if s[0] is not None), (None, None, ssh_up[0]))
    finish, finish_source, uptime_finish = next((s for s in finishes if s[0] is not None), (None, None, ssh_up[1]))
    if finish is None and sj.get("finished") is not None:
        finish_source = "ssh"  # finished, at a time this clock cannot place
    uptime_start = _first(uptime_start, ssh_up[0], f.clock.uptime(start))  # what the guest said, else the host's time mapped
    uptime_finish = _first(uptime_finish, ssh_up[1], f.clock.uptime(finish))
    errors = stage_errors(name, f, failed, unit is not None and not unit.ok)
    ours = lab_failed(f)
    warned = any(f.window(log.n) == name and not lab_artifact(log.text, ours) for log in f.console.logs) or any(
        not lab_artifact(m, ours) for messages in (sj.get("recoverable_errors") or {}).values() for m in messages
    )
    result = finish_event.result if finish_event and finish_event.result else None
    if result is None and finish_source:  # None: not finished (its errors may say why)
        result = "FAIL" if errors else ("WARN" if warned else "SUCCESS")
    return {"name": name, "start": start, "finish": finish, "uptime_start": uptime_start, "uptime_finish": uptime_finish,
            "errors": errors, "result": result, "source": finish_source or start_source}  # fmt: skip


def _t(seen: Any) -> float | None:
    """When something was seen (a banner, an event, a unit's line), or None."""
    return None if seen is None else float(seen.t)


def _uptime(value: Any) -> float | None:
    return value if isinstance(value, float) and value < 1e8 else None


def stage_errors(name: str, f: Facts, failed: list[Failure], unit_failed: bool) -> list[str]:
    """A stage's errors, each once: its modules' failures as ``failures`` tells them, then what no module explains."""
    errors = [_failure_text(x) for x in failed if x.stage == name]
    errors += [e for e in f.ssh_stages.get(name, {}).get("errors", []) if not _STATUS_ERROR.match(e)]
    events = [e for e in f.events if e.stage == name and e.kind == "finish" and e.result == "FAIL" and "/" in e.name]
    errors += [f"{e.leaf} failed" for e in events if not e.leaf.startswith("config-")]
    errors += [f"traceback: {trace.last}" for trace in f.console.tracebacks if f.window(trace.n) == name]
    if unit_failed:
        errors.append("its systemd unit failed")
    return list(dict.fromkeys(errors))


def _failure_text(failure: Any) -> str:
    detail = _humane(failure.detail)
    return f"{failure.module} failed" + (f" ({detail})" if detail else "")


def _humane(detail: str) -> str:
    """cloud-init's error for a module, said for a person: runparts' failures name the scripts that exited non-zero."""
    runparts = _RUNPARTS.search(detail or "")
    if runparts:
        names = [n.strip() for n in runparts.group(1).split(",") if n.strip()]
        return ", ".join(n if n == "runcmd" else f"user script {n}" for n in names) + " exited non-zero"
    return "" if (detail or "").startswith("scripts in ") else (detail or "").strip()


def failures(f: Facts) -> list[Failure]:
    """The modules that failed, each once, with the most telling detail any source gave."""
    found: dict[str, Failure] = {}

    def add(stage: str | None, module: str, detail: str) -> None:
        known = found.get(module)
        if known is None:
            found[module] = Failure(stage, module, detail)
        else:
            known.stage, known.detail = known.stage or stage, _humane(detail) and detail or known.detail

    for e in f.events:
        if e.kind == "finish" and e.result == "FAIL" and e.leaf.startswith("config-"):
            add(e.stage, e.leaf, "")
    for m in f.analyze[0] if not f.events else []:
        if m.result == "FAIL":
            add(m.stage, m.name, "")
    for failure in f.console.module_failures:
        add(f.window(failure.n), failure.module, failure.detail)
    for stage, sj in f.ssh_stages.items():
        for error in sj.get("errors", []):
            match = _STATUS_ERROR.match(error)
            if match:
                add(stage, "config-" + match.group(1).replace("_", "-"), match.group(3).strip("'\""))
    for error in (f.status.errors if f.status else []) + (f.result_file.errors if f.result_file else []):
        match = _STATUS_ERROR.match(error)
        if match:
            add(None, "config-" + match.group(1).replace("_", "-"), match.group(3).strip("'\""))
    return list(found.values())


def modules_report(f: Facts) -> list[Module]:
    starts = {e.name: e for e in f.events if e.kind == "start"}
    finishes = {e.name: e for e in f.events if e.kind == "finish"}
    modules = []
    for name, start in starts.items():
        if name.count("/") != 1 or not start.leaf.startswith("config-"):
            continue
        frequency = FREQUENCY.search(start.description)
        end = finishes.get(name)
        description = end.description if end else start.description
        modules.append(Module(start.leaf, start.stage, end.result if end else None, description, "previously ran" not in description,
                              frequency.group(1) if frequency else None))  # fmt: skip
    return modules or list(f.analyze[0])


def datasource_of(f: Facts) -> tuple[str | None, str | None]:
    """(as cloud-init prints it, its name without "DataSource")."""
    found = [e.description for e in f.events if e.kind == "finish"] + list(f.analyze[2].values())
    matches = [m.group(1) for m in map(FOUND_DATASOURCE.match, found) if m]
    detail = f.status.detail if f.status and f.status.detail.startswith("DataSource") else None
    full = _first(f.console.finished and f.console.finished.datasource, f.status_file and f.status_file.datasource,
                  f.result_file and f.result_file.datasource, detail, matches[-1] if matches else None)  # fmt: skip
    if full and full.split():
        return full, full.split()[0].removeprefix("DataSource") or None
    return None, (f.status.datasource or None) if f.status else None


def finished(f: Facts, stages: list[dict[str, Any]]) -> bool:
    said = bool(f.status and (f.status.status in ("done", "degraded done") or f.status.extended == "error - done"))
    return bool(f.console.finished or said or f.result_file or stages[-1]["result"])


def lab_artifact(text: str, lab_failed: bool = False) -> bool:
    """A warning about the lab's own reporting, not the image: cloud-init failing to post an event to
    the lab's collector (on a reboot its cached reporting config posts before the network is up),
    and (``lab_failed``: when such failures were seen) the webhook handler giving up after them."""
    if "Failed posting event" in text and REPORTS_IP in text:
        return True
    return lab_failed and "consecutive failures in WebHookHandler" in text


def lab_failed(f: Facts) -> bool:
    """Whether cloud-init failed to post to the lab's collector during this boot."""
    return any(lab_artifact(log.text, False) for log in f.console.logs) or any(
        lab_artifact(m, False) for messages in (f.status.recoverable if f.status else {}).values() for m in messages
    )


def warnings_of(f: Facts) -> list[str]:
    lines = [log.text for log in f.console.logs]
    lines += [f"webhook: {e.name}: WARN: {e.description}" for e in f.events if e.kind == "finish" and e.result == "WARN"]
    recoverable = f.status.recoverable if f.status else {}
    lines += [f"{level}: {message}" for level, messages in recoverable.items() for message in messages]
    ours = lab_failed(f)
    return [line for line in dict.fromkeys(lines) if not lab_artifact(line, ours)][:MAX_WARNINGS]


def cloud_init_report(f: Facts, stages: list[dict[str, Any]], done: bool) -> dict[str, Any]:
    full, name = datasource_of(f)
    versions = [b.version for b in f.console.banners] + ([f.console.finished.version] if f.console.finished else [])
    errors = (f.status.errors if f.status else []) + [e for sj in f.ssh_stages.values() for e in sj["errors"]]
    errors += f.result_file.errors if f.result_file else []
    recoverable = {level: list(messages) for level, messages in (f.status.recoverable if f.status else {}).items()}
    if not recoverable:  # no status from 23.4+: status.json's stages may have them
        for sj in f.ssh_stages.values():
            for level, messages in sj["recoverable_errors"].items():
                recoverable.setdefault(level, []).extend(messages)
    status = f.status.status if f.status else derived_status(f, stages, done)
    final = f.ssh_stages.get("modules-final", {}).get("finished")
    return {"version": versions[0] if versions else None, "datasource": full, "datasource_name": name, "status": status,
            "errors": list(dict.fromkeys(errors)), "recoverable_errors": recoverable,
            "finished_uptime": _first(f.console.finished and f.console.finished.uptime, _uptime(final))}  # fmt: skip


def derived_status(f: Facts, stages: list[dict[str, Any]], done: bool) -> str | None:
    if not any(s["source"] for s in stages):
        return "not run" if f.console.lines else None
    if any(s["errors"] for s in stages):
        return "error"
    return ("degraded done" if warnings_of(f) else "done") if done else "running"


def _expectation(name: str, result: str, expected: Any, actual: Any, message: str) -> dict[str, Any]:
    return {"name": name, "result": result, "expected": expected, "actual": actual, "message": message}


def ds_matches(want: str, name: str) -> bool:
    """A datasource's name against the one expected, without "DataSource", in any case: the expected name also matches its
    local and net variants ("ConfigDrive" matches ConfigDriveNet, "OpenStack" matches OpenStackLocal)."""
    want, name = want.removeprefix("DataSource").lower(), name.removeprefix("DataSource").lower()
    return name in (want, want + "local", want + "net")


def expect_datasource(ev: Evidence, name: str | None, full: str | None) -> dict[str, Any]:
    want = ev.expected.datasource.strip()
    if not name:
        return _expectation("datasource", "skip", want or "not None", None, "no source told the datasource (console, status, webhook)")
    if want:
        ok = ds_matches(want, name)
        return _expectation("datasource", "pass" if ok else "fail", want, full or name, f"cloud-init used {full or name}")
    ok = name.lower() != "none"
    why = "a datasource" if ok else "no datasource: DataSourceNone is the fallback (nothing answered or was found)"
    return _expectation("datasource", "pass" if ok else "fail", "not None", full or name, f"cloud-init found {why}")


def expect_hostname(f: Facts) -> dict[str, Any]:
    want = f.ev.expected.hostname
    phone = [r.body.get("hostname") for r in f.ev.reports if r.kind == "phone_home" and isinstance(r.body, dict)]
    phone = [h for h in phone if isinstance(h, str) and h]
    ssh = f.ev.ssh.get("hostname", "").strip() if f.ev.ssh_exit.get("hostname", 0) == 0 else ""
    seen = [(ssh, "SSH hostname"), (phone[-1] if phone else "", "phone_home post"),
            (f.console.hostnames[-1][1] if f.console.hostnames else "", "console login prompt")]  # fmt: skip
    actual, source = next(((h, s) for h, s in seen if h), ("", ""))
    if not want:
        return _expectation("hostname", "skip", want, actual or None, "no hostname expected")
    if not actual:
        return _expectation("hostname", "skip", want, None, "no hostname seen: no SSH answer, no phone_home post, no login prompt")
    ok = actual.lower() == want.lower() or actual.split(".")[0].lower() == want.split(".")[0].lower()
    return _expectation("hostname", "pass" if ok else "fail", want, actual, f"{actual} ({source})")


def _key_name(key: str) -> str:
    tokens = key.split()
    return tokens[2] if len(tokens) > 2 else key_blob(key)[-12:]


def expect_keys(f: Facts) -> dict[str, Any]:
    keys, name = f.ev.expected.keys, "keys installed"
    expected = [_key_name(k) for k in keys]
    if not keys:
        return _expectation(name, "skip", [], None, "no keys given")
    if "authorized_keys" in f.ev.ssh and f.ev.ssh_exit.get("authorized_keys", 0) == 0:
        blobs = {key_blob(line) for line in f.ev.ssh["authorized_keys"].splitlines() if line.strip()}
        missing = [_key_name(k) for k in keys if key_blob(k) not in blobs]
        source = "in authorized_keys (SSH)"
    elif f.console.key_tables:
        prints = {row[1] for table in f.console.key_tables for row in table.rows}
        missing = [_key_name(k) for k in keys if not {key_fingerprint(k), openssh_fingerprint(k)} & prints]
        source = "fingerprints in the console's authorized keys table"
    elif f.console.no_keys_users:
        return _expectation(name, "fail", expected, [], f"cloud-init found no authorized keys for user {f.console.no_keys_users[-1]} (console)")
    else:
        why = " (the fingerprints are printed on an instance's first boot only)" if f.ev.expected.boot == "reboot" else ""
        return _expectation(name, "skip", expected, None, f"no SSH answer and no authorized keys table on the console{why}")
    actual = [k for k in expected if k not in missing]
    message = f"all {len(keys)} {source}" if not missing else f"missing {', '.join(missing)}: not {source}"
    return _expectation(name, "fail" if missing else "pass", expected, actual, message)


def expect_user_data(f: Facts, modules: list[Module], failed: list[Failure]) -> dict[str, Any]:
    want, name, ev = f.ev.expected.user_data_sha256, "user data ran", f.ev
    if not want and not ev.expected.user_data_kind:
        return _expectation(name, "skip", None, None, "no user data given")
    bad = [x for x in failed if x.module in ("config-scripts-user", "config-runcmd")]
    if bad:
        return _expectation(name, "fail", want, None, "; ".join(_failure_text(x) for x in bad))
    evidence: list[str] = []
    if "user_data_sha256" in ev.ssh:
        got = (ev.ssh["user_data_sha256"].split() or [""])[0].lower()
        if ev.ssh_exit.get("user_data_sha256", 0) != 0 or not got:
            return _expectation(name, "fail", want, None, "no /var/lib/cloud/instance/user-data.txt (SSH)")
        if want and got != want.lower():
            return _expectation(name, "fail", want, got, "user-data.txt is not the user data given (sha256, SSH)")
        evidence.append("user-data.txt's sha256 matches (SSH)")
    else:
        fetched = [r for r in ev.requests if r.path.rstrip("/").endswith(("/user_data", "/user-data")) and r.status == 200]  # OpenStack, EC2
        if fetched:
            evidence.append(f"fetched user_data at {fetched[0].t:.1f} s (journal)")
        elif ev.expected.config_drive in ("only", "both"):
            evidence.append(f"on the config drive (config drive {ev.expected.config_drive})")
        elif ev.requests:
            return _expectation(name, "fail", want, None, "the guest never fetched user_data (journal)")
    ran = [m for m in modules if m.name == "config-scripts-user"]
    if ran and ran[-1].result == "SUCCESS" and ran[-1].ran:
        evidence.append(f"config-scripts-user ran ({'webhook' if f.events else 'analyze show'})")
    elif ran and not ran[-1].ran:
        return _expectation(name, "fail", want, None, f"config-scripts-user did not run: {ran[-1].description}")
    if any(r.kind == "phone_home" for r in ev.reports):
        evidence.append("phone_home posted")
    if not evidence:
        return _expectation(name, "skip", want, None, "no SSH answer, no metadata journal, no webhook events")
    return _expectation(name, "pass", want, want if "user_data_sha256" in ev.ssh else None, "; ".join(evidence))


def expect_per_instance_skipped(f: Facts, modules: list[Module]) -> dict[str, Any]:
    name = "per-instance modules skipped"
    per_instance = [m for m in modules if m.frequency == "once-per-instance" or (m.frequency is None and m.name in PER_INSTANCE)]
    source = "webhook" if f.events else "analyze show"
    again = [m.name for m in per_instance if m.ran]
    skipped = [m.name for m in per_instance if not m.ran]
    if again:
        return _expectation(name, "fail", "previously ran", again, f"ran again on the reboot: {', '.join(again)} ({source})")
    if f.console.key_tables or f.console.no_keys_users:
        return _expectation(name, "fail", "previously ran", ["config-ssh-authkey-fingerprints"],
                            "the console shows the authorized keys table, printed on an instance's first boot only")  # fmt: skip
    if skipped:
        return _expectation(name, "pass", "previously ran", skipped, f"{len(skipped)} per-instance modules previously ran ({source})")
    instance_id, uuid = f.ev.ssh.get("instance_id", "").strip(), str(f.ev.instance.get("uuid") or "")
    if instance_id and uuid:
        ok = instance_id == uuid
        why = "instance-id unchanged: cloud-init saw the same instance (SSH)" if ok else "instance-id changed: cloud-init saw a new instance"
        return _expectation(name, "pass" if ok else "fail", uuid, instance_id, why)
    return _expectation(name, "skip", "previously ran", None, "no webhook events, no analyze output, no instance-id over SSH")


def expect_ipv6(f: Facts) -> dict[str, Any]:
    want, peer, name = f.ev.expected.ipv6, f.ev.expected.ipv6_peer, "ipv6"
    if "ipv6_addresses" not in f.ev.ssh:
        return _expectation(name, "skip", want, None, "no SSH answer: the guest's addresses are not known")
    have = [w.split("/")[0] for line in f.ev.ssh["ipv6_addresses"].splitlines() for w in line.split()[3:4]]
    reached = f.ev.ssh_exit.get("ipv6_ping", -1) == 0
    ok = want in have and (reached or not peer)
    how = "%s configured%s" % (want, ", %s %s over IPv6" % (peer, "reached" if reached else "NOT reached") if peer else "")
    return _expectation(name, "pass" if ok else "fail", want, have, how if want in have else "%s not configured (has %s)" % (want, have or "none"))


def expect_no_errors(ci: dict[str, Any], stages: list[dict[str, Any]], f: Facts, failed: list[Failure]) -> dict[str, Any]:
    errors = [f"{s['name']}: {e}" for s in stages for e in s["errors"]] + [f"cloud-init: {_failure_text(x)}" for x in failed if not x.stage]
    told = {e for sj in f.ssh_stages.values() for e in sj["errors"]}  # said already, by stage
    errors += [e for e in ci["errors"] if e not in told and not _STATUS_ERROR.match(e)]
    errors += [f"traceback: {t.last}" for t in f.console.tracebacks if f.window(t.n) is None]
    errors = list(dict.fromkeys(errors))
    return _expectation("no errors", "fail" if errors else "pass", [], errors, "; ".join(errors[:3]) or "none reported or seen")


def progress(f: Facts, stages: list[dict[str, Any]]) -> str:
    """How far a boot that did not finish got."""
    started = [s for s in stages if s["start"] is not None or s["source"]]
    if started:
        last = started[-1]
        if last["result"] is not None and last["name"] != STAGES[-1]:
            at = f" at {last['finish']:.1f} s" if last["finish"] is not None else ""
            return f"stage {last['name']} finished{at} but {STAGES[STAGES.index(last['name']) + 1]} never started"
        at = f" at {last['start']:.1f} s" if last["start"] is not None else ""
        return f"stage {last['name']} started{at} but did not finish"
    if not f.console.lines:
        return "no console output at all"
    if f.console.kernel:
        return "the kernel booted but cloud-init never started"
    return f"{f.console.lines} console lines but neither kernel nor cloud-init output"


def ssh_source(ev: Evidence) -> str:
    if ev.ssh and not ev.ssh_error:
        return "used"
    if ev.ssh:
        return f"failed: {ev.ssh_error}"
    return f"not used: {ev.ssh_error or 'not asked for'}"


def decide(ev: Evidence) -> dict[str, Any]:
    """The report (schema above) for one boot's evidence."""
    f = gather_facts(ev)
    failed = failures(f)
    stages = [stage_report(name, f, failed) for name in STAGES]
    done = finished(f, stages)
    ci = cloud_init_report(f, stages, done)
    modules = modules_report(f)
    per_boot = ev.expected.boot == "reboot"
    expectations = [
        expect_datasource(ev, ci["datasource_name"], ci["datasource"]),
        expect_hostname(f),
        expect_keys(f),
        expect_per_instance_skipped(f, modules) if per_boot else expect_user_data(f, modules, failed),
        expect_no_errors(ci, stages, f, failed),
        *([expect_ipv6(f)] if ev.expected.ipv6 else []),
    ]
    warnings = warnings_of(f)
    status, code, reason = verdict(f, stages, done, failed, expectations, warnings)
    final_t = _first(f.console.finished and f.console.finished.t, stages[-1]["finish"])
    return {
        "schema": SCHEMA,
        "image": ev.image,
        "instance": dict(ev.instance),
        "config_drive": ev.expected.config_drive,
        "boot": ev.expected.boot,
        "status": status,
        "exit_code": code,
        "reason": reason,
        "cloud_init": ci,
        "stages": stages,
        "modules": [vars(m).copy() for m in modules],
        "expectations": expectations,
        "metadata_requests": [
            {"t": r.t, "method": r.method, "path": r.path, "status": r.status, "bytes": r.bytes_out, "reason": r.reason} for r in ev.requests
        ],
        "lease": {"t": ev.lease_t},
        "timings": {
            "lease": ev.lease_t,
            "first_metadata": min((r.t for r in ev.requests), default=None),
            **{s["name"]: s["finish"] for s in stages},
            "finished": final_t if done else None,
            "waited": ev.waited,
        },
        "sources": {
            "console": len(ev.console),
            "webhook": len(f.events),
            "phone_home": sum(r.kind == "phone_home" for r in ev.reports),
            "ssh": ssh_source(ev),
            "journal": len(ev.requests),
            "lease": ev.lease_t is not None,
        },
        "warnings": warnings,
        "tracebacks": ["\n".join(t.lines) for t in f.console.tracebacks],
        "console_tail": "" if status == "pass" else "\n".join(line.text for line in ev.console[-TAIL_LINES:]),
    }


def verdict(f: Facts, stages: list[dict[str, Any]], done: bool, failed: list[Failure], expectations: list[dict[str, Any]],
            warnings: list[str]) -> tuple[str, int, str]:  # fmt: skip
    """(status, exit code, reason)."""
    ev = f.ev
    if ev.start_error:
        return "error", 3, f"could not start the guest: {ev.start_error}"
    reasons = [f"the image cannot boot: {ev.image_error}"] if ev.image_error else []
    if not done and not ev.image_error:
        how = progress(f, stages)
        if ev.qemu_exit is not None:
            status = f" with status {ev.qemu_exit}" if ev.qemu_exit >= 0 else " (the guest powered off or QEMU died)"
            reasons.append(f"QEMU exited{status} during the boot: {how}")
        elif ev.timed_out:
            reasons.append(f"cloud-init did not finish within {ev.waited:.0f} s: {how}")
        else:
            reasons.append(f"cloud-init did not finish: {how}")
    reasons += [f"{x.stage or 'cloud-init'}: {_failure_text(x)}" for x in failed]
    errors: list[str] = next((e["actual"] for e in expectations if e["name"] == "no errors"), [])
    if errors and not failed:
        reasons.append(f"cloud-init reported errors: {errors[0]}")
    for e in expectations:
        said = bool(e["message"]) and any(e["message"] in r for r in reasons)  # "user data ran" fails for a module already named
        if e["result"] == "fail" and e["name"] != "no errors" and not said:
            reasons.append(f"{e['name']}: {e['message']}")
    if reasons:
        return "fail", 1, "; ".join(reasons[:4]) + (f" (and {len(reasons) - 4} more)" if len(reasons) > 4 else "")
    if f.status and f.status.extended is not None:  # 23.4+: its word on degraded is the one that counts (the lab's own failures aside)
        ours = lab_failed(f)
        own = {level: [m for m in messages if not lab_artifact(m, ours)] for level, messages in f.status.recoverable.items()}
        own = {level: messages for level, messages in own.items() if messages}
        if not own and (not f.status.status.startswith("degraded") or f.status.recoverable):
            return "pass", 0, ""
        first = [f"{level}: {messages[0]}" for level, messages in own.items()][:1]
        return "degraded", 2, f"cloud-init says {f.status.extended}" + (f" ({first[0]})" if first else "")
    if warnings:
        return "degraded", 2, f"{len(warnings)} warning{'s' if len(warnings) > 1 else ''}: {warnings[0]}"
    return "pass", 0, ""
