"""Problems a role reports travel in its heartbeat to `mlpulse doctor` and /healthz."""

from __future__ import annotations

import asyncio
import json

from mlpulse import health
from mlpulse.config import Settings
from tests.conftest import Env


def settings_of(env: Env) -> Settings:
    return Settings(amqp_url=env.amqp_url, redis_url=env.redis_url)  # type: ignore[arg-type]


async def test_a_reported_problem_rides_the_heartbeat_until_cleared(env: Env) -> None:
    settings = settings_of(env)
    stop = asyncio.Event()
    health.report_problem("metric log", "cannot write logs/metric_log.csv: disk full")
    beat = asyncio.create_task(health.beat_forever(settings, "metric", stop))
    try:
        client = env.redis()
        key = health.heartbeat_key("metric")
        for _ in range(100):
            raw = client.get(key)
            if raw is not None:
                break
            await asyncio.sleep(0.05)
        assert json.loads(raw)["problems"] == ["cannot write logs/metric_log.csv: disk full"]
        ok, detail = await asyncio.to_thread(health.role_is_alive, settings, "metric")
        assert not ok
        assert "disk full" in detail
    finally:
        health.clear_problem("metric log")
        stop.set()
        await beat
    assert health.problems() == []
