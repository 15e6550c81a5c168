"""``vrouter flow -l``: the live flow table, printed like the vRouter's ``flow -l``.

Maps the agent's shared-memory table read-only; never talks to the agent and
never slows the dataplane.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from typing import TextIO

from flows.entry import FlowEntry
from flows.layout import ACTION_LETTER, DROP_NAMES, DROP_SHORT, Action, DropReason, Flag, nat_letters
from flows.table import FlowTable, TableFormatError
from infra.procinfo import alive

LEGEND = """\
Action:F=Forward, D=Drop N=NAT(S=SNAT, D=DNAT, Ps=SPAT, Pd=DPAT, L=Link Local Port)
 Other:K(nh)=Key_Nexthop, S(nh)=RPF_Nexthop
 Flags:E=Evicted, Ec=Evict Candidate, N=New Flow, Rv=Reverse flow valid
TCP(r=reverse):S=SYN, F=FIN, R=RST, A=ACK"""

HEADER = "    Index                Source:Port/Destination:Port                      Proto(V)"


class NoTable(Exception):
    """No agent's flow table at the path; the message says so."""


def open_table(path: str) -> FlowTable:
    if not os.access(os.path.dirname(path) or ".", os.X_OK):
        raise NoTable("cannot read the flow table at %s: permission denied (the agent's state directory is root's alone: run this as root)" % path)
    if not os.path.exists(path):
        raise NoTable("no vrouter agent is running (no flow table at %s)" % path)
    try:
        table = FlowTable.open_readonly(path)
    except (OSError, TableFormatError) as e:
        raise NoTable("cannot read the flow table at %s: %s" % (path, e)) from None
    owner = table.owner()
    if owner and not alive(owner):
        table.close()
        raise NoTable("no vrouter agent is running (the flow table at %s belongs to pid %d, which is gone)" % (path, owner))
    return table


def _addr(raw: bytes) -> str:
    return str(ipaddress.ip_address(raw))


def action_text(e: FlowEntry) -> str:
    letter = ACTION_LETTER.get(Action(e.action), "?")
    if e.action == Action.NAT:
        return "N(%s)" % nat_letters(e.flags)
    if e.action == Action.DROP:
        return "D(%s)" % DROP_SHORT.get(DropReason(e.drop_reason), "")
    return letter


def flags_text(flags: int) -> str:
    out = []
    if flags & Flag.EVICT_CANDIDATE:
        out.append("Ec")
    if flags & Flag.NEW_FLOW:
        out.append("N")
    if flags & Flag.RFLOW_VALID:
        out.append("Rv")
    return "".join(out)


def tcp_text(bits: int) -> str:
    return "".join(ch for bit, ch in ((0x02, "S"), (0x01, "F"), (0x04, "R"), (0x10, "A")) if bits & bit)


def entry_dict(e: FlowEntry) -> dict:
    return {
        "index": e.index,
        "rindex": e.rindex if e.flags & Flag.RFLOW_VALID else None,
        "gen": e.gen,
        "nh": e.nh,
        "src": _addr(e.src),
        "sport": e.sport,
        "dst": _addr(e.dst),
        "dport": e.dport,
        "proto": e.proto,
        "vrf": e.vrf,
        "dvrf": e.dvrf,
        "action": Action(e.action).name,
        "action_text": action_text(e),
        "flags": [f.name for f in Flag if e.flags & f] + (["REVERSE"] if e.reverse else []),
        "drop_reason": DROP_NAMES.get(DropReason(e.drop_reason)) if e.action == Action.DROP else None,
        "tcp_flags": tcp_text(e.tcp_flags),
        "packets": e.packets,
        "bytes": e.bytes,
        "nat_sport": e.nat_sport,
        "src_nh": e.src_nh,
        "vif": e.vif,
    }


