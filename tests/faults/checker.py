"""A Jepsen-style checker: what the broker confirmed, against what the metric log holds.

The producer's history says which ids were sent with which label, and which of them the
broker confirmed (both halves). After the run every confirmed id must be in the log exactly
once with its own label and `absolute_error == |y_true - y_pred|`. An id sent but never
confirmed may be missing (the broker may have lost it before confirming) but may not be
written twice or wrongly. A row for an id never sent is unexpected.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

LEADING = ["id", "y_true", "y_pred", "absolute_error"]


@dataclass
class History:
    """What the producer sent: each id with its label, and the ids the broker confirmed."""

    labels: dict[str, float] = field(default_factory=dict)
    confirmed: set[str] = field(default_factory=set)


@dataclass
class Verdict:
    """Every confirmed event classified once; rows of ids never sent listed apart."""

    events: int
    rows: int
    ok: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: dict[str, int] = field(default_factory=dict)
    wrong: dict[str, str] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)
    unconfirmed_logged: int = 0  # sent, never confirmed, and written once: allowed

    @property
    def clean(self) -> bool:
        return not (self.lost or self.duplicated or self.wrong or self.unexpected)

    def counts(self) -> str:
        return (f"events={self.events} lost={len(self.lost)} "
                f"duplicated={len(self.duplicated)} wrong={len(self.wrong)} "
                f"unexpected={len(self.unexpected)}")

    def explain(self, limit: int = 5) -> str:
        """The first few of each kind of failure, for an assertion message."""
        parts = [self.counts()]
        if self.lost:
            parts.append(f"lost e.g. {sorted(self.lost)[:limit]}")
        if self.duplicated:
            parts.append(f"duplicated e.g. {dict(list(self.duplicated.items())[:limit])}")
        if self.wrong:
            parts.append(f"wrong e.g. {dict(list(self.wrong.items())[:limit])}")
        if self.unexpected:
            parts.append(f"unexpected e.g. {self.unexpected[:limit]}")
        return "; ".join(parts)


def read_log(path: Path) -> list[list[str]]:
    """The rows of a metric log (quoted fields allowed), after checking its header."""
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        assert header is not None, f"{path} is empty"
        assert header[:4] == LEADING, f"{path} starts with {header}, not {LEADING}"
        return list(reader)


def _wrong(row: list[str], label: float) -> str | None:
    """Why a row disagrees with what was sent, or None."""
    if len(row) < len(LEADING):
        return f"malformed row {row!r}"
    try:
        y_true, y_pred, error = (float(x) for x in row[1:4])
    except ValueError:
        return f"not numbers: {row[1:4]!r}"
    if y_true != label:
        return f"y_true {row[1]} but {label!r} was sent"
    if not math.isfinite(y_pred) or error != abs(y_true - y_pred):
        return f"absolute_error {row[3]} != |{row[1]} - {row[2]}|"
    return None


def check(history: History, rows: list[list[str]]) -> Verdict:
    """Classify every confirmed event as ok, lost, duplicated or wrong; flag unexpected rows."""
    by_id: dict[str, list[list[str]]] = {}
    for row in rows:
        by_id.setdefault(row[0] if row else "", []).append(row)
    verdict = Verdict(events=len(history.confirmed), rows=len(rows))
    seen = Counter({rid: len(found) for rid, found in by_id.items()})
    for rid, found in by_id.items():
        if rid not in history.labels:
            verdict.unexpected.extend([rid] * len(found))
    for rid, label in history.labels.items():
        found = by_id.get(rid, [])
        confirmed = rid in history.confirmed
        if not found:
            if confirmed:
                verdict.lost.append(rid)
            continue
        if seen[rid] > 1:
            verdict.duplicated[rid] = seen[rid]
            continue
        why = _wrong(found[0], label)
        if why is not None:
            verdict.wrong[rid] = why
        elif confirmed:
            verdict.ok += 1
        else:
            verdict.unconfirmed_logged += 1
    return verdict
