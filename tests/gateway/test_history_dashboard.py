"""The dashboard's time-range picker and History panel in a real headless Chromium, against a
real gateway reading a history written by the history's own writer (and drift counts written
as the metric role copies them)."""

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

import numpy as np
import orjson
import pyarrow as pa
import pytest
from playwright.sync_api import Browser, Page, Request

from mlpulse.drift import Reference, column_profile
from mlpulse.history.drift_rollups import DRIFT_SCHEMA
from mlpulse.history.layout import DRIFT, ROLLUPS, partition_name
from mlpulse.history.writer import HistoryWriter, write_parquet
from mlpulse.pipeline.sink import format_rows
from tests.conftest import Env
from tests.gateway.conftest import Gateway, chromium_browser, fits_every_width, token

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
# The share of a canvas's pixels from x0 to x1 (CSS pixels) at height y that are the shade
# of the range the history does not reach yet (slate at 12 %, over nothing).
SHADED = """([id, x0, x1, y]) => {
  const c = document.getElementById(id), r = c.width / c.clientWidth;
  const a = Math.round(x0 * r), b = Math.round(x1 * r);
  const px = c.getContext('2d').getImageData(a, Math.round(y * r), b - a, 1).data;
  let n = 0;
  for (let i = 0; i < px.length; i += 4) {
    const slate = Math.abs(px[i] - 100) <= 6 && Math.abs(px[i + 2] - 139) <= 6;
    if (slate && Math.abs(px[i + 3] - 31) <= 3) n++;
  }
  return n / (b - a);
}"""
# Drift counts of v1, scored a minute at a time from 50 to 11 minutes ago; bmi's values move
# up by one of its standard deviations for the last DRIFTED minutes.
DRIFT_MINUTES = 40
DRIFTED = 15
EVENTS_PER_MINUTE = 1200
FEATURES = ("age", "bmi", "bp")
# The chart's colours: the top feature, the prediction, the guides, estimated and realized MAE.
TOP, PREDICTION, WARN, DRIFTING = "#7c3aed", "#0f172a", "#d97706", "#dc2626"
ESTIMATED, REALIZED = "#2563eb", "#dc2626"


def write_history(root: Path, now: int) -> None:
    """Metric-log rows as the sink formats them, flushed into the history in one go; each
    outbox entry's id is its time, as Redis gives it, so the history is written up to the
    last one's (10.5 minutes ago)."""
    lines = []
    for ago, counts in [*OLD, *RECENT]:
        at = now + ago
        entry = at * 1000
        rows = []
        for version, n in counts.items():
            for i in range(n):
                error = ERRORS[version] + (entry + i) % 7
                rows.append([f"r{entry}-{version}-{i}", "100.0", repr(100.0 + error), version,
                             "", ""])
        lines.append(format_rows(f"{entry}-0", {b"at": repr(float(at)).encode(),
                                                b"rows": orjson.dumps(rows)}, -1, now))
    root.mkdir(parents=True, exist_ok=True)
    HistoryWriter(root).flush("".join(lines).encode())


def write_profile(models: Path) -> Reference:
    """v1's reference profile, where the gateway looks for it; v2 has none."""
    rng = np.random.default_rng(11)
    age, bmi, bp = rng.normal(50, 10, 5000), rng.normal(26, 4, 5000), rng.normal(90, 12, 5000)
    doc = {"format": 1, "reference_mae": 3.0,
           "features": [column_profile(name, values, 10)
                        for name, values in zip(FEATURES, (age, bmi, bp), strict=True)],
           "prediction": column_profile("prediction", age + bmi + bp, 10)}
    models.mkdir(parents=True, exist_ok=True)
    (models / "model-v1.profile.json").write_text(json.dumps(doc))
    return Reference.from_doc(doc)


