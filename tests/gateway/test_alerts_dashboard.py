"""The dashboard's alerts panel in a real headless Chromium, fed by real roles and a real
`mlpulse alerts` evaluator while bmi drifts."""

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
FIRING = "#alerts [data-alert=BmiDrift][data-state=firing]"
RULES = """
rules:
  - name: BmiDrift
    metric: psi
    feature: bmi
    window: 60
    op: ">"
    threshold: 0.25
    for: 0
    severity: critical
    notify: [dashboard]
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium_browser() as b:
        yield b


def open_dashboard(browser: Browser, gw: Gateway, user: str, admin: bool, width: int,
                   height: int) -> Page:
    page = browser.new_page(viewport={"width": width, "height": height})
    page.goto(f"{gw.http}/?token={token(user, admin=admin)}")
    page.wait_for_selector("#conn[data-state=live]")
    page.wait_for_function(
        "(user) => document.getElementById('who').textContent.startsWith(user)", arg=user)
    return page


def test_alerts_panel_shows_a_drift_firing(env: Env, spawn: Callable[..., Role],
                                           start_gateway: Callable[..., Gateway],
                                           browser: Browser) -> None:
    rules = env.root / "rules.yaml"
    rules.write_text(RULES)
    extra = {"MLPULSE_ALERT_RULES": str(rules), "MLPULSE_ALERT_INTERVAL": "0.5",
             "MLPULSE_DRIFT_MIN_EVENTS": "200"}
    spawn("model", extra=extra)
    spawn("metric", extra=extra)
    spawn("alerts", extra=extra)
    gw = start_gateway(extra)
    page = open_dashboard(browser, gw, "alice", True, 1366, 900)
    page.wait_for_function(
        "() => document.getElementById('a-note').textContent === '0 firing · 0 pending'")
    assert page.text_content("#a-active") == "No alerts firing"
    assert page.is_hidden("#alert-count")

    produce(env, "--count", "3000", "--rate", "0", "--batch", "100", "--drift", "bmi=+3.0@0")
    page.wait_for_selector(FIRING)
    assert page.locator("#alerts [data-state=firing]").count() == 1
    row = page.locator(FIRING)
    assert row.get_attribute("data-severity") == "critical"
    assert row.locator(".chip").text_content() == "critical"
    tags = row.locator(".tag").all_text_contents()
    assert tags == ["feature bmi", "version v1"]
    assert float(row.locator(".value .now").text_content() or "0") > 0.25
    assert "vs 0.25" in (row.locator(".value").text_content() or "")
    assert (row.locator(".since").text_content() or "").startswith("firing for")
    assert page.text_content("#alert-count .n") == "1"
    assert "badge-critical" in (page.get_attribute("#alert-count", "class") or "")
    # The live message: a toast, the page's feed, and the transition in the history.
    page.wait_for_function(
        "() => document.getElementById('toast').textContent"
        ".includes('BmiDrift firing (bmi, v1)')")
    assert "BmiDrift firing (bmi, v1)" in (page.text_content("#feed") or "")
    page.wait_for_selector("#a-history [data-transition=firing]")
    assert "BmiDrift" in (page.text_content("#a-history [data-transition=firing]") or "")

    # An admin gets the buttons; an acknowledgement reaches the alert's state, and every
    # page shows it from the next snapshot.
    assert row.locator("button[data-action=ack]").text_content() == "Acknowledge"
    assert row.locator("button[data-action=silence]").text_content() == "Silence 1 h"
    row.locator("button[data-action=ack]").click()
    page.wait_for_function(
        "() => document.getElementById('a-status').textContent"
        " === 'BmiDrift (bmi, v1): acknowledged'")
    page.wait_for_selector(f"{FIRING} .done >> text=acknowledged by alice")
    assert row.locator("button[data-action=ack]").count() == 0
    assert fits_every_width(page) == []
    page.wait_for_selector("#toast", state="hidden")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.locator("#alerts").screenshot(path=str(ARTIFACTS / "alerts.png"))
    page.close()

    phone = open_dashboard(browser, gw, "bob", False, 390, 844)
    phone.wait_for_selector(FIRING)
    assert phone.locator("#alerts button").count() == 0, "buttons shown to a non-admin"
    assert phone.text_content("#alert-count .n") == "1"
    assert phone.text_content(f"{FIRING} .done") == "acknowledged by alice"
    assert layout_problems(phone, 390, 844) == []
    phone.locator("#alerts").screenshot(path=str(ARTIFACTS / "alerts-phone.png"))
    phone.close()
