"""The verdict's report (``verdict.decide``) written out: JSON, JUnit XML for CI, and a short summary for a person.

JUnit: ``<testsuites>`` with one ``<testsuite>`` per report (instance, image, config drive mode; and the boot when not the
first), whose test cases are the four cloud-init stages (a stage not reached or not finished, or with errors, fails) and the
expectations (pass, fail, or skipped with the reason).  A report of a guest that could not be started (exit 3) is one test
case with an ``<error>``.  The console's tail goes in a failing case's ``<system-out>``; the warnings in the suite's.  Text
from a serial console may hold any byte: what XML 1.0 cannot carry is dropped before writing.  GitLab and Jenkins read it.
"""

from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from typing import Any

# What XML 1.0 cannot carry (C0 controls but tab, LF, CR; lone surrogates; U+FFFE, U+FFFF) and the C1 controls it discourages.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
_NOT_NAME = re.compile(r"[^\w\-]+")
_BOOTS = {"first": "first boot", "reboot": "reboot", "rebuild": "first boot after a rebuild"}


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n"


def xml_text(value: Any) -> str:
    """Text XML 1.0 can carry: control characters (a serial console's) removed."""
    return _NOT_XML.sub("", value if isinstance(value, str) else str(value))


def suite_title(report: dict[str, Any]) -> str:
    instance = report.get("instance") or {}
    name = str(instance.get("name") or instance.get("hostname") or "guest")
    title = f"{name} {os.path.basename(str(report.get('image') or '')) or '?'} config-drive={report.get('config_drive', 'none')}"
    return title + (f" boot={report['boot']}" if report.get("boot") not in (None, "first") else "")


