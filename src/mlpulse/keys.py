"""The Redis key layout: every key mlpulse keeps, all under `mlpulse:`.

Scripts get their keys from here as KEYS; a key named per id, per second or per user is
built in a script from a prefix given here.
"""

from __future__ import annotations

import socket

PREFIX = "mlpulse:"

# Join state (pipeline/joiner, join.lua, sweep.lua): halves waiting by side ("t", "p"),
# their deadlines, and a marker per joined id, kept in small hashes per generation of
# half the done TTL (done:<generation>:<shards>:<shard>, and done:meta; see join.lua).
DONE = PREFIX + "done:"


def pending(side: str) -> str:
    """Halves of one side waiting for their partner: id → "value\\nversion\\nmeta"."""
    return f"{PREFIX}pending:{side}"


def deadline(side: str) -> str:
    """When each waiting half of one side expires unmatched."""
    return f"{PREFIX}deadline:{side}"


# Live aggregates, the outbox of joined rows, and what people see.
AGG = PREFIX + "agg"
HIST = PREFIX + "hist"
HIST_META = PREFIX + "hist:meta"
BY_VERSION = PREFIX + "by_version"
JOINED = PREFIX + "joined"
VERSION = PREFIX + "version"
RECENT = PREFIX + "recent"
SECOND = PREFIX + "sec:"
PLOT_DRAWN = PREFIX + "plot:drawn"

# Keys in the order join.lua and sweep.lua take them.
JOIN_KEYS = (pending("t"), pending("p"), deadline("t"), deadline("p"), JOINED, AGG, HIST,
             HIST_META, BY_VERSION, RECENT, VERSION)
SWEEP_KEYS = (pending("t"), pending("p"), deadline("t"), deadline("p"), AGG, VERSION)

# Early warning (mlpulse/drift.py, drift.lua, join.lua): bin counts per version and time
# bucket, the versions seen and when, and the error-level change detector's state.
DRIFT = PREFIX + "drift:"
DRIFT_VERSIONS = PREFIX + "drift:versions"
CHANGES_STATE = PREFIX + "changes:state"
# Per-minute counts of joined pairs, expired halves and rejected messages (alert rates).
RATES = PREFIX + "rates:"
RATES_TTL = 25 * 3600
CHANGES = PREFIX + "changes:"


def changes(version: str) -> str:
    """The error-level changes detected for one version, oldest first."""
    return f"{CHANGES}{version}"


HEARTBEAT = PREFIX + "heartbeat:"


def heartbeat(role: str, host: str | None = None) -> str:
    """One host's heartbeat for a role."""
    return f"{HEARTBEAT}{role}:{host or socket.gethostname()}"


def deployed(version: str) -> str:
    """Set once when a model version goes live, so one announcement goes out."""
    return f"{PREFIX}deployed:{version}"


HISTORY = PREFIX + "history:"


def history(user: str) -> str:
    """A user's own recent messages, for the gateway to replay."""
    return f"{HISTORY}{user}"


TASK = PREFIX + "task:"


def task(task_id: str) -> str:
    """The record of one task."""
    return f"{TASK}{task_id}"


def tasks_of(user: str) -> str:
    """The ids of one user's tasks, scored by submission time."""
    return f"{PREFIX}tasks:{user}"


# Third-party labels pulled by Beat.
LABELS_CURSOR = PREFIX + "labels:cursor"
LABELS_CSV_ROWS = PREFIX + "labels:csv_rows"
LABELS_LOCK = PREFIX + "labels:lock"
