"""Files for root's eyes alone: a path made so when others than its owner may use it.

The node's secrets (the control socket, the metadata secret and the
agent.conf and layout that hold it, TLS keys, Nova's instances, the state the
agent keeps) are made 0600 (directories 0700) when they are made; ``restrict``
is for what was made before that, or left open by a hand: what it changed is
said, so that the daemon that put it right can log it.
"""

from __future__ import annotations

import os
import stat


def restrict(path: str, mode: int) -> str:
    """``path`` (a directory, a file or a socket; a symlink is left alone, and so is its target)
    made ``mode`` if group or others have any access to it: "PATH (was MODE)" then, else ""."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return ""
    if stat.S_ISLNK(st.st_mode) or not st.st_mode & 0o077:
        return ""
    os.chmod(path, mode)
    return "%s (was %04o)" % (path, stat.S_IMODE(st.st_mode))
