"""Users' own messages reach their history in Redis, also across an outage and at a stop."""

from __future__ import annotations

import asyncio

import orjson
import redis.asyncio

from mlpulse import keys
from mlpulse.config import Settings
from mlpulse.gateway.hub import Hub
from mlpulse.gateway.relay import Relay, read_history
from tests.conftest import Env


def relay_of(env: Env, client: redis.asyncio.Redis) -> Relay:
    settings = Settings(amqp_url=env.amqp_url, redis_url=env.redis_url)  # type: ignore[arg-type]
    return Relay(settings, Hub(8), client)


def message(user: str, n: int) -> tuple[str, str, float]:
    return user, orjson.dumps({"type": "task", "ts": float(n), "data": {"n": n}}).decode(), n


async def test_history_unsaved_at_a_stop_is_stored_before_the_writer_returns(env: Env) -> None:
    client = redis.asyncio.Redis.from_url(env.redis_url)
    relay = relay_of(env, client)
    stop = asyncio.Event()
    stop.set()  # the writer is stopped before it ever ran: what it holds must still land
    relay.unsaved = [message("alice", n) for n in range(5)]
    await asyncio.wait_for(relay.keep_history(stop), 10)
    assert [orjson.loads(m)["data"]["n"] for m in await read_history(client, "alice")] == [
        0, 1, 2, 3, 4]
    assert relay.unsaved == []
    await client.aclose()


async def test_history_waits_out_a_redis_outage(env: Env) -> None:
    down = redis.asyncio.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    relay = relay_of(env, down)
    relay.unsaved = [message("bob", n) for n in range(3)]
    assert not await relay._store_unsaved()  # kept, not dropped
    assert len(relay.unsaved) == 3
    up = redis.asyncio.Redis.from_url(env.redis_url)
    relay.store_history = up.register_script(relay.store_history.script)
    assert await relay._store_unsaved()
    assert await up.zcard(keys.history("bob")) == 3
    await down.aclose()
    await up.aclose()
