"""Sandesh's wire forms for the agent introspect, as pure functions (no I/O).

What the real agent's Sandesh library does, and this module reproduces:

* responses are serialised by TXMLProtocol: no whitespace, fields in declaration order, each
  ``<f type="T" identifier="ID"[ link="L"]>value</f>``, lists always carrying their inner ``<list type size>``,
  every response ending with ``<more type="bool" identifier="0">...</more>``;
* an HTTP answer is the ``universal_parse.xsl`` processing instruction glued to one response, or to
  ``<__FIRST_list type="slist">`` wrapping several (no XML declaration);
* request arguments come from the URL query by the generated ``RequestFromHttp`` rules (see `parse_query`);
* table requests are paged by the agent's AgentSandesh (100 rows a response and a page, `Pagination` last), with
  page keys ``begin:B,end:E,table:T,filters`` (see `encode_key`, `decode_key`, `paged`);
* the module pages (``agent.xml`` ...) and the index page are static text generated at build time.

Where we depart from the real agent, the function's docstring says so. The declarations (names, ids, types) are data,
in `vrouter.introspect.schema`; this module reads them when called, so the schema modules can import `Field` from here.
"""

from __future__ import annotations

import functools
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from ipaddress import ip_address
from typing import Any
from urllib.parse import unquote

from vrouter.introspect.declaration import Field

MODULE_NAME = "contrail-vrouter-agent"
STYLESHEET = '<?xml-stylesheet type="text/xsl" href="/universal_parse.xsl"?>'
ENTRIES_PER_PAGE = 100
"""The agent's ``kEntriesPerPage`` and ``entries_per_sandesh``: rows per page and per data response."""
ARGUMENT_LIMIT = 1024
"""Longest string argument we keep (our bound; Sandesh keeps any length)."""
NOT_FOUND = b"<html>\n<title>404 Not Found</title>\n</html>\r\n\x00"
"""The body of the agent's 404 answer: 45 visible bytes and the C string's NUL, sent as ``Content-Length: 46``."""

INTEGER_TYPES: dict[str, tuple[int, bool]] = {
    "byte": (8, True),
    "i16": (16, True),
    "i32": (32, True),
    "i64": (64, True),
    "u16": (16, False),
    "u32": (32, False),
    "u64": (64, False),
}
"""Sandesh's integer types: bits and signedness (values are C fixed-width integers, so we wrap them the same way)."""
BASE_TYPES = frozenset({"string", "bool", "double", "ipaddr", "uuid_t", *INTEGER_TYPES})

