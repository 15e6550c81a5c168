"""Property-based tests of the configuration the node reads from users and from the cloud:
agent.conf (``parse_config``, ``load_config``), the instances file the Nova stand-in serves
(``parse_instances``, ``InstanceStore``), the values the cluster reads from etcd (networks,
link-local services, ports and routes: ``Network.from_dict``, ``validate_service(s)``, the
``Cluster``'s appliers over any view) and the agent's own files (``Persistence.load``).

Properties: any text, any key with any value, and a valid file with bytes changed, is a
configuration or the parser's documented error, never another exception; what a key's parser
accepts is what the configuration holds; a valid record round-trips; a file that cannot be used
leaves the instances read before in place; whatever etcd holds, the cluster applies what it can
and logs the rest, without an exception."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import uuid as uuidlib

from hypothesis import example, given
from hypothesis import strategies as st

from fabric.nova_metadata import InstancesError, InstanceStore, parse_instances
from tests.fuzz_helpers import DEEP_JSON, VN, fuzz_settings, json_values, mutated
from vrouter.agent.cluster import LINKLOCAL, NETWORKS, NODES, PORTS, ROUTES, Cluster
from vrouter.agent.config import SCHEMA, AgentConfig, ConfigError, load_config, parse_config
from vrouter.agent.paths import StatePaths
from vrouter.agent.persist import Persistence
from vrouter.agent.state import NodeState
from vrouter.model import Network, NetworkError, ServiceError, service_schema, validate_network, validate_service

# -- agent.conf -------------------------------------------------------------------------------------

SECTIONS = sorted(SCHEMA)
LINE_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"), max_size=30)
VALUES = (
    st.sampled_from(
        [
            "0",
            "1",
            "4",
            "65535",
            "100000",
            "-1",
            "true",
            "no",
            "50.5",
            "nan",
            "inf",
            "10.1.1.1",
            "fd00::1",
            "http://10.10.0.1:2379",
            "https://[::1]:0",
            "/vrouter/",
            "novalocal",
            "SYS_DEBUG",
            "ebpf",
            "PEM",
            "",
            " 7 ",
            "1" * 5000,
        ]
    )
    | LINE_TEXT
)


@st.composite
def agent_confs(draw: st.DrawFn) -> str:
    """agent.conf text: sections and keys of the schema (and others), values of any kind."""
    lines = []
    for section in draw(st.lists(st.sampled_from([*SECTIONS, "SANDESH", "default"]), max_size=4, unique=True)):
        lines.append("[%s]" % section)
        keys = sorted(SCHEMA.get(section, {})) or ["x"]
        for key in draw(st.lists(st.sampled_from(keys) | st.sampled_from(["unknown", "Log_Level"]), max_size=4, unique=True)):
            lines.append("%s%s%s" % (key, draw(st.sampled_from(["=", " = ", ": "])), draw(VALUES)))
    return "\n".join(lines) + "\n"


def get(cfg: AgentConfig, path: str) -> object:
    obj: object = cfg
    for name in path.split("."):
        obj = getattr(obj, name)
    return obj


@fuzz_settings(200)
@given(agent_confs() | st.text(max_size=200) | agent_confs().flatmap(lambda t: mutated(t.encode())).map(lambda b: b.decode("utf-8", "replace")))
@example("[DEFAULT]\nlog_level\n")  # a key without a value
@example("[FLOWS]\n[FLOWS]\n")  # a section twice
@example("log_level = SYS_INFO\n")  # a key before any section
@example("[METADATA]\nmetadata_proxy_secret = %(x)s\n")  # what interpolation would have read
def test_any_agent_conf_is_a_configuration_or_a_config_error(text):
    try:
        cfg = parse_config(text)
    except ConfigError as e:
        assert str(e).startswith("agent.conf") or "[" in str(e)
        return
    assert isinstance(cfg, AgentConfig)


@fuzz_settings(300)
@given(st.sampled_from([(s, k) for s in SECTIONS for k in sorted(SCHEMA[s])]), VALUES)
@example(("DEFAULT", "hostname"), " 7 ")  # CI: the key's parser was given the value unstripped
def test_a_value_a_keys_parser_accepts_is_the_value_the_configuration_holds(section_key, value):
    section, key = section_key
    path, conv = SCHEMA[section][key]
    try:
        want = conv(section, key, value.strip())  # configparser strips a value as str.strip() does
    except ConfigError:
        want = ConfigError
    try:
        cfg = parse_config("[%s]\n%s = %s\n" % (section, key, value))
    except ConfigError:
        assert want is ConfigError or key in ("metadata_use_ssl",) or section == "ETCD"  # a rule across keys (ssl needs a CA; https needs one)
        return
    assert want is not ConfigError
    if path:
        assert get(cfg, path) == want


@fuzz_settings(100)
@given(st.binary(max_size=120) | agent_confs().map(str.encode).flatmap(mutated))
@example(b"[DEFAULT]\nlog_file = \xff\n")  # not UTF-8
def test_any_agent_conf_file_is_a_configuration_or_a_config_error(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("conf") / "agent.conf"
    path.write_bytes(raw)
    try:
        load_config(str(path))
    except ConfigError as e:
        assert str(e)  # a message naming the file, or the section, key and value


# -- the instances file -----------------------------------------------------------------------------

UUIDS = st.uuids().map(str)


@st.composite
def instances(draw: st.DrawFn) -> list[dict]:
    """A valid instances file's records."""
    out = []
    for uuid in draw(st.lists(UUIDS, min_size=1, max_size=3, unique=True)):
        inst = {"uuid": uuid, "name": draw(st.text(min_size=1, max_size=10)), "project_id": uuidlib.UUID(uuid).hex}
        if draw(st.booleans()):
            inst["meta"] = draw(st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3))
        if draw(st.booleans()):
            inst["user_data"] = draw(st.text(max_size=20) | st.binary(max_size=20).map(lambda b: {"base64": base64.b64encode(b).decode()}))
        if draw(st.booleans()):
            inst["files"] = [{"path": "/etc/%d" % i, "contents": c} for i, c in enumerate(draw(st.lists(st.text(max_size=5), max_size=2)))]
        if draw(st.booleans()):
            inst.update(ip6="fd00:10:1:1::3", ipv6_prefix="fd00:10:1:1::/64", ipv6_mode=draw(st.sampled_from(["slaac", "none", "dhcpv6-stateful"])))
        out.append(inst)
    return out