def write_drift(root: Path, now: int, ref: Reference) -> list[int]:
    """v1's drift counts per minute, as the metric role copies them into `_drift/`; returns
    the minutes in which bmi had moved."""
    rng = np.random.default_rng(5)
    first = (now - 50 * 60) // 60 * 60
    cols: dict[str, list[Any]] = {name: [] for name in DRIFT_SCHEMA.names}
    moved = []
    for k in range(DRIFT_MINUTES):
        minute = first + 60 * k
        shift = 4.0 if k >= DRIFT_MINUTES - DRIFTED else 0.0
        if shift:
            moved.append(minute)
        X = np.column_stack([rng.normal(50, 10, EVENTS_PER_MINUTE),
                             rng.normal(26 + shift, 4, EVENTS_PER_MINUTE),
                             rng.normal(90, 12, EVENTS_PER_MINUTE)])
        ints, floats = ref.batch_fields(X, X.sum(axis=1), np.full(EVENTS_PER_MINUTE, 3.5))
        pairs = ints + floats
        for field, value in zip(pairs[::2], pairs[1::2], strict=True):
            for name, v in zip(DRIFT_SCHEMA.names, (minute, "v1", field, float(value)),
                               strict=True):
                cols[name].append(v)
    table = pa.table(cols, schema=DRIFT_SCHEMA)
    hours = table.column("minute").to_numpy() // 3600
    last_ms = (first + 60 * (DRIFT_MINUTES - 1)) * 1000
    for hour in np.unique(hours):
        write_parquet(root / DRIFT / partition_name(int(hour)) / f"f-{last_ms}-0-0.parquet",
                      table.filter(pa.array(hours == hour)))
    return moved


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
                   fragment: str = "", calls: HistoryCalls | None = None) -> Page:
    # UTC, so that the custom range's datetime-local values below mean what they say.
    page = browser.new_page(viewport={"width": width, "height": height}, timezone_id="UTC")
    if calls is not None:
        calls.watch(page)
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


class HistoryCalls:
    """A page's requests to /api/history, as their query parameters."""

    def __init__(self) -> None:
        self.calls: list[dict[str, str]] = []

    def watch(self, page: Page) -> None:
        page.on("request", self._seen)

    def _seen(self, request: Request) -> None:
        url = urllib.parse.urlsplit(request.url)
        if url.path == "/api/history":
            self.calls.append(dict(urllib.parse.parse_qsl(url.query)))

    def take(self) -> list[dict[str, str]]:
        calls, self.calls = self.calls, []
        return calls


def one_refresh(calls: list[dict[str, str]], version: str) -> None:
    """A refresh is one read of every version's series and one of `version`'s drift, with
    the bounds and step the first answered with (not one read per version)."""
    assert len(calls) == 2, calls
    every, drift = calls
    assert every["per_version"] == "true"
    assert "model_version" not in every
    assert drift["model_version"] == version
    assert "per_version" not in drift


def check_against_api(page: Page, gw: Gateway) -> dict[str, int]:
    """The panel's counts and MAE are what /api/history says for the range the panel shows."""
    since, until = shown_range(page)
    step = page.get_attribute("#history", "data-step")
    combined = api_history(gw, since=since, until=until, step=step, per_version="true")
    # The panel shows the answer's own bounds: asked again, they come back as they are.
    assert (combined["since"], combined["until"]) == (since, until)
    counts = {version: sum(p["count"] for p in combined["by_version"][version])
              for version in combined["versions"]}
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


