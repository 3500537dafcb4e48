"""Redis edge: the client, join state, live aggregates and the joined-rows outbox."""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from typing import Any

import orjson
import redis.asyncio as aioredis
import redis.exceptions

from mlpulse.config import Settings
from mlpulse.drift import lifetimes as drift_lifetimes
from mlpulse.errors import Backpressure, ServiceUnavailable
from mlpulse.keys import (
    AGG,
    BY_VERSION,
    DONE,
    DRIFT,
    HIST,
    HIST_META,
    JOIN_KEYS,
    RATES,
    RATES_TTL,
    RECENT,
    SECOND,
    SWEEP_KEYS,
    VERSION,
)

# How far the CSV sink may fall behind, in outbox entries (one per join step) and in
# bytes, before joins wait: a disk that stays full holds new messages in RabbitMQ rather
# than in Redis's memory.
OUTBOX_MAX = 1000
OUTBOX_MAX_BYTES = 64 * 1024 * 1024
# Redis refusing writes for a while (a failed background save, maxmemory, a replica, a
# long script): the same work succeeds later.
_REFUSALS = ("MISCONF", "OOM", "READONLY", "BUSY")


def refusal(exc: redis.exceptions.ResponseError) -> Backpressure | None:
    """A `Backpressure` for a write Redis refuses for now; None for any other error."""
    if str(exc).startswith(_REFUSALS):
        return Backpressure(f"Redis refuses writes for now: {exc}")
    return None

Redis = aioredis.Redis


def load_script(name: str) -> str:
    """A Lua script shipped with the package."""
    return resources.files("mlpulse").joinpath(name).read_text()


