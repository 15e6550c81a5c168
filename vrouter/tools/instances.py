"""``vrouter instance set``: change an instance's metadata while its node runs.

It edits the instances file that ``vrouter nova-metadata`` serves
(``<state dir>/instances.json`` for a node built by ``netns_setup.sh``, or
``--instances FILE``): read, change one instance, check the whole file as the
server will, write a new file beside it and rename it over the old one, so the
server reads either the old file or the new one, never half of one.  Edits are
serialised by a lock file beside it (``instances.json.lock``).  The next
metadata request sees the change.

Limits are Nova's: user data at most 65535 bytes once base64-encoded, metadata
keys and values at most 255 characters, at most 128 items.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import uuid as uuidlib
from dataclasses import dataclass, field

from fabric.nova_metadata import InstancesError, parse_instances
from infra.jsonfile import write_json_atomic

MAX_USER_DATA = 65535  # Nova's limit, on the base64 form
MAX_META_ITEMS = 128
MAX_META_LEN = 255
KEY_TYPES = ("ssh-", "ecdsa-sha2-", "sk-ssh-", "sk-ecdsa-")


class InstanceSetError(Exception):
    """The edit cannot be made; the message names the option or the file."""


@dataclass
class InstanceChange:
    uuid: str
    name: str | None = None
    user_data: bytes | None = None
    ssh_key: str | None = None
    meta: dict[str, str] = field(default_factory=dict)

    def empty(self) -> bool:
        return self.name is None and self.user_data is None and self.ssh_key is None and not self.meta


def read_option_file(option: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise InstanceSetError("%s %s: %s" % (option, path, e.strerror)) from None


def change_of(uuid: str, name: str | None, user_data_file: str | None, ssh_key_file: str | None, meta: list[str]) -> InstanceChange:
    """The change as typed; InstanceSetError naming the option that is wrong."""
    try:
        uuid = str(uuidlib.UUID(uuid))
    except ValueError:
        raise InstanceSetError("--uuid %r: not a uuid" % uuid) from None
    change = InstanceChange(uuid, name)
    if name is not None and (not name.strip() or len(name) > 255):
        raise InstanceSetError("--name %r: 1 to 255 characters" % name)
    if user_data_file is not None:
        data = read_option_file("--user-data", user_data_file)
        if len(base64.b64encode(data)) > MAX_USER_DATA:
            raise InstanceSetError("--user-data %s: %d bytes, more than Nova takes (%d bytes once base64-encoded)"
                                   % (user_data_file, len(data), MAX_USER_DATA))  # fmt: skip
        change.user_data = data
    if ssh_key_file is not None:
        key = read_option_file("--ssh-key", ssh_key_file).decode("utf-8", "replace").strip()
        if not key.startswith(KEY_TYPES) or len(key.split()) < 2 or "\n" in key:
            raise InstanceSetError("--ssh-key %s: not one OpenSSH public key (ssh-ed25519 AAAA... comment)" % ssh_key_file)
        change.ssh_key = key
    for item in meta:
        k, eq, v = item.partition("=")
        if not eq or not k:
            raise InstanceSetError("--meta %r: KEY=VALUE" % item)
        if len(k) > MAX_META_LEN or len(v) > MAX_META_LEN:
            raise InstanceSetError("--meta %r: keys and values are at most %d characters (Nova's limit)" % (item, MAX_META_LEN))
        change.meta[k] = v
    if change.empty():
        raise InstanceSetError("nothing to change: give --name, --user-data, --ssh-key or --meta")
    return change


def apply(inst: dict, change: InstanceChange) -> list[str]:
    """Change ``inst`` in place; return what changed, for the user."""
    done = []
    if change.name is not None:
        inst["name"] = inst["hostname"] = change.name
        done.append("name")
    if change.user_data is not None:
        try:
            inst["user_data"] = change.user_data.decode("utf-8")
        except UnicodeDecodeError:
            inst["user_data"] = {"base64": base64.b64encode(change.user_data).decode()}
        done.append("user data (%d bytes)" % len(change.user_data))
    if change.ssh_key is not None:
        inst["public_keys"] = {"default": change.ssh_key}
        done.append("ssh key")
    if change.meta:
        meta = dict(inst.get("meta") or {})
        meta.update(change.meta)
        if len(meta) > MAX_META_ITEMS:
            raise InstanceSetError("--meta: the instance would have %d metadata items, more than Nova takes (%d)" % (len(meta), MAX_META_ITEMS))
        inst["meta"] = meta
        done.append("meta " + ", ".join(sorted(change.meta)))
    return done


def set_instance(path: str, change: InstanceChange) -> tuple[dict, list[str]]:
    """Apply ``change`` to the instance in the file at ``path`` and replace the file; return the
    instance as written and what changed."""
    try:
        lock = open(path + ".lock", "a")
    except OSError as e:
        raise InstanceSetError("cannot lock %s: %s" % (path, e.strerror)) from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise InstanceSetError("cannot read %s: %s (is the node up? see --instances)" % (path, e.strerror)) from None
        try:
            instances = parse_instances(text)
        except InstancesError as e:
            raise InstanceSetError("%s: %s" % (path, e)) from None
        inst = instances.get(change.uuid)
        if inst is None:
            known = ", ".join("%s (%s)" % (u, i.get("name", "")) for u, i in instances.items()) or "none"
            raise InstanceSetError("--uuid %s: no such instance in %s (there: %s)" % (change.uuid, path, known))
        done = apply(inst, change)
        data = json.loads(text)
        items = data["instances"] if isinstance(data, dict) else data
        items[[i.get("uuid") for i in items].index(change.uuid)] = inst
        try:
            write_json_atomic(path, data, sort_keys=False, mode=os.stat(path).st_mode & 0o700)  # its owner's, as it was; no one else's
        except OSError as e:
            raise InstanceSetError("cannot write %s: %s" % (path, e.strerror)) from None
    return inst, done
