"""The actualizer: watches the live aggregates in Redis and pushes only what changed."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson

from mlpulse.gateway.alerts_view import AlertsView
from mlpulse.gateway.drift_view import DriftView
from mlpulse.gateway.hub import Hub
from mlpulse.keys import VERSION
from mlpulse.store import (
    Redis,
    quantile_from_bins,
    read_by_version,
    read_histogram,
    read_recent,
    read_seconds,
    read_summary,
)
from mlpulse.waiting import every

log = logging.getLogger(__name__)

SERIES_SECONDS = 120
DRIFT_REFRESH = 5.0
RATE_SECONDS = 5


async def build_snapshot(redis: Redis, now: float | None = None) -> dict[str, Any]:
    """Everything the dashboard shows, read from Redis."""
    now = time.time() if now is None else now
    summary = await read_summary(redis)
    width, counts = await read_histogram(redis)
    series = await read_seconds(redis, now, SERIES_SECONDS)
    # The current second is still filling: the rate is over the last complete seconds.
    done = series[-RATE_SECONDS - 1:-1]
    summary["events_per_s"] = sum(s["count"] for s in done) / RATE_SECONDS
    summary["p50"] = quantile_from_bins(width, counts, 0.5)
    summary["p95"] = quantile_from_bins(width, counts, 0.95)
    return {
        "summary": summary,
        "histogram": {"bin_width": width, "counts": counts},
        "series": series,
        "recent": await read_recent(redis),
        "by_version": await read_by_version(redis),
    }


def envelope(kind: str, data: dict[str, Any]) -> str:
    """A message for sockets, serialised once."""
    return orjson.dumps({"type": kind, "ts": time.time(), "data": data}).decode()


class Actualizer:
    """Polls a version key cheaply; rebuilds and pushes a diff only when something moved."""

    def __init__(self, redis: Redis, hub: Hub, *, poll: float = 0.25,
                 min_interval: float = 1.0, refresh: float = 2.0,
                 drift: DriftView | None = None, drift_refresh: float = DRIFT_REFRESH,
                 alerts: AlertsView | None = None) -> None:
        self.redis = redis
        self.hub = hub
        # Drift is read from its buckets on its own, slower clock: it moves with time and
        # scoring, not with joins, and costs more to build.
        self.drift = drift
        self.drift_refresh = drift_refresh
        self.drift_at = 0.0
        # Alerts change on the evaluator's clock: read with drift, every few seconds.
        self.alerts = alerts
        self.poll = poll
        self.min_interval = min_interval
        self.refresh = refresh
        self.snapshot: dict[str, Any] = {}
        self.version: Any = None
        self.built_at = 0.0

    def full(self) -> str:
        """The whole current snapshot, for a client that has just connected."""
        return envelope("snapshot", {**self.snapshot, "full": True})

    async def step(self) -> dict[str, Any]:
        """Rebuild if the version moved (or the time window did); push and return the diff."""
        now = time.time()
        version = await self.redis.get(VERSION)
        stale = now - self.built_at >= self.refresh
        drift_due = self.drift is not None and now - self.drift_at >= self.drift_refresh
        moved = version != self.version
        quiet = (not moved and not stale) or now - self.built_at < self.min_interval
        if quiet and not drift_due:
            return {}
        if quiet:
            fresh = dict(self.snapshot)
        else:
            fresh = await build_snapshot(self.redis, now)
            for kept in ("drift", "alerts"):
                if kept in self.snapshot:
                    fresh[kept] = self.snapshot[kept]
        if drift_due and self.drift is not None:
            self.drift_at = now
            drift = await self._drift(now)
            if drift is not None:
                fresh["drift"] = drift
            if self.alerts is not None:
                fresh["alerts"] = await self.alerts.live()
        changed = {k: v for k, v in fresh.items() if self.snapshot.get(k) != v}
        if moved and not quiet:
            changed["version"] = int(version or 0)
        if not quiet:
            self.version, self.built_at = version, now
        self.snapshot = fresh
        if changed:
            self.hub.broadcast(envelope("snapshot", changed))
        return changed

    async def _drift(self, now: float) -> dict[str, Any] | None:
        """The drift section, or None (the last one stays) if it cannot be built now: the
        rest of the dashboard does not wait for it."""
        assert self.drift is not None
        try:
            return await self.drift.live(now)
        except Exception as exc:  # a Redis timeout, a profile that is not what it claims
            log.warning("drift not refreshed: %r", exc)
            return None

    async def run(self, stop: asyncio.Event) -> None:
        """Keep the snapshot fresh until `stop`; Redis hiccups are retried."""
        await every(self.poll, stop, self.step, "actualizer")
