"""agent.conf, port and link-local validation, the node's state and its files, and the CLI without
an agent."""

import asyncio
import json
import os
import subprocess
import sys

import pytest

from vrouter.agent.config import ConfigError, parse_config
from vrouter.agent.paths import StatePaths
from vrouter.agent.persist import Persistence
from vrouter.agent.state import NodeState, Origin
from vrouter.model import PortError, ServiceError
from vrouter.model import validate_port as port
from vrouter.model import validate_service as service

PORT = {
    "uuid": "7a971aab-a953-4908-b775-780f4c93130b",
    "instance_uuid": "ea57985e-bf75-4454-8b30-1ccc3fec3bd1",
    "vn_uuid": "11111111-2222-3333-4444-555555555555",
    "vm_project_uuid": "f8e2e579-f607-41e5-b775-0a6f28bd2ab9",
    "ip_address": "10.1.1.3",
    "mac": "02:00:0A:01:00:03",
}


def test_config_reads_contrail_sections():
    cfg = parse_config(
        "[DEFAULT]\nlog_level = SYS_DEBUG\n[VIRTUAL-HOST-INTERFACE]\nname = vhost0\nip = 10.10.0.2/24\n"
        "[METADATA]\nmetadata_proxy_secret = abc\nmetadata_proxy_port = 9000\n[FLOWS]\nflow_entries = 4096\n"
    )
    assert (cfg.vhost.ip, cfg.metadata.proxy_secret, cfg.metadata.proxy_port, cfg.flows.entries) == ("10.10.0.2", "abc", 9000, 4096)


@pytest.mark.parametrize(
    "text, named",
    [
        ("[METADATA]\nmetadata_proxy_prot = 1\n", "metadata_proxy_prot"),
        ("[METADATA]\nmetadata_proxy_port = 70000\n", "metadata_proxy_port"),
        ("[METADATA]\nmetadata_use_ssl = maybe\n", "metadata_use_ssl"),
        ("[VIRTUAL-HOST-INTERFACE]\nip = 10.10.0.300\n", "ip"),
        ("[NOPE]\nx = 1\n", "NOPE"),
        ("[DEFAULT]\nlog_level = LOUD\n", "log_level"),
        ("[METADATA]\nmetadata_use_ssl = true\n", "metadata_ca_cert"),
        ("[ETCD]\nservers = 10.10.0.1:2379\n", "servers"),
        ("[ETCD]\nservers = http://10.10.0.1:99999\n", "servers"),
        ("[ETCD]\nkey_prefix = vrouter\n", "key_prefix"),
        ("[DEFAULT]\nhostname = bad name\n", "hostname"),
    ],
)
def test_bad_config_names_the_key(text, named):
    with pytest.raises(ConfigError, match=named):
        parse_config(text)


def test_config_reads_the_cluster_keys():
    cfg = parse_config("[DEFAULT]\nhostname = vr-compute2\n[ETCD]\nservers = http://10.10.0.1:2379, http://10.10.0.9:2379/\nkey_prefix = /cloud/a/\n")
    assert cfg.default.hostname == "vr-compute2" and cfg.etcd.servers == ("http://10.10.0.1:2379", "http://10.10.0.9:2379")
    assert cfg.etcd.key_prefix == "/cloud/a/"
    assert parse_config("").etcd.servers == ()  # none: the local files alone


def test_port_defaults_and_normalisation():
    p = port(PORT)
    assert p.tap_name == "tap7a971aab-a9" and p.mac == "02:00:0a:01:00:03"


@pytest.mark.parametrize(
    "field, value",
    [("uuid", "nope"), ("ip_address", "10.1.1.300"), ("ip_address", "169.254.0.3"), ("mac", "02:00"), ("tap_name", "x" * 16)],
)
def test_bad_port_field_is_named(field, value):
    with pytest.raises(PortError, match=field.replace("_", "-")):
        port(dict(PORT, **{field: value}))


def test_missing_port_field_is_named():
    with pytest.raises(PortError, match="--vn-uuid"):
        port({k: v for k, v in PORT.items() if k != "vn_uuid"})


def _state(tmp_path) -> tuple[NodeState, Persistence]:
    """A node's state whose one subscriber writes the files of ``tmp_path``."""
    files = Persistence(StatePaths.of(str(tmp_path)))
    state = NodeState()
    state.subscribe(files)
    return state, files


def test_ports_keep_their_vif_and_vrf_in_their_files(tmp_path):
    async def go():
        state, files = _state(tmp_path)
        a = await state.plug(port(PORT))
        b = await state.plug(port(dict(PORT, uuid="8a971aab-a953-4908-b775-780f4c93130b", ip_address="10.1.1.4")))
        assert (a.vif, b.vif) == (3, 4) and a.vrf == b.vrf == 1
        assert a.metadata_ip == "169.254.0.3"
        with pytest.raises(PortError, match="ip-address"):
            await state.plug(port(dict(PORT, uuid="9a971aab-a953-4908-b775-780f4c93130b")))
        cache = files.load()
        assert cache.problems == []
        assert {p.uuid: (p.vif, p.vrf) for p in cache.ports} == {a.uuid: (3, 1), b.uuid: (4, 1)}
        again = NodeState()
        for p in cache.ports:
            await again.plug(p, Origin.CACHE)
        assert again.by_vif(4).uuid == b.uuid
        again.subscribe(files)
        await again.unplug(a.uuid)
        assert not os.path.exists(tmp_path / "ports" / (a.uuid + ".json"))
        with pytest.raises(PortError, match="no such port"):
            await again.unplug(a.uuid)
        c = await again.plug(port(dict(PORT, uuid="9a971aab-a953-4908-b775-780f4c93130b", ip_address="10.1.1.5")))
        assert c.vif == 3  # the first free index again

    asyncio.run(go())


