"""The dashboard's time-range picker and History panel in a real headless Chromium, against a
real gateway reading a history written by the history's own writer."""

from __future__ import annotations

import json
import math
import os
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from playwright.sync_api import Browser, Page

from mlpulse.history.layout import ROLLUPS, partition_name
from mlpulse.history.writer import HistoryWriter
from mlpulse.pipeline.sink import format_rows
from tests.conftest import Env
from tests.gateway.conftest import Gateway, chromium_browser, token

ARTIFACTS = Path(os.environ.get("MLPULSE_TEST_ARTIFACTS", Path(__file__).parents[2] / "artifacts"))
# Seconds before the test starts. The last hour: v1 and v2 every 30 s from 50 to 10 minutes
# ago. About 20 hours ago: v0, a version gone since, and v1, every minute for an hour.
RECENT = [(-3000 + 30 * k, {"v1": 4, "v2": 2}) for k in range(80)]
OLD = [(-72000 - 1800 + 60 * k, {"v0": 3, "v1": 2}) for k in range(60)]
RECENT_COUNTS = {"v1": 320, "v2": 160}
OLD_COUNTS = {"v0": 180, "v1": 120}
ALL_COUNTS = {"v0": 180, "v1": 440, "v2": 160}
# Apart, so that no version's line hides behind another's.
ERRORS = {"v0": 40.0, "v1": 2.0, "v2": 20.0}
COLOURS_DRAWN = """([id, colours]) => {
  const c = document.getElementById(id);
  const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  return colours.map((hex) => {
    const want = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
    let n = 0;
    for (let i = 0; i < px.length; i += 4) {
      if (px[i + 3] > 200 && want.every((v, k) => Math.abs(px[i + k] - v) < 12)) n++;
    }
    return n;
  });
}"""
NO_SIDEWAYS_SCROLL = "document.documentElement.scrollWidth <= window.innerWidth"


def write_history(root: Path, now: int) -> None:
    """Metric-log rows as the sink formats them, flushed into the history in one go."""
    lines, entry = [], 1_700_000_000_000
    for ago, counts in [*OLD, *RECENT]:
        at = now + ago
        rows = []
        for version, n in counts.items():
            for i in range(n):
                error = ERRORS[version] + (entry + i) % 7
                rows.append([f"r{entry}-{version}-{i}", "100.0", repr(100.0 + error), version,
                             "", ""])
        lines.append(format_rows(f"{entry}-0", {b"at": repr(float(at)).encode(),
                                                b"rows": orjson.dumps(rows)}, -1, now))
        entry += 1
    root.mkdir(parents=True, exist_ok=True)
    HistoryWriter(root).flush("".join(lines).encode())


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium_browser() as b:
        yield b


def api_history(gw: Gateway, **params: Any) -> dict[str, Any]:
    url = f"{gw.http}/api/history?{urllib.parse.urlencode(params)}"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token('alice')}"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        body: dict[str, Any] = json.load(answer)
    return body


def open_dashboard(browser: Browser, gw: Gateway, width: int, height: int,
                   fragment: str = "") -> Page:
    # UTC, so that the custom range's datetime-local values below mean what they say.
    page = browser.new_page(viewport={"width": width, "height": height}, timezone_id="UTC")
    page.goto(f"{gw.http}/?token={token('alice')}{fragment}")
    page.wait_for_selector("#conn[data-state=live]")
    return page


def local_input(t: float) -> str:
    """A datetime-local value in UTC, the pages' zone."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M")


def ready(page: Page, key: str) -> None:
    page.wait_for_selector(f"#history[data-state=ready][data-range='{key}']")


def pressed(page: Page) -> list[str]:
    return [str(k) for k in page.eval_on_selector_all(
        "#r-picker button[aria-pressed=true]", "bs => bs.map((b) => b.dataset.range)")]


def shown_counts(page: Page) -> dict[str, int]:
    """Events per version in the panel's table (the combined row left out)."""
    return {str(k): int(v) for k, v in page.eval_on_selector_all(
        "#h-summary tr:not(.all)",
        "rows => rows.map((r) => [r.dataset.version, r.querySelector('td.count').dataset.value])")}


