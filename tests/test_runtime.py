"""Process lifecycle through real processes: SIGTERM, bad settings, and the `up` supervisor."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from PIL import Image

from tests.conftest import Env, Role, free_port, produce, wait_until
from tests.pipeline.test_crash import (
    agg_count,
    assert_log_exact,
    assert_nothing_left,
    finish_stream,
    ids_of,
    poll,
    run_of,
    start_stream,
    stop_all,
    wait_for_rows,
)

ROLES = ("model", "metric", "plot")
UP_ROLES = (*ROLES, "gateway", "worker", "beat", "alerts")
# A role must be gone this soon after SIGTERM, even with a stream flowing.
STOP_BOUND = 20.0
# The plot role redraws this often in these tests, so a SIGTERM can land mid-drawing.
FAST_PLOT = {"MLPULSE_PLOT_INTERVAL": "0.2"}
SMALL_BATCHES = {"MLPULSE_PREFETCH": "100", "MLPULSE_BATCH_EVENTS": "50"}


def stop_within_bound(role: Role) -> float:
    """SIGTERM the role; it must exit 0 within the bound, after a clean stop. Returns seconds."""
    start = time.monotonic()
    try:
        code = role.stop(timeout=STOP_BOUND)
    except subprocess.TimeoutExpired:
        role.proc.kill()
        raise AssertionError(f"{role.args} still running {STOP_BOUND}s after SIGTERM:\n"
                             f"{role.output()}") from None
    took = time.monotonic() - start
    output = role.output()
    assert code == 0, f"{role.args} exited with {code}:\n{output}"
    assert f"{role.args[0]} stopped" in output
    assert "did not stop" not in output
    assert "Traceback" not in output, output
    return took


def assert_png_whole(env: Env) -> None:
    with Image.open(env.plot_path) as img:
        img.verify()
    assert env.plot_path.read_bytes().endswith(b"IEND\xaeB`\x82")


@pytest.mark.parametrize("name", ROLES)
def test_sigterm_stops_an_idle_role_with_code_0(env: Env, spawn: Callable[..., Role],
                                                name: str) -> None:
    role = spawn(name)
    assert stop_within_bound(role) < STOP_BOUND


@pytest.mark.parametrize("name", ROLES)
def test_sigterm_mid_stream_stops_cleanly_and_loses_nothing(
        env: Env, spawn: Callable[..., Role], name: str) -> None:
    roles = {r: spawn(r, extra=FAST_PLOT) for r in ROLES}
    total = 5000
    producer, run = start_stream(spawn, total, rate="1000", batch="50")
    wait_until(lambda: env.row_count() >= 1500, what="1500 rows")
    if name == "plot":
        wait_until(env.plot_path.exists, what="a first drawing")
    stop_within_bound(roles[name])
    logged = env.row_count()
    assert logged < total, "the stream was over before the stop"
    if name == "metric":
        # A graceful stop drains the outbox: every row joined so far is on disk.
        assert logged == agg_count(env)
    if name == "plot":
        assert_png_whole(env)
    roles[name] = spawn(name, extra=FAST_PLOT)
    finish_stream(env, producer, total)
    stop_all(*roles.values())
    assert_log_exact(env, ids_of(run, total))
    assert_nothing_left(env)


@pytest.mark.parametrize("name", ["model", "metric"])
def test_sigterm_while_catching_up_on_a_backlog_loses_nothing(
        env: Env, spawn: Callable[..., Role], name: str) -> None:
    """A role is busiest when it starts behind: a stop then finds several batches in hand."""
    roles = {r: spawn(r) for r in ("model", "metric") if r != name}
    total = 6000
    run = run_of(produce(env, "--count", str(total), "--batch", "1", "--rate", "0"))
    # Small batches keep the catch-up slow enough that the stop lands in the middle of it.
    roles[name] = spawn(name, extra=SMALL_BATCHES)
    poll(lambda: env.row_count() >= 500, what="the catch-up to start")
    stop_within_bound(roles[name])
    logged = env.row_count()
    assert logged < total, "the backlog was gone before the stop"
    if name == "metric":
        # A graceful stop drains the outbox: every row joined so far is on disk.
        assert logged == agg_count(env), roles[name].output()
    roles[name] = spawn(name)
    wait_for_rows(env, total, timeout=30)
    stop_all(roles["model"], roles["metric"])
    assert_log_exact(env, ids_of(run, total))
    assert_nothing_left(env)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MLPULSE_HTTP_PORT", "abc"),
        ("MLPULSE_HTTP_PORT", "70000"),
        ("MLPULSE_JOIN_TTL", "-1"),
        ("MLPULSE_DONE_TTL", "0"),
        ("MLPULSE_PREFETCH", "0"),
        ("MLPULSE_REDIS_URL", "not-a-url"),
        ("MLPULSE_AMQP_URL", "http://localhost:5672/"),
        ("MLPULSE_LOG_LEVEL", "LOUD"),
    ],
)
def test_a_bad_setting_fails_at_start_with_one_line_naming_it(
        env: Env, variable: str, value: str) -> None:
    full = {**os.environ, **env.vars, variable: value}
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "mlpulse", "metric"], env=full, cwd=env.root,
                          capture_output=True, text=True, timeout=30)
    took = time.monotonic() - start
    assert done.returncode != 0
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert variable in lines[0]
    assert done.stdout == ""
    assert took < 10, f"took {took:.1f}s to refuse a bad setting"


def _role_of(proc: psutil.Process) -> str:
    return proc.cmdline()[-1]


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_up_restarts_a_killed_child_and_stops_every_child_on_sigterm(
        env: Env, spawn: Callable[..., Role]) -> None:
    port = free_port()
    up = spawn("up", "--no-producer", ready=None,
               extra={"MLPULSE_HTTP_PORT": str(port), "MLPULSE_SECRET": "s" * 40})
    for name in UP_ROLES:
        up.wait_for("^" + re.escape(f"{name:<7} | ") + ".*ready")
    me = psutil.Process(up.proc.pid)
    seen = me.children()
    try:
        children = {_role_of(p): p for p in seen}
        assert set(children) == set(UP_ROLES)

        mark = len(up.lines)
        killed = children["metric"]
        killed.kill()
        killed.wait(10)
        up.wait_for(r"metric exited with code -9", start=mark)
        up.wait_for(r"^metric  \| .*ready", start=mark)
        now = me.children()
        seen += now
        again = [p for p in now if _role_of(p) == "metric"]
        assert len(again) == 1
        assert again[0].pid != killed.pid
        assert {_role_of(p) for p in now} == set(UP_ROLES)

        # The new metric does the work: a short stream is logged exactly once.
        run = run_of(produce(env, "--count", "200", "--batch", "50", "--rate", "0"))
        wait_until(lambda: env.row_count() >= 200, what="200 rows")
        assert_log_exact(env, ids_of(run, 200))

        code = up.stop(timeout=30)
        assert code == 0, up.output()
        left = [p for p in seen if _alive(p)]
        assert not left, f"children still running after the supervisor: {left}"
        output = up.output()
        for name in UP_ROLES:
            assert re.search(rf"^{name:<7} \| .*{name} stopped", output, re.M), output
        assert "did not stop" not in output
    finally:
        for p in seen:
            if _alive(p):
                p.kill()


def test_json_log_lines_carry_the_role_and_a_message_id_where_there_is_one() -> None:
    import json
    import logging

    from mlpulse.runtime import JsonFormatter

    formatter = JsonFormatter("metric")
    with_id = logging.LogRecord("mlpulse.broker", logging.WARNING, __file__, 1,
                                "dead-lettered a message from %s", ("y_true",), None)
    with_id.msg_id = "4f2a"
    plain = logging.LogRecord("mlpulse.broker", logging.INFO, __file__, 1, "ready", (), None)
    first, second = json.loads(formatter.format(with_id)), json.loads(formatter.format(plain))
    assert first["role"] == second["role"] == "metric"
    assert first["msg"] == "dead-lettered a message from y_true"
    assert first["msg_id"] == "4f2a"
    assert "msg_id" not in second


def test_a_worker_thread_still_busy_after_the_stop_does_not_hold_the_exit(
        env: Env, spawn: Callable[..., Role]) -> None:
    """A role whose loop still has a blocked worker thread (as a DNS lookup of a compose
    service that stopped first leaves it) ends with 0 soon after it says it stopped, not
    with 1 from the stop bound."""
    repo = str(Path(__file__).parents[1])
    role = spawn(module="tests.stuck_role", ready=r"ready: a worker thread",
                 extra={"PYTHONPATH": repo, "MLPULSE_STOP_TIMEOUT": "20"})
    code = role.stop(timeout=30)
    output = role.output()
    assert code == 0, output
    assert "stuck stopped" in output
    assert "did not stop" not in output
