"""RabbitMQ edge: connections, topology, batched consuming with late ack, dead letters."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, cast

import aio_pika
import aio_pika.exceptions
import aiormq
import aiormq.exceptions
from aio_pika.abc import AbstractChannel, AbstractConnection, DeliveryMode
from aiormq.abc import DeliveredMessage
from pamqp import commands as amqp_spec

from mlpulse import telemetry
from mlpulse.config import Settings
from mlpulse.errors import TRANSIENT_ERRORS, BrokerLost, ServiceUnavailable
from mlpulse.waiting import Backoff, first_of, stopped_within, until_port_answers
from mlpulse.wire import (
    CODE_HEADER,
    DATA_QUEUES,
    DEAD_QUEUE,
    EVENTS_EXCHANGE,
    QUEUE_HEADER,
    REASON_HEADER,
    Rejected,
)

log = logging.getLogger(__name__)

Handler = Callable[[list[DeliveredMessage]], Awaitable[None]]


async def connect(settings: Settings, role: str, *, robust: bool = True) -> AbstractConnection:
    """A connection named after the role (self-healing when `robust`), or one clear error."""
    url = str(settings.amqp_url)
    # The client logs a failed first attempt as an error of its own; the one line below
    # says the same thing with what to do about it.
    quiet = logging.getLogger("aiormq.connection")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        properties: dict[str, Any] = {"connection_name": f"mlpulse-{role}"}
        if robust:
            # The client's own reconnect waits 5 s between tries by default; a restarted
            # broker is back within a second of answering.
            return await aio_pika.connect_robust(url, client_properties=properties, timeout=10,
                                                 reconnect_interval=1)
        return await aio_pika.connect(url, client_properties=properties, timeout=10)
    except aiormq.exceptions.ProbableAuthenticationError:
        raise ServiceUnavailable(
            f"RabbitMQ at {safe_url(url)} refused the user name or password. Fix the "
            "credentials in MLPULSE_AMQP_URL (the broker's log says which was wrong)."
        ) from None
    except aiormq.exceptions.ProtocolSyntaxError:
        # The broker answered the login, then closed the connection: a vhost the user
        # may not open (or that does not exist).
        raise ServiceUnavailable(
            f"RabbitMQ at {safe_url(url)} refused to open the virtual host "
            f"{_vhost(url)!r} for this user. Create it (`rabbitmqctl add_vhost`) and grant "
            "it (`rabbitmqctl set_permissions`), or fix MLPULSE_AMQP_URL."
        ) from None
    except (TimeoutError, OSError, aio_pika.exceptions.AMQPError) as exc:
        raise ServiceUnavailable(
            f"RabbitMQ is not reachable at {safe_url(url)} ({exc.__class__.__name__}). "
            "Start it with `rabbitmq-server -detached`, or set MLPULSE_AMQP_URL."
        ) from None
    finally:
        quiet.setLevel(level)


def _vhost(url: str) -> str:
    path = urllib.parse.urlsplit(url).path
    return urllib.parse.unquote(path[1:]) if len(path) > 1 else "/"


def safe_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


async def declare_topology(channel: AbstractChannel) -> None:
    """Declare every queue and exchange the pipeline uses (idempotent, seed-compatible).

    The data queues carry no x-arguments, so a seed producer's plain
    `queue_declare(queue=..., durable=True)` agrees with them; dead letters are routed
    by the consumers themselves.
    """
    for name in (*DATA_QUEUES, DEAD_QUEUE):
        await channel.declare_queue(name, durable=True)
    await channel.declare_exchange(EVENTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)


def persistent(body: bytes, **kwargs: Any) -> aio_pika.Message:
    """A persistent JSON message."""
    return aio_pika.Message(
        body,
        delivery_mode=DeliveryMode.PERSISTENT,
        content_type="application/json",
        **kwargs,
    )


# Properties of every data message, built once: the hot paths skip per-message wrappers.
PERSISTENT_JSON = amqp_spec.Basic.Properties(
    delivery_mode=int(DeliveryMode.PERSISTENT), content_type="application/json"
)


async def raw_channel(channel: AbstractChannel) -> aiormq.Channel:
    """The aiormq channel under an aio-pika one, typed as the class it is (its abstract
    base lacks `basic_publish`'s `wait`)."""
    return cast(aiormq.Channel, await channel.get_underlay_channel())


async def publish_many(channel: AbstractChannel, routing_key: str, bodies: Iterable[bytes]) -> int:
    """Publish to a queue on the default exchange and wait for the broker's confirms."""
    raw = await raw_channel(channel)
    # Not waiting for each frame to be written (`wait=False`): with the default, every
    # publish held the channel's lock until the connection's writer had drained, so the
    # messages of a batch went out one turn of the event loop apart. The broker's
    # confirm, awaited below, is what says a message arrived.
    pending = [raw.basic_publish(b, routing_key=routing_key, properties=PERSISTENT_JSON,
                                 wait=False)
               for b in bodies]
    if pending:
        await asyncio.gather(*pending)
        telemetry.MESSAGES_OUT.labels(routing_key).inc(len(pending))
    return len(pending)


async def dead_letter(channel: AbstractChannel, source: str, rejected: Sequence[Rejected]) -> None:
    """Send what could not be processed to `mlpulse.dead`, with the reason in headers."""
    if not rejected:
        return
    exchange = channel.default_exchange
    ids = [uuid.uuid4().hex for _ in rejected]
    await asyncio.gather(
        *(
            exchange.publish(
                persistent(
                    r.payload,
                    headers={REASON_HEADER: r.reason, QUEUE_HEADER: source, CODE_HEADER: r.code},
                    message_id=message_id,
                    timestamp=time.time(),
                ),
                routing_key=DEAD_QUEUE,
            )
            for r, message_id in zip(rejected, ids, strict=True)
        )
    )
    for r, message_id in zip(rejected, ids, strict=True):
        telemetry.DEAD_LETTERED.labels(source, r.code).inc()
        log.warning("dead-lettered a message from %s: %s", source, r.reason,
                    extra={"msg_id": message_id})


async def ack_batch(messages: Sequence[DeliveredMessage]) -> None:
    """Ack a processed batch: one `multiple` ack per channel it arrived on.

    Deliveries are processed in order, so the last tag of each channel covers the batch.
    A channel that closed meanwhile has already returned its messages to the queue; they
    come back and are recognised as duplicates, so that failure is only logged.
    """
    last: dict[int, DeliveredMessage] = {}
    for m in messages:
        last[id(m.channel)] = m
    for m in last.values():
        try:
            await m.channel.basic_ack(m.delivery_tag or 0, multiple=True)
        except TRANSIENT_ERRORS as exc:
            log.warning("ack lost (%s); the broker will redeliver and they are deduplicated", exc)


class BatchConsumer:
    """Consume several queues on one channel, hand over micro-batches, ack after success."""

    def __init__(
        self,
        channel: AbstractChannel,
        queues: Sequence[str],
        handler: Handler,
        *,
        settings: Settings,
        max_bytes: int = 8 * 1024 * 1024,
    ) -> None:
        self.channel = channel
        self.queues = queues
        self.handler = handler
        self.max_messages = settings.batch_events
        self.max_bytes = max_bytes
        self.linger = settings.batch_linger_ms / 1000
        self.prefetch = settings.prefetch
        self.depth = settings.pipeline_depth
        self.unacked_gap = False
        self.lost = asyncio.Event()
        self.inbox: asyncio.Queue[DeliveredMessage] = asyncio.Queue()
        self.on_internal_error: Callable[[DeliveredMessage, Exception], Awaitable[None]]
        self.on_internal_error = self._drop_poison

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set, then finish the batches in hand and return.

        Up to `depth` batches are processed at once, so one batch's round trips (a
        publish confirm, a Redis call) overlap the next one's work. A separate task acks
        them in delivery order as each finishes, because a `multiple` ack covers every
        earlier delivery; it never waits for more messages to arrive first.
        """
        await self.channel.set_qos(prefetch_count=self.prefetch)
        # Deliveries go straight from the client's frame reader into the inbox, without a
        # per-message wrapper object: at seed-style single-event messages that overhead
        # was most of a consumer's CPU.
        raw = await self.channel.get_underlay_channel()
        tags = []
        for name in self.queues:
            await self.channel.declare_queue(name, durable=True)
            ok = await raw.basic_consume(name, self._deliver, no_ack=False)
            tags.append(str(ok.consumer_tag))
        log.info("ready: consuming %s", ", ".join(self.queues))
        self.channel.close_callbacks.add(lambda *_: self.lost.set())
        slots = asyncio.Semaphore(self.depth)
        order: asyncio.Queue[tuple[asyncio.Task[bool], list[DeliveredMessage]] | None]
        order = asyncio.Queue()
        acker = asyncio.create_task(self._ack_in_order(order, slots))
        ending = asyncio.create_task(first_of(stop, self.lost))
        try:
            while True:
                await slots.acquire()
                # No new batch after a stop; the acker only ends early on a bug, and then
                # no new work is taken either and its error is raised.
                ended = acker.done() or self.lost.is_set() or stop.is_set()
                batch = None if ended else await self._gather(ending, acker)
                if batch is None:
                    slots.release()
                    break
                order.put_nowait((asyncio.create_task(self._process(batch, stop)), batch))
        finally:
            ending.cancel()
            order.put_nowait(None)
            await acker
            if not self.lost.is_set():
                for tag in tags:
                    try:
                        await raw.basic_cancel(tag)
                    except TRANSIENT_ERRORS as exc:
                        log.debug("cancel of consumer %s failed: %s", tag, exc)
        if self.lost.is_set() and not stop.is_set():
            raise BrokerLost("the channel closed under the consumer")

    async def _deliver(self, message: DeliveredMessage) -> None:
        self.inbox.put_nowait(message)

    async def _ack_in_order(
        self,
        order: asyncio.Queue[tuple[asyncio.Task[bool], list[DeliveredMessage]] | None],
        slots: asyncio.Semaphore,
    ) -> None:
        """Ack each batch once it and every batch before it are done."""
        while (item := await order.get()) is not None:
            task, batch = item
            try:
                if await task and not self.unacked_gap:
                    await ack_batch(batch)
                else:
                    # Left for redelivery: a later `multiple` ack would cover it, so none
                    # follow; closing the channel returns them all to the queue.
                    self.unacked_gap = True
            finally:
                slots.release()

    async def _gather(self, stopping: asyncio.Task[Any],
                      acker: asyncio.Task[None]) -> list[DeliveredMessage] | None:
        getter = asyncio.ensure_future(self.inbox.get())
        await asyncio.wait({getter, stopping, acker}, return_when=asyncio.FIRST_COMPLETED)
        if not getter.done() or stopping.done() or acker.done():
            # A message taken in the same turn as the stop is left unacked: it has a later
            # delivery tag than every batch in hand, so it comes back when the channel closes.
            getter.cancel()
            return None
        batch = [getter.result()]
        if self.linger and self.inbox.qsize() < self.max_messages:
            # One timer per batch, not one per message: let the batch fill, then drain.
            await asyncio.wait({stopping}, timeout=self.linger)
        size = len(batch[0].body)
        while len(batch) < self.max_messages and size < self.max_bytes and not self.inbox.empty():
            msg = self.inbox.get_nowait()
            batch.append(msg)
            size += len(msg.body)
        return batch

    async def _process(self, batch: list[DeliveredMessage], stop: asyncio.Event) -> bool:
        """Handle a batch, retrying transient failures; False if left for redelivery."""
        telemetry.BATCH_MESSAGES.observe(len(batch))
        for queue, n in collections.Counter(m.routing_key or "" for m in batch).items():
            telemetry.MESSAGES_IN.labels(queue).inc(n)
        backoff = Backoff()
        while True:
            try:
                await self._handle(batch)
                return True
            except TRANSIENT_ERRORS as exc:
                if stop.is_set() or self.lost.is_set():
                    log.warning("stopping with a batch unfinished (%s); it comes back", exc)
                    return False
                delay = backoff.next()
                log.warning("transient error, retrying the batch in %.1fs: %r", delay, exc)
                await stopped_within(stop, delay)

    async def _handle(self, batch: list[DeliveredMessage]) -> None:
        try:
            with telemetry.BATCH_SECONDS.time():
                await self.handler(batch)
        except TRANSIENT_ERRORS:
            raise
        except Exception:
            # A bug triggered by one message must not stall the ones around it: retry
            # them one by one and set aside only the message that fails alone.
            log.exception("batch of %d failed; retrying its messages one by one", len(batch))
            for msg in batch:
                try:
                    await self.handler([msg])
                except TRANSIENT_ERRORS:
                    raise
                except Exception as exc:
                    await self.on_internal_error(msg, exc)

    async def _drop_poison(self, msg: DeliveredMessage, exc: Exception) -> None:
        reason = f"internal error while processing: {exc.__class__.__name__}: {exc}"
        await dead_letter(self.channel, msg.routing_key or "?", [Rejected("internal", reason,
                                                                           msg.body)])


async def consume_until_stopped(
    settings: Settings,
    role: str,
    stop: asyncio.Event,
    on_channel: Callable[[AbstractChannel], Awaitable[BatchConsumer]],
) -> None:
    """Connect, let the role build its consumer on a fresh channel, consume; after a
    broker outage, connect again. Unacked messages of a lost channel come back by
    themselves and are recognised as duplicates downstream.

    Between tries the role waits at most `reconnect_max_delay`, and less once the
    broker's port answers again, so joins resume within about a second of its return."""
    backoff, first = Backoff(0.5, settings.reconnect_max_delay), True
    url = settings.amqp_url
    while not stop.is_set():
        try:
            connection = await connect(settings, role, robust=False)
        except ServiceUnavailable:
            if first:
                raise
            delay = backoff.next()
            log.warning("RabbitMQ still unreachable; next try within %.1fs", delay)
            await until_port_answers(url.host or "localhost", url.port or 5672, stop, delay)
            continue
        first = False
        try:
            channel = await connection.channel(publisher_confirms=True)
            await declare_topology(channel)
            consumer = await on_channel(channel)
            await consumer.run(stop)
            backoff.reset()
        except TRANSIENT_ERRORS as exc:
            telemetry.RECONNECTS.inc()
            delay = backoff.next()
            log.warning("lost RabbitMQ (%r); reconnecting within %.1fs", exc, delay)
            await until_port_answers(url.host or "localhost", url.port or 5672, stop, delay)
        finally:
            await close_quietly(connection)


async def close_quietly(connection: AbstractConnection, seconds: float = 2.0) -> None:
    """Close a connection that may already be dead, without waiting long for a dead peer."""
    # The client raises a bare Exception for a connection that broke under it.
    with contextlib.suppress(Exception):
        async with asyncio.timeout(seconds):
            await connection.close()
