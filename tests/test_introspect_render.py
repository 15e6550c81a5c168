"""The introspect's HTML: our stylesheet (vrouter/introspect/static/universal_parse.xsl) applied on
the server by render.to_html, the Accept negotiation (render.wants_html), and the same pages in a
real headless Chromium (tests/browser.py) inside a network namespace of the test's own: rendered by
the browser's XSLT from the XML, and by the server for a browser without XSLT.

The sample pages are the research notes' (docs of the real agent's answers, issue 26), re-typed.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote
from xml.sax.saxutils import escape

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree
from lxml import html as lhtml

from tests.browser import BrowserError, browse, browser_available
from tests.helpers import REQUIRE_GUESTS, ROOT
from tests.introspect_samples import (
    AGENT_XML,
    BUFFERS,
    ERROR,
    INTERFACES,
    ITF_DATA,
    KFLOW,
    KSTATE_XML,
    METADATA,
    SAFE,
    TRACE,
    VRF_ODD,
    VRF_PAGE,
    compact,
    itf_page,
)
from vrouter.introspect.render import STATIC, to_html, wants_html


def render(xml: bytes) -> lhtml.HtmlElement:
    out = to_html(xml)
    assert out.startswith(b"<!DOCTYPE html>")
    return lhtml.document_fromstring(out)


def link_to(req: str, value: str) -> str:
    return "Snh_%s?x=%s" % (req, quote(value, safe=SAFE))


def rows(table: lhtml.HtmlElement) -> list[list[str]]:
    """A table's own rows (not those of the tables in its cells), as the text of their cells."""
    return [[c.text_content() for c in tr.xpath("th|td")] for tr in table.xpath("thead/tr|tbody/tr|tr")]


# -- wants_html -----------------------------------------------------------------------------------

CHROMIUM = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"
FIREFOX = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


@pytest.mark.parametrize(
    "accept, fmt, html",
    [
        (CHROMIUM, None, True),
        (FIREFOX, None, True),
        ("*/*", None, False),  # python-requests, curl, contrail-scrape, ist
        (None, None, False),  # Go's http.Get
        ("", None, False),
        ("application/xhtml+xml", None, True),
        ("text/html, */*", None, False),  # a tie goes to XML, what the real agent sends
        ("text/html;q=0.5, text/xml", None, False),
        ("text/html;q=0, */*;q=0.1", None, False),
        ("TEXT/HTML; Q=0.9, */*; q=0.8", None, True),
        ("text/html;q=oops, */*;q=0.1", None, False),
        ("text/*", None, False),
        ("*/*", "html", True),
        (None, "html", True),
        (CHROMIUM, "xml", False),
        (CHROMIUM, "json", True),  # anything else: the Accept header decides
        ("*/*", " HTML ", True),
    ],
)
def test_wants_html(accept, fmt, html):
    assert wants_html(accept, fmt) is html


# -- to_html --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [lambda x: x, compact], ids=["pretty", "compact"])
def test_interfaces_are_one_table_one_row_each(shape):
    doc = render(shape(itf_page()))
    assert [h.text_content() for h in doc.iter("h4")] == ["ItfResp", "Pagination"]
    (table,) = doc.xpath("//table[contains(@class, 'main')]")
    header, *body = rows(table)
    first = etree.fromstring(ITF_DATA)
    assert header == [f.tag for f in first]  # the first ItfSandeshData's fields, in order
    assert "more" not in header
    assert len(body) == len(INTERFACES)
    for row, (vm, _) in zip(body, INTERFACES, strict=True):
        assert row[header.index("vm_name")] == vm
        assert row[header.index("mac_addr")] == "02:1b:2c:3d:4e:5f"
        assert row[header.index("analyzer_name")] == "-"  # empty
    # a struct list in a cell is a table of its own
    (sg,) = table.xpath("tbody/tr[1]/td[%d]/table" % (header.index("sg_uuid_list") + 1))
    assert rows(sg) == [["sg_uuid"], ["5c6d7e8f-0a1b-4c2d-8e3f-4a5b6c7d8e9f"]]
    assert doc.xpath("//title")[0].text_content() == "ItfResp - contrail-vrouter-agent"


