"""Every page of the smoke report read as a reader and a screen reader meet it (its HTML, no browser
needed): the departures table has no empty cell, no page shows a Python ``None`` or repr, no table
the paper lacks is labelled "(paper)", no link leaves the report folder (it works copied or shared),
no figure keeps nbconvert's default alt text, and every table has a caption and row headers."""

import json
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pandas as pd
import pytest

from kvasir_utils.analysis import metrics, paper
from kvasir_utils.artefacts import Figure, Table
from kvasir_utils.report import formats

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("chain")]
DEFAULT_ALT = "No description has been provided for this image"


def _soup(page: Path):
    from bs4 import BeautifulSoup

    return BeautifulSoup(page.read_text(), "html.parser")


@pytest.fixture(scope="module")
def pages(smoke_chain) -> dict[Path, object]:
    report = smoke_chain.report_dir
    found = [report / "index.html", *(report / "html").glob("*.html"), *report.glob("browser-*.html"),
             *report.glob("models/*/model_card.html")]
    return {page: _soup(page) for page in sorted(found)}


def test_every_page_is_read(pages, smoke_chain):
    assert len(pages) == 1 + 9 + 2 + 2  # the index, nine notebook pages, two error browsers, two model cards


def test_no_link_or_image_leaves_the_report_folder(pages, smoke_chain):
    root = smoke_chain.report_dir.resolve()
    outside = {}
    for page, soup in pages.items():
        for tag, attribute in (("a", "href"), ("img", "src"), ("link", "href")):
            for element in soup.find_all(tag):
                target = element.get(attribute) or ""
                parts = urlsplit(target)
                if parts.scheme or target.startswith("#") or not parts.path:
                    continue
                resolved = (page.parent / unquote(parts.path)).resolve()
                if not resolved.is_relative_to(root) or not resolved.exists():
                    outside.setdefault(page.name, []).append(target)
    assert outside == {}


def test_no_figure_keeps_the_default_alt_text(pages):
    defaults = {page.name: n for page, soup in pages.items()
                if (n := sum(img.get("alt", "") in ("", DEFAULT_ALT) for img in soup.find_all("img")
                             if not img.get("src", "").startswith("thumbs/")))}
    assert defaults == {}


def test_no_page_shows_none_or_a_python_repr(pages):
    import re

    found = {}
    for page, soup in pages.items():
        for element in soup.find_all(["td", "th", "p", "li", "figcaption", "caption", "h1", "h2", "h3"]):
            text = element.get_text(" ", strip=True)
            if re.search(r"\bNone\b|\bnan\b|\[\]|\['|\(paper: \[", text):
                found.setdefault(page.name, []).append(text[:100])
    assert found == {}


def test_the_departures_table_has_no_empty_cell(pages, smoke_chain):
    index = pages[smoke_chain.report_dir / "index.html"]
    table = next(t for t in index.find_all("table") if t.caption and "differs from the paper" in t.caption.text)
    cells = [cell.get_text(strip=True) for cell in table.find_all(["td", "th"])]
    assert len(cells) > 20 and "" not in cells


def test_no_table_the_paper_lacks_is_labelled_paper(pages, smoke_chain):
    index = pages[smoke_chain.report_dir / "index.html"]
    for model in smoke_chain.train.models:
        section = index.find("section", id=model)
        labels = [h.get_text() for h in section.find_all("h3")] + [c.get_text() for c in section.find_all(
            ["figcaption", "caption"])]
        assert labels
        if paper.REPORTED.get(model):
            assert any("Table 1 (paper)" in label for label in labels)
        else:
            assert not [label for label in labels if "(paper)" in label or "paper's Table" in label], model