def utc_clock(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%H:%M:%S")


def check_written_marker(page: Page, gw: Gateway) -> None:
    """The part of the range the history does not reach yet is shaded on every chart, from
    the time the API says, which the legend gives."""
    since, until = shown_range(page)
    written = api_history(gw, since=since, until=until)["written_until"]
    assert written is not None
    assert since < written < until
    assert float(page.get_attribute("#history", "data-written-until") or "nan") == written
    key = page.locator("#h-written")
    assert key.is_visible()
    assert key.text_content() == f"history written up to {utc_clock(written)}"
    for metric in ("mae", "rmse", "p95", "count"):
        chart = f"h-{metric}"
        x = float(page.get_attribute(f"#{chart}", "data-written-x") or "nan")
        width, height = page.eval_on_selector(f"#{chart}", "c => [c.clientWidth, c.clientHeight]")
        left, right = 42, width - 10  # the charts' plot area
        assert left + (right - left) * (written - since) / (until - since) == pytest.approx(x)
        # Shaded from the line to the end (at 3/8 of the height, between grid lines; the
        # odd time tick crosses it), and not before: the rows start 50 minutes ago.
        y = 8 + (height - 28) * 3 / 8
        assert page.evaluate(SHADED, [chart, x + 2, right - 2, y]) > 0.9, chart
        assert page.evaluate(SHADED, [chart, left + 2, x - 2, y]) < 0.05, chart


def test_history_panel_follows_the_range_in_the_url(env: Env, start_gateway: Callable[..., Gateway],
                                                    browser: Browser) -> None:
    now = int(time.time())
    write_history(env.root / "logs" / "history", now)
    gw = start_gateway()
    calls = HistoryCalls()
    page = open_dashboard(browser, gw, 1366, 900, calls=calls)
    assert pressed(page) == ["live"]
    assert page.is_hidden("#history")
    assert page.evaluate("location.hash") == ""
    assert calls.take() == []

    page.click("#r-picker button[data-range='1h']")
    # A function: a bare expression would be eval'd on every poll, which the page's CSP refuses.
    page.wait_for_function("() => location.hash === '#range=1h'")
    ready(page, "1h")
    # The newest version's drift, which it has no profile for: the reason, in one line.
    page.wait_for_selector("#h-drift[data-state=unavailable][data-version=v2]")
    one_refresh(calls.take(), "v2")
    reason = api_history(gw, since=now - 3600, until=now, model_version="v2")["drift"]
    assert page.text_content("#h-d-off") == reason["unavailable"]
    assert "no reference profile" in reason["unavailable"]
    assert page.is_hidden("#h-d-body")
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
    check_written_marker(page, gw)
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
    assert fits_every_width(page) == []
    page.screenshot(path=str(ARTIFACTS / "history-page.png"), full_page=True)

    # The live counters still follow the socket underneath.
    assert page.get_attribute("#conn", "data-state") == "live"

    # A reload keeps the range.
    page.reload()
    ready(page, "1h")
    assert pressed(page) == ["1h"]
    assert shown_counts(page) == RECENT_COUNTS

    # A week reaches the rows of 20 hours ago, v0's among them: still two reads.
    page.wait_for_selector("#h-drift[data-state=unavailable]")
    calls.take()
    page.click("#r-picker button[data-range='7d']")
    page.wait_for_function("() => location.hash === '#range=7d'")
    ready(page, "7d")
    page.wait_for_selector("#h-drift[data-state=unavailable][data-version=v2]")
    one_refresh(calls.take(), "v2")
    assert check_against_api(page, gw) == ALL_COUNTS
    # The rollups' bounds are whole minutes, the end rounded up.
    since, until = shown_range(page)
    assert since % 60 == 0
    assert until % 60 == 0
    assert until >= now
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
    # All of this range is in the history: nothing to mark.
    assert page.locator("#h-written").count() == 0
    assert page.get_attribute("#h-mae", "data-written-x") is None

    # A range with nothing in it says so.
    # Over a day by an hour: exactly a day would lose the date whenever `now` fell on a
    # whole minute (the answer's bounds are whole minutes), one run in sixty.
    page.evaluate(f"location.hash = '#since={now - 6 * 86400}&until={now - 5 * 86400 + 3600}'")
    page.wait_for_selector("#history[data-state=empty]")
    assert page.is_visible("#h-empty")
    written = api_history(gw, since=now - 3600, until=now)["written_until"]
    # A day and more: the day too.
    day = datetime.fromtimestamp(written, UTC).strftime("%b %-d")
    assert (f"the history is written up to {day} {utc_clock(written)}, and newer rows reach it "
            "within 30 s") in (page.text_content("#h-empty") or "")
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


def test_history_panel_draws_one_versions_drift(env: Env, start_gateway: Callable[..., Gateway],
                                                browser: Browser) -> None:
    now = int(time.time())
    root = env.root / "logs" / "history"
    write_history(root, now)
    moved = write_drift(root, now, write_profile(env.root / "models"))
    gw = start_gateway()
    calls = HistoryCalls()
    page = open_dashboard(browser, gw, 1366, 900, "#range=1h&v=v1", calls)
    ready(page, "1h")
    page.wait_for_selector("#h-drift[data-state=ready][data-version=v1]")
    one_refresh(calls.take(), "v1")
    assert page.eval_on_selector("#h-dv", "s => s.value") == "v1"
    assert page.eval_on_selector_all("#h-dv option", "os => os.map((o) => o.value)") == ["v2", "v1"]

    # What the API says of v1 over the range the panel shows, at the panel's step.
    since, until = shown_range(page)
    step = page.get_attribute("#history", "data-step")
    answer = api_history(gw, since=since, until=until, step=step, model_version="v1")
    drift = answer["drift"]
    assert drift["complete"]
    assert drift["step"] == 60
    points = drift["series"]
    assert [p["events"] for p in points] == [EVENTS_PER_MINUTE] * DRIFT_MINUTES
    assert all(p["estimated_mae"] == pytest.approx(3.5) for p in points)
    # bmi moved in the minutes it was made to, and only then; the others stayed.
    before = [p["features"]["bmi"] for p in points if p["t"] not in moved]
    after = [p["features"]["bmi"] for p in points if p["t"] in moved]
    assert len(after) == DRIFTED
    assert max(before) < 0.1 < 0.25 < min(after), (before, after)
    assert all(p["features"][f] < 0.1 for p in points for f in ("age", "bp"))
    peak = max(points, key=lambda p: p["features"]["bmi"])

    # The chart names bmi as the feature that went highest, with the API's value.
    top = page.locator("#h-d-top")
    assert top.get_attribute("data-feature") == "bmi"
    assert float(top.get_attribute("data-value") or "nan") == peak["features"]["bmi"]
    assert (top.text_content() or "").startswith("bmi ")
    assert page.get_attribute("#h-psi", "data-top") == "bmi"
    assert page.text_content("#h-d-key-top") == "bmi"
    assert "per 1 min of scoring time" in (page.text_content("#h-d-note") or "")
    assert f"{DRIFT_MINUTES * EVENTS_PER_MINUTE:,} events scored" in (
        page.text_content("#h-d-note") or "")
    assert page.is_hidden("#h-d-off")
    # Its line, the prediction's, both guides; estimated and realized MAE beside.
    drawn = page.evaluate(COLOURS_DRAWN, ["h-psi", [TOP, PREDICTION, WARN, DRIFTING]])
    assert all(n > 0 for n in drawn), drawn
    drawn = page.evaluate(COLOURS_DRAWN, ["h-est", [ESTIMATED, REALIZED]])
    assert all(n > 0 for n in drawn), drawn

    # Pointing at the peak: the step's values, bmi's the API's, drift-coloured.
    page.locator("#h-psi").scroll_into_view_if_needed()
    box = page.locator("#h-psi").bounding_box()
    assert box
    x = float(page.get_attribute("#h-psi", "data-peak-x") or "nan")
    page.mouse.move(box["x"] + x, box["y"] + box["height"] / 2)
    tip = "#h-drift .h-tip"
    page.wait_for_selector(f"{tip}:not([hidden])")
    row = page.locator(f"{tip} .row[data-feature=bmi]")
    assert float(row.locator(".num").get_attribute("data-value") or "nan") == (
        peak["features"]["bmi"])
    assert "drift" in (row.get_attribute("class") or "")
    assert f"{utc_clock(peak['t'])[:5]}\u2013{utc_clock(peak['t'] + 60)[:5]}" in (
        page.text_content(tip) or "")
    pred = float(page.get_attribute(f"{tip} .row:not([data-feature]) .num[data-value]",
                                    "data-value") or "nan")
    assert pred == peak["prediction_psi"]
    assert page.evaluate(NO_SIDEWAYS_SCROLL)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.locator("#h-drift").screenshot(path=str(ARTIFACTS / "history-drift.png"))
    page.mouse.move(0, 0)
    page.wait_for_selector(f"{tip}:not([hidden])", state="detached")
    assert fits_every_width(page) == []
    page.locator("#history").screenshot(path=str(ARTIFACTS / "history-1h-drift.png"))

    # Another version: one more read, of its drift alone, and the URL names it.
    page.select_option("#h-dv", "v2")
    page.wait_for_selector("#h-drift[data-state=unavailable][data-version=v2]")
    page.wait_for_function("() => location.hash === '#range=1h&v=v2'")
    calls_now = calls.take()
    assert len(calls_now) == 1, calls_now
    assert calls_now[0]["model_version"] == "v2"
    assert "no reference profile" in (page.text_content("#h-d-off") or "")
    assert page.get_attribute("#history", "data-state") == "ready"
    page.select_option("#h-dv", "v1")
    page.wait_for_selector("#h-drift[data-state=ready][data-version=v1]")

    # A range with no drift counts of v1 says so, in one line.
    page.evaluate(f"location.hash = '#since={now + OLD[0][0]}&until={now + OLD[-1][0]}&v=v1'")
    ready(page, "custom")
    page.wait_for_selector("#h-drift[data-state=empty][data-version=v1]")
    assert "No drift counts of v1 in this range" in (page.text_content("#h-d-off") or "")
    page.close()

    # On a phone the drift chart fits too.
    phone = open_dashboard(browser, gw, 390, 844, "#range=1h&v=v1")
    ready(phone, "1h")
    phone.wait_for_selector("#h-drift[data-state=ready][data-version=v1]")
    assert phone.get_attribute("#h-d-top", "data-feature") == "bmi"
    assert phone.evaluate(NO_SIDEWAYS_SCROLL), phone.evaluate(
        "[document.documentElement.scrollWidth, window.innerWidth]")
    phone.locator("#h-psi").scroll_into_view_if_needed()
    box = phone.locator("#h-psi").bounding_box()
    assert box
    x = float(phone.get_attribute("#h-psi", "data-peak-x") or "nan")
    phone.mouse.click(box["x"] + x, box["y"] + box["height"] / 2)
    phone.wait_for_selector(f"{tip}:not([hidden])")
    assert phone.evaluate(NO_SIDEWAYS_SCROLL)
    phone.locator("#h-drift").screenshot(path=str(ARTIFACTS / "history-drift-phone.png"))
    phone.close()
