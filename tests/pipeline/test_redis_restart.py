"""Redis that persists (AOF) may die and come back: the log still has every id once.

Redis is the session's private server (tests/nodes.py), with every write fsynced to its
AOF, killed by SIGKILL and started again on the same port and directory. The broker is
the session's private node too. This test drives `mlpulse produce`; the fault suite in
tests/faults/ repeats the kill in rounds against a recorded stream.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.conftest import (
    Env,
    Role,
    assert_logged_once,
    produce,
    producing,
    recovery_after,
    wait_ready,
    wait_until,
)
from tests.nodes import RedisNode


@pytest.fixture
def env(private_env: Env) -> Env:
    return private_env


def test_kill_9_of_a_persisting_redis_loses_and_repeats_nothing(
        env: Env, start_role: Callable[..., Role], redis_node: RedisNode) -> None:
    model = start_role("model")
    metric = start_role("metric")
    total = 4000
    with producing(env, total, rate=1000):
        wait_until(lambda: env.row_count() >= 1000, what="1000 rows before the kill")
        redis_node.kill()
        at_kill, killed = env.row_count(), time.time()
        assert at_kill < total
        # The metric role finds Redis gone on its next call, says so, and keeps trying.
        metric.wait_for("unavailable|retrying", timeout=30)
        redis_node.start()
    wait_until(lambda: env.row_count() >= total, timeout=90, what=f"{total} rows")
    assert_logged_once(env, total)
    print(f"FAULT redis kill -9 under mlpulse produce: rounds=1 events={total} lost=0 "
          f"duplicated=0 rows_at_fault={at_kill} recovery={recovery_after(env, killed):.2f}s")
    for role in (model, metric):
        wait_ready(env, role)  # the same process, beating and consuming again
    # The pipeline carries on as before.
    produce(env, "--count", "1", "--rate", "0")
    wait_until(lambda: env.row_count() == total + 1, what="one more row")
    assert len({r["id"] for r in env.rows()}) == total + 1