def test_a_refused_plug_leaves_the_state_as_it_was(tmp_path):
    class Refuses:
        async def changed(self, change):
            raise PortError("vif0/3: cannot bind its NFQUEUE queue")

    async def go():
        state = NodeState()
        state.subscribe(Refuses())
        with pytest.raises(PortError, match="cannot bind"):
            await state.plug(port(PORT))
        assert state.ports == {} and state.vrfs == {} and state.by_vif(3) is None

    asyncio.run(go())


def test_linklocal_validation_names_fields():
    ok = {"linklocal_service_name": "metadata", "linklocal_service_ip": "169.254.169.254", "linklocal_service_port": 80,
          "ip_fabric_service_ip": ["10.10.0.1"], "ip_fabric_service_port": 8775}  # fmt: skip
    assert service(ok).is_metadata
    with pytest.raises(ServiceError, match="169.254.0.0/16"):
        service(dict(ok, linklocal_service_ip="10.0.0.1"))
    with pytest.raises(ServiceError, match="linklocal_service_port"):
        service(dict(ok, linklocal_service_port=0))
    with pytest.raises(ServiceError, match="ipfabric_service_ip"):
        service(dict(ok, ip_fabric_service_ip=["x"]))
    with pytest.raises(ServiceError, match="linklocal_service_name"):
        service(dict(ok, linklocal_service_name=""))


def test_services_keyed_by_name_and_persisted(tmp_path):
    async def go():
        state, files = _state(tmp_path)
        base = {"linklocal_service_ip": "169.254.169.254", "linklocal_service_port": 80, "ip_fabric_service_ip": ["10.10.0.1"],
                "ip_fabric_service_port": 8775}  # fmt: skip
        await state.add_service(service(dict(base, linklocal_service_name="metadata")))
        await state.add_service(service(dict(base, linklocal_service_name="Metadata", ip_fabric_service_port=8776)))  # replaces
        assert len(state.services) == 1 and state.metadata_service().fabric_port == 8776
        with pytest.raises(ServiceError, match="already used by service"):
            await state.add_service(service(dict(base, linklocal_service_name="other")))
        data = json.load(open(tmp_path / "linklocal.json"))
        entry = data["linklocal_services"]["linklocal_service_entry"][0]
        assert set(entry) == {"linklocal_service_name", "linklocal_service_ip", "linklocal_service_port",
                              "ip_fabric_DNS_service_name", "ip_fabric_service_ip", "ip_fabric_service_port"}  # fmt: skip
        cache = files.load()
        assert cache.problems == [] and cache.services["metadata"].fabric_port == 8776

    asyncio.run(go())


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "vrouter.cli", *args], capture_output=True, text=True, timeout=30, env=env)


@pytest.mark.parametrize("args", [["port", "list"], ["vif", "--list"], ["dropstats"], ["status"], ["flow", "-l"]])
def test_cli_says_when_no_agent_runs(tmp_path, args):
    r = run_cli(*args, "--state-dir", str(tmp_path))
    assert r.returncode == 1
    assert "no vrouter agent is running" in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_bad_arguments_exit_2():
    r = run_cli("port", "frobnicate")
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_agent_config_error_is_one_line(tmp_path):
    conf = tmp_path / "agent.conf"
    conf.write_text("[METADATA]\nmetadata_proxy_port = x\n")
    r = run_cli("agent", "--config", str(conf), "--state-dir", str(tmp_path))
    assert r.returncode == 1 and "metadata_proxy_port" in r.stderr and "Traceback" not in r.stderr


def test_contrail_keys_this_node_does_not_use_are_checked_and_accepted():
    cfg = parse_config("[VIRTUAL-HOST-INTERFACE]\ngateway = 10.10.0.1\n[METADATA]\nmetadata_client_cert_type = PEM\n")
    assert cfg.metadata.proxy_port == 8097
    with pytest.raises(ConfigError, match="gateway"):
        parse_config("[VIRTUAL-HOST-INTERFACE]\ngateway = nowhere\n")
    with pytest.raises(ConfigError, match="metadata_client_cert_type.*only PEM"):
        parse_config("[METADATA]\nmetadata_client_cert_type = DER\n")


def test_services_section_of_agent_conf():
    cfg = parse_config("[SERVICES]\ndhcp_lease_time = 600\ndns_domain = Lab.Example.\ndns_forwarders = 10.10.0.1, 10.10.0.3\n")
    assert (cfg.services.dhcp_lease_time, cfg.services.dns_domain, cfg.services.dns_forwarders) == (600, "lab.example", ("10.10.0.1", "10.10.0.3"))
    with pytest.raises(ConfigError, match="dns_forwarders.*'nowhere' is not an IPv4 address"):
        parse_config("[SERVICES]\ndns_forwarders = nowhere\n")
    with pytest.raises(ConfigError, match="dhcp_lease_time = 1: out of range"):
        parse_config("[SERVICES]\ndhcp_lease_time = 1\n")
