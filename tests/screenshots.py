"""Screenshots of introspect pages in a real headless Chromium (tests/browser.py), for the docs.

    python -m tests.screenshots --netns NS --url URL --out FILE.png [--no-xslt] [--full-page] [--click TEXT] [--scroll-to COLUMN]

Run from the project's directory, as root.  Chromium runs inside network namespace NS (a compute
node's, say), so URL is an address seen from there: ``http://VHOST0_IP:8085/Snh_ItfReq``.  By
default Chromium applies the pages' XSLT stylesheet itself (a ``text/html`` Accept makes the agent
answer HTML, so add ``?format=xml`` to see the browser's own rendering); ``--no-xslt`` turns XSLT off,
as the browsers dropping it will, to show the HTML the agent renders.  ``--click TEXT`` clicks the
first link whose text is TEXT before the shot; ``--full-page`` shoots the whole page, not the
1280x900 window.  Prints where the browser ended up, the page's title and how many table rows it has.
"""

from __future__ import annotations

import argparse
import os
import sys

from tests.browser import BrowserError, browse, browser_available


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.screenshots", description=__doc__.split("\n\n")[0])
    parser.add_argument("--netns", required=True, help="the network namespace Chromium runs in")
    parser.add_argument("--url", required=True, help="the page, as seen from inside the namespace")
    parser.add_argument("--out", required=True, help="the PNG file to write")
    parser.add_argument("--no-xslt", action="store_true", help="Chromium with XSLT turned off (the agent's HTML rendering)")
    parser.add_argument("--full-page", action="store_true", help="the whole page rather than the window")
    parser.add_argument("--click", metavar="TEXT", help="click the first link with this text first")
    parser.add_argument("--scroll-to", metavar="COLUMN", help="scroll a wide table until this column is in view (its first two stay)")
    parser.add_argument("--timeout", type=float, default=60, help="seconds for it all (default 60)")
    args = parser.parse_args(argv)

    if os.geteuid() != 0:
        print("screenshots: must run as root (it runs Chromium in a network namespace)", file=sys.stderr)
        return 2
    if not os.path.exists(os.path.join("/run/netns", args.netns)):
        print("screenshots: no network namespace %r (see ip netns list)" % args.netns, file=sys.stderr)
        return 2
    why = browser_available()
    if why:
        print("screenshots: %s" % why, file=sys.stderr)
        return 2
    steps: list[dict] = [{"get": args.url}]
    if args.click:
        steps.append({"click_link": args.click})
    if args.scroll_to:
        steps.append({"scroll_to": args.scroll_to})
    out = os.path.abspath(args.out)
    steps.append({"screenshot": out, "full_page": args.full_page})
    try:
        page = browse(args.netns, steps, timeout=args.timeout, xslt=not args.no_xslt)[-1]
    except BrowserError as e:
        print("screenshots: %s" % e, file=sys.stderr)
        return 1
    print("%s: %s (%r, %d table rows)" % (out, page["url"], page["title"], page["rows"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
