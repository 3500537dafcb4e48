"""Drift counts copied into the history: each complete minute once, through a kill at any
step of a copy, and drift over a long range read back from them."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import IO, Any

import numpy as np
import pytest

from mlpulse.config import Settings
from mlpulse.drift import DriftStore, Reference, Thresholds, column_profile
from mlpulse.history.drift_rollups import DriftArchive, drift_series, drift_written_until
from mlpulse.history.layout import DRIFT
from mlpulse.history.query import scan
from mlpulse.history.writer import HistoryWriter
from tests.conftest import REDIS_DB
from tests.history.crashes import Crash, crash_at

RNG = np.random.default_rng(7)
NOW = time.time()
MINUTES = 40
SHIFT_FROM = 20  # minutes before now from which feature "a" moved by two stds


def reference() -> Reference:
    a, b = RNG.normal(0, 1, 5000), RNG.normal(5, 2, 5000)
    pred = a + b
    return Reference.from_doc({
        "format": 1, "reference_mae": 40.0,
        "features": [column_profile("a", a, 10), column_profile("b", b, 10)],
        "prediction": column_profile("prediction", pred, 10)})


async def fill(aredis: Any, ref: Reference) -> list[int]:
    """Forty minutes of scoring, 1,200 events a minute, in the past; returns the minutes."""
    store = DriftStore(aredis, Settings(redis_url=f"redis://localhost:6379/{REDIS_DB}"))
    minutes = []
    for k in range(MINUTES, 0, -1):
        minute = int((NOW - k * 60) // 60) * 60
        minutes.append(minute)
        shift = 2.0 if k <= SHIFT_FROM else 0.0
        X = np.column_stack([RNG.normal(shift, 1, 1200), RNG.normal(5, 2, 1200)])
        ints, floats = ref.batch_fields(X, X.sum(axis=1), np.full(1200, 30.0))
        await store.record("v1", ints, floats, now=minute + 30)
    return minutes


def copied(root: Path) -> Counter[tuple[int, str]]:
    found: Counter[tuple[int, str]] = Counter()
    for table, skipped in scan(root / DRIFT, 0, 4e9, ["minute", "field"],
                               _schema(), "minute", None):
        assert not skipped
        found.update(zip(table.column("minute").to_pylist(), table.column("field").to_pylist(),
                         strict=True))
    return found


def _schema() -> Any:
    from mlpulse.history.drift_rollups import DRIFT_SCHEMA
    return DRIFT_SCHEMA


async def test_each_complete_minute_is_copied_once_and_reads_back_as_drift(
        aredis: Any, tmp_path: Path) -> None:
    ref = reference()
    minutes = await fill(aredis, ref)
    archive = DriftArchive(tmp_path / "history")
    assert await archive.export(aredis, NOW, keep=3600) > 0
    assert await archive.export(aredis, NOW, keep=3600) == 0  # nothing twice
    found = copied(tmp_path / "history")
    assert max(found.values()) == 1
    settled = [m for m in minutes if m + 60 + 120 <= NOW]
    assert {m for m, _ in found} == set(settled)
    assert all((m, "n") in found for m in settled)
    assert not any(f.startswith("l") for _, f in found)  # label-side fields stay out

    points, got = drift_series(tmp_path / "history", NOW - 3600, NOW, 300, "v1", ref,
                               Thresholds())
    assert not got.skipped
    assert sum(p["events"] for p in points) == 1200 * len(settled)
    assert all(p["estimated_mae"] == pytest.approx(30.0) for p in points)
    before = [p for p in points if p["t"] + 300 <= NOW - (SHIFT_FROM + 1) * 60]
    after = [p for p in points if p["t"] >= NOW - (SHIFT_FROM - 1) * 60]
    assert before
    assert after
    assert all(p["features"]["a"] < 0.1 for p in before)
    assert all(p["features"]["a"] > 0.25 for p in after)
    assert all(p["features"]["b"] < 0.1 for p in points)

    # Compaction and retention treat the drift counts like the rest of the history.
    writer = HistoryWriter(tmp_path / "history")
    writer.compact(NOW + 3600)
    assert copied(tmp_path / "history") == found
    writer.retain(NOW + 3 * 86400, rows_days=1, rollup_days=1)
    assert not copied(tmp_path / "history")


async def test_a_kill_at_any_step_of_a_copy_never_copies_a_minute_twice(
        aredis: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ref = reference()
    await fill(aredis, ref)
    probe = DriftArchive(tmp_path / "probe")
    with crash_at(monkeypatch, 10**9) as steps:
        await probe.export(aredis, NOW, keep=3600)
    expected = copied(tmp_path / "probe")
    total = len(steps)
    assert total >= 3
    for k in range(1, total + 1):
        root = tmp_path / f"k{k}"
        with crash_at(monkeypatch, k), pytest.raises(Crash):
            await DriftArchive(root).export(aredis, NOW, keep=3600)
        with _empty_log(tmp_path) as log:  # what the metric role's start does first
            HistoryWriter(root).recover(log)
        await DriftArchive(root).export(aredis, NOW, keep=3600)
        assert copied(root) == expected, f"crash at step {k} of {total}"


def _empty_log(tmp_path: Path) -> IO[bytes]:
    path = tmp_path / "metric_log.csv"
    path.write_bytes(b"id\n")
    return path.open("rb")


async def test_a_version_without_an_error_estimator_has_no_estimate_not_zero(
        aredis: Any, tmp_path: Path) -> None:
    ref = reference()
    store = DriftStore(aredis, Settings(redis_url=f"redis://localhost:6379/{REDIS_DB}"))
    minute = int((NOW - 600) // 60) * 60
    X = np.column_stack([RNG.normal(0, 1, 1200), RNG.normal(5, 2, 1200)])
    ints, _ = ref.batch_fields(X, X.sum(axis=1), None)
    await store.record("v1", ints, [], now=minute + 30)
    archive = DriftArchive(tmp_path / "history")
    assert await archive.export(aredis, NOW, keep=3600) > 0
    points, _ = drift_series(tmp_path / "history", NOW - 3600, NOW, 600, "v1", ref,
                             Thresholds())
    assert [p["events"] for p in points] == [1200]
    assert points[0]["estimated_mae"] is None
    assert drift_written_until(tmp_path / "history") == int((NOW - 120) // 60) * 60
