"""What the tests share besides their fixtures (those are in conftest.py): the project's paths, a
deadline wait, unique prefixes, and the small actions several namespace tests take on a node
(UDP sent from a VM, the agent's metrics scraped, agent.conf changed).  Plain functions: a test
module imports them from here, never from another test module or from conftest."""

from __future__ import annotations

import configparser
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.emulated_host import EmulatedHost

ROOT = Path(__file__).resolve().parents[1]
SETUP = ROOT / "scripts" / "netns_setup.sh"
VROUTER = ROOT / ".venv" / "bin" / "vrouter"
GUEST_BUILD = ROOT / "build" / "guest"
SCRAPE_VENV = ROOT / "build" / "scrape-venv"  # contrail-scrape from PyPI, in a venv of its own (make test-clients)

# Every prefix handed out this session; conftest removes their namespaces that are left at the end
PREFIXES: list[str] = []

# Set by make test: a guest build that is missing fails the guest tests instead of skipping them
REQUIRE_GUESTS = "VROUTER_REQUIRE_GUESTS"


def wait_until(cond: Callable[[], object], timeout: float, what: str, interval: float = 0.1) -> object:
    """Poll ``cond`` until it returns something true, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = cond()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.0f s waiting for %s" % (timeout, what))
        time.sleep(interval)


def unique_prefix() -> str:
    """A prefix no other test uses; its namespaces are swept at the end of the session."""
    prefix = "tq" + secrets.token_hex(3)[:5]
    PREFIXES.append(prefix)
    return prefix


def guest_build(path: Path, how: str) -> Path:
    """``path``, a file that make builds for the guest tests (``how`` says which target): a test
    without it is skipped, or fails under make test (VROUTER_REQUIRE_GUESTS=1)."""
    if not path.exists():
        why = "%s is missing: %s" % (path, how)
        if os.environ.get(REQUIRE_GUESTS) == "1":
            pytest.fail(why + " (%s=1: the guest tests must run)" % REQUIRE_GUESTS, pytrace=False)
        pytest.skip(why)
    return path


# -- traffic from a VM ---------------------------------------------------------------------------

SEND_UDP = """
import socket, sys, time
dst, port, count, size, sport = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
pace = float(sys.argv[6]) if len(sys.argv) > 6 else 0
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("", sport))
for i in range(count):
    s.sendto(b"x" * size, (dst, port))
    if pace and i % 10 == 9:
        time.sleep(pace)  # pacing the load, not synchronising: stays under the queue's capacity
"""


def send_udp(host: EmulatedHost, vm: int, dst: str, port: int, count: int, size: int, sport: int) -> None:
    """``count`` datagrams of ``size`` bytes from VM ``vm``'s port ``sport`` to ``dst``:``port``."""
    r = host.in_vm(vm, sys.executable, "-c", SEND_UDP, dst, str(port), str(count), str(size), str(sport))
    assert r.returncode == 0, r.stderr


# -- the agent's metrics -------------------------------------------------------------------------

Metrics = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(host: EmulatedHost) -> Metrics:
    """The agent's metrics, from inside the compute namespace, as Prometheus scrapes them."""
    r = host.in_compute("curl", "-s", "-f", "http://%s:8085/metrics" % host.layout["vhost0"]["ip"])
    assert r.returncode == 0, r.stderr
    out = {}
    for line in r.stdout.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, value = line.rsplit(" ", 1)
        name, _, labels = name_labels.partition("{")
        pairs = tuple(tuple(p.split("=", 1)) for p in labels.rstrip("}").split('",') if p) if labels else ()
        out[(name, tuple((k, v.strip('"')) for k, v in pairs))] = float(value)
    return out


def metric(m: Metrics, name: str, **labels: str) -> float:
    """The sum of metric ``name`` over its series that have these labels."""
    want = set(labels.items())
    return sum(v for (n, ls), v in m.items() if n == name and want <= set(ls))


# -- agent.conf ----------------------------------------------------------------------------------


def configure(host: EmulatedHost, **sections: dict) -> None:
    """Rewrite agent.conf with these keys (``SECTION={key: value}``) and restart the agent."""
    path = os.path.join(host.state_dir, "agent.conf")
    cp = configparser.ConfigParser(interpolation=None, default_section="__none__")
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read(path)
    for section, keys in sections.items():
        if not cp.has_section(section):
            cp.add_section(section)
        for k, v in keys.items():
            cp.set(section, k, str(v))
    with open(path, "w") as f:
        cp.write(f)
    assert host.setup("stop-agent").returncode == 0
    r = host.setup("start-agent")
    assert r.returncode == 0, r.stderr + open(os.path.join(host.state_dir, "agent.log")).read()[-3000:]


# -- TCP and UDP between two VMs, over either IP version -------------------------------------------

_SERVE_ONCE = """
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM if sys.argv[3] == "udp" else socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(20)
print("ready", flush=True)
if sys.argv[3] == "udp":
    data, peer = s.recvfrom(65536)
    s.sendto(data.upper(), peer)
else:
    s.listen(1)
    c, peer = s.accept()
    c.sendall(c.recv(65536).upper())
    c.close()
print(peer[0], flush=True)
"""

_ASK = """
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
if sys.argv[3] == "udp":
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.sendto(b"hello", (sys.argv[1], int(sys.argv[2])))
    print(s.recv(100).decode())
else:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
    s.sendall(b"hello")
    print(s.recv(100).decode())
"""


def exchange(host: EmulatedHost, client: int, server: int, address: str, proto: str = "tcp", port: int = 9100) -> str:
    """A request from VM ``client`` to VM ``server`` listening on ``address`` (TCP or UDP, IPv4 or
    IPv6), answered: returns the address the server saw the request come from."""
    srv = subprocess.Popen(["ip", "netns", "exec", host.vm_ns(server), sys.executable, "-c", _SERVE_ONCE, address, str(port), proto],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert srv.stdout is not None and srv.stdout.readline().strip() == "ready", srv.stderr
        r = host.in_vm(client, sys.executable, "-c", _ASK, address, str(port), proto, timeout=20)
        assert r.returncode == 0 and r.stdout.strip() == "HELLO", "%s to [%s]:%d: %s" % (proto, address, port, r.stderr[-400:])
        out, _ = srv.communicate(timeout=10)
        return out.strip()
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()
