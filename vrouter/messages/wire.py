"""The control socket's wire: one JSON object a line, checked field by field into dataclasses.

    request  {"op": "port.add", "args": {...the request's fields...}}
    answer   {"ok": true, "result": ...the answer...}
             {"ok": false, "error": "a message a user can act on"}

Fields that are None are left out of the JSON, and absent fields take their
defaults.  The operations are ``vrouter.messages.control.OPS``.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, TypeVar, Union

T = TypeVar("T")
MAX_MESSAGE = 1 << 24  # bytes of one line (a journal page is the largest)


class MessageError(ValueError):
    """A line that is not a message of this protocol; the text says what is wrong."""


def to_json(obj: Any) -> Any:
    """A message (or a list or dict of them) as plain JSON data; None fields are left out."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_json(v) for f in dataclasses.fields(obj) if (v := getattr(obj, f.name)) is not None}
    if isinstance(obj, list | tuple):
        return [to_json(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_json(v) for k, v in obj.items()}
    return obj


_HINTS: dict[type, dict[str, Any]] = {}


def from_json(tp: Any, data: Any, where: str = "") -> Any:
    """``data`` (parsed JSON) as a value of type ``tp``, checked field by field; MessageError
    names the first field that does not fit."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return data
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if data is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return from_json(inner, data, where)
    if origin is list:
        if not isinstance(data, list):
            raise MessageError("%s: expected a list, got %s" % (where or "message", _kind(data)))
        (item,) = typing.get_args(tp)
        return [from_json(item, v, "%s[%d]" % (where, i)) for i, v in enumerate(data)]
    if origin is dict:
        if not isinstance(data, dict):
            raise MessageError("%s: expected an object, got %s" % (where or "message", _kind(data)))
        kt, vt = typing.get_args(tp)
        out = {}
        for k, v in data.items():
            try:
                key = kt(k)
            except ValueError:
                raise MessageError("%s: key %r is not %s" % (where or "message", k, kt.__name__)) from None
            out[key] = from_json(vt, v, "%s.%s" % (where, k) if where else str(k))
        return out
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _dataclass(tp, data, where)
    if tp is float and isinstance(data, int | float) and not isinstance(data, bool):
        return float(data)
    if tp in (str, int, bool) and type(data) is tp:
        return data
    raise MessageError("%s: expected %s, got %s" % (where or "message", getattr(tp, "__name__", tp), _kind(data)))


def _dataclass(cls: type[T], data: Any, where: str) -> T:
    if not isinstance(data, dict):
        raise MessageError("%s: expected an object, got %s" % (where or cls.__name__, _kind(data)))
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - names
    if unknown:
        raise MessageError("%s: unknown field %s" % (where or cls.__name__, ", ".join(sorted(unknown))))
    kwargs = {k: from_json(hints[k], v, "%s.%s" % (where, k) if where else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise MessageError("%s: %s" % (where or cls.__name__, str(e).split(") ", 1)[-1])) from None


def _kind(data: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(type(data), type(data).__name__)


def encode_request(op: str, request: Any) -> bytes:
    return json.dumps({"op": op, "args": to_json(request)}).encode() + b"\n"


def decode_request(line: bytes, ops: dict[str, tuple[type, Any]]) -> tuple[str, Any]:
    """(op, request) from a request line for one of ``ops``; MessageError if it is not one."""
    try:
        msg = json.loads(line)
    except ValueError as e:
        raise MessageError("not JSON: %s" % e) from None
    except RecursionError:  # valid JSON, nested deeper than Python's decoder goes
        raise MessageError("not JSON that can be read: nested too deeply") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("op"), str):
        raise MessageError('expected {"op": ..., "args": {...}}')
    op = msg["op"]
    if op not in ops:
        raise MessageError("unknown operation %r" % op)
    return op, from_json(ops[op][0], msg.get("args") or {}, "")


def encode_answer(result: Any = None, error: str | None = None) -> bytes:
    if error is not None:
        return json.dumps({"ok": False, "error": error}).encode() + b"\n"
    return json.dumps({"ok": True, "result": to_json(result)}).encode() + b"\n"


class Refused(Exception):
    """The other end refused a request; the message is its own."""


def decode_answer(answer: Any, line: bytes) -> Any:
    """The result (of type ``answer``) from an answer line; Refused with the other end's message, or
    MessageError if the line is not an answer."""
    try:
        msg = json.loads(line)
    except (ValueError, RecursionError):
        raise MessageError("the answer is not JSON: %r" % line[:200]) from None
    if not isinstance(msg, dict) or "ok" not in msg:
        raise MessageError("not an answer: %r" % line[:200])
    if not msg["ok"]:
        raise Refused(str(msg.get("error", "request failed")))
    return from_json(answer, msg.get("result"), "")