def test_links_are_url_encoded():
    doc = render(compact(itf_page()))
    hrefs = {a.text_content(): a.get("href") for a in doc.iter("a")}
    for _, vrf in INTERFACES:
        assert hrefs[vrf] == link_to("VrfListReq", vrf)
    assert hrefs[VRF_ODD] == "Snh_VrfListReq?x=default-domain:admin:vn%202%26b%23c%2Bd%25e:vn2"
    assert hrefs["default-domain:admin:vn1"] == "Snh_VnListReq?x=default-domain:admin:vn1"
    assert hrefs["9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d"] == "Snh_VmListReq?x=9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d"
    # the Pagination: its page keys as links, none for a page there is not
    pager = doc.xpath("//div[@class='pager']")[0]
    assert [(a.text_content(), a.get("href")) for a in pager.iter("a")] == [
        ("first", "Snh_PageReq?x=begin:0,end:99,table:db.interface.0,"),
        ("all", "Snh_PageReq?x=begin:-1,end:-1,table:db.interface.0,"),
    ]
    assert "prev" in pager.text_content() and "0-4/5" in pager.text_content()


@settings(max_examples=150, deadline=None)
@given(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.sampled_from("\u00e9\u4e2d\U0001f600"), min_size=1, max_size=40))
def test_a_link_holds_its_value_url_encoded(value):
    xml = '<MplsResp type="sandesh"><itf type="string" identifier="1" link="ItfReq">%s</itf></MplsResp>' % escape(value)
    (a,) = render(xml.encode()).xpath("//a[starts-with(@href, 'Snh_')]")
    assert a.get("href") == link_to("ItfReq", value)
    assert a.text_content() == value


def test_a_response_is_a_table_of_its_fields():
    doc = render(METADATA)
    assert [h.text_content() for h in doc.iter("h4")] == ["MetadataResponse"]
    (table,) = doc.xpath("//table")
    assert rows(table) == [
        ["metadata_server_port", "8775"],
        ["metadata_requests", "12"],
        ["metadata_responses", "12"],
        ["metadata_proxy_sessions", "12"],
        ["metadata_internal_errors", "0"],
    ]
    assert rows(render(ERROR).xpath("//table")[0]) == [["resp", "   Invalid Input !!!   "]]


def test_kernel_flows_are_one_table_then_the_next_page():
    doc = render(KFLOW)
    main, after = doc.xpath("//table[not(ancestor::table)]")
    header, row = rows(main)
    assert header[:4] == ["index", "rflow", "sip", "sport"] and "tcp_flags" in header
    assert row[header.index("flags")] == " ACTIVE | DNAT | RFLOW_VALID "  # spaces kept
    assert row[header.index("dip")] == "169.254.169.254"
    assert rows(after) == [["flow_handle", "0"]]
    assert after.xpath(".//a/@href") == ["Snh_NextKFlowReq?x=0"]


def test_rows_of_other_fields_keep_their_columns():
    """Optional fields: the columns are the first item's fields then those only later items have; a
    cell whose item lacks the field shows -."""
    item = b'<KFlowInfo><index type="i32" identifier="1">%d</index>%s</KFlowInfo>'
    rflow, tcp = b'<rflow type="i32" identifier="2">9</rflow>', b'<tcp_flags type="string" identifier="20"> SYN </tcp_flags>'
    doc = render(
        b'<KFlowResp type="sandesh"><flow_list type="list" identifier="1"><list type="struct" size="3">%s%s%s</list></flow_list>'
        b'<flow_handle type="string" identifier="2" link="NextKFlowReq">0</flow_handle></KFlowResp>'
        % (item % (1, rflow), item % (2, tcp), item % (3, rflow + tcp))
    )
    (main,) = doc.xpath("//table[contains(@class, 'main')]")
    assert rows(main) == [["index", "rflow", "tcp_flags"], ["1", "9", "-"], ["2", "-", " SYN "], ["3", "9", " SYN "]]


