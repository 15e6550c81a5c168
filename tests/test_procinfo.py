"""infra/procinfo: whether a process is alive, as the agent's start and the lab's stop ask."""

from __future__ import annotations

import os
import subprocess
import sys

from infra.procinfo import alive
from tests.helpers import wait_until


def test_a_running_process_is_alive_and_a_zombie_is_not() -> None:
    assert alive(os.getpid())
    p = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        assert alive(p.pid)
        assert p.stdin is not None
        p.stdin.close()  # it exits; unreaped, it is a zombie
        wait_until(lambda: not alive(p.pid), 10, "the child to be a zombie")
        assert os.path.exists("/proc/%d" % p.pid)  # still there: a zombie, not gone
    finally:
        p.wait(10)
    assert not alive(p.pid)
