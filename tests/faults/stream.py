"""A producer for fault runs that records exactly what the broker confirmed.

It is independent of `mlpulse produce` on purpose: a checker that trusted the code under
test to say what it sent could miss that code's own losses. Seed-style: plain pika, the
queues declared durable with no arguments, persistent JSON frames of `{"id", "body", "ts"}`,
publisher confirms. When the broker goes away it reconnects and sends every unconfirmed
frame again, as a careful producer would, so the pipeline sees real redeliveries.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pika
import pika.exceptions

from tests.faults.checker import History

PERSISTENT = pika.BasicProperties(delivery_mode=2, content_type="application/json")
N_FEATURES = 10  # the diabetes set the model role trains on
# Extra elements to put in the features and y_true frames of frame number k (poison tests).
Spoiler = Callable[[int, list[dict[str, Any]]], tuple[list[Any], list[Any]]]


class Publisher:
    """Streams `count` events at `rate` per second in frames of `batch`, in a thread.

    With `hold`, it goes on past `count` until `release()`, so the faults of a run always
    land in a live stream however long their recoveries take.
    """

    def __init__(self, url: str, count: int, *, batch: int = 20, rate: float = 500.0,
                 hold: bool = True, seed: int = 0, spoil: Spoiler | None = None,
                 outage_limit: float = 180.0) -> None:
        self.url = url
        self.count = count
        self.batch = batch
        self.rate = rate
        self.hold = hold
        self.spoil = spoil
        self.outage_limit = outage_limit
        self.run = f"f{uuid.uuid4().hex[:6]}"
        self.history = History()
        self.sent = 0
        self.connections = 0
        self.dead_letters_planted = 0
        self.error: BaseException | None = None
        self._rng = np.random.default_rng(seed)
        self._released = threading.Event()
        self._stop = threading.Event()
        self._done = threading.Event()
        self._conn: pika.BlockingConnection | None = None
        self._channel: Any = None
        self._thread = threading.Thread(target=self._main, name="fault-publisher", daemon=True)

    @property
    def confirmed(self) -> int:
        return len(self.history.confirmed)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def start(self) -> None:
        self._thread.start()

    def release(self) -> None:
        """Let a held stream end once it has sent `count` events."""
        self._released.set()

    def stop(self) -> None:
        """End the stream now (after the frame in hand)."""
        self._stop.set()
        self._released.set()

    def close(self) -> None:
        """Stop and wait for the thread, whatever state the run ended in."""
        self.stop()
        self._thread.join(30)

    def wait(self, timeout: float) -> None:
        """Wait for the stream to end; re-raise what made it fail."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"the publisher is still sending after {timeout}s "
                                 f"({self.sent} events sent, {self.confirmed} confirmed)")
        if self.error is not None:
            raise AssertionError(f"the publisher failed: {self.error!r}") from self.error

    def _main(self) -> None:
        try:
            self._stream()
        except BaseException as exc:  # reported by wait()
            self.error = exc
        finally:
            self._done.set()
            if self._conn is not None and self._conn.is_open:
                try:
                    self._conn.close()
                except pika.exceptions.AMQPError:
                    pass  # the broker went away first

    def _stream(self) -> None:
        start = time.monotonic()
        frame = 0
        while not self._stop.is_set() and (self.sent < self.count
                                           or (self.hold and not self._released.is_set())):
            due = start + self.sent / self.rate - time.monotonic()
            if due > 0 and self._stop.wait(due):  # pacing: nothing to await but the clock
                break
            feats, labels = self._frame()
            extra_feats, extra_labels = self.spoil(frame, labels) if self.spoil else ([], [])
            self.dead_letters_planted += len(extra_feats) + len(extra_labels)
            self._publish("features", [*feats, *extra_feats])
            self._publish("y_true", [*labels, *extra_labels])
            self.history.confirmed.update(e["id"] for e in labels)
            frame += 1

    def _frame(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        now = time.time()
        feats, labels = [], []
        for _ in range(self.batch):
            rid = f"{self.run}-{self.sent}"
            y_true = float(self._rng.uniform(25.0, 346.0))
            self.history.labels[rid] = y_true
            feats.append({"id": rid, "body": self._rng.uniform(-0.1, 0.1, N_FEATURES).tolist(),
                          "ts": now})
            labels.append({"id": rid, "body": y_true, "ts": now})
            self.sent += 1
        return feats, labels

    def _publish(self, queue: str, frame: list[Any]) -> None:
        """Publish until the broker confirms, reconnecting through an outage."""
        body = json.dumps(frame).encode()
        outage_since: float | None = None
        while True:
            try:
                self._ensure_channel().basic_publish("", queue, body, PERSISTENT)
                return
            except (pika.exceptions.AMQPError, OSError) as exc:
                self._drop()
                outage_since = outage_since or time.monotonic()
                if time.monotonic() - outage_since > self.outage_limit:
                    raise AssertionError(f"broker unreachable for {self.outage_limit}s: "
                                         f"{exc!r}") from exc
                if self._stop.wait(0.1):  # the broker gives no signal when it is back
                    raise AssertionError("stopped with a frame unconfirmed") from exc

    def _ensure_channel(self) -> Any:
        if self._channel is None:
            params = pika.URLParameters(self.url)
            params.connection_attempts = 1
            params.socket_timeout = 5
            params.blocked_connection_timeout = 30
            self._conn = pika.BlockingConnection(params)
            channel = self._conn.channel()
            channel.confirm_delivery()
            for queue in ("features", "y_true", "y_pred"):
                channel.queue_declare(queue=queue, durable=True)
            self._channel = channel
            self.connections += 1
        return self._channel

    def _drop(self) -> None:
        conn, self._conn, self._channel = self._conn, None, None
        if conn is not None and conn.is_open:
            try:
                conn.close()
            except (pika.exceptions.AMQPError, OSError):
                pass  # already broken
