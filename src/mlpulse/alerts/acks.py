"""Acknowledgements: an admin says an active alert is being looked at.

The acknowledgement is written on the alert's state (`acked_by`, `acked_at`) and changes
no notification. It lasts for the episode: an alert that resolves and fires again starts
unacknowledged. commit.lua keeps one that lands while an evaluation is under way.
"""

from __future__ import annotations

import logging
import re
import time
from importlib import resources
from typing import Any

import orjson

from mlpulse.alerts.evaluator import ACTIVE
from mlpulse.store import Redis

log = logging.getLogger(__name__)

FINGERPRINT = re.compile(r"[0-9a-f]{16}")  # evaluator.fingerprint


async def acknowledge(redis: Redis, fingerprint: str, user: str,
                      now: float | None = None) -> dict[str, Any] | None:
    """Mark the active alert `fingerprint` acknowledged by `user`; its state, or None when
    no alert is active under that fingerprint."""
    if not FINGERPRINT.fullmatch(fingerprint):
        return None
    now = time.time() if now is None else now
    script = redis.register_script(
        resources.files("mlpulse.alerts").joinpath("ack.lua").read_text())
    raw: Any = await script(keys=[ACTIVE], args=[fingerprint, user, repr(now)])
    if raw is None:
        return None
    log.info("alert %s acknowledged by %s", fingerprint, user)
    state: dict[str, Any] = orjson.loads(raw)
    return state
