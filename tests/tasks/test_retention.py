"""Uploads, results and reports older than MLPULSE_RETENTION_DAYS are swept by Beat."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from mlpulse.config import Settings
from mlpulse.task_queue import make_celery
from tests.conftest import Env, Role, wait_until

DAY = 86400.0


def _file(path: Path, age: float, body: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)
    then = time.time() - age
    os.utime(path, (then, then))
    return path


def _tree(data: Path, old_age: float) -> tuple[list[Path], list[Path]]:
    """Old and fresh files where uploads, scored CSVs, reports and chunk parts live."""
    uploads, results = data / "uploads", data / "results"
    old = [
        _file(uploads / "a1.csv", old_age),
        _file(results / "a1.csv", old_age),
        _file(results / "b2.png", old_age),
        _file(results / "b2.json", old_age),
        _file(results / ".c3.parts" / "part-000000.csv", old_age),
        _file(results / ".d4.0f0f.tmp", old_age),
    ]
    os.utime(results / ".c3.parts", (time.time() - old_age,) * 2)
    fresh = [
        _file(uploads / "e5.csv", 60),
        _file(results / "e5.csv", 60),
        _file(results / "f6.png", 60),
        # A job still being scored: its first part is old, its latest one is not.
        _file(results / ".g7.parts" / "part-000000.csv", old_age),
        _file(results / ".g7.parts" / "part-000001.csv", 60),
    ]
    return old, fresh


def test_the_sweep_deletes_what_is_older_than_the_retention(tmp_path: Path) -> None:
    from mlpulse.tasks.retention import sweep

    old, fresh = _tree(tmp_path, 8 * DAY)
    removed = sweep([tmp_path / "uploads", tmp_path / "results", tmp_path / "missing"],
                    7 * DAY)
    assert removed == 6  # five files and one directory of parts
    assert [p for p in old if p.exists()] == []
    assert not (tmp_path / "results" / ".c3.parts").exists()
    assert all(p.exists() for p in fresh)


def test_beat_always_schedules_the_sweep() -> None:
    for labels_url in (None, "http://labels.example/"):
        settings = Settings(labels_url=labels_url, retention_days=7)  # type: ignore[call-arg]
        schedule = make_celery(settings).conf.beat_schedule
        entry = next(e for e in schedule.values() if e["task"] == "mlpulse.sweep_files")
        assert 0 < float(entry["schedule"]) <= 3600


def test_beat_and_a_worker_sweep_old_files(env: Env, spawn: Callable[..., Role],
                                           worker: Callable[..., Role]) -> None:
    data = Path(env.vars["MLPULSE_DATA_DIR"])
    old, fresh = _tree(data, 2 * DAY)
    extra = {"MLPULSE_RETENTION_DAYS": "0.01"}  # 864 s: the sweep runs every 36 s at most
    worker(concurrency=1, extra=extra)
    beat = spawn("beat", extra=extra, ready=r"ready: 1 periodic task")
    wait_until(lambda: not any(p.exists() for p in old), timeout=90,
               what="old files swept by Beat's task")
    assert all(p.exists() for p in fresh)
    assert beat.stop() == 0
