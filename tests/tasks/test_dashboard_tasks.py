"""The dashboard's tasks panel in headless Chromium: upload, live progress, download."""

from __future__ import annotations

from collections.abc import Callable

from playwright.sync_api import Browser

from tests.conftest import Env, Role
from tests.gateway.conftest import token
from tests.gateway.test_dashboard import ARTIFACTS, browser
from tests.tasks.conftest import Api, features_csv

__all__ = ["browser"]  # the module-scoped Chromium fixture


def test_tasks_panel_scores_an_upload_live(env: Env, spawn: Callable[..., Role],
                                           worker: Callable[..., Role],
                                           api: Callable[..., Api], browser: Browser) -> None:
    spawn("model")
    worker(extra={"MLPULSE_SCORE_CHUNK_ROWS": "500"})
    alice = api("alice")
    data, _ = features_csv(4000)
    upload = env.root / "rows.csv"
    upload.write_bytes(data)

    page = browser.new_page(viewport={"width": 1360, "height": 1000})
    page.goto(f"{alice.gateway.http}/?token={token('alice')}")
    page.wait_for_selector("#conn[data-state=live]")
    page.wait_for_function("() => document.getElementById('who').textContent === 'alice'")
    assert page.is_hidden("#t-retrain"), "only admins see the retrain button"

    page.set_input_files("#t-file", str(upload))
    row = page.wait_for_selector("#tasks tr[data-state=SUCCESS]", timeout=60_000)
    assert row is not None
    text = row.inner_text()
    assert "batch-score" in text
    assert "4,000 / 4,000" in text
    assert "4,000 rows scored with v1" in text
    link = page.get_attribute("#tasks tr[data-state=SUCCESS] a.result-link", "href")
    assert link is not None
    fetched = page.evaluate(f"fetch('{link}').then(r => r.text())")
    assert fetched.count("\n") == 4001
    assert "batch-score success" in page.inner_text("#feed")
    # The line that said the upload was queued follows it to the end.
    page.wait_for_function(
        "() => document.getElementById('t-status').textContent.endsWith(': done')")

    # A bad file is refused with the reason in plain words, and nothing is queued.
    bad = env.root / "bad.csv"
    bad.write_text("age,colour\n1,2\n")
    page.set_input_files("#t-file", str(bad))
    page.wait_for_selector("#t-status.error")
    assert "missing column" in page.inner_text("#t-status")
    assert page.locator("#tasks tr").count() == 1

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.locator("#tasks-panel").screenshot(path=str(ARTIFACTS / "tasks-panel.png"))
    page.close()
