"""The relay: an exclusive queue on `mlpulse.events`, routed to everyone or to one user."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aio_pika
import orjson
from aio_pika.abc import AbstractConnection
from aiormq.abc import DeliveredMessage
from prometheus_client import Counter, Histogram

from mlpulse import keys
from mlpulse.broker import close_quietly, connect
from mlpulse.config import Settings
from mlpulse.errors import TRANSIENT_ERRORS, ServiceUnavailable
from mlpulse.gateway.auth import USER_NAME
from mlpulse.gateway.hub import Hub
from mlpulse.store import Redis, load_script
from mlpulse.waiting import Backoff, first_of, stopped_within, until_port_answers
from mlpulse.wire import EVENTS_EXCHANGE

log = logging.getLogger(__name__)

RELAYED = Counter("mlpulse_gateway_relayed_total", "Events relayed from RabbitMQ", ["route"])
LAG = Histogram("mlpulse_gateway_relay_lag_seconds", "From an event's ts to the gateway",
                buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
RELAYED_BROADCAST, RELAYED_USER = RELAYED.labels("broadcast"), RELAYED.labels("user")
RELAY_SECONDS = Counter("mlpulse_gateway_relay_cpu_seconds_total",
                        "CPU time spent parsing and routing events (not writing them)")
HISTORY_KEEP = 50
HISTORY_TTL = 7 * 86400
# Users' messages held while Redis is away, at most.
UNSAVED_MAX = 10_000


async def read_history(redis: Redis, user: str, limit: int = 20) -> list[str]:
    """A user's latest own messages, oldest first."""
    raw: list[bytes] = await redis.zrange(keys.history(user), -limit, -1)  # type: ignore[assignment]
    return [r.decode() for r in raw]


class Relay:
    """Turns events on the exchange into hub deliveries."""

    def __init__(self, settings: Settings, hub: Hub, redis: Redis) -> None:
        self.settings = settings
        self.hub = hub
        self.redis = redis
        self.ready = asyncio.Event()
        self.inbox: list[tuple[str, bytes]] = []
        self.unsaved: list[tuple[str, str, float]] = []
        self.unsaved_event = asyncio.Event()
        self.store_history = redis.register_script(load_script("history.lua"))
        self.connection: AbstractConnection | None = None

    def connected(self) -> bool:
        """Whether the relay's broker connection is up right now."""
        return self.connection is not None and not self.connection.is_closed

    async def on_message(self, message: DeliveredMessage) -> None:
        """Take one event; events are routed together, once a turn of the event loop."""
        self.inbox.append((message.routing_key or "", message.body))
        if len(self.inbox) == 1:
            asyncio.get_running_loop().call_soon(self.route)

    def route(self) -> None:
        """Route every event taken since the last call; anything malformed is logged and
        skipped. The hub then writes them all to each socket in one go."""
        started = time.thread_time()
        batch, self.inbox = self.inbox, []
        now = time.time()
        for key, body in batch:
            try:
                doc: Any = orjson.loads(body)
            except orjson.JSONDecodeError:
                log.warning("relay: skipped a non-JSON event on %r", key)
                continue
            if not isinstance(doc, dict) or "type" not in doc:
                log.warning("relay: skipped an event without a type on %r", key)
                continue
            ts = doc.get("ts")
            if isinstance(ts, int | float):
                LAG.observe(max(0.0, now - ts))
            if key == "broadcast":
                RELAYED_BROADCAST.inc()
                self.hub.broadcast(body)
            elif key.startswith("user.") and USER_NAME.match(key[5:]):
                user = key[5:]
                RELAYED_USER.inc()
                self.hub.send_to(user, body)
                self.unsaved.append((user, body.decode(), float(ts) if isinstance(ts, int | float)
                                     else now))
                self.unsaved_event.set()
        RELAY_SECONDS.inc(time.thread_time() - started)

    async def keep_history(self, stop: asyncio.Event) -> None:
        """Store users' own messages in Redis, many per round trip, until `stop`; what is
        still unsaved then is stored before this returns."""
        backoff = Backoff(0.2, self.settings.reconnect_max_delay)
        while not stop.is_set():
            await first_of(self.unsaved_event, stop)
            self.unsaved_event.clear()
            if await self._store_unsaved():
                backoff.reset()
                await asyncio.sleep(0.05)  # gather the next burst into one round trip
            else:
                await stopped_within(stop, backoff.next())
        await self._store_unsaved()

    async def _store_unsaved(self) -> bool:
        """One script call for everything unsaved; False (and kept) if Redis is away."""
        batch, self.unsaved = self.unsaved, []
        if not batch:
            return True
        # One script call per burst: a pipelined command per message cost the event loop
        # more than the deliveries did (a reply and a timeout to parse each).
        args: list[str | float] = [keys.HISTORY, HISTORY_KEEP, HISTORY_TTL]
        for user, payload, score in batch:
            args.extend((user, score, payload))
        try:
            await self.store_history(args=args)
        except TRANSIENT_ERRORS as exc:
            # Kept for the next try, the newest past a bound: a long outage must not grow
            # the gateway without limit.
            self.unsaved = (batch + self.unsaved)[-UNSAVED_MAX:]
            self.unsaved_event.set()
            log.warning("relay: %d history entries not stored yet (%r)", len(batch), exc)
            return False
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop`; after a broker outage, connect and bind again, within
        `reconnect_max_delay` and at once when the broker's port answers again."""
        backoff = Backoff(0.5, self.settings.reconnect_max_delay)
        url = self.settings.amqp_url
        while not stop.is_set():
            try:
                await self._consume(stop)
                backoff.reset()
            except ServiceUnavailable:
                if not self.ready.is_set():
                    raise
                log.warning("relay: RabbitMQ unreachable; trying again")
            except TRANSIENT_ERRORS as exc:
                log.warning("relay: lost RabbitMQ (%r); reconnecting", exc)
            if not stop.is_set():
                await until_port_answers(url.host or "localhost", url.port or 5672, stop,
                                         backoff.next())

    async def _consume(self, stop: asyncio.Event) -> None:
        connection = self.connection = await connect(self.settings, "gateway", robust=False)
        try:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=1000)
            exchange = await channel.declare_exchange(
                EVENTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
            queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
            await queue.bind(exchange, "broadcast")
            await queue.bind(exchange, "user.*")
            # Deliveries go straight to routing, without a per-message wrapper object.
            raw = await channel.get_underlay_channel()
            await raw.basic_consume(queue.name, self.on_message, no_ack=True)
            log.info("relay: bound %s to %s", queue.name, EVENTS_EXCHANGE)
            self.ready.set()
            closed = asyncio.Event()
            channel.close_callbacks.add(lambda *_: closed.set())
            await first_of(stop, closed)
            if closed.is_set() and not stop.is_set():
                raise ConnectionError("the relay's channel closed")
        finally:
            await close_quietly(connection)