def test_every_table_has_a_caption_row_headers_and_numbers_in_one_style(pages, smoke_chain):
    import re

    for page, soup in pages.items():
        for table in soup.find_all("table", class_="kvasir-table"):
            assert table.caption and table.caption.get_text(strip=True), (page.name, str(table)[:200])
            assert table.find("th", scope="row"), (page.name, table.caption.text)
            for cell in table.find_all("td", class_="num"):
                text = cell.get_text()
                assert "-" not in text.split("[")[0] or formats.MINUS in text, (page.name, text)  # a true minus
                assert not re.fullmatch(r"\d{2,}\.000", text), (page.name, text)  # a count (scores are <= 2)
    index = pages[smoke_chain.report_dir / "index.html"]
    headers = {page.name: h for page, soup in pages.items() for th in soup.find_all("th", scope="col")
               if "_" in (h := th.get_text())}
    assert headers == {}  # words, not snake_case machine names
    claims = next(t for t in index.find_all("table") if t.caption and t.caption.text == "The paper's claims")
    assert [th.get_text() for th in claims.find_all("th", scope="row")][:1] == ["ResNet50 accuracy"]


def test_the_notebook_pages_show_this_runs_readings_and_conclusions(pages, smoke_chain):
    """The sentences generated at run time (report.readings) reach the rendered notebook pages and
    name this run's facts: the Table 1 reading a class of Table 1 with its F1, the confusion reading
    Table 2's off-diagonal count, the closing cells metrics.json's numbers and each stage's epochs."""
    report = smoke_chain.report
    text = {page.name: soup.get_text(" ", strip=True) for page, soup in pages.items()}
    for model in smoke_chain.train.models:
        name, page = formats.model_name(model), text[f"04_evaluate-{model}.html"]
        table1 = pd.read_csv(report.table(Table.of_model(model, "table1")), index_col=0)
        f1 = table1["F1-Score"].drop(list(metrics.AVERAGE_ROWS))
        if f1.nunique() > 1:
            found = re.search(r"Best F1: (.+?) \((\d\.\d{3})\); weakest: (.+?) \((\d\.\d{3})\)", page)
            assert found, page[:300]
            for names, value in ((found[1], found[2]), (found[3], found[4])):
                for shown in re.split(r", | and ", names):
                    assert f"{f1[shown]:.3f}" == value, (shown, value)  # a class of Table 1, with its F1
            assert found[2] == f"{f1.max():.3f}" and found[4] == f"{f1.min():.3f}"
        confusion = pd.read_csv(report.table(Table.of_model(model, "table2")), index_col=0).to_numpy()
        wrong = confusion.sum() - confusion.trace()
        assert (f"{wrong} of {confusion.sum()} validation images" in page if wrong else "no confusion at all" in page)
        record = json.loads(smoke_chain.run.metrics(model).read_text())
        assert (f"{name} on this run's {record['images']} validation images: accuracy "
                f"{formats.number(record['accuracy'], 'percent')}") in page
        assert "Conclusions" in page and "notebook 05" in page.lower()
        for stage, number in (("stage1", 1), ("stage2", 2)):
            epochs = smoke_chain.stage_config(stage).epochs
            prefix = "02_train" if stage == "stage1" else "03_finetune"
            assert f"Stage {number} ended after {epochs} epochs" in text[f"{prefix}-{model}.html"]
            curves = report.figure(Figure.of_model(model, f"{stage}_curves"))
            assert curves.stat().st_size > 1000  # saved, not only shown
    assert "minus" in text["05_compare.html"] and "make sweep" in text["05_compare.html"]
    assert "Validation images per class" in text["01_download_and_split.html"] or \
        "Every class has" in text["01_download_and_split.html"]
    audit = text["07_audit.html"]
    assert all(f"{formats.model_name(m)}: mean top-1 confidence" in audit for m in smoke_chain.train.models)
    # the audit's findings name each model as the pages do, on the notebook page and on the index
    index = (smoke_chain.report_dir / "index.html").read_text()
    for page in (audit, index):
        assert all(f"{formats.model_name(m)}: masking the box at test time" in page for m in smoke_chain.train.models)
    assert "index page" in audit
