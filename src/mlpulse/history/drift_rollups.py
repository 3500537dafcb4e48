"""Drift counts per minute in the history, so drift can be looked back on for months.

The model role adds each batch's bin counts to 60-second buckets in Redis, which expire
after an hour or so (mlpulse/drift.py). Once a minute is over (and `SETTLE` seconds more,
for batches still in flight), the metric role's sink copies its scoring-side counts
(`n`, `e`, `f<j>.<b>`, `o<j>`, `p.<b>`, `po`) into
`<history>/_drift/date=…/hour=…/f-<minute ms>-0-0.parquet`, one row per minute, version and
field. The label-side fields keep changing as labels arrive, so they are not copied: the
rows' own rollups cover the realized error.

The copy uses the history's checkpoint discipline: the minutes of a copy are recorded as
pending before its files are written, and a copy cut short is redone over the same
minutes under the same names, so a minute is never in the history twice.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlpulse.drift import COARSE_SECONDS, Reference, Thresholds, bucket_key, trend
from mlpulse.history.layout import (
    DRIFT,
    covered,
    file_name,
    partition_name,
    read_checkpoint,
    write_checkpoint,
)
from mlpulse.history.query import Scan, scan
from mlpulse.history.writer import write_parquet
from mlpulse.keys import DRIFT_VERSIONS
from mlpulse.store import Redis

log = logging.getLogger(__name__)

DRIFT_SCHEMA = pa.schema([("minute", pa.int64()), ("model_version", pa.string()),
                          ("field", pa.string()), ("value", pa.float64())])
# A minute is copied once it ended this long ago: late batches of it have landed by then.
SETTLE = 120
_KEPT = re.compile(r"^(n|e|po|o\d+|f\d+\.\d+|p\.\d+)$")
_CHECKPOINT = "_checkpoint.json"


class DriftArchive:
    """Copies complete minutes of drift counts from Redis into the history."""

    def __init__(self, root: Path) -> None:
        self.base = root / DRIFT

    def _save(self, minute: int | None, pending: dict[str, int] | None) -> None:
        write_checkpoint(self.base / _CHECKPOINT, {"minute": minute, "pending": pending})

    async def export(self, redis: Redis, now: float, keep: int) -> int:
        """Copy every complete minute not yet copied (at most the last `keep` seconds, what
        Redis still holds); returns how many rows went in."""
        doc = await asyncio.to_thread(read_checkpoint, self.base / _CHECKPOINT)
        done: int | None = doc.get("minute")
        pending: dict[str, int] | None = doc.get("pending")
        if pending:
            first, last, redo = pending["from"], pending["to"], True
        else:
            oldest = int((now - keep) // COARSE_SECONDS) * COARSE_SECONDS
            first = max(done + COARSE_SECONDS if done is not None else oldest, oldest)
            last = int((now - SETTLE) // COARSE_SECONDS) * COARSE_SECONDS - COARSE_SECONDS
            redo = False
        if last < first:
            return 0
        table = await self._read(redis, first, last)
        await asyncio.to_thread(self._write, table, first, last, done, redo)
        return len(table)

    async def _read(self, redis: Redis, first: int, last: int) -> pa.Table:
        raw: Any = await redis.zrangebyscore(DRIFT_VERSIONS, first, "+inf")
        versions = [v.decode() for v in raw]
        minutes = range(first, last + COARSE_SECONDS, COARSE_SECONDS)
        pipe = redis.pipeline(transaction=False)
        for version in versions:
            for minute in minutes:
                pipe.hgetall(bucket_key(version, COARSE_SECONDS, minute))
        replies = await pipe.execute()
        cols: dict[str, list[Any]] = {"minute": [], "model_version": [], "field": [],
                                      "value": []}
        at = 0
        for version in versions:
            for minute in minutes:
                for k, v in replies[at].items():
                    field = k.decode()
                    if _KEPT.match(field):
                        cols["minute"].append(minute)
                        cols["model_version"].append(version)
                        cols["field"].append(field)
                        cols["value"].append(float(v))
                at += 1
        return pa.table(cols, schema=DRIFT_SCHEMA)

    def _write(self, table: pa.Table, first: int, last: int, done: int | None,
               redo: bool) -> None:
        self._save(done, {"from": first, "to": last})
        name = file_name("f", (last * 1000, 0, 0))
        if len(table):
            hours = (table.column("minute").to_numpy() // 3600).astype(np.int64)
            for hour in np.unique(hours):
                folder = self.base / partition_name(int(hour))
                if redo and covered(folder, (last * 1000, 0, 0)):
                    continue
                write_parquet(folder / name, table.filter(pa.array(hours == hour)))
        self._save(last, None)


def drift_written_until(root: Path) -> float | None:
    """The end of the last minute of drift counts in the history."""
    minute = read_checkpoint(root / DRIFT / _CHECKPOINT).get("minute")
    return float(minute + COARSE_SECONDS) if isinstance(minute, int) else None


def drift_series(root: Path, since: float, until: float, step: int, version: str,
                 ref: Reference, thresholds: Thresholds) -> tuple[list[dict[str, Any]], Scan]:
    """Per step of scoring time: events, estimated MAE, and the PSI of each feature and of
    the prediction against the version's reference (None below the fewest events)."""
    step = max(COARSE_SECONDS, math.ceil(step / COARSE_SECONDS) * COARSE_SECONDS)
    tables, skipped = [], []
    for table, missed in scan(root / DRIFT, since, until, ["minute", "field", "value"],
                               DRIFT_SCHEMA, "minute", version):
        tables.append(table)
        skipped += missed
    if not tables:
        return [], Scan(pa.table({}), skipped)
    whole = pa.concat_tables(tables)
    t = pc.multiply(pc.divide(whole.column("minute"), step), step)
    grouped = pa.table({"t": t, "field": whole.column("field"),
                        "value": whole.column("value")}).group_by(
        ["t", "field"], use_threads=False).aggregate([("value", "sum")])
    totals: dict[int, dict[str, float]] = {}
    for t_, field, value in zip(grouped.column("t").to_pylist(),
                                grouped.column("field").to_pylist(),
                                grouped.column("value_sum").to_pylist(), strict=True):
        totals.setdefault(int(t_), {})[field] = value
    points = []
    for t_ in sorted(totals):
        total = totals[t_]
        n = total.get("n", 0.0)
        psis = trend(ref, [total], thresholds)
        points.append({
            "t": t_, "events": int(n),
            # No "e" field: the version has no error estimator, so no estimate (not 0).
            "estimated_mae": total["e"] / n if n and "e" in total else None,
            "prediction_psi": psis.pop("prediction")[0],
            "features": {name: values[0] for name, values in psis.items()},
        })
    return points, Scan(whole, skipped)
