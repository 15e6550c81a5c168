"""The node's daemons and clients: processes started in a namespace, known by their pidfiles.

The agent, Nova, the namespace VMs' DHCP clients and the QEMU guests are each
started with ``ip netns exec`` (which also gives the process the namespace's
own ``/etc/netns/NS`` files), in a session of their own, with a pidfile in the
node's state directory and a log beside it.  Stopping is SIGTERM, then SIGKILL
after 10 s.  A process is running while its pid exists and is not a zombie.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable


class StartError(Exception):
    """A process did not start; the message ends with its log's last lines."""


class Processes:
    def __init__(self, state_dir: str, say: Callable[[str], None]) -> None:
        self.state = state_dir
        self.say = say

    def path(self, name: str) -> str:
        return os.path.join(self.state, name)

    def spawn(self, namespace: str, args: list[str], log: str, pidfile: str) -> subprocess.Popen:
        os.makedirs(os.path.dirname(self.path(pidfile)), exist_ok=True)
        with open(self.path(log), "ab") as out:
            proc = subprocess.Popen(["ip", "netns", "exec", namespace, *args], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # fmt: skip
        tmp = self.path(pidfile) + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % proc.pid)
        os.replace(tmp, self.path(pidfile))
        return proc

    def pid(self, pidfile: str) -> int:
        """The pid in ``pidfile`` if that process still runs, else 0."""
        try:
            with open(self.path(pidfile)) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            return 0
        return pid if running(pid) else 0

    def log_tail(self, log: str, lines: int = 15) -> str:
        try:
            with open(self.path(log), errors="replace") as f:
                return "\n".join(f.read().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def wait(self, seconds: float, proc: subprocess.Popen, ready: Callable[[], bool], what: str, log: str) -> None:
        """Until ``ready()``; StartError with the log's end if the process exits or time runs out."""
        deadline = time.monotonic() + seconds
        while not ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                why = "exited with %s" % proc.returncode if proc.returncode is not None else "was not ready within %.0f s" % seconds
                raise StartError("%s %s (the end of its log, %s):\n%s" % (what, why, self.path(log), self.log_tail(log)))
            time.sleep(0.05)  # polling the process's readiness, with a deadline

    def stop(self, pidfile: str, name: str, seconds: float = 10) -> None:
        """SIGTERM, up to ``seconds``, then SIGKILL; the pidfile goes."""
        pid = self.pid(pidfile)
        if pid:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + seconds
            while self.pid(pidfile) and time.monotonic() < deadline:
                time.sleep(0.05)  # waiting for the process to exit, with a deadline
            if self.pid(pidfile):
                self.say("  %s (pid %d) did not stop in %.0f s: SIGKILL" % (name, pid, seconds))
                os.kill(pid, signal.SIGKILL)
            self.say("  stopped %s (pid %d)" % (name, pid))
        try:
            os.unlink(self.path(pidfile))
        except FileNotFoundError:
            pass

    def stop_each(self, directory: str, what: str) -> None:
        """Each process with a pidfile in ``directory`` (``guests``, ``dhcp``), by name: "WHAT NAME"."""
        try:
            names = sorted(n[:-4] for n in os.listdir(self.path(directory)) if n.endswith(".pid"))
        except FileNotFoundError:
            return
        for name in names:
            self.stop("%s/%s.pid" % (directory, name), "%s %s" % (what, name))


def running(pid: int) -> bool:
    """Whether ``pid`` runs: not gone, and not a zombie (reaped here when it is our child, as it
    is when this process started it)."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass  # not our child: its parent reaps it
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
