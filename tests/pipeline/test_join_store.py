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


def _store(env: Env, client: redis.asyncio.Redis, done_ttl: float) -> JoinStore:
    return JoinStore(client, Settings(amqp_url=env.amqp_url, redis_url=env.redis_url,  # type: ignore[arg-type]
                                      done_ttl=done_ttl))


def _pairs(ids: range, t: str = "1.0", p: str = "2.0") -> bytes:
    return orjson.dumps([h for i in ids for h in (["t", f"id-{i}", t, "", ""],
                                                   ["p", f"id-{i}", p, "v1", ""])])


async def test_done_markers_last_the_done_ttl_and_at_most_twice_that(env: Env) -> None:
    client = redis.asyncio.Redis.from_url(env.redis_url)
    store = _store(env, client, done_ttl=100)  # generations of 100 s
    start = 1_000_000_000.0  # the start of a generation
    assert (await store.join(_pairs(range(10)), start + 99)).joined == 10
    # A late duplicate within the done TTL is caught, a changed value is a conflict.
    late = await store.join(_pairs(range(5)), start + 198)
    assert (late.joined, late.duplicates, late.conflicts) == (0, 10, 0)
    changed = await store.join(_pairs(range(5, 6), p="9.0"), start + 199)
    assert (changed.joined, changed.duplicates, changed.conflicts) == (0, 1, 1)
    # Once the next generation has passed, no lookup reads the markers any more (100 to
    # 200 s after they were written), and Redis expires their hashes then.
    forgotten = await store.join(_pairs(range(6, 7)), start + 200)
    assert (forgotten.joined, forgotten.duplicates) == (1, 0)
    ttls = {k.decode(): await client.ttl(k) async for k in client.scan_iter(keys.DONE + "*")}
    assert ttls
    assert all(0 < ttl <= 200 for ttl in ttls.values()), ttls
    await client.aclose()


async def test_done_markers_are_compact_hashes_and_a_burst_grows_the_shards(env: Env) -> None:
    client = redis.asyncio.Redis.from_url(env.redis_url)
    store = _store(env, client, done_ttl=3600)
    now = 1_000_000_800.0
    # The first generation knows nothing of the rate: it starts with 64 hashes, and grows
    # by epochs of eight times the shards as it fills.
    for first in range(0, 20_000, 1000):
        assert (await store.join(_pairs(range(first, first + 1000)), now)).joined == 1000

    async def meta() -> dict[str, str]:
        return {k.decode(): v.decode()
                for k, v in (await client.hgetall(keys.DONE + "meta")).items()}

    gen = int(now // 3600)
    assert (await meta())[f"n:{gen}"] == "20000"
    epochs = [int(n) for n in (await meta())[f"s:{gen}"].split()]
    assert epochs == [64, 512], epochs
    # Every id is found again whichever epoch holds it.
    again = await store.join(_pairs(range(0, 20_000, 7)), now + 1)
    assert (again.joined, again.duplicates) == (0, 2 * len(range(0, 20_000, 7)))
    # The hashes are small enough for Redis's listpack encoding.
    encodings = {await client.object("encoding", k)
                 async for k in client.scan_iter(f"{keys.DONE}{gen}:*")}
    assert encodings == {b"listpack"}, encodings
    # The next generation sizes itself from this one: a single epoch, no growth.
    await store.join(_pairs(range(100_000, 101_000)), now + 3600)
    assert (await meta())[f"s:{gen + 1}"] == str(-(-20_000 // 64))
    await client.aclose()
