"""The producer role: streams feature vectors and their labels under one id each."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlpulse.broker import connect, declare_topology, persistent
from mlpulse.config import Settings
from mlpulse.ml.data import Dataset, diabetes, read_csv
from mlpulse.wire import FEATURES, Y_TRUE, encode

log = logging.getLogger(__name__)

# Frames awaiting the broker's confirm at once: enough to keep the pipe full.
IN_FLIGHT = 256


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
            feats.append({"id": event_id, "body": X[row], "ts": now})
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

    def update(self, done: int, final: bool = False) -> None:
        """Show progress if a second has passed, or at the end."""
        now = time.monotonic()
        if not final and now - self.shown < 1.0:
            return
        self.shown = now
        rate = done / max(now - self.start, 1e-9)
        total = f"/{self.total}" if self.total else ""
        line = f"sent {done}{total} events ({rate:,.0f} events/s)"
        if self.tty:
            sys.stderr.write(f"\r{line}" + ("\n" if final else ""))
            sys.stderr.flush()
        else:
            log.info("%s", line)


async def produce(settings: Settings, plan: Plan, stop: asyncio.Event) -> int:
    """Send events as planned; returns how many the broker confirmed."""
    data = load_source(plan)
    connection = await connect(settings, "producer")
    try:
        channel = await connection.channel(publisher_confirms=True)
        await declare_topology(channel)
        exchange = channel.default_exchange
        run = f"{int(time.time() * 1000):x}-{uuid.uuid4().hex[:6]}"
        single = plan.batch == 1
        window = asyncio.Semaphore(IN_FLIGHT)
        pending: set[asyncio.Task[Any]] = set()
        progress = Progress(plan.count)
        failures: list[BaseException] = []

        def settled(task: asyncio.Task[Any]) -> None:
            pending.discard(task)
            if not task.cancelled() and task.exception() is not None:
                failures.append(task.exception())  # type: ignore[arg-type]
        start = time.monotonic()
        log.info("producing %s events%s as run %s", plan.count or "endless",
                 f" at {plan.rate:g}/s" if plan.rate else "", run)

        async def send(queue: str, doc: Any) -> None:
            try:
                await exchange.publish(persistent(encode(doc)), routing_key=queue)
            finally:
                window.release()

        sent = 0
        for feats, labels in frames(data, plan, run):
            if stop.is_set():
                break
            if plan.rate:
                delay = start + sent / plan.rate - time.monotonic()
                if delay > 0:
                    try:
                        await asyncio.wait_for(stop.wait(), delay)
                        break
                    except TimeoutError:
                        pass
            for queue, events in ((FEATURES, feats), (Y_TRUE, labels)):
                for doc in events if single else ([events] if events else []):
                    await window.acquire()
                    task = asyncio.create_task(send(queue, doc))
                    pending.add(task)
                    task.add_done_callback(settled)
            if failures:
                raise failures[0]
            sent += len(feats)
            progress.update(sent)
        if pending:
            await asyncio.gather(*pending)
        progress.update(sent, final=True)
        return sent
    finally:
        await connection.close()
