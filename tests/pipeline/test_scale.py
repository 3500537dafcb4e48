"""Competing consumers: two model and two metric processes on one RabbitMQ and Redis."""

from __future__ import annotations

import csv
from collections.abc import Callable

from mlpulse.pipeline.sink import HEADER
from tests.conftest import Env, Role, assert_logged_once, produce, wait_until

EVENTS = 20_000


def test_two_models_and_two_metrics_log_every_id_once_in_one_file(
        env: Env, spawn: Callable[..., Role]) -> None:
    for _ in range(2):
        spawn("model")
        spawn("metric")
    produce(env, "--count", str(EVENTS), "--batch", "100", "--rate", "0")
    wait_until(lambda: env.row_count() >= EVENTS, 120, what=f"{EVENTS} rows")
    assert_logged_once(env, EVENTS)
    with env.metric_log.open(newline="") as f:
        lines = f.read().split("\n")
    assert lines[0] == ",".join(HEADER)
    assert lines[-1] == ""  # the file ends with a complete line
    rows = list(csv.reader(lines[1:-1]))
    assert all(len(r) == len(HEADER) for r in rows), "a torn or interleaved line"
    assert all(abs(float(r[3]) - abs(float(r[1]) - float(r[2]))) < 1e-9 for r in rows)
