"""The join script on its own: any text in a version survives, and old state still reads."""

from __future__ import annotations

import time

import orjson
import redis.asyncio

from mlpulse import keys
from mlpulse.config import Settings
from mlpulse.store import JoinStore
from tests.conftest import Env


async def test_a_version_with_line_breaks_is_kept_whole_and_joins(env: Env) -> None:
    client = redis.asyncio.Redis.from_url(env.redis_url)
    store = JoinStore(client, Settings(amqp_url=env.amqp_url, redis_url=env.redis_url))  # type: ignore[arg-type]
    now = time.time()
    version = "v1\nx\n\n"  # the wire refuses it; the script must not depend on that
    await store.join(orjson.dumps([["p", "a", "2.0", version, "1.5"]]), now)
    # A half stored by the code before this one has the same layout.
    await client.hset(keys.pending("p"), "b", "4.0\nv0\n")
    outcome = await store.join(orjson.dumps([["t", "a", "1.0", "", "1.25"],
                                             ["t", "b", "3.0", "", ""]]), now)
    assert (outcome.joined, outcome.duplicates, outcome.conflicts) == (2, 0, 0)
    entries = await client.xrange(keys.JOINED)
    rows = [r for _, fields in entries for r in orjson.loads(fields[b"rows"])]
    assert rows == [["a", "1.0", "2.0", version, "1.25", "1.5"], ["b", "3.0", "4.0", "v0", "", ""]]
    again = await store.join(orjson.dumps([["p", "a", "2.0", version, "1.5"]]), now)
    assert again.duplicates == 1
    await client.aclose()
