"""A real browser for the tests: Debian's headless Chromium, driven by selenium through Debian's
chromedriver, inside a network namespace.

    why = browser_available()          # None, or why there is no browser here
    pages = browse("tqb1a2b3", [{"get": "http://127.0.0.1:8085/Snh_ItfReq"}, {"click_link": "vm1"}])
    pages[-1]["url"], pages[-1]["rows"], pages[-1]["text"], pages[-1]["links"]

Network safety: Chromium runs only inside the namespace it is given, with its own background
traffic turned off (tests/browser_driver.py FLAGS); give it a namespace of your own, serving the
pages to look at on one of its addresses.

Every process it starts is gone when browse() returns, also after a timeout or an error: the
driver side runs as the first process of a PID namespace of its own (everything in it dies with
it), and browse() kills that process and its descendants by pid before returning.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.browser_driver import CHROMEDRIVER, CHROMIUM

ROOT = Path(__file__).resolve().parents[1]
# Debian's packages: the browser and its WebDriver
PACKAGES = ("chromium", "chromium-driver")


class BrowserError(RuntimeError):
    """The browser could not do what it was asked (the message says what, with its stderr's end)."""


def browser_available() -> str | None:
    """None when browse() can run here, else why not (and what to install)."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        return "%s missing: apt-get install %s" % (" and ".join(missing), " ".join(PACKAGES))
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed in %s (pip install -e '.[test]')" % sys.prefix
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare (util-linux) or ip (iproute2) missing"
    return None


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                stat = f.read()
        except OSError:
            continue  # gone meanwhile
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            out.append(int(entry))
    return out


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        kids = _children(todo.pop())
        found += kids
        todo += kids
    return found


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie has finished: nothing of its PID namespace is left)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _kill(proc: subprocess.Popen, timeout: float = 10) -> None:
    """Kill ``proc`` and every process under it, by pid, and wait until they are gone."""
    pids = _descendants(proc.pid) if proc.poll() is None else []
    for pid in pids + [proc.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout)
    deadline = time.monotonic() + timeout
    while any(_alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            raise BrowserError("processes %s of the browser did not die" % [p for p in pids if _alive(p)])
        time.sleep(0.05)


def browse(netns: str, steps: list[dict[str, Any]], timeout: float = 60, xslt: bool = True) -> list[dict[str, Any]]:
    """Run ``steps`` in a fresh headless Chromium inside network namespace ``netns``; one answer a step.

    Steps: ``{"get": URL}``, ``{"click_link": TEXT}`` (the first link whose text is TEXT),
    ``{"scroll_to": NAME}`` (a wide table scrolled until its column NAME is in view),
    ``{"screenshot": PATH}`` (``"full_page": True`` for the whole page rather than the 1280x900
    window).  Each answer: ``{"url", "title", "rows" (number of <tr>), "text" (the body's text, at
    most 20 kB), "links" ([(text, href), ...], the first 200)}``.  ``xslt=False`` runs Chromium
    with XSLT turned off, as the browsers that drop it will be.  Raises BrowserError when a step
    fails or ``timeout`` seconds pass (the browser is gone by then, as after a success).
    """
    why = browser_available()
    if why:
        raise BrowserError(why)
    scratch = tempfile.mkdtemp(prefix="vrouter-chromium-")
    home = os.path.join(scratch, "home")  # what Chromium would write under $HOME (.pki, .config, .cache) goes there
    os.mkdir(home)
    env = dict(os.environ, HOME=home, XDG_CONFIG_HOME=home, XDG_CACHE_HOME=home, XDG_DATA_HOME=home, DBUS_SESSION_BUS_ADDRESS="disabled:")
    # the driver runs in ROOT: a screenshot path is the caller's
    steps = [dict(step, screenshot=os.path.abspath(step["screenshot"])) if "screenshot" in step else step for step in steps]
    request = json.dumps({"steps": steps, "xslt": xslt, "profile": os.path.join(scratch, "profile"), "timeout": timeout})
    cmd = ["ip", "netns", "exec", netns, "unshare", "--pid", "--fork", "--kill-child", "--mount-proc", sys.executable, "-m", "tests.browser_driver"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        try:
            out, err = proc.communicate(request, timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(proc)
            out, err = proc.communicate()
            raise BrowserError("the browser took more than %.0f s%s" % (timeout, _tail(err))) from None
        if not out.strip():
            raise BrowserError("the browser's driver exited with %s and no answer%s" % (proc.returncode, _tail(err)))
        answer = json.loads(out)
        if answer["error"]:
            raise BrowserError("%s (after %d of %d steps)%s" % (answer["error"], len(answer["results"]), len(steps), _tail(err)))
        return [dict(page, links=[tuple(link) for link in page["links"]]) for page in answer["results"]]
    finally:
        if proc.poll() is None:
            _kill(proc)
        shutil.rmtree(scratch, ignore_errors=True)


def _tail(stderr: str | None, lines: int = 15) -> str:
    """The end of the driver's stderr, without Chromium's usual D-Bus noise."""
    kept = [line for line in (stderr or "").splitlines() if line.strip() and "dbus" not in line.lower()]
    return ("; its stderr ends:\n" + "\n".join(kept[-lines:])) if kept else ""
