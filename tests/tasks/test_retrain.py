"""Retraining under a running stream: a new version goes live, no message is lost."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from sklearn.datasets import load_diabetes

from tests.conftest import Env, Role, assert_logged_once, wait_until
from tests.tasks.conftest import FEATURES, Api, Listener

EVENTS = 3000


def test_retrain_hot_swaps_under_a_stream(env: Env, spawn: Callable[..., Role],
                                          worker: Callable[..., Role],
                                          api: Callable[..., Api]) -> None:
    spawn("model")
    spawn("metric")
    worker(concurrency=1)
    admin, user = api("root", admin=True), api("alice")
    watching = Listener(user.gateway, "alice")
    producer = spawn("produce", "--count", str(EVENTS), "--rate", "300", ready=None)
    wait_until(lambda: env.row_count() >= 300, what="the stream to be flowing")

    assert user.post("retrain").status_code == 403
    submitted = admin.post("retrain")
    assert submitted.status_code == 202, submitted.text
    done = admin.wait(submitted.json()["id"])
    assert done["state"] == "SUCCESS", done
    assert done["progress"] == {"done": 1, "total": 1, "fraction": 1.0}
    assert done["result"]["version"] == "v2"
    assert 0 < done["result"]["holdout_mae"] < 100

    # Every client hears that v2 is live, once.
    wait_until(lambda: watching.events("model"), what="the deployment broadcast")
    deployed = watching.events("model")
    assert [e["data"]["version"] for e in deployed] == ["v2"]
    assert deployed[0]["data"]["message"] == "model v2 deployed"
    watching.close()

    assert producer.proc.wait(120) == 0
    wait_until(lambda: env.row_count() >= EVENTS, 60, what="every event logged")
    assert_logged_once(env, EVENTS)
    versions = [r["model_version"] for r in env.rows()]
    assert versions[0] == "v1"
    assert versions[-1] == "v2"
    assert versions.index("v2") > 0


def test_retrain_on_an_uploaded_csv(env: Env, spawn: Callable[..., Role],
                                    worker: Callable[..., Role], api: Callable[..., Api]) -> None:
    spawn("model")
    worker(concurrency=1)
    admin = api("root", admin=True)
    X, y = load_diabetes(return_X_y=True)
    out = io.StringIO()
    out.write(",".join([*FEATURES, "target"]) + "\n")
    for row, target in zip(X, y, strict=True):
        out.write(",".join(repr(float(v)) for v in [*row, target]) + "\n")
    good = admin.upload("retrain", out.getvalue().encode(), target="target")
    assert good.status_code == 202, good.text
    done = admin.wait(good.json()["id"])
    assert done["state"] == "SUCCESS", done
    assert done["result"]["version"] == "v2"
    assert done["result"]["rows"] == len(X)

    narrow = "a,b,target\n" + "".join(f"{i},{i * 2},{i * 3}\n" for i in range(20))
    failed = admin.wait(admin.upload("retrain", narrow.encode(), target="target").json()["id"])
    assert failed["state"] == "FAILURE"
    assert "2 features" in failed["error"]
    assert "takes 10" in failed["error"]

    missing = admin.upload("retrain", narrow.encode())
    assert missing.status_code == 422
    assert "target" in missing.json()["detail"]
    assert np.isfinite(done["result"]["holdout_mae"])
