"""Shared fixtures: real RabbitMQ (own vhost), real Redis (own db), real role processes."""

from __future__ import annotations

import contextlib
import csv
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pika
import pytest
import redis

# Separate values let two test runs share one machine without touching each other.
VHOST = os.environ.get("MLPULSE_TEST_VHOST", "mlpulse-test")
REDIS_DB = int(os.environ.get("MLPULSE_TEST_REDIS_DB", "15"))
QUEUES = ("features", "y_true", "y_pred", "mlpulse.dead")
# Deleted before each test as well: Celery's queue, there once a worker has run.
CLEARED = (*QUEUES, "mlpulse.tasks")


def _ensure_vhost() -> str:
    """A vhost of the tests' own, so a running mlpulse on `/` is never disturbed."""
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        return "/"
    subprocess.run([ctl, "add_vhost", VHOST], capture_output=True, check=False)
    done = subprocess.run([ctl, "set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*"],
                          capture_output=True, check=False)
    return VHOST if done.returncode == 0 else "/"


@pytest.fixture(scope="session")
def amqp_url() -> str:
    vhost = _ensure_vhost()
    return "amqp://guest:guest@localhost:5672/" + ("%2F" if vhost == "/" else vhost)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], object], timeout: float = 30.0, what: str = "",
               interval: float = 0.05) -> None:
    """Poll a condition that has no event to await (a file growing, a counter moving)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


@dataclass
class Env:
    """One test's isolated world: directories, URLs and the variables roles read."""

    root: Path
    amqp_url: str
    redis_url: str
    vars: dict[str, str]

    @property
    def metric_log(self) -> Path:
        return self.root / "logs" / "metric_log.csv"

    @property
    def plot_path(self) -> Path:
        return self.root / "logs" / "error_distribution.png"

    def rows(self) -> list[dict[str, str]]:
        if not self.metric_log.exists():
            return []
        with self.metric_log.open(newline="") as f:
            return list(csv.DictReader(f))

    def row_count(self) -> int:
        if not self.metric_log.exists():
            return 0
        with self.metric_log.open("rb") as f:
            return max(0, f.read().count(b"\n") - 1)

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)

    def channel(self) -> pika.adapters.blocking_connection.BlockingChannel:
        conn = pika.BlockingConnection(pika.URLParameters(self.amqp_url))
        return conn.channel()


@pytest.fixture
def env(tmp_path: Path, amqp_url: str) -> Env:
    redis_url = f"redis://localhost:6379/{REDIS_DB}"
    r = redis.Redis.from_url(redis_url)
    r.flushdb()
    r.close()
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    for q in CLEARED:
        ch = conn.channel()
        try:
            ch.queue_delete(q)
            ch.close()
        except pika.exceptions.ChannelClosedByBroker:
            pass  # the queue is not there (this broker says so with a 404)
    conn.close()
    variables = {
        "MLPULSE_AMQP_URL": amqp_url,
        "MLPULSE_REDIS_URL": redis_url,
        "MLPULSE_LOG_DIR": str(tmp_path / "logs"),
        "MLPULSE_DATA_DIR": str(tmp_path / "data"),
        "MLPULSE_MODELS_DIR": str(tmp_path / "models"),
    }
    return Env(tmp_path, amqp_url, redis_url, variables)


class Role:
    """A real `python -m mlpulse ...` process whose output can be awaited line by line."""

    def __init__(self, args: list[str], env: Env, extra: dict[str, str] | None = None,
                 module: str = "mlpulse") -> None:
        self.args = args
        full = {**os.environ, **env.vars, **(extra or {}), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args], env=full, cwd=env.root,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,  # a role's own children (a worker's pool) go with it
        )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, pattern: str, timeout: float = 60.0, start: int = 0) -> int:
        """Block until a line matching `pattern` appears (at or after line `start`)."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            i = start
            while True:
                while i < len(self.lines):
                    if rx.search(self.lines[i]):
                        return i
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(
                        f"{self.args} never printed {pattern!r}; output:\n{self.output()}")
                self._cond.wait(min(left, 0.5))

    def output(self) -> str:
        with self._cond:
            return "".join(self.lines)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self.close()
        return code

    def close(self) -> None:
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def kill(self) -> None:
        """SIGKILL to the role and every process it started: no chance to clean up."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.close()


@pytest.fixture
def spawn(env: Env) -> Iterator[Callable[..., Role]]:
    """Start role processes; every one still running is stopped after the test."""
    started: list[Role] = []

    def start(*args: str, extra: dict[str, str] | None = None, ready: str | None = "ready",
              module: str = "mlpulse") -> Role:
        role = Role(list(args), env, extra, module)
        started.append(role)
        if ready:
            role.wait_for(ready)
        return role

    yield start
    for role in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(role.proc.pid, signal.SIGKILL)
        role.proc.wait(10)
        role.close()


def assert_logged_once(env: Env, total: int) -> None:
    """`total` rows, no id twice, and Redis counts exactly what the log holds."""
    ids = [r["id"] for r in env.rows()]
    assert len(ids) == len(set(ids)) == total
    client = env.redis()
    try:
        assert int(client.hget("mlpulse:agg", "count") or 0) == total
    finally:
        client.close()


def produce(env: Env, *args: str, extra: dict[str, str] | None = None) -> str:
    """Run the producer to completion and return its output."""
    full = {**os.environ, **env.vars, **(extra or {})}
    done = subprocess.run([sys.executable, "-m", "mlpulse", "produce", *args], env=full,
                          cwd=env.root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stderr
