"""The metric log's disk fills up under a live stream, and later has room again.

The contract: the sink waits and retries, saying why; nothing is acked that is not stored
(once the Redis outbox is over its bound, joins hold their messages in RabbitMQ); the
role's heartbeat names the full disk, and so do `mlpulse doctor --role metric` and the
gateway's /healthz; when space returns the role carries on by itself, and every event is
in the log exactly once.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from mlpulse.health import heartbeat_key
from mlpulse.keys import JOINED
from mlpulse.store import OUTBOX_MAX
from tests.conftest import Env, Role, free_port, wait_until
from tests.faults.harness import SOAK, FaultRun, Scale, scale
from tests.nodes import RabbitNode, fill, small_disk

NO_SPACE = os.strerror(errno.ENOSPC)
SECRET = "fault-test-secret-0123456789-abcdefghijklmnop"
# Room for the whole run's log once the filler is gone: the backlog the disk held up
# (about 12 rows per outbox entry, 140 bytes a row) lands all at once.
DISK_MIB = 64 if SOAK else 16


@pytest.fixture
def log_disk(env: Env) -> Iterator[Path]:
    """The roles' log directory on a tmpfs of the test's own."""
    with small_disk(Path(env.vars["MLPULSE_LOG_DIR"]), f"{DISK_MIB}m") as mount:
        yield mount


def beat_problems(env: Env, role: str) -> list[str]:
    client = env.redis()
    try:
        raw = client.get(heartbeat_key(role))
    finally:
        client.close()
    return [] if raw is None else list(json.loads(raw).get("problems") or [])


def outbox_length(env: Env) -> int:
    client = env.redis()
    try:
        return int(client.xlen(JOINED))
    finally:
        client.close()


def held_by_broker(node: RabbitNode) -> int:
    """Messages of y_true and y_pred the broker still holds, ready or unacked."""
    held = 0
    for line in node.queues().splitlines():
        name, *counts = line.split()
        if name in ("y_true", "y_pred"):
            held += int(counts[0]) + int(counts[1])
    return held


def doctor(env: Env) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlpulse", "doctor", "--role", "metric"],
                          env={**os.environ, **env.vars}, cwd=env.root, capture_output=True,
                          text=True, timeout=60, check=False)


def start_gateway(env: Env, spawn: Callable[..., Role]) -> tuple[Role, str]:
    port = free_port()
    role = spawn("gateway", extra={"MLPULSE_HTTP_PORT": str(port), "MLPULSE_SECRET": SECRET},
                 ready=None)
    url = f"http://127.0.0.1:{port}/healthz"

    def answers() -> bool:
        if role.proc.poll() is not None:
            raise AssertionError(f"the gateway exited:\n{role.output()}")
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(answers, 60, "the gateway's /healthz to answer 200")
    return role, url


# Frames of 5 make many small join steps, so the outbox reaches its bound in seconds.
SIZE = scale(Scale(rounds=1, events=3000, batch=5), Scale(rounds=3, events=20000, batch=5))


def test_full_disk_under_the_metric_log_holds_then_resumes_by_itself(
        env: Env, fault_run: Callable[[str, Scale], FaultRun], spawn: Callable[..., Role],
        rabbit_node: RabbitNode, log_disk: Path) -> None:
    run = fault_run("full disk", SIZE)
    run.start("model", "metric", "plot")
    gateway, healthz = start_gateway(env, spawn)
    run.add_role("gateway", gateway)
    for threshold in run.thresholds():
        run.wait_rows(threshold)
        fault = run.inject("disk full", lambda: fill(log_disk))
        filler = log_disk / "filler"

        # It says why: in its heartbeat, through doctor, through the gateway.
        wait_until(lambda: any(NO_SPACE in p for p in beat_problems(env, "metric")),
                   timeout=30, what="the metric heartbeat to name the full disk")
        checked = doctor(env)
        assert checked.returncode == 1, checked
        assert NO_SPACE in checked.stdout, checked
        answer = httpx.get(healthz, timeout=5)
        assert answer.status_code == 503, answer.text
        assert NO_SPACE in answer.text, answer.text

        # It holds rather than acks: the outbox stops at its bound, the broker keeps the rest.
        wait_until(lambda: outbox_length(env) > OUTBOX_MAX, timeout=120,
                   what=f"the outbox to pass {OUTBOX_MAX} entries")
        confirmed = run.stream.confirmed
        wait_until(lambda c=confirmed: run.stream.confirmed > c + 500, timeout=60,
                   what="500 more events confirmed while the disk is full")
        assert outbox_length(env) <= OUTBOX_MAX + 1
        assert held_by_broker(rabbit_node) > 0, rabbit_node.queues()
        stalled = run.tail.rows()
        assert stalled <= fault.rows + 60, "rows kept landing on a full disk"
        assert run.roles["metric"].proc.poll() is None
        assert NO_SPACE in run.roles["metric"].output(), "the role never said why it waits"

        # Room again: it carries on by itself, from where it stopped.
        filler.unlink()
        run.wait_recovered(fault, since=time.time())  # recovery counts from here
        wait_until(lambda: not beat_problems(env, "metric"), timeout=30,
                   what="the full disk to leave the metric heartbeat")
        wait_until(lambda: httpx.get(healthz, timeout=5).status_code == 200, timeout=30,
                   what="/healthz to answer 200 again")
    run.assert_same_processes()
    run.finish()
