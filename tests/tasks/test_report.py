"""Error reports over a window of the metric log, for one user only."""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable

from tests.conftest import Env, Role
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
                     f"0:{i}"])
    env.metric_log.parent.mkdir(parents=True, exist_ok=True)
    with env.metric_log.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        w.writerows(rows)
    worker(concurrency=1)
    alice, bob = api("alice"), api("bob")

    submitted = alice.post("report", {"minutes": 60, "model_version": "v1"})
    assert submitted.status_code == 202, submitted.text
    done = alice.wait(submitted.json()["id"])
    assert done["state"] == "SUCCESS", done
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
