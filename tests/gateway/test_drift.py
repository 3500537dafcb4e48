"""Early warning through real roles: drift, estimated MAE and error-level changes.

The model, metric and gateway roles run against real RabbitMQ and Redis; the test sends
its own feature vectors and labels, so it knows every value, and checks what
`/api/drift` says against a computation written here from the formulas in docs/drift.md.
"""

from __future__ import annotations

import json
import pickle
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pika
import pytest
from river.drift import ADWIN
from sklearn.datasets import load_diabetes
from sklearn.linear_model import Ridge
from sklearn.model_selection import KFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from tests.conftest import Env, Role, wait_until
from tests.gateway.conftest import Gateway, token

X_REF, Y_REF = load_diabetes(return_X_y=True)
NAMES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
FRAME = 500


# ---------------------------------------------------------------- helpers
class Stream:
    """Publishes feature and label frames straight to the pipeline's queues."""

    def __init__(self, env: Env) -> None:
        self.conn = pika.BlockingConnection(pika.URLParameters(env.amqp_url))
        self.ch = self.conn.channel()
        self.ch.confirm_delivery()
        self.run = uuid.uuid4().hex[:8]
        self.sent = 0

    def send(self, X: np.ndarray, y: np.ndarray | None = None) -> None:
        for start in range(0, len(X), FRAME):
            rows = X[start:start + FRAME]
            ids = [f"{self.run}-{self.sent + i}" for i in range(len(rows))]
            feats = [{"id": i, "body": r.tolist()} for i, r in zip(ids, rows, strict=True)]
            self._publish("features", feats)
            if y is not None:
                labels = [{"id": i, "body": float(v)}
                          for i, v in zip(ids, y[start:start + FRAME], strict=True)]
                self._publish("y_true", labels)
            self.sent += len(rows)

    def _publish(self, queue: str, doc: list[dict[str, Any]]) -> None:
        self.ch.basic_publish("", queue, json.dumps(doc).encode(),
                              pika.BasicProperties(delivery_mode=2))

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def stream(env: Env) -> Iterator[Stream]:
    s = Stream(env)
    yield s
    s.close()


@pytest.fixture
def pipeline(env: Env, spawn: Callable[..., Role],
             start_gateway: Callable[..., Gateway]) -> Callable[..., Gateway]:
    """Model, metric and gateway, the three roles drift needs."""

    def start(extra: dict[str, str] | None = None) -> Gateway:
        spawn("model", extra=extra)
        spawn("metric", extra=extra)
        return start_gateway(extra)

    return start


def drift(gw: Gateway, window: int = 300, version: str | None = None) -> dict[str, Any]:
    params: dict[str, Any] = {"window": window}
    if version:
        params["model_version"] = version
    r = httpx.get(f"{gw.http}/api/drift", params=params,
                  headers={"Authorization": f"Bearer {token('alice')}"}, timeout=10)
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


def settled(gw: Gateway, events: int, labelled: int | None = None,
            version: str | None = None, timeout: float = 120) -> dict[str, Any]:
    """The drift document once the window holds `events` predictions (and `labelled`)."""
    last: dict[str, Any] = {}

    def done() -> bool:
        nonlocal last
        last = drift(gw, version=version)
        return bool(last["events"] >= events
                    and (labelled is None or last["labelled"] >= labelled))

    wait_until(done, timeout, f"{events} events, {labelled} labelled in /api/drift "
               f"(last: {last.get('events')}, {last.get('labelled')})", interval=0.5)
    return last


def statuses(doc: dict[str, Any]) -> dict[str, str]:
    return {f["name"]: f["status"] for f in doc["features"]}


