"""The etcd wire: keys, values and watch events of the configuration store, as pure functions.

``infra.etcd`` talks to etcd's JSON gateway; what it sends and reads is made and
checked here, without I/O, so that each rule is a unit test: keys are relative
to a prefix that ends with ``/``, values are JSON with sorted keys, a watch
stream is one JSON message a line.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("vrouter.cluster")

DEFAULT_PREFIX = "/vrouter/"
WATCH_PROBE = 1.0  # seconds of silence on a watch before the store asks whether etcd still answers
MAX_RETRY = 2.0  # the Follower's longest wait between two attempts


class StoreError(Exception):
    """etcd unreachable or refused; the message names the endpoint(s) and what to do."""


class StoreRefused(StoreError):
    """etcd answered, and refused the request (asking again would not help)."""


@dataclass(frozen=True)
class Event:
    """One change under the prefix: ``kind`` "put" or "delete", ``key`` relative to the prefix,
    ``value`` the decoded JSON (None for a delete), ``revision`` the store revision of the change."""

    kind: str
    key: str
    value: Any
    revision: int


OnSync = Callable[[dict[str, Any], int], None]
OnEvents = Callable[[list[Event]], None]
OnState = Callable[[bool], None]
Cancel = Callable[[], None]


# -- pure helpers ---------------------------------------------------------------------------------


def normalize_prefix(prefix: str) -> str:
    """The prefix, ending with ``/``."""
    if not prefix:
        raise ValueError("the etcd key prefix is empty: use one such as %s" % DEFAULT_PREFIX)
    return prefix if prefix.endswith("/") else prefix + "/"


def check_key(key: str, what: str = "key", empty: bool = False) -> str:
    """``key`` itself if it is a relative key (no leading ``/``; not empty unless ``empty``)."""
    if not isinstance(key, str):
        raise TypeError("etcd %s %r: keys are strings" % (what, key))
    if key.startswith("/"):
        raise ValueError("etcd %s %r: keys are relative to the prefix, without a leading /" % (what, key))
    if not key and not empty:
        raise ValueError("etcd %s is empty" % what)
    return key


def range_end(start: bytes) -> bytes:
    """The end of the range of every key that starts with ``start`` (etcd's prefix range:
    its last byte below 0xff plus one; ``\\0``, meaning no end, when there is none)."""
    stripped = start.rstrip(b"\xff")
    if not stripped:
        return b"\0"
    return stripped[:-1] + bytes([stripped[-1] + 1])


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def encode_value(value: Any) -> bytes:
    """``value`` as the JSON stored in etcd (sorted keys, compact); TypeError if it is not JSON."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def decode_value(raw: bytes) -> tuple[bool, Any]:
    """(True, the decoded JSON) or (False, None) when ``raw`` is not JSON (or nested deeper than the
    decoder goes: one such key put by anyone would otherwise stop the follower's thread)."""
    try:
        return True, json.loads(raw)
    except (ValueError, RecursionError):  # json.JSONDecodeError and UnicodeDecodeError; too deep
        return False, None


def relative_key(full: bytes, prefix: bytes) -> str | None:
    """The key relative to ``prefix`` (None when it is not under it)."""
    if not full.startswith(prefix):
        return None
    return full[len(prefix) :].decode("utf-8", errors="replace")


def lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The non-empty lines of a stream that arrives in chunks of any size (the JSON gateway's
    watch stream: one JSON message a line)."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for line in complete:
            if line.strip():
                yield line
    if pending.strip():
        yield pending


def watch_events(message: dict[str, Any], prefix: bytes) -> list[Event]:
    """The events of one message of the JSON gateway's watch stream (none for the watch's
    ``created`` message); StoreError when the message says the watch is over."""
    if "error" in message:
        error = message["error"]
        raise StoreError("the watch ended: %s" % (error.get("message", error) if isinstance(error, dict) else error))
    result = message.get("result", {})
    if result.get("canceled"):
        if result.get("compact_revision"):
            raise StoreError("etcd has compacted the history the watch started in (it keeps revisions from %s on): load everything again"
                             % result["compact_revision"])  # fmt: skip
        raise StoreError("etcd cancelled the watch: %s" % (result.get("cancel_reason") or "no reason given"))
    events = []
    for raw in result.get("events", []):
        kv = raw.get("kv", {})
        key = relative_key(unb64(kv.get("key", "")), prefix)
        if key is None:
            continue
        revision = int(kv.get("mod_revision", 0))
        if raw.get("type") == "DELETE":  # a put's type (PUT, 0) is left out of the JSON
            events.append(Event("delete", key, None, revision))
            continue
        ok, value = decode_value(unb64(kv.get("value", "")))
        if not ok:
            log.warning("etcd key %s%s is not JSON: its change at revision %d is skipped", prefix.decode(errors="replace"), key, revision)
            continue
        events.append(Event("put", key, value, revision))
    return events


_CLIENT_URL = re.compile(r"https?://[^/:\s]+(?::(\d{1,5}))?/?")


def is_client_url(text: str) -> bool:
    """Whether ``text`` is an etcd client URL as agent.conf and netns_setup.sh take one:
    http(s), a host, an optional port from 1 to 65535, no path."""
    m = _CLIENT_URL.fullmatch(text)
    return m is not None and (m.group(1) is None or 1 <= int(m.group(1)) <= 65535)
