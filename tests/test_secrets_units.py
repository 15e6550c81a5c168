"""Secrets and TLS to etcd without root: [ETCD]'s TLS keys read and checked, the TLS files loaded
as a connection loads them, what a failed handshake means, the lab's agent.conf and etcd command
line with TLS, and the modes the agent's and the lab's files are made with (and put right with)."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from pathlib import Path

import pytest

from infra import etcd_tls
from infra.etcd import ConfigStore
from infra.etcd_tls import EtcdTls
from topology import etcd
from topology.certs import CertAuthority
from topology.model import Topology
from topology.state import StateDir
from vrouter.agent.config import ConfigError, parse_config
from vrouter.agent.control import ControlServer
from vrouter.agent.paths import StatePaths
from vrouter.messages.control import OPS

HTTPS = "[ETCD]\nservers = https://10.10.0.1:2379\n"


def mode(path: str | Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("certs")
    ca = CertAuthority(str(d / "ca")).create("unit CA")
    client = ca.issue("client", "unit client", client=True)
    other = CertAuthority(str(d / "other")).create("other CA").issue("client", "other client", client=True)
    return {"ca": ca.cert, "ca_key": ca.key, "cert": client.cert, "key": client.key, "other_key": other.key, "dir": str(d)}


def test_etcd_tls_keys_in_agent_conf():
    cfg = parse_config(HTTPS + "ca_cert = /etc/contrail/ca.pem\ncertfile = /etc/contrail/c.pem\nkeyfile = /etc/contrail/c.key\n")
    assert cfg.etcd.tls == EtcdTls("/etc/contrail/ca.pem", "/etc/contrail/c.pem", "/etc/contrail/c.key")
    assert parse_config(HTTPS + "ca_cert = /ca.pem\n").etcd.tls == EtcdTls("/ca.pem")  # etcd without client certificates
    assert parse_config("[ETCD]\nservers = http://10.10.0.1:2379\n").etcd.tls is None
    for text, expected in [
        (HTTPS, "servers are https://: ca_cert must name the CA"),
        (HTTPS + "certfile = /c.pem\nkeyfile = /c.key\n", "ca_cert must name the CA"),
        (HTTPS + "ca_cert = /ca.pem\ncertfile = /c.pem\n", "certfile and keyfile go together"),
        ("[ETCD]\nservers = http://10.10.0.1:2379\nca_cert = /ca.pem\n", "ca_cert given, but no server is https://"),
        ("[ETCD]\nca_cert = /ca.pem\n", "no server is https://"),
        ("[ETCD]\nservers = http://10.10.0.1:2379,https://10.10.0.2:2379\nca_cert = /ca.pem\n", "mix http:// and https://"),
        (HTTPS + "cafile = /ca.pem\n", "unknown key 'cafile' in [ETCD]"),
    ]:
        with pytest.raises(ConfigError) as e:
            parse_config(text)
        assert expected in str(e.value), str(e.value)


def test_tls_files_are_loaded_before_anything_uses_them(certs, tmp_path):
    EtcdTls(certs["ca"], certs["cert"], certs["key"]).check()
    EtcdTls(certs["ca"]).check()
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not PEM\n")
    for tls, expected in [
        (EtcdTls(str(tmp_path / "none.pem")), "CA certificate %s: No such file or directory" % (tmp_path / "none.pem")),
        (EtcdTls(str(garbage)), "CA certificate %s: not a PEM certificate" % garbage),
        (EtcdTls(certs["ca"], certs["cert"], str(garbage)), "not a PEM certificate and key"),
        (EtcdTls(certs["ca"], certs["cert"], certs["other_key"]), "the key is not the certificate's"),
        (EtcdTls(certs["ca"], certs["cert"], str(tmp_path)), "client key %s: not a file" % tmp_path),
        (EtcdTls(certs["ca"], certs["cert"]), "got only the certificate"),
    ]:
        with pytest.raises(ValueError) as e:
            tls.check()
        assert expected in str(e.value), str(e.value)
    assert EtcdTls(certs["ca"], certs["cert"], certs["key"]).group_or_world_readable() == []
    os.chmod(certs["key"], 0o644)
    try:
        assert EtcdTls(certs["ca"], certs["cert"], certs["key"]).group_or_world_readable() == [certs["key"]]
    finally:
        os.chmod(certs["key"], 0o600)


def test_a_failed_handshake_is_said_for_what_it_means():
    bad = "(Caused by SSLError(SSLError(1, '[SSL: SSLV3_ALERT_BAD_CERTIFICATE] sslv3 alert bad certificate (_ssl.c:2580)')))"
    assert etcd_tls.why(bad) == "TLS: " + etcd_tls.REFUSED
    assert etcd_tls.why(bad, client_cert=False) == "TLS: " + etcd_tls.NO_CERT
    eof = "SSLError(SSLEOFError(8, 'EOF occurred in violation of protocol (_ssl.c:2427)'))"
    assert etcd_tls.why(eof) == "TLS: " + etcd_tls.CLOSED and etcd_tls.why(eof, client_cert=False) == "TLS: " + etcd_tls.NO_CERT
    verify = "SSLCertVerificationError(1, '[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to get local issuer certificate')"
    assert "not signed by the CA given" in (etcd_tls.why(verify) or "")
    assert "not for this address" in (etcd_tls.why("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: IP address mismatch") or "")
    assert "no TLS there" in (etcd_tls.why("[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1000)") or "")
    assert etcd_tls.why("[Errno 111] Connection refused") is None


def test_an_https_endpoint_needs_a_ca():
    with pytest.raises(ValueError, match="https needs the CA"):
        ConfigStore(["https://10.10.0.1:2379"])
    store = ConfigStore(["https://10.10.0.1:2379"], tls=EtcdTls("/ca.pem", "/c.pem", "/c.key"))
    session = store._session()
    assert session.verify == "/ca.pem" and session.cert == ("/c.pem", "/c.key")


def test_the_lab_gives_its_agents_and_its_etcd_the_tls_files(tmp_path):
    t = Topology.plan("cl", 4, str(tmp_path), nodes=2)
    t.own_etcd_tls()
    assert t.etcd_urls == ["https://10.10.0.1:2379"]
    conf = parse_config(t.agent_conf(2))
    assert conf.etcd.servers == ("https://10.10.0.1:2379",) and conf.etcd.tls == t.etcd_tls
    assert t.layout()["etcd"]["tls"] == {"ca": "%s/etcd-tls/ca.pem" % tmp_path, "cert": "%s/etcd-tls/client.pem" % tmp_path,
                                         "key": "%s/etcd-tls/client.key" % tmp_path}  # fmt: skip
    assert etcd.layout_tls(t.layout()) == t.etcd_tls
    args = etcd.arguments("fabric", "10.10.0.1", "/data", tls=etcd.ServerTls("/ca.pem", "/etcd.pem", "/etcd.key"))
    assert "--client-cert-auth" in args and "--peer-client-cert-auth" in args
    flags = dict(zip(args[1:13:2], args[2:13:2], strict=True)) if args[0] == "--client-cert-auth" else {}
    assert flags.get("--trusted-ca-file") == "/ca.pem" and flags.get("--cert-file") == "/etcd.pem" and flags.get("--key-file") == "/etcd.key"
    assert args[args.index("--listen-client-urls") + 1] == "https://10.10.0.1:2379"
    assert args[args.index("--listen-peer-urls") + 1] == "https://10.10.0.1:2380"
    plain = Topology.plan("cl", 4, str(tmp_path), nodes=2)
    assert plain.layout()["etcd"]["tls"] is None and "ca_cert" not in plain.agent_conf(1)


def test_a_ca_and_its_certificates_keep_their_keys_private(certs):
    assert mode(os.path.join(certs["dir"], "ca")) == 0o700
    for key in (certs["ca_key"], certs["key"]):
        assert mode(key) == 0o600
    assert mode(certs["cert"]) & 0o077 != 0o077  # certificates are public; only keys are private
    assert sorted(os.listdir(os.path.join(certs["dir"], "ca"))) == ["ca.key", "ca.pem", "ca.srl", "client.key", "client.pem"]


def test_the_labs_files_are_written_private_and_put_right(tmp_path):
    files = StateDir(str(tmp_path / "root"), "ab")
    files.begin()
    assert mode(files.dir) == 0o700 and mode(files.path("created")) == 0o600
    files.write("secret", "s3cret")
    assert mode(files.path("secret")) == 0o600
    with open(files.path("layout.json.tmp"), "w") as f:  # a crash's leftover, world-readable
        f.write("{}")
    os.chmod(files.path("layout.json.tmp"), 0o644)
    files.write("layout.json", "{}")
    assert mode(files.path("layout.json")) == 0o600
    os.chmod(files.dir, 0o755)
    os.chmod(files.path("secret"), 0o644)
    node = files.path("compute1")
    os.makedirs(node)
    Path(node, "agent.conf").write_text("[DEFAULT]\n")
    os.chmod(Path(node, "agent.conf"), 0o640)
    fixed = files.private([node])
    assert sorted(fixed) == sorted(["%s (was 0755)" % files.dir, "%s (was 0644)" % files.path("secret"), "%s/agent.conf (was 0640)" % node])
    assert mode(files.dir) == 0o700 and mode(files.path("secret")) == 0o600 and mode(os.path.join(node, "agent.conf")) == 0o600
    assert files.private([node]) == []


def test_the_agents_state_is_made_private_and_put_right(tmp_path):
    paths = StatePaths.of(str(tmp_path / "state"))
    assert paths.private() == [] and mode(paths.root) == 0o700
    os.makedirs(paths.ports)
    os.chmod(paths.ports, 0o755)
    Path(paths.ports, "p1.json").write_text("{}")
    os.chmod(Path(paths.ports, "p1.json"), 0o644)
    Path(paths.cluster).write_text("{}")
    os.chmod(paths.cluster, 0o604)
    Path(paths.flows).write_text("")
    os.chmod(paths.flows, 0o644)  # the flow table: not a secret, left as it is (the directory keeps others out)
    os.symlink("/etc/passwd", os.path.join(paths.root, "linklocal.json"))  # a link is never followed
    fixed = paths.private()
    assert sorted(fixed) == sorted(["%s (was 0755)" % paths.ports, "%s/p1.json (was 0644)" % paths.ports, "%s (was 0604)" % paths.cluster])
    assert mode(paths.flows) == 0o644 and mode("/etc/passwd") == 0o644


def test_the_control_socket_is_root_s_alone_from_the_start(tmp_path):
    path = str(tmp_path / "agent.sock")
    with open(path, "w") as f:  # a stale file where the socket goes: replaced
        f.write("stale")

    async def run() -> None:
        server = ControlServer(path, {op: (lambda request: None) for op in OPS}, ())
        await server.start()
        try:
            assert stat.S_ISSOCK(os.lstat(path).st_mode) and mode(path) == 0o600
            assert sorted(os.listdir(tmp_path)) == ["agent.sock"]  # no private directory left behind
            reader, writer = await asyncio.open_unix_connection(path)
            writer.close()
            await writer.wait_closed()
        finally:
            await server.stop()
        assert not os.path.exists(path)

    asyncio.run(run())
    s = socket.socket(socket.AF_UNIX)
    with pytest.raises(FileNotFoundError):
        s.connect(path)
    s.close()
