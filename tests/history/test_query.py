"""Reading the history: series and summaries agree with a direct computation over the same
rows, and a file that cannot be read is skipped, said, and never counted."""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import numpy as np
import pytest

from mlpulse.history import query, rollup
from mlpulse.history.layout import files, partitions
from mlpulse.history.writer import HistoryWriter
from tests.history.logs import body, write_log

NOW = time.time()


@pytest.fixture
def history(tmp_path: Path, opened: Callable[[Path], IO[bytes]]) -> tuple[
        Path, list[tuple[str, str, float, float]]]:
    """Six hours of rows of two versions, flushed in four pieces and compacted."""
    log = tmp_path / "metric_log.csv"
    rows = write_log(log, entries=240, per_entry=40, span=6 * 3600, start=NOW - 6 * 3600)
    f = opened(log)
    writer = HistoryWriter(tmp_path / "history")
    data = body(f, writer.recover(f))
    at = 0
    for _ in range(4):
        end = data.rfind(b"\n", 0, at + len(data) // 4) + 1 or len(data)
        writer.flush(data[at:end])
        at = end
    if at < len(data):
        writer.flush(data[at:])
    writer.compact(NOW - 3 * 3600)
    return writer.root, rows


def direct(rows: list[tuple[str, str, float, float]], since: float, until: float, step: int,
           version: str | None) -> dict[int, dict[str, float]]:
    groups: dict[int, list[float]] = {}
    for _, v, joined, err in rows:
        if since <= joined < until and (version is None or v == version):
            groups.setdefault(int(math.floor(joined / step) * step), []).append(err)
    return {t: {"count": len(e), "mae": float(np.mean(e)),
                "rmse": math.sqrt(float(np.mean(np.square(e)))),
                "p95": float(np.quantile(e, 0.95)), "max": max(e)}
            for t, e in groups.items()}


@pytest.mark.parametrize("version", [None, "v2"])
def test_series_from_rows_is_exact(history: tuple[Path, list[tuple[str, str, float, float]]],
                                   version: str | None) -> None:
    root, rows = history
    since, until = NOW - 5400, NOW - 1800
    got = query.series(root, since, until, step=600, version=version)
    assert got["source"] == "rows"
    assert got["quantiles"] == "exact"
    assert got["complete"]
    want = direct(rows, since, until, 600, version)
    assert [p["t"] for p in got["series"]] == sorted(want)
    for p in got["series"]:
        for key in ("count", "mae", "rmse", "p95", "max"):
            assert math.isclose(p[key], want[p["t"]][key], rel_tol=1e-12), (p, key)


@pytest.mark.parametrize("version", [None, "v1"])
def test_series_from_rollups_is_exact_but_for_quantiles_within_a_bin(
        history: tuple[Path, list[tuple[str, str, float, float]]], version: str | None) -> None:
    root, rows = history
    since, until = NOW - 6 * 3600 - 60, NOW + 60
    got = query.series(root, since, until, step=1800, version=version)
    assert got["source"] == "rollups"
    assert got["quantiles"] == "bin"
    want = direct(rows, got["since"], until, 1800, version)
    assert [p["t"] for p in got["series"]] == sorted(want)
    for p in got["series"]:
        w = want[p["t"]]
        assert p["count"] == w["count"]
        for key in ("mae", "rmse", "max"):
            assert math.isclose(p[key], w[key], rel_tol=1e-12), (p, key)
        low, high = rollup.bin_edges(int(rollup.bins(np.array([p["p95"]]))[0]))
        assert low - (high - low) <= w["p95"] <= high + (high - low), (p, w)


def test_steps_are_whole_minutes_for_rollups_and_points_are_bounded(
        history: tuple[Path, list[tuple[str, str, float, float]]]) -> None:
    root, _ = history
    got = query.series(root, NOW - 7 * 86400, NOW, step=1)
    assert got["source"] == "rollups"
    assert got["step"] % 60 == 0
    assert (NOW - got["since"]) / got["step"] <= query.MAX_POINTS
    with pytest.raises(query.RangeError):
        query.series(root, NOW, NOW - 1)
    with pytest.raises(query.RangeError):
        query.series(root, NOW - 2 * 86400, NOW, source="rows")


def test_reports_from_rows_and_from_rollups_agree_with_the_rows(
        history: tuple[Path, list[tuple[str, str, float, float]]]) -> None:
    root, rows = history
    short = query.summarize(root, NOW - 3600, NOW + 1, "v1")
    errors = [r[3] for r in rows if r[2] >= NOW - 3600 and r[1] == "v1"]
    assert short.exact
    assert short.count == len(errors)
    assert math.isclose(short.quantiles["p95"], float(np.quantile(errors, 0.95)))
    whole = query.summarize(root, None, None, None)
    every = [r[3] for r in rows]
    assert not whole.exact
    assert whole.count == len(every)
    assert whole.mae is not None
    assert math.isclose(whole.mae, float(np.mean(every)), rel_tol=1e-12)
    assert whole.max == max(every)


def test_a_corrupt_or_half_written_file_is_skipped_with_a_warning_and_said(
        history: tuple[Path, list[tuple[str, str, float, float]]],
        caplog: pytest.LogCaptureFixture) -> None:
    root, rows = history
    newest = partitions(root)[-1]
    live, _ = files(newest.path)
    good = live[-1]
    # A half-written file under a name a flush would use, and one of plain garbage.
    half = good.with_name("f-9999999999999-0-0.parquet")
    data = good.read_bytes()
    half.write_bytes(data[: len(data) // 2])
    garbage = partitions(root)[0].path / "f-9999999999999-0-1.parquet"
    garbage.write_bytes(b"not parquet at all")
    with caplog.at_level(logging.WARNING, "mlpulse.history.query"):
        got = query.series(root, NOW - 3600, NOW + 60, step=600)
        scan = query.read_rows(root, 0, 4e9, ["id"])
        whole = query.series(root, NOW - 7 * 3600, NOW + 60, step=3600)
    assert got["source"] == "rows"
    assert not got["complete"]
    assert got["skipped_files"] == 1
    assert sum(p["count"] for p in got["series"]) == sum(
        1 for r in rows if NOW - 3600 <= r[2] < NOW + 60)
    assert whole["source"] == "rollups"
    assert whole["complete"]  # the rollups were not damaged
    assert sorted(set(scan.skipped)) == sorted({str(half), str(garbage)})
    assert scan.table.num_rows == len(rows)  # every good row, nothing of the bad files
    assert "cannot be read" in caplog.text
    assert str(half) in caplog.text
    summary = query.summarize(root, NOW - 3600, NOW + 1, None)
    assert summary.skipped == [str(half)]
    (root / "_rollups" / newest.path.relative_to(root) / half.name).write_bytes(b"PAR1")
    assert not query.series(root, NOW - 7 * 3600, NOW + 60, step=3600)["complete"]
    shutil.rmtree(root)
    assert query.series(root, NOW - 60, NOW)["series"] == []
