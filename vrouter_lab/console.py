"""What a guest says about cloud-init's boot, parsed (pure: text in, facts out): its serial console
(``parse_console``), and cloud-init's other outputs: webhook events (``parse_events``), ``cloud-init status
--format json --long`` (``parse_status``), status.json and result.json (``parse_status_file``) and
``cloud-init analyze show`` (``parse_analyze``).

The console carries cloud-init's own output, usually through journald's forwarding of the units'
``StandardOutput=journal+console`` (each line prefixed ``[   24.869213] cloud-init[412]: ``), and a
few things cloud-init writes to ``/dev/console`` itself (``ci-info: `` tables, unprefixed).  The
shapes read here, as cloud-init 22.4.2 writes them (``cloudinit/cmd/main.py``,
``config/cc_final_message.py``, ``config/cc_ssh_authkey_fingerprints.py``, the logging config's
``%(asctime)s - %(filename)s[%(levelname)s]: %(message)s``), unchanged up to 24.x:

* ``Cloud-init v. 22.4.2 running 'init-local' at Mon, 07 Dec 2026 08:00:24 +0000. Up 24.80 seconds.``
  (stages ``init-local``, ``init``, ``modules:config``, ``modules:final``);
* ``Cloud-init v. 22.4.2 finished at <date>. Datasource DataSourceOpenStackLocal [net,ver=2].  Up 77.01 seconds``;
* ``2026-12-07 08:00:01,123 - cc_scripts_user.py[WARNING]: Failed to run module scripts-user (...)``
  and ``util.py[WARNING]: Running module scripts-user (<module ...>) failed``: a module that raised;
* Python tracebacks (a stage that raised prints one between two lines of dashes);
* ``ci-info: ...Authorized keys from /home/debian/.ssh/authorized_keys for user debian...`` and its
  table of sha256 fingerprints (colon-separated hex), or ``no authorized SSH keys fingerprints found``;
* systemd's ``[  OK  ] Finished cloud-init.service - ...`` / ``[FAILED] Failed to start ...``;
* the login prompt (``guest1 login:``) and the issue line (``Debian GNU/Linux 12 guest1 ttyS0``).

``cloud-init status --format json``: 22.4 prints status ("not run", "running", "done", "error", "disabled"),
datasource (lower case, without "DataSource"), detail (the datasource as printed, or the errors), errors,
boot_status_code, last_update, schemas; 23.4 adds extended_status ("degraded done", ...), recoverable_errors
and status.json's v1 keys (a dict per stage: "init-local", "init", "modules-config", "modules-final"; "stage");
24.1 says "not started" for "not run" and "error - done" / "error - running" as extended_status.  status.json's
stage times are epoch seconds up to 24.1 and uptimes from 24.2.

Nothing here raises on odd text: a line that does not parse is not a fact.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from vrouter_lab.evidence import ConsoleLine, Report

STAGES = ("init-local", "init-network", "modules-config", "modules-final")

# Every spelling of a stage (console banner, webhook event, status.json key) to the report's name.
STAGE_ALIASES = {
    "init-local": "init-local",
    "init": "init-network",
    "init-network": "init-network",
    "modules:config": "modules-config",
    "modules-config": "modules-config",
    "modules:final": "modules-final",
    "modules-final": "modules-final",
}

# The systemd units that run the stages, by unit name and by their description (systemd < 250 prints only the latter).
UNITS = {
    "cloud-init-local": "init-local",
    "cloud-init": "init-network",
    "cloud-config": "modules-config",
    "cloud-final": "modules-final",
    "Initial cloud-init job (pre-networking)": "init-local",
    "Initial cloud-init job (metadata service crawler)": "init-network",
    "Apply the settings specified in cloud-config": "modules-config",
    "Execute cloud user/final scripts": "modules-final",
}

_TIME_PREFIX = re.compile(r"^\[\s*\d+\.\d+\]\s?")
_IDENT_PREFIX = re.compile(r"^[\w@.\-/]{1,64}\[\d+\]: ?")
_SYSLOG_PREFIX = re.compile(r"^<\d{1,3}>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d [\w.\-]{1,64}(?:\[\d+\])?: ?")
_BANNER = re.compile(r"Cloud-init v\. (\S+) running '([^']*)' at (.*?)\. Up (\S+) seconds\.?")
_FINISHED = re.compile(r"Cloud-init v\. (\S+) finished at (.*?)\. Datasource (.*?)\.\s+Up (\S+) seconds")
_LOG = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) - ([\w.\-]+)\[([A-Z]+)\]: (.*)")
_RUNNING_FAILED = re.compile(r"Running module (\S+) \(.*\) failed")
_FAILED_TO_RUN = re.compile(r"Failed to run module (\S+) \((.*)\)")
_UNIT_OK = re.compile(r"\[\s*OK\s*\] Finished (.+?)(?:\.service)?(?: - .*)?\.?\s*$")
_UNIT_FAILED = re.compile(r"\[\s*FAILED\s*\] Failed to start (.+?)(?:\.service)?(?: - .*)?\.?\s*$")
_KEYS_HEADER = re.compile(r"Authorized keys from (\S+) for user (\S+?)\+*$")
_NO_KEYS = re.compile(r"no authorized SSH keys fingerprints found for user (\S+?)\.?$")
_LOGIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9.\-]{0,252}) login:")
_ISSUE = re.compile(r"^(?:Debian GNU/Linux|Ubuntu|Fedora|CentOS|Rocky|AlmaLinux|Red Hat|openSUSE|Arch Linux)\b.*? (\S+) (?:tty\w+|hvc\d+)\s*$")
_KERNEL = re.compile(r"^\[\s*\d+\.\d+\] |Linux version \d|^SeaBIOS|Booting from |^Loading Linux ")
FREQUENCY = re.compile(r" with frequency (\S+)")
FOUND_DATASOURCE = re.compile(r"(?:found \w+ data from |restored from (?:checked )?cache(?: with run check)?: )(DataSource\w+.*)")
_ANALYZE_RECORD = re.compile(r"^\|\s*`->(.*) @[\d.]+s \+[\d.]+s$")
_ANALYZE_MODULE = re.compile(r"^(?:(config-\S+) (ran successfully|previously ran)|running (config-\S+) with frequency (\S+))")
_TRACE_MAX_LINES = 60
_TRACE_MAX_BLOCKS = 20


@dataclass
class Banner:
    """A stage's welcome line."""

    t: float
    n: int  # the line's index on the console (lines read in one poll share a time)
    version: str
    stage: str | None  # the report's name, None for a stage it does not know (``modules:init``, ``single``)
    raw: str  # as cloud-init wrote it, e.g. "modules:config"
    wall: str  # the guest's RFC 2822 date
    uptime: float | None


