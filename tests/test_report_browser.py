"""The error browser of the smoke report by keyboard, address and pointer (headless chromium): header
buttons sort and say their order in ``aria-sort``, a new address hash re-filters the open page and
Back returns to the previous filter, a thumbnail enlarges in a dialog that Escape closes, a
near-duplicate opens side by side with its distance, the count is announced; and axe-core finds no
serious or critical violation on each kind of page (and does find one planted on a small page)."""

import pandas as pd
import pytest

from kvasir_utils.artefacts import Table
from tools import chromium

pytestmark = pytest.mark.skipif(not chromium.chromium_found(), reason="chromium is not installed: make chromium")
MODEL = "resnet50"


def _browser(smoke_chain, driver, hash_: str = ""):
    page = smoke_chain.report.error_browser(MODEL)
    chromium.show(driver, page, 1280)
    if hash_:
        driver.get(page.resolve().as_uri() + "#" + hash_)
    return driver


def _shown(driver) -> list:
    from selenium.webdriver.common.by import By

    return [row for row in driver.find_elements(By.CSS_SELECTOR, "#images tbody tr") if row.is_displayed()]


def _count(driver) -> str:
    return driver.execute_script('return document.getElementById("f-count").textContent')


DOT = "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"  # one pixel


@pytest.mark.parametrize("planted, found", [
    (f'<img src="{DOT}">', True),  # an image without alt: axe's image-alt, critical
    (f'<img src="{DOT}" alt="a dot">', False)], ids=["an image without alt", "the same with alt"])
def test_axe_finds_a_planted_violation_and_only_that(tmp_path, driver, planted, found):
    page = tmp_path / "planted.html"
    page.write_text(f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>planted</title></head>'
                    f"<body><main><h1>A page</h1><p>{planted}</p></main></body></html>")
    chromium.show(driver, page, 800)
    violations = chromium.accessibility_violations(driver)
    assert [v.split(":")[0] for v in violations] == (["image-alt (critical)"] if found else [])


@pytest.mark.parametrize("page", ["index.html", "html/04_evaluate-resnet50.html", "browser-resnet50.html",
                                  "models/resnet50/model_card.html"])
@pytest.mark.slow
@pytest.mark.xdist_group("chain")
def test_no_serious_or_critical_accessibility_violation(smoke_chain, driver, page):
    path = smoke_chain.report_dir / page
    chromium.show(driver, path, 1280)
    assert chromium.accessibility_violations(driver) == []


@pytest.mark.slow
@pytest.mark.xdist_group("chain")
def test_header_buttons_sort_by_keyboard_and_say_their_order(smoke_chain, driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    _browser(smoke_chain, driver)
    confidence = driver.find_element(By.CSS_SELECTOR, '#images th[data-key="confidence"]')
    true_class = driver.find_element(By.CSS_SELECTOR, '#images th[data-key="true"]')
    assert confidence.get_attribute("aria-sort") is None

    def values() -> list[float]:
        return [float(r.get_attribute("data-confidence")) for r in _shown(driver)]

    confidence.find_element(By.TAG_NAME, "button").send_keys(Keys.ENTER)
    assert confidence.get_attribute("aria-sort") == "descending" and values() == sorted(values(), reverse=True)
    confidence.find_element(By.TAG_NAME, "button").send_keys(Keys.SPACE)
    assert confidence.get_attribute("aria-sort") == "ascending" and values() == sorted(values())
    true_class.find_element(By.TAG_NAME, "button").send_keys(Keys.ENTER)
    assert true_class.get_attribute("aria-sort") == "ascending" and confidence.get_attribute("aria-sort") is None
    shown = [r.get_attribute("data-true") for r in _shown(driver)]
    assert shown == sorted(shown)


@pytest.mark.slow
@pytest.mark.xdist_group("chain")
def test_a_new_hash_refilters_the_open_page_and_back_restores_the_filter(smoke_chain, driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    predictions = pd.read_csv(smoke_chain.run.predictions(MODEL))
    total, wrong = len(predictions), int((predictions["true"] != predictions["pred"]).sum())
    first = smoke_chain.data.classes[0]
    of_first = int((predictions["true"] == 0).sum())
    _browser(smoke_chain, driver)
    count = driver.find_element(By.ID, "f-count")
    assert count.get_attribute("aria-live") == "polite" and count.text == f"{total} of {total} images"
    driver.execute_script('location.hash = "flag=wrong"')
    assert _count(driver) == f"{wrong} of {total} images" and len(_shown(driver)) == wrong
    driver.execute_script(f'location.hash = "true={first}"')  # the flag it does not name goes back to "any"
    assert Select(driver.find_element(By.ID, "f-flag")).first_selected_option.get_attribute("value") == ""
    assert _count(driver) == f"{of_first} of {total} images"
    driver.back()
    assert _count(driver) == f"{wrong} of {total} images"
    Select(driver.find_element(By.ID, "f-flag")).select_by_value("right")  # a choice is kept in the address
    assert driver.current_url.endswith("#flag=right") and _count(driver) == f"{total - wrong} of {total} images"


@pytest.mark.slow
@pytest.mark.xdist_group("chain")
def test_a_thumbnail_enlarges_in_a_dialog_that_escape_closes(smoke_chain, driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    _browser(smoke_chain, driver)
    thumb = driver.find_element(By.CSS_SELECTOR, "#images .kvasir-thumb")
    small = thumb.find_element(By.TAG_NAME, "img").size["width"]
    thumb.click()
    dialog = driver.find_element(By.ID, "zoom")
    assert dialog.get_attribute("open") is not None
    large = dialog.find_element(By.CSS_SELECTOR, "img")
    assert large.size["width"] >= 2 * small and driver.execute_script("return arguments[0].naturalWidth", large) > 0
    driver.switch_to.active_element.send_keys(Keys.ESCAPE)
    assert dialog.get_attribute("open") is None
    assert driver.switch_to.active_element == thumb  # the focus goes back where it was


@pytest.mark.slow
@pytest.mark.xdist_group("chain")
def test_a_near_duplicate_opens_side_by_side_with_its_distance(smoke_chain, driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    flags = pd.read_csv(smoke_chain.report.table(Table.VALIDATION_IMAGES), keep_default_na=False)
    twinned = flags[flags["twin"] != ""]
    assert len(twinned)  # the generated data plant near-duplicate frames
    _browser(smoke_chain, driver, "flag=twin")
    row = _shown(driver)[0]
    button = row.find_element(By.CSS_SELECTOR, ".kvasir-twin")
    path = row.find_element(By.CSS_SELECTOR, ".kvasir-thumb").get_attribute("data-caption").split(":")[0]
    distance = int(twinned.set_index("path").loc[path, "twin_distance"])
    assert button.text.endswith(f"({distance} bits)")
    button.send_keys(Keys.ENTER)
    dialog = driver.find_element(By.ID, "zoom")
    first, second = dialog.find_elements(By.CSS_SELECTOR, "figure")
    assert first.location["y"] == second.location["y"] and first.location["x"] < second.location["x"]
    assert [f.text for f in (first, second)] == [f"validation: {path}",
                                                 f"training: {twinned.set_index('path').loc[path, 'twin']}"]
    assert driver.execute_script("return Array.from(arguments[0].querySelectorAll('img'))"
                                 ".every(img => img.complete && img.naturalWidth > 0)", dialog)
    assert f"{distance} bits of 64" in dialog.find_element(By.ID, "zoom-distance").text
    assert chromium.accessibility_violations(driver) == []  # the open dialog too
    driver.switch_to.active_element.send_keys(Keys.ESCAPE)
    assert dialog.get_attribute("open") is None