def _seconds(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0 else "0.000"


def _element(parent: ET.Element, tag: str, text: str = "", **attributes: Any) -> ET.Element:
    element = ET.SubElement(parent, tag, {k: xml_text(v) for k, v in attributes.items()})
    if text:
        element.text = xml_text(text)
    return element


def _stage_case(suite: ET.Element, classname: str, stage: dict[str, Any], report: dict[str, Any]) -> str:
    """The stage's test case; its outcome: "failure" or "pass"."""
    start, finish = stage.get("start"), stage.get("finish")
    duration = finish - start if isinstance(start, (int, float)) and isinstance(finish, (int, float)) else 0.0
    case = _element(suite, "testcase", classname=classname, name=f"stage {stage['name']}", time=_seconds(duration))
    errors = [str(e) for e in stage.get("errors") or []]
    if stage.get("result") is None:
        if start is None and not stage.get("source"):
            message = "not reached"
        else:
            message = "started" + (f" at {start:.1f} s" if isinstance(start, (int, float)) else "") + " but did not finish"
        kind = "StageNotFinished"
    elif stage.get("result") == "FAIL" or errors:
        message, kind = "; ".join(errors[:3]) or "cloud-init reported FAIL", "StageFailed"
    else:
        return "pass"
    text = "\n".join(errors or [message]) + f"\n\nverdict: {report.get('reason', '')}"
    _element(case, "failure", text, message=message, type=kind)
    _console_out(case, report)
    return "failure"


def _expectation_case(suite: ET.Element, classname: str, expectation: dict[str, Any], report: dict[str, Any]) -> str:
    case = _element(suite, "testcase", classname=classname, name=str(expectation.get("name")), time="0.000")
    result, message = expectation.get("result"), str(expectation.get("message") or "")
    if result == "skip":
        _element(case, "skipped", message=message)
        return "skipped"
    if result == "fail":
        text = f"{message}\nexpected: {expectation.get('expected')!r}\nactual: {expectation.get('actual')!r}"
        _element(case, "failure", text, message=message, type="ExpectationFailed")
        _console_out(case, report)
        return "failure"
    return "pass"


def _console_out(case: ET.Element, report: dict[str, Any]) -> None:
    tail = report.get("console_tail") or ""
    if tail:
        _element(case, "system-out", tail)


def _suite(report: dict[str, Any], suite_name: str, timestamp: str) -> tuple[ET.Element, dict[str, int]]:
    title = suite_title(report)
    classname = f"{suite_name}.{_NOT_NAME.sub('_', title).strip('_')}"
    suite = ET.Element("testsuite", {"name": xml_text(title), "timestamp": timestamp, "time": _seconds(report.get("timings", {}).get("waited"))})
    properties = _element(suite, "properties")
    cloud_init = report.get("cloud_init") or {}
    fields = {"status": report.get("status"), "exit_code": report.get("exit_code"), "reason": report.get("reason"), "image": report.get("image"),
              "cloud_init": cloud_init.get("version"), "datasource": cloud_init.get("datasource")}  # fmt: skip
    for name, value in fields.items():
        _element(properties, "property", name=name, value="" if value is None else value)
    outcomes: list[str] = []
    if report.get("exit_code") == 3:
        case = _element(suite, "testcase", classname=classname, name="start", time="0.000")
        reason = str(report.get("reason") or "could not start")
        _element(case, "error", reason, message=reason, type="StartError")
        outcomes.append("error")
    else:
        outcomes += [_stage_case(suite, classname, stage, report) for stage in report.get("stages") or []]
        outcomes += [_expectation_case(suite, classname, e, report) for e in report.get("expectations") or []]
    warnings = report.get("warnings") or []
    if warnings:
        _element(suite, "system-out", "warnings:\n" + "\n".join(str(w) for w in warnings))
    counts = {"tests": len(outcomes), "failures": outcomes.count("failure"), "errors": outcomes.count("error"), "skipped": outcomes.count("skipped")}
    for key, value in counts.items():
        suite.set(key, str(value))
    return suite, counts


def junit(reports: list[dict[str, Any]], suite_name: str = "vrouter-lab", timestamp: str | None = None) -> str:
    """JUnit XML of the reports.  ``timestamp`` (ISO 8601) is each suite's unless a report has its own ``started``; now by default."""
    when = timestamp or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    root = ET.Element("testsuites", {"name": xml_text(suite_name)})
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    time = 0.0
    for report in reports:
        started = report.get("started")
        suite, counts = _suite(report, suite_name, xml_text(started) if isinstance(started, str) and started else when)
        root.append(suite)
        totals = {key: totals[key] + counts[key] for key in totals}
        time += float(suite.get("time") or 0)
    for key, value in totals.items():
        root.set(key, str(value))
    root.set("time", f"{time:.3f}")
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _at(value: Any) -> str:
    return f"{value:.1f} s" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def _stage_line(stage: dict[str, Any]) -> str:
    errors = stage.get("errors") or []
    if stage.get("result") is None:
        state = "not reached" if stage.get("start") is None and not stage.get("source") else f"started {_at(stage.get('start'))}, not finished"
    else:
        state = f"{stage['result']:<7} finished {_at(stage.get('finish'))}"
    count = f"{len(errors)} error{'' if len(errors) == 1 else 's'}" + (f": {errors[0]}" if errors else "")
    return f"  {stage.get('name', '?'):<15} {state:<28} {count}"


def summary(report: dict[str, Any]) -> str:
    """A few lines for a person: the verdict, what booted, cloud-init's stages, what failed and why, the times."""
    instance, ci, timings = report.get("instance") or {}, report.get("cloud_init") or {}, report.get("timings") or {}
    status = str(report.get("status", "?")).upper()
    lines = [f"{status} (exit {report.get('exit_code')})" + (f": {report['reason']}" if report.get("reason") else "")]
    where = ", ".join(str(instance[k]) for k in ("ip", "uuid") if instance.get(k))
    lines.append(f"image {report.get('image')}; instance {instance.get('name', '?')}" + (f" ({where})" if where else "")
                 + f"; config drive {report.get('config_drive')}; {_BOOTS.get(str(report.get('boot')), report.get('boot'))}")  # fmt: skip
    datasource = ci.get("datasource") or ci.get("datasource_name") or "?"
    lines.append(f"cloud-init {ci.get('version') or '?'} ({ci.get('status') or 'status unknown'}), datasource {datasource}")
    if report.get("exit_code") != 3:
        lines += [_stage_line(stage) for stage in report.get("stages") or []]
    for expectation in report.get("expectations") or []:
        if expectation.get("result") == "fail":
            lines.append(f"failed: {expectation.get('name')}: {expectation.get('message')}")
    lease, first_metadata, finished, waited = (_at(timings.get(k)) for k in ("lease", "first_metadata", "finished", "waited"))
    lines.append(f"timings: lease {lease}, first metadata {first_metadata}, finished {finished}, waited {waited}")
    return "\n".join(lines)
