"""The history behind a running metric role: rows land within the flush interval, without a
stop, and `mlpulse history export` gives them back as the log has them."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime

from mlpulse.history import query
from tests.conftest import Env, Role, produce, wait_until


def test_rows_reach_the_history_within_the_flush_interval_and_export_gives_them_back(
        env: Env, spawn: Callable[..., Role]) -> None:
    started = time.time()
    spawn("model")
    spawn("metric", extra={"MLPULSE_HISTORY_FLUSH_SECONDS": "2"})
    produce(env, "--count", "400", "--batch", "20", "--rate", "400")
    wait_until(lambda: env.row_count() >= 400, timeout=60, what="400 rows in the log")
    root = env.root / "logs" / "history"

    def in_history() -> int:
        return query.read_rows(root, 0, 4e9, ["id"]).table.num_rows

    wait_until(lambda: in_history() >= 400, timeout=20, interval=0.1,
               what="400 rows in the history")
    assert in_history() == 400

    since = datetime.fromtimestamp(started - 1, UTC).isoformat()
    done = subprocess.run(
        [sys.executable, "-m", "mlpulse", "history", "export", "--since", since],
        env={**os.environ, **env.vars}, cwd=env.root, capture_output=True, timeout=60,
        check=False)
    assert done.returncode == 0, done.stderr
    exported = list(csv.DictReader(io.StringIO(done.stdout.decode())))
    logged_rows = {r["id"]: r for r in env.rows()}
    assert len(exported) == len(logged_rows) == 400
    for row in exported:
        original = logged_rows[row["id"]]
        for key in ("y_true", "y_pred", "absolute_error", "joined_at"):
            assert float(row[key]) == float(original[key]), (key, row, original)
        assert row["pos"] == original["pos"]
    empty = subprocess.run(
        [sys.executable, "-m", "mlpulse", "history", "export", "--since", "1000",
         "--until", "2000"], env={**os.environ, **env.vars}, cwd=env.root,
        capture_output=True, timeout=60, check=False)
    assert empty.returncode == 0
    assert empty.stdout.decode().splitlines() == [",".join(query.ROW_SCHEMA.names)]
    bad = subprocess.run(
        [sys.executable, "-m", "mlpulse", "history", "export", "--since", "last tuesday"],
        env={**os.environ, **env.vars}, cwd=env.root, capture_output=True, timeout=60,
        check=False)
    assert bad.returncode == 2
    assert b"ISO 8601" in bad.stderr