def shown_range(page: Page) -> tuple[float, float]:
    since = page.get_attribute("#history", "data-since")
    until = page.get_attribute("#history", "data-until")
    assert since, "no range on the panel"
    assert until, "no range on the panel"
    return float(since), float(until)


def check_against_api(page: Page, gw: Gateway) -> dict[str, int]:
    """The panel's counts and MAE are what /api/history says for the range the panel shows."""
    since, until = shown_range(page)
    combined = api_history(gw, since=since, until=until)
    counts = {}
    for version in combined["versions"]:
        answer = api_history(gw, since=since, until=until, model_version=version,
                             step=combined["step"])
        counts[version] = sum(p["count"] for p in answer["series"])
    assert shown_counts(page) == counts
    total = sum(p["count"] for p in combined["series"])
    assert page.get_attribute("#h-v-count", "data-value") == str(total) == str(sum(counts.values()))
    mae = sum(p["mae"] * p["count"] for p in combined["series"]) / total
    shown_mae = float(page.get_attribute("#h-v-mae", "data-value") or "nan")
    assert math.isclose(shown_mae, mae, rel_tol=1e-9), (shown_mae, mae)
    # One line per version plus the combined one, each drawn in its legend's colour.
    lines = json.loads(page.get_attribute("#h-mae", "data-lines") or "[]")
    assert lines == ["*", *combined["versions"]]
    colours = page.eval_on_selector_all(
        "#h-legend .h-key", "keys => keys.map((k) => k.style.getPropertyValue('--c').trim())")
    assert len(set(colours)) == len(lines)
    for chart in ("h-mae", "h-count"):
        drawn = page.evaluate(COLOURS_DRAWN, [chart, colours])
        assert all(n > 0 for n in drawn), f"{chart}: a line is missing ({drawn})"
    return counts


