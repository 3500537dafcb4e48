"""`mlpulse alerts`: the evaluator and its notification sender, in one process.

It is a role of its own rather than a task inside another: it depends on neither Beat nor
the plot role, stops and scales without touching the pipeline or the web server, and a
second copy is a ready standby (the lease in Redis lets one evaluate at a time).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import aio_pika
import aio_pika.exceptions
import kombu.exceptions
import orjson
from aio_pika.abc import AbstractChannel

from mlpulse.alerts.evaluator import LEASE, OUTBOX, Evaluator, run_evaluator
from mlpulse.alerts.rules import Webhook
from mlpulse.alerts.webhooks import alertmanager_payload, notification
from mlpulse.broker import close_quietly, connect, declare_topology
from mlpulse.config import Settings
from mlpulse.errors import TRANSIENT_ERRORS
from mlpulse.store import Redis, connect_redis
from mlpulse.task_queue import ALERTS_QUEUE, DELIVER_TASK, make_celery
from mlpulse.waiting import every
from mlpulse.wire import EVENTS_EXCHANGE

log = logging.getLogger(__name__)

SEND_SECONDS = 0.5
SEND_BATCH = 50
# The broker or the Celery connection away for now: what is unsent stays for next time.
SEND_LATER: tuple[type[BaseException], ...] = (*TRANSIENT_ERRORS, kombu.exceptions.KombuError,
                                               aio_pika.exceptions.AMQPError)
TRIM = """
if redis.call("GET", KEYS[1]) ~= ARGV[1] then return 0 end
redis.call("LTRIM", KEYS[2], tonumber(ARGV[2]), -1)
return 1
"""
RELEASE = """
if redis.call("GET", KEYS[1]) == ARGV[1] then redis.call("DEL", KEYS[1]) end
return 1
"""


class Sender:
    """Sends the outbox in order while this process holds the lease: dashboard messages to
    the events exchange, webhooks as Celery tasks, then takes them off the outbox."""

    def __init__(self, redis: Redis, channel: AbstractChannel, celery: Any,
                 evaluator: Evaluator) -> None:
        self.redis = redis
        self.channel = channel
        self.celery = celery
        self.evaluator = evaluator
        self._trim = redis.register_script(TRIM)

    async def step(self) -> None:
        if not self.evaluator.active:
            return
        raw: Any = await self.redis.lrange(OUTBOX, 0, SEND_BATCH - 1)
        if not raw:
            return
        done = 0
        try:
            exchange = await self.channel.get_exchange(EVENTS_EXCHANGE)
            for item in raw:
                try:
                    note = orjson.loads(item)
                    if note["kind"] == "dashboard":
                        await self._dashboard(exchange, note)
                    else:
                        await asyncio.to_thread(self._webhook, note)
                except SEND_LATER:
                    raise
                except Exception:  # one entry that cannot be sent must not block the rest
                    log.exception("alert notification set aside: %r", item[:200])
                done += 1
        except SEND_LATER as exc:
            log.warning("alert notifications wait for the broker (%r); %d sent", exc, done)
        finally:
            # Only what was sent, and only while this process holds the lease: a crash
            # before this sends them again (webhooks with the same key), and a process
            # that lost the lease never takes off what its successor has not sent.
            if done:
                await self._trim(keys=[LEASE, OUTBOX], args=[self.evaluator.me, done])

    async def _dashboard(self, exchange: Any, note: dict[str, Any]) -> None:
        body = orjson.dumps({"type": "alert", "ts": time.time(), "data": note["alert"]})
        users = note.get("users")
        for key in ([f"user.{u}" for u in users] if users else ["broadcast"]):
            await exchange.publish(aio_pika.Message(body, content_type="application/json"),
                                   routing_key=key, mandatory=False)

    def _webhook(self, note: dict[str, Any]) -> None:
        alert = note["alert"]
        payload = alertmanager_payload([alert], alert["status"], "webhook",
                                       self.evaluator.settings.public_url)
        hook = Webhook.model_validate({"url": note["url"], "secret_env": note["secret_env"]})
        self.celery.send_task(DELIVER_TASK, args=[notification(note["key"], hook, payload)],
                              queue=ALERTS_QUEUE)


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Evaluate and send until `stop`."""
    async with contextlib.AsyncExitStack() as stack:
        redis = await connect_redis(settings)
        stack.push_async_callback(redis.aclose)
        evaluator = Evaluator(redis, settings)
        log.info("%d alert rules, %d webhook receivers", len(evaluator.ruleset.rules),
                 len(evaluator.ruleset.webhooks))
        connection = await connect(settings, "alerts")
        stack.push_async_callback(close_quietly, connection)
        channel = await connection.channel()
        await declare_topology(channel)
        celery = make_celery(settings)
        stack.callback(celery.close)
        sender = Sender(redis, channel, celery, evaluator)
        async with asyncio.TaskGroup() as group:
            group.create_task(run_evaluator(evaluator, stop), name="evaluator")
            group.create_task(every(SEND_SECONDS, stop, sender.step, "alert sender"),
                              name="sender")
            log.info("ready")
        # A clean stop hands the lease over at once instead of letting it lapse.
        with contextlib.suppress(*TRANSIENT_ERRORS):
            await redis.eval(RELEASE, 1, LEASE, evaluator.me)
