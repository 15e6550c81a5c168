"""``vrouter status``: is the agent up, and how are it and its proxy process doing (format:
``vrouter.tools.status``, which ``netns_setup.sh status`` prints too)."""

from __future__ import annotations

import argparse
from typing import Any

from vrouter.commands.output import emit
from vrouter.commands.target import add_target_args, agent_call
from vrouter.messages.control import StatusRequest
from vrouter.tools.status import format_status


def add_parsers(sub: Any) -> None:
    s = sub.add_parser("status", help="is the agent running", description="The running agent's state.")
    add_target_args(s)
    s.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    st = agent_call(args, StatusRequest())
    emit(st, args.json, format_status(st))
    return 0