def test_trace_lines_are_cells_of_class_trace():
    doc = render(TRACE)
    lines = [td.text_content() for td in doc.xpath("//td[@class='trace']")]
    assert len(lines) == 2
    assert lines[0] == "1765101600123456 MetadataTrace: GET request for VM : 10.0.0.3 URL : /latest/meta-data/"
    doc = render(BUFFERS)
    assert [(a.text_content(), a.get("href")) for a in doc.xpath("//main//a")] == [
        ("Metadata", "Snh_SandeshTraceRequest?x=Metadata"),
        ("Oper db.interface.0", "Snh_SandeshTraceRequest?x=Oper%20db.interface.0"),
    ]


@pytest.mark.parametrize("page", [AGENT_XML, KSTATE_XML], ids=["agent.xml", "kstate.xml"])
def test_a_module_page_has_a_form_per_request(page):
    module = etree.fromstring(page)
    doc = render(page)
    assert doc.xpath("//h3")[0].text_content() == "%s Introspect" % module.tag
    assert doc.xpath("//title")[0].text_content() == "%s Introspect - contrail-vrouter-agent" % module.tag
    assert doc.xpath("//nav//a/@href") == ["#Snh_%s" % req.tag for req in module]
    forms = doc.xpath("//form")
    assert len(forms) == len(module)
    for req, form in zip(module, forms, strict=True):
        assert (form.get("action"), form.get("method")) == ("Snh_" + req.tag, "get")
        assert [i.get("name") for i in form.xpath(".//input")] == [f.tag for f in req]  # declared order
        assert all(i.get("type") == "text" and not i.get("value") for i in form.xpath(".//input"))
        assert [label.text_content() for label in form.xpath(".//label")] == ["%s (%s)" % (f.tag, f.get("type")) for f in req]
        assert form.xpath(".//button[@type='submit']")[0].text_content() == "Send"


def test_the_page_links_only_our_stylesheet_and_the_index():
    doc = render(METADATA)
    assert doc.xpath("//link/@href") == ["/css/style.css"]
    assert doc.xpath("//script") == []
    assert doc.xpath("//div[@class='topbar']/a")[0].get("href") == "/"
    assert doc.xpath("//div[@class='topbar']/a")[0].text_content() == "contrail-vrouter-agent"


@pytest.mark.parametrize(
    "xml",
    [
        b"",
        b"not xml at all",
        b"<ItfResp><itf_list></ItfResp>",
        b"<a>\xff\xfe</a>",
        b'<?xml version="1.0" encoding="UTF-8"?><x><script>alert(1)</script',
    ],
)
def test_what_does_not_parse_gets_a_page_saying_so(xml):
    out = to_html(xml)
    assert b"Not a Sandesh document" in out
    assert b"<script>" not in out and b"<ItfResp>" not in out  # escaped
    lhtml.document_fromstring(out)


@pytest.mark.parametrize(
    "xml",
    [
        b'<__ItfResp_list type="slist"></__ItfResp_list>',
        b'<ItfResp type="sandesh"><itf_list type="list" identifier="1"><list type="struct" size="0"></list></itf_list>'
        b'<more type="bool" identifier="0">false</more></ItfResp>',
        b'<ItfResp type="sandesh"><itf_list type="list" identifier="1"></itf_list></ItfResp>',
        b'<MplsResp type="sandesh"><mpls_list type="list" identifier="1"><list type="struct" size="1"><MplsSandeshData>'
        b'<label type="i32" identifier="1">17</label><nh type="struct" identifier="3"><NhSandeshData><type type="string" identifier="1">'
        b'interface</type><mac type="list" identifier="9" link="X"><list type="string" size="1"><element>2:42:ac:11:0:2</element></list>'
        b"</mac></NhSandeshData></nh></MplsSandeshData></list></mpls_list></MplsResp>",
        b'<M type="sandesh"><m type="map" identifier="1"><map key="string" value="i32" size="1"><element>a</element>'
        b'<element>1</element></map></m><s type="set" identifier="2"><set type="i32" size="0"></set></s></M>',
        b'<x type="weird"><y>1</y><z><w/></z></x>',
        b"<nothing/>",
        b'<html xmlns="http://www.w3.org/1999/xhtml"><body><a href="agent.xml">agent.xml</a></body></html>',
    ],
    ids=["empty-slist", "empty-list", "list-without-list", "nested", "map-set", "unknown-type", "bare", "index"],
)
def test_any_well_formed_document_renders(xml):
    doc = render(xml)
    assert doc.xpath("//div[@class='topbar']")


