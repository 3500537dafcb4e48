"""A RabbitMQ restart in mid-stream: persistent messages survive and are logged once.

The broker is the session's private node (tests/nodes.py): restarting the machine's own
would take down every other system that uses it. This test drives `mlpulse produce`, so
the project's own producer is shown to ride out the restart too; the fault suite in
tests/faults/ repeats the fault in rounds, with a kill -9 of the node as well.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.conftest import (
    Env,
    Role,
    assert_logged_once,
    producing,
    recovery_after,
    wait_ready,
    wait_until,
)
from tests.nodes import RabbitNode


@pytest.fixture
def env(private_env: Env) -> Env:
    return private_env


def test_broker_restart_mid_stream_loses_and_repeats_nothing(
        env: Env, start_role: Callable[..., Role], rabbit_node: RabbitNode) -> None:
    model = start_role("model")
    metric = start_role("metric")
    total = 6000
    with producing(env, total, rate=800):
        wait_until(lambda: env.row_count() >= 1000, what="1000 rows before the restart")
        rabbit_node.stop_app()
        at_stop, stopped = env.row_count(), time.time()
        rabbit_node.start_app()
        assert 0 < at_stop < total, f"the restart came at {at_stop} rows of {total}"
    wait_until(lambda: env.row_count() >= total, timeout=90, what=f"{total} rows")
    assert_logged_once(env, total)
    print(f"FAULT broker stop_app under mlpulse produce: rounds=1 events={total} lost=0 "
          f"duplicated=0 rows_at_fault={at_stop} recovery={recovery_after(env, stopped):.2f}s")
    for role in (model, metric):
        # The same process consumes again on the restarted broker: it reconnected, not died.
        wait_ready(env, role)
