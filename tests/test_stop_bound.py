"""A stop finishes within MLPULSE_STOP_TIMEOUT, even when Redis has stopped answering."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pika
import pytest
import redis

from mlpulse.health import heartbeat_key
from tests.conftest import Env, Role, free_port, wait_until

STOP_TIMEOUT = 4.0


@pytest.fixture
def frozen_redis(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A private Redis of the test's own, which the test can freeze with SIGSTOP."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("needs redis-server")
    port = free_port()
    proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)

    def answers() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    try:
        wait_until(answers, timeout=20, what="the private Redis")
        yield url, proc
    finally:
        client.close()
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait(10)


CONSUMES = {"model": "features", "metric": "y_true"}


def is_ready(env: Env, role: str, redis_url: str, http_port: str) -> bool:
    """Consuming its queue (model, metric), answering /healthz (gateway), or beating."""
    if role == "gateway":
        try:
            return httpx.get(f"http://127.0.0.1:{http_port}/healthz").status_code == 200
        except httpx.HTTPError:
            return False
    if role in CONSUMES:
        ch = env.channel()
        try:
            found = ch.queue_declare(CONSUMES[role], durable=True, passive=True)
        except pika.exceptions.ChannelClosedByBroker:
            return False  # not declared yet
        finally:
            ch.connection.close()
        return bool(found.method.consumer_count)
    client = redis.Redis.from_url(redis_url)
    try:
        return bool(client.exists(heartbeat_key(role)))
    finally:
        client.close()


@pytest.mark.parametrize("role", ["model", "metric", "plot", "gateway"])
def test_a_role_stops_in_time_while_redis_hangs(
        env: Env, spawn: Callable[..., Role], frozen_redis: tuple[str, subprocess.Popen[bytes]],
        role: str) -> None:
    url, server = frozen_redis
    extra = {"MLPULSE_REDIS_URL": url, "MLPULSE_STOP_TIMEOUT": str(STOP_TIMEOUT),
             "MLPULSE_SECRET": "stop-test-secret-0123456789-abcdefghijklmnop",
             "MLPULSE_HTTP_PORT": str(free_port())}
    started = spawn(role, extra=extra, ready=None)
    wait_until(lambda: is_ready(env, role, url, extra["MLPULSE_HTTP_PORT"]), timeout=90,
               what=f"{role} ready")
    server.send_signal(signal.SIGSTOP)  # Redis stops answering, its port stays open
    began = time.monotonic()
    started.proc.send_signal(signal.SIGTERM)
    started.proc.wait(STOP_TIMEOUT + 10)
    took = time.monotonic() - began
    assert took <= STOP_TIMEOUT + 1.5, f"{role} took {took:.1f}s:\n{started.output()}"
    # Ended by itself (0) or by the bound's own exit (1), never by a signal.
    assert started.proc.returncode in (0, 1), started.output()
