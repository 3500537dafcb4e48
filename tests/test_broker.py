"""A RabbitMQ restart in mid-stream: persistent messages survive and are logged once."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable

import pytest

from tests.conftest import Env, Role, assert_logged_once, wait_until

RABBITMQCTL = shutil.which("rabbitmqctl")


def rabbitmqctl(*args: str) -> None:
    assert RABBITMQCTL is not None
    subprocess.run([RABBITMQCTL, *args], check=True, capture_output=True, timeout=120)


@pytest.mark.skipif(RABBITMQCTL is None, reason="needs rabbitmqctl to restart the broker")
def test_broker_restart_mid_stream_loses_and_repeats_nothing(
        env: Env, spawn: Callable[..., Role]) -> None:
    model = spawn("model")
    metric = spawn("metric")
    total = 6000
    producer = subprocess.Popen(
        [sys.executable, "-m", "mlpulse", "produce", "--count", str(total), "--batch", "20",
         "--rate", "1500"],
        env={**os.environ, **env.vars}, cwd=env.root, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: env.row_count() >= 1000, what="1000 rows before the restart")
        rabbitmqctl("stop_app")
        at_stop = env.row_count()
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup")
        assert at_stop < total
        assert producer.wait(180) == 0, producer.stderr.read() if producer.stderr else ""
    finally:
        if producer.poll() is None:
            producer.kill()
            producer.wait()
        if producer.stderr:
            producer.stderr.close()
    wait_until(lambda: env.row_count() >= total, timeout=90, what=f"{total} rows")
    assert_logged_once(env, total)
    for role in (model, metric):
        assert role.proc.poll() is None, "a role should reconnect, not die"
        assert "reconnecting" in role.output()