@fuzz_settings(120)
@given(instances(), st.booleans())
def test_a_valid_instances_file_is_read_as_written(records, wrapped):
    text = json.dumps({"instances": records} if wrapped else records)
    assert parse_instances(text) == {r["uuid"]: r for r in records}


@fuzz_settings(150)
@given(
    st.text(max_size=80)
    | json_values().map(json.dumps)
    | json_values().map(lambda v: json.dumps({"instances": [v, {"uuid": "u"}]}))
    | st.dictionaries(
        st.sampled_from(
            ["uuid", "meta", "public_keys", "name", "hostname", "project_id", "user_data", "files", "ip6", "ipv6_prefix", "ipv6_mode", "vendor_data2"]
        ),
        json_values(),
        max_size=5,
    ).map(lambda d: json.dumps({"instances": [d]}))
    | instances().map(json.dumps).flatmap(lambda t: mutated(t.encode())).map(lambda b: b.decode("utf-8", "replace"))
)
@example(DEEP_JSON)  # nested deeper than Python's decoder goes: refused, not a RecursionError
@example('{"instances": [{"uuid": "a", "ipv6_mode": ["slaac"]}]}')
def test_any_instances_file_is_instances_or_an_instances_error(text):
    try:
        got = parse_instances(text)
    except InstancesError:
        return
    assert all(isinstance(k, str) and v["uuid"] == k for k, v in got.items())


@fuzz_settings(60)
@given(instances(), st.binary(max_size=80) | st.just(DEEP_JSON.encode()) | st.just(b'[{"uuid": 7}]'))
def test_a_file_that_cannot_be_used_leaves_the_instances_read_before(tmp_path_factory, records, broken):
    path = tmp_path_factory.mktemp("inst") / "instances.json"
    path.write_text(json.dumps({"instances": records}))
    store = InstanceStore(str(path))
    assert store.get(records[0]["uuid"]) == records[0]
    path.write_bytes(broken + b" " * 7)  # another size: the store reads it again
    try:
        parse_instances(path.read_text("utf-8"))
    except (InstancesError, UnicodeDecodeError):
        assert store.get(records[0]["uuid"]) == records[0] and store.error
    else:
        store.get(records[0]["uuid"])


