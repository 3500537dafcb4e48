"""The metric role: joiner, CSV sink, TTL sweeper and live updates, in one process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel

from mlpulse import metrics
from mlpulse.broker import TRANSIENT_ERRORS, BatchConsumer, consume_until_stopped
from mlpulse.config import Settings
from mlpulse.pipeline.joiner import Joiner
from mlpulse.pipeline.sink import CsvSink
from mlpulse.store import (
    PREFIX,
    VERSION,
    JoinStore,
    Redis,
    connect_redis,
    read_histogram,
    read_summary,
)
from mlpulse.wire import EVENTS_EXCHANGE, Y_PRED, Y_TRUE, encode

log = logging.getLogger(__name__)

SWEEP_SECONDS = 1.0


async def _every(seconds: float, stop: asyncio.Event, step: Callable[[], Awaitable[None]],
                 what: str) -> None:
    """Run `step` every `seconds` until `stop`; a transient failure is logged, not fatal."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
        if stop.is_set():
            return
        try:
            await step()
        except TRANSIENT_ERRORS as exc:
            log.warning("%s failed, will retry: %r", what, exc)


class LiveUpdates:
    """Publishes a compact summary to `mlpulse.events` when the aggregates have changed."""

    def __init__(self, channel: AbstractChannel | None, redis: Redis) -> None:
        self.channel = channel
        self.redis = redis
        self.seen: Any = None

    async def publish_if_changed(self) -> None:
        """One read of the version key; a summary only when it moved."""
        version = await self.redis.get(VERSION)
        channel = self.channel
        if version is None or version == self.seen or channel is None or channel.is_closed:
            return
        summary = await read_summary(self.redis)
        width, counts = await read_histogram(self.redis)
        summary["histogram"] = {"bin_width": width, "counts": counts}
        summary["version"] = int(version)
        envelope = {"type": "metrics", "ts": time.time(), "data": summary}
        try:
            exchange = await channel.get_exchange(EVENTS_EXCHANGE)
            await exchange.publish(
                aio_pika.Message(encode(envelope), content_type="application/json"),
                routing_key="broadcast", mandatory=False,
            )
        except Exception as exc:
            # A live update is best effort and the next one supersedes it; the client
            # library raises a bare Exception when the channel closes mid-call.
            log.warning("live update not sent (%r); the next one follows", exc)
            return
        self.seen = version


def _failed(task: asyncio.Task[None]) -> bool:
    return not task.cancelled() and task.exception() is not None


async def export_join_state(redis: Redis) -> None:
    """Copy the join state's size and the shared counts into this process's metrics."""
    pipe = redis.pipeline(transaction=False)
    pipe.hlen(f"{PREFIX}pending:t")
    pipe.hlen(f"{PREFIX}pending:p")
    pending_t, pending_p = await pipe.execute()
    metrics.JOIN_PENDING.labels("y_true").set(pending_t)
    metrics.JOIN_PENDING.labels("y_pred").set(pending_p)
    summary = await read_summary(redis)
    metrics.JOINED.set(summary["count"])
    metrics.UNMATCHED.set(summary["unmatched"])
    metrics.DUPLICATES.set(summary["duplicates"])
    metrics.REJECTED.set(summary["rejected"])
    if summary["mae"] is not None:
        metrics.MAE.set(summary["mae"])
        metrics.RMSE.set(summary["rmse"])


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Run the metric role until `stop` is set, then drain the outbox into the log.

    The sink, the sweeper and the live updates live as long as the process; only the
    consumer is rebuilt when RabbitMQ goes away and comes back.
    """
    redis = await connect_redis(settings)
    finish = asyncio.Event()
    joiner = Joiner(None, redis, settings)
    live = LiveUpdates(None, redis)
    sink = CsvSink(settings.metric_log, redis)
    store = JoinStore(redis, settings)

    async def sweep() -> None:
        expired = await store.sweep(time.time())
        if expired:
            log.info("%d pending halves expired unmatched", expired)
        await export_join_state(redis)

    async def on_channel(channel: AbstractChannel) -> BatchConsumer:
        joiner.channel = live.channel = channel
        return BatchConsumer(channel, [Y_TRUE, Y_PRED], joiner.handle, settings=settings)

    background = [
        asyncio.create_task(sink.run(finish), name="sink"),
        asyncio.create_task(_every(SWEEP_SECONDS, stop, sweep, "sweep"), name="sweep"),
        asyncio.create_task(_every(settings.publish_interval, stop, live.publish_if_changed,
                                   "live update"), name="live"),
    ]
    for task in background:
        # A background task that fails stops the role instead of leaving it half-alive.
        task.add_done_callback(lambda t: stop.set() if _failed(t) else None)
    try:
        # The consumer returns once the stop is set and its batches are stored and acked;
        # only then may the sink drain the outbox and finish, so nothing joined is left out.
        await consume_until_stopped(settings, "metric", stop, on_channel)
        finish.set()
        await asyncio.gather(*background)
    finally:
        finish.set()
        stop.set()
        await asyncio.gather(*background, return_exceptions=True)
        await redis.aclose()
