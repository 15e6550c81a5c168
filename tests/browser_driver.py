"""The side of tests/browser.py that runs inside the network namespace: drives Debian's Chromium
through selenium and Debian's chromedriver (never Selenium Manager, which would download one).

Run by browse() as ``ip netns exec NS unshare --pid --fork --kill-child --mount-proc PYTHON -m
tests.browser_driver``: chromedriver listens on the namespace's localhost, so the Python that talks
to it must be in the namespace too; and as the first process of its own PID namespace, all that it
starts (chromedriver, Chromium and its helpers) dies with it.

Reads one JSON request on stdin, ``{"steps": [...], "xslt": bool, "profile": DIR, "timeout": S}``,
and writes one JSON answer on stdout, ``{"results": [one per step done], "error": null or why}``.
Steps: ``{"get": URL}``, ``{"click_link": TEXT}`` (the first <a> whose text is TEXT),
``{"screenshot": PATH, "full_page": bool}``; each answered with the page as it then is: url, title,
rows (<tr> count), text (the body's text, at most 20 kB) and links ([text, href], the first 200).
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
TEXT_LIMIT = 20_000
LINK_LIMIT = 200

# Everything that would make Chromium talk to anything but the page asked for is off; the namespace
# it runs in has nothing but the test's own server anyway.
FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--password-store=basic",
    "--window-size=1280,900",
]

SNAPSHOT = """
const links = Array.from(document.querySelectorAll('a')).slice(0, arguments[0])
    .map(a => [a.textContent.trim(), a.getAttribute('href') || '']);
const text = document.body ? document.body.innerText : (document.documentElement ? document.documentElement.textContent : '');
return {title: document.title, rows: document.getElementsByTagName('tr').length, text: text || '', links: links};
"""

FIND_HEADER = "return Array.from(document.querySelectorAll('th')).find(th => th.textContent.trim() === arguments[0]) || null;"
FIND_LINK = "return Array.from(document.querySelectorAll('a')).find(a => a.textContent.trim() === arguments[0]) || null;"


def flags(xslt: bool, profile: str) -> list[str]:
    """Chromium's command line: FLAGS, the profile, and the features off (one --disable-features:
    Chromium reads only the last one given).  xslt=False also turns XSLT off, as the browsers
    dropping it will."""
    features = ["GenerateXSLTWarningBanner"] + ([] if xslt else ["XSLT"])
    return FLAGS + ["--user-data-dir=" + profile, "--disable-features=" + ",".join(features)]


def _wait(cond: Any, timeout: float) -> bool:
    """Poll ``cond`` until it is true or ``timeout`` seconds have passed; whether it became true."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def snapshot(driver: Any) -> dict[str, Any]:
    page = driver.execute_script(SNAPSHOT, LINK_LIMIT)
    return {
        "url": driver.current_url,
        "title": page["title"],
        "rows": page["rows"],
        "text": page["text"].strip()[:TEXT_LIMIT],
        "links": [list(link) for link in page["links"]],
    }


def click_link(driver: Any, text: str, timeout: float) -> None:
    from selenium.common.exceptions import ElementClickInterceptedException, ElementNotInteractableException

    link = driver.execute_script(FIND_LINK, text)
    if link is None:
        raise LookupError("no link %r on %s" % (text, driver.current_url))
    before = driver.current_url
    try:
        link.click()
    except (ElementClickInterceptedException, ElementNotInteractableException):
        driver.execute_script("arguments[0].click();", link)
    # chromedriver waits for a navigation the click started; this covers one that starts late
    _wait(lambda: driver.current_url != before, min(timeout, 10))
    _wait(lambda: driver.execute_script("return document.readyState") == "complete", timeout)


def screenshot(driver: Any, path: str, full_page: bool) -> None:
    if not full_page:
        if not driver.save_screenshot(path):
            raise OSError("could not write the screenshot to %s" % path)
        return
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip})
    with open(path, "wb") as f:
        f.write(base64.b64decode(shot["data"]))


def run(request: dict[str, Any]) -> dict[str, Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    timeout = float(request.get("timeout", 60))
    results: list[dict[str, Any]] = []
    driver = None
    try:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in flags(bool(request.get("xslt", True)), request["profile"]):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
        driver.set_page_load_timeout(timeout)
        for step in request["steps"]:
            if "get" in step:
                driver.get(step["get"])
            elif "click_link" in step:
                click_link(driver, step["click_link"], timeout)
            elif "scroll_to" in step:  # a table's column header, brought into view at the right
                header = driver.execute_script(FIND_HEADER, step["scroll_to"])
                if header is None:
                    raise LookupError("no column %r on %s" % (step["scroll_to"], driver.current_url))
                driver.execute_script("arguments[0].scrollIntoView({inline: 'end', block: 'nearest'});", header)
            elif "screenshot" in step:
                screenshot(driver, step["screenshot"], bool(step.get("full_page")))
            else:
                raise ValueError("unknown step %r (get, click_link, scroll_to, screenshot)" % step)
            results.append(snapshot(driver))
    except Exception as e:  # reported to browse(), which raises it there
        return {"results": results, "error": "%s: %s" % (type(e).__name__, e)}
    finally:
        if driver is not None:
            try:
                driver.quit()
            except Exception:
                pass  # what is left dies with this PID namespace
    return {"results": results, "error": None}


def main() -> int:
    answer = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # whatever else writes to stdout (chromedriver, Chromium) goes to stderr
    answer.write(json.dumps(run(json.load(sys.stdin))))
    answer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
