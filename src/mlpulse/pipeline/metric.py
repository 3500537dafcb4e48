"""The metric role: joiner, CSV sink (with the error-change detector) and TTL sweeper.

People see the aggregates it keeps through the gateway, which reads them from Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from aio_pika.abc import AbstractChannel

from mlpulse import keys, telemetry
from mlpulse.broker import BatchConsumer, consume_until_stopped
from mlpulse.config import Settings
from mlpulse.pipeline.archive import LogPolicy
from mlpulse.pipeline.changes import ErrorChanges
from mlpulse.pipeline.heap import freeze_startup
from mlpulse.pipeline.joiner import Joiner
from mlpulse.pipeline.sink import CsvSink
from mlpulse.store import JoinStore, Redis, connect_redis, read_summary
from mlpulse.waiting import every
from mlpulse.wire import Y_PRED, Y_TRUE

log = logging.getLogger(__name__)

SWEEP_SECONDS = 1.0


async def export_join_state(redis: Redis) -> None:
    """Copy the join state's size and the shared counts into this process's metrics."""
    pipe = redis.pipeline(transaction=False)
    pipe.hlen(keys.pending("t"))
    pipe.hlen(keys.pending("p"))
    pending_t, pending_p = await pipe.execute()
    telemetry.JOIN_PENDING.labels("y_true").set(pending_t)
    telemetry.JOIN_PENDING.labels("y_pred").set(pending_p)
    summary = await read_summary(redis)
    telemetry.JOINED.set(summary["count"])
    telemetry.UNMATCHED.set(summary["unmatched"])
    telemetry.DUPLICATES.set(summary["duplicates"])
    telemetry.REJECTED.set(summary["rejected"])
    if summary["mae"] is not None:
        telemetry.MAE.set(summary["mae"])
        telemetry.RMSE.set(summary["rmse"])


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Run the metric role until `stop` is set, then drain the outbox into the log.

    The sink and the sweeper live as long as the process; only the consumer is rebuilt
    when RabbitMQ goes away and comes back. A crash in any of them ends the role.
    """
    telemetry.claim_for_metric_role()
    async with contextlib.AsyncExitStack() as stack:
        redis = await connect_redis(settings)
        stack.push_async_callback(redis.aclose)
        finish = asyncio.Event()
        joiner = Joiner(None, redis, settings)
        sink = CsvSink(settings.metric_log, redis, ErrorChanges(redis),
                       LogPolicy.from_settings(settings))
        store = JoinStore(redis, settings)

        async def sweep() -> None:
            expired = await store.sweep(time.time())
            if expired:
                log.info("%d pending halves expired unmatched", expired)
            await export_join_state(redis)

        async def on_channel(channel: AbstractChannel) -> BatchConsumer:
            joiner.channel = channel
            return BatchConsumer(channel, [Y_TRUE, Y_PRED], joiner.handle, settings=settings)

        async def consume() -> None:
            # The consumer returns once the stop is set and its batches are stored and
            # acked; only then may the sink drain the outbox and finish, so nothing joined
            # is left out.
            try:
                await consume_until_stopped(settings, "metric", stop, on_channel)
            finally:
                finish.set()

        freeze_startup()
        async with asyncio.TaskGroup() as group:
            group.create_task(consume(), name="consumer")
            group.create_task(sink.run(finish), name="sink")
            group.create_task(every(SWEEP_SECONDS, stop, sweep, "sweep"), name="sweep")