@dataclass
class Finished:
    """cc_final_message's line: the end of modules-final."""

    t: float
    version: str
    wall: str
    datasource: str
    uptime: float | None


@dataclass
class LogLine:
    """A cloud-init log record at WARNING or above (the console handler's level)."""

    t: float
    n: int  # the line's index on the console (lines read in one poll share a time)
    file: str
    level: str
    message: str

    @property
    def text(self) -> str:
        return f"{self.file}[{self.level}]: {self.message}"


@dataclass
class Traceback:
    t: float
    n: int  # the line's index on the console (lines read in one poll share a time)
    lines: list[str]

    @property
    def last(self) -> str:
        """The exception's line (``RuntimeError: ...``), or the first line when the block was cut short."""
        return self.lines[-1].strip() if self.lines else ""


@dataclass
class KeyTable:
    """One ``Authorized keys from PATH for user USER`` table: rows of (key type, fingerprint, comment)."""

    t: float
    path: str
    user: str
    rows: list[tuple[str, str, str]] = field(default_factory=list)


@dataclass
class UnitLine:
    """systemd's word on a stage's unit: finished (``ok``) or failed to start."""

    t: float
    stage: str
    ok: bool


@dataclass
class ModuleFailure:
    t: float
    n: int  # the line's index on the console (lines read in one poll share a time)
    module: str  # "config-scripts-user"
    detail: str


