"""BatchConsumer in-process against the real RabbitMQ: poison, ack order, the unacked gap, stop.

Each test consumes a queue of its own with a small handler written here. What was acked is
asked of the broker, not of the consumer: once the consumer's channel closes, every message
it had not acked goes back to the queue and counts as ready again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractConnection
from aiormq.abc import DeliveredMessage

from mlpulse.broker import BatchConsumer, Handler
from mlpulse.config import Settings
from mlpulse.wire import CODE_HEADER, DEAD_QUEUE, QUEUE_HEADER, REASON_HEADER
from tests.conftest import REDIS_DB

# Generous bounds on waits for events that come within milliseconds when all is well.
WAIT = 10.0


def numbers(batch: list[DeliveredMessage]) -> list[int]:
    """The bodies of a batch: each test message is its own number."""
    return [int(m.body) for m in batch]


class Progress:
    """What a handler saw, and a way to wait until it has seen enough."""

    def __init__(self, hold: int = 0) -> None:
        # The first `hold` calls each wait at a gate of their own until the test opens it.
        self.gates = [asyncio.Event() for _ in range(hold)]
        self.passed = [asyncio.Event() for _ in range(hold)]
        self.calls: list[list[int]] = []
        self.handled: collections.Counter[int] = collections.Counter()
        self.redelivered: list[bool] = []
        self._changed = asyncio.Condition()

    async def saw(self, batch: list[DeliveredMessage]) -> int:
        """Record a call; its index."""
        self.calls.append(numbers(batch))
        self.redelivered.extend(bool(m.redelivered) for m in batch)
        await self.changed()
        return len(self.calls) - 1

    async def gate(self, call: int) -> None:
        """Wait at the gate of a held call, if it is one."""
        if call < len(self.gates):
            await self.gates[call].wait()
            self.passed[call].set()

    def open_all(self) -> None:
        for gate in self.gates:
            gate.set()

    async def done(self, batch: list[DeliveredMessage]) -> None:
        """Record a batch handled in full."""
        self.handled.update(numbers(batch))
        await self.changed()

    async def changed(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def until(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(WAIT), self._changed:
            await self._changed.wait_for(predicate)


@dataclass
class Rig:
    """A queue of the test's own, a connection to publish and inspect, and consumers."""

    url: str
    queue: str
    channel: AbstractChannel
    connections: list[AbstractConnection] = field(default_factory=list)

    async def publish(self, count: int) -> None:
        exchange = self.channel.default_exchange
        for n in range(count):
            await exchange.publish(aio_pika.Message(str(n).encode()), routing_key=self.queue)

    async def consumer(self, handler: Handler, *, batch: int, depth: int,
                       prefetch: int, linger_ms: float = 50) -> BatchConsumer:
        """A consumer of the queue on a connection of its own."""
        connection = await aio_pika.connect(self.url)
        self.connections.append(connection)
        settings = Settings(amqp_url=self.url, redis_url=f"redis://localhost:6379/{REDIS_DB}",
                            batch_events=batch, batch_linger_ms=linger_ms,
                            pipeline_depth=depth, prefetch=prefetch)
        return BatchConsumer(await connection.channel(), [self.queue], handler,
                             settings=settings)

    async def ready(self, channel: AbstractChannel | None = None) -> int:
        """Messages waiting in the queue, not delivered to anyone. Asked on `channel`, the
        answer comes after the broker took every frame sent earlier on that channel."""
        queue = await (channel or self.channel).declare_queue(self.queue, passive=True)
        assert queue.declaration_result.message_count is not None
        return queue.declaration_result.message_count

    async def dead_letters(self) -> list[aio_pika.abc.AbstractIncomingMessage]:
        """The dead letters taken from this queue; any others go back."""
        dead = await self.channel.declare_queue(DEAD_QUEUE, durable=True)
        mine, others = [], []
        while (msg := await dead.get(no_ack=False, fail=False)) is not None:
            (mine if header(msg, QUEUE_HEADER) == self.queue else others).append(msg)
        for msg in mine:
            await msg.ack()
        for msg in others:
            await msg.nack(requeue=True)
        return mine


