"""Join y_true with y_pred by canonical id, in Redis, one atomic step per micro-batch."""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from typing import Any, TypeGuard

from aio_pika.abc import AbstractChannel
from aiormq.abc import DeliveredMessage

from mlpulse.broker import dead_letter
from mlpulse.config import Settings
from mlpulse.store import JoinStore, Redis, count_rejected
from mlpulse.wire import Y_TRUE, Event, Rejected, decode_frame, encode

log = logging.getLogger(__name__)


def _send_time(event: Event) -> str:
    ts = event.extra.get("ts")
    if isinstance(ts, int | float) and not isinstance(ts, bool) and math.isfinite(ts):
        return repr(float(ts))
    return ""


def _number(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) \
        and math.isfinite(value)


def _prediction_meta(event: Event) -> str:
    """A y_pred's meta: its send time, and when it was scored with its estimated error
    if a profiling model role sent it (join.lua counts the label into that bucket)."""
    sent = _send_time(event)
    scored, estimated = event.extra.get("scored_at"), event.extra.get("estimated_error")
    if _number(scored) and _number(estimated):
        return f"{sent};{scored!r};{estimated!r}"
    return sent


def _version(event: Event) -> str:
    version = event.extra.get("model_version")
    return "" if version is None else str(version)


class Joiner:
    """Handles batches from y_true and y_pred; acking is left to the consumer."""

    def __init__(self, channel: AbstractChannel | None, redis: Redis, settings: Settings) -> None:
        self.channel = channel
        self.redis = redis
        self.store = JoinStore(redis, settings)
        self.max_bytes = settings.max_message_bytes

    async def handle(self, batch: list[DeliveredMessage]) -> None:
        """Store or complete every half in the batch, then dead-letter what was bad."""
        halves: list[list[Any]] = []
        rejected: dict[str, list[Rejected]] = {}
        for msg in batch:
            queue = msg.routing_key or ""
            side = "t" if queue == Y_TRUE else "p"
            events, bad = decode_frame(msg.body, numeric=True, max_bytes=self.max_bytes)
            meta = _send_time if side == "t" else _prediction_meta
            for e in events:
                halves.append([side, e.id, repr(e.body), _version(e), meta(e)])
            if bad:
                rejected.setdefault(queue, []).extend(bad)
        if halves:
            outcome = await self.store.join(encode(halves), time.time())
            if outcome.duplicates or outcome.conflicts:
                log.info("batch of %d halves: %d joined, %d duplicates, %d conflicts",
                         len(halves), outcome.joined, outcome.duplicates, outcome.conflicts)
        for queue, bad in rejected.items():
            assert self.channel is not None, "the consumer sets the channel before delivering"
            await dead_letter(self.channel, queue, bad)
            await count_rejected(self.redis, Counter(r.code for r in bad))
