"""A cloud's etcd over TLS with client certificates (needs root): etcd started in a namespace of the
test's own with ``--client-cert-auth``; a lab joins it with ``up --etcd https://... --etcd-ca
--etcd-cert --etcd-key`` and works; without a client certificate, with one of another CA, or
trusting another CA, it is refused with a message that says so (in ``up``'s error, the agent's
status and its log), and nothing crashes or hangs; bad TLS files stop ``up``, the agent and Nova
before they start, with a message naming the file."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator

import pytest

from tests.external_etcd import ExternalEtcd, external_etcd
from tests.helpers import SETUP, VROUTER, unique_prefix, wait_until
from topology import netns
from topology.lab import in_etcd
from vrouter.agent.control import call
from vrouter.messages.control import StatusRequest
from vrouter.messages.wire import to_json

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def cloud_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExternalEtcd]:
    with external_etcd(tmp_path_factory.mktemp("etcd-tls"), tls=True) as e:
        yield e


def up(prefix: str, cloud: ExternalEtcd, *tls: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SETUP), "up", "--prefix", prefix, "--vms", "1", "--etcd", cloud.url, "--fabric-link", cloud.namespace,
                           *tls, "--json"], capture_output=True, text=True, timeout=120)  # fmt: skip


def down(prefix: str) -> None:
    subprocess.run(["bash", str(SETUP), "down", "--prefix", prefix], capture_output=True, timeout=60)


def tls_args(files: object) -> list[str]:
    return ["--etcd-ca", files.ca, "--etcd-cert", files.cert, "--etcd-key", files.key]  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def lab(cloud_etcd: ExternalEtcd) -> Iterator[dict]:
    """A node of the cloud, its agent and Nova reaching etcd over TLS with the client certificate."""
    prefix = unique_prefix()
    try:
        r = up(prefix, cloud_etcd, *tls_args(cloud_etcd.client))
        assert r.returncode == 0, r.stderr
        yield json.loads(r.stdout)
    finally:
        down(prefix)


def cluster_status(layout: dict) -> dict:
    """What ``vrouter status --json`` says of the node's link to etcd (asked here, not by a process a time)."""
    return to_json(call(os.path.join(layout["state_dir"], "agent.sock"), StatusRequest()).cluster)


def etcd_keys(cloud: ExternalEtcd) -> dict:
    return in_etcd([cloud.url], "/vrouter/", cloud.namespace, lambda store: store.get_all()[1], cloud.client)


def test_a_node_joins_an_etcd_that_wants_client_certificates_and_works(lab, cloud_etcd):
    vm = lab["vms"][0]
    r = subprocess.run(["ip", "netns", "exec", vm["namespace"], "curl", "-s", "-m", "5", "http://169.254.169.254/openstack/latest/meta_data.json"],
                       capture_output=True, text=True, timeout=15)  # fmt: skip
    assert vm["instance_uuid"] in r.stdout, r.stdout[:300]
    keys = etcd_keys(cloud_etcd)
    assert keys["ports/" + vm["port_uuid"]]["node"] == lab["nodes"][0]["name"]  # what the agent published over TLS
    assert "nodes/" + lab["nodes"][0]["name"] in keys
    c = cluster_status(lab)
    assert c["connected"] and not c.get("error") and c["servers"] == [cloud_etcd.url]
    client = cloud_etcd.client
    assert lab["etcd"]["tls"] == {"ca": client.ca, "cert": client.cert, "key": client.key}
    with open(os.path.join(lab["state_dir"], "agent.conf")) as f:
        conf = f.read()
    assert "ca_cert = %s\ncertfile = %s\nkeyfile = %s\n" % (client.ca, client.cert, client.key) in conf
    with open(os.path.join(lab["state_dir"], "nova.log")) as f:  # Nova follows the cloud's instances over TLS too
        assert "etcd at %s answers" % cloud_etcd.url in f.read()
    # and nothing but TLS with a client certificate gets an answer from it: not plain HTTP, not TLS without one
    for scheme, extra in (("http", []), ("https", ["--cacert", client.ca])):
        r = subprocess.run(["ip", "netns", "exec", lab["nodes"][0]["namespace"], "curl", "-s", "-m", "3", *extra,
                            cloud_etcd.url.replace("https", scheme) + "/version"], capture_output=True, text=True, timeout=15)  # fmt: skip
        assert "etcdserver" not in r.stdout, (scheme, r.stdout)


