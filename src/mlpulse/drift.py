"""Drift, data quality and estimated MAE over sliding windows, from per-bucket bin counts.

The model role bins every feature vector and prediction against its version's reference
profile and adds the counts to a time bucket in Redis (`drift.lua`); the metric role adds,
in the same step as each join, what the label showed (`join.lua`). Everything people see
is computed here from the sums over a window's buckets, with numpy alone, so the gateway
reads profiles without loading scikit-learn. docs/drift.md gives the formulas.

A bucket is a hash `mlpulse:drift:<version>:<resolution>:<start>`:
  `n`          predictions scored in the bucket
  `e`          sum of their estimated absolute errors
  `f<j>.<b>`   feature j's values in reference bin b;  `o<j>` values outside its range
  `p.<b>`      predictions in reference bin b;         `po` predictions outside the range
  `ln`, `lerr`, `lest`  of those predictions, how many have their label, the sum of their
               absolute errors and of their estimated errors (written by the join)
  `lsq`, `lh<b>`  the labelled errors' squares, and their histogram in the live
               histogram's bins (for the alert rules' rmse and p95)
Fine buckets (10 s) serve windows up to 10 minutes, coarse ones (60 s) longer windows.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import redis.asyncio as aioredis
from numpy.typing import NDArray

from mlpulse import keys
from mlpulse.config import Settings
from mlpulse.keys import DRIFT, DRIFT_VERSIONS

Redis = aioredis.Redis
log = logging.getLogger(__name__)

PROFILE_FORMAT = 1
# Added to every bin's count, current and reference, before PSI: an empty bin then costs
# a finite amount instead of infinity, and the effect fades as counts grow.
PSI_SMOOTHING = 0.5
FINE_SECONDS = 10
COARSE_SECONDS = 60
# Windows up to this long are summed from fine buckets; fine buckets are kept a bit longer.
FINE_SPAN = 600
FINE_KEEP = FINE_SPAN + 5 * FINE_SECONDS
TREND_BLOCKS = 12


@dataclass(slots=True)
class Column:
    """One feature's (or the predictions') reference: bins, counts and moments."""

    name: str
    edges: NDArray[np.float64]     # interior edges; bin b is (edges[b-1], edges[b]]
    counts: NDArray[np.float64]    # reference rows per bin
    means: NDArray[np.float64]     # reference mean inside each bin (Wasserstein's points)
    mean: float
    std: float
    min: float
    max: float

    @property
    def bins(self) -> int:
        return len(self.counts)

    def bin_of(self, values: NDArray[np.float64]) -> NDArray[np.intp]:
        """Each value's bin: the first b with value <= edges[b], else the last bin."""
        return np.searchsorted(self.edges, values, side="left")

    def histogram(self, values: NDArray[np.float64]) -> tuple[NDArray[np.int64], int]:
        """Counts per bin and how many values fall outside the reference range."""
        counts = np.bincount(self.bin_of(values), minlength=self.bins)
        outside = int(np.count_nonzero((values < self.min) | (values > self.max)))
        return counts, outside

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Column:
        col = cls(str(doc["name"]), np.asarray(doc["edges"], dtype=np.float64),
                  np.asarray(doc["counts"], dtype=np.float64),
                  np.asarray(doc["means"], dtype=np.float64), float(doc["mean"]),
                  float(doc["std"]), float(doc["min"]), float(doc["max"]))
        if len(col.counts) != len(col.edges) + 1 or len(col.means) != len(col.counts):
            raise ValueError(f"{col.name}: {len(col.edges)} edges need "
                             f"{len(col.edges) + 1} counts and means")
        if np.any(np.diff(col.edges) <= 0) or not np.all(np.isfinite(col.edges)):
            raise ValueError(f"{col.name}: the edges are not strictly increasing")
        return col


