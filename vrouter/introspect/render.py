"""The introspect's pages for a browser: the static files a Sandesh page names (our own XSLT
stylesheet and CSS), which answer a client wants (XML, as the real agent sends, or HTML), and the
HTML itself, made on the server with the same stylesheet.

Browsers are dropping XSLT (Chromium plans it off by default from M158), so a page a browser asks for
is rendered here: lxml applies static/universal_parse.xsl exactly as a browser with XSLT would, and
the two renderings are the same.  Scripts (ist, contrail-scrape, nlewo's CLI, curl) keep getting the
XML: they send ``Accept: */*`` or no Accept header at all.  Pure: no sockets, no files but the
package's own.
"""

from __future__ import annotations

import html
import math
import threading
from importlib.resources import files

from lxml import etree

XSL_PATH = "/universal_parse.xsl"
CSS_PATH = "/css/style.css"


def _static(name: str) -> bytes:
    return (files(__package__ or "vrouter.introspect") / "static" / name).read_bytes()


# URL path -> (Content-Type, body), as the HTTP server serves them (the Content-Types of Sandesh's server)
STATIC: dict[str, tuple[str, bytes]] = {
    XSL_PATH: ("text/xsl", _static("universal_parse.xsl")),
    CSS_PATH: ("text/css", _static("style.css")),
}

_HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
# the media ranges an XML answer satisfies as well as an HTML one would
_XML_TYPES = frozenset({"text/xml", "application/xml", "*/*", "text/*", "application/*"})


def _q(params: list[str]) -> float:
    """The q of a media range's parameters: 1 when absent, 0 when not a number in [0, 1]."""
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() == "q":
            try:
                q = float(value.strip())
            except ValueError:
                return 0.0
            return q if math.isfinite(q) and 0.0 <= q <= 1.0 else 0.0
    return 1.0


def wants_html(accept: str | None, fmt: str | None) -> bool:
    """Whether to answer HTML rather than Sandesh's XML.

    ``fmt`` (a ``format=`` query argument) decides when it is ``html`` or ``xml``; else the Accept
    header: HTML only when it lists text/html (or application/xhtml+xml) with a q greater than that
    of every type an XML answer would satisfy (text/xml, application/xml and the wildcards).  So a
    browser's navigation (``text/html,...,application/xml;q=0.9,*/*;q=0.8``) gets HTML; requests and
    curl (``*/*``) and Go (no header) get XML, as from the real agent; a tie goes to XML.
    """
    if fmt is not None:
        choice = fmt.strip().lower()
        if choice in ("html", "xml"):
            return choice == "html"
    if not accept:
        return False
    html_q, xml_q = 0.0, 0.0
    for media_range in accept.split(","):
        media, *params = media_range.split(";")
        media = media.strip().lower()
        if media in _HTML_TYPES:
            html_q = max(html_q, _q(params))
        elif media in _XML_TYPES:
            xml_q = max(xml_q, _q(params))
    return html_q > xml_q


_compiled = threading.local()


def _stylesheet() -> etree.XSLT:
    """The stylesheet, compiled once in each thread that renders (lxml's advice: a stylesheet is best
    used in the thread that made it; to_html may run in an executor's threads).  It may read
    nothing: no document(), no xsl:include."""
    xslt = getattr(_compiled, "xslt", None)
    if xslt is None:
        parser = etree.XMLParser(resolve_entities=False, no_network=True)
        xslt = _compiled.xslt = etree.XSLT(etree.fromstring(STATIC[XSL_PATH][1], parser), access_control=etree.XSLTAccessControl.DENY_ALL)
    return xslt


def _page(title: str, message: str, xml: bytes) -> bytes:
    """A small HTML page saying what went wrong, with the start of the document, all escaped."""
    start = xml[:400].decode("utf-8", errors="replace")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>%s</title>'
        '<link rel="stylesheet" type="text/css" href="%s"></head><body>'
        '<div class="topbar"><a class="brand" href="/">contrail-vrouter-agent</a><span class="what">introspect</span></div>'
        "<main><h4>%s</h4><p><code>%s</code></p><p>The document begins:</p><pre>%s</pre></main></body></html>\n"
        % (html.escape(title), CSS_PATH, html.escape(title), html.escape(message), html.escape(start))
    ).encode()


def to_html(xml: bytes) -> bytes:
    """``xml`` (a Sandesh page: a module page, a response or a list of responses) rendered as a browser
    rendering it with universal_parse.xsl would show it; a page saying so when it is not XML."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    try:
        doc = etree.fromstring(xml, parser)
    except (etree.XMLSyntaxError, ValueError) as e:
        return _page("Not a Sandesh document", "the page is not well-formed XML: %s" % e, xml)
    try:
        result = _stylesheet()(doc)
    except etree.XSLTApplyError as e:
        return _page("This page could not be rendered", "the stylesheet failed: %s" % e, xml)
    out = bytes(result)
    return out if out.strip() else _page("This page could not be rendered", "the stylesheet gave nothing", xml)
