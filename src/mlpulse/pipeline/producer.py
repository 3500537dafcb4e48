"""The producer role: streams feature vectors and their labels under one id each."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from aio_pika.abc import AbstractChannel

from mlpulse.broker import PERSISTENT_JSON, close_quietly, connect, declare_topology, raw_channel
from mlpulse.config import Settings
from mlpulse.errors import TRANSIENT_ERRORS, MlpulseError
from mlpulse.ml.data import Dataset, diabetes, read_csv
from mlpulse.pipeline.heap import freeze_startup
from mlpulse.waiting import Backoff, stopped_within
from mlpulse.wire import FEATURES, Y_TRUE, encode

log = logging.getLogger(__name__)

# Messages per publish chunk, and messages awaiting the broker's confirms at once: four
# full chunks. A paced run flushes a chunk of one event before each pause, so a bound
# counted in chunks would allow only four events unconfirmed, and the events behind them
# would wait out the broker's confirm latency before being sent.
CHUNK_MESSAGES = 500
MESSAGES_IN_FLIGHT = 4 * CHUNK_MESSAGES
# A broker restart takes seconds; this many tries, at most 2 s apart, span about a minute,
# and a broker that is back is tried again within 2 s.
PUBLISH_ATTEMPTS = 35
# A paced run wakes at most this often and sends every event that has come due, each
# still a message of its own and stamped when it goes. Waking for each event at 1,000 a
# second kept the producer's core busy with timers and one publish task per event, and
# on a shared machine that CPU came out of the pipeline's latency.
PACE_SECONDS = 0.005


@dataclass(slots=True)
class Plan:
    """What to send and how fast."""

    count: int | None = None          # None: until stopped
    batch: int = 1                    # events per frame; 1 sends seed-style single messages
    rate: float | None = 1.0          # events per second; None: as fast as the broker confirms
    labels: bool = True
    source: Path | None = None
    target: str = "target"
    seed: int = 0
    # Demo drift: (feature name, shift in the feature's standard deviations, first event).
    drift: list[tuple[str, float, int]] = field(default_factory=list)


def parse_drift(spec: str) -> tuple[str, float, int]:
    """`bmi=+2.0@5000`: from event 5,000 on, bmi moves by 2 standard deviations."""
    name, sep, rest = spec.partition("=")
    shift, at_sep, start = rest.partition("@")
    try:
        if not (name and sep and shift):
            raise ValueError
        return name, float(shift), int(start) if at_sep else 0
    except ValueError:
        raise ValueError(f"{spec!r}: expected FEATURE=SHIFT[@EVENT], e.g. bmi=+2.0@5000") \
            from None


def drift_shifts(data: Dataset, plan: Plan) -> list[tuple[int, float, int]]:
    """(column, amount, first event) for each drift of the plan, in the data's units; a
    feature's standard deviation is taken over the streamed rows."""
    out = []
    for name, shift, start in plan.drift:
        if name not in data.feature_names:
            raise MlpulseError(f"--drift {name}: no such feature (features: "
                               f"{', '.join(data.feature_names)})")
        j = data.feature_names.index(name)
        out.append((j, shift * float(data.X[:, j].std()), start))
    return out


def load_source(plan: Plan) -> Dataset:
    """The rows to stream: a CSV with a target column, or the diabetes set."""
    if plan.source is None:
        return diabetes()
    return read_csv(plan.source, plan.target if plan.labels else None)


def frames(data: Dataset, plan: Plan, run: str) -> Iterator[tuple[list[dict[str, Any]],
                                                             list[dict[str, Any]]]]:
    """(features, labels) frames of `plan.batch` events, rows in shuffled order, cycling."""
    rng = np.random.default_rng(plan.seed)
    X, y = data.X.tolist(), data.y.tolist()
    shifts = drift_shifts(data, plan)
    order: list[int] = []
    sent = 0
    while plan.count is None or sent < plan.count:
        size = plan.batch if plan.count is None else min(plan.batch, plan.count - sent)
        feats, labels = [], []
        now = time.time()
        for _ in range(size):
            if not order:
                order = rng.permutation(len(X)).tolist()
            row = order.pop()
            event_id = f"{run}-{sent}"
            body = X[row]
            if shifts:
                body = list(body)
                for j, amount, start in shifts:
                    if sent >= start:
                        body[j] += amount
            feats.append({"id": event_id, "body": body, "ts": now})
            if plan.labels:
                labels.append({"id": event_id, "body": y[row], "ts": now})
            sent += 1
        yield feats, labels


class Progress:
    """A line on stderr about once a second for a finite run."""

    def __init__(self, total: int | None) -> None:
        self.total = total
        self.start = time.monotonic()
        self.shown = self.start
        self.tty = sys.stderr.isatty()

    def update(self, done: int, final: bool = False, unconfirmed: int = 0) -> None:
        """Show progress if a second has passed, or at the end: then `done` is what the
        broker confirmed, and `unconfirmed` what it had not when the run ended."""
        now = time.monotonic()
        if not final and now - self.shown < 1.0:
            return
        self.shown = now
        rate = done / max(now - self.start, 1e-9)
        total = f"/{self.total}" if self.total else ""
        line = f"sent {done}{total} events ({rate:,.0f} events/s)"
        if unconfirmed:
            line += (f"; {unconfirmed} more after them were handed to the broker but not "
                     "confirmed, and may or may not have arrived")
        if self.tty:
            sys.stderr.write(f"\r{line}" + ("\n" if final else ""))
            sys.stderr.flush()
        else:
            # In a log, the running count is detail; the last line is what a person reads.
            log.log(logging.INFO if final else logging.DEBUG, "%s", line)


