"""Early warning must never stop the pipeline: faults in the detector, the estimator or
what a foreign y_pred claims are contained where they happen."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import redis.exceptions

from mlpulse.config import Settings
from mlpulse.drift import column_profile
from mlpulse.keys import JOINED
from mlpulse.pipeline import sink as sink_module
from mlpulse.pipeline.joiner import Joiner
from mlpulse.pipeline.sink import CsvSink, format_rows
from mlpulse.store import JoinStore
from tests.conftest import REDIS_DB


@pytest.fixture
def client(aredis: Any) -> Any:
    return aredis


class FailingObserver:
    """Fails to save `failures` times (as Redis refusing writes would), then works."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.pos: str | None = None
        self.calls = 0

    async def observe(self, after: str | None, through: str, in_hand: list[Any]) -> None:
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise redis.exceptions.ConnectionError("refused for now")
        self.pos = through

    def holds(self) -> str | None:
        return self.pos


async def _outbox(client: Any, entries: int) -> None:
    for i in range(entries):
        rows = [[f"id-{i}", "1.0", "2.0", "v1", "", ""]]
        await client.xadd(JOINED, {"at": repr(time.time()), "rows": orjson.dumps(rows)})


async def _run_sink(sink: CsvSink, until: Any) -> None:
    finish = asyncio.Event()
    task = asyncio.create_task(sink.run(finish))
    deadline = time.monotonic() + 20
    while not await until():
        assert time.monotonic() < deadline, "the sink never got there"
        await asyncio.sleep(0.05)
    finish.set()
    await asyncio.wait_for(task, 10)


async def test_an_observer_that_cannot_save_for_a_while_does_not_keep_the_outbox_full(
        tmp_path: Path, client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sink_module.Backoff, "next", lambda self: 0.05)
    await _outbox(client, 300)
    observer = FailingObserver(failures=3)
    sink = CsvSink(tmp_path / "metric_log.csv", client, observer)  # type: ignore[arg-type]

    async def trimmed() -> bool:
        # The trim is approximate (whole nodes of 100 entries): the last node stays.
        return bool(await client.xlen(JOINED) < 100)

    # No new entry arrives after the failures: the trim must still happen.
    await _run_sink(sink, trimmed)
    assert observer.calls >= 4
    assert (tmp_path / "metric_log.csv").read_text().count("\n") == 301


async def test_an_observer_that_never_saves_is_switched_off_and_the_outbox_drains(
        tmp_path: Path, client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sink_module.Backoff, "next", lambda self: 0.05)
    monkeypatch.setattr(sink_module, "OBSERVER_PATIENCE", 0.3)
    await _outbox(client, 300)
    sink = CsvSink(tmp_path / "metric_log.csv", client,
                   FailingObserver(failures=10**9))  # type: ignore[arg-type]

    async def trimmed() -> bool:
        # The trim is approximate (whole nodes of 100 entries): the last node stays.
        return bool(await client.xlen(JOINED) < 100)

    await _run_sink(sink, trimmed)
    assert sink.observer is None


def test_a_prediction_meta_with_its_drift_bucket_logs_only_the_send_time() -> None:
    rows = [["a", "1.0", "2.5", "v1", "100.5", "100.25;1795450000.0;44.0"],
            ["b", "1.0", "2.5", "v1", "", ";1795450000.0;44.0"]]
    text = format_rows("1-0", {b"at": b"200.0", b"rows": orjson.dumps(rows)}, -1, 300.0)
    lines = text.splitlines()
    assert lines[0].split(",")[5] == "100.250000"
    assert lines[1].split(",")[5] == ""


