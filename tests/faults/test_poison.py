"""Garbage on all three queues, mixed into a live stream of good events.

Bursts of bad messages go to `features`, `y_true` and `y_pred`, and some good frames carry
bad elements too, one of them under the id of a good event in the same frame. Every good
event must still be logged exactly once, no role may die or restart, and every bad message
or element must land in `mlpulse.dead` once, saying which queue it came from. (A property
test elsewhere explores the space of bad inputs; this is a fault run over a real stream.)
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import pika

from tests.conftest import Env
from tests.faults.harness import FaultRun, Scale, scale
from tests.faults.stream import N_FEATURES, Publisher

MAX_BYTES = 65536
GOOD_FEATURES = [0.01] * N_FEATURES

# (queue, body, dead letters it makes): a frame makes one per bad element.
BURST: list[tuple[str, bytes, int]] = [
    ("features", b"not json", 1),
    ("features", b"", 1),
    ("features", b"\xff\xfe{", 1),
    ("features", b'"a string"', 1),
    ("features", b"[1, 2, 3]", 3),
    ("features", json.dumps({"id": None, "body": GOOD_FEATURES}).encode(), 1),
    ("features", json.dumps({"body": GOOD_FEATURES}).encode(), 1),
    ("features", json.dumps({"id": True, "body": GOOD_FEATURES}).encode(), 1),
    ("features", json.dumps({"id": "g-nan", "body": [float("nan")] * N_FEATURES}).encode(), 1),
    ("features", json.dumps({"id": "g-big", "body": GOOD_FEATURES,
                             "pad": "x" * MAX_BYTES}).encode(), 1),
    ("y_true", b'{"id": "g1", "body": "151"}', 1),
    ("y_true", b'{"id": "g2", "body": NaN}', 1),
    ("y_true", b'{"id": "g3", "body": Infinity}', 1),
    ("y_true", b'{"id": "g4"}', 1),
    ("y_true", b'{"id": "g5", "body": [1.0]}', 1),
    ("y_true", b'{"id": "g6", "body": true}', 1),
    ("y_true", b'[{"id": "g7", "body": null}, 5, "x"]', 3),
    ("y_pred", b"{", 1),
    ("y_pred", b'{"id": "p1", "body": {"a": 1}}', 1),
    ("y_pred", b'{"id": {"x": 1}, "body": 1.0}', 1),
    ("y_pred", b'[{"id": "p2", "body": "9"}, {"id": "p3"}]', 2),
]


def spoil(frame: int, labels: list[dict[str, Any]]) -> tuple[list[Any], list[Any]]:
    """Every fifth frame: a bad features element and a bad label under a good id."""
    if frame % 5:
        return [], []
    good_id = labels[0]["id"]
    return ([{"id": good_id, "body": [1.0, 2.0]}], [{"id": good_id, "body": "oops"}])


def publish_burst(url: str) -> Counter[str]:
    """Send every message of BURST with confirms; the dead letters to expect, by queue."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = conn.channel()
        channel.confirm_delivery()
        expected: Counter[str] = Counter()
        for queue, body, dead in BURST:
            channel.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2))
            expected[queue] += dead
        return expected
    finally:
        conn.close()


def dead_letters(env: Env) -> Counter[tuple[str, str]]:
    """Drain mlpulse.dead: how many came from each queue with each reason code."""
    seen: Counter[tuple[str, str]] = Counter()
    channel = env.channel()
    try:
        while True:
            method, props, _ = channel.basic_get("mlpulse.dead", auto_ack=True)
            if method is None:
                return seen
            headers = props.headers or {}
            assert headers.get("x-mlpulse-reason"), f"a dead letter without a reason: {headers}"
            seen[str(headers.get("x-mlpulse-queue")), str(headers.get("x-mlpulse-code"))] += 1
    finally:
        channel.connection.close()


def test_garbage_on_every_queue_is_set_aside_and_the_good_events_flow_on(
        env: Env, fault_run: Callable[[str, Scale], FaultRun]) -> None:
    size = scale(Scale(rounds=3, events=3000), Scale(rounds=12, events=30000, rate=1000))
    run = fault_run("poison", size)
    env.vars["MLPULSE_MAX_MESSAGE_BYTES"] = str(MAX_BYTES)
    bursts: Counter[str] = Counter()
    spoiled: Counter[str] = Counter()  # counted in the publisher's thread

    def spoil_and_count(frame: int, labels: list[dict[str, Any]]) -> tuple[list[Any], list[Any]]:
        bad_features, bad_labels = spoil(frame, labels)
        spoiled.update(features=len(bad_features), y_true=len(bad_labels))
        return bad_features, bad_labels

    run.start("model", "metric", "plot", publisher=Publisher(
        env.amqp_url, size.events, batch=size.batch, rate=size.rate, spoil=spoil_and_count))
    for threshold in run.thresholds():
        run.wait_rows(threshold)
        run.wait_recovered(run.inject("poison burst",
                                      lambda: bursts.update(publish_burst(env.amqp_url))))
    run.assert_same_processes()
    run.stream.release()
    run.stream.wait(60)  # every spoiled frame is out
    planted = bursts + spoiled
    run.notes["dead_letters"] = planted.total()
    run.finish(dead_letters=planted.total())
    found = dead_letters(env)
    by_queue: Counter[str] = Counter()
    for (queue, _), n in found.items():
        by_queue[queue] += n
    assert by_queue == planted, f"dead letters by (queue, code): {dict(found)}"
    client = env.redis()
    try:
        assert int(client.hget("mlpulse:agg", "rejected") or 0) == planted.total()
    finally:
        client.close()
