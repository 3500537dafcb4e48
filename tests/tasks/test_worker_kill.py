"""A worker killed with SIGKILL mid-job: the job still finishes, every row written once."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable

import numpy as np

from mlpulse.ml import registry
from tests.conftest import Env, Role, wait_until
from tests.tasks.conftest import Api, features_csv

ROWS = 300_000
CHUNK = 15_000


def test_sigkill_of_a_worker_mid_job_loses_and_repeats_nothing(
        env: Env, spawn: Callable[..., Role], worker: Callable[..., Role],
        api: Callable[..., Api]) -> None:
    spawn("model")
    chunking = {"MLPULSE_SCORE_CHUNK_ROWS": str(CHUNK)}
    first = worker(concurrency=1, extra=chunking)
    alice = api("alice")
    data, X = features_csv(ROWS, with_id=False)
    task_id = alice.upload("batch-score", data).json()["id"]

    seen: dict[str, object] = {}

    def partly_done() -> bool:
        seen.update(alice.task(task_id))
        return 0 < seen["progress"]["done"] < ROWS  # type: ignore[index, operator]

    wait_until(partly_done, 120, what="some chunks scored", interval=0.02)
    first.kill()
    killed_at = alice.task(task_id)
    assert killed_at["state"] != "SUCCESS"

    # Celery's own command line runs the rest.
    spawn("-A", "mlpulse.tasks", "worker", "-c", "1", "-l", "INFO", "--without-mingle",
          "--without-gossip", "-n", "second@%h", module="celery", extra=chunking,
          ready=r"ready\.")
    done = alice.wait(task_id, timeout=180)
    assert done["state"] == "SUCCESS", done
    assert done["progress"]["done"] == ROWS

    text = alice.get(done["result_url"]).text
    scored = list(csv.DictReader(io.StringIO(text)))
    assert [int(r["row"]) for r in scored] == list(range(1, ROWS + 1))
    model = registry.load(env.root / "models", 1)
    expected = model.predict(X)
    np.testing.assert_allclose([float(r["y_pred"]) for r in scored], expected,
                               rtol=1e-12, atol=1e-9)
    # The parts were merged into one file and cleaned away.
    results = env.root / "data" / "results"
    assert sorted(p.name for p in results.iterdir()) == [f"{task_id}.csv"]
