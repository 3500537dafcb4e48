"""The dashboard in a real headless Chromium, with the whole pipeline running."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page

from tests.conftest import Env, Role, wait_until
from tests.gateway.conftest import WIDTHS, Gateway, chromium_browser, layout_problems, token

ARTIFACTS = Path(os.environ.get("MLPULSE_TEST_ARTIFACTS", Path(__file__).parents[2] / "artifacts"))


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium_browser() as b:
        yield b


def number(page: Page, element_id: str) -> float | None:
    value = page.get_attribute(f"#{element_id}", "data-value")
    return float(value) if value else None


def canvas_pixels(page: Page, element_id: str) -> str:
    return str(page.evaluate(f"document.getElementById('{element_id}').toDataURL()"))


def test_live_dashboard_follows_the_stream(env: Env, spawn: Callable[..., Role],
                                           start_gateway: Callable[..., Gateway],
                                           browser: Browser) -> None:
    spawn("model")
    spawn("metric")
    spawn("plot", extra={"MLPULSE_PLOT_INTERVAL": "1"})
    gw = start_gateway()
    page = browser.new_page(viewport={"width": 1360, "height": 900})
    page.goto(f"{gw.http}/?token={token('alice')}")
    assert page.url == f"{gw.http}/", "the token should leave the address bar"
    page.wait_for_selector("#conn[data-state=live]")
    page.wait_for_function("() => document.getElementById('who').textContent === 'alice'")

    total = 2500
    producer = subprocess.Popen(
        [sys.executable, "-m", "mlpulse", "produce", "--count", str(total), "--rate", "500"],
        env={**os.environ, **env.vars}, cwd=env.root, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        page.wait_for_function("() => Number(document.getElementById('m-count').dataset.value) > 0")
        first_count = number(page, "m-count")
        first_hist = canvas_pixels(page, "hist")
        page.wait_for_function(
            f"() => Number(document.getElementById('m-count').dataset.value) > {first_count}")
        wait_until(lambda: canvas_pixels(page, "hist") != first_hist, what="histogram redrawn")
        assert number(page, "m-mae") is not None
        assert page.locator("#recent tr").count() > 0
        # Ids of one run share their start: each row shows the end of its id, all of it
        # on hover, so rows tell apart.
        ids = page.eval_on_selector_all(
            "#recent tr td:first-child", "cells => cells.map(c => [c.textContent, c.title])")
        assert all(full.endswith(shown.lstrip("…")) for shown, full in ids), ids
        assert len({shown for shown, _ in ids}) == len(ids), ids
        assert producer.wait(60) == 0
    finally:
        if producer.poll() is None:
            producer.kill()
            producer.wait()
    wait_until(lambda: env.row_count() == total, what=f"every row logged ({env.row_count()})")
    # Once events stop, the page and the socket's snapshot agree with Redis exactly.
    page.wait_for_function(
        f"() => Number(document.getElementById('m-count').dataset.value) === {total}")
    snapshot = page.evaluate("window.mlpulse.snapshot.summary")
    r = env.redis()
    agg = {k.decode(): v.decode() for k, v in r.hgetall("mlpulse:agg").items()}
    r.close()
    assert snapshot["count"] == int(agg["count"]) == total
    assert snapshot["rejected"] == int(agg.get("rejected", 0))
    assert snapshot["unmatched"] == int(agg.get("unmatched_t", 0)) + int(agg.get("unmatched_p", 0))
    assert abs(snapshot["mae"] - float(agg["sum_abs"]) / total) < 1e-9
    assert page.evaluate("window.mlpulse.gaps") == 0
    page.wait_for_function("() => document.getElementById('plot').src.includes('/plot.png')")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    # Full of rows, the page fits a phone, a tablet, a laptop and a wide screen: nothing
    # scrolls sideways, nothing sticks out of its card, no grid row leaves cells empty.
    for width in WIDTHS:
        assert layout_problems(page, width) == []
        cut = page.eval_on_selector_all(
            "#recent tr td:first-child", "cells => cells.filter(c => c.scrollWidth > c.clientWidth)"
            ".map(c => c.textContent)")
        assert cut == [], f"at {width} px the ids' ends are cut: {cut}"
        page.screenshot(path=str(ARTIFACTS / f"dashboard-{width}.png"), full_page=True)
    # The check sees content wider than its card.
    page.evaluate("""() => {
      const wide = document.createElement('div');
      wide.id = 'too-wide';
      wide.style.width = '900px';  // the page's CSP refuses inline style attributes
      document.getElementById('versions').closest('.panel').append(wide);
    }""")
    assert any("#too-wide" in p and '"By model version"' in p
               for p in layout_problems(page, 1366)), layout_problems(page, 1366)
    page.evaluate("document.getElementById('too-wide').remove()")
    page.set_viewport_size({"width": 1360, "height": 900})
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

    # The server goes away: the page says so, and recovers when it is back.
    assert gw.role.stop() == 0
    page.wait_for_selector("#conn[data-state=offline]")
    assert "retrying" in (page.text_content("#conn") or "")
    spawn("gateway", extra={"MLPULSE_HTTP_PORT": str(gw.port)}, ready=r"ready: http")
    page.wait_for_selector("#conn[data-state=live]", timeout=30_000)
    page.wait_for_function(
        f"() => Number(document.getElementById('m-count').dataset.value) === {total}")
    page.close()


def test_login_page_without_a_token(gateway: Gateway, browser: Browser) -> None:
    page = browser.new_page()
    page.goto(gateway.http + "/")
    page.wait_for_selector("textarea#token")
    page.fill("textarea#token", token("erin"))
    page.click("button[type=submit]")
    page.wait_for_selector("#conn[data-state=live]")
    # The name arrives by its own request, after the socket may already be live.
    page.wait_for_function("() => document.getElementById('who').textContent === 'erin'")
    page.close()
