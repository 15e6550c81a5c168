"""A prefix's state directory, and the list of what ``up`` created in it and on the host.

``/run/vrouter/P`` (the root is ``VROUTER_STATE_ROOT`` or the agent's
``STATE_ROOT``) holds the lab's files: the secret, Nova's instances, the
layout, each node's agent.conf, the daemons' logs and pidfiles.  ``created``
lists what ``up`` made, one ``KIND NAME`` a line (``netns``, ``file``,
``dir``, ``rootdir``: a parent directory that ``up`` had to make, removed when
no other prefix uses it), so that ``down`` after a half-made ``up`` removes
what was made and no more.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable

from topology import netns


class StateDir:
    """``root/prefix``: its files written whole, the list of what was created, the layout."""

    def __init__(self, root: str, prefix: str) -> None:
        self.root = root
        self.prefix = prefix
        self.dir = os.path.join(root, prefix)

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def begin(self) -> None:
        """The directory made and its list of what was created started empty (with the root
        directory in it, when there was none)."""
        root_new = not os.path.isdir(self.root)
        os.makedirs(self.dir, exist_ok=True)
        open(self.path("created"), "w").close()
        if root_new:
            self.created("rootdir", self.root)

    def created(self, kind: str, name: str) -> None:
        with open(self.path("created"), "a") as f:
            f.write("%s %s\n" % (kind, name))

    def has_list(self) -> bool:
        return os.path.exists(self.path("created"))

    def write(self, name: str, text: str, mode: int = 0o644) -> None:
        """``name`` replaced whole (a reader sees the old text or the new)."""
        path = self.path(name)
        tmp = path + ".tmp"
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "w") as f:
            f.write(text)
        os.replace(tmp, path)

    def layout(self) -> dict | None:
        try:
            with open(self.path("layout.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def forget_namespaces(self, names: set[str]) -> None:
        """The list without the namespaces ``names`` (removed already)."""
        with open(self.path("created")) as f:
            kept = [line for line in f.read().splitlines() if not (line.startswith("netns ") and line[6:] in names)]
        self.write("created", "".join(line + "\n" for line in kept))

    def remove(self, ours: list[str], say: Callable[[str], None], quiet: bool) -> None:
        """Everything on the list, last made first, then the directory (and the root directory if
        ``up`` made it and no other prefix uses it).  ``ours``: the namespaces known to be ours when
        ``up`` died before it wrote its list."""
        rootdir = ""
        try:
            with open(self.path("created")) as f:
                created = [line.split(" ", 1) for line in f.read().splitlines() if " " in line]
        except FileNotFoundError:
            created = [["netns", ns] for ns in ours]
        for kind, name in reversed(created):
            if kind == "netns":
                if netns.delete(name) and not quiet:
                    say("  deleted netns %s" % name)
            elif kind == "file":
                _remove(name)
            elif kind == "dir":
                try:
                    os.rmdir(name)
                except OSError:
                    pass
            elif kind == "rootdir":
                rootdir = name
        shutil.rmtree(self.dir, ignore_errors=True)
        if rootdir:
            try:
                os.rmdir(rootdir)  # if no other prefix is up
            except OSError:
                pass


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