@dataclass
class ConsoleFacts:
    lines: int = 0
    kernel: bool = False  # a kernel (or firmware) line was seen
    banners: list[Banner] = field(default_factory=list)
    finished: Finished | None = None
    logs: list[LogLine] = field(default_factory=list)
    tracebacks: list[Traceback] = field(default_factory=list)
    key_tables: list[KeyTable] = field(default_factory=list)
    no_keys_users: list[str] = field(default_factory=list)
    hostnames: list[tuple[float, str]] = field(default_factory=list)  # (t, name) from login prompts and issue lines
    units: list[UnitLine] = field(default_factory=list)
    module_failures: list[ModuleFailure] = field(default_factory=list)


def strip_prefix(text: str) -> str:
    """The message of a console line: without journald's ``[  12.3] ident[pid]: ``, the kernel's
    ``[  12.3] `` or syslog's ``<14>Dec  7 08:00:01 ident: ``."""
    rest = _TIME_PREFIX.sub("", text, count=1)
    rest = _IDENT_PREFIX.sub("", rest, count=1)
    return _SYSLOG_PREFIX.sub("", rest, count=1)


def stage_of(name: str) -> str | None:
    """The report's stage name for any of cloud-init's spellings (None: not one of the four)."""
    return STAGE_ALIASES.get(name.strip())


def to_float(text: Any) -> float | None:
    """A finite float, or None (for None, "??", bools, NaN, anything else)."""
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        return None
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if value == value and value not in (float("inf"), float("-inf")) else None


def fingerprint(key: str) -> str:
    """cloud-init's printed fingerprint of a public key ("type base64 [comment]" or the base64 alone):
    sha256 of the decoded blob as colon-separated hex pairs; "" when it is not base64."""
    blob = key_blob(key)
    if not blob:
        return ""
    try:
        raw = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        return ""
    digest = hashlib.sha256(raw).hexdigest()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def openssh_fingerprint(key: str) -> str:
    """The same key as ``ssh-keygen -l`` prints it (``SHA256:`` base64 without padding), "" if not base64."""
    try:
        raw = base64.b64decode(key_blob(key), validate=True)
    except (binascii.Error, ValueError):
        return ""
    return "SHA256:" + base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=") if raw else ""


def key_blob(key: str) -> str:
    """The base64 part of a public key line ("[options] type base64 [comment]")."""
    tokens = key.split()
    for token in tokens:
        if token.startswith("AAAA"):
            return token
    return tokens[1] if len(tokens) > 1 else (tokens[0] if tokens else "")


def parse_console(lines: list[ConsoleLine]) -> ConsoleFacts:
    """Every fact this module knows how to read from the console, in the order seen."""
    facts = ConsoleFacts(lines=len(lines))
    trace: Traceback | None = None
    table: KeyTable | None = None
    for n, line in enumerate(lines):
        raw = line.text if isinstance(line.text, str) else str(line.text)
        if not facts.kernel and _KERNEL.search(raw):
            facts.kernel = True
        text = strip_prefix(raw)
        if trace is not None:
            trace = _continue_trace(trace, text, facts)
            continue  # a traceback's line, its exception's, or the blank or dashes after it
        if table is not None:
            table = _continue_table(table, text)
            if table is not None:
                continue
        if "Traceback (most recent call last):" in text:
            trace = Traceback(line.t, n, [text.strip()])
            continue
        if text.startswith("ci-info: "):
            table = _start_table(line.t, text[len("ci-info: ") :], facts)
            continue
        _read_line(line.t, n, text, facts)
    if trace is not None:
        _end_trace(trace, facts)
    return facts


def _read_line(t: float, n: int, text: str, facts: ConsoleFacts) -> None:
    if "Cloud-init v. " in text:
        banner = _BANNER.search(text)
        if banner:
            version, raw_stage, wall, uptime = banner.groups()
            facts.banners.append(Banner(t, n, version, stage_of(raw_stage), raw_stage, wall, to_float(uptime)))
            return
        done = _FINISHED.search(text)
        if done:
            version, wall, datasource, uptime = done.groups()
            facts.finished = Finished(t, version, wall, datasource.strip(), to_float(uptime))
            return
    log = _LOG.search(text)
    if log:
        _, file, level, message = log.groups()
        if level in ("WARNING", "ERROR", "CRITICAL", "DEPRECATED"):
            facts.logs.append(LogLine(t, n, file, level, message.rstrip()))
            _module_failure(t, n, message, facts)
        return
    for pattern, ok in ((_UNIT_OK, True), (_UNIT_FAILED, False)):
        unit = pattern.search(text)
        if unit:
            stage = UNITS.get(unit.group(1).strip())
            if stage:
                facts.units.append(UnitLine(t, stage, ok))
            return
    name = _LOGIN.match(text) or _ISSUE.match(text.strip())
    if name:
        facts.hostnames.append((t, name.group(1)))