_NIL_UUID = "00000000-0000-0000-0000-000000000000"
_TYPE_DEFAULTS: dict[str, Any] = {
    "string": "",
    "bool": False,
    "double": 0.0,
    "ipaddr": "0.0.0.0",  # boost's default address
    "uuid_t": _NIL_UUID,
    **dict.fromkeys(INTEGER_TYPES, 0),
}
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_ULONG_MAX = (1 << 64) - 1
_SPACE = "[ \t\n\v\f\r]*"
_STRTOUL_10 = re.compile(_SPACE + "([+-]?)([0-9]*)")
_STRTOUL_0 = re.compile(_SPACE + "([+-]?)(?:0[xX]([0-9a-fA-F]+)|(0[0-7]*)|([1-9][0-9]*))?")
_STRTOD = re.compile(_SPACE + r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


class ArgumentError(Exception):
    """Reserved for callers that want to reject arguments; `parse_query` itself never raises it (Sandesh never does)."""


@dataclass(frozen=True)
class PageKey:
    """A decoded pagination key: the DB table, the row range (-1, -1 = all rows) and the filter arguments."""

    table: str
    begin: int
    end: int
    filters: dict[str, str]


# ---------------------------------------------------------------------------------------------------------------
# Serialisation


def response(name: str, values: Mapping[str, Any], more: bool = False) -> str:
    """One response sandesh as TXMLProtocol writes it, ``more`` appended as field 0.

    ``values`` maps field names to values: a Mapping for a struct field, a Sequence for a list field (of Mappings for
    struct elements), a plain value otherwise. Non-optional fields missing (or None) are written with their default,
    optional ones only when given. Integers wrap to the declared width like the C++ setters (a ``byte`` 132 is written
    -124, an ``i16`` 65535 is -1). Strings are escaped as Sandesh does (``& < > '`` only); departure: characters XML 1.0
    forbids (C0 controls but tab/newline/return, lone surrogates, U+FFFE/U+FFFF) become ``?``, so the document parses.
    Unknown keys raise KeyError naming the struct and the key; a name that is not a declared response raises KeyError.
    """
    from vrouter.introspect import schema

    if name not in schema.RESPONSES:
        raise KeyError(f"{name!r} is not a declared Sandesh response (see vrouter.introspect.schema)")
    out = [f'<{name} type="sandesh">']
    _write_fields(name, schema.STRUCTS[name], values, out)
    out.append(f'<more type="bool" identifier="0">{"true" if more else "false"}</more></{name}>')
    return "".join(out)


def document(responses: Sequence[str]) -> bytes:
    """The HTTP body of an answer: the stylesheet PI glued to the one response, or to the slist of several.

    Sandesh names the slist after the first response's element (``__ItfResp_list``) whatever the later ones are.
    No XML declaration (lxml refuses one with an encoding on a str). Encoded as UTF-8.
    """
    if not responses:
        raise ValueError("a Sandesh answer has at least one response")
    if len(responses) == 1:
        return (STYLESHEET + responses[0]).encode("utf-8")
    first = responses[0]
    wrapper = f"__{first[1 : first.index(' ')]}_list"
    return f'{STYLESHEET}<{wrapper} type="slist">{"".join(responses)}</{wrapper}>'.encode()


def error(message: str = "   Invalid Input !!!   ", name: str = "ErrorResp") -> bytes:
    """An error answer: the one-field error response ``name`` (``ErrorResp`` of agent.sandesh, ``ErrResp`` of kstate,
    or ``FlowErrorResp`` of pkt: all three have the single string field ``resp``) carrying ``message``."""
    return document([response(name, {"resp": message})])


def flow_error(message: str = "No Flow Record for specified key ") -> bytes:
    """pkt.sandesh's ``FlowErrorResp`` (FetchFlowRecord with no matching flow), with its declared default message."""
    return error(message, "FlowErrorResp")


def _write_fields(struct: str, fields: tuple[Field, ...], values: Mapping[str, Any], out: list[str]) -> None:
    known = _field_names(struct)
    for key in values:
        if key not in known:
            raise KeyError(f"{struct} has no field {key!r} (fields: {', '.join(f.name for f in fields)})")
    for field in fields:
        value = values.get(field.name)
        if value is None:
            if field.optional:
                continue
            value = _default(field)
        _write_field(struct, field, value, out)


def _write_field(struct: str, field: Field, value: Any, out: list[str]) -> None:
    link = f' link="{field.link}"' if field.link else ""
    out.append(f'<{field.name} type="{field.type}" identifier="{field.id}"{link}>')
    if field.type == "struct":
        _write_struct(field.of, _mapping(struct, field, value), out)
    elif field.type == "list":
        if isinstance(value, str | bytes | Mapping) or not isinstance(value, Sequence):
            raise TypeError(f"{struct}.{field.name} is a list: give a sequence, not {type(value).__name__}")
        if field.of in BASE_TYPES:
            out.append(f'<list type="{field.of}" size="{len(value)}">')
            out.extend(f"<element>{_text(field.of, item)}</element>" for item in value)
        else:
            out.append(f'<list type="struct" size="{len(value)}">')
            for item in value:
                _write_struct(field.of, _mapping(struct, field, item), out)
        out.append("</list>")
    else:
        out.append(_text(field.type, value))
    out.append(f"</{field.name}>")


def _write_struct(name: str, values: Mapping[str, Any], out: list[str]) -> None:
    from vrouter.introspect import schema

    out.append(f"<{name}>")
    _write_fields(name, schema.STRUCTS[name], values, out)
    out.append(f"</{name}>")


def _mapping(struct: str, field: Field, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise TypeError(f"{struct}.{field.name} holds {field.of} structs: give a mapping, not {type(value).__name__}")
    return value


@functools.cache
def _field_names(struct: str) -> frozenset[str]:
    from vrouter.introspect import schema

    return frozenset(field.name for field in schema.STRUCTS[struct])


def _default(field: Field) -> Any:
    if field.default is not None:
        return field.default
    if field.type == "struct":
        return {}
    if field.type == "list":
        return ()
    return _TYPE_DEFAULTS[field.type]


def _text(type_: str, value: Any) -> str:
    if type_ == "bool":
        return "true" if value else "false"
    if type_ in INTEGER_TYPES:
        return str(_wrap(int(value), type_))
    if type_ == "double":
        return "%g" % float(value)  # std::stringstream's default: 6 significant digits
    return escape(str(value))


def escape(text: str) -> str:
    """Text as TXMLProtocol writes it (``&`` ``'`` ``<`` ``>`` escaped), with characters XML forbids replaced by ``?``."""
    text = _NOT_XML.sub("?", text)
    if any(c in text for c in "&'<>"):
        text = text.replace("&", "&amp;").replace("'", "&apos;").replace("<", "&lt;").replace(">", "&gt;")
    return text


def _wrap(value: int, type_: str) -> int:
    bits, signed = INTEGER_TYPES[type_]
    value &= (1 << bits) - 1
    if signed and value >= 1 << (bits - 1):
        value -= 1 << bits
    return value


# ---------------------------------------------------------------------------------------------------------------
# Request arguments


def parse_query(request: str, query: str) -> dict[str, Any]:
    """The request's field values from the URL query (the text after ``?``, still %-encoded). Never raises on any query.

    Sandesh's generated ``RequestFromHttp``: the query is split on ``&`` (empty tokens dropped), each token on ``=``
    (empty pieces dropped: the key is the first piece, the value the second, ``a=b=c`` gives ``b``, ``key=`` gives no
    value); at most as many tokens as the request has fields are read. A key equal to a field name sets that field;
    ``x`` or any other key sets the first field (TF 2020+), except when no key of the query names a field: then tokens
    fill the fields by position (the older generator). The two agree for what clients send (``x=V``; every field in
    order). Departure: TF 2020+ matches a field whose name is a *prefix* of the key; we need the exact name.

    String values are %-decoded (``+`` stays ``+``) and end at a decoded NUL, like curl_easy_unescape into a C string;
    departure: cut to `ARGUMENT_LIMIT` characters. Integers and bools are parsed from the raw text like ``strtoul``:
    leading digits, garbage gives 0, ``-N`` wraps (so -1 for signed fields, the type's maximum for unsigned ones); bool
    is an integer (``1`` true, ``true`` false, as on the real agent). Fields not given keep their declared default.
    The key ``format`` is not a Sandesh field (our HTTP layer's): it is ignored. Unknown request name: KeyError.
    """
    from vrouter.introspect import schema

    fields = schema.REQUESTS[request]
    values: dict[str, Any] = {field.name: _default(field) for field in fields}
    by_name = {field.name: field for field in fields}
    tokens: list[tuple[str, str | None]] = []
    for token in query.split("&"):
        if not token:
            continue
        pieces = [piece for piece in token.split("=") if piece]
        key = pieces[0] if pieces else ""
        if key == "format" and "format" not in by_name:
            continue
        tokens.append((key, pieces[1] if len(pieces) > 1 else None))
    by_position = not any(key in by_name for key, _ in tokens)
    for position, (key, raw) in enumerate(tokens[: len(fields)]):
        field = fields[position] if by_position else by_name.get(key, fields[0])
        if raw is None or field.type not in BASE_TYPES:
            continue
        values[field.name] = _argument(field.type, raw)
    return values


def _argument(type_: str, raw: str) -> Any:
    if type_ == "string":
        return unquote(raw, errors="replace").split("\x00", 1)[0][:ARGUMENT_LIMIT]
    if type_ == "bool":
        return strtoul(raw) != 0
    if type_ in INTEGER_TYPES:
        return _wrap(strtoul(raw), type_)
    if type_ == "double":
        match = _STRTOD.match(raw)
        return float(match.group()) if match else 0.0
    if type_ == "uuid_t":
        try:
            return str(uuid.UUID(raw))
        except ValueError:
            return _NIL_UUID
    try:  # ipaddr: boost's from_string, errors ignored (the default address)
        return str(ip_address(raw))
    except ValueError:
        return "0.0.0.0"


def strtoul(text: str, base: int = 10) -> int:
    """C's ``strtoul`` as the agent calls it: the value of the leading number (0 when none), ``-N`` wrapped modulo
    2**64, ULONG_MAX on overflow. ``base`` is 10, or 0 for C's automatic base (``0x`` hex, leading ``0`` octal)."""
    if base == 10:
        match = _STRTOUL_10.match(text)
        assert match is not None  # every part of the pattern may be empty
        sign, digits, radix = match.group(1), match.group(2), 10
    else:
        match = _STRTOUL_0.match(text)
        assert match is not None
        sign = match.group(1)
        hex_digits, octal_digits, decimal_digits = match.group(2, 3, 4)
        digits, radix = (hex_digits, 16) if hex_digits else (octal_digits, 8) if octal_digits else (decimal_digits or "", 10)
    digits = digits.lstrip("0")
    if not digits:
        return 0
    if len(digits) > 24:  # beyond any 64-bit value in base 8 or more; spares int() Python's digit limit
        return _ULONG_MAX
    value = int(digits, radix)
    if value > _ULONG_MAX:
        return _ULONG_MAX
    return (-value) & _ULONG_MAX if sign == "-" else value


# ---------------------------------------------------------------------------------------------------------------
# Pagination


def encode_key(table: str, begin: int, end: int, filters: Mapping[str, str] = {}) -> str:
    """A page key as the agent's EncodeOne writes it: ``begin:B,end:E,table:T,`` then the filters sorted by name as
    ``k:v`` joined by ``,`` (empty values skipped, so a key without filters ends with a comma)."""
    base = {"begin": str(begin), "end": str(end), "table": table}
    rest = {k: v for k, v in filters.items() if k not in base}
    return _encode_arguments(base) + "," + _encode_arguments(rest)


def _encode_arguments(arguments: Mapping[str, str]) -> str:
    return ",".join(f"{key}:{value}" for key, value in sorted(arguments.items()) if value)


def decode_key(text: str) -> PageKey | None:
    """A page key back, as the agent's AgentSandeshArguments::Decode reads it; None when it lacks table/begin/end
    (the agent answers ErrorResp ``Invalid request``). Never raises.

    The text is split on ``,`` and each item at its first ``:`` (table names contain colons); reading stops at an item
    with nothing after a ``:`` (so a doubled trailing comma is harmless), empty values are skipped, a repeated key keeps
    the last value. begin/end are read with ``strtoul(s, 0)`` (hex, octal) into a C int, so ``-1`` stays -1.
    """
    items = text.split(",")
    if items[-1] == "":
        items.pop()
    arguments: dict[str, str] = {}
    for item in items:
        pieces = item.split(":")
        if pieces[-1] == "":
            pieces.pop()
        if len(pieces) < 2:
            break
        value = item[len(pieces[0]) + 1 :]
        if value:
            arguments[pieces[0]] = value
    if not {"table", "begin", "end"} <= arguments.keys():
        return None
    begin = _wrap(strtoul(arguments.pop("begin"), 0), "i32")
    end = _wrap(strtoul(arguments.pop("end"), 0), "i32")
    return PageKey(arguments.pop("table"), begin, end, arguments)


def paged(
    resp: str,
    list_field: str,
    table: str,
    rows: Sequence[Mapping[str, Any]],
    table_size: int,
    begin: int = 0,
    end: int = 99,
    filters: Mapping[str, str] = {},
) -> list[str]:
    """A table request's responses as the agent's AgentSandesh sends them; give the list to `document`.

    ``rows`` are the rows that passed the request's filter, in table order; ``table_size`` is the whole table's size.
    The range is clamped as ComputeFirst/ComputeLast do (begin outside 0..table_size -> 0; end < 0 -> all rows;
    end past the table or before begin -> begin+99). Every 100 rows a ``resp`` response goes out with more=true (rows in
    ``list_field``), then the last data response with more=true even when empty (a page of exactly 100 gives an extra
    empty one), then ``Pagination`` (more=false) with PageReqData as MakeSandeshPageReq fills it: prev_page/next_page
    (empty when there is none), first_page, all, table_size and entries (``F-L/N``, or `` 0 / N`` when none is shown).
    """
    page_size = ENTRIES_PER_PAGE if begin < 0 or end < 0 or end <= begin else end - begin + 1
    first = 0 if begin < 0 or begin > table_size else begin
    if end < 0:
        last = -1
    elif end >= table_size or end < first:
        last = first + ENTRIES_PER_PAGE - 1
    else:
        last = end
    shown = list(rows[first:]) if last < 0 else list(rows[first : last + 1])
    full = len(shown) // ENTRIES_PER_PAGE * ENTRIES_PER_PAGE
    out = [response(resp, {list_field: shown[i : i + ENTRIES_PER_PAGE]}, more=True) for i in range(0, full, ENTRIES_PER_PAGE)]
    out.append(response(resp, {list_field: shown[full:]}, more=True))

    matched, count = len(rows), len(shown)
    last_shown = first + count - 1
    entries = f" 0 / {matched}" if count == 0 else f"{first}-{last_shown}/{matched}"
    next_first = last_shown + 1
    next_last = next_first + page_size - 1
    if next_last > matched:  # sic: ">" as upstream, so next_last may stay at `matched`
        next_last = matched - 1
    if next_last >= table_size:
        next_last = table_size - 1
    next_page = encode_key(table, next_first, next_last, filters) if next_first < matched else ""
    prev_page = ""
    if first > 0:
        step = max(page_size, ENTRIES_PER_PAGE)
        prev_first = max(first - step, 0)
        prev_page = encode_key(table, prev_first, min(prev_first + step, first - 1), filters)
    first_last = ENTRIES_PER_PAGE - 1 if table_size >= ENTRIES_PER_PAGE else page_size - 1
    page = {
        "prev_page": prev_page,
        "next_page": next_page,
        "first_page": encode_key(table, 0, first_last, filters),
        "all": encode_key(table, -1, -1, filters),
        "table_size": table_size,
        "entries": entries,
    }
    out.append(response("Pagination", {"req": page}))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Static pages


def module_page(module: str) -> bytes:
    """A module page (``agent.xml`` ...) as Sandesh's HTML generator writes it at build time.

    The stylesheet PI and ``<program type="rlist">`` on their own lines, then per request ``<Req type="sandesh">``, a
    newline, its fields run together, ``</Req>`` and a newline. A base field is ``<f type="T">0</f>`` (the text is the
    literal 0 whatever the type, no identifier), a struct field nests the struct's fields, list fields are left out.
    Departure: the real pages list every request of the .sandesh file; ours list only the read-only ones we answer
    (contrail-scrape calls every listed request without arguments). Unknown module: KeyError.
    """
    from vrouter.introspect import schema

    program = module.removesuffix(".xml")
    lines = [STYLESHEET, f'<{program} type="rlist">']
    for request in schema.MODULES[module]:
        lines.append(f'<{request} type="sandesh">')
        lines.append("".join(_form_field(field) for field in schema.REQUESTS[request]) + f"</{request}>")
    lines.append(f"</{program}>")
    return ("\n".join(lines) + "\n").encode()


def _form_field(field: Field) -> str:
    from vrouter.introspect import schema

    if field.type == "list":
        return ""
    if field.type == "struct":
        inner = "".join(_form_field(member) for member in schema.STRUCTS[field.of])
        return f'<{field.name} type="struct"><{field.of}>{inner}</{field.of}></{field.name}>'
    return f'<{field.name} type="{field.type}">0</{field.name}>'


def index_page(module_name: str = MODULE_NAME) -> bytes:
    """The index (``/`` and ``/index.html``) as SandeshHttp::Init builds it: well-formed XHTML linking every module
    page by its bare file name, in bytewise order (the std::map's)."""
    from vrouter.introspect import schema

    name = escape(module_name)
    head = (
        '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN" "http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">\n'
        '<html xmlns="http://www.w3.org/1999/xhtml">\n'
        f'<head><link href="css/style.css" rel="stylesheet" type="text/css"/><title>{name}</title></head><body>\n'
        f"<h1>Modules for {name}</h1>\n"
    )
    links = "".join(f'<a href="{page}">{page}</a><br/>\n' for page in sorted(schema.MODULES))
    return (head + links + "</body></html>\n").encode()
