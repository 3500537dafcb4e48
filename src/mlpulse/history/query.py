"""Reading the history back: rows of a time range, series by step, and error summaries.

Only the hour partitions a range touches are opened, and only the columns asked for are
read. Short ranges are answered from the rows (quantiles exact); long ones from the
per-minute rollups, so a week costs about 10,000 minutes whatever the event rate (counts,
MAE, RMSE and max still exact, quantiles within one 4.4 % bin). A file that cannot be read
is skipped with a warning, and every answer says how many were skipped, so a partial
answer is never passed off as a whole one.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mlpulse.history import rollup
from mlpulse.history.layout import (
    CHECKPOINT,
    ROLLUP_SCHEMA,
    ROLLUPS,
    ROW_SCHEMA,
    files,
    parse_pos,
    partitions,
    read_checkpoint,
)

log = logging.getLogger(__name__)

# Ranges up to this long are answered from the rows, longer ones from the rollups.
ROWS_RANGE = 2 * 3600
# Rows are never read for a range longer than this (one request must stay cheap).
ROWS_RANGE_LIMIT = 24 * 3600
MAX_POINTS = 10_000
STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600,
         43200, 86400, 604800)
# Points a series aims at when no step is asked for.
TARGET_POINTS = 240
Q = 0.95
_RETRIES = 3
_BATCH = 1 << 16

FloatArray = np.ndarray[Any, np.dtype[np.float64]]


class RangeError(ValueError):
    """A range or step that cannot be answered as asked (the message says why)."""


@dataclass
class Scan:
    """What a read found, and which files it had to skip."""

    table: pa.Table
    skipped: list[str] = field(default_factory=list)


def _read_file(path: Path, want: _Want, skipped: list[str]) -> pa.Table | None:
    """The rows of one file in the range (reading only the row groups that may hold some),
    or None if it has none or cannot be read."""
    try:
        with pq.ParquetFile(path, read_dictionary=["model_version"]) as pf:
            groups = _row_groups(pf, want)
            if not groups:
                return None
            # A batch at a time, keeping only its rows in range: the peak is what is kept
            # and one batch, not the whole file.
            kept = [_in_range(batch, want) for batch in pf.iter_batches(
                batch_size=_BATCH, row_groups=groups, columns=want.read)]
    except FileNotFoundError:
        raise
    except (OSError, pa.ArrowException, KeyError) as exc:
        log.warning("history: skipping %s, which cannot be read: %s", path, exc)
        skipped.append(str(path))
        return None
    if not kept:
        return None
    table = pa.Table.from_batches(kept)
    # model_version is read as a dictionary; every other column as the schema says.
    return table.cast(pa.schema([table.schema.field(c) if c == "model_version"
                                 else want.schema.field(c) for c in want.columns]))


def _in_range(batch: pa.RecordBatch, want: _Want) -> pa.RecordBatch:
    t = batch.column(want.time_column)
    keep = pc.and_(pc.greater_equal(t, want.since), pc.less(t, want.until))
    if want.version is not None:
        keep = pc.and_(keep, pc.equal(batch.column("model_version").cast(pa.string()),
                                      want.version))
    return batch.filter(keep).select(want.columns)


@dataclass(frozen=True)
class _Want:
    """What a scan reads: the columns it returns, the range, the version."""

    columns: list[str]
    schema: pa.Schema
    time_column: str
    since: float
    until: float
    version: str | None

    @property
    def read(self) -> list[str]:
        return list(dict.fromkeys([*self.columns, self.time_column]
                                  + (["model_version"] if self.version is not None else [])))


def _row_groups(pf: pq.ParquetFile, want: _Want) -> list[int]:
    """The row groups whose time statistics overlap the range (all, without statistics)."""
    md = pf.metadata
    index = pf.schema_arrow.get_field_index(want.time_column)
    groups = []
    for i in range(md.num_row_groups):
        stats = md.row_group(i).column(index).statistics if index >= 0 else None
        if (stats is None or not stats.has_min_max
                or (stats.max >= want.since and stats.min < want.until)):
            groups.append(i)
    return groups


def scan(base: Path, since: float, until: float, columns: list[str], schema: pa.Schema,
         time_column: str, version: str | None) -> Iterator[tuple[pa.Table, list[str]]]:
    """Per hour partition touching [since, until): its rows in range, and files skipped."""
    want = _Want(columns, schema, time_column, since, until, version)
    for p in partitions(base, since, until):
        for attempt in range(_RETRIES):
            skipped: list[str] = []
            try:
                live, _ = files(p.path)
                tables = [t for f in live if (t := _read_file(f, want, skipped)) is not None]
                break
            except FileNotFoundError:
                # Compaction replaced a file between listing and reading: list again.
                if attempt == _RETRIES - 1:
                    raise
        if tables:
            yield pa.concat_tables(tables, promote_options="permissive"), skipped
        elif skipped:
            yield pa.Table.from_batches([], schema=pa.schema(
                [schema.field(c) for c in columns])), skipped


def read_rows(root: Path, since: float, until: float, columns: list[str],
              version: str | None = None) -> Scan:
    """The rows joined in [since, until), with the columns asked for."""
    tables, skipped = [], []
    for table, missed in scan(root, since, until, columns, ROW_SCHEMA, "joined_at", version):
        tables.append(table)
        skipped += missed
    if not tables:
        return Scan(pa.Table.from_batches([], schema=pa.schema(
            [ROW_SCHEMA.field(c) for c in columns])), skipped)
    return Scan(pa.concat_tables(tables, promote_options="permissive"), skipped)


def iter_rows(root: Path, since: float, until: float,
              version: str | None = None) -> Iterator[tuple[pa.Table, list[str]]]:
    """Every column of the rows joined in [since, until), an hour at a time."""
    yield from scan(root, since, until, list(ROW_SCHEMA.names), ROW_SCHEMA, "joined_at",
                     version)


def read_rollups(root: Path, since: float, until: float, version: str | None = None,
                 with_version: bool = False) -> Scan:
    """The rollup rows of the minutes starting in [since, until)."""
    columns = ["minute", "bin", "count", "sum", "sumsq", "max"] + (
        ["model_version"] if with_version else [])
    tables, skipped = [], []
    for table, missed in scan(root / ROLLUPS, since, until, columns, ROLLUP_SCHEMA,
                               "minute", version):
        tables.append(table)
        skipped += missed
    if not tables:
        return Scan(pa.Table.from_batches([], schema=pa.schema(
            [ROLLUP_SCHEMA.field(c) for c in columns])), skipped)
    return Scan(pa.concat_tables(tables), skipped)


# --- series -------------------------------------------------------------------------


def choose_step(span: float, step: float | None, source: str) -> int:
    """The step to answer with: the one asked for, made whole, at least a minute for the
    rollups, and coarse enough for at most MAX_POINTS points."""
    floor_ = 60 if source == "rollups" else 1
    if step is None:
        want = span / TARGET_POINTS
        step = next((s for s in STEPS if s >= want), STEPS[-1])
    step = max(math.ceil(step), floor_, math.ceil(span / MAX_POINTS))
    if source == "rollups":
        step = int(math.ceil(step / 60) * 60)
    return step


def series(root: Path, since: float, until: float, step: float | None = None,
           version: str | None = None, source: str = "auto",
           per_version: bool = False) -> dict[str, Any]:
    """Count, MAE, RMSE, p95 and max per step of joined time, where there is data: one
    series (of one version, or all combined), and with `per_version` one per version too,
    all from one read."""
    if not (math.isfinite(since) and math.isfinite(until)):
        raise RangeError("since and until must be finite Unix seconds")
    if step is not None and not (math.isfinite(step) and step > 0):
        raise RangeError("step must be a positive number of seconds")
    if until <= since:
        raise RangeError("until must be after since")
    span = until - since
    if source == "auto":
        source = "rows" if span <= ROWS_RANGE else "rollups"
    if source == "rows" and span > ROWS_RANGE_LIMIT:
        raise RangeError(f"rows are read for ranges up to {ROWS_RANGE_LIMIT // 3600} h; "
                         "ask for source=rollups")
    step_ = choose_step(span, step, source)
    split = version is None
    if source == "rows":
        scan = read_rows(root, since, until, ["joined_at", "absolute_error"]
                         + (["model_version"] if split else []), version)
        points = _points_from_rows
        quantiles = "exact"
    else:
        # Whole minutes: the answer covers every minute that starts in the range.
        since, until = math.floor(since / 60) * 60, math.ceil(until / 60) * 60
        scan = read_rollups(root, since, until, version, with_version=split)
        points = _points_from_rollups
        quantiles = "bin"
    table = scan.table
    versions = _versions_in(table) if version is None else ([version] if len(table) else [])
    answer: dict[str, Any] = {
        "since": since, "until": until, "step": step_, "source": source,
        "model_version": version, "quantiles": quantiles,
        "skipped_files": len(scan.skipped), "complete": not scan.skipped,
        "written_until": written_until(root), "versions": versions,
        "series": points(table, step_)}
    if per_version:
        answer["by_version"] = {v: points(_of_version(table, v), step_) if split
                                else answer["series"] for v in versions}
    return answer


def _versions_in(table: pa.Table) -> list[str]:
    if not len(table):
        return []
    names = pc.unique(table.column("model_version").cast(pa.string())).to_pylist()
    return sorted(str(v) for v in names)


def _of_version(table: pa.Table, version: str) -> pa.Table:
    return table.filter(pc.equal(table.column("model_version").cast(pa.string()), version))


def written_until(root: Path) -> float | None:
    """About when the last row in the history was joined: its outbox entry's time (the
    newest rows are in the live log, not yet here)."""
    pos = read_checkpoint(root / CHECKPOINT).get("pos")
    parsed = parse_pos(pos) if isinstance(pos, str) else None
    return parsed[0] / 1000 if parsed else None


def _groups(t: FloatArray) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Starts and sizes of the runs of equal values in a sorted array."""
    starts = np.flatnonzero(np.r_[True, t[1:] != t[:-1]])
    return starts, np.diff(np.r_[starts, len(t)])


