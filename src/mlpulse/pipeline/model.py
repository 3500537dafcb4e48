"""The model role: features in, one vectorised predict per micro-batch, y_pred out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from typing import Any

import aio_pika
import numpy as np
from aio_pika.abc import AbstractChannel
from aiormq.abc import DeliveredMessage
from numpy.typing import NDArray
from threadpoolctl import threadpool_limits

from mlpulse import keys
from mlpulse.broker import BatchConsumer, consume_until_stopped, dead_letter, publish_many
from mlpulse.config import Settings
from mlpulse.drift import DriftStore
from mlpulse.errors import TRANSIENT_ERRORS
from mlpulse.ml.meta import versions
from mlpulse.ml.profile import Profiled, ProfileError
from mlpulse.ml.registry import LoadedModel, ensure_model, ensure_profile, load
from mlpulse.pipeline.heap import freeze_startup
from mlpulse.store import Redis, connect_redis, count_rejected
from mlpulse.waiting import stopped_within
from mlpulse.wire import (
    EVENTS_EXCHANGE,
    FEATURES,
    MAX_ABS_VALUE,
    Y_PRED,
    Event,
    Rejected,
    decode_frame,
    encode,
)

log = logging.getLogger(__name__)

ANNOUNCE_TTL = 30 * 86400
# Events per outgoing y_pred frame: about 60 KB, well under the message size limit.
FRAME_EVENTS = 500
RELOAD_SECONDS = 2.0
# A registry check that fails for these is tried again at the next one.
REGISTRY_ERRORS: tuple[type[BaseException], ...] = (*TRANSIENT_ERRORS, OSError)


def load_profile(settings: Settings, model: LoadedModel) -> Profiled | None:
    """The version's reference profile, or None after saying clearly why drift is off."""
    if not settings.drift_enabled:
        return None
    try:
        return ensure_profile(settings.models_dir, model)
    except ProfileError as exc:
        log.error("drift is unavailable for %s: %s; predictions go on", model.version, exc)
    except Exception as exc:  # a profile that cannot be built must not stop predictions
        log.error("drift is unavailable for %s: the profile could not be built: %r",
                  model.version, exc)
    return None


