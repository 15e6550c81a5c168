"""``vrouter instance set``: change an instance's metadata while its node runs, in the instances
file ``vrouter nova-metadata`` serves (the edit itself: ``vrouter.tools.instances``)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from vrouter.commands.output import UsageError, emit
from vrouter.commands.target import add_target_args, paths


def add_parsers(sub: Any) -> None:
    ins = sub.add_parser("instance", help="change an instance's metadata while its node runs",
                         description="Edit the instances file that vrouter nova-metadata serves (atomic replace): the next metadata "
                         "request sees the change.")  # fmt: skip
    ins.add_argument("oper", choices=["set"])
    ins.add_argument("--uuid", required=True, help="the instance's uuid")
    ins.add_argument("--name", help="its name (and hostname)")
    ins.add_argument("--user-data", "--user_data", dest="user_data", metavar="FILE", help="its user data, from FILE")
    ins.add_argument("--ssh-key", "--ssh_key", dest="ssh_key", metavar="FILE", help="its public key (public_keys.default), from FILE")
    ins.add_argument("--meta", action="append", metavar="KEY=VALUE", help="set a metadata item (repeatable)")
    ins.add_argument("--instances", metavar="FILE", help="the instances file (default: the node's, STATE_DIR/instances.json)")
    add_target_args(ins)
    ins.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vrouter.tools.instances import InstanceSetError, change_of, set_instance

    path = args.instances or paths(args).instances
    if not args.instances and not os.path.exists(path):  # a node of a cluster: Nova's file is the cluster's
        above = os.path.join(os.path.dirname(os.path.dirname(path)), "instances.json")
        path = above if os.path.exists(above) else path
    try:
        change = change_of(args.uuid, args.name, args.user_data, args.ssh_key, args.meta or [])
        inst, done = set_instance(path, change)
    except InstanceSetError as e:
        raise UsageError(str(e)) from None
    emit(inst, args.json, "instance %s (%s): %s set in %s" % (change.uuid, inst.get("name", ""), ", ".join(done), path))
    return 0
