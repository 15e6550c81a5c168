"""A node's secrets are root's alone (needs root): the control socket, the metadata secret and the
files that hold it (agent.conf, the layout), Nova's instances, the TLS keys and the agent's state
files are 0600 in 0700 directories, as a node built by the lab has them; another user (nobody,
through setpriv) reads none of them and cannot reach the control socket, even with the directory
opened to it; and modes left open by an older lab or a hand are put right when the agent starts."""

from __future__ import annotations

import glob
import os
import shutil
import stat
import subprocess
import sys

import pytest

from tests.helpers import VROUTER

pytestmark = pytest.mark.netns

NOBODY = ["--reuid=65534", "--regid=65534", "--clear-groups"]
CONNECT = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except PermissionError:
    print("refused")
else:
    print("connected")
"""


@pytest.fixture(scope="module")
def node(make_shared_node):
    """One node with --tls (its keys too), that both tests leave as they found it."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    return make_shared_node(vms=1, tls=True)


def as_nobody(*cmd: str) -> subprocess.CompletedProcess:
    setpriv = shutil.which("setpriv")
    assert setpriv is not None
    return subprocess.run([setpriv, *NOBODY, *cmd], capture_output=True, text=True, timeout=30)


def mode(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def secrets_of(state: str) -> list[str]:
    """The files of a one-node lab that only root may read."""
    files = [os.path.join(state, n) for n in ("secret", "agent.conf", "layout.json", "instances.json", "linklocal.json", "created")]
    files += glob.glob(os.path.join(state, "ports", "*.json")) + glob.glob(os.path.join(state, "networks", "*.json"))
    files += glob.glob(os.path.join(state, "tls", "*.key"))
    assert len(files) == 6 + 1 + 1 + 3, files  # one port, one network, three keys (CA, Nova, agent)
    return files


def test_the_nodes_secrets_are_root_s_alone_and_nobody_reads_them(node):
    state = node.state_dir
    sock = os.path.join(state, "agent.sock")
    assert mode(state) == 0o700 and mode(os.path.join(state, "ports")) == 0o700 and mode(os.path.join(state, "tls")) == 0o700
    assert stat.S_ISSOCK(os.lstat(sock).st_mode) and mode(sock) == 0o600
    files = secrets_of(state)
    assert {f: oct(mode(f)) for f in files} == {f: oct(0o600) for f in files}
    with open(os.path.join(state, "secret")) as f:
        assert f.read() == node.layout["secret"]
    for f in files:  # the directory keeps nobody out
        r = as_nobody("cat", f)
        assert r.returncode != 0 and "Permission denied" in r.stderr, (f, r.stdout[:100])
    assert as_nobody(sys.executable, "-c", CONNECT, sock).stdout.strip() == "refused"
    r = as_nobody(str(VROUTER), "status", "--state-dir", state)
    assert r.returncode == 1 and "permission denied" in r.stderr and "run this as root" in r.stderr and "Traceback" not in r.stderr, r.stderr
    os.chmod(state, 0o711)  # ... and with the directory open to it, each file does
    try:
        for f in [sock, *files]:
            if f.startswith(os.path.join(state, "tls")):
                continue  # tls/ stays 0700
            r = as_nobody("cat", f)
            assert r.returncode != 0 and ("Permission denied" in r.stderr or "No such device" in r.stderr), (f, r.stderr)
        assert as_nobody(sys.executable, "-c", CONNECT, sock).stdout.strip() == "refused"
    finally:
        os.chmod(state, 0o700)
    assert node.cli_json("status")["ports"] == 1  # root's tools are not affected


def test_modes_left_open_are_put_right_when_the_agent_starts(node):
    state = node.state_dir
    port_file = glob.glob(os.path.join(state, "ports", "*.json"))[0]
    j = os.path.join
    opened = {state: 0o755, j(state, "ports"): 0o755, port_file: 0o644, j(state, "linklocal.json"): 0o644, j(state, "agent.conf"): 0o644,
              j(state, "secret"): 0o644, j(state, "tls", "agent.key"): 0o644}  # fmt: skip
    for path, m in opened.items():
        os.chmod(path, m)
    assert node.setup("stop-agent").returncode == 0
    r = node.setup("start-agent")
    assert r.returncode == 0, r.stderr
    assert {p: oct(mode(p)) for p in opened} == {p: oct(0o700 if os.path.isdir(p) else 0o600) for p in opened}
    assert "%s (was 0644) was open to other users than root: made root's alone" % os.path.join(state, "secret") in r.stderr
    with open(os.path.join(state, "agent.log")) as f:
        log = f.read().split("stopping")[-1]
    for path in (os.path.join(state, "ports"), port_file, os.path.join(state, "linklocal.json")):
        assert "%s (was 0%o) was open to other users than root: made root's alone" % (path, opened[path]) in log, log[-2000:]
    assert node.metadata(0)[0] == 200