def format_entry(e: FlowEntry, tunnels: Mapping[int, str] | None = None) -> str:
    """One flow as ``flow -l`` prints it; ``tunnels`` (tunnel next hop id -> the other node's
    vhost0, from the agent) fills Sinfo of flows that came by a tunnel, as the vRouter shows
    their source node there."""
    rindex = "%d" % e.rindex if e.flags & Flag.RFLOW_VALID else ""
    idx = "%9d<=>%-9s" % (e.index, rindex)
    src = "%s:%d" % (_addr(e.src), e.sport)
    dst = "%s:%d" % (_addr(e.dst), e.dport)
    tcp = tcp_text(e.tcp_flags)
    return (
        "%s  %-50s %3d (%d->%d)\n" % (idx, src, e.proto, e.vrf, e.dvrf)
        + "%-22s %s\n" % ("", dst)
        + "(Gen: %d, K(nh):%d, Action:%s, Flags:%s, TCP:%s, QOS:-1, S(nh):%d,  Stats:%d/%d,\n"
        % (e.gen, e.nh, action_text(e), flags_text(e.flags), tcp, e.src_nh, e.packets, e.bytes)
        + " SPort %d, TTL 0, Sinfo %s)\n" % (e.nat_sport, (tunnels or {}).get(e.src_nh, "0.0.0.0"))
    )


def format_table(table: FlowTable, entries: list[FlowEntry], tunnels: Mapping[int, str] | None = None) -> str:
    size = table.capacity * 128
    lines = [
        "Flow table(size %d, entries %d)" % (size, table.capacity),
        "",
        "Entries: Active %d, Overflow area %d of %d" % (len(entries), sum(1 for e in entries if e.index >= table.entries), table.overflow),
        "",
        LEGEND,
        "",
        HEADER,
        "-" * 83,
    ]
    body = "\n".join(format_entry(e, tunnels) for e in sorted(entries, key=lambda e: e.index))
    return "\n".join(lines) + "\n" + body


class MatchError(ValueError):
    """A --match expression that cannot be read."""


def parse_match(expr: str) -> list[tuple[bytes, int | None]]:
    """``IP[:PORT]`` terms joined by ``&``; IPv6 as ``[addr]:port``. Each term must match the
    source or the destination of an entry."""
    terms = []
    for raw in expr.split("&"):
        term = raw.strip()
        if not term:
            raise MatchError("--match %r: empty term" % expr)
        port: int | None = None
        if term.startswith("["):
            host, _, rest = term[1:].partition("]")
            if rest:
                if not rest.startswith(":"):
                    raise MatchError("--match %r: expected [IPv6]:PORT" % term)
                port = _port(rest[1:], term)
        elif term.count(":") == 1:
            host, p = term.split(":")
            port = _port(p, term)
        else:
            host = term
        try:
            addr = ipaddress.ip_address(host).packed
        except ValueError:
            raise MatchError("--match %r: %r is not an IP address" % (term, host)) from None
        terms.append((addr, port))
    return terms


def _port(text: str, term: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise MatchError("--match %r: %r is not a port" % (term, text))
    return int(text)


def matches(e: FlowEntry, terms: list[tuple[bytes, int | None]]) -> bool:
    for addr, port in terms:
        src = e.src == addr and (port is None or e.sport == port)
        dst = e.dst == addr and (port is None or e.dport == port)
        if not (src or dst):
            return False
    return True


def follow(path: str, interval: float, duration: float | None, as_json: bool, terms: list[tuple[bytes, int | None]] | None, out: TextIO) -> int:
    """``flow -r``: print each new flow (a new index, or a reused slot's new generation) as it
    appears, until ``duration`` seconds pass, the agent goes, or Ctrl-C."""
    import json
    import sys
    import time

    table = open_table(path)
    seen: dict[int, int] = {i: table.generation(i) for i in table.active_indices()}
    deadline = None if duration is None else time.monotonic() + duration
    sys.stderr.write("following new flows in %s (%d active now)\n" % (path, len(seen)))
    sys.stderr.flush()
    if not as_json:
        out.write(LEGEND + "\n\n" + HEADER + "\n" + "-" * 83 + "\n")
        out.flush()
    try:
        while deadline is None or time.monotonic() < deadline:
            if not os.path.exists(path) or (table.owner() and not alive(table.owner())):
                out.write("" if as_json else "(the agent stopped)\n")
                return 1
            current = {}
            for i in table.active_indices():
                gen = table.generation(i)
                current[i] = gen
                if seen.get(i) != gen:
                    e = table.read(i)
                    if terms and not matches(e, terms):
                        continue
                    out.write(json.dumps(entry_dict(e)) + "\n" if as_json else format_entry(e) + "\n")
            seen = current
            out.flush()
            time.sleep(interval)
    except KeyboardInterrupt:
        pass
    finally:
        table.close()
    return 0