# -- what the cluster reads from etcd ---------------------------------------------------------------

CAUGHT = (ServiceError, NetworkError, TypeError, ValueError, KeyError, AttributeError)  # what the cluster's appliers log and leave out
SERVICE_KEYS = [
    "linklocal_service_name",
    "linklocal_service_ip",
    "linklocal_service_port",
    "ip_fabric_service_ip",
    "ip_fabric_service_port",
    "ip_fabric_DNS_service_name",
    "ipfabric_service_ip",
    "--ipfabric_service_port",
]
SERVICE_VALUES = (
    st.sampled_from(
        [
            "metadata",
            "ntp",
            "169.254.169.254",
            "169.254.1.1",
            "10.10.0.1",
            "fd00::1",
            "80",
            123,
            0,
            70000,
            ["10.10.0.1"],
            ["x"],
            "",
            None,
            "nova.local",
        ]
    )
    | json_values()
)


@st.composite
def services(draw: st.DrawFn) -> dict:
    """A link-local service as global-vrouter-config has it."""
    return {
        "linklocal_service_name": draw(st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True)),
        "linklocal_service_ip": "169.254.%d.%d" % (draw(st.integers(0, 255)), draw(st.integers(0, 255))),
        "linklocal_service_port": draw(st.integers(1, 65535)),
        "ip_fabric_service_ip": draw(st.lists(st.ip_addresses().map(str), min_size=1, max_size=2)),
        "ip_fabric_service_port": draw(st.integers(1, 65535)),
        "ip_fabric_DNS_service_name": draw(st.sampled_from(["", "nova.local"])),
    }


@fuzz_settings(120)
@given(services())
def test_a_valid_service_round_trips(raw):
    s = validate_service(raw)
    assert validate_service(service_schema(s)) == s


@fuzz_settings(150)
@given(
    st.dictionaries(st.sampled_from(SERVICE_KEYS), SERVICE_VALUES, max_size=6)
    | json_values()
    | services().flatmap(lambda s: st.dictionaries(st.sampled_from(SERVICE_KEYS), SERVICE_VALUES, max_size=2).map(lambda d: {**s, **d}))
)
@example(
    {
        **{"linklocal_service_name": "x", "linklocal_service_ip": "169.254.1.1", "linklocal_service_port": 1, "ip_fabric_service_port": 1},
        "ip_fabric_service_ip": 5,
    }
)
def test_any_service_value_is_a_service_or_a_service_error(raw):
    try:
        s = validate_service(raw)
    except ServiceError:
        return
    except AttributeError:
        assert not isinstance(raw, dict)  # not an object at all (the callers check that first)
        return
    assert 1 <= s.port <= 65535 and s.ip.startswith("169.254.")


@st.composite
def networks(draw: st.DrawFn) -> Network:
    third = draw(st.integers(0, 255))
    v6 = draw(st.booleans())
    return validate_network(
        str(draw(st.uuids())),
        "10.%d.%d.0/24" % (draw(st.integers(0, 255)), third),
        draw(st.from_regex(r"[a-z]{1,8}", fullmatch=True)),
        mtu=draw(st.sampled_from([None, 1450, 9000])),
        domain=draw(st.sampled_from([None, "novalocal", "a.b"])),
        subnet6="fd00:%x::/64" % third if v6 else None,
        ipv6_mode=draw(st.sampled_from(["slaac", "dhcpv6-stateful", None])) if v6 else None,
    )


@fuzz_settings(200)
@given(networks())
def test_a_network_round_trips_through_its_etcd_value(net):
    assert Network.from_dict(json.loads(json.dumps(net.to_dict()))) == net


NETWORK_KEYS = [
    "uuid",
    "subnet",
    "name",
    "gateway",
    "dns_server",
    "dhcp",
    "mtu",
    "domain",
    "host_routes",
    "subnet6",
    "gateway6",
    "dns_server6",
    "ipv6_mode",
]


@fuzz_settings(120)
@given(
    networks().flatmap(
        lambda n: st.dictionaries(st.sampled_from(NETWORK_KEYS), json_values() | st.sampled_from(["10.1.1.1", "fd00::1", "x"]), max_size=3).map(
            lambda d: {**n.to_dict(), **d}
        )
    )
)
@example({"uuid": VN, "subnet": "10.1.1.0/24", "host_routes": [{"prefix": "10.8.0.0/16"}]})
@example({"uuid": VN, "subnet": "10.1.1.0/24", "host_routes": 7})
def test_any_network_value_is_a_network_or_refused(raw):
    try:
        Network.from_dict(raw)
    except CAUGHT:
        pass