def column_profile(name: str, values: NDArray[np.float64], bins: int) -> dict[str, Any]:
    """Quantile bins over every value, ties merged: a two-valued column gets two bins."""
    qs = np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1])
    top = float(values.max())
    # Repeated quantiles (ties) collapse into one edge, and an edge at the maximum would
    # leave an empty bin above it; neither is a bin of its own.
    edges = np.unique(qs[qs < top])
    idx = np.searchsorted(edges, values, side="left")
    counts = np.bincount(idx, minlength=len(edges) + 1)
    sums = np.bincount(idx, weights=values, minlength=len(edges) + 1)
    # An interpolated quantile can leave a bin with no training value: its point is the
    # middle of its bounds, so the points stay in order.
    bounds = np.concatenate([[values.min()], edges, [top]])
    middles = (bounds[:-1] + bounds[1:]) / 2
    means = np.where(counts > 0, sums / np.maximum(counts, 1), middles)
    return {"name": name, "edges": edges.tolist(), "counts": counts.tolist(),
            "means": means.tolist(),
            "mean": float(values.mean()), "std": float(values.std()),
            "min": float(values.min()), "max": top}


@dataclass(slots=True)
class Reference:
    """A version's whole profile, as the streaming side and the readers need it."""

    features: list[Column]
    prediction: Column
    reference_mae: float | None
    doc: dict[str, Any]

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Reference:
        if doc.get("format") != PROFILE_FORMAT:
            raise ValueError(f"profile format {doc.get('format')!r}; this release reads "
                             f"format {PROFILE_FORMAT}")
        mae = doc.get("reference_mae")
        return cls([Column.from_doc(c) for c in doc["features"]],
                   Column.from_doc(doc["prediction"]),
                   float(mae) if mae is not None else None, doc)

    def batch_fields(self, X: NDArray[np.float64], y_pred: NDArray[np.float64],
                     estimated: NDArray[np.float64] | None) -> tuple[list[Any], list[Any]]:
        """One batch's additions to a bucket: (field, count) pairs, integer and float."""
        ints: list[Any] = ["n", len(X)]
        for j, col in enumerate(self.features):
            counts, outside = col.histogram(X[:, j])
            for b in np.flatnonzero(counts).tolist():
                ints += (f"f{j}.{b}", int(counts[b]))
            if outside:
                ints += (f"o{j}", outside)
        counts, outside = self.prediction.histogram(y_pred)
        for b in np.flatnonzero(counts).tolist():
            ints += (f"p.{b}", int(counts[b]))
        if outside:
            ints += ("po", outside)
        floats: list[Any] = [] if estimated is None else ["e", repr(float(estimated.sum()))]
        return ints, floats


def bucket_key(version: str, resolution: int, start: int) -> str:
    """The hash of one version's bucket."""
    return f"{DRIFT}{version}:{resolution}:{start}"


def resolution_for(window: int) -> int:
    """Fine buckets for short windows, coarse ones for long."""
    return FINE_SECONDS if window <= FINE_SPAN else COARSE_SECONDS


