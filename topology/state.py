"""A prefix's state directory, and the list of what ``up`` created in it and on the host.

``/run/vrouter/P`` (the root is ``VROUTER_STATE_ROOT`` or the agent's
``STATE_ROOT``) holds the lab's files: the secret, Nova's instances, the
layout, each node's agent.conf, the daemons' logs and pidfiles.  ``created``
lists what ``up`` made, one ``KIND NAME`` a line (``netns``, ``file``,
``dir``, ``rootdir``: a parent directory that ``up`` had to make, removed when
no other prefix uses it), so that ``down`` after a half-made ``up`` removes
what was made and no more.

The directory is root's alone (0700), and so is every file written through
``write`` (0600 from the moment it exists): the secret, the layout (which
holds it), each agent.conf (likewise), Nova's instances (their user data and
passwords).  ``private`` puts right what an older lab left open.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable

from infra.private import restrict
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
        os.makedirs(self.root, exist_ok=True)
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        os.chmod(self.dir, 0o700)
        self.write("created", "")
        if root_new:
            self.created("rootdir", self.root)

    def created(self, kind: str, name: str) -> None:
        with open(self.path("created"), "a") as f:
            f.write("%s %s\n" % (kind, name))

    def has_list(self) -> bool:
        return os.path.exists(self.path("created"))

    def write(self, name: str, text: str, mode: int = 0o600) -> None:
        """``name`` replaced whole (a reader sees the old text or the new), ``mode`` from the start."""
        path = self.path(name)
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
        os.fchmod(fd, mode)  # a .tmp left by a crash keeps its own mode through O_CREAT
        with open(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)

    PRIVATE = ("secret", "layout.json", "instances.json", "agent.conf", "created")

    def private(self, state_dirs: list[str]) -> list[str]:
        """The directory, and the files of it and of the nodes' ``state_dirs`` that ``write`` makes
        0600 (and the TLS keys), made root's alone if they are not; what was put right."""
        fixed = [restrict(self.dir, 0o700)]
        for d in sorted({self.dir, *state_dirs}):
            fixed += [restrict(os.path.join(d, name), 0o600) for name in self.PRIVATE]
        for sub in ("tls", "etcd-tls"):
            d = self.path(sub)
            if os.path.isdir(d):
                fixed.append(restrict(d, 0o700))
                fixed += [restrict(os.path.join(d, n), 0o600) for n in sorted(os.listdir(d)) if n.endswith(".key")]
        return [f for f in fixed if f]

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
