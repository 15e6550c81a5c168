"""What a command answers: its result as text or, with ``--json``, as JSON; or, for a mistake
the user can correct, a ``UsageError`` that ``vrouter.cli`` prints as ``vrouter COMMAND:
message`` with exit status 1."""

from __future__ import annotations

import json
from typing import Any

from vrouter.messages.wire import to_json


class UsageError(Exception):
    """A command cannot do what it was asked; the message says what to change."""


def emit(data: Any, as_json: bool, text: str) -> None:
    """Print ``data`` as JSON, or ``text`` (ended by one newline)."""
    if as_json:
        print(json.dumps(to_json(data), indent=2, sort_keys=True))
    else:
        print(text, end="" if text.endswith("\n") else "\n")
