"""agent.conf: INI like contrail-vrouter-agent.conf, read strictly, into one dataclass a section.

Unknown sections or keys and bad values stop start-up with a message that
names them: a typo in a real agent.conf is silently ignored, and costs an
operator an afternoon.
"""

from __future__ import annotations

import configparser
import dataclasses
import ipaddress
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from infra.etcd_tls import EtcdTls
from infra.etcd_wire import is_client_url
from vrouter.messages.proxy import Fairness
from vrouter.services.guests import Settings

LOG_LEVELS = {
    "SYS_EMERG": logging.CRITICAL,
    "SYS_ALERT": logging.CRITICAL,
    "SYS_CRIT": logging.CRITICAL,
    "SYS_ERR": logging.ERROR,
    "SYS_WARN": logging.WARNING,
    "SYS_NOTICE": logging.INFO,
    "SYS_INFO": logging.INFO,
    "SYS_DEBUG": logging.DEBUG,
    "CRITICAL": logging.CRITICAL,
    "ERROR": logging.ERROR,
    "WARNING": logging.WARNING,
    "INFO": logging.INFO,
    "DEBUG": logging.DEBUG,
}


T = TypeVar("T")


class ConfigError(ValueError):
    """agent.conf is wrong; the message names the section, key and value."""


@dataclass
class DefaultSettings:
    """[DEFAULT]"""

    log_level: int = logging.INFO
    log_file: str = ""
    metrics_port: int = 8085  # Prometheus metrics on vhost0 (the vRouter agent's introspect port); 0: none
    hostname: str = ""  # this node's name in the cluster (empty: the host's name)


@dataclass
class VhostSettings:
    """[VIRTUAL-HOST-INTERFACE]"""

    name: str = "vhost0"
    ip: str = ""  # empty: read from the vhost interface


@dataclass
class MetadataSettings:
    """[METADATA]: the metadata proxy's (what one VM may take of it is ``Fairness``, the proxy's own)."""

    proxy_secret: str = ""
    proxy_port: int = 8097
    use_ssl: bool = False
    client_cert: str = ""
    client_key: str = ""
    ca_cert: str = ""
    fairness: Fairness = field(default_factory=Fairness)
    journal_size: int = 500  # requests the journal keeps per instance; 0: no journal
    journal_node_size: int = 50_000  # requests it keeps in all (at least 16 an instance)


@dataclass
class FlowSettings:
    """[FLOWS]: the flow table and the dataplane."""

    entries: int = 524_288
    overflow_entries: int = 0  # 0: 20% of entries
    cache_timeout: int = 180
    max_vm_flows: float = 100.0  # percent of the table one VM may hold, as in contrail-vrouter-agent.conf
    max_vm_linklocal_flows: int = 2048
    max_system_linklocal_flows: int = 2048
    vm_queue_length: int = 4096  # packets of one VM the kernel queues for the dataplane before it drops
    vm_flow_setup_rate: int = 0  # flows one VM may set up a second (0: no limit)
    dataplane_workers: int = 0  # processes reading the queues (0: one a core, at most 4)
    datapath: str = "nfqueue"  # nfqueue: every packet through the Python engine; ebpf: live flows in the kernel

    def vm_flow_limit(self, capacity: int) -> int:
        """max_vm_flows in entries (0: no limit below the table's own size)."""
        if self.max_vm_flows >= 100:
            return 0
        return max(2, int(capacity * self.max_vm_flows / 100))


@dataclass
class EtcdSettings:
    """[ETCD]: the cloud's configuration store."""

    servers: tuple[str, ...] = ()  # http(s)://IP:PORT of etcd; none: the local files alone
    key_prefix: str = "/vrouter/"
    ca_cert: str = ""  # https: the CA that signed etcd's certificate (as [SANDESH] sandesh_ca_cert)
    certfile: str = ""  # ... this agent's client certificate and its key (sandesh_certfile, sandesh_keyfile)
    keyfile: str = ""

    @property
    def tls(self) -> EtcdTls | None:
        """The files https servers are reached with (None: every server is http)."""
        return EtcdTls(self.ca_cert, self.certfile, self.keyfile) if self.ca_cert else None


