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
from mlpulse.wire import MAX_ABS_VALUE, Y_TRUE, Event, Rejected, decode_frame, encode

log = logging.getLogger(__name__)

# Seconds a model host's clock may run ahead of the metric role's.
CLOCK_SKEW = 60.0
# The longest label delay counted (join.lua's last delay bin starts at a week).
LONGEST_DELAY = 8 * 86400.0


def _finite(value: Any) -> TypeGuard[float]:
    return type(value) is float and math.isfinite(value)


def _send_time(event: Event) -> str:
    ts = event.extra.get("ts")
    if isinstance(ts, int | float) and not isinstance(ts, bool) and math.isfinite(ts):
        return repr(float(ts))
    return ""


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
        now = time.time()
        # A foreign y_pred can carry anything: a scoring time in the future or older than
        # the longest label delay counted is ignored, and join.lua counts into a drift
        # bucket only while it lives, so memory stays bounded.
        oldest, newest = now - LONGEST_DELAY, now + CLOCK_SKEW
        for msg in batch:
            queue = msg.routing_key or ""
            side = "t" if queue == Y_TRUE else "p"
            events, bad = decode_frame(msg.body, numeric=True, max_bytes=self.max_bytes)
            for e in events:
                half: list[Any] = [side, e.id, repr(e.body), _version(e), _send_time(e)]
                if side == "p":
                    # From the model role: when it was scored (and, for a profiled version,
                    # its estimated error), for join.lua to count the label into that
                    # drift bucket and its delay.
                    scored = e.extra.get("scored_at")
                    estimated = e.extra.get("estimated_error")
                    if _finite(scored) and oldest < scored <= newest:
                        half.append(scored)
                        if _finite(estimated) and 0 <= estimated <= MAX_ABS_VALUE:
                            half.append(estimated)
                halves.append(half)
            if bad:
                rejected.setdefault(queue, []).extend(bad)
        if halves:
            outcome = await self.store.join(encode(halves), now)
            if outcome.duplicates or outcome.conflicts:
                log.info("batch of %d halves: %d joined, %d duplicates, %d conflicts",
                         len(halves), outcome.joined, outcome.duplicates, outcome.conflicts)
        for queue, bad in rejected.items():
            assert self.channel is not None, "the consumer sets the channel before delivering"
            await dead_letter(self.channel, queue, bad)
            await count_rejected(self.redis, Counter(r.code for r in bad))
