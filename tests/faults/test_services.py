"""RabbitMQ and Redis fail under a live stream: the roles ride it out and the log stays exact.

Both services are the session's private nodes (tests/nodes.py); the machine's own are
never touched.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.faults.harness import FaultRun, Scale, scale
from tests.nodes import RabbitNode, RedisNode


@pytest.mark.parametrize("how", ["stop_app", "kill -9"])
def test_broker_restart_mid_stream_loses_and_repeats_nothing(
        fault_run: Callable[[str, Scale], FaultRun], rabbit_node: RabbitNode, how: str) -> None:
    """`stop_app` closes every connection and starts the broker again in the same node;
    `kill -9` takes the node down unwarned, and it boots again from its data directory."""
    size = scale(Scale(rounds=2 if how == "stop_app" else 1, events=4000),
                 Scale(rounds=8 if how == "stop_app" else 5, events=30000, rate=1000))
    run = fault_run(f"broker {how}", size)
    run.start("model", "metric")
    for threshold in run.thresholds():
        run.wait_rows(threshold)
        if how == "stop_app":
            fault = run.inject("broker stop_app", rabbit_node.stop_app)
            rabbit_node.start_app()
        else:
            fault = run.inject("broker kill -9", rabbit_node.kill)
            rabbit_node.start()
        run.wait_recovered(fault)
    run.assert_same_processes()
    run.finish()
    assert run.stream.connections > len(run.faults), "the producer never lost its broker"


def test_redis_kill_9_with_aof_loses_and_repeats_nothing(
        fault_run: Callable[[str, Scale], FaultRun], redis_node: RedisNode) -> None:
    """Redis appends and fsyncs every write (appendfsync always), dies by SIGKILL and
    replays its AOF on the same port."""
    size = scale(Scale(rounds=3, events=4000), Scale(rounds=15, events=40000, rate=1000))
    run = fault_run("redis kill -9", size)
    run.start("model", "metric", "plot")
    for threshold in run.thresholds():
        run.wait_rows(threshold)
        fault = run.inject("redis kill -9", redis_node.kill)
        redis_node.start()
        run.wait_recovered(fault)
    run.assert_same_processes()
    run.finish()
