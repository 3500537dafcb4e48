"""How many tasks one person may have unfinished, and submit a minute, across every gateway.

Both bounds are read and the new task recorded in one Lua call, so concurrent
submissions through several gateways cannot slip past them together. A task counts as
unfinished until its record reaches SUCCESS or FAILURE, but only for a bounded horizon
after its submission: a task whose worker was lost stops holding a place then.
"""

from __future__ import annotations

import math
from typing import Any

from fastapi import HTTPException

from mlpulse import task_queue
from mlpulse.config import Settings
from mlpulse.store import Redis

RUNNING_RETRY_AFTER = 10  # seconds: no way to know when a task will finish
MIN_HORIZON = 3600.0

# KEYS[1] the owner's task ids scored by submission time, KEYS[2] the new record.
# ARGV: per minute, max unfinished, horizon, record ttl, record-key prefix, task id,
# then the record's fields and values (none: only check).
# Record keys are built in the script, as join.lua builds its keys: one Redis, not a cluster.
# Returns {0} when admitted (or allowed), {1, seconds until a place frees} over the rate,
# {2} with too many unfinished.
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local per_minute, max_open = tonumber(ARGV[1]), tonumber(ARGV[2])
local horizon, ttl = tonumber(ARGV[3]), tonumber(ARGV[4])
local recent = redis.call('ZRANGEBYSCORE', KEYS[1], now - 60, '+inf', 'WITHSCORES',
                          'LIMIT', 0, per_minute)
if #recent / 2 >= per_minute then
  return {1, tostring(tonumber(recent[2]) + 60 - now)}
end
local open = 0
for _, id in ipairs(redis.call('ZREVRANGEBYSCORE', KEYS[1], '+inf', now - horizon)) do
  local state = redis.pcall('HGET', ARGV[5] .. id, 'state')
  if type(state) == 'string' and state ~= 'SUCCESS' and state ~= 'FAILURE' then
    open = open + 1
    if open >= max_open then return {2} end
  end
end
if #ARGV > 6 then
  redis.call('HSET', KEYS[2], unpack(ARGV, 7))
  redis.call('EXPIRE', KEYS[2], ttl)
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
  redis.call('ZADD', KEYS[1], now, ARGV[6])
  redis.call('EXPIRE', KEYS[1], ttl)
end
return {0}
"""


def horizon(settings: Settings) -> float:
    """How long after its submission an unfinished task still holds a place."""
    return max(MIN_HORIZON, 2 * settings.task_hard_limit)


async def admit(redis: Redis, settings: Settings, user: str,
                record: dict[str, str] | None = None) -> None:
    """Record the new task if `user` is within both bounds; 429 otherwise.

    Without a record, only check: an upload is refused before its body is read."""
    task_id = record["id"] if record else ""
    args: list[Any] = [settings.tasks_per_minute, settings.tasks_max_running,
                       horizon(settings), task_queue.RECORD_TTL, task_queue.record_key(""), task_id]
    for field, value in (record or {}).items():
        args.extend((field, value))
    script = redis.register_script(_ADMIT)
    verdict = await script(keys=[task_queue.owner_key(user), task_queue.record_key(task_id)],
                           args=args)
    if int(verdict[0]) == 1:
        wait = max(1, math.ceil(float(verdict[1])))
        raise HTTPException(429, f"You submitted {settings.tasks_per_minute} tasks in the "
                                 "last minute, the most one person may "
                                 f"(MLPULSE_TASKS_PER_MINUTE); try again in {wait} s.",
                            headers={"Retry-After": str(wait)})
    if int(verdict[0]) == 2:
        raise HTTPException(429, f"You have {settings.tasks_max_running} unfinished tasks, "
                                 "the most one person may (MLPULSE_TASKS_MAX_RUNNING); "
                                 "try again once one has finished.",
                            headers={"Retry-After": str(RUNNING_RETRY_AFTER)})
