"""Error reports over a window of the history, for one user only."""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable
from pathlib import Path

from mlpulse.history.writer import HistoryWriter
from mlpulse.tasks.reports import write_report
from tests.conftest import Env, Role
from tests.history.logs import body, write_log
from tests.tasks.conftest import Api

HEADER = ["id", "y_true", "y_pred", "absolute_error", "model_version", "sent_at", "joined_at",
          "logged_at", "pos"]


def test_report_covers_its_window_and_version_and_only_its_owner_fetches_it(
        env: Env, worker: Callable[..., Role], api: Callable[..., Api]) -> None:
    now = time.time()
    rows = []
    for i in range(40):
        version = "v1" if i % 2 else "v2"
        logged = now - 7200 if i < 10 else now - 60  # ten of them are two hours old
        err = float(i)
        rows.append([f"e{i}", 100.0, 100.0 + err, err, version, logged, logged, logged,
                     f"1700000000000-0:{i}"])
    rows.sort(key=lambda r: r[6])
    for i, r in enumerate(rows):
        r[8] = f"1700000000000-0:{i}"
    env.metric_log.parent.mkdir(parents=True, exist_ok=True)
    with env.metric_log.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(HEADER)
        w.writerows(rows)
    # Reports read the history, which the metric role builds from the log.
    with env.metric_log.open("rb") as f:
        writer = HistoryWriter(env.root / "logs" / "history")
        start = writer.recover(f)
        f.seek(start)
        writer.flush(f.read())
    worker(concurrency=1)
    alice, bob = api("alice"), api("bob")

    submitted = alice.post("report", {"minutes": 60, "model_version": "v1"})
    assert submitted.status_code == 202, submitted.text
    done = alice.wait(submitted.json()["id"])
    assert done["state"] == "SUCCESS", done
    assert done["progress"] == {"done": 1, "total": 1, "fraction": 1.0}  # one step, done
    chosen = [float(r[3]) for r in rows if r[4] == "v1" and r[7] > now - 3600]
    summary = done["result"]["summary"]
    assert summary["count"] == len(chosen) == 15
    assert math.isclose(summary["mae"], sum(chosen) / len(chosen))
    assert math.isclose(summary["rmse"], math.sqrt(sum(e * e for e in chosen) / len(chosen)))
    assert summary["max"] == max(chosen)

    image = alice.get(done["result_url"])
    assert image.status_code == 200
    assert image.headers["content-type"] == "image/png"
    assert image.content.startswith(b"\x89PNG")
    assert bob.get(done["result_url"]).status_code == 404
    assert alice.post("report", {"since": now, "until": now - 1}).status_code == 422
    assert alice.post("report", {"model_version": "latest"}).status_code == 422
    client = env.redis()
    try:
        stray = [k for k in client.scan_iter() if not k.startswith(b"mlpulse:")]
    finally:
        client.close()
    assert not stray, f"keys outside mlpulse: {stray[:5]}"  # Celery's results included


def test_a_long_range_report_comes_from_the_rollups_and_says_so(tmp_path: Path) -> None:
    log = tmp_path / "metric_log.csv"
    rows = write_log(log, entries=90, per_entry=20, span=3 * 3600)
    with log.open("rb") as f:
        writer = HistoryWriter(tmp_path / "history")
        writer.flush(body(f, writer.recover(f)))
    done = write_report(tmp_path / "history", tmp_path / "results", "r1", None, None, None)
    summary = done["summary"]
    errors = [r[3] for r in rows]
    assert summary["count"] == len(errors)
    assert math.isclose(summary["mae"], sum(errors) / len(errors))
    assert summary["max"] == max(errors)
    assert summary["quantiles"] == "within one 4.4 % bin"
    assert (tmp_path / "results" / "r1.png").read_bytes().startswith(b"\x89PNG")
