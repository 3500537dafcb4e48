"""Shared fixtures: real RabbitMQ (own vhost), real Redis (own db), real role processes.

Tests that stop, kill or fill a service use `private_env` instead of `env`: a RabbitMQ node
and a Redis of the session's own (tests/nodes.py), so the machine's are never disturbed.
"""

from __future__ import annotations

import contextlib
import csv
import json
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
from typing import Any

import pika
import psutil
import pytest
import redis

from mlpulse.health import heartbeat_key
from tests.nodes import RabbitNode, RedisNode

# Separate values let two test runs share one machine without touching each other.
VHOST = os.environ.get("MLPULSE_TEST_VHOST", "mlpulse-test")
REDIS_DB = int(os.environ.get("MLPULSE_TEST_REDIS_DB", "15"))
QUEUES = ("features", "y_true", "y_pred", "mlpulse.dead")
# Deleted before each test as well: Celery's queues, there once a worker has run.
CLEARED = (*QUEUES, "mlpulse.tasks", "mlpulse.alerts")


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


def _delete_queues(amqp_url: str) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    for q in CLEARED:
        ch = conn.channel()
        try:
            ch.queue_delete(q)
            ch.close()
        except pika.exceptions.ChannelClosedByBroker:
            pass  # the queue is not there (this broker says so with a 404)
    conn.close()


def _role_vars(root: Path, amqp_url: str, redis_url: str) -> dict[str, str]:
    return {
        "MLPULSE_AMQP_URL": amqp_url,
        "MLPULSE_REDIS_URL": redis_url,
        "MLPULSE_LOG_DIR": str(root / "logs"),
        "MLPULSE_DATA_DIR": str(root / "data"),
        "MLPULSE_MODELS_DIR": str(root / "models"),
    }


@pytest.fixture
async def aredis() -> Any:
    """An asyncio client on the test DB, flushed before and after the test."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(f"redis://localhost:6379/{REDIS_DB}")
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


@pytest.fixture
def env(tmp_path: Path, amqp_url: str) -> Env:
    redis_url = f"redis://localhost:6379/{REDIS_DB}"
    r = redis.Redis.from_url(redis_url)
    r.flushdb()
    r.close()
    _delete_queues(amqp_url)
    return Env(tmp_path, amqp_url, redis_url, _role_vars(tmp_path, amqp_url, redis_url))


def _session_node(root: Path, make: Callable[[Path], Any]) -> Iterator[Any]:
    """Start a private node under `root`, hand it out, and remove it with its files."""
    try:
        node = make(root)
    except RuntimeError as exc:  # its server is not installed here
        pytest.skip(str(exc))
    node.start()
    try:
        yield node
    finally:
        node.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def rabbit_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitNode]:
    """A RabbitMQ node of the session's own, which tests may stop and kill -9."""
    yield from _session_node(tmp_path_factory.mktemp("rabbit"), RabbitNode)


@pytest.fixture(scope="session")
def redis_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisNode]:
    """A Redis of the session's own with an AOF fsynced on every write."""
    yield from _session_node(tmp_path_factory.mktemp("redis"), RedisNode)