async def test_foreign_drift_claims_beyond_bounds_are_not_believed(client: Any) -> None:
    settings = Settings(redis_url=f"redis://localhost:6379/{REDIS_DB}")
    joiner = Joiner(None, client, settings)
    now = time.time()
    claims = [(now + 86_400, 10.0),      # scored tomorrow
              (now - 30 * 86_400, 10.0),  # scored a month ago
              (now, 1e308),               # an estimate no sum survives
              (now, -5.0)]                # a negative error
    preds = [{"id": f"x{i}", "body": 1.0, "model_version": "v1", "scored_at": s,
              "estimated_error": e} for i, (s, e) in enumerate(claims)]
    labels = [{"id": f"x{i}", "body": 2.0} for i in range(len(claims))]
    await joiner.handle([_message("y_pred", preds), _message("y_true", labels)])
    assert await client.xlen(JOINED) == 1  # every pair joined
    # Only the two scored now are counted, each without its estimate; the times from
    # tomorrow and last month make no bucket.
    keys = sorted(k.decode() for k in await client.keys("mlpulse:drift:*"))
    assert keys == sorted(f"mlpulse:drift:v1:{r}:{int(now // r) * r}" for r in (10, 60))
    for key in keys:
        assert await client.hget(key, "ln") == b"2"
        assert float(await client.hget(key, "lest")) == 0.0


def _message(queue: str, doc: Any) -> Any:
    class Delivered:
        routing_key = queue
        body = orjson.dumps(doc)
    return Delivered()


def test_an_empty_reference_bin_keeps_the_points_in_order() -> None:
    values = np.array([10.0] * 50 + list(range(11, 61)), dtype=float)
    col = column_profile("x", values, 10)
    assert all(b > a for a, b in zip(col["means"], col["means"][1:], strict=False))


async def test_an_estimator_that_fails_on_a_batch_switches_drift_off_not_predictions(
        tmp_path: Path, client: Any) -> None:
    from mlpulse.ml.registry import ensure_model, ensure_profile
    from mlpulse.pipeline.model import Predictor

    model = ensure_model(tmp_path)
    profiled = ensure_profile(tmp_path, model)

    class Broken:
        def predict(self, Z: Any) -> Any:
            raise ValueError("a model from another scikit-learn")

    profiled.errors = Broken()
    settings = Settings(redis_url=f"redis://localhost:6379/{REDIS_DB}", models_dir=tmp_path)
    predictor = Predictor(None, client, model, settings, profiled)  # type: ignore[arg-type]
    X = np.zeros((3, 10))
    assert predictor._drift_fields(model, profiled, X, model.predict(X)) is None
    assert predictor.profiled is None


async def test_the_join_store_still_counts_labels_for_a_waiting_prediction(
        client: Any) -> None:
    settings = Settings(redis_url=f"redis://localhost:6379/{REDIS_DB}")
    store = JoinStore(client, settings)
    now = time.time()
    await store.join(orjson.dumps([["p", "a", "3.0", "v1", "99.5", now, 7.0]]), now)
    await store.join(orjson.dumps([["t", "a", "1.0", "", ""]]), now)
    fine = f"mlpulse:drift:v1:10:{int(now // 10) * 10}"
    got = {k.decode(): float(v) for k, v in (await client.hgetall(fine)).items()}
    # Count, error, estimate, squared error and the error's histogram bin (width 5).
    assert got == {"ln": 1.0, "lerr": 2.0, "lest": 7.0, "lsq": 4.0, "lh0": 1.0}
    # The label's delay (under 0.1 s) counts into this minute, by join time.
    rates = await client.hgetall(f"mlpulse:rates:{int(now // 60) * 60}")
    assert rates == {b"joined": b"1", b"ld0": b"1"}
    entry = (await client.xrange(JOINED))[0][1]
    assert orjson.loads(entry[b"rows"])[0][5] == "99.5"  # only the send time goes on


async def test_a_detector_killed_before_its_first_save_reads_from_the_first_entry(
        aredis: Any) -> None:
    from mlpulse.pipeline.changes import ErrorChanges

    await _outbox(aredis, 5)
    entries = await aredis.xrange(JOINED)
    # A sink wrote entries 0-2 and died before the detector saved anything; the restarted
    # sink writes 3-4 and hands them over.
    detector = ErrorChanges(aredis)
    last = entries[-1][0].decode()
    await detector.observe(entries[2][0].decode(), last, entries[3:])
    assert detector.fed == {"v1": 5}
    assert detector.pos == last