def _set_etcd_tls(conf_path: str, ca: str, cert: str, key: str) -> None:
    with open(conf_path) as f:
        lines = [line for line in f.read().splitlines() if not line.startswith(("ca_cert =", "certfile =", "keyfile ="))]
    at = lines.index("key_prefix = /vrouter/") + 1
    lines[at:at] = ["ca_cert = " + ca] + (["certfile = " + cert, "keyfile = " + key] if cert else [])
    with open(conf_path, "w") as f:
        f.write("\n".join(lines) + "\n")


def test_an_agent_without_a_client_certificate_or_with_another_cas_is_refused_and_says_why(lab, cloud_etcd):
    conf, log = os.path.join(lab["state_dir"], "agent.conf"), os.path.join(lab["state_dir"], "agent.log")
    prefix = lab["prefix"]
    good, other = cloud_etcd.client, cloud_etcd.other
    cases = [
        ("no client certificate", (good.ca, "", ""), "requires a client certificate"),
        ("a certificate of another CA", (good.ca, other.cert, other.key), "refused this client's certificate|closed the connection in the handshake"),
    ]  # (etcd's certificate checked against another CA: in test_up_refused_by_etcd_says_why_and_leaves_nothing)
    try:
        for what, files, expected in cases:
            assert subprocess.run(["bash", str(SETUP), "stop-agent", "--prefix", prefix], capture_output=True, timeout=60).returncode == 0
            _set_etcd_tls(conf, *files)
            r = subprocess.run(["bash", str(SETUP), "start-agent", "--prefix", prefix], capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, (what, r.stderr)  # it starts, and runs from its files; etcd refuses it

            def refused() -> dict | None:
                c = cluster_status(lab)
                return c if not c["connected"] and c.get("error") else None

            c = wait_until(refused, 15, "the agent with %s to say etcd refused it" % what)
            assert re.search(expected, c["error"]), (what, c["error"])  # type: ignore[index]
            with open(log) as f:
                assert re.search(expected, f.read().split("agent up:")[-1]), what
            text = subprocess.run([str(VROUTER), "status", "--state-dir", lab["state_dir"]], capture_output=True, text=True, timeout=15).stdout
            assert "NOT REACHABLE (etcd refused TLS" in text, text
            vm = lab["vms"][0]  # the node's own VM still reads its metadata (the node's files keep it going)
            r = subprocess.run(["ip", "netns", "exec", vm["namespace"], "curl", "-s", "-m", "5", "http://169.254.169.254/openstack/latest/meta_data.json"],
                               capture_output=True, text=True, timeout=15)  # fmt: skip
            assert vm["instance_uuid"] in r.stdout, (what, r.stdout[:300])
    finally:  # the agent as it was: it connects again
        subprocess.run(["bash", str(SETUP), "stop-agent", "--prefix", prefix], capture_output=True, timeout=60)
        _set_etcd_tls(conf, good.ca, good.cert, good.key)
        subprocess.run(["bash", str(SETUP), "start-agent", "--prefix", prefix], capture_output=True, timeout=60)
    wait_until(lambda: cluster_status(lab)["connected"], 15, "the agent with its certificate again to connect")


@pytest.mark.parametrize(
    "what, files, expected",
    [
        ("no client certificate", lambda e: ["--etcd-ca", e.client.ca], "requires a client certificate"),
        ("another CA's certificate", lambda e: ["--etcd-ca", e.client.ca, "--etcd-cert", e.other.cert, "--etcd-key", e.other.key],
         "refused this client's certificate|closed the connection in the handshake"),
        ("another CA trusted", lambda e: tls_args(e.other)[:2] + tls_args(e.client)[2:], "not signed by the CA given"),
    ],
)  # fmt: skip
def test_up_refused_by_etcd_says_why_and_leaves_nothing(cloud_etcd, what, files, expected):
    prefix = unique_prefix()
    try:
        r = up(prefix, cloud_etcd, *files(cloud_etcd))
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert re.search(expected, r.stderr) and "--etcd %s: no answer" % cloud_etcd.url in r.stderr, r.stderr
        assert not [ns for ns in netns.names() if ns.startswith(prefix + "-")]
    finally:
        down(prefix)


def test_bad_tls_options_and_files_stop_up_before_it_builds_anything(cloud_etcd, tmp_path):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key\n")
    c, o = cloud_etcd.client, cloud_etcd.other
    cases = [
        (["--etcd-cert", c.cert, "--etcd-key", c.key], "https needs --etcd-ca FILE"),
        (["--etcd-ca", str(tmp_path / "missing.pem")], "CA certificate %s: No such file or directory" % (tmp_path / "missing.pem")),
        (["--etcd-ca", c.ca, "--etcd-cert", c.cert, "--etcd-key", str(garbage)], "not a PEM certificate and key"),
        (["--etcd-ca", c.ca, "--etcd-cert", c.cert, "--etcd-key", o.key], "the key is not the certificate's"),
        (["--etcd-ca", c.key], "CA certificate %s: not a PEM certificate" % c.key),
        (["--etcd-ca", c.ca, "--etcd-cert", c.cert], "--etcd-cert and --etcd-key go together"),
    ]
    for extra, expected in cases:
        prefix = unique_prefix()
        r = up(prefix, cloud_etcd, *extra)
        assert r.returncode == 1 and expected in r.stderr and "Traceback" not in r.stderr, (extra, r.stderr)
        assert not netns.exists(prefix + "-compute") and not os.path.exists("/run/vrouter/" + prefix)
    r = subprocess.run(["bash", str(SETUP), "up", "--prefix", unique_prefix(), "--vms", "1", "--etcd", cloud_etcd.url.replace("https", "http"),
                        "--etcd-ca", c.ca], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 1 and "go with an https:// --etcd or --join URL" in r.stderr, r.stderr
    r = subprocess.run(["bash", str(SETUP), "up", "--prefix", unique_prefix(), "--etcd-tls"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "--etcd-tls goes with --nodes K" in r.stderr, r.stderr


AGENT_CONF = """[DEFAULT]
metrics_port = 0
[ETCD]
servers = %s
%s
[VIRTUAL-HOST-INTERFACE]
ip = 10.10.0.250
"""


def test_bad_tls_files_stop_the_agent_and_nova_with_a_message_naming_the_file(cloud_etcd, tmp_path):
    """Run in etcd's namespace (the test's own): each stops before it opens anything."""
    c, o = cloud_etcd.client, cloud_etcd.other
    missing = str(tmp_path / "missing.pem")
    agent_cases = [
        (
            "ca_cert = %s" % c.ca + "\ncertfile = %s\nkeyfile = %s" % (missing, c.key),
            "[ETCD] TLS files: client certificate %s: No such file" % missing,
        ),
        ("certfile = %s\nkeyfile = %s" % (c.cert, c.key), "[ETCD] servers are https://: ca_cert must name the CA"),
        ("ca_cert = %s\ncertfile = %s\nkeyfile = %s" % (c.ca, c.cert, o.key), "the key is not the certificate's"),
        ("ca_cert = %s\ncertfile = %s" % (c.ca, c.cert), "[ETCD] certfile and keyfile go together"),
    ]
    for i, (keys, expected) in enumerate(agent_cases):
        conf = tmp_path / ("agent%d.conf" % i)
        conf.write_text(AGENT_CONF % (cloud_etcd.url, keys))
        r = subprocess.run(["ip", "netns", "exec", cloud_etcd.namespace, str(VROUTER), "agent", "--config", str(conf), "--state-dir",
                            str(tmp_path / ("state%d" % i))], capture_output=True, text=True, timeout=30)  # fmt: skip
        assert r.returncode == 1 and expected in r.stderr and "Traceback" not in r.stderr, (keys, r.stderr)
    instances = tmp_path / "instances.json"
    instances.write_text('{"instances": []}')
    nova_cases = [
        ([], "https needs --etcd-ca FILE"),
        (["--etcd-ca", c.ca, "--etcd-cert", c.cert, "--etcd-key", missing], "client key %s: No such file" % missing),
    ]
    for extra, expected in nova_cases:
        r = subprocess.run(["ip", "netns", "exec", cloud_etcd.namespace, str(VROUTER), "nova-metadata", "--instances", str(instances), "--listen",
                            "127.0.0.1", "--etcd", cloud_etcd.url, *extra], capture_output=True, text=True, timeout=30)  # fmt: skip
        assert r.returncode == 1 and expected in r.stderr and "Traceback" not in r.stderr, (extra, r.stderr)
