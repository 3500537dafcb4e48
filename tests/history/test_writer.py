"""The history writer: exactly once through a kill at any step, compaction, retention."""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import IO

import pyarrow.parquet as pq
import pytest

from mlpulse.history import query
from mlpulse.history.layout import ROLLUPS, files, partitions
from mlpulse.history.writer import HistoryWriter
from tests.history.crashes import Crash, crash_at, steps_of
from tests.history.logs import body, write_log

FOREVER = (0.0, 4e9)


def ids_in(root: Path) -> Counter[str]:
    scan = query.read_rows(root, *FOREVER, ["id"])
    assert not scan.skipped
    return Counter(scan.table.column("id").to_pylist())


def rollup_count(root: Path) -> int:
    return int(sum(query.read_rollups(root, *FOREVER).table.column("count").to_pylist()))


def test_rows_go_in_once_by_hour_with_rollups_that_add_up(
        opened: Callable[[Path], IO[bytes]], tmp_path: Path) -> None:
    rows = write_log(tmp_path / "metric_log.csv", span=3 * 3600)
    f = opened(tmp_path / "metric_log.csv")
    writer = HistoryWriter(tmp_path / "history")
    start = writer.recover(f)
    data = body(f, start)
    cut = data.rfind(b"\n", 0, len(data) // 2) + 1
    writer.flush(data[:cut])
    assert writer.recover(f) == start + cut  # a new start resumes after the first flush
    writer.flush(data[cut:])
    assert ids_in(writer.root) == Counter(r[0] for r in rows)
    hours = {int(r[2] // 3600) for r in rows}
    assert [p.hour for p in partitions(writer.root)] == sorted(hours)
    for p in partitions(writer.root):
        table = pq.read_table(files(p.path)[0][0])
        assert all(h // 3600 == p.hour for h in table.column("joined_at").to_pylist())
    assert rollup_count(writer.root) == len(rows)
    assert not (writer.root / ROLLUPS / "date=x").exists()


def test_a_kill_at_any_step_of_a_flush_neither_loses_nor_repeats_a_row(
        opened: Callable[[Path], IO[bytes]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    rows = write_log(tmp_path / "metric_log.csv", span=2 * 3600)
    f = opened(tmp_path / "metric_log.csv")
    expected = Counter(r[0] for r in rows)
    probe = HistoryWriter(tmp_path / "probe")
    data = body(f, probe.recover(f))
    cut = data.rfind(b"\n", 0, len(data) // 3) + 1
    probe.flush(data[:cut])
    total = steps_of(monkeypatch, lambda: probe.flush(data[cut:]))
    assert total >= 5  # pending mark, a rows and a rollup file per hour, done mark
    for k in range(1, total + 1):
        writer = HistoryWriter(tmp_path / f"h{k}")
        writer.recover(f)
        writer.flush(data[:cut])
        with crash_at(monkeypatch, k), pytest.raises(Crash):
            writer.flush(data[cut:])
        again = HistoryWriter(writer.root)
        rest = body(f, again.recover(f))
        if rest:
            again.flush(rest)
        assert ids_in(again.root) == expected, f"crash at step {k} of {total}"
        assert rollup_count(again.root) == len(rows), f"crash at step {k} of {total}"


def test_a_kill_at_any_step_of_a_compaction_never_shows_a_row_twice(
        opened: Callable[[Path], IO[bytes]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    rows = write_log(tmp_path / "metric_log.csv", entries=60, span=2 * 3600)
    f = opened(tmp_path / "metric_log.csv")
    expected = Counter(r[0] for r in rows)

    def build(root: Path) -> HistoryWriter:
        writer = HistoryWriter(root)
        data = body(f, writer.recover(f))
        step = len(data) // 6
        at = 0
        while at < len(data):
            end = data.rfind(b"\n", 0, at + step) + 1 if at + step < len(data) else len(data)
            writer.flush(data[at:end])
            at = end
        return writer

    probe = build(tmp_path / "probe")
    total = steps_of(monkeypatch, lambda: probe.compact(time.time() + 3600))
    assert [len(files(p.path)[0]) for p in partitions(probe.root)] == [1] * len(
        partitions(probe.root))
    for k in range(1, total + 1):
        writer = build(tmp_path / f"h{k}")
        with crash_at(monkeypatch, k), pytest.raises(Crash):
            writer.compact(time.time() + 3600)
        # A reader right after the kill, before any recovery, sees each row once.
        assert ids_in(writer.root) == expected, f"crash at step {k} of {total}"
        assert rollup_count(writer.root) == len(rows), f"crash at step {k} of {total}"
        again = HistoryWriter(writer.root)
        again.recover(f)
        again.compact(time.time() + 3600)
        for base in (again.root, again.root / ROLLUPS):
            for p in partitions(base):
                live, stale = files(p.path)
                assert len(live) == 1, (k, p.path, live)
                assert not stale, (k, p.path, stale)
                assert not [x for x in p.path.iterdir() if x.name.endswith(".part")]
        assert ids_in(again.root) == expected


def test_compaction_leaves_the_open_hour_alone_and_rollups_stay_exact(
        opened: Callable[[Path], IO[bytes]], tmp_path: Path) -> None:
    now = time.time()
    rows = write_log(tmp_path / "metric_log.csv", entries=30, span=1800, start=now - 1800)
    f = opened(tmp_path / "metric_log.csv")
    writer = HistoryWriter(tmp_path / "history")
    data = body(f, writer.recover(f))
    half = data.rfind(b"\n", 0, len(data) // 2) + 1
    writer.flush(data[:half])
    writer.flush(data[half:])
    before = {p.hour: len(files(p.path)[0]) for p in partitions(writer.root)}
    writer.compact(closed_before=now - 90)
    after = {p.hour: len(files(p.path)[0]) for p in partitions(writer.root)}
    current = int(now // 3600)
    assert after.get(current) == before.get(current)  # the hour still being written
    whole = query.series(writer.root, now - 7200, now + 1, step=3600, source="rollups")
    errors = [r[3] for r in rows]
    assert sum(p["count"] for p in whole["series"]) == len(rows)
    total_mae = sum(p["mae"] * p["count"] for p in whole["series"]) / len(rows)
    assert math.isclose(total_mae, sum(errors) / len(errors), rel_tol=1e-12)


def test_retention_removes_old_hours_and_nothing_else(
        opened: Callable[[Path], IO[bytes]], tmp_path: Path) -> None:
    now = time.time()
    day = 86400.0
    writer = HistoryWriter(tmp_path / "history")
    log = tmp_path / "metric_log.csv"
    old = write_log(log, entries=2, span=60, start=now - 40 * day)
    f = opened(log)
    writer.recover(f)
    writer.flush(body(f, writer.recover(f)))
    mid = write_log(log, entries=2, span=60, start=now - 34 * day,
                       first_entry=1_800_000_000_000)
    new = write_log(log, entries=2, span=60, start=now - 600,
                       first_entry=1_900_000_000_000)
    writer.flush(body(f, writer.recover(f)))
    assert writer.retain(now, rows_days=35, rollup_days=400) == 1
    assert ids_in(writer.root) == Counter(r[0] for r in mid + new)
    assert rollup_count(writer.root) == len(old + mid + new)  # rollups are kept longer
    assert writer.retain(now, rows_days=35, rollup_days=35) == 1
    assert rollup_count(writer.root) == len(mid + new)
    assert writer.retain(now, rows_days=35, rollup_days=35) == 0
    days = sorted(d.name for d in writer.root.iterdir() if d.name.startswith("date="))
    assert len(days) == len({int(r[2] // day) for r in mid + new})  # empty days removed