def header(msg: aio_pika.abc.AbstractIncomingMessage, name: str) -> str:
    value = msg.headers.get(name)
    return value.decode() if isinstance(value, bytes) else str(value)


@pytest.fixture
async def rig(amqp_url: str) -> AsyncIterator[Rig]:
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel()
    name = f"test-consumer-{uuid.uuid4().hex[:12]}"
    await channel.declare_queue(name, durable=True)
    # Dead letters go through the default exchange: without the queue they would vanish.
    await channel.declare_queue(DEAD_QUEUE, durable=True)
    rig = Rig(amqp_url, name, channel)
    try:
        yield rig
    finally:
        for c in rig.connections:
            await c.close()
        await channel.queue_delete(name)
        await connection.close()


@contextlib.asynccontextmanager
async def running(consumer: BatchConsumer, seen: Progress) -> AsyncIterator[
        tuple[asyncio.Event, asyncio.Task[None]]]:
    """`consumer.run` as a task; on the way out stopped with every gate open, and cancelled
    if it will not stop."""
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        yield stop, task
    finally:
        stop.set()
        seen.open_all()
        done, _ = await asyncio.wait({task}, timeout=WAIT)
        if not done:
            task.cancel()
            await asyncio.wait({task}, timeout=WAIT)
            raise AssertionError(f"run() did not return within {WAIT}s of the stop")
        task.result()


async def test_a_poison_message_alone_is_dead_lettered_and_the_rest_acked(rig: Rig) -> None:
    total, poison = 20, 7
    await rig.publish(total)
    seen = Progress()

    async def handler(batch: list[DeliveredMessage]) -> None:
        await seen.saw(batch)
        if poison in numbers(batch):
            raise ValueError(f"cannot score message {poison}")
        await seen.done(batch)

    consumer = await rig.consumer(handler, batch=50, depth=2, prefetch=100)
    async with running(consumer, seen):
        await seen.until(lambda: len(seen.handled) == total - 1)

    # The batch that held the poison failed whole, then went through one message at a time.
    failed = next(c for c in seen.calls if poison in c)
    assert len(failed) > 1
    singles = [c[0] for c in seen.calls if len(c) == 1]
    assert set(failed) <= set(singles)
    assert seen.handled == collections.Counter(n for n in range(total) if n != poison)
    assert not any(seen.redelivered)

    dead = await rig.dead_letters()
    assert [int(m.body) for m in dead] == [poison]
    assert header(dead[0], CODE_HEADER) == "internal"
    reason = header(dead[0], REASON_HEADER)
    assert "ValueError" in reason
    assert f"cannot score message {poison}" in reason

    # Every message was acked: with the channel closed, nothing comes back.
    await consumer.channel.close()
    assert await rig.ready() == 0


async def test_no_batch_is_acked_before_every_earlier_one_is_done(rig: Rig) -> None:
    # Three batches of five fill the prefetch window; five more wait in the queue until an
    # ack frees room. So the broker answers whether anything was acked: had it been, it
    # would have sent the consumer more, and fewer than five would still wait.
    held, batch = 3, 5
    total = (held + 1) * batch
    await rig.publish(total)
    seen = Progress(hold=held)

    async def handler(messages: list[DeliveredMessage]) -> None:
        await seen.gate(await seen.saw(messages))
        await seen.done(messages)

    consumer = await rig.consumer(handler, batch=batch, depth=held, prefetch=held * batch)
    async with running(consumer, seen):
        await seen.until(lambda: len(seen.calls) == held)
        assert await rig.ready() == batch
        for i in reversed(range(1, held)):
            seen.gates[i].set()
            await seen.passed[i].wait()
            # The first round trip lets the batch's task end (and any ack go out); the
            # second is answered after the broker took whatever the consumer sent.
            await rig.ready(consumer.channel)
            assert await rig.ready(consumer.channel) == batch, (
                f"batch {i} was acked while batch 0 was still in work")
        assert sum(seen.handled.values()) == (held - 1) * batch
        seen.gates[0].set()
        await seen.until(lambda: sum(seen.handled.values()) == total)
    assert seen.handled == collections.Counter(range(total))
    await consumer.channel.close()
    assert await rig.ready() == 0