def _module_failure(t: float, n: int, message: str, facts: ConsoleFacts) -> None:
    match = _RUNNING_FAILED.search(message)
    detail = ""
    if not match:
        match = _FAILED_TO_RUN.search(message)
        detail = match.group(2) if match else ""
    if match:
        module = "config-" + match.group(1).replace("_", "-")
        for known in facts.module_failures:
            if known.module == module and t - known.t < 60:
                known.detail = known.detail or detail
                return
        facts.module_failures.append(ModuleFailure(t, n, module, detail))


def _continue_trace(trace: Traceback, text: str, facts: ConsoleFacts) -> Traceback | None:
    """Add a line to a traceback; None when the traceback has ended (the line is its exception, or not part of it)."""
    if text.startswith((" ", "\t")) and text.strip():
        if len(trace.lines) < _TRACE_MAX_LINES:
            trace.lines.append(text.rstrip())
        return trace
    if text.strip() and not text.startswith("-" * 20):
        trace.lines.append(text.strip())
        _end_trace(trace, facts)
        return None
    _end_trace(trace, facts)
    return None


def _end_trace(trace: Traceback, facts: ConsoleFacts) -> None:
    if len(facts.tracebacks) < _TRACE_MAX_BLOCKS:
        facts.tracebacks.append(trace)


def _start_table(t: float, text: str, facts: ConsoleFacts) -> KeyTable | None:
    header = _KEYS_HEADER.search(text.strip())
    if header:
        table = KeyTable(t, header.group(1), header.group(2).rstrip("+"))
        facts.key_tables.append(table)
        return table
    none = _NO_KEYS.search(text.strip())
    if none:
        facts.no_keys_users.append(none.group(1))
    return None


def _continue_table(table: KeyTable, text: str) -> KeyTable | None:
    """Read a row of an authorized keys table; None when the table has ended."""
    body = text[len("ci-info: ") :].strip() if text.startswith("ci-info: ") else ""
    if body.startswith("+"):
        return table
    if body.startswith("|"):
        cells = [cell.strip() for cell in body.strip("|").split("|")]
        if len(cells) >= 2 and cells[0] != "Keytype":
            table.rows.append((cells[0], cells[1], cells[3] if len(cells) > 3 else ""))
        return table
    return None


# cloud-init's other words on a boot: its webhook events and, over SSH, status, status.json, result.json, analyze show.


@dataclass
class Event:
    """One webhook event (``reporting`` type webhook): ``name`` is "stage" or "stage/child"."""

    t: float
    name: str
    kind: str  # start, finish
    description: str
    result: str | None = None  # SUCCESS, WARN, FAIL (finish events)
    timestamp: float | None = None  # the guest's wall clock

    @property
    def stage(self) -> str | None:
        return stage_of(self.name.split("/")[0])

    @property
    def leaf(self) -> str:
        return self.name.split("/")[-1]


@dataclass
class StatusOutput:
    """``cloud-init status --format json --long``: 22.4 (status, detail, ...) or 23.4+ (extended_status, recoverable_errors, v1's stages)."""

    status: str  # normalised: see ``normal_status``
    extended: str | None  # None before 23.4
    datasource: str  # lower case, without "datasource" ("openstacklocal")
    detail: str
    errors: list[str]
    recoverable: dict[str, list[str]]
    stages: dict[str, dict[str, Any]]


@dataclass
class StatusFile:
    """/run/cloud-init/status.json's (or result.json's) v1: datasource, current stage, each stage's errors and times."""

    datasource: str | None
    stage: str | None
    stages: dict[str, dict[str, Any]]
    errors: list[str] = field(default_factory=list)  # result.json's


@dataclass
class Module:
    name: str
    stage: str | None
    result: str | None
    description: str
    ran: bool
    frequency: str | None = None