def bucket_starts(window: int, now: float, resolution: int | None = None) -> list[int]:
    """The buckets a window covers, oldest first; the last is the current, partial one."""
    res = resolution or resolution_for(window)
    last = int(now // res) * res
    k = max(1, math.ceil(window / res))
    return [last - i * res for i in range(k - 1, -1, -1)]


def add(total: dict[str, float], raw: dict[Any, Any]) -> None:
    """Add one bucket's fields (bytes or str) into `total`."""
    for k, v in raw.items():
        key = k.decode() if isinstance(k, bytes) else k
        total[key] = total.get(key, 0.0) + float(v)


def psi(ref: NDArray[np.float64], cur: NDArray[np.float64],
        alpha: float = PSI_SMOOTHING) -> float:
    """Population stability index of `cur` against `ref`, both counts per bin."""
    k = len(ref)
    p = (ref + alpha) / (ref.sum() + k * alpha)
    q = (cur + alpha) / (cur.sum() + k * alpha)
    return float(np.sum((q - p) * np.log(q / p)))


def wasserstein(col: Column, cur: NDArray[np.float64]) -> float:
    """Wasserstein-1 distance between the binned distributions, in reference stds.

    Each bin's mass sits at the reference mean of the values in that bin, so the distance
    is the area between the two step CDFs over those points."""
    n = cur.sum()
    if n <= 0:
        return 0.0
    F_ref = np.cumsum(col.counts)[:-1] / col.counts.sum()
    F_cur = np.cumsum(cur)[:-1] / n
    distance = float(np.sum(np.abs(F_ref - F_cur) * np.diff(col.means)))
    return distance / col.std if col.std > 0 else distance


@dataclass(slots=True)
class Thresholds:
    """When a column is a warning or drift, and how few events give no verdict.

    PSI sees how the shares of the bins changed; the normalised Wasserstein distance sees
    how far the values moved. Either one past its threshold sets the status: a shift of
    one standard deviation in half of a window reads a PSI of only 0.21 to 0.24 on the
    diabetes features, but a distance of about 0.5."""

    warn: float = 0.1
    drift: float = 0.25
    min_events: int = 1000
    wasserstein_warn: float = 0.15
    wasserstein_drift: float = 0.25

    def status(self, value: float, distance: float, events: float) -> str:
        if events < self.min_events:
            return "insufficient"
        if value >= self.drift or distance >= self.wasserstein_drift:
            return "drift"
        return "warn" if value >= self.warn or distance >= self.wasserstein_warn else "ok"


def _counts(total: dict[str, float], prefix: str, bins: int) -> NDArray[np.float64]:
    return np.array([total.get(f"{prefix}{b}", 0.0) for b in range(bins)], dtype=np.float64)


def column_drift(col: Column, cur: NDArray[np.float64], events: float,
                 thresholds: Thresholds) -> dict[str, Any]:
    """PSI, Wasserstein and status of one column's counts in a window."""
    if cur.sum() <= 0:
        return {"psi": None, "wasserstein": None, "status": "insufficient"}
    value, distance = psi(col.counts, cur), wasserstein(col, cur)
    return {"psi": value, "wasserstein": distance,
            "status": thresholds.status(value, distance, events)}


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def report(ref: Reference, total: dict[str, float], thresholds: Thresholds) -> dict[str, Any]:
    """Per-feature and prediction drift, data quality and MAEs from a window's sums."""
    n = total.get("n", 0.0)
    features = []
    for j, col in enumerate(ref.features):
        row = {"name": col.name,
               **column_drift(col, _counts(total, f"f{j}.", col.bins), n, thresholds),
               "out_of_range": _ratio(total.get(f"o{j}", 0.0), n)}
        features.append(row)
    pred = ref.prediction
    labelled = total.get("ln", 0.0)
    return {
        "events": int(n),
        "features": features,
        "prediction": {**column_drift(pred, _counts(total, "p.", pred.bins), n, thresholds),
                       "out_of_range": _ratio(total.get("po", 0.0), n)},
        "estimated_mae": _ratio(total.get("e", 0.0), n),
        "estimated_mae_unlabelled": _ratio(total.get("e", 0.0) - total.get("lest", 0.0),
                                           n - labelled),
        "realized_mae": _ratio(total.get("lerr", 0.0), labelled),
        "labelled": int(labelled),
        "reference_mae": ref.reference_mae,
    }


class Profiles:
    """Versions' references read from the models directory as JSON, each kept while its
    file is unchanged; a version without a usable one gets the reason instead."""

    def __init__(self, models_dir: Path) -> None:
        self.models_dir = models_dir
        self._cache: dict[str, tuple[float, Reference | str]] = {}

    def get(self, version: str) -> Reference | str:
        digits = version[1:] if version.startswith("v") else ""
        if not digits.isdigit():
            return f"{version!r} is not a version of the registry"
        path = self.models_dir / f"model-v{digits}.profile.json"
        try:
            stamp = path.stat().st_mtime
        except FileNotFoundError:
            return (f"model {version} has no reference profile ({path.name}); "
                    "drift is unavailable for it")
        cached = self._cache.get(version)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        found: Reference | str
        try:
            found = Reference.from_doc(json.loads(path.read_text()))
        except Exception as exc:  # any damage: not JSON, not an object, wrong fields
            found = f"model {version}: {path.name} is unreadable ({exc!r}); drift is " \
                "unavailable"
            log.error("%s", found)
        self._cache[version] = (stamp, found)
        return found


def unavailable(features: Iterable[str], reason: str) -> dict[str, Any]:
    """What a window reports for a version without a usable profile."""
    blank = {"psi": None, "wasserstein": None, "status": "insufficient"}
    return {"events": 0, "features": [{"name": f, **blank, "out_of_range": None}
                                      for f in features],
            "prediction": {**blank, "out_of_range": None}, "estimated_mae": None,
            "estimated_mae_unlabelled": None, "realized_mae": None, "labelled": 0,
            "reference_mae": None, "unavailable": reason}


def trend(ref: Reference, blocks: list[dict[str, float]],
          thresholds: Thresholds) -> dict[str, list[float | None]]:
    """Each feature's PSI (and the prediction's) per block of time, oldest first; None
    where a block has too few events for a verdict."""
    out: dict[str, list[float | None]] = {c.name: [] for c in ref.features}
    out["prediction"] = []
    for total in blocks:
        n = total.get("n", 0.0)
        enough = n >= thresholds.min_events
        for j, col in enumerate(ref.features):
            out[col.name].append(psi(col.counts, _counts(total, f"f{j}.", col.bins))
                                 if enough else None)
        out["prediction"].append(
            psi(ref.prediction.counts, _counts(total, "p.", ref.prediction.bins))
            if enough else None)
    return out


# ---------------------------------------------------------------- Redis
def lifetimes(settings: Settings) -> list[int]:
    """Resolution and lifetime in seconds of fine, then coarse buckets (join.lua's order)."""
    return [FINE_SECONDS, FINE_KEEP, COARSE_SECONDS, settings.drift_keep + 2 * COARSE_SECONDS]


class DriftStore:
    """Reads and writes the drift buckets."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.thresholds = Thresholds(settings.drift_psi_warn, settings.drift_psi_drift,
                                     settings.drift_min_events,
                                     settings.drift_wasserstein_warn,
                                     settings.drift_wasserstein_drift)
        self._record = redis.register_script(
            resources.files("mlpulse").joinpath("drift.lua").read_text())

        self.coarse_ttl = lifetimes(settings)[3]

    async def record(self, version: str, ints: list[Any], floats: list[Any],
                     now: float) -> None:
        """Add one batch's counts to the buckets of `now`."""
        fine = bucket_key(version, FINE_SECONDS, int(now // FINE_SECONDS) * FINE_SECONDS)
        coarse = bucket_key(version, COARSE_SECONDS,
                            int(now // COARSE_SECONDS) * COARSE_SECONDS)
        await self._record(keys=[DRIFT_VERSIONS],
                           args=[version, repr(now), fine, FINE_KEEP, coarse, self.coarse_ttl,
                                 len(ints) // 2, *ints, *floats])

    async def window(self, version: str, window: int, now: float) -> dict[str, float]:
        """The sums over a window's buckets, the current partial one included."""
        res = resolution_for(window)
        pipe = self.redis.pipeline(transaction=False)
        for start in bucket_starts(window, now, res):
            pipe.hgetall(bucket_key(version, res, start))
        total: dict[str, float] = {}
        for raw in await pipe.execute():
            add(total, raw)
        return total

    async def count(self, version: str, window: int, now: float) -> float:
        """Predictions scored in the window: one field of each bucket."""
        res = resolution_for(window)
        pipe = self.redis.pipeline(transaction=False)
        for start in bucket_starts(window, now, res):
            pipe.hget(bucket_key(version, res, start), "n")
        return float(sum(float(n) for n in await pipe.execute() if n is not None))

    async def blocks(self, version: str, now: float, block: int = 300,
                     count: int = TREND_BLOCKS) -> list[tuple[int, dict[str, float]]]:
        """(start, sums) per block of `block` seconds over the last `count` blocks, oldest
        first; the last block ends with the current minute."""
        per = max(1, block // COARSE_SECONDS)
        starts = bucket_starts(per * count * COARSE_SECONDS, now, COARSE_SECONDS)
        pipe = self.redis.pipeline(transaction=False)
        for start in starts:
            pipe.hgetall(bucket_key(version, COARSE_SECONDS, start))
        raws = await pipe.execute()
        out = []
        for i in range(0, len(raws), per):
            total: dict[str, float] = {}
            for raw in raws[i:i + per]:
                add(total, raw)
            out.append((starts[i], total))
        return out

    async def versions(self, since: float) -> list[str]:
        """Versions scored since `since`, newest version number first."""
        raw: Any = await self.redis.zrangebyscore(DRIFT_VERSIONS, since, "+inf")
        found = [v.decode() for v in raw]
        return sorted(found, key=version_order, reverse=True)


async def read_changes(redis: Redis, version: str) -> list[dict[str, float]]:
    """The error-level changes detected for `version`, oldest first."""
    return [orjson.loads(c) for c in await redis.lrange(keys.changes(version), 0, -1)]


def version_order(version: str) -> tuple[int, str]:
    """Sort key for "v12" after "v9"; other names after, by name."""
    digits = version[1:] if version.startswith("v") else ""
    return (int(digits), "") if digits.isdigit() else (-1, version)
