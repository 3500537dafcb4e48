"""Silences: label matchers that keep alerts' notifications quiet for a while.

As in Alertmanager, a silence matches an alert when each of its matchers equals one of the
alert's labels (`alertname` is the rule's name). It holds back notifications, never states
or history. A silence starts when it is made and is kept in `mlpulse:alerts:silences`
(id -> JSON) until it ends; one that has ended is ignored, and deleted by the next reader.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from mlpulse.alerts.rules import Number
from mlpulse.keys import PREFIX
from mlpulse.store import Redis

log = logging.getLogger(__name__)

SILENCES = PREFIX + "alerts:silences"
MAX_DURATION = 30 * 86400
# An alert has a handful of labels; a silence naming more than this is a mistake.
MAX_MATCHERS = 20
LABEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")  # Prometheus's label names
LABEL_VALUE = re.compile(r"[^\x00-\x1f\x7f-\x9f]{1,128}")


class SilenceRequest(BaseModel):
    """What an admin asks for: exact label matches, for `duration` seconds from now."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    matchers: dict[str, str]
    duration: Number = Field(ge=1, le=MAX_DURATION)
    comment: str = Field("", max_length=500)

    @field_validator("matchers")
    @classmethod
    def _matchers(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError("must name at least one label, e.g. {\"alertname\": \"NoEvents\"}")
        if len(value) > MAX_MATCHERS:
            raise ValueError(f"at most {MAX_MATCHERS} labels")
        for name, wanted in value.items():
            if not LABEL_NAME.fullmatch(name):
                raise ValueError(f"{name[:64]!r} is not a label name (a letter or _, then "
                                 "letters, digits or _)")
            if not LABEL_VALUE.fullmatch(wanted):
                raise ValueError(f"the value of {name} must be 1 to 128 characters")
        return value


@dataclass(frozen=True, slots=True)
class Silence:
    """One silence as stored and shown."""

    id: str
    matchers: dict[str, str]
    starts_at: float
    ends_at: float
    by: str
    comment: str

    def matches(self, labels: dict[str, str]) -> bool:
        """Whether every matcher equals the alert's label of that name."""
        return all(labels.get(name) == wanted for name, wanted in self.matchers.items())

    def doc(self) -> dict[str, Any]:
        """The silence as JSON holds it."""
        return asdict(self)


def silenced(silences: list[Silence], labels: dict[str, str]) -> bool:
    """Whether any of `silences` matches an alert with these labels."""
    return any(s.matches(labels) for s in silences)


async def add_silence(redis: Redis, request: SilenceRequest, by: str,
                      now: float | None = None) -> Silence:
    """Store a silence that starts now."""
    now = time.time() if now is None else now
    silence = Silence(uuid.uuid4().hex, dict(request.matchers), now, now + request.duration,
                      by, request.comment)
    await redis.hset(SILENCES, silence.id, orjson.dumps(silence.doc()))
    log.info("silence %s by %s for %d s: %s", silence.id, by, request.duration,
             request.matchers)
    return silence


async def active_silences(redis: Redis, now: float | None = None) -> list[Silence]:
    """The silences that have not ended, soonest to end first; ended ones are deleted."""
    now = time.time() if now is None else now
    raw: Any = await redis.hgetall(SILENCES)
    active, ended = [], []
    for key, value in raw.items():
        try:
            silence = Silence(**orjson.loads(value))
        except (orjson.JSONDecodeError, TypeError) as exc:  # written by nothing of ours
            log.warning("silence %s cannot be read, ignored: %r", key.decode(), exc)
            continue
        if now < silence.ends_at:
            active.append(silence)
        else:
            ended.append(key)
    if ended:
        # A silence never changes once made, so deleting an ended one races with nothing.
        await redis.hdel(SILENCES, *ended)
    return sorted(active, key=lambda s: s.ends_at)


async def expire_silence(redis: Redis, silence_id: str, now: float | None = None) -> bool:
    """End a silence now; False when there is no such silence (or it has ended)."""
    if not any(s.id == silence_id for s in await active_silences(redis, now)):
        return False
    return bool(await redis.hdel(SILENCES, silence_id))
