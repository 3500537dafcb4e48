"""End to end through real processes: producer → model → metric → CSV and Redis."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest

from tests.conftest import Env, Role, produce, wait_until


def agg(env: Env) -> dict[str, str]:
    r = env.redis()
    try:
        return {k.decode(): v.decode() for k, v in r.hgetall("mlpulse:agg").items()}
    finally:
        r.close()


def assert_exact_log(env: Env, expected_ids: set[str]) -> None:
    rows = env.rows()
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), "an id was written twice"
    assert set(ids) == expected_ids
    for r in rows:
        assert float(r["absolute_error"]) == abs(float(r["y_true"]) - float(r["y_pred"]))
        assert r["model_version"] == "v1"
        assert float(r["joined_at"]) > 0


@pytest.mark.parametrize(("count", "batch"), [(3000, 250), (500, 1)])
def test_produced_events_are_logged_exactly_once(env: Env, spawn: Callable[..., Role],
                                                 count: int, batch: int) -> None:
    spawn("model")
    spawn("metric")
    produce(env, "--count", str(count), "--batch", str(batch), "--rate", "0")
    wait_until(lambda: env.row_count() >= count, what=f"{count} rows")
    rows = env.rows()
    run = rows[0]["id"].rsplit("-", 1)[0]
    assert_exact_log(env, {f"{run}-{i}" for i in range(count)})
    assert int(agg(env)["count"]) == count
    assert all(float(r["sent_at"]) <= float(r["joined_at"]) <= float(r["logged_at"])
               for r in rows)


def test_seed_style_pika_producer_is_joined(env: Env, spawn: Callable[..., Role]) -> None:
    """The seed's producer: float timestamp ids, one message per event, default exchange."""
    spawn("model")
    spawn("metric")
    ch = env.channel()
    ch.queue_declare(queue="features", durable=True)
    ch.queue_declare(queue="y_true", durable=True)
    from sklearn.datasets import load_diabetes

    X, y = load_diabetes(return_X_y=True)
    ids = []
    for i in range(50):
        message_id = time.time() + i * 1e-3  # the seed's datetime.timestamp() id
        ids.append(repr(message_id))
        ch.basic_publish(exchange="", routing_key="y_true",
                         body=json.dumps({"id": message_id, "body": float(y[i])}))
        ch.basic_publish(exchange="", routing_key="features",
                         body=json.dumps({"id": message_id, "body": list(X[i])}))
    ch.connection.close()
    wait_until(lambda: env.row_count() >= 50, what="50 rows")
    assert_exact_log(env, set(ids))
    by_id = {r["id"]: r for r in env.rows()}
    assert float(by_id[ids[3]]["y_true"]) == float(y[3])


def publish(env: Env, queue: str, docs: list[object]) -> None:
    ch = env.channel()
    ch.queue_declare(queue=queue, durable=True)
    for d in docs:
        ch.basic_publish(exchange="", routing_key=queue, body=json.dumps(d))
    ch.connection.close()


def test_ids_are_canonical_and_duplicates_are_counted_not_written(
        env: Env, spawn: Callable[..., Role]) -> None:
    spawn("metric")
    # 1 and "1" are the same id; 2.5 is written as repr.
    publish(env, "y_true", [{"id": 1, "body": 10}, {"id": 2.5, "body": 3}])
    publish(env, "y_pred", [{"id": "1", "body": 12.5, "model_version": "v1"},
                            {"id": 2.5, "body": 1, "model_version": "v1"}])
    wait_until(lambda: env.row_count() >= 2, what="2 rows")
    # The same halves again (a redelivery), and a different value for a joined id.
    publish(env, "y_true", [{"id": 1, "body": 10}, {"id": "2.5", "body": 3}])
    publish(env, "y_pred", [{"id": 1, "body": 99, "model_version": "v1"}])
    wait_until(lambda: int(agg(env).get("duplicates", 0)) == 2
               and int(agg(env).get("conflicts", 0)) == 1, what="dup and conflict counts")
    rows = env.rows()
    assert sorted(r["id"] for r in rows) == ["1", "2.5"]
    assert {r["id"]: r["absolute_error"] for r in rows} == {"1": "2.5", "2.5": "2.0"}
    assert int(agg(env)["count"]) == 2


def test_a_label_after_its_ttl_counts_as_unmatched(env: Env, spawn: Callable[..., Role]) -> None:
    spawn("metric", extra={"MLPULSE_JOIN_TTL": "0.5"})
    publish(env, "y_pred", [{"id": "late", "body": 1.0, "model_version": "v1"}])
    wait_until(lambda: int(agg(env).get("unmatched_p", 0)) == 1, what="pred expiring")
    publish(env, "y_true", [{"id": "late", "body": 2.0}])
    wait_until(lambda: int(agg(env).get("unmatched_t", 0)) == 1, what="label expiring")
    r = env.redis()
    assert r.hlen("mlpulse:pending:t") == 0
    assert r.hlen("mlpulse:pending:p") == 0
    r.close()
    assert env.row_count() == 0
    assert "count" not in agg(env)


def test_producer_without_labels_leaves_predictions_pending(
        env: Env, spawn: Callable[..., Role]) -> None:
    spawn("model")
    spawn("metric")
    produce(env, "--count", "40", "--batch", "10", "--rate", "0", "--no-labels")
    r = env.redis()
    wait_until(lambda: r.hlen("mlpulse:pending:p") == 40, what="40 pending predictions")
    r.close()
    assert env.row_count() == 0
