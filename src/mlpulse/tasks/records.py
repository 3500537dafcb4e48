"""The worker's side of task records: state changes, progress, and telling the owner."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import orjson
import redis
from kombu.entity import Exchange, Queue

from mlpulse import task_queue
from mlpulse.tasks.app import app, settings
from mlpulse.wire import EVENTS_EXCHANGE, Y_TRUE

log = logging.getLogger(__name__)

EVENTS = Exchange(EVENTS_EXCHANGE, type="topic", durable=True)
# Declared exactly as the pipeline declares it, so either side may come first.
Y_TRUE_QUEUE = Queue(Y_TRUE, exchange="", routing_key=Y_TRUE, durable=True)
PROGRESS_EVERY_MS = 900

# Update a record unless it has reached a final state; nothing if it does not exist.
# Reaching SUCCESS completes its progress (a task without rows counts as one step).
_UPDATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'SUCCESS' or state == 'FAILURE' then
  return {0, redis.call('HGETALL', KEYS[1])}
end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
-- A finished task's progress is complete: all of its rows, or its one step.
if redis.call('HGET', KEYS[1], 'state') == 'SUCCESS' then
  local total = math.max(tonumber(redis.call('HGET', KEYS[1], 'total') or '0') or 0, 1)
  redis.call('HSET', KEYS[1], 'done', total, 'total', total)
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
return {1, redis.call('HGETALL', KEYS[1])}
"""

_client: redis.Redis | None = None
_update_script: Any = None


def client() -> redis.Redis:
    """This process's Redis client (made after the pool forks)."""
    global _client
    if _client is None:
        _client = redis.Redis.from_url(str(settings.redis_url), health_check_interval=30)
    return _client


def _encode(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return str(value)


def update(task_id: str, *, tell: bool = True, **fields: Any) -> dict[str, Any] | None:
    """Change a record and tell its owner; a record in a final state stays as it is."""
    args: list[Any] = [task_queue.RECORD_TTL]
    for name, value in fields.items():
        args.extend((name, _encode(value)))
    global _update_script
    if _update_script is None:
        _update_script = client().register_script(_UPDATE)  # sent once, then by its hash
    found = _update_script(keys=[task_queue.record_key(task_id)], args=args)
    if not found:
        return None
    changed, flat = found
    record = task_queue.parse_record(dict(zip(flat[::2], flat[1::2], strict=True)))
    if changed and tell and record.get("owner"):
        publish(f"user.{record['owner']}", task_queue.event(record), exchange=EVENTS)
    return record


def progress(task_id: str, done: int, total: int) -> None:
    """Record rows done of total; the owner hears of it about once a second."""
    tell = bool(client().set(f"{task_queue.record_key(task_id)}:tick", 1, nx=True,
                             px=PROGRESS_EVERY_MS))
    update(task_id, tell=tell, state="PROGRESS", done=done, total=total)


def publish(routing_key: str, body: bytes, exchange: Exchange | str = "",
            declare: Iterable[Exchange | Queue] = ()) -> None:
    """Publish one persistent JSON message and wait for the broker's confirm."""
    with app.producer_or_acquire() as producer:
        producer.publish(
            body, exchange=exchange, routing_key=routing_key,
            content_type="application/json", content_encoding="utf-8", delivery_mode=2,
            declare=[exchange] if isinstance(exchange, Exchange) else list(declare),
            retry=True, retry_policy={"max_retries": 5, "interval_start": 0.2,
                                      "interval_step": 0.5, "interval_max": 2},
        )

