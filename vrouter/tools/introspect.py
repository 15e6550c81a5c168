"""A Sandesh introspect page as text: what ``vrouter introspect`` prints.

Works on any vRouter agent's pages (this one's, or a real one's fetched with
``--url``): the index lists the module pages, a module page its requests with
their arguments, and an answer its fields, one ``name: value`` a line, nested
structs and lists indented.  ``columns`` makes a table instead, of every
element (at any depth) that has those fields, as contrail-introspect-cli's
``ist`` prints ``//ItfSandeshData``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any


class NotSandesh(Exception):
    """The page is not a Sandesh document; the message says what it is."""


def parse(doc: bytes) -> ET.Element:
    try:
        return ET.fromstring(doc)
    except ET.ParseError as e:
        raise NotSandesh("not an XML page (%s): %r" % (e, doc[:80])) from None


def next_page_key(root: ET.Element) -> str:
    """The ``all`` key of a paged answer that has more pages ("" when it has not), as ``ist``
    follows it: the caller fetches ``Snh_PageReq?x=<key>`` to have every row."""
    for data in root.iter("PageReqData"):
        if (data.findtext("next_page") or "").strip():
            return (data.findtext("all") or "").strip()
    return ""


def to_text(root: ET.Element, columns: list[str] | None = None) -> str:
    if root.tag in ("html", "{http://www.w3.org/1999/xhtml}html"):
        links = [a.get("href", "") for a in root.iter() if a.tag.endswith("}a") or a.tag == "a"]
        return "Modules:\n" + "".join("  /%s\n" % h for h in links)
    kind = root.get("type")
    if kind == "rlist":
        out = ["%s requests (GET /Snh_<request>?<argument>=<value>&...):" % root.tag]
        for req in root:
            out.append("  %s(%s)" % (req.tag, ", ".join("%s: %s" % (f.tag, f.get("type", "")) for f in req)))
        return "\n".join(out) + "\n"
    if columns:
        return _table(root, columns)
    lines: list[str] = []
    responses = list(root) if kind == "slist" else [root]
    for resp in responses:
        lines.append(resp.tag)
        for field in resp:
            if field.tag != "more":
                _field(field, 1, lines)
    return "\n".join(lines) + "\n"


def _field(field: ET.Element, depth: int, lines: list[str]) -> None:
    pad = "  " * depth
    kind = field.get("type")
    if kind == "list":
        items = list(field[0]) if len(field) else []
        lines.append("%s%s: (%d)" % (pad, field.tag, len(items)))
        for item in items:
            if item.tag == "element":
                lines.append("%s  - %s" % (pad, item.text or ""))
            else:
                lines.append("%s  %s" % (pad, item.tag))
                for f in item:
                    _field(f, depth + 2, lines)
    elif kind == "struct":
        lines.append("%s%s:" % (pad, field.tag))
        for struct in field:
            for f in struct:
                _field(f, depth + 1, lines)
    else:
        lines.append("%s%s: %s" % (pad, field.tag, field.text or ""))


_INTEGERS = {"byte", "i16", "i32", "i64", "u16", "u32", "u64"}


def to_data(root: ET.Element) -> Any:
    """A Sandesh answer as JSON-able data: ``{Response: {field: value}}`` for one response, a list
    of them for several (``slist``); lists as lists, structs as objects, integers and booleans
    typed; a module page as ``{request: [field, ...]}``."""
    kind = root.get("type")
    if kind == "rlist":
        return {req.tag: [f.tag for f in req] for req in root}
    if kind == "slist":
        return [{resp.tag: _fields(resp)} for resp in root]
    return {root.tag: _fields(root)}


def _fields(el: ET.Element) -> dict[str, Any]:
    return {f.tag: _value(f) for f in el if f.tag != "more"}


def _value(f: ET.Element) -> Any:
    kind = f.get("type")
    if kind == "list":
        items = list(f[0]) if len(f) else []
        return [_fields(i) if i.tag != "element" else i.text or "" for i in items]
    if kind == "struct":
        return _fields(f[0]) if len(f) else {}
    text = f.text or ""
    if kind == "bool":
        return text == "true"
    if kind in _INTEGERS:
        try:
            return int(text)
        except ValueError:
            return text
    return text


def _table(root: ET.Element, columns: list[str]) -> str:
    rows = []
    for el in root.iter():
        if el.get("type") is None and all(el.find(c) is not None for c in columns):
            rows.append([_cell(el.find(c)) for c in columns])
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
    fmt = "  ".join("%%-%ds" % w for w in widths)
    out = [fmt % tuple(columns)] + [fmt % tuple(r) for r in rows]
    return "\n".join(line.rstrip() for line in out) + "\n"


def _cell(el: ET.Element | None) -> str:
    if el is None:
        return "-"
    if len(el):
        return ",".join(e.text or "" for e in el.iter("element")) or "(%d)" % len(list(el.iter())[2:])
    return el.text or "n/a"
