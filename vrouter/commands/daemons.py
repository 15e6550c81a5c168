"""``vrouter agent`` and ``vrouter nova-metadata``: the two daemons, run in the foreground until
SIGTERM or SIGINT, logging one line per event to stderr (or the agent's ``log_file``)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import ssl
import sys
import threading
from typing import TYPE_CHECKING, Any

from infra.children import run
from infra.etcd_tls import EtcdTls
from infra.etcd_wire import is_client_url
from vrouter.agent.agent import run_agent
from vrouter.agent.config import AgentConfig, load_config, parse_log_level
from vrouter.commands.output import UsageError
from vrouter.commands.target import state_dir

if TYPE_CHECKING:
    from fabric.reports import ReportsServer


def add_parsers(sub: Any) -> None:
    a = sub.add_parser("agent", help="run the agent and dataplane in the foreground (in the compute namespace)",
                       description="Run the vRouter agent: dataplane (NFQUEUE), flow table, metadata proxy (in a "
                       "process of its own, restarted if it dies) and control socket, until SIGTERM or SIGINT. "
                       "Run it inside the compute namespace.")  # fmt: skip
    a.add_argument("--config", help="agent.conf (INI like contrail-vrouter-agent.conf)")
    a.add_argument("--state-dir", help="where ports, services, the flow table and the control socket live")
    a.add_argument("-p", "--prefix", help="shorthand for --state-dir /run/vrouter/PREFIX")
    a.add_argument("--queue", type=int, default=0, help="NFQUEUE number (default 0)")
    a.add_argument("--nova-timeout", type=float, default=30.0, help="seconds without data from Nova before 502 (default 30)")
    a.add_argument("--dns-interval", type=float, default=900.0, help="seconds between re-resolving fabric DNS names (default 900)")
    a.add_argument("--log-level", help="override [DEFAULT] log_level (DEBUG, INFO, SYS_NOTICE, ...)")
    a.set_defaults(func=run_agent_daemon)

    n = sub.add_parser("nova-metadata", help="run a Nova-compatible metadata API",
                       description="Serve instances from a JSON file the way nova-api-metadata does behind a proxy.")  # fmt: skip
    n.add_argument("--instances", required=True, help="JSON file of instances")
    n.add_argument("--listen", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    n.add_argument("--port", type=int, default=8775, help="port (default 8775)")
    n.add_argument("--secret", default="", help="metadata_proxy_shared_secret (default empty)")
    n.add_argument("--secret-file", help="read the shared secret from this file")
    n.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM)")
    n.add_argument("--tls-key", help="its private key")
    n.add_argument("--tls-client-ca", help="require client certificates signed by this CA")
    n.add_argument("--etcd", metavar="URL[,URL]", help="also serve the instances other labs of the cloud keep in this etcd (PREFIX/instances/UUID)")
    n.add_argument("--etcd-prefix", default="/vrouter/", metavar="PREFIX", help="their key prefix (default /vrouter/)")
    n.add_argument("--etcd-ca", metavar="FILE", help="an https:// etcd's CA (PEM): etcd's certificate is verified against it")
    n.add_argument("--etcd-cert", metavar="FILE", help="the client certificate to present to etcd (with --etcd-key)")
    n.add_argument("--etcd-key", metavar="FILE", help="its private key")
    n.add_argument("--reports-dir", metavar="DIR", help="also collect cloud-init's webhook events and phone_home posts "
                   "(POST /events/UUID, /phone-home/UUID) into DIR/UUID.jsonl (off without it)")  # fmt: skip
    n.add_argument("--reports-port", type=int, default=8776, metavar="PORT",
                   help="the collector's port on the --listen address (default 8776; plain HTTP, even with --tls-cert)")  # fmt: skip
    n.add_argument("-v", "--verbose", action="store_true", help="log every request")
    n.set_defaults(func=run_nova_metadata)


def setup_logging(level: int, log_file: str) -> None:
    handler: logging.Handler = logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def run_agent_daemon(args: argparse.Namespace) -> int:
    cfg = load_config(args.config) if args.config else AgentConfig()
    if args.log_level:
        cfg.default.log_level = parse_log_level("command line", "--log-level", args.log_level)
    setup_logging(cfg.default.log_level, cfg.default.log_file)
    if args.config and cfg.metadata.proxy_secret and os.stat(args.config).st_mode & 0o077:
        logging.getLogger("vrouter.agent").warning("%s holds the metadata secret and other users than its owner may read it: chmod 600 it",
                                                   args.config)  # fmt: skip
    run(run_agent(cfg, state_dir(args, single_node=False), args.queue, args.nova_timeout, args.dns_interval))
    return 0


def run_nova_metadata(args: argparse.Namespace) -> int:
    from fabric.nova_metadata import InstanceStore, NovaMetadata, make_server

    setup_logging(logging.DEBUG if args.verbose else logging.INFO, "")
    secret = args.secret
    if args.secret_file:
        try:
            with open(args.secret_file, encoding="utf-8") as f:
                secret = f.read().strip()
        except OSError as e:
            raise UsageError("--secret-file %s: %s" % (args.secret_file, e.strerror)) from None
    ctx = None
    if args.tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.tls_cert, args.tls_key or None)
        if args.tls_client_ca:
            ctx.load_verify_locations(args.tls_client_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
    cloud_tls = etcd_tls(args)  # before listening: a bad file is a usage error, not a half-started Nova
    store = InstanceStore(args.instances)
    if not store.loads:
        raise UsageError("--instances %s: %s" % (args.instances, store.error))
    try:
        server = make_server(args.listen, args.port, NovaMetadata(store, secret), ctx)
    except OSError as e:
        raise UsageError("cannot listen on %s:%d: %s" % (args.listen, args.port, e.strerror)) from None
    reports = start_reports(args.listen, args.reports_port, args.reports_dir) if args.reports_dir else None
    stopping = threading.Event()
    threading.Thread(target=store.watch, args=(stopping,), name="instances-watch", daemon=True).start()
    if args.etcd:
        store.follow([u.strip() for u in args.etcd.split(",") if u.strip()], args.etcd_prefix, cloud_tls)

    def stop(*_: object) -> None:
        stopping.set()
        for s in (server, reports):
            if s is not None:
                threading.Thread(target=s.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    logging.getLogger("vrouter.nova").info("Nova-compatible metadata API on %s:%d", args.listen, args.port)
    server.serve_forever(poll_interval=0.2)
    server.server_close()
    if reports is not None:
        reports.server_close()
    return 0


def etcd_tls(args: argparse.Namespace) -> EtcdTls | None:
    """nova-metadata's --etcd-ca, --etcd-cert and --etcd-key, checked with --etcd's URLs
    (UsageError naming what is wrong)."""
    urls = [u.strip() for u in (args.etcd or "").split(",") if u.strip()]
    for url in urls:
        if not is_client_url(url):
            raise UsageError("--etcd %s: %r is not a URL such as http://10.10.0.1:2379" % (args.etcd, url))
    if any(u.startswith("https:") for u in urls) and not args.etcd_ca:
        raise UsageError("--etcd %s: https needs --etcd-ca FILE, the CA that signed etcd's certificate" % args.etcd)
    if not (args.etcd_ca or args.etcd_cert or args.etcd_key):
        return None
    if not args.etcd_ca:
        raise UsageError("--etcd-cert and --etcd-key go with --etcd-ca (the CA of an https:// etcd)")
    tls = EtcdTls(args.etcd_ca, args.etcd_cert or "", args.etcd_key or "")
    try:
        tls.check()
    except ValueError as e:
        raise UsageError("etcd TLS: %s" % e) from None
    return tls


def start_reports(host: str, port: int, reports_dir: str) -> ReportsServer:
    """The reports collector (``fabric.reports``) on host:port, served from a thread."""
    from fabric.reports import Collector, make_server

    try:
        os.makedirs(reports_dir, exist_ok=True)
    except OSError as e:
        raise UsageError("--reports-dir %s: %s" % (reports_dir, e.strerror)) from None
    try:
        server = make_server(host, port, Collector(reports_dir))
    except OSError as e:
        raise UsageError("--reports-port: cannot listen on %s:%d: %s" % (host, port, e.strerror)) from None
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="reports", daemon=True).start()
    logging.getLogger("vrouter.reports").info("reports collector on %s:%d, into %s", host, port, reports_dir)
    return server
