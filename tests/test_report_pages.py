"""The smoke report as a reader meets it, in a real browser (Debian's chromium, headless): every page
loads without a console error, every image and link resolves, nothing is wider than the window at
1280 and 800 px, no stderr block is left on a notebook page, and the index answers first whether the
paper was reproduced, with the numbers of metrics.json."""

import json
from pathlib import Path

import pandas as pd
import pytest

from kvasir_utils.analysis import verdicts
from kvasir_utils.report import formats
from tools import chromium

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("chain"),
              pytest.mark.skipif(not chromium.chromium_found(), reason="chromium is not installed: make chromium")]


def _pages(report: Path) -> list[Path]:
    return [report / "index.html", *sorted((report / "html").glob("*.html")), *sorted(report.glob("browser-*.html")),
            *sorted(report.glob("models/*/model_card.html"))]


def test_every_page_loads_cleanly_at_two_widths(smoke_chain, driver):
    pages = _pages(smoke_chain.report_dir)
    assert len(pages) == 1 + 9 + 2 + 2  # the index, nine notebook pages, two error browsers, two model cards
    problems = {page.name: found for page in pages if (found := chromium.page_problems(driver, page))}
    assert problems == {}


def _rows(driver, selector: str) -> list[list[str]]:
    from selenium.webdriver.common.by import By

    return [[cell.text for cell in row.find_elements(By.CSS_SELECTOR, "td, th")]
            for row in driver.find_elements(By.CSS_SELECTOR, selector)]


def test_the_index_answers_first_whether_the_paper_was_reproduced(smoke_chain, driver):
    from selenium.webdriver.common.by import By

    chromium.show(driver, smoke_chain.report_dir / "index.html", 1280)
    headings = [h.text for h in driver.find_elements(By.CSS_SELECTOR, "h2")]
    assert headings[0] == "Did this run reproduce the paper?"  # the verdict before anything else
    assert headings.index("ResNet50") < headings.index("EfficientNet-B0") < headings.index(
        "ResNet50 against EfficientNet-B0") < headings.index("Audit: what inflates the score")
    banner = driver.find_element(By.CSS_SELECTOR, ".kvasir-banner").text
    assert "Pipeline check on generated data" in banner
    header, *rows = _rows(driver, "#verdict table tr")
    assert header[:3] == ["claim", "paper", "this run"] and len(rows) == len(verdicts.CLAIMS)
    records = {m: json.loads((smoke_chain.run.metrics(m)).read_text()) for m in smoke_chain.train.models}
    shown = {row[0]: row for row in rows}
    for claim in verdicts.CLAIMS:
        row = shown[claim.words]
        assert row[6] == "not comparable: generated data"  # the verdict column
        if claim.other is None:  # the card's value is metrics.json's, in the house style
            kind = "percent" if claim.metric == "accuracy" else "score"
            assert row[2] == formats.number(records[claim.model][claim.metric], kind)
        else:  # the head-to-head gap in hundredths of a point (its difference is from unrounded values)
            difference = records[claim.model]["accuracy"] - records[claim.other]["accuracy"]
            assert row[2] == formats.number(difference, "fine points") and "unrounded" in row[7]
        assert row[3].startswith("[") and row[5] == "1"  # an interval, and one run behind it


def test_notebook_pages_have_titles_and_links_back_to_the_index(smoke_chain, driver):
    from selenium.webdriver.common.by import By

    for page in sorted((smoke_chain.report_dir / "html").glob("*.html")):
        chromium.show(driver, page, 1280)
        assert driver.title not in ("", "Notebook") and driver.title[:2].isdigit(), page.name
        links = [a.get_attribute("href") for a in driver.find_elements(By.CSS_SELECTOR, "nav.kvasir-nav a")]
        assert any(link.endswith("/index.html") for link in links), page.name


def test_a_table2_cell_opens_the_error_browser_on_its_images(smoke_chain, driver):
    from selenium.webdriver.common.by import By

    predictions = pd.read_csv(smoke_chain.run.predictions("resnet50"))
    classes = smoke_chain.data.classes
    wrong = predictions[predictions["true"] != predictions["pred"]].iloc[0]
    true, pred = classes[wrong["true"]], classes[wrong["pred"]]
    expected = int(((predictions["true"] == wrong["true"]) & (predictions["pred"] == wrong["pred"])).sum())
    chromium.show(driver, smoke_chain.report_dir / "index.html", 1280)
    link = next(a for a in driver.find_elements(By.CSS_SELECTOR, "#resnet50 table a")
                if "browser-resnet50.html#" in a.get_attribute("href")
                and f"true={true}&pred={pred}" in a.get_attribute("href"))
    assert link.text.endswith(f"({expected})")
    link.click()
    count = driver.find_element(By.ID, "f-count").text
    assert count == f"{expected} of {len(predictions)} images"
    shown = [row for row in driver.find_elements(By.CSS_SELECTOR, "#images tbody tr") if row.is_displayed()]
    assert len(shown) == expected and all("✗ wrong" in row.text for row in shown)


WIDE_TABLES_JS = """
return Array.from(document.querySelectorAll('.kvasir-scroll'))
  .filter(box => box.scrollWidth > box.clientWidth + 1)
  .map(box => (box.querySelector('caption') || box).textContent.slice(0, 80) + ': ' + box.scrollWidth + ' px');
"""


def test_every_table_of_the_index_and_the_model_pages_fits_at_1280_px(smoke_chain, driver):
    report = smoke_chain.report_dir
    hidden = {}
    for page in [report / "index.html", *sorted((report / "html").glob("04_evaluate-*.html"))]:
        chromium.show(driver, page, 1280)
        if found := driver.execute_script(WIDE_TABLES_JS):
            hidden[page.name] = found
    assert hidden == {}  # no column hidden behind a scroll bar
