"""What a process can tell about itself and others from /proc: shared by the agent, its proxy
process and the inspection tools."""

from __future__ import annotations

import os


def alive(pid: int) -> bool:
    """Whether a process with this pid exists (it may belong to another user) and is not a zombie
    (dead, waiting for its parent to reap it: an agent killed by a test that started it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def own_memory() -> dict[str, int]:
    """This process's resident memory, its heap (anonymous memory: the agent's RSS also counts
    the pages of the shared flow table touched so far) and its open files."""
    out = {"open_files": len(os.listdir("/proc/self/fd"))}
    for path, field, key in (("/proc/self/status", "VmRSS:", "rss_kib"), ("/proc/self/smaps_rollup", "Anonymous:", "heap_kib")):
        try:
            with open(path) as f:
                out[key] = next(int(line.split()[1]) for line in f if line.startswith(field))
        except (OSError, StopIteration, ValueError):
            out[key] = 0
    return out