def view_values() -> st.SearchStrategy:
    """What the cloud's etcd may hold under each of the cluster's prefixes, sane or not."""
    route = st.fixed_dictionaries(
        {
            "address": st.sampled_from(["10.1.1.9", "fd00:10:1:1::9", "x", 5]),
            "node_ip": st.sampled_from(["10.10.0.3", "10.10.0.2", "::1", None]),
            "label": st.sampled_from([19, 16, 2**20, "20", -1, None, True]),
            "vn_uuid": st.sampled_from([VN, "x"]),
            "node": st.sampled_from(["b", "a", None]),
            "vm_name": st.sampled_from(["vm9", "", None]),
        }
    )
    port = st.fixed_dictionaries(
        {
            "node": st.sampled_from(["b", "a"]),
            "vm_name": st.sampled_from(["vm9", "", 7]),
            "vn_uuid": st.sampled_from([VN, None]),
            "ip_address": st.sampled_from(["10.1.1.9", None, []]),
        }
    )
    return st.dictionaries(
        st.sampled_from(
            [
                LINKLOCAL + "metadata",
                LINKLOCAL + "ntp",
                NETWORKS + VN,
                NETWORKS + "x",
                NODES + "b",
                PORTS + "p9",
                ROUTES + VN + "/10.1.1.9",
                ROUTES + VN + "/fd00:10:1:1::9",
                "other/key",
            ]
        ),
        st.one_of(json_values(), route, port, services(), networks().map(lambda n: n.to_dict())),
        max_size=6,
    )


@fuzz_settings(80)
@given(st.lists(view_values(), min_size=1, max_size=3))
def test_the_cluster_applies_any_view_of_etcd_without_an_exception(tmp_path_factory, views):
    """Each applier (``_apply_in_order`` would log what escapes one as a bug), over views that
    follow each other as etcd's watch would change them."""
    logging.getLogger("vrouter.cluster").disabled = True
    state = NodeState()
    cluster = Cluster(state, "a", "10.10.0.2", ("http://127.0.0.1:9",), "/vrouter/", str(tmp_path_factory.mktemp("c") / "cluster.json"), lambda: 0)

    async def apply_all() -> None:
        for view in views:
            cluster.view = dict(view)
            await cluster._apply_services()
            await cluster._apply_networks()
            await cluster._apply_remote()

    try:
        asyncio.run(apply_all())
    finally:
        cluster._writer.shutdown(wait=False)
        logging.getLogger("vrouter.cluster").disabled = False
    assert all(r.node != "a" and 16 <= r.label < 1 << 20 for r in state.remote)


# -- the agent's own files --------------------------------------------------------------------------


@fuzz_settings(100)
@given(
    st.lists(st.binary(max_size=40) | json_values().map(lambda v: json.dumps(v).encode()), max_size=3),
    st.binary(max_size=40)
    | json_values().map(lambda v: json.dumps({"linklocal_services": {"linklocal_service_entry": v}}).encode())
    | st.lists(services() | st.dictionaries(st.sampled_from(SERVICE_KEYS), SERVICE_VALUES, max_size=4), max_size=3).map(
        lambda v: json.dumps({"linklocal_services": {"linklocal_service_entry": v}}).encode()
    ),
)
@example([DEEP_JSON.encode()], b"{}")
@example([], b'{"linklocal_services": {"linklocal_service_entry": 5}}')
def test_the_agents_files_load_what_they_can_and_name_the_rest(tmp_path_factory, port_files, linklocal):
    paths = StatePaths.of(str(tmp_path_factory.mktemp("state")))
    p = Persistence(paths)
    os.makedirs(paths.ports, exist_ok=True)
    for i, raw in enumerate(port_files):
        with open(os.path.join(paths.ports, "p%d.json" % i), "wb") as f:
            f.write(raw)
    with open(paths.linklocal, "wb") as f:
        f.write(linklocal)
    cache = p.load()
    assert len(cache.ports) + sum(str(paths.ports) in problem for problem in cache.problems) == len(port_files)
