"""Open an HTML report in headless Chromium (Debian `chromium` + `chromium-driver`, via Selenium) and check it.

    python -m sagecast_report.browser runs/stage2/report.html [--screenshot shot.png]
    python -m sagecast_report --runs runs --check      # build the report, then this check

Selenium (the `dev` extra) is imported only here, and only when a check runs.

Checks: no console errors, every <img> decoded (naturalWidth > 0), the four sections and the verdict present,
no horizontal scroll at 1280 px wide. Saves a full-page PNG screenshot. Nothing is downloaded: the browser and
its driver are the system's, found at /usr/bin (or on PATH), with networking features switched off.
"""

from __future__ import annotations

import base64
import shutil
import tempfile
from pathlib import Path

from sagecast_common.cli import UserError, make_parser, run_cli
from sagecast_common.runio import atomic_write_bytes

SECTIONS = ("data", "stage1", "stage2", "verdict")
WIDTH = 1280
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", f"--window-size={WIDTH},900")
PROBE = """return {
  images: Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt]),
  sections: Array.from(document.querySelectorAll('section[id]')).map(s => s.id),
  verdict: (document.querySelector('#verdict') || {innerText: ''}).innerText.length,
  scrollWidth: document.documentElement.scrollWidth, clientWidth: document.documentElement.clientWidth,
  height: document.documentElement.scrollHeight};"""


class BrowserMissing(RuntimeError):
    """Chromium or its driver is not installed."""


class ReportProblem(AssertionError):
    """The page loaded but failed a check."""


def find_browser() -> tuple[str, str]:
    """(chromium binary, chromedriver) from the system, else BrowserMissing naming the Debian packages."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or next((p for p in ("/usr/bin/chromedriver",) if Path(p).exists()), None)
    if not browser or not driver:
        missing = [pkg for pkg, path in (("chromium", browser), ("chromium-driver", driver)) if not path]
        raise BrowserMissing(f"headless check needs the Debian package(s) {' and '.join(missing)}: "
                             f"apt-get install -y {' '.join(missing)}")
    return browser, driver


def check_report(html_path: str | Path, screenshot: str | Path) -> dict:
    """Load `html_path` in headless Chromium, check it (ReportProblem lists every failure), save a screenshot."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = find_browser()
    with tempfile.TemporaryDirectory(prefix="sagecast-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = browser
        for flag in (*FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
        try:
            driver.set_page_load_timeout(120)
            driver.get(Path(html_path).resolve().as_uri())  # returns once the load event has fired
            state = driver.execute_script(PROBE)
            errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        finally:
            driver.quit()
    atomic_write_bytes(screenshot, base64.b64decode(shot["data"]))
    problems = [f"console error: {e}" for e in errors]
    problems += [f"image not decoded: {alt[:80]!r}" for done, width, alt in state["images"] if not done or width <= 0]
    problems += [f"section #{s} missing" for s in SECTIONS if s not in state["sections"]]
    problems += ["verdict section is empty"] if state["verdict"] < 20 else []
    if state["scrollWidth"] > state["clientWidth"]:
        problems.append(f"horizontal scroll at {WIDTH} px: page is {state['scrollWidth']} px wide")
    if problems:
        raise ReportProblem(f"{html_path}: " + "; ".join(problems))
    return {"images": len(state["images"]), "sections": state["sections"], "height": state["height"],
            "width": state["clientWidth"],
            "screenshot": str(screenshot)}


def main(argv: list[str] | None = None) -> None:
    ap = make_parser("python -m sagecast_report.browser", __doc__)
    ap.add_argument("html", help="report.html to check")
    ap.add_argument("--screenshot", help="PNG to write (default: next to the report, *_screenshot.png)")
    args = ap.parse_args(argv)
    html = Path(args.html)

    def run() -> None:
        try:
            result = check_report(html, args.screenshot or html.with_name(html.stem + "_screenshot.png"))
        except (BrowserMissing, ReportProblem) as e:
            raise UserError(str(e)) from None
        print(f"ok: {result['images']} images decoded, sections {result['sections']}, "
              f"screenshot {result['screenshot']}")

    run_cli(run, prog=ap.prog)


if __name__ == "__main__":
    main()