def resample(n: int, seed: int, p: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    rows = np.random.default_rng(seed).choice(len(X_REF), n, p=p)
    return X_REF[rows].copy(), Y_REF[rows].copy()


# ---------------------------------------------------------------- offline formulas
def offline_bins(values: np.ndarray, bins: int = 10) -> tuple[np.ndarray, np.ndarray,
                                                               np.ndarray]:
    """Decile edges with ties merged and none at the maximum; counts and means per bin."""
    qs = np.quantile(values, [i / bins for i in range(1, bins)])
    edges = np.unique(qs[qs < values.max()])
    idx = np.array([int(np.sum(v > edges)) for v in values])  # v in (e[b-1], e[b]]
    counts = np.array([np.sum(idx == b) for b in range(len(edges) + 1)], dtype=float)
    means = np.array([values[idx == b].mean() for b in range(len(edges) + 1)])
    return edges, counts, means


def offline_psi(ref: np.ndarray, cur: np.ndarray, alpha: float = 0.5) -> float:
    p = (ref + alpha) / (ref.sum() + len(ref) * alpha)
    q = (cur + alpha) / (cur.sum() + len(cur) * alpha)
    return float(sum((qi - pi) * np.log(qi / pi) for pi, qi in zip(p, q, strict=True)))


def offline_wasserstein(ref: np.ndarray, cur: np.ndarray, means: np.ndarray,
                        std: float) -> float:
    """Area between the two step CDFs, mass of each bin at its reference mean, in stds."""
    total = 0.0
    for b in range(len(ref) - 1):
        F_ref = ref[: b + 1].sum() / ref.sum()
        F_cur = cur[: b + 1].sum() / cur.sum()
        total += abs(F_ref - F_cur) * (means[b + 1] - means[b])
    return total / std


def offline_column(train: np.ndarray, seen: np.ndarray) -> tuple[float, float]:
    edges, counts, means = offline_bins(train)
    idx = np.array([int(np.sum(v > edges)) for v in seen])
    cur = np.array([np.sum(idx == b) for b in range(len(counts))], dtype=float)
    return offline_psi(counts, cur), offline_wasserstein(counts, cur, means, train.std())


# ---------------------------------------------------------------- tests
def test_a_clean_stream_gives_no_drift_and_the_estimate_tracks_the_error(
        pipeline: Callable[..., Gateway], stream: Stream) -> None:
    gw = pipeline()
    X, y = resample(20_000, seed=1)
    stream.send(X, y)
    doc = settled(gw, 20_000, labelled=20_000)
    assert doc["model_version"] == "v1"
    assert doc["window_s"] == 300
    assert [f["name"] for f in doc["features"]] == NAMES
    assert "drift" not in statuses(doc).values(), statuses(doc)
    assert doc["prediction"]["status"] != "drift", doc["prediction"]
    assert all(f["out_of_range"] == 0 for f in doc["features"])
    realized, estimated = doc["realized_mae"], doc["estimated_mae"]
    assert abs(estimated - realized) <= 0.15 * realized, (estimated, realized)
    assert doc["estimated_mae_unlabelled"] is None  # every prediction has its label


def test_a_shifted_feature_is_caught_and_the_others_are_not(
        pipeline: Callable[..., Gateway], stream: Stream) -> None:
    gw = pipeline()
    clean, _ = resample(5_000, seed=2)
    stream.send(clean)
    before = settled(gw, 5_000)
    assert statuses(before)["bmi"] != "drift"
    shifted, _ = resample(5_000, seed=3)
    shifted[:, 2] += X_REF[:, 2].std()  # bmi, +1 reference std
    stream.send(shifted)
    # Shifted events are half of the window now.
    doc = settled(gw, 10_000)
    found = statuses(doc)
    assert found["bmi"] == "drift", found
    assert all(s != "drift" for name, s in found.items() if name != "bmi"), found
    # Prometheus gets the same figure from the gateway's next refresh.
    series = re.compile(r'^mlpulse_feature_psi\{feature="bmi",model_version="v1",'
                        r'window="300"\} (\S+)$', re.MULTILINE)

    def exported() -> float:
        text = httpx.get(f"{gw.http}/metrics",
                         headers={"Authorization": f"Bearer {token('alice')}"}).text
        match = series.search(text)
        return float(match.group(1)) if match else 0.0

    psi = doc["features"][2]["psi"]
    wait_until(lambda: exported() == pytest.approx(psi, rel=1e-9), 30,
               f"bmi's PSI {psi} on /metrics", interval=0.5)


def test_psi_and_wasserstein_agree_with_an_offline_computation(
        env: Env, pipeline: Callable[..., Gateway], stream: Stream) -> None:
    gw = pipeline()
    X, y = resample(3_000, seed=4)
    X[1_000:, 2] += 0.5 * X_REF[:, 2].std()    # bmi moves for two thirds
    X[:, 8] *= 1.3                             # s5 spreads out
    X[::7, 0] = X_REF[:, 0].max() * 2          # age: every 7th beyond the range
    stream.send(X, y)
    doc = settled(gw, 3_000, labelled=3_000)
    wait_until(lambda: env.row_count() >= 3_000, what="every row logged")
    for j, f in enumerate(doc["features"]):
        psi, w = offline_column(X_REF[:, j], X[:, j])
        assert abs(f["psi"] - psi) <= 1e-9, (f["name"], f["psi"], psi)
        assert abs(f["wasserstein"] - w) <= 1e-9, (f["name"], f["wasserstein"], w)
        outside = np.mean((X[:, j] < X_REF[:, j].min()) | (X[:, j] > X_REF[:, j].max()))
        assert abs(f["out_of_range"] - outside) <= 1e-12
    # The predictions' reference is the model's own predictions on its training rows.
    model = make_pipeline(StandardScaler(), Ridge(alpha=1.0)).fit(X_REF, Y_REF)
    y_pred = np.array([float(r["y_pred"]) for r in env.rows()])
    psi, w = offline_column(model.predict(X_REF), y_pred)
    assert abs(doc["prediction"]["psi"] - psi) <= 1e-9
    assert abs(doc["prediction"]["wasserstein"] - w) <= 1e-9
    errors = [float(r["absolute_error"]) for r in env.rows()]
    assert doc["realized_mae"] == pytest.approx(np.mean(errors), rel=1e-12)


def test_the_estimated_mae_rises_with_the_error(pipeline: Callable[..., Gateway],
                                                stream: Stream) -> None:
    gw = pipeline()
    X, y = resample(10_000, seed=5)
    stream.send(X, y)
    a = settled(gw, 10_000, labelled=10_000)
    # Rows weighted by how wrong a model that did not see them was.
    model = make_pipeline(StandardScaler(), Ridge(alpha=1.0))
    held = np.abs(Y_REF - cross_val_predict(model, X_REF, Y_REF,
                                            cv=KFold(5, shuffle=True, random_state=7)))
    X2, y2 = resample(10_000, seed=6, p=held / held.sum())
    stream.send(X2, y2)
    both = settled(gw, 20_000, labelled=20_000)
    # The second stream alone, from the window's sums.
    est_b = (both["estimated_mae"] * 20_000 - a["estimated_mae"] * 10_000) / 10_000
    real_b = (both["realized_mae"] * 20_000 - a["realized_mae"] * 10_000) / 10_000
    assert real_b > a["realized_mae"] * 1.2, "the resampling should raise the error"
    assert est_b - a["estimated_mae"] >= 0.5 * (real_b - a["realized_mae"]), \
        (a["estimated_mae"], est_b, a["realized_mae"], real_b)


def test_unlabelled_predictions_have_their_own_estimate(
        env: Env, pipeline: Callable[..., Gateway], stream: Stream) -> None:
    gw = pipeline()
    X, y = resample(4_000, seed=8)
    stream.send(X[:2_000], y[:2_000])
    stream.send(X[2_000:])  # labels come later
    doc = settled(gw, 4_000, labelled=2_000)
    assert doc["labelled"] == 2_000
    unlabelled = doc["estimated_mae_unlabelled"]
    assert unlabelled is not None
    assert unlabelled > 0
    wait_until(lambda: env.row_count() >= 2_000, what="the labelled rows logged")
    errors = [float(r["absolute_error"]) for r in env.rows()]
    assert doc["realized_mae"] == pytest.approx(np.mean(errors), rel=1e-12)
    # The late labels arrive under the same ids: nothing is left unlabelled.
    late = Stream(env)
    late.run, late.sent = stream.run, 2_000
    try:
        for start in range(2_000, 4_000, FRAME):
            ids = [f"{stream.run}-{i}" for i in range(start, start + FRAME)]
            late._publish("y_true", [{"id": i, "body": float(v)}
                                     for i, v in zip(ids, y[start:start + FRAME], strict=True)])
    finally:
        late.close()
    doc = settled(gw, 4_000, labelled=4_000)
    assert doc["estimated_mae_unlabelled"] is None
    # Counted by when each prediction was scored, the estimate over all is unchanged.
    assert doc["events"] == 4_000


def changes_offline(rows: list[dict[str, str]]) -> list[tuple[float, float]]:
    """ADWIN (delta 0.002) over the log's absolute errors in log order: (before, after)."""
    detector, found = ADWIN(delta=0.002), []
    for r in rows:
        width, level, err = detector.width, detector.estimation, float(r["absolute_error"])
        detector.update(err)
        if detector.drift_detected:
            kept, after = detector.width, detector.estimation
            found.append(((level * width + err - after * kept) / (width + 1 - kept), after))
    return found


def detector_state(env: Env) -> dict[str, Any]:
    """The change detector's saved state (a pickle the metric role writes)."""
    client = env.redis()
    try:
        raw = client.get("mlpulse:changes:state")
    finally:
        client.close()
    if raw is None:
        return {"fed": {}}
    state: dict[str, Any] = pickle.loads(raw)  # written by the metric role
    return state


def test_error_changes_survive_a_kill_of_the_metric_role(
        env: Env, spawn: Callable[..., Role], start_gateway: Callable[..., Gateway],
        stream: Stream) -> None:
    spawn("model")
    metric = spawn("metric")
    gw = start_gateway()
    X, y = resample(6_000, seed=9)
    stream.send(X[:3_000], y[:3_000])
    wait_until(lambda: env.row_count() >= 1_000, what="rows before the kill")
    metric.kill()
    # The error level doubles: labels move away from what the model predicts.
    y_far = y[3_000:] + np.where(np.arange(3_000) % 2, 80.0, -80.0)
    stream.send(X[3_000:], y_far)
    spawn("metric")
    wait_until(lambda: env.row_count() >= 6_000, 120, "every row logged after the restart")
    # The detector sees rows just after they are written: wait until it has seen them all.
    wait_until(lambda: sum(detector_state(env)["fed"].values()) >= 6_000, 30,
               "the detector to have read every row")
    assert sum(detector_state(env)["fed"].values()) == 6_000  # none twice, none lost
    doc = settled(gw, 6_000, labelled=6_000)
    expected = changes_offline(env.rows())
    assert expected, "the offline detector should see the change"
    got = [(c["before"], c["after"]) for c in doc["changes"]]
    assert len(got) == len(expected), (got, expected)
    flat = [x for pair in got for x in pair]
    assert flat == pytest.approx([x for pair in expected for x in pair], rel=1e-9), \
        (got, expected)


def test_a_kill_of_the_model_role_keeps_the_windows(
        env: Env, spawn: Callable[..., Role], start_gateway: Callable[..., Gateway],
        stream: Stream) -> None:
    model = spawn("model")
    spawn("metric")
    gw = start_gateway()
    X, y = resample(4_000, seed=10)
    stream.send(X[:2_000], y[:2_000])
    first = settled(gw, 2_000)
    model.kill()
    spawn("model")
    stream.send(X[2_000:], y[2_000:])
    doc = settled(gw, 4_000, labelled=4_000)
    # At least once: nothing counted before the kill is lost (a batch redelivered after
    # the kill may count twice), and the join still counts each label once.
    assert first["events"] >= 2_000
    assert doc["events"] >= 4_000
    assert doc["labelled"] == 4_000


def test_a_retrain_gets_its_own_profile_and_windows(
        env: Env, pipeline: Callable[..., Gateway], stream: Stream) -> None:
    from mlpulse.ml import registry
    from mlpulse.ml.data import diabetes

    gw = pipeline()
    X, y = resample(2_000, seed=11)
    stream.send(X, y)
    settled(gw, 2_000, labelled=2_000)
    models = env.root / "models"
    estimator, mae = registry.train(diabetes(), seed=1)
    registry.register(models, estimator, diabetes(), mae, "test retrain")
    assert (models / "model-v2.profile.json").exists()
    wait_until(lambda: _swapped(env), 30, "the model role to take v2")
    stream.send(X[:1_500], y[:1_500])
    v2 = settled(gw, 1_500, labelled=1_500, version="v2")
    v1 = drift(gw, version="v1")
    assert v1["events"] + v2["events"] == 3_500
    assert v1["events"] >= 2_000
    assert drift(gw)["model_version"] == "v2"  # the newest version with events


def _swapped(env: Env) -> bool:
    r = env.redis()
    try:
        return bool(r.exists("mlpulse:deployed:v2"))
    finally:
        r.close()


def test_a_corrupt_profile_means_insufficient_and_the_pipeline_goes_on(
        env: Env, spawn: Callable[..., Role], start_gateway: Callable[..., Gateway],
        stream: Stream) -> None:
    from mlpulse.ml.registry import ensure_model

    models = env.root / "models"
    ensure_model(models)
    (models / "model-v1.profile.json").write_text('{"format": 1, "features": [')
    model = spawn("model")
    spawn("metric")
    gw = start_gateway()
    X, y = resample(1_500, seed=12)
    stream.send(X, y)
    wait_until(lambda: env.row_count() >= 1_500, 60, "every row logged")
    model.wait_for(r"drift is unavailable for v1: .*model-v1\.profile\.json is unreadable")
    doc = drift(gw)
    assert doc["model_version"] == "v1"
    assert "unreadable" in doc["unavailable"]
    assert {f["status"] for f in doc["features"]} == {"insufficient"}
    assert [f["name"] for f in doc["features"]] == NAMES
    assert doc["prediction"]["status"] == "insufficient"


def test_the_api_checks_its_arguments(pipeline: Callable[..., Gateway]) -> None:
    gw = pipeline()
    auth = {"Authorization": f"Bearer {token('bob')}"}
    assert httpx.get(f"{gw.http}/api/drift").status_code == 401
    for window in (0, 5, 3601, -1):
        r = httpx.get(f"{gw.http}/api/drift", params={"window": window}, headers=auth)
        assert r.status_code == 422, (window, r.text)
    r = httpx.get(f"{gw.http}/api/drift", params={"model_version": "v99"}, headers=auth)
    assert r.status_code == 404
    doc = httpx.get(f"{gw.http}/api/drift", params={"window": 3600}, headers=auth).json()
    assert doc["window_s"] == 3600
    assert doc["events"] == 0
    assert {f["status"] for f in doc["features"]} == {"insufficient"}


def test_a_window_below_the_minimum_gets_no_verdict(
        pipeline: Callable[..., Gateway], stream: Stream) -> None:
    gw = pipeline({"MLPULSE_DRIFT_MIN_EVENTS": "600"})
    X, _ = resample(500, seed=13)
    X[:, 2] += 3 * X_REF[:, 2].std()
    stream.send(X)
    doc = settled(gw, 500)
    assert statuses(doc)["bmi"] == "insufficient"
    assert doc["features"][2]["psi"] > 1  # the value is there; the verdict is not
    stream.send(X[:100])
    assert statuses(settled(gw, 600))["bmi"] == "drift"

