"""``vrouter introspect URL-PATH``: a page of the agent's introspect, printed as text.

For those with neither a browser nor the introspect CLIs: the same page the
agent serves at ``http://<vhost0>:8085/URL-PATH`` (``/``, ``agent.xml``,
``Snh_ItfReq?name=tap``, ...), fetched through the agent's control socket, so
it works from any namespace.  ``--url http://HOST:PORT`` fetches it over HTTP
instead, from this agent or from a real vRouter agent.  Paged answers are
followed to their last row, as ``ist`` does.  ``--json`` prints an answer as
data (``{Response: {field: value}}``, lists and structs nested, numbers typed).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from vrouter.commands.output import UsageError
from vrouter.commands.target import add_target_args, agent_call
from vrouter.messages.control import IntrospectGet, IntrospectPage
from vrouter.tools.introspect import NotSandesh, next_page_key, parse, to_data, to_text

TIMEOUT = 10.0


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "introspect",
        help="a page of the agent's introspect (port 8085) as text",
        description="Print a page of the agent's introspect, as the vRouter agent's Sandesh pages show it: "
        "'/' (the modules), 'agent.xml' (a module's requests), 'Snh_ItfReq' (the interfaces), 'Snh_KFlowReq' (flows), "
        "'Snh_SandeshTraceRequest?x=Metadata' (a trace buffer), ...",
    )
    p.add_argument("path", metavar="URL-PATH", help="the page's path and query, as in its URL (e.g. Snh_ItfReq?name=tap)")
    p.add_argument("--url", help="fetch it over HTTP from this introspect (http://HOST:PORT) instead of through the control socket")
    p.add_argument("--xml", action="store_true", help="print the page's XML as served")
    p.add_argument("--html", action="store_true", help="print the page as served to a browser (HTML)")
    p.add_argument("--columns", help="a table of every element with these fields (comma-separated), e.g. name,vm_name,mdata_ip_addr")
    p.add_argument("--no-follow", action="store_true", help="the first page of a paged answer only")
    add_target_args(p)
    p.set_defaults(func=run)


def _get(args: argparse.Namespace, target: str) -> tuple[int, bytes]:
    if args.url:
        url = args.url.rstrip("/") + target
        if not url.startswith(("http://", "https://")):
            raise UsageError("--url %s: an http:// or https:// URL, such as http://10.10.0.2:8085" % args.url)
        try:
            req = urllib.request.Request(url, headers={"Accept": "text/html" if args.html else "*/*"})
            with urllib.request.urlopen(req, timeout=TIMEOUT) as r:  # noqa: S310 - the user's URL
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise UsageError("cannot fetch %s: %s" % (url, getattr(e, "reason", e))) from None
    page: IntrospectPage = agent_call(args, IntrospectGet(target, args.html))
    return page.status, page.body.encode("utf-8")


def run(args: argparse.Namespace) -> int:
    target = "/" + args.path.lstrip("/")
    status, body = _get(args, target)
    if status == 404:
        raise UsageError("%s: no such page (404); see 'vrouter introspect /' and its module pages" % target)
    if status != 200:
        raise UsageError("%s: HTTP %d: %s" % (target, status, body[:200].decode("utf-8", "replace")))
    if args.xml or args.html or not body.lstrip().startswith(b"<?xml-stylesheet") and target.split("?")[0] not in ("/", "/index.html"):
        sys.stdout.write(body.decode("utf-8", "replace"))  # as served (also a page asked for as HTML with format=html)
        return 0
    try:
        root = parse(body)
        key = "" if args.no_follow else next_page_key(root)
        if key:
            status, body = _get(args, "/Snh_PageReq?x=" + urllib.parse.quote(key, safe=":,"))
            root = parse(body)
        if args.json:
            print(json.dumps(to_data(root), indent=2))
            return 0
        columns = [c.strip() for c in args.columns.split(",") if c.strip()] if args.columns else None
        sys.stdout.write(to_text(root, columns))
    except NotSandesh as e:
        raise UsageError(str(e)) from None
    return 0
