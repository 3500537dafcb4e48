"""Batch scoring through the gateway, on real workers, against the running model."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable

import numpy as np

from tests.conftest import Env, Role, wait_until
from tests.tasks.conftest import FEATURES, Api, Listener, features_csv


def _stream(env: Env, X: np.ndarray) -> None:
    """The same rows through the live pipeline, ids r0..rN, with a label each."""
    ch = env.channel()
    for q in ("features", "y_true"):
        ch.queue_declare(queue=q, durable=True)
    feats = [{"id": f"r{i}", "body": [float(v) for v in row]} for i, row in enumerate(X)]
    labels = [{"id": f"r{i}", "body": 100.0} for i in range(len(X))]
    ch.basic_publish(exchange="", routing_key="features", body=json.dumps(feats))
    ch.basic_publish(exchange="", routing_key="y_true", body=json.dumps(labels))
    ch.connection.close()


def test_batch_scores_match_the_stream_and_only_the_owner_sees_them(
        env: Env, spawn: Callable[..., Role], worker: Callable[..., Role],
        api: Callable[..., Api]) -> None:
    spawn("model")
    spawn("metric")
    worker(extra={"MLPULSE_SCORE_CHUNK_ROWS": "40"})
    alice, bob = api("alice"), api("bob")
    data, X = features_csv(300)
    _stream(env, X)
    wait_until(lambda: env.row_count() >= 300, what="300 streamed rows")
    streamed = {r["id"]: r for r in env.rows()}

    alice_ws, bob_ws = Listener(alice.gateway, "alice"), Listener(bob.gateway, "bob")
    submitted = alice.upload("batch-score", data)
    assert submitted.status_code == 202, submitted.text
    task_id = submitted.json()["id"]
    done = alice.wait(task_id)
    assert done["state"] == "SUCCESS", done
    assert done["progress"] == {"done": 300, "total": 300, "fraction": 1.0}

    result = alice.get(done["result_url"])
    assert result.status_code == 200
    scored = list(csv.DictReader(io.StringIO(result.text)))
    assert [int(r["row"]) for r in scored] == list(range(1, 301))
    assert [r["id"] for r in scored] == [f"r{i}" for i in range(300)]
    ours = np.array([float(r["y_pred"]) for r in scored])
    theirs = np.array([float(streamed[r["id"]]["y_pred"]) for r in scored])
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-9)
    assert {r["model_version"] for r in scored} == {streamed["r0"]["model_version"]} == {"v1"}

    # The owner heard of it live; nobody else did, and nobody else can see or fetch it.
    wait_until(lambda: any(e["data"]["state"] == "SUCCESS" for e in alice_ws.events("task")),
               what="alice's SUCCESS event")
    states = [e["data"]["state"] for e in alice_ws.events("task")]
    assert "PROGRESS" in states
    assert all(e["data"]["id"] == task_id
                                        for e in alice_ws.events("task"))
    assert bob_ws.events("task") == []
    alice_ws.close()
    bob_ws.close()
    assert bob.get(f"/api/tasks/{task_id}").status_code == 404
    assert bob.get(f"/api/tasks/{task_id}/result").status_code == 404
    assert bob.get("/api/tasks").json() == []
    assert [t["id"] for t in alice.get("/api/tasks").json()] == [task_id]


def test_bad_uploads_are_refused_with_the_bad_cell_named(
        env: Env, spawn: Callable[..., Role], api: Callable[..., Api]) -> None:
    spawn("model")
    alice = api("alice")
    header = ",".join(FEATURES)
    good_row = ",".join(["0.01"] * len(FEATURES))
    bad_cell = good_row.split(",")
    bad_cell[3] = "abc"

    cases = {
        "not a number": (f"{header}\n{good_row}\n{','.join(bad_cell)}\n",
                         ["row 2", "line 3", FEATURES[3], "abc"]),
        "missing column": (",".join(FEATURES[:-1]) + "\n" + ",".join(["1"] * 9) + "\n",
                           ["missing", FEATURES[-1]]),
        "unknown column": (f"{header},colour\n{good_row},1\n", ["unknown", "colour"]),
        "empty cell": (f"{header}\n{good_row}\n{good_row.replace('0.01', '', 1)}\n",
                       ["row 2", FEATURES[0], "empty"]),
        "infinite": (f"{header}\n{good_row.replace('0.01', 'inf', 1)}\n", ["row 1", "inf"]),
        "ragged first row": (f"{header}\n{good_row},7\n", ["row 1", "more fields"]),
        "ragged later row": (f"{header}\n{good_row}\n{good_row},7\n", ["line 3", "fields"]),
        "no rows": (f"{header}\n", ["no rows"]),
        "empty file": ("", ["empty"]),
    }
    for name, (body, words) in cases.items():
        response = alice.upload("batch-score", body.encode())
        assert response.status_code == 422, (name, response.text)
        detail = response.json()["detail"]
        assert all(w in detail for w in words), (name, detail)
    with alice.client() as c:
        no_file = c.post("/api/tasks/batch-score", files={"other": ("x.csv", b"a")})
        assert no_file.status_code == 422
        assert "file" in no_file.json()["detail"]
        assert c.post("/api/tasks/batch-score", json={}).status_code == 415
        assert c.post("/api/tasks/nonsense").status_code == 404
    # Nothing refused was kept on disk or queued.
    uploads = env.root / "data" / "uploads"
    assert not uploads.exists() or list(uploads.iterdir()) == []
    assert alice.get("/api/tasks").json() == []


def test_uploads_over_the_limit_get_413(
        env: Env, spawn: Callable[..., Role], start_gateway: Callable[..., object]) -> None:
    spawn("model")
    gateway = start_gateway(extra={"MLPULSE_MAX_UPLOAD_BYTES": "20000"})
    alice = Api(gateway, "alice")  # type: ignore[arg-type]
    data, _ = features_csv(200)
    assert len(data) > 20000
    response = alice.upload("batch-score", data)
    assert response.status_code == 413
    assert "MLPULSE_MAX_UPLOAD_BYTES" in response.json()["detail"]
    uploads = env.root / "data" / "uploads"
    assert not uploads.exists() or list(uploads.iterdir()) == []


def test_ids_keep_their_spelling_and_header_spaces_are_forgiven(
        env: Env, spawn: Callable[..., Role], worker: Callable[..., Role],
        api: Callable[..., Api]) -> None:
    spawn("model")
    worker(concurrency=1)
    alice = api("alice")
    header = ", ".join(["id", *reversed(FEATURES)])  # any column order, spaces after commas
    # Ids that a spreadsheet would read as formulas come back as written too: the scored
    # CSV is for joins in a pipeline, and "-5" is a plain id (see the README).
    ids = ["000", "001", "=1+1", "-5", "+44", "@SUM(A1)"]
    rows = [",".join([i, *(["0.01"] * len(FEATURES))]) for i in ids]
    submitted = alice.upload("batch-score", ("\n".join([header, *rows]) + "\n").encode())
    assert submitted.status_code == 202, submitted.text
    done = alice.wait(submitted.json()["id"])
    assert done["state"] == "SUCCESS", done
    scored = list(csv.DictReader(io.StringIO(alice.get(done["result_url"]).text)))
    assert [r["id"] for r in scored] == ids
    y = [float(r["y_pred"]) for r in scored]
    assert max(y) - min(y) < 1e-9  # the same features, the same prediction (to rounding)
