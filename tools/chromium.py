"""The reports in a real browser: Debian's chromium, headless, driven by selenium (a development
dependency; `make chromium` installs chromium). `make screenshots` writes PNGs of a report's pages
and the browser tests check every page with ``page_problems`` and with axe-core
(``accessibility_violations``). Development tooling: not part of the
shipped package (pyproject.toml ships kvasir_utils only).

    python -m tools.chromium reports/smoke docs/images
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

from kvasir_utils.errors import KvasirError

CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-quic", "--hide-scrollbars", "--allow-file-access-from-files")


def chromium_found() -> bool:
    return bool(shutil.which("chromium") and shutil.which("chromedriver"))


@contextlib.contextmanager
def open_browser(width: int = 1280, height: int = 900):
    """A headless chromium (the system's, offline, a fresh profile) with its console log kept."""
    if not chromium_found():
        raise KvasirError("chromium and chromedriver are not installed: run `make chromium` (Debian's packages "
                          "chromium and chromium-driver; needs root and apt)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory() as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium")
        for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
        try:
            yield driver
        finally:
            driver.quit()


LOAD_LAZY_JS = """
const lazy = Array.from(document.querySelectorAll('img[loading="lazy"]'));
lazy.forEach(img => { img.loading = "eager"; });
return lazy.length;
"""


def show(driver, page: Path, width: int, height: int = 900, wait: float = 10.0) -> None:
    """``page`` at ``width`` x ``height`` px, with every image loaded (lazy ones made eager, as a
    reader's scrolling would) or ``wait`` seconds passed."""
    driver.set_window_size(width, height)
    driver.get(Path(page).resolve().as_uri())
    if driver.execute_script(LOAD_LAZY_JS):
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and not driver.execute_script(
                "return Array.from(document.images).every(img => img.complete)"):
            time.sleep(0.1)


PROBLEMS_JS = """
const out = [];
for (const img of document.images) {
  if (!img.complete || img.naturalWidth === 0) out.push("image does not load: " + img.getAttribute("src"));
}
const root = document.documentElement;
if (root.scrollWidth > root.clientWidth + 1)
  out.push("the page is wider than the window: " + root.scrollWidth + " > " + root.clientWidth + " px");
for (const el of document.querySelectorAll('[data-mime-type="application/vnd.jupyter.stderr"]'))
  out.push("an error or warning block (stderr): " + el.textContent.slice(0, 120));
return out;
"""


def page_problems(driver, page: Path, widths=(1280, 800)) -> list[str]:
    """What a reader would trip over on ``page``: console errors, images that do not load, links to
    files that do not exist, a page wider than the window, stderr blocks."""
    from urllib.parse import unquote, urlparse

    problems = []
    for width in widths:
        show(driver, page, width)
        problems += [f"{width} px: {p}" for p in driver.execute_script(PROBLEMS_JS)]
    problems += [f"console: {entry['message']}" for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    for href in driver.execute_script("return Array.from(document.links).map(a => a.href)"):
        parsed = urlparse(href)
        if parsed.scheme == "file" and not Path(unquote(parsed.path)).exists():
            problems.append(f"link to a missing file: {unquote(parsed.path)}")
    return problems


# Of axe-core's impacts (minor, moderate, serious, critical), those no page of the study may have.
SERIOUS = ("serious", "critical")
AXE_RUN_JS = """
const done = arguments[arguments.length - 1];
axe.run(document, {resultTypes: ["violations"]}).then(done, error => done({error: String(error)}));
"""


def accessibility_violations(driver, impacts=SERIOUS) -> list[str]:
    """What axe-core finds on the page open in ``driver`` with one of ``impacts``, one line each:
    ``rule (impact): what it checks: the elements``. axe is the ``axe.min.js`` that the development
    dependency axe-core-python ships (offline; nothing else of that package is used)."""
    from axe_core_python.base import AXE_SCRIPT

    driver.set_script_timeout(120)
    driver.execute_script(AXE_SCRIPT)
    results = driver.execute_async_script(AXE_RUN_JS)
    if "error" in results:
        raise KvasirError(f"axe-core failed on {driver.current_url}: {results['error']}")
    return [f"{v['id']} ({v['impact']}): {v['help']}: " + ", ".join(" ".join(n["target"]) for n in v["nodes"][:5])
            for v in results["violations"] if v["impact"] in impacts]


def screenshots(report: Path, dest: Path) -> list[Path]:
    """PNGs of the index and of one page of each kind (a notebook page, an error browser)."""
    report, dest = Path(report), Path(dest)
    if not (report / "index.html").exists():
        raise KvasirError(f"no report at {report}: run `make smoke` first")
    pages = {"index": report / "index.html"}
    pages |= {f"page-{p.stem}": p for p in sorted((report / "html").glob("04_evaluate-*.html"))[:1]}
    pages |= {f"browser-{p.stem.removeprefix('browser-')}": p for p in sorted(report.glob("browser-*.html"))[:1]}
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    with open_browser() as driver:
        for name, page in pages.items():
            show(driver, page, 1280, 900)
            written.append(dest / f"{report.name}-{name}.png")
            driver.save_screenshot(str(written[-1]))
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="screenshots of a report's pages (headless chromium)")
    parser.add_argument("report", type=Path, help="a report folder, e.g. reports/smoke")
    parser.add_argument("dest", type=Path, help="where the PNGs go")
    args = parser.parse_args(argv)
    try:
        written = screenshots(args.report, args.dest)
    except KvasirError as exc:
        sys.exit(f"error: {exc}")
    for path in written:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