class Sender:
    """Publishes in chunks, with a bounded number of messages awaiting confirms at once.

    Chunks run in the caller's task group: one that fails for good cancels the others,
    and the run ends with its error instead of leaving publishes behind."""

    def __init__(self, channel: AbstractChannel, group: asyncio.TaskGroup) -> None:
        self.channel = channel
        self.group = group
        self.chunk: list[tuple[str, bytes]] = []
        self.unconfirmed = 0  # messages handed over and not yet confirmed (or failed)
        self._confirm_seen = asyncio.Event()
        # Events in the chunk being filled, handed over in flushed chunks, and confirmed
        # together with every event before them (chunks may confirm out of order).
        self.events = 0
        self.handed = 0
        self.confirmed = 0
        self._started = 0
        self._ends: dict[int, int] = {}
        self._confirmed_chunks: set[int] = set()
        self._next = 0

    def add(self, queue: str, doc: Any) -> None:
        """Queue one message for the next flush."""
        self.chunk.append((queue, encode(doc)))

    async def flush(self) -> None:
        """Start publishing the chunk; wait only while too many messages are unconfirmed."""
        if not self.chunk:
            return
        chunk, self.chunk = self.chunk, []
        # One caller flushes at a time. A chunk bigger than the bound still goes, alone.
        while self.unconfirmed and self.unconfirmed + len(chunk) > MESSAGES_IN_FLIGHT:
            self._confirm_seen.clear()
            await self._confirm_seen.wait()
        self.unconfirmed += len(chunk)
        seq, self._started = self._started, self._started + 1
        self.handed += self.events
        self.events = 0
        self._ends[seq] = self.handed
        self.group.create_task(self._publish(seq, chunk))

    def _confirm(self, seq: int) -> None:
        self._confirmed_chunks.add(seq)
        while self._next in self._confirmed_chunks:
            self._confirmed_chunks.discard(self._next)
            self.confirmed = self._ends.pop(self._next)
            self._next += 1

    async def _publish(self, seq: int, chunk: list[tuple[str, bytes]]) -> None:
        backoff = Backoff(0.2, 2.0)
        try:
            for attempt in range(1, PUBLISH_ATTEMPTS + 1):
                try:
                    raw = await raw_channel(self.channel)
                    # `wait=False`: see `publish_many`; the confirms are awaited here.
                    await asyncio.gather(*(raw.basic_publish(body, routing_key=queue,
                                                             properties=PERSISTENT_JSON,
                                                             wait=False)
                                           for queue, body in chunk))
                    self._confirm(seq)
                    return
                except TRANSIENT_ERRORS as exc:
                    if attempt == PUBLISH_ATTEMPTS:
                        raise
                    # Some of the chunk may have arrived; sending it again is safe because
                    # the joiner counts a repeated half as a duplicate and writes it once.
                    delay = backoff.next()
                    log.warning("publish failed (%r); sending the chunk again in %.1fs",
                                exc, delay)
                    await asyncio.sleep(delay)
        finally:
            self.unconfirmed -= len(chunk)
            self._confirm_seen.set()


async def produce(settings: Settings, plan: Plan, stop: asyncio.Event) -> int:
    """Send events as planned; returns how many the broker confirmed."""
    data = load_source(plan)
    drift_shifts(data, plan)  # an unknown feature is refused before anything is sent
    async with contextlib.AsyncExitStack() as stack:
        connection = await connect(settings, "producer")
        stack.push_async_callback(close_quietly, connection)
        channel = await connection.channel(publisher_confirms=True)
        await declare_topology(channel)
        run = f"{int(time.time() * 1000):x}-{uuid.uuid4().hex[:6]}"
        freeze_startup()
        progress = Progress(plan.count)
        log.info("producing %s events%s as run %s", plan.count or "endless",
                 f" at {plan.rate:g}/s" if plan.rate else "", run)
        sender: Sender | None = None
        try:
            async with asyncio.TaskGroup() as group:
                sender = Sender(channel, group)
                await _send(sender, data, plan, run, stop, progress)
        finally:
            # Also when the run is cut short (a stop while the broker is gone): the total
            # says how far every event was confirmed, and what may have arrived after.
            if sender is not None:
                progress.update(sender.confirmed, final=True,
                                unconfirmed=sender.handed - sender.confirmed)
        return sender.confirmed


async def _send(sender: Sender, data: Dataset, plan: Plan, run: str, stop: asyncio.Event,
                progress: Progress) -> int:
    """Hand every frame to `sender` at the planned pace; the caller waits for confirms."""
    single = plan.batch == 1
    start = time.monotonic()
    sent = 0
    for feats, labels in frames(data, plan, run):
        if stop.is_set():
            break
        if plan.rate and start + sent / plan.rate > time.monotonic():
            await sender.flush()  # what is due goes out before we wait
            delay = max(start + sent / plan.rate - time.monotonic(), PACE_SECONDS)
            if await _stopped_within(stop, delay):
                break
            feats, labels = _restamp(feats), _restamp(labels)
        for queue, events in ((FEATURES, feats), (Y_TRUE, labels)):
            if single:
                for doc in events:
                    sender.add(queue, doc)
            elif events:
                sender.add(queue, events)
        sent += len(feats)
        sender.events += len(feats)
        if len(sender.chunk) >= CHUNK_MESSAGES:
            await sender.flush()
        progress.update(sent)
    await sender.flush()
    return sent


async def _stopped_within(stop: asyncio.Event, seconds: float) -> bool:
    if seconds < 0.05:
        # A short pause between paced events: a plain sleep costs less than a timeout
        # scope each time, and a stop is noticed one event later.
        await asyncio.sleep(seconds)
        return stop.is_set()
    return await stopped_within(stop, seconds)


def _restamp(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # A paced frame is stamped when it is really sent, not when it was built.
    now = time.time()
    for e in events:
        e["ts"] = now
    return events
