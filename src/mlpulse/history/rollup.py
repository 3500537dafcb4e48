"""Per-minute rollups of the absolute error, per model version and histogram bin.

The bins are logarithmic and fixed, whatever the settings: 16 to each doubling, so a bin is
4.4 % wide relative to its values, from 2**-20 up to 2**40 (smaller errors share bin
`LOWEST`, larger ones `HIGHEST`). Each bin keeps its count, sum, sum of squares, min and
max, so counts, MAE, RMSE and max over any set of minutes are exact sums, and a quantile
is known to within the one bin it falls in.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from mlpulse.history.layout import ROLLUP_SCHEMA

PER_DOUBLING = 16
LOWEST = -20 * PER_DOUBLING
HIGHEST = 40 * PER_DOUBLING
_KEYS = ["minute", "model_version", "bin"]

FloatArray = np.ndarray[Any, np.dtype[np.float64]]


def bins(errors: FloatArray) -> np.ndarray[Any, np.dtype[np.int32]]:
    """The bin of each error."""
    with np.errstate(divide="ignore"):
        raw = np.floor(np.log2(errors) * PER_DOUBLING)
    raw = np.nan_to_num(raw, nan=LOWEST, neginf=LOWEST, posinf=HIGHEST)
    clipped: np.ndarray[Any, np.dtype[np.int32]] = np.clip(raw, LOWEST, HIGHEST).astype(
        np.int32)
    return clipped


def bin_edges(b: int) -> tuple[float, float]:
    """The values bin `b` holds: [low, high)."""
    low = 0.0 if b <= LOWEST else 2.0 ** (b / PER_DOUBLING)
    high = float("inf") if b >= HIGHEST else 2.0 ** ((b + 1) / PER_DOUBLING)
    return low, high


def rollup(rows: pa.Table) -> pa.Table:
    """The rollup rows of a table of joined rows."""
    errors = rows.column("absolute_error").to_numpy(zero_copy_only=False)
    minute = (rows.column("joined_at").to_numpy(zero_copy_only=False) // 60).astype(np.int64)
    parts = pa.table({
        "minute": minute * 60,
        "model_version": rows.column("model_version"),
        "bin": bins(errors),
        "e": errors,
        "sq": errors * errors,
    })
    grouped = parts.group_by(_KEYS, use_threads=False).aggregate([
        ("e", "count"), ("e", "sum"), ("sq", "sum"), ("e", "min"), ("e", "max")])
    return _shaped(grouped, ["e_count", "e_sum", "sq_sum", "e_min", "e_max"])


def merge(tables: list[pa.Table]) -> pa.Table:
    """Rollup rows of the same keys added together (what compaction writes)."""
    whole = pa.concat_tables(tables)
    grouped = whole.group_by(_KEYS, use_threads=False).aggregate([
        ("count", "sum"), ("sum", "sum"), ("sumsq", "sum"), ("min", "min"), ("max", "max")])
    return _shaped(grouped, ["count_sum", "sum_sum", "sumsq_sum", "min_min", "max_max"])


def _shaped(grouped: pa.Table, names: list[str]) -> pa.Table:
    columns = [grouped.column(k) for k in _KEYS] + [grouped.column(n) for n in names]
    table = pa.Table.from_arrays(columns, schema=ROLLUP_SCHEMA)
    return table.sort_by([("minute", "ascending"), ("model_version", "ascending"),
                          ("bin", "ascending")])


def quantile_in_bins(counts: np.ndarray[Any, Any], highs: FloatArray, q: float) -> float:
    """A quantile from the counts of bins sorted by value: the largest error seen in its bin.

    The true quantile lies in the same bin, so the answer is off by less than that bin's
    width (4.4 % of the value)."""
    total = counts.sum()
    rank = q * (total - 1)
    at = int(np.searchsorted(np.cumsum(counts), np.floor(rank) + 1))
    return float(highs[min(at, len(highs) - 1)])
