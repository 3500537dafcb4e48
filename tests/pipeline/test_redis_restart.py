"""Redis that persists (AOF) may die and come back: the log still has every id once."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import Env, Role, assert_logged_once, free_port, produce, wait_until

REDIS_SERVER = shutil.which("redis-server")


class PrivateRedis:
    """A redis-server of the test's own, with every write fsynced to its AOF."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert REDIS_SERVER is not None
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        wait_until(lambda: _pings(client), timeout=20, what="redis to answer")
        client.close()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.exceptions.RedisError:
        return False


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")
    (tmp_path / "redis").mkdir()
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    yield server
    if server.proc and server.proc.poll() is None:
        server.kill()


def test_kill_9_of_a_persisting_redis_loses_and_repeats_nothing(
        env: Env, spawn: Callable[..., Role], private_redis: PrivateRedis) -> None:
    env.redis_url = f"redis://127.0.0.1:{private_redis.port}/0"
    env.vars["MLPULSE_REDIS_URL"] = env.redis_url
    spawn("model")
    metric = spawn("metric")
    total = 4000
    producer = subprocess.Popen(
        [*_mlpulse(), "produce", "--count", str(total), "--batch", "20", "--rate", "2000"],
        env=_environ(env), cwd=env.root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_until(lambda: env.row_count() >= 1000, what="1000 rows before the kill")
    private_redis.kill()
    at_kill = env.row_count()
    assert at_kill < total
    metric.wait_for("unavailable|retrying", timeout=30)
    private_redis.start()
    assert producer.wait(120) == 0
    producer.stderr.close()  # type: ignore[union-attr]
    wait_until(lambda: env.row_count() >= total, timeout=90, what=f"{total} rows")
    assert_logged_once(env, total)
    # The pipeline carries on as before.
    produce(env, "--count", "1", "--rate", "0")
    wait_until(lambda: env.row_count() == total + 1, what="one more row")
    assert len({r["id"] for r in env.rows()}) == total + 1


def _mlpulse() -> list[str]:
    return [sys.executable, "-m", "mlpulse"]


def _environ(env: Env) -> dict[str, str]:
    return {**os.environ, **env.vars}
