"""Link-local services as an operator runs them (needs root): UDP and TCP NAT to the fabric with
reserved ports, several fabric IPs, DNS names, live changes, persistence across restarts, TLS."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import wait_until

# The services' NAT both ways in both datapaths (the program's in ebpf mode); what configures them
# and the proxy's TLS to Nova, the same in both, in nfqueue mode only
pytestmark = [pytest.mark.netns, pytest.mark.datapaths("nfqueue", "ebpf")]

ECHO = str(Path(__file__).with_name("echo_server.py"))
FIRST, LAST = 61000, 65535

ASK = """
import socket, sys
proto, ip, port, sport, payload = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5].encode()
if proto == "udp":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("", sport))
    s.settimeout(3)
    s.sendto(payload, (ip, port))
    data, peer = s.recvfrom(65536)
else:
    s = socket.create_connection((ip, port), timeout=3, source_address=("", sport))
    s.sendall(payload)
    data, peer = s.recv(65536), s.getpeername()
    s.close()
print(peer[0], peer[1], data.decode())
"""


@pytest.fixture(scope="module")
def fabric_echo(host):
    """Echo services on 10.10.0.1 and a second fabric address 10.10.0.3, port 7007."""
    fabric = host.layout["namespaces"]["fabric"]
    subprocess.run(["ip", "-n", fabric, "addr", "add", "10.10.0.3/24", "dev", "eth0"], check=True)
    proc = subprocess.Popen(["ip", "netns", "exec", fabric, sys.executable, ECHO, "7007", "10.10.0.1", "10.10.0.3"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "ready"
        yield
    finally:
        proc.stdin.close()
        proc.kill()
        proc.wait(10)


def ask(host, vm, proto, ip, port, sport, payload="hello"):
    """(peer ip, peer port, fabric's local address, what the fabric saw as our address, echoed data) or None."""
    r = host.in_vm(vm, sys.executable, "-c", ASK, proto, ip, str(port), str(sport), payload, timeout=20)
    if r.returncode != 0:
        return None
    peer_ip, peer_port, local, seen, data = r.stdout.strip().split(" ", 4)
    return peer_ip, int(peer_port), local, seen, data


def provision(host, *args):
    r = host.cli("linklocal", "add", *args)
    assert r.returncode == 0, r.stderr
    return r


def test_udp_and_tcp_services_nat_to_the_fabric(host, fabric_echo):
    provision(host, "--linklocal_service_name", "echo", "--linklocal_service_ip", "169.254.100.1", "--linklocal_service_port", "7",
              "--ipfabric_service_ip", "10.10.0.1", "--ipfabric_service_port", "7007")  # fmt: skip
    for proto, sport in (("udp", 42000), ("tcp", 42001)):
        got = ask(host, 0, proto, "169.254.100.1", 7, sport)
        assert got is not None, proto
        peer_ip, peer_port, local, seen, data = got
        assert (peer_ip, peer_port, local, data) == ("169.254.100.1", 7, "10.10.0.1:7007", "hello")
        seen_ip, seen_port = seen.split(":")
        assert seen_ip == host.layout["vhost0"]["ip"] and FIRST <= int(seen_port) <= LAST
        if proto == "udp":
            flows = host.cli_json("flow", "--match", "169.254.100.1:7")
            f = [f for f in flows if f["sport"] == sport][0]
            assert f["action"] == "NAT" and f["nat_sport"] == int(seen_port) and f["proto"] == 17
    # the TCP flow is closed: its pair and its reserved port go
    wait_until(lambda: not [f for f in host.cli_json("flow", "-l") if f["sport"] == 42001], 15, "the closed TCP flow to go")
    sockets = host.in_compute("ss", "-Htan", "src", host.layout["vhost0"]["ip"]).stdout
    assert not [line for line in sockets.splitlines() if FIRST <= int(line.split()[3].rsplit(":", 1)[1]) <= LAST]


def test_several_fabric_ips_are_all_used(host, fabric_echo):
    provision(host, "--linklocal_service_name", "echo2", "--linklocal_service_ip", "169.254.100.2", "--linklocal_service_port", "7",
              "--ipfabric_service_ip", "10.10.0.1", "--ipfabric_service_ip", "10.10.0.3", "--ipfabric_service_port", "7007")  # fmt: skip
    seen = {ask(host, 0, "udp", "169.254.100.2", 7, 42100 + i)[2] for i in range(24)}
    assert seen == {"10.10.0.1:7007", "10.10.0.3:7007"}


def test_fabric_dns_name(host, fabric_echo):
    provision(host, "--linklocal_service_name", "byname", "--linklocal_service_ip", "169.254.100.3", "--linklocal_service_port", "7",
              "--ipfabric_dns_service_name", "nova.fabric", "--ipfabric_service_port", "7007")  # fmt: skip
    got = wait_until(lambda: ask(host, 0, "udp", "169.254.100.3", 7, 42200), 15, "the name to be resolved")
    assert got[2] == "10.10.0.1:7007"


def test_metadata_service_by_dns_name(host):
    # Nova given by name, as operators often do: the proxy relays to what the name resolved to
    by_ip = ["--linklocal_service_name", "metadata", "--linklocal_service_ip", "169.254.169.254", "--linklocal_service_port", "80"]
    provision(host, *by_ip, "--ipfabric_dns_service_name", "nova.fabric", "--ipfabric_service_port", "8775")
    try:
        code, body = wait_until(lambda: (lambda r: r if r[0] == 200 else None)(host.metadata(0)), 15, "metadata through the resolved name")
        assert json.loads(body)["uuid"] == host.vms[0]["instance_uuid"]
    finally:
        provision(host, *by_ip, "--ipfabric_service_ip", "10.10.0.1", "--ipfabric_service_port", "8775")


def test_live_change_and_removal(host, fabric_echo):
    provision(host, "--linklocal_service_name", "live", "--linklocal_service_ip", "169.254.100.4", "--linklocal_service_port", "7",
              "--ipfabric_service_ip", "10.10.0.1", "--ipfabric_service_port", "7007")  # fmt: skip
    assert ask(host, 0, "udp", "169.254.100.4", 7, 42300)[2] == "10.10.0.1:7007"
    assert host.cli_json("flow", "--match", "169.254.100.4:7")
    # add with the same name replaces; the old flows go, new flows use the new fabric address
    r = provision(host, "--oper", "add", "--linklocal_service_name", "live", "--linklocal_service_ip", "169.254.100.4",
                  "--linklocal_service_port", "7", "--ipfabric_service_ip", "10.10.0.3", "--ipfabric_service_port", "7007")  # fmt: skip
    assert not host.cli_json("flow", "--match", "169.254.100.4:7")
    assert ask(host, 0, "udp", "169.254.100.4", 7, 42300)[2] == "10.10.0.3:7007"
    r = host.cli("linklocal", "--oper", "del", "--linklocal_service_name", "live")
    assert r.returncode == 0, r.stderr
    assert not host.cli_json("flow", "--match", "169.254.100.4:7")
    assert ask(host, 0, "udp", "169.254.100.4", 7, 42301) is None


@pytest.mark.datapaths("nfqueue")
@pytest.mark.parametrize(
    "args, named",
    [
        (["--linklocal_service_ip", "169.254.1.1.1"], "--linklocal_service_ip"),
        (["--linklocal_service_ip", "10.0.0.1"], "169.254.0.0/16"),
        (["--linklocal_service_port", "70000"], "--linklocal_service_port"),
        (["--ipfabric_service_ip", "nope"], "--ipfabric_service_ip"),
        (["--linklocal_service_ip", "169.254.169.254", "--linklocal_service_port", "80"], "already used by service"),
    ],
)
def test_errors_name_the_bad_field(host, args, named):
    base = {"--linklocal_service_name": "bad", "--linklocal_service_ip": "169.254.100.9", "--linklocal_service_port": "7",
            "--ipfabric_service_ip": "10.10.0.1", "--ipfabric_service_port": "7007"}  # fmt: skip
    for k, v in zip(args[::2], args[1::2], strict=True):
        base[k] = v
    r = host.cli("linklocal", "add", *[x for kv in base.items() for x in kv])
    assert r.returncode == 1 and named in r.stderr and "Traceback" not in r.stderr


@pytest.mark.datapaths("nfqueue")
def test_export_import_round_trip(host, tmp_path):
    exported = host.cli("linklocal", "export")
    assert exported.returncode == 0
    data = json.loads(exported.stdout)
    names = {e["linklocal_service_name"] for e in data["linklocal_services"]["linklocal_service_entry"]}
    assert "metadata" in names
    path = tmp_path / "gvc.json"
    path.write_text(exported.stdout)
    assert host.cli("linklocal", "import", str(path)).returncode == 0
    assert json.loads(host.cli("linklocal", "export").stdout) == data
    bad = dict(data)
    bad["linklocal_services"] = {"linklocal_service_entry": data["linklocal_services"]["linklocal_service_entry"] + [{"linklocal_service_name": "x"}]}
    path.write_text(json.dumps(bad))
    r = host.cli("linklocal", "import", str(path))
    assert r.returncode == 1 and "entry" in r.stderr
    assert json.loads(host.cli("linklocal", "export").stdout) == data  # all or nothing


def test_restart_during_traffic_keeps_configuration(host, fabric_echo):
    services = host.cli("linklocal", "export").stdout
    ports = host.cli_json("port", "list")
    load = subprocess.Popen(
        ["ip", "netns", "exec", host.vm_ns(1), "bash", "-c",
         "for i in $(seq 60); do curl -s -o /dev/null -m 2 http://169.254.169.254/openstack; done"],
    )  # fmt: skip
    try:
        assert host.setup("stop-agent").returncode == 0
        assert host.setup("start-agent").returncode == 0
    finally:
        load.wait(120)
    assert host.cli("linklocal", "export").stdout == services
    assert host.cli_json("port", "list") == ports
    wait_until(lambda: host.metadata(0)[0] == 200, 15, "metadata after the restart")
    assert ask(host, 0, "udp", "169.254.100.1", 7, 42400)[2] == "10.10.0.1:7007"


@pytest.mark.datapaths("nfqueue")
def test_tls_to_nova(make_node):
    h = make_node(vms=1, tls=True)
    assert h.layout["nova"]["url"].startswith("https://")
    status, body = h.metadata(0)
    assert status == 200 and json.loads(body)["uuid"] == h.vms[0]["instance_uuid"]
    # Nova with a certificate from another CA: the proxy refuses it, the VM gets 502
    other = Path(h.state_dir) / "other"
    other.mkdir()
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    subprocess.run(["openssl", "req", "-x509", *key, "-days", "1", "-subj", "/CN=rogue", "-addext", "subjectAltName=IP:10.10.0.1",
                    "-keyout", str(other / "k.pem"), "-out", str(other / "c.pem")], check=True, capture_output=True)  # fmt: skip
    assert h.setup("stop-nova").returncode == 0
    rogue = subprocess.Popen(["ip", "netns", "exec", h.layout["namespaces"]["fabric"], str(Path(sys.executable)), "-m", "vrouter.cli",
                              "nova-metadata", "--instances", h.state_dir + "/instances.json", "--listen", "10.10.0.1",
                              "--secret-file", h.state_dir + "/secret", "--tls-cert", str(other / "c.pem"),
                              "--tls-key", str(other / "k.pem")], stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert "metadata API on" in rogue.stderr.readline()
        assert h.metadata(0)[0] == 502
    finally:
        rogue.terminate()
        rogue.wait(10)