def test_nested_structs_and_lists_are_tables_in_cells():
    doc = render(
        b'<MplsResp type="sandesh"><mpls_list type="list" identifier="1"><list type="struct" size="1"><MplsSandeshData>'
        b'<label type="i32" identifier="1">17</label><nh type="struct" identifier="3"><NhSandeshData><type type="string" identifier="1">'
        b'interface</type><itf type="string" identifier="8" link="ItfReq">tap1b2c3d4e-5f</itf><mac type="list" identifier="9">'
        b'<list type="string" size="1"><element>2:42:ac:11:0:2</element></list></mac></NhSandeshData></nh></MplsSandeshData></list>'
        b'</mpls_list><more type="bool" identifier="0">false</more></MplsResp>'
    )
    (main,) = doc.xpath("//table[contains(@class, 'main')]")
    assert rows(main)[0] == ["label", "nh"]
    (nh,) = main.xpath("tbody/tr/td[2]/table")
    assert [r[0] for r in rows(nh)] == ["type", "itf", "mac"]
    assert nh.xpath(".//a/@href") == ["Snh_ItfReq?x=tap1b2c3d4e-5f"]
    assert rows(nh.xpath("tbody/tr[3]/td[2]/table")[0]) == [["2:42:ac:11:0:2"]]


def test_a_thousand_interfaces_render():
    page = compact(itf_page(tuple(("vm%d" % i, "default-domain:admin:vn%d:vn%d" % (i, i)) for i in range(1000))))
    start = time.monotonic()
    doc = render(page)
    assert len(doc.xpath("//table[contains(@class, 'main')]/tbody/tr")) == 1000
    assert time.monotonic() - start < 10  # about 1 s here


def test_threads_render_at_once():
    """The agent renders in an executor's threads: the same pages, whatever the thread."""
    page, expected = compact(itf_page()), to_html(compact(itf_page()))
    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(lambda _: to_html(page), range(64))) == {expected}


def test_static_files():
    assert set(STATIC) == {"/universal_parse.xsl", "/css/style.css"}
    xsl_type, xsl = STATIC["/universal_parse.xsl"]
    css_type, css = STATIC["/css/style.css"]
    assert (xsl_type, css_type) == ("text/xsl", "text/css")
    assert etree.fromstring(xsl).get("version") == "1.0"
    xsl.decode("ascii"), css.decode("ascii")  # no charset question for either
    for body in (css, re.sub(rb'xmlns:xsl="[^"]*"', b"", xsl)):
        assert not re.search(rb"https?:|url\(|@import|<script", body)


# -- a real browser -------------------------------------------------------------------------------