@dataclass
class AgentConfig:
    """agent.conf, a dataclass a section; [SERVICES] is the guests' services' own ``Settings``."""

    default: DefaultSettings = field(default_factory=DefaultSettings)
    vhost: VhostSettings = field(default_factory=VhostSettings)
    metadata: MetadataSettings = field(default_factory=MetadataSettings)
    flows: FlowSettings = field(default_factory=FlowSettings)
    services: Settings = field(default_factory=Settings)
    etcd: EtcdSettings = field(default_factory=EtcdSettings)


def _bool(section: str, key: str, value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError("[%s] %s = %r: not a boolean (true or false)" % (section, key, value))


DATAPATHS = ("nfqueue", "ebpf")


def _datapath(section: str, key: str, value: str) -> str:
    v = value.strip().lower()
    if v not in DATAPATHS:
        raise ConfigError("[%s] %s = %r: nfqueue (every packet through the agent) or ebpf (live flows in the kernel)" % (section, key, value))
    return v


def _int(section: str, key: str, value: str, lo: int, hi: int) -> int:
    try:
        n = int(value.strip())
    except ValueError:
        raise ConfigError("[%s] %s = %r: not an integer" % (section, key, value)) from None
    if not lo <= n <= hi:
        raise ConfigError("[%s] %s = %d: out of range %d..%d" % (section, key, n, lo, hi))
    return n


def _percent(section: str, key: str, value: str) -> float:
    try:
        n = float(value.strip())
    except ValueError:
        raise ConfigError("[%s] %s = %r: not a number" % (section, key, value)) from None
    if not 0 < n <= 100:
        raise ConfigError("[%s] %s = %s: a percentage of the flow table, above 0 and at most 100" % (section, key, value))
    return n


def _seconds(section: str, key: str, value: str) -> float:
    try:
        n = float(value.strip())
    except ValueError:
        raise ConfigError("[%s] %s = %r: not a number of seconds" % (section, key, value)) from None
    if not 0 < n <= 3600:
        raise ConfigError("[%s] %s = %s: out of range (0, 3600] seconds" % (section, key, value))
    return n


def _ip(section: str, key: str, value: str) -> str:
    v = value.strip()
    if not v:
        return ""
    try:
        return str(ipaddress.ip_interface(v).ip)
    except ValueError:
        raise ConfigError("[%s] %s = %r: not an IP address" % (section, key, value)) from None


def parse_log_level(section: str, key: str, value: str) -> int:
    v = value.strip().upper()
    if v not in LOG_LEVELS:
        raise ConfigError("[%s] %s = %r: one of %s" % (section, key, value, ", ".join(LOG_LEVELS)))
    return LOG_LEVELS[v]


def _str(section: str, key: str, value: str) -> str:
    return value.strip()


def _ip_list(section: str, key: str, value: str) -> tuple[str, ...]:
    out = []
    for item in value.replace(",", " ").split():
        try:
            out.append(str(ipaddress.IPv4Address(item)))
        except ValueError:
            raise ConfigError("[%s] %s = %r: %r is not an IPv4 address" % (section, key, value, item)) from None
    return tuple(out)


def _urls(section: str, key: str, value: str) -> tuple[str, ...]:
    out = []
    for item in (i.strip() for i in value.split(",")):
        if not is_client_url(item):
            raise ConfigError("[%s] %s = %r: %r is not a URL such as http://10.10.0.1:2379" % (section, key, value, item))
        out.append(item.rstrip("/"))
    return tuple(out)


def _key_prefix(section: str, key: str, value: str) -> str:
    if not re.fullmatch(r"/([A-Za-z0-9_.-]+/)*", value):
        raise ConfigError("[%s] %s = %r: a key prefix such as /vrouter/ (starting and ending with /)" % (section, key, value))
    return value


def _hostname(section: str, key: str, value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", value):
        raise ConfigError("[%s] %s = %r: a node name (letters, digits, . _ -)" % (section, key, value))
    return value


def _domain(section: str, key: str, value: str) -> str:
    v = value.strip().strip(".").lower()
    if v and not all(label and len(label) <= 63 and label.replace("-", "").isalnum() for label in v.split(".")):
        raise ConfigError("[%s] %s = %r: not a DNS domain name" % (section, key, value))
    return v


def _pem(section: str, key: str, value: str) -> str:
    if value.strip().upper() not in ("", "PEM"):
        raise ConfigError("[%s] %s = %r: only PEM certificates are supported" % (section, key, value))
    return "PEM"


Parser = Callable[[str, str, str], object]
ACCEPTED = ""  # the attribute of a key that is checked and then not used

# section -> key -> (where in AgentConfig, parser)
SCHEMA: dict[str, dict[str, tuple[str, Parser]]] = {
    "DEFAULT": {
        "log_level": ("default.log_level", parse_log_level),
        "log_file": ("default.log_file", _str),
        # This project's: the vRouter agent serves its introspect on this port ([DEFAULT]
        # http_server_port); here it is the Prometheus metrics' port, 0 to serve none.
        "metrics_port": ("default.metrics_port", lambda s, k, v: _int(s, k, v, 0, 65535)),
        # contrail-vrouter-agent.conf's: this node's name among the cluster's nodes
        "hostname": ("default.hostname", _hostname),
    },
    # This project's: where the cloud's configuration lives (the real agent gets it from the
    # control node over XMPP; here from etcd, which every agent watches)
    "ETCD": {
        "servers": ("etcd.servers", _urls),
        "key_prefix": ("etcd.key_prefix", _key_prefix),
        # TLS to an https:// etcd, named as the agent's [SANDESH] TLS keys are (sandesh_ca_cert, ...)
        "ca_cert": ("etcd.ca_cert", _str),
        "certfile": ("etcd.certfile", _str),
        "keyfile": ("etcd.keyfile", _str),
    },
    "VIRTUAL-HOST-INTERFACE": {
        "name": ("vhost.name", _str),
        "ip": ("vhost.ip", _ip),
        # contrail-vrouter-agent.conf's, checked and not used: netns_setup.sh sets vhost0's route
        "gateway": (ACCEPTED, _ip),
    },
    "METADATA": {
        "metadata_proxy_secret": ("metadata.proxy_secret", _str),
        "metadata_proxy_port": ("metadata.proxy_port", lambda s, k, v: _int(s, k, v, 1, 65535)),
        "metadata_use_ssl": ("metadata.use_ssl", _bool),
        "metadata_client_cert": ("metadata.client_cert", _str),
        "metadata_client_cert_type": (ACCEPTED, _pem),  # PEM is the only type Python's ssl loads
        "metadata_client_key": ("metadata.client_key", _str),
        "metadata_ca_cert": ("metadata.ca_cert", _str),
        # This project's own keys (the vRouter agent has none of these): limits per VM.
        "metadata_header_timeout": ("metadata.fairness.header_timeout", _seconds),
        "metadata_max_connections_per_vm": ("metadata.fairness.max_connections_per_vm", lambda s, k, v: _int(s, k, v, 1, 1 << 20)),
        # Rate limiting as Neutron's metadata agent names it ([metadata_rate_limiting] there).
        "metadata_rate_limit_enabled": ("metadata.fairness.rate_limit", _bool),
        "metadata_base_window_duration": ("metadata.fairness.base_window", _seconds),
        "metadata_base_query_rate_limit": ("metadata.fairness.base_limit", lambda s, k, v: _int(s, k, v, 1, 1 << 30)),
        "metadata_burst_window_duration": ("metadata.fairness.burst_window", _seconds),
        "metadata_burst_query_rate_limit": ("metadata.fairness.burst_limit", lambda s, k, v: _int(s, k, v, 1, 1 << 30)),
        "metadata_journal_size": ("metadata.journal_size", lambda s, k, v: _int(s, k, v, 0, 100_000)),
        "metadata_journal_node_size": ("metadata.journal_node_size", lambda s, k, v: _int(s, k, v, 1000, 10_000_000)),
    },
    "FLOWS": {
        "flow_entries": ("flows.entries", lambda s, k, v: _int(s, k, v, 4, 1 << 24)),
        "flow_overflow_entries": ("flows.overflow_entries", lambda s, k, v: _int(s, k, v, 0, 1 << 24)),
        "flow_cache_timeout": ("flows.cache_timeout", lambda s, k, v: _int(s, k, v, 1, 86400)),
        "max_vm_flows": ("flows.max_vm_flows", _percent),
        "max_vm_linklocal_flows": ("flows.max_vm_linklocal_flows", lambda s, k, v: _int(s, k, v, 1, 1 << 24)),
        "max_system_linklocal_flows": ("flows.max_system_linklocal_flows", lambda s, k, v: _int(s, k, v, 1, 1 << 24)),
        # This project's: a queue per VM (its length), and the per-VM flow set-up rate the vRouter has
        "vm_queue_length": ("flows.vm_queue_length", lambda s, k, v: _int(s, k, v, 16, 65536)),
        "vm_flow_setup_rate": ("flows.vm_flow_setup_rate", lambda s, k, v: _int(s, k, v, 0, 1 << 24)),
        # ... and how many dataplane workers (the table's writers: at most the 4 ways of a bucket)
        "dataplane_workers": ("flows.dataplane_workers", lambda s, k, v: _int(s, k, v, 0, 4)),
        # ... and which datapath forwards: the Python engine alone, or the kernel's eBPF program
        "datapath": ("flows.datapath", _datapath),
    },
    "SERVICES": {
        "dhcp_lease_time": ("services.dhcp_lease_time", lambda s, k, v: _int(s, k, v, 4, 0xFFFFFFFF)),
        "dns_domain": ("services.dns_domain", _domain),
        "dns_forwarders": ("services.dns_forwarders", _ip_list),
        "ra_interval": ("services.ra_interval", _seconds),
    },
}


class _KeysAsWritten(configparser.ConfigParser):
    def optionxform(self, optionstr: str) -> str:
        return optionstr


def _with(obj: T, path: list[str], value: object) -> T:
    """``obj`` with the field at ``path`` (names of nested dataclasses) set to ``value``."""
    head, rest = path[0], path[1:]
    return dataclasses.replace(obj, **{head: _with(getattr(obj, head), rest, value) if rest else value})  # type: ignore[type-var]


def parse_config(text: str, source: str = "agent.conf") -> AgentConfig:
    parser = _KeysAsWritten(interpolation=None, default_section="__none__")
    try:
        parser.read_string(text, source=source)
    except configparser.Error as e:
        raise ConfigError("%s: %s" % (source, str(e).splitlines()[0])) from None
    cfg = AgentConfig()
    for section in parser.sections():
        known = SCHEMA.get(section)
        if known is None:
            raise ConfigError("%s: unknown section [%s] (known: %s)" % (source, section, ", ".join(SCHEMA)))
        for key, value in parser.items(section):
            if key not in known:
                raise ConfigError("%s: unknown key %r in [%s] (known: %s)" % (source, key, section, ", ".join(known)))
            path, conv = known[key]
            parsed = conv(section, key, value)
            if path != ACCEPTED:
                cfg = _with(cfg, path.split("."), parsed)
    if cfg.metadata.use_ssl and not cfg.metadata.ca_cert:
        raise ConfigError("%s: [METADATA] metadata_use_ssl needs metadata_ca_cert" % source)
    _check_etcd_tls(cfg.etcd, source)
    return cfg


def _check_etcd_tls(etcd: EtcdSettings, source: str) -> None:
    """https servers need ca_cert; the TLS keys need https servers; a certificate needs its key."""
    schemes = {url.split(":", 1)[0] for url in etcd.servers}
    given = [k for k in ("ca_cert", "certfile", "keyfile") if getattr(etcd, k)]
    if schemes == {"http", "https"}:
        raise ConfigError("%s: [ETCD] servers mix http:// and https:// URLs: one etcd cluster speaks one or the other" % source)
    if "https" in schemes and not etcd.ca_cert:
        raise ConfigError("%s: [ETCD] servers are https://: ca_cert must name the CA that signed etcd's certificate" % source)
    if given and "https" not in schemes:
        raise ConfigError("%s: [ETCD] %s given, but no server is https:// (TLS files are for https:// URLs)" % (source, ", ".join(given)))
    if bool(etcd.certfile) != bool(etcd.keyfile):
        raise ConfigError("%s: [ETCD] certfile and keyfile go together (the client certificate and its key)" % source)


def load_config(path: str) -> AgentConfig:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError("cannot read %s: %s" % (path, e.strerror)) from None
    except UnicodeDecodeError as e:
        raise ConfigError("%s: not UTF-8 text (byte %d is 0x%02x): save it as UTF-8" % (path, e.start, e.object[e.start])) from None
    return parse_config(text, path)