def _points_from_rows(table: pa.Table, step: int) -> list[dict[str, Any]]:
    if not len(table):
        return []
    jt = table.column("joined_at").to_numpy()
    ae = table.column("absolute_error").to_numpy()
    t = np.floor(jt / step) * step
    order = np.lexsort((ae, t))
    t, ae = t[order], ae[order]
    starts, sizes = _groups(t)
    sums = np.add.reduceat(ae, starts)
    squares = np.add.reduceat(ae * ae, starts)
    last = starts + sizes - 1
    h = (sizes - 1) * Q
    lo = np.floor(h).astype(np.int64)
    at = starts + lo
    p95 = ae[at] + (h - lo) * (ae[np.minimum(at + 1, last)] - ae[at])
    return [_point(t[s], n, sm, sq, p, ae[e])
            for s, n, sm, sq, p, e in zip(starts, sizes, sums, squares, p95, last,
                                          strict=True)]


def _points_from_rollups(table: pa.Table, step: int) -> list[dict[str, Any]]:
    if not len(table):
        return []
    t = (table.column("minute").to_numpy() // step) * step
    b = table.column("bin").to_numpy()
    order = np.lexsort((b, t))
    t, b = t[order], b[order]
    cols = {c: table.column(c).to_numpy()[order] for c in ("count", "sum", "sumsq", "max")}
    # Each (step, bin) once, then totals per step; bins stay in value order within a step.
    key_starts, _ = _groups(t * 100_000 + (b - rollup.LOWEST))
    t, b = t[key_starts], b[key_starts]
    count = np.add.reduceat(cols["count"], key_starts)
    high = np.maximum.reduceat(cols["max"], key_starts)
    sums = np.add.reduceat(cols["sum"], key_starts)
    squares = np.add.reduceat(cols["sumsq"], key_starts)
    starts, sizes = _groups(t.astype(np.float64))
    n = np.add.reduceat(count, starts)
    cum = np.cumsum(count)
    before = cum[starts] - count[starts]
    target = before + np.floor((n - 1) * Q).astype(np.int64) + 1
    at = np.searchsorted(cum, target)
    return [_point(t[s], int(total), float(sm), float(sq), float(high[i]),
                   float(np.max(high[s:s + size])))
            for s, size, total, sm, sq, i in zip(
                starts, sizes, n, np.add.reduceat(sums, starts),
                np.add.reduceat(squares, starts), at, strict=True)]


def _point(t: float, n: int, total: float, squares: float, p95: float,
           high: float) -> dict[str, Any]:
    n = int(n)
    return {"t": int(t), "count": n, "mae": float(total) / n,
            "rmse": math.sqrt(float(squares) / n), "p95": float(p95), "max": float(high)}


# --- summaries for reports ----------------------------------------------------------


@dataclass
class Summary:
    """Errors over a range: exact figures, plus either the errors or their bins."""

    count: int
    mae: float | None
    rmse: float | None
    max: float | None
    quantiles: dict[str, float]
    exact: bool
    errors: FloatArray | None
    bins: tuple[FloatArray, FloatArray, FloatArray] | None  # low edges, high edges, counts
    skipped: list[str]


QUANTILES = (0.5, 0.9, 0.95, 0.99)


def summarize(root: Path, since: float | None, until: float | None,
              version: str | None) -> Summary:
    """A report's figures: from the rows for short ranges, from the rollups otherwise."""
    until = time.time() if until is None else until
    since = 0.0 if since is None else since
    if until - since <= ROWS_RANGE:
        scan = read_rows(root, since, until, ["absolute_error"], version)
        errors = scan.table.column("absolute_error").to_numpy()
        if not errors.size:
            return Summary(0, None, None, None, {}, True, errors, None, scan.skipped)
        n = int(errors.size)
        quantiles = np.quantile(errors, QUANTILES)
        return Summary(
            n, float(errors.sum()) / n, math.sqrt(float(np.dot(errors, errors)) / n),
            float(errors.max()),
            {f"p{round(q * 100)}": float(v) for q, v in zip(QUANTILES, quantiles, strict=True)},
            True, errors, None, scan.skipped)
    scan = read_rollups(root, math.floor(since / 60) * 60, until, version)
    table = scan.table
    if not len(table):
        return Summary(0, None, None, None, {}, False, None, None, scan.skipped)
    grouped = table.group_by("bin", use_threads=False).aggregate(
        [("count", "sum"), ("sum", "sum"), ("sumsq", "sum"), ("max", "max")]).sort_by("bin")
    b = grouped.column("bin").to_numpy()
    counts = grouped.column("count_sum").to_numpy()
    highs = grouped.column("max_max").to_numpy()
    n = int(counts.sum())
    edges = [rollup.bin_edges(int(x)) for x in b]
    lows = np.array([e[0] for e in edges])
    tops = np.array([min(e[1], h) for e, h in zip(edges, highs, strict=True)])
    return Summary(
        n, float(pc.sum(grouped.column("sum_sum")).as_py()) / n,
        math.sqrt(float(pc.sum(grouped.column("sumsq_sum")).as_py()) / n), float(highs.max()),
        {f"p{round(q * 100)}": rollup.quantile_in_bins(counts, highs, q)
         for q in QUANTILES},
        False, None, (lows, tops, counts.astype(np.float64)), scan.skipped)