async def test_a_batch_unfinished_at_stop_is_not_acked_and_nothing_past_it(rig: Rig) -> None:
    total = 10
    await rig.publish(total)
    seen = Progress()
    failing = asyncio.Event()

    async def handler(batch: list[DeliveredMessage]) -> None:
        await seen.saw(batch)
        if 0 in numbers(batch):
            failing.set()
            raise ConnectionError("the store went away")
        await seen.done(batch)

    consumer = await rig.consumer(handler, batch=5, depth=2, prefetch=total)
    async with running(consumer, seen) as (stop, task):
        await failing.wait()
        await seen.until(lambda: len(seen.handled) > 0)
        stop.set()
        async with asyncio.timeout(WAIT):
            await task
    # The failing batch was tried again until the stop, then left.
    assert sum(0 in c for c in seen.calls) >= 2
    later = set(seen.handled)
    assert later
    assert 0 not in later
    assert consumer.unacked_gap
    # The later batch was handled, yet a `multiple` ack of it would have covered the
    # failing one: neither was acked, and both come back once the channel closes.
    assert await rig.ready(consumer.channel) == 0
    await consumer.channel.close()
    assert await rig.ready() == total
    queue = await rig.channel.declare_queue(rig.queue, passive=True)
    back = []
    for _ in range(total):
        msg = await queue.get(no_ack=True, fail=False)
        assert msg is not None
        back.append(msg)
    assert sorted(int(m.body) for m in back) == list(range(total))
    assert all(m.redelivered for m in back)


async def test_stop_finishes_the_batches_in_hand_and_acks_them(rig: Rig) -> None:
    total, batch, held = 20, 5, 2
    await rig.publish(total)
    seen = Progress(hold=held)

    async def handler(messages: list[DeliveredMessage]) -> None:
        await seen.gate(await seen.saw(messages))
        await seen.done(messages)

    consumer = await rig.consumer(handler, batch=batch, depth=held, prefetch=held * batch)
    async with running(consumer, seen) as (stop, task):
        await seen.until(lambda: len(seen.calls) == held)
        in_hand = sorted(n for c in seen.calls for n in c)
        stop.set()
        await rig.ready(consumer.channel)
        assert not task.done(), "run() returned with batches still in work"
        # One batch finishes; run() still waits for the other.
        seen.gates[0].set()
        await seen.passed[0].wait()
        await rig.ready(consumer.channel)
        assert not task.done(), "run() returned with a batch still in work"
        seen.gates[1].set()
        async with asyncio.timeout(WAIT):
            await task
    # Only the batches in hand were handled, each once, and all of them were acked: what
    # comes back when the channel closes is exactly the rest.
    assert seen.handled == collections.Counter(in_hand)
    await consumer.channel.close()
    assert await rig.ready() == total - len(in_hand)


async def test_stop_takes_no_new_batch_from_prefetched_messages(rig: Rig) -> None:
    total, batch, held = 20, 5, 2
    await rig.publish(total)
    seen = Progress(hold=held)

    async def handler(messages: list[DeliveredMessage]) -> None:
        await seen.gate(await seen.saw(messages))
        await seen.done(messages)

    # The prefetch window holds every message: two batches in work, the rest waiting in the
    # consumer's inbox, delivered but not yet taken.
    consumer = await rig.consumer(handler, batch=batch, depth=held, prefetch=total)
    async with running(consumer, seen) as (stop, task):
        await seen.until(lambda: len(seen.calls) == held)
        in_hand = sorted(n for c in seen.calls for n in c)
        if await rig.ready(consumer.channel) != 0 or (
                consumer.inbox.qsize() != total - len(in_hand)):
            pytest.fail("the broker had not delivered every message to the consumer yet")
        stop.set()
        seen.open_all()
        async with asyncio.timeout(WAIT):
            await task
    assert seen.handled == collections.Counter(in_hand), (
        f"{len(seen.calls) - held} batches were taken after the stop")
    await consumer.channel.close()
    assert await rig.ready() == total - len(in_hand)