# The pages' server, inside the test's namespace: the sample pages as XML (with our stylesheet and
# CSS), or as to_html renders them when the client wants HTML, as the agent does; one JSON line on
# stdout for each request.  /slow never answers (for browse()'s timeout).
SERVER = r"""
import json, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit
from xml.sax.saxutils import escape
from vrouter.introspect.render import STATIC, to_html, wants_html

PAGES = {p.stem: p.read_bytes() for p in Path(sys.argv[1]).glob("*.xml")}
lock, never = threading.Lock(), threading.Event()

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        url = urlsplit(self.path)
        args = dict(part.partition("=")[::2] for part in url.query.split("&") if part)  # as Sandesh: no + for space
        x = unquote(args.get("x", ""))
        status, ctype, body, answer = 404, "text/html", b"<html><title>404 Not Found</title></html>", "404"
        if url.path == "/slow":
            never.wait()
        if url.path in STATIC:
            status, (ctype, body), answer = 200, STATIC[url.path], "static"
        elif url.path.startswith("/Snh_") and url.path[5:] in PAGES:
            status, ctype, answer = 200, "text/xml", "xml"
            body = PAGES[url.path[5:]].replace(b"@X@", escape(x).encode())
            if wants_html(self.headers.get("Accept"), unquote(args["format"]) if "format" in args else None):
                ctype, body, answer = "text/html; charset=utf-8", to_html(body), "html"
        with lock:
            sys.stdout.write(json.dumps({"path": self.path, "x": x, "accept": self.headers.get("Accept"), "answer": answer}) + "\n")
            sys.stdout.flush()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", 8085), Handler)
server.daemon_threads = True
sys.stdout.write(json.dumps({"ready": 8085}) + "\n")
sys.stdout.flush()
server.serve_forever()
"""
BASE = "http://127.0.0.1:8085"


class PageServer:
    """A namespace of the test's own (``tqb`` + 5 hex digits, only its loopback up) and SERVER in it."""

    def __init__(self) -> None:
        self.netns = "tqb" + secrets.token_hex(3)[:5]
        self.dir = tempfile.TemporaryDirectory(prefix="introspect-pages-")
        self.proc: subprocess.Popen | None = None
        self.log: list[dict] = []
        self._buf = b""

    def start(self) -> None:
        Path(self.dir.name, "ItfReq.xml").write_bytes(compact(itf_page()))
        Path(self.dir.name, "VrfListReq.xml").write_bytes(VRF_PAGE)
        subprocess.run(["ip", "netns", "add", self.netns], check=True, capture_output=True)
        subprocess.run(["ip", "-n", self.netns, "link", "set", "lo", "up"], check=True, capture_output=True)
        cmd = ["ip", "netns", "exec", self.netns, sys.executable, "-c", SERVER, self.dir.name]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE)
        self._wait(lambda: self.log, timeout=20, what="the page server to listen")
        assert self.log.pop(0) == {"ready": 8085}

    def _read(self, wait: float = 0) -> bool:
        """Take the server's lines that are there, waiting at most ``wait`` seconds for some; whether
        there were any bytes."""
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        chunk = os.read(fd, 65536) if select.select([fd], [], [], wait)[0] else b""
        self._buf += chunk
        *lines, self._buf = self._buf.split(b"\n")
        self.log += [json.loads(line) for line in lines]
        return bool(chunk)

    def _wait(self, cond, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline or self.proc is None or self.proc.poll() is not None:
                raise AssertionError("timed out waiting for %s (the page server: %s)" % (what, self.proc and self.proc.poll()))
            self._read(wait=min(0.5, max(0.0, deadline - time.monotonic())))

    def requests(self) -> list[dict]:
        """The requests the server answered since the last call, in order: path, x (decoded), accept, answer
        (xml, html, static or 404).  The server writes its line before its answer, so a page the browser has
        shown is in."""
        while self._read():
            pass
        taken, self.log = self.log, []
        return taken

    def pids(self) -> set[int]:
        out = subprocess.run(["ip", "netns", "pids", self.netns], capture_output=True, text=True).stdout
        return {int(p) for p in out.split()}

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for pid in self.pids():  # nothing else of ours should be there, but nothing may stay
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)
        self.dir.cleanup()


@pytest.fixture(scope="module")
def pages() -> Iterator[PageServer]:
    why = browser_available()
    if why:
        if os.environ.get(REQUIRE_GUESTS) == "1":
            pytest.fail("%s (%s=1: the browser tests must run)" % (why, REQUIRE_GUESTS), pytrace=False)
        pytest.skip(why)
    server = PageServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