def test_history_panel_follows_the_range_in_the_url(env: Env, start_gateway: Callable[..., Gateway],
                                                    browser: Browser) -> None:
    now = int(time.time())
    write_history(env.root / "logs" / "history", now)
    gw = start_gateway()
    page = open_dashboard(browser, gw, 1366, 900)
    assert pressed(page) == ["live"]
    assert page.is_hidden("#history")
    assert page.evaluate("location.hash") == ""

    page.click("#r-picker button[data-range='1h']")
    # A function: a bare expression would be eval'd on every poll, which the page's CSP refuses.
    page.wait_for_function("() => location.hash === '#range=1h'")
    ready(page, "1h")
    assert pressed(page) == ["1h"]
    assert page.is_visible("#live-head")
    legend = page.eval_on_selector_all("#h-legend .h-key", "ks => ks.map((k) => k.dataset.version)")
    assert legend == ["*", "v1", "v2"]
    assert check_against_api(page, gw) == RECENT_COUNTS
    assert page.text_content("#h-q") == "highest step · exact"
    assert "4.4 %" not in (page.text_content("#h-note") or "")
    assert page.get_attribute("#history", "data-complete") == "true"
    assert page.is_hidden("#h-warn")
    assert "last 1 h" in (page.text_content("#h-note") or "")
    # Hovering a chart shows the values of the step under the pointer.
    box = page.locator("#h-count").bounding_box()
    assert box
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
    page.wait_for_selector("#history .h-chart[data-metric=count] .h-tip:not([hidden])")
    tip = page.text_content("#history .h-chart[data-metric=count] .h-tip") or ""
    for line in ("all versions", "v1", "v2"):
        assert line in tip, tip
    assert page.evaluate(NO_SIDEWAYS_SCROLL)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.locator("#history").screenshot(path=str(ARTIFACTS / "history-1h.png"))
    page.mouse.move(0, 0)
    page.wait_for_selector("#history .h-tip:not([hidden])", state="detached")
    page.screenshot(path=str(ARTIFACTS / "history-page.png"), full_page=True)

    # The live counters still follow the socket underneath.
    assert page.get_attribute("#conn", "data-state") == "live"

    # A reload keeps the range.
    page.reload()
    ready(page, "1h")
    assert pressed(page) == ["1h"]
    assert shown_counts(page) == RECENT_COUNTS

    # A week reaches the rows of 20 hours ago, v0's among them.
    page.click("#r-picker button[data-range='7d']")
    page.wait_for_function("() => location.hash === '#range=7d'")
    ready(page, "7d")
    assert check_against_api(page, gw) == ALL_COUNTS
    assert int(page.get_attribute("#h-v-count", "data-value") or 0) == (
        sum(RECENT_COUNTS.values()) + sum(OLD_COUNTS.values()))
    assert page.text_content("#h-q") == "highest step · binned"
    assert "p95 within one 4.4 % bin" in (page.text_content("#h-note") or "")
    assert "from per-minute rollups" in (page.text_content("#h-note") or "")
    assert page.evaluate(NO_SIDEWAYS_SCROLL)
    page.locator("#history").screenshot(path=str(ARTIFACTS / "history-7d.png"))

    # Back goes to the hour, forward to the week.
    page.go_back()
    ready(page, "1h")
    assert pressed(page) == ["1h"]
    page.go_forward()
    ready(page, "7d")

    # A custom range around the old rows only; it is in the URL as two times.
    page.click("#r-picker button[data-range='custom']")
    page.wait_for_selector("#r-custom:not([hidden])")
    since, until = now + OLD[0][0] - 7200, now + OLD[-1][0] + 7200
    page.fill("#r-since", local_input(since))
    page.fill("#r-until", local_input(until))
    page.click("#r-custom button[type=submit]")
    ready(page, "custom")
    want = f"#since={since // 60 * 60}&until={until // 60 * 60}"
    assert page.evaluate("location.hash") == want
    assert pressed(page) == ["custom"]
    assert check_against_api(page, gw) == OLD_COUNTS
    assert "refreshed" not in (page.text_content("#h-note") or "")

    # A range with nothing in it says so.
    page.evaluate(f"location.hash = '#since={now - 6 * 86400}&until={now - 5 * 86400}'")
    page.wait_for_selector("#history[data-state=empty]")
    assert page.is_visible("#h-empty")
    assert "rows reach the history within 30 s" in (page.text_content("#h-empty") or "")
    assert page.is_hidden("#h-body")

    # A history file that cannot be read: the answer says so, and so does the panel.
    hour = partition_name((now + OLD[0][0]) // 3600)
    bad = env.root / "logs" / "history" / ROLLUPS / hour / "f-9999999999999-0-0.parquet"
    bad.write_bytes(b"not parquet")
    page.go_back()
    page.wait_for_selector("#history[data-state=ready][data-complete=false]")
    assert page.get_attribute("#history", "data-range") == "custom"
    assert page.is_visible("#h-warn")
    assert "Incomplete: 1 history file could not be read" in (page.text_content("#h-warn") or "")
    page.locator("#history").screenshot(path=str(ARTIFACTS / "history-incomplete.png"))
    assert check_against_api(page, gw) == OLD_COUNTS

    # Live again: no fragment, no panel.
    page.click("#r-picker button[data-range='live']")
    page.wait_for_selector("#history", state="hidden")
    assert page.evaluate("location.hash") == ""
    assert pressed(page) == ["live"]
    page.close()

    # A shared link on a phone: the range from the URL, and nothing wider than the screen.
    phone = open_dashboard(browser, gw, 390, 844, "#range=1h")
    ready(phone, "1h")
    assert pressed(phone) == ["1h"]
    assert shown_counts(phone) == RECENT_COUNTS
    assert phone.evaluate(NO_SIDEWAYS_SCROLL), phone.evaluate(
        "[document.documentElement.scrollWidth, window.innerWidth]")
    phone.locator("#history").screenshot(path=str(ARTIFACTS / "history-phone.png"))
    phone.click("#r-picker button[data-range='custom']")
    phone.wait_for_selector("#r-custom:not([hidden])")
    assert phone.evaluate(NO_SIDEWAYS_SCROLL)
    phone.screenshot(path=str(ARTIFACTS / "history-phone-custom.png"))
    phone.press("#r-until", "Escape")
    phone.wait_for_selector("#r-custom", state="hidden")
    assert pressed(phone) == ["1h"]
    phone.close()
