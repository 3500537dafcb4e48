"""Rotation of the metric log: exactly once across the live and rotated files, through a
kill at any step of a rotation or a compression, and through real `kill -9`s mid-stream."""

from __future__ import annotations

import csv
import gzip
import io
import math
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mlpulse.history import query
from mlpulse.pipeline import logfiles
from mlpulse.pipeline.sink import HEADER, HEADER_LINE, recover
from tests.conftest import Env, Role, wait_until
from tests.history.crashes import Crash, crash_at, steps_of
from tests.history.logs import write_log

NAME = re.compile(r"^metric_log(-\d{8}T\d{6}\.\d{6}Z)?\.csv(\.gz)?$")


def union(log_dir: Path) -> list[list[str]]:
    """Every row of the live and rotated files, each file checked to start with the header."""
    rows: list[list[str]] = []
    for path in sorted(log_dir.iterdir()):
        if not NAME.match(path.name):
            continue
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        assert raw.startswith(HEADER_LINE), path
        assert raw.endswith(b"\n"), path
        reader = csv.reader(io.StringIO(raw.decode()))
        next(reader)
        rows.extend(reader)
    return rows


def assert_tidy(log_dir: Path) -> None:
    names = {p.name for p in log_dir.iterdir()}
    both = [n for n in names if n.endswith(".csv") and n + ".gz" in names]
    assert not both, f"plain and gzipped copies side by side: {both}"
    for path in log_dir.rglob("*"):
        if path.name.startswith("."):
            assert not path.name.endswith((".csv", ".csv.gz", ".parquet")), path


def test_a_kill_at_any_step_of_a_rotation_loses_and_repeats_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    probe = tmp_path / "probe" / "metric_log.csv"
    probe.parent.mkdir()
    write_log(probe, entries=3, per_entry=10)
    total = steps_of(monkeypatch, lambda: logfiles.rotate(probe, "1700000000002-0:9",
                                                           HEADER_LINE, time.time()))
    assert total >= 3
    for k in range(1, total + 1):
        live = tmp_path / f"k{k}" / "metric_log.csv"
        live.parent.mkdir()
        rows = write_log(live, entries=3, per_entry=10)
        with crash_at(monkeypatch, k), pytest.raises(Crash):
            logfiles.rotate(live, "1700000000002-0:9", HEADER_LINE, time.time())
        f, pos = recover(live)  # what the next start does
        f.close()
        assert pos == ("1700000000002-0", 9), f"crash at step {k} of {total}"
        assert Counter(r[0] for r in union(live.parent)) == Counter(r[0] for r in rows)
        assert_tidy(live.parent)


def test_a_rotation_while_the_upkeep_compresses_keeps_the_rotated_file(
        tmp_path: Path) -> None:
    """The sink opens the new live file while the upkeep thread is still compressing the
    file rotated before: the part file being written is not a dead one to settle."""
    live = tmp_path / "metric_log.csv"
    rows = write_log(live, entries=3, per_entry=10)
    target = logfiles.rotate(live, None, HEADER_LINE, time.time())
    started, proceed = threading.Event(), threading.Event()

    class Paused:
        """A halt flag that holds the compression after its part file is open."""

        def is_set(self) -> bool:
            started.set()
            proceed.wait(10)
            return False

    compressing = threading.Thread(
        target=logfiles.compress, args=(target, Paused()), daemon=True)
    compressing.start()
    assert started.wait(10)
    assert (tmp_path / f".{target.name}.gz.part").exists()
    f, _ = recover(live, starting=False)  # what the sink does after a rotation
    f.close()
    proceed.set()
    compressing.join(10)
    assert not compressing.is_alive()
    assert [p.name for p, _ in logfiles.rotated_files(live)] == [target.name + ".gz"]
    assert Counter(r[0] for r in union(tmp_path)) == Counter(r[0] for r in rows)
    assert_tidy(tmp_path)


def test_a_kill_at_any_step_of_a_compression_keeps_one_whole_copy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    probe = tmp_path / "probe" / "metric_log.csv"
    probe.parent.mkdir()
    write_log(probe, entries=3, per_entry=10)
    rotated = logfiles.rotate(probe, None, HEADER_LINE, time.time())
    total = steps_of(monkeypatch, lambda: logfiles.compress(rotated))
    for k in range(1, total + 1):
        live = tmp_path / f"k{k}" / "metric_log.csv"
        live.parent.mkdir()
        rows = write_log(live, entries=3, per_entry=10)
        target = logfiles.rotate(live, None, HEADER_LINE, time.time())
        with crash_at(monkeypatch, k), pytest.raises(Crash):
            logfiles.compress(target)
        f, _ = recover(live)
        f.close()
        assert Counter(r[0] for r in union(live.parent)) == Counter(r[0] for r in rows)
        assert_tidy(live.parent)
        assert [p.name for p, _ in logfiles.rotated_files(live)] in (
            [target.name], [target.name + ".gz"])


