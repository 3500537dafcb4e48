"""Changes in the error level: River's ADWIN per model version, fed by the CSV sink.

The detector sees every joined row once, in log order: the sink hands it each outbox entry
once the entry's rows are all on disk, and keeps the entry in the outbox until the
detector's state, saved in Redis with the position it has read through and the changes
it found, covers it. After a kill -9 the detector starts from its saved state and reads
the entries after its position again, so a change is neither lost nor reported twice.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass
from typing import Any

import orjson
from river.drift import ADWIN

from mlpulse import keys, telemetry
from mlpulse.keys import JOINED
from mlpulse.store import Redis

log = logging.getLogger(__name__)

# ADWIN's confidence: a smaller delta asks for stronger evidence before a change.
DELTA = 0.002
CHANGES_KEPT = 100
STATE_FORMAT = 1


@dataclass(slots=True)
class Change:
    """One detected change of a version's error level."""

    version: str
    at: float
    before: float
    after: float

    def doc(self) -> dict[str, float]:
        return {"at": self.at, "before": self.before, "after": self.after}


class ErrorChanges:
    """One ADWIN per model version over the absolute errors of joined rows."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.detectors: dict[str, ADWIN] = {}
        self.pos: str | None = None  # the last outbox entry fed, "" before any
        self.fed: dict[str, int] = {}  # errors fed per version, saved with the detectors

    async def load(self) -> None:
        """Take up the saved state, or start afresh at the next entry written."""
        raw: Any = await self.redis.get(keys.CHANGES_STATE)
        self.detectors, self.pos, self.fed = {}, "", {}
        if raw is None:
            return
        try:
            state = pickle.loads(raw)  # noqa: S301 - written only by this class, in our Redis
            if state["format"] != STATE_FORMAT:
                raise ValueError(f"state format {state['format']}")
            self.detectors, self.pos = state["detectors"], state["pos"]
            self.fed = state["fed"]
        except Exception as exc:  # a state from another release of River, say
            log.warning("the error-change detectors start afresh: their saved state is "
                        "unreadable (%r)", exc)

    def feed(self, entries: list[tuple[Any, dict[bytes, bytes]]]) -> list[Change]:
        """Run the detectors over outbox entries, in order; the changes they report."""
        changes: list[Change] = []
        for _entry, fields in entries:
            at = float(fields[b"at"])
            for _rid, t, p, version, _t_ts, _p_ts in orjson.loads(fields[b"rows"]):
                detector = self.detectors.get(version)
                if detector is None:
                    detector = self.detectors[version] = ADWIN(delta=DELTA)
                self.fed[version] = self.fed.get(version, 0) + 1
                width, level = detector.width, detector.estimation
                detector.update(abs(float(t) - float(p)))
                if detector.drift_detected:
                    # The window before the update, less what ADWIN kept, is the old level.
                    kept, after = detector.width, detector.estimation
                    dropped = width + 1 - kept
                    total = level * width + abs(float(t) - float(p))
                    before = (total - after * kept) / dropped if dropped > 0 else level
                    changes.append(Change(version, at, before, after))
        return changes

    async def observe(self, after: str | None, through: str,
                      in_hand: list[tuple[Any, dict[bytes, bytes]]]) -> None:
        """Feed every entry up to `through` not yet fed, and save.

        `in_hand` are the entries just written, which follow `after`; when the detectors
        stopped elsewhere (a restart, a failed save), the gap is read from the outbox."""
        if self.pos is None:
            await self.load()
        if self.pos == through:
            return
        entries: Any = in_hand
        if self.pos == "":
            # Nothing saved yet: every entry still in the outbox is on disk, and none is
            # trimmed before the detector has read it, so start from the first. (A kill
            # between the first write and the first save would otherwise lose those.)
            entries = await self.redis.xrange(JOINED, "-", through)
        elif self.pos != after:
            entries = await self.redis.xrange(JOINED, f"({self.pos}", through)
        changes = self.feed(entries)
        state = pickle.dumps({"format": STATE_FORMAT, "detectors": self.detectors,
                              "pos": through, "fed": self.fed})
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(keys.CHANGES_STATE, state)
        for c in changes:
            pipe.rpush(keys.changes(c.version), orjson.dumps(c.doc()))
            pipe.ltrim(keys.changes(c.version), -CHANGES_KEPT, -1)
        try:
            await pipe.execute()
        except BaseException:
            # What was fed is not saved: feed it again from the saved state next time.
            self.pos = None
            raise
        self.pos = through
        for c in changes:
            telemetry.ERROR_CHANGES.labels(c.version).inc()
            log.warning("the error level of %s changed at %.3f: %.2f -> %.2f", c.version,
                        c.at, c.before, c.after)

    def holds(self) -> str | None:
        """The outbox entry the sink must keep (the last one fed), or None for no limit."""
        return self.pos or None