async def connect_redis(settings: Settings) -> Redis:
    """A client with the server's answer checked once, or one clear error."""
    url = str(settings.redis_url)
    # A bounded pool where callers wait for a connection: a burst of work (thousands of
    # sockets connecting at once) queues up instead of failing with "too many connections".
    # A reply that takes 5 s means Redis is stalled or gone: the call fails as transient
    # and is tried again, rather than holding a batch (or a stop) forever.
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=64, timeout=20, socket_connect_timeout=5, socket_timeout=5,
        health_check_interval=30)
    client: Redis = aioredis.Redis.from_pool(pool)  # the client owns and closes the pool
    try:
        await client.ping()
    except (OSError, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        await client.aclose()
        raise ServiceUnavailable(
            f"Redis is not reachable at {url.split('@')[-1]} ({exc.__class__.__name__}). "
            "Start it with `redis-server --daemonize yes`, or set MLPULSE_REDIS_URL."
        ) from None
    return client


@dataclass(slots=True)
class JoinOutcome:
    """What one join step did."""

    joined: int
    duplicates: int
    conflicts: int


class JoinStore:
    """The joiner's state in Redis, changed only by atomic scripts."""

    def __init__(self, client: Redis, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self._join = client.register_script(load_script("join.lua"))
        self._sweep = client.register_script(load_script("sweep.lua"))
        self.drift_lifetimes = drift_lifetimes(settings)

    async def join(self, halves_json: bytes, now: float) -> JoinOutcome:
        """Store or complete each half of a JSON list `[side, id, value, version, meta]`.

        Raises `Backpressure`, having changed nothing, while the outbox is full."""
        s = self.settings
        try:
            joined, dup, conflict = await self._join(
                keys=JOIN_KEYS,
                args=[DONE, SECOND, repr(now), repr(s.join_ttl), repr(s.done_ttl),
                      repr(s.hist_bin_width), s.hist_bins, halves_json, OUTBOX_MAX,
                      OUTBOX_MAX_BYTES, DRIFT, *self.drift_lifetimes, RATES, RATES_TTL],
            )
        except redis.exceptions.ResponseError as exc:
            waiting = refusal(exc)
            if waiting is None:
                raise
            raise waiting from exc
        if joined < 0:
            raise Backpressure(f"the metric log is over {OUTBOX_MAX} join steps behind; "
                               "holding new messages until it catches up")
        return JoinOutcome(int(joined), int(dup), int(conflict))

    async def sweep(self, now: float, limit: int = 5000) -> int:
        """Drop pending halves past their deadline, counting them as unmatched."""
        try:
            return int(await self._sweep(keys=SWEEP_KEYS,
                                         args=[repr(now), limit, RATES, RATES_TTL]))
        except redis.exceptions.ResponseError as exc:
            waiting = refusal(exc)
            if waiting is None:
                raise
            raise waiting from exc


async def count_rejected(client: Redis, codes: Counter[str]) -> None:
    """Count dead-lettered messages, in all and by reason code."""
    if not codes:
        return
    pipe = client.pipeline(transaction=True)
    pipe.hincrby(AGG, "rejected", sum(codes.values()))
    minute = f"{RATES}{int(time.time() // 60) * 60}"
    pipe.hincrby(minute, "rejected", sum(codes.values()))
    pipe.expire(minute, RATES_TTL)
    for code, n in codes.items():
        pipe.hincrby(AGG, f"rejected:{code}", n)
    pipe.incr(VERSION)
    await pipe.execute()


def summarize(agg: dict[Any, Any]) -> dict[str, Any]:
    """Turn the raw aggregate hash into the numbers people read."""
    raw = {k.decode(): v.decode() for k, v in agg.items()}
    count = int(raw.get("count", 0))
    sum_abs = float(raw.get("sum_abs", 0))
    sum_sq = float(raw.get("sum_sq", 0))
    out: dict[str, Any] = {
        "count": count,
        "mae": sum_abs / count if count else None,
        "rmse": math.sqrt(sum_sq / count) if count else None,
        "max_abs_error": float(raw["max_abs"]) if "max_abs" in raw else None,
        "unmatched_y_true": int(raw.get("unmatched_t", 0)),
        "unmatched_y_pred": int(raw.get("unmatched_p", 0)),
        "duplicates": int(raw.get("duplicates", 0)),
        "conflicts": int(raw.get("conflicts", 0)),
        "rejected": int(raw.get("rejected", 0)),
    }
    out["unmatched"] = out["unmatched_y_true"] + out["unmatched_y_pred"]
    out["rejected_by_reason"] = {
        k.split(":", 1)[1]: int(v) for k, v in raw.items() if k.startswith("rejected:")
    }
    return out


async def read_summary(client: Redis) -> dict[str, Any]:
    """Counters, MAE and RMSE of everything joined so far."""
    return summarize(await client.hgetall(AGG))


async def read_histogram(client: Redis) -> tuple[float, list[int]]:
    """Bin width and counts; the last bin holds everything past the others."""
    meta, hist = await client.hgetall(HIST_META), await client.hgetall(HIST)
    if not meta:
        return 0.0, []
    width, nbins = float(meta[b"width"]), int(meta[b"bins"])
    counts = [0] * (nbins + 1)
    for k, v in hist.items():
        counts[min(int(k), nbins)] += int(v)
    return width, counts


async def read_recent(client: Redis, limit: int = 20) -> list[dict[str, Any]]:
    """The latest joined predictions, newest first."""
    out = []
    for raw in await client.lrange(RECENT, 0, limit - 1):
        rid, t, p, version, at = orjson.loads(raw)
        out.append({"id": rid, "y_true": float(t), "y_pred": float(p),
                    "absolute_error": abs(float(t) - float(p)), "model_version": version,
                    "joined_at": float(at)})
    return out


async def read_seconds(client: Redis, now: float, seconds: int) -> list[dict[str, Any]]:
    """Per-second windows for the last `seconds` seconds, oldest first (gaps as zeros)."""
    start = int(now) - seconds + 1
    pipe = client.pipeline(transaction=False)
    for sec in range(start, int(now) + 1):
        pipe.hgetall(f"{SECOND}{sec}")
    out = []
    for sec, raw in zip(range(start, int(now) + 1), await pipe.execute(), strict=True):
        n = int(raw.get(b"count", 0))
        sum_abs = float(raw.get(b"sum_abs", 0))
        out.append({"t": sec, "count": n, "mae": sum_abs / n if n else None})
    return out


async def read_by_version(client: Redis) -> dict[str, dict[str, Any]]:
    """Count, MAE and RMSE for each model version."""
    stored: dict[Any, Any] = await client.hgetall(BY_VERSION)
    raw = {k.decode(): float(v) for k, v in stored.items()}
    out: dict[str, dict[str, Any]] = {}
    for key, value in raw.items():
        version, _, field = key.rpartition("|")
        out.setdefault(version, {})[field] = value
    for version, v in out.items():
        n = v.get("count", 0)
        out[version] = {"count": int(n), "mae": v.get("sum_abs", 0) / n if n else None,
                        "rmse": math.sqrt(v.get("sum_sq", 0) / n) if n else None}
    return out


def quantile_from_bins(width: float, counts: list[int], q: float) -> float | None:
    """Approximate quantile of the binned errors (linear inside a bin)."""
    total = sum(counts)
    if not total:
        return None
    target = q * total
    seen = 0
    for i, c in enumerate(counts):
        if c and seen + c >= target:
            return (i + (target - seen) / c) * width
        seen += c
    return len(counts) * width