@pytest.fixture
def private_env(tmp_path: Path, rabbit_node: RabbitNode, redis_node: RedisNode) -> Env:
    """An `Env` on the private nodes, up again and empty whatever the last test did to them.

    A module or package that injects faults into the services overrides `env` with it, so
    `spawn` and the other fixtures follow.
    """
    rabbit_node.ensure_up()
    redis_node.ensure_up()
    client = redis_node.client()
    client.flushall()
    client.close()
    amqp_url, redis_url = rabbit_node.url(), redis_node.url()
    _delete_queues(amqp_url)
    return Env(tmp_path, amqp_url, redis_url, _role_vars(tmp_path, amqp_url, redis_url))


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
        # `mlpulse up` starts its children in sessions of their own (so that Ctrl-C reaches
        # the supervisor alone): they go by name, not with the role's process group.
        try:
            children = psutil.Process(role.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        with contextlib.suppress(ProcessLookupError):
            os.killpg(role.proc.pid, signal.SIGKILL)
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        role.proc.wait(10)
        role.close()


# The queues each pipeline role consumes; a role not listed consumes none.
ROLE_QUEUES = {"model": ("features",), "metric": ("y_true", "y_pred")}


class Readiness:
    """What the broker and Redis say about a role: its consumers and its heartbeat."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.conn = pika.BlockingConnection(pika.URLParameters(env.amqp_url))
        self.channel = self.conn.channel()
        self.redis = env.redis()

    def consumers(self, queue: str) -> int:
        """Consumers the broker counts on a queue (0 while it does not exist yet)."""
        try:
            ok = self.channel.queue_declare(queue, durable=True, passive=True)
        except pika.exceptions.ChannelClosedByBroker:
            self.channel = self.conn.channel()
            return 0
        return int(ok.method.consumer_count)

    def beating_pid(self, role: str) -> int | None:
        """The pid in this host's heartbeat for `role`, if there is one."""
        raw = self.redis.get(heartbeat_key(role))
        return None if raw is None else int(json.loads(raw)["pid"])

    def close(self) -> None:
        self.redis.close()
        with contextlib.suppress(pika.exceptions.AMQPError):
            self.conn.close()


def wait_ready(env: Env, role: Role, consumers: int = 1, timeout: float = 90.0) -> None:
    """Wait until `role` beats in Redis under its own pid and the broker counts `consumers`
    consumers on every queue it reads.

    A role writes its first beat as it starts, before it consumes (the model role may still
    be training), so the beat alone says only that the process is up.
    """
    name = role.args[0]
    queues = ROLE_QUEUES.get(name, ())
    view = Readiness(env)

    def ready() -> bool:
        code = role.proc.poll()
        if code is not None:
            raise AssertionError(f"{name} exited with {code} before it was ready:\n"
                                 f"{role.output()}")
        return (view.beating_pid(name) == role.proc.pid
                and all(view.consumers(q) >= consumers for q in queues))

    try:
        wait_until(ready, timeout, f"{name} to beat and consume {', '.join(queues) or '-'}")
    finally:
        view.close()


def wait_released(env: Env, name: str, timeout: float = 30.0) -> None:
    """Wait until the broker counts no consumer on the queues of role `name` (after a kill,
    once it has seen the connection drop)."""
    view = Readiness(env)
    try:
        wait_until(lambda: not any(view.consumers(q) for q in ROLE_QUEUES.get(name, ())),
                   timeout, f"the broker to drop {name}'s consumers")
    finally:
        view.close()


@pytest.fixture
def start_role(env: Env, spawn: Callable[..., Role]) -> Callable[..., Role]:
    """Start a pipeline role and wait until it is ready by the broker's and Redis's account."""

    def start(*args: str, extra: dict[str, str] | None = None, timeout: float = 90.0) -> Role:
        role = spawn(*args, extra=extra, ready=None)
        wait_ready(env, role, timeout=timeout)
        return role

    return start


def assert_logged_once(env: Env, total: int) -> None:
    """`total` rows, no id twice, and Redis counts exactly what the log holds."""
    ids = [r["id"] for r in env.rows()]
    assert len(ids) == len(set(ids)) == total
    client = env.redis()
    try:
        assert int(client.hget("mlpulse:agg", "count") or 0) == total
    finally:
        client.close()


def recovery_after(env: Env, moment: float) -> float:
    """Seconds from `moment` (a fault) until the log held a row of an event sent after it."""
    logged = [float(r["logged_at"]) for r in env.rows()
              if r["sent_at"] and float(r["sent_at"]) > moment]
    assert logged, f"no event sent after {moment} reached the log"
    return min(logged) - moment


def produce(env: Env, *args: str, extra: dict[str, str] | None = None) -> str:
    """Run the producer to completion and return its output."""
    full = {**os.environ, **env.vars, **(extra or {})}
    done = subprocess.run([sys.executable, "-m", "mlpulse", "produce", *args], env=full,
                          cwd=env.root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stderr


@contextlib.contextmanager
def producing(env: Env, total: int, rate: int, batch: int = 20) -> Iterator[None]:
    """`mlpulse produce` in the background while the block injects a fault; it must then
    finish by itself with exit 0."""
    producer = subprocess.Popen(
        [sys.executable, "-m", "mlpulse", "produce", "--count", str(total), "--batch",
         str(batch), "--rate", str(rate)],
        env={**os.environ, **env.vars}, cwd=env.root, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    try:
        yield
        assert producer.wait(180) == 0, producer.stderr.read() if producer.stderr else ""
    finally:
        if producer.poll() is None:
            producer.kill()
            producer.wait()
        if producer.stderr:
            producer.stderr.close()