class Predictor:
    """Turns batches of feature messages into confirmed y_pred frames."""

    def __init__(self, channel: AbstractChannel, redis: Redis, model: LoadedModel,
                 settings: Settings, profiled: Profiled | None = None) -> None:
        self.channel = channel
        self.redis = redis
        self.model = model
        self.profiled = profiled
        self.settings = settings
        self.drift = DriftStore(redis, settings)

    async def handle(self, batch: list[DeliveredMessage]) -> None:
        """Decode, predict, publish and wait for the broker's confirms; the caller acks."""
        # One version (and its profile) for the whole batch, even if a swap happens meanwhile.
        model, profiled = self.model, self.profiled
        events: list[Event] = []
        rejected: list[Rejected] = []
        for msg in batch:
            ok, bad = decode_frame(msg.body, numeric=False, n_features=model.n_features,
                                   max_bytes=self.settings.max_message_bytes)
            events.extend(ok)
            rejected.extend(bad)
        if events:
            X = np.array([e.body for e in events], dtype=np.float64)
            y = model.predict(X)
            usable = np.isfinite(y) & (np.abs(y) <= MAX_ABS_VALUE)
            if not usable.all():
                # The model answered something the wire cannot carry: refuse that event
                # with the reason, and send the rest.
                for i in np.flatnonzero(~usable).tolist():
                    rejected.append(Rejected("out_of_range", f"model {model.version} "
                                             f"predicted {y[i]!r}, beyond ±{MAX_ABS_VALUE:g}",
                                             encode(_prediction(events[i], None, None))))
                events = [e for e, ok in zip(events, usable.tolist(), strict=True) if ok]
                X, y = X[usable], y[usable]
            now = time.time()
            if profiled is None or not len(y):
                out = [_prediction(e, p, model.version, now)
                       for e, p in zip(events, y.tolist(), strict=True)]
                if len(y):  # the prediction count alone, for the alert rules' events_per_s
                    await self.drift.record(model.version, ["n", len(y)], [], now)
            else:
                # Each prediction carries when it was scored and its estimated error, so
                # the join can count its label into the same drift bucket.
                drifted = self._drift_fields(model, profiled, X, y)
                if drifted is None:
                    out = [_prediction(e, p, model.version, now)
                           for e, p in zip(events, y.tolist(), strict=True)]
                else:
                    estimated, ints, floats = drifted
                    out = [_prediction(e, p, model.version, now, est) for e, p, est
                           in zip(events, y.tolist(), estimated.tolist(), strict=True)]
                    # Before the publish, so a label never counts into a bucket before
                    # its prediction does; a batch redone after a failure from here on is
                    # counted twice (drift counts are at least once), never left out.
                    await self.drift.record(model.version, ints, floats, now)
            frames = (encode(out[i:i + FRAME_EVENTS]) for i in range(0, len(out), FRAME_EVENTS))
            await publish_many(self.channel, Y_PRED, frames)
        if rejected:
            await dead_letter(self.channel, FEATURES, rejected)
            await count_rejected(self.redis, Counter(r.code for r in rejected))

    def _drift_fields(self, model: LoadedModel, profiled: Profiled, X: NDArray[np.float64],
                      y: NDArray[np.float64]) -> tuple[NDArray[np.float64], list[Any],
                                                       list[Any]] | None:
        """Estimated errors and bin counts of a batch; None, with drift switched off for
        the version, if its profile fails on real data (predictions go on)."""
        try:
            estimated = profiled.estimate(X, y)
            ints, floats = profiled.reference.batch_fields(X, y, estimated)
        except Exception as exc:  # an estimator that loaded but cannot predict, say
            log.error("drift is unavailable for %s from now on: its profile failed on a "
                      "batch: %r; predictions go on", model.version, exc)
            if self.model is model:
                self.profiled = None
            return None
        return estimated, ints, floats

    async def follow_registry(self, stop: asyncio.Event) -> None:
        """Swap in a newer model version as soon as one is registered, without a restart."""
        refused: str | None = None
        while not await stopped_within(stop, RELOAD_SECONDS):
            try:
                refused = await self._swap_if_newer(refused)
            except REGISTRY_ERRORS as exc:
                log.warning("model registry not checked (%r); trying again", exc)

    async def _swap_if_newer(self, refused: str | None) -> str | None:
        """Load the newest registered version if it is new; returns the version refused."""
        found = await asyncio.to_thread(versions, self.settings.models_dir)
        latest = f"v{found[-1]}" if found else None
        if latest is None or latest in (self.model.version, refused):
            return refused
        try:
            new = await asyncio.to_thread(load, self.settings.models_dir, found[-1])
        except Exception as exc:  # an unreadable artifact, whatever the reason
            # A broken artifact must not stop predictions: keep serving the model in
            # hand, say why once, and take the next version that loads.
            log.error("model %s cannot be loaded, %s stays: %r", latest, self.model.version,
                      exc)
            return latest
        profiled = await asyncio.to_thread(load_profile, self.settings, new)
        log.info("model %s replaces %s", new.version, self.model.version)
        previous, self.model, self.profiled = self.model, new, profiled
        await self.announce(new, previous)
        return refused

    async def announce(self, new: LoadedModel, previous: LoadedModel) -> None:
        """Tell every dashboard, once however many model processes swap, that `new` is live."""
        key = keys.deployed(new.version)
        if not await self.redis.set(key, previous.version, nx=True, ex=ANNOUNCE_TTL):
            return
        envelope = {"type": "model", "ts": time.time(), "data": {
            "event": "deployed", "version": new.version, "previous": previous.version,
            "holdout_mae": new.meta.get("holdout_mae"), "source": new.meta.get("source"),
            "message": f"model {new.version} deployed"}}
        try:
            exchange = await self.channel.get_exchange(EVENTS_EXCHANGE)
            await exchange.publish(aio_pika.Message(encode(envelope),
                                                    content_type="application/json"),
                                   routing_key="broadcast", mandatory=False)
        except Exception as exc:  # the channel may be between reconnects
            log.warning("announcement of %s not sent (%r)", new.version, exc)
            await self.redis.delete(key)


def _prediction(event: Event, value: float | None, version: str | None,
                scored: float | None = None, estimated: float | None = None) -> dict[str, Any]:
    """The y_pred event for `event`; without a value, the features event as it came."""
    doc = dict(event.extra)
    if value is None:
        doc.update(id=event.raw_id, body=event.body)
        return doc
    doc.update(id=event.raw_id, body=value, model_version=version)
    # What a features message says of these is not this model role's word.
    doc.pop("estimated_error", None)
    if scored is not None:
        doc["scored_at"] = scored
    if estimated is not None:
        doc["estimated_error"] = estimated
    return doc


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Run the model role until `stop` is set, reconnecting after a broker outage."""
    # The error estimator's OpenMP regions are short, and idle OpenMP threads spin: on
    # one thread it costs less CPU and leaves the rest to the other roles on the machine.
    threadpool_limits(1, user_api="openmp")
    async with contextlib.AsyncExitStack() as stack:
        redis = await connect_redis(settings)
        stack.push_async_callback(redis.aclose)
        # Entered last, left first: the registry follower ends before Redis closes.
        group = await stack.enter_async_context(asyncio.TaskGroup())
        predictor: Predictor | None = None

        async def on_channel(channel: AbstractChannel) -> BatchConsumer:
            nonlocal predictor
            if predictor is None:
                # The queues are declared by now: features published while the model
                # trains wait in a durable queue.
                model = await asyncio.to_thread(ensure_model, settings.models_dir)
                log.info("model %s loaded (%d features)", model.version, model.n_features)
                profiled = await asyncio.to_thread(load_profile, settings, model)
                predictor = Predictor(channel, redis, model, settings, profiled)
                group.create_task(predictor.follow_registry(stop), name="registry")
                freeze_startup()
            predictor.channel = channel
            return BatchConsumer(channel, [FEATURES], predictor.handle, settings=settings)

        await consume_until_stopped(settings, "model", stop, on_channel)