def answered(pages: PageServer) -> list[tuple[str, str]]:
    """What the server answered since the last look: (path, answer) in order."""
    return [(e["path"], e["answer"]) for e in pages.requests()]


def only_the_server_left(pages: PageServer) -> bool:
    assert pages.proc is not None
    return pages.pids() == {pages.proc.pid}


@pytest.mark.netns
def test_browser_renders_the_xml_with_our_stylesheet(pages, tmp_path):
    shot = tmp_path / "itf.png"
    (page, _) = browse(pages.netns, [{"get": BASE + "/Snh_ItfReq?format=xml"}, {"screenshot": str(shot)}], xslt=True)
    for vm, vrf in INTERFACES:
        assert vm in page["text"] and vrf in page["text"]
    assert page["rows"] == len(render(compact(itf_page())).xpath("//tr"))  # the interface table, one row per interface
    assert page["title"] == "ItfResp - contrail-vrouter-agent"
    assert ("default-domain:admin:vn1:vn1", link_to("VrfListReq", "default-domain:admin:vn1:vn1")) in page["links"]
    log = answered(pages)
    assert log[0] == ("/Snh_ItfReq?format=xml", "xml")
    assert {("/universal_parse.xsl", "static"), ("/css/style.css", "static")} <= set(log)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert only_the_server_left(pages)  # the browser is gone


@pytest.mark.netns
def test_browser_without_xslt_gets_the_same_page_from_the_server(pages):
    (with_xslt,) = browse(pages.netns, [{"get": BASE + "/Snh_ItfReq?format=xml"}], xslt=True)
    pages.requests()
    (page,) = browse(pages.netns, [{"get": BASE + "/Snh_ItfReq"}], xslt=False)
    first, *rest = pages.requests()
    assert (first["path"], first["answer"]) == ("/Snh_ItfReq", "html") and first["accept"].startswith("text/html,")
    assert ("/css/style.css", "static") in [(e["path"], e["answer"]) for e in rest]
    assert "/universal_parse.xsl" not in [e["path"] for e in rest]  # rendered by the server
    for vm, _ in INTERFACES:
        assert vm in page["text"]
    same = ("title", "rows", "text", "links")
    assert {k: page[k] for k in same} == {k: with_xslt[k] for k in same}
    assert only_the_server_left(pages)


@pytest.mark.netns
@pytest.mark.parametrize("xslt", [True, False], ids=["xslt", "server-html"])
def test_clicking_a_vrf_link_asks_for_that_vrf(pages, xslt):
    start = BASE + "/Snh_ItfReq" + ("?format=xml" if xslt else "")
    steps = [{"get": start}, {"click_link": "default-domain:admin:vn1:vn1"}, {"get": start}, {"click_link": VRF_ODD}]
    _, plain, _, odd = browse(pages.netns, steps, xslt=xslt)
    assert plain["url"] == BASE + "/Snh_VrfListReq?x=default-domain:admin:vn1:vn1"
    assert odd["url"] == BASE + "/" + link_to("VrfListReq", VRF_ODD)
    assert "default-domain:admin:vn1:vn1" in plain["text"] and VRF_ODD in odd["text"]  # the name arrived whole
    asked = [e["x"] for e in pages.requests() if e["path"].startswith("/Snh_VrfListReq")]
    assert asked == ["default-domain:admin:vn1:vn1", VRF_ODD]


@pytest.mark.netns
def test_browse_leaves_nothing_behind_on_error_and_timeout(pages):
    with pytest.raises(BrowserError, match="no link"):
        browse(pages.netns, [{"get": BASE + "/Snh_ItfReq"}, {"click_link": "no such link"}])
    assert only_the_server_left(pages)
    start = time.monotonic()
    with pytest.raises(BrowserError, match="more than 8 s"):
        browse(pages.netns, [{"get": BASE + "/slow"}], timeout=8)
    assert time.monotonic() - start < 30
    assert only_the_server_left(pages)
    pages.requests()
