"""The dashboard's drift panel in a real headless Chromium, fed a drifted stream by real roles."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page

from tests.conftest import Env, Role, produce
from tests.gateway.conftest import (
    Gateway,
    chromium_browser,
    fits_every_width,
    layout_problems,
    token,
)

ARTIFACTS = Path(os.environ.get("MLPULSE_TEST_ARTIFACTS", Path(__file__).parents[2] / "artifacts"))
# bmi drifted and age not: the first report of a window with enough events says both.
BMI_DRIFTED = """() => {
  const row = (name) => document.querySelector(`#drift tr[data-feature=${name}]`);
  return row('bmi')?.dataset.status === 'drift' && row('age') !== null
         && row('age').dataset.status !== 'drift';
}"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium_browser() as b:
        yield b


def open_dashboard(browser: Browser, gw: Gateway, width: int, height: int) -> Page:
    page = browser.new_page(viewport={"width": width, "height": height})
    page.goto(f"{gw.http}/?token={token('alice')}")
    page.wait_for_selector("#conn[data-state=live]")
    return page


def row_background(page: Page, feature: str) -> str:
    return str(page.evaluate(
        f"getComputedStyle(document.querySelector('#drift tr[data-feature={feature}] td'))"
        ".backgroundColor"))


def test_drift_panel_shows_the_feature_that_moved(env: Env, spawn: Callable[..., Role],
                                                  start_gateway: Callable[..., Gateway],
                                                  browser: Browser) -> None:
    spawn("model")
    spawn("metric")
    gw = start_gateway()
    page = open_dashboard(browser, gw, 1360, 900)

    produce(env, "--count", "4000", "--rate", "0", "--batch", "100", "--drift", "bmi=+3.0@0")
    page.wait_for_function(BMI_DRIFTED)
    assert row_background(page, "bmi") != row_background(page, "age"), "bmi is not highlighted"
    assert page.locator("#drift tr[data-feature=prediction]").count() == 1
    assert page.text_content("#drift tr[data-feature=bmi] .chip") == "drift"
    estimated = page.get_attribute("#d-est", "data-value")
    assert estimated, "no estimated MAE shown"
    assert float(estimated) > 0

    # The hour's window holds the same events: bmi has drifted there too.
    page.click("#d-windows button[data-window='3600']")
    assert page.get_attribute("#d-windows button[data-window='3600']", "aria-pressed") == "true"
    assert "1 h" in (page.text_content("#d-note") or "")
    page.wait_for_function(BMI_DRIFTED)
    page.click("#d-windows button[data-window='300']")
    assert fits_every_width(page) == []

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.locator("#drift").screenshot(path=str(ARTIFACTS / "drift.png"))
    page.close()

    phone = open_dashboard(browser, gw, 390, 844)
    phone.wait_for_function(BMI_DRIFTED)
    assert layout_problems(phone, 390, 844) == []
    phone.locator("#drift").screenshot(path=str(ARTIFACTS / "drift-phone.png"))
    phone.close()