def _json_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in a command's output (``--wait`` prints dots first), or None."""
    start = text.find("{") if isinstance(text, str) else -1
    if start < 0:
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(text[start:])
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _strings(value: Any) -> list[str]:
    return [str(item) for item in value] if isinstance(value, list) else []


def _recoverable(value: Any) -> dict[str, list[str]]:
    return {str(k): _strings(v) for k, v in value.items() if _strings(v)} if isinstance(value, dict) else {}


def _stage_dicts(v1: dict[str, Any]) -> dict[str, dict[str, Any]]:
    stages: dict[str, dict[str, Any]] = {}
    for key, value in v1.items():
        stage = stage_of(str(key))
        if stage and isinstance(value, dict):
            stages[stage] = {
                "errors": _strings(value.get("errors")),
                "recoverable_errors": _recoverable(value.get("recoverable_errors")),
                "start": to_float(value.get("start")),
                "finished": to_float(value.get("finished")),
            }
    return stages


def normal_status(status: str, extended: str | None) -> str:
    """One word for 22.4's status and 23.4+'s extended status: "error - done" is "error", "not started" is "not run"."""
    word = (extended or status or "").strip()
    if word.startswith("error"):
        return "error"
    return "not run" if word in ("not run", "not started") else word


def parse_status(text: str) -> StatusOutput | None:
    body = _json_object(text)
    if body is None or not isinstance(body.get("status"), str):
        return None
    extended = body.get("extended_status")
    extended = extended if isinstance(extended, str) else None
    return StatusOutput(
        status=normal_status(body["status"], extended),
        extended=extended,
        datasource=str(body.get("datasource") or ""),
        detail=str(body.get("detail") or ""),
        errors=_strings(body.get("errors")),
        recoverable=_recoverable(body.get("recoverable_errors")),
        stages=_stage_dicts(body),
    )


def parse_status_file(text: str) -> StatusFile | None:
    """status.json or result.json (``{"v1": {...}}``)."""
    body = _json_object(text)
    v1 = body.get("v1") if body else None
    if not isinstance(v1, dict):
        return None
    datasource, stage = v1.get("datasource"), v1.get("stage")
    return StatusFile(
        datasource=datasource if isinstance(datasource, str) and datasource else None,
        stage=stage_of(stage) if isinstance(stage, str) else None,
        stages=_stage_dicts(v1),
        errors=_strings(v1.get("errors")),
    )


def parse_analyze(text: str) -> tuple[list[Module], list[str], dict[str, str]]:
    """``cloud-init analyze show``'s last boot record: its modules, the stages it saw finish, and descriptions by stage."""
    record: list[str] = []
    for line in text.splitlines() if isinstance(text, str) else []:
        if line.startswith("-- Boot Record"):
            record = []
        record.append(line.rstrip())
    modules: list[Module] = []
    finished: list[str] = []
    found: dict[str, str] = {}
    stage: str | None = None
    for line in record:
        if line.startswith("Starting stage: "):
            stage = stage_of(line[len("Starting stage: ") :])
        elif line.startswith("Finished stage: ("):
            name = stage_of(line[len("Finished stage: (") :].split(")")[0])
            finished += [name] if name else []
        elif match := _ANALYZE_RECORD.match(line):
            description = match.group(1)
            module = _ANALYZE_MODULE.match(description)
            if module:
                done, how, failed, frequency = module.groups()
                result = "SUCCESS" if done else "FAIL"  # the message stays "running ..." only when the module raised
                modules.append(Module(done or failed, stage, result, description, how != "previously ran", frequency))
            elif stage and FOUND_DATASOURCE.match(description):
                found[stage] = description
    return modules, finished, found


def parse_events(reports: list[Report]) -> list[Event]:
    events = []
    for report in reports:
        body = report.body if report.kind == "event" and isinstance(report.body, dict) else {}
        name, kind = body.get("name"), body.get("event_type")
        if isinstance(name, str) and kind in ("start", "finish"):
            result = body.get("result")
            events.append(Event(report.t, name, kind, str(body.get("description") or ""), result if isinstance(result, str) else None,
                                to_float(body.get("timestamp"))))  # fmt: skip
    return events