def test_rotated_files_expire_by_age_and_nothing_else_goes(tmp_path: Path) -> None:
    live = tmp_path / "metric_log.csv"
    write_log(live, entries=1, per_entry=2)
    now = time.time()

    def stamp(days_ago: float) -> str:
        return datetime.fromtimestamp(now - days_ago * 86400, UTC).strftime(
            "%Y%m%dT%H%M%S.%fZ")

    old = tmp_path / f"metric_log-{stamp(8)}.csv.gz"
    recent = tmp_path / f"metric_log-{stamp(6)}.csv"
    other = tmp_path / "metric_log-notes.csv"
    for path in (old, recent, other):
        path.write_bytes(HEADER_LINE)
    assert logfiles.expire(live, now, days=7) == 1
    assert not old.exists()
    assert recent.exists()
    assert other.exists()
    assert live.exists()


# --- through real processes ---------------------------------------------------------

TOTAL = 20_000


def rotations(env: Env) -> int:
    return len(logfiles.rotated_files(env.metric_log))


def test_kill_9_of_the_metric_role_across_rotations_keeps_every_file_exactly_once(
        env: Env, spawn: Callable[..., Role]) -> None:
    tiny = {"MLPULSE_LOG_ROTATE_BYTES": "65536", "MLPULSE_HISTORY_FLUSH_SECONDS": "0.5"}
    log_dir = env.metric_log.parent
    spawn("model")
    metric = spawn("metric", extra=tiny)
    producer = spawn("produce", "--count", str(TOTAL), "--batch", "50", "--rate", "1500",
                     ready=None)
    line = producer.lines[producer.wait_for(r"as run \S+")]
    run = re.search(r"as run (\S+)", line).group(1)  # type: ignore[union-attr]

    def logged() -> int:
        # While the role runs, a file may be compressed between listing and reading it.
        for _ in range(10):
            try:
                return len(union(log_dir)) if log_dir.exists() else 0
            except FileNotFoundError:
                continue
        raise AssertionError("the log files kept moving")

    # The first kill lands just as a rotation renames the live file; the others mid-stream.
    wait_until(lambda: rotations(env) >= 3, timeout=60, what="three rotations")
    seen = rotations(env)
    wait_until(lambda: rotations(env) > seen, timeout=30, what="another rotation",
               interval=0.001)
    metric.kill()
    for threshold in (8000, 14000):
        metric = spawn("metric", extra=tiny)
        wait_until(lambda t=threshold: logged() >= t, timeout=60, what=f"{threshold} rows")
        metric.kill()
        assert TOTAL - logged() >= 1000, "too little still in flight at the kill"
    metric = spawn("metric", extra=tiny)
    assert producer.proc.wait(120) == 0, producer.output()
    wait_until(lambda: logged() >= TOTAL, timeout=90, what=f"{TOTAL} rows in the log")
    assert metric.stop(timeout=30) == 0, metric.output()

    rows = union(log_dir)
    seen_ids = Counter(r[0] for r in rows)
    assert not [i for i, n in seen_ids.items() if n > 1], "an id was written twice"
    assert set(seen_ids) == {f"{run}-{i}" for i in range(TOTAL)}
    for r in rows:
        row = dict(zip(HEADER, r, strict=True))
        assert float(row["absolute_error"]) == abs(float(row["y_true"]) - float(row["y_pred"]))
    # Many rotations were crossed: about 25 at 64 KB, fewer when a restart's backlog
    # lands in one write, which a rotation only follows.
    assert rotations(env) >= 10
    assert_tidy(log_dir)

    scan = query.read_rows(env.root / "logs" / "history", 0, 4e9, ["id", "absolute_error"])
    assert not scan.skipped
    in_history = Counter(scan.table.column("id").to_pylist())
    assert in_history == seen_ids, "the history does not hold the log's rows exactly once"
    by_id = dict(zip(scan.table.column("id").to_pylist(),
                     scan.table.column("absolute_error").to_pylist(), strict=True))
    assert all(by_id[r[0]] == float(r[3]) for r in rows)
    rollups = query.read_rollups(env.root / "logs" / "history", 0, 4e9)
    assert sum(rollups.table.column("count").to_pylist()) == TOTAL  # exactly once too
    assert math.isclose(sum(rollups.table.column("sum").to_pylist()),
                        sum(float(r[3]) for r in rows), rel_tol=1e-9)
