"""The value of an alert rule's metric now, for each label set it covers.

Per-version metrics come from the drift buckets (mlpulse/drift.py), which count every
scored prediction and, by the time it was scored, its label: mae, rmse and p95 are over
predictions scored in the window that have their label, estimated_mae over all of them.
psi and prediction_psi are the drift report's, with no value below the minimum number of
events. events_per_s counts predictions; with `model_version: "*"` it is one series over
every version, so a pipeline that went quiet is seen. unmatched_rate, rejected_rate and
label_delay_p95 are over the whole pipeline, from per-minute counts by join time
(`mlpulse:rates:*`), so a label a day late counts when it arrives. A rate over a window
divides by the seconds its buckets actually cover, the current one only up to now.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mlpulse.alerts.rules import REFERENCE_OF, Rule
from mlpulse.config import Settings
from mlpulse.drift import DriftStore, Profiles, Reference, bucket_starts, report
from mlpulse.keys import RATES
from mlpulse.store import Redis

# Upper bounds of join.lua's label-delay bins, in seconds (the last bin is open above).
DELAYS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600,
          86400, 604800)


@dataclass(slots=True)
class Series:
    """One label set of a rule and its value now (None: no data, so no condition)."""

    labels: dict[str, str]
    value: float | None
    threshold: float


def quantile(counts: dict[int, float], bounds: list[float], q: float) -> float | None:
    """The q-quantile of binned values, linear inside a bin; bin k spans
    (bounds[k-1], bounds[k]], and a value past the last bound counts as the last bound."""
    total = sum(counts.values())
    if total <= 0:
        return None
    target, seen = q * total, 0.0
    for k in range(len(bounds) + 1):
        c = counts.get(k, 0.0)
        if c and seen + c >= target:
            lo = bounds[k - 1] if k > 0 else 0.0
            hi = bounds[k] if k < len(bounds) else bounds[-1]
            return lo + (hi - lo) * (target - seen) / c
        seen += c
    return bounds[-1]


def covered(window: int, now: float) -> float:
    """Seconds a window's buckets cover up to now: the current bucket counts only as far
    as it has gone, so a rate read just after a boundary is not diluted."""
    return max(1.0, now - bucket_starts(window, now)[0])


def _bins(total: dict[str, float], prefix: str) -> dict[int, float]:
    return {int(k[len(prefix):]): v for k, v in total.items()
            if k.startswith(prefix) and k[len(prefix):].isdigit()}


class Signals:
    """Reads what the rules compare."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.drift = DriftStore(redis, settings)
        self.profiles = Profiles(settings.models_dir)

    async def series(self, rule: Rule, now: float) -> list[Series]:
        """Every label set the rule covers now, with its value."""
        if rule.metric in ("unmatched_rate", "rejected_rate", "label_delay_p95"):
            return [Series({}, await self._rate(rule, now), rule.threshold)]
        if rule.metric == "events_per_s" and rule.model_version == "*":
            total = await self._predictions(rule.window, now)
            return [Series({}, total / covered(rule.window, now), rule.threshold)]
        if rule.model_version == "*":
            versions = await self.drift.versions(now - rule.window)
        else:
            versions = [rule.model_version]
        out: list[Series] = []
        for version in versions:
            out.extend(await self._of_version(rule, version, now))
        return out

    async def _of_version(self, rule: Rule, version: str, now: float) -> list[Series]:
        total = await self.drift.window(version, rule.window, now)
        labels = {"model_version": version}
        ref = self.profiles.get(version)
        threshold = rule.threshold
        if rule.relative_to is not None:
            base = ref.doc.get(REFERENCE_OF[rule.metric]) if isinstance(ref, Reference) \
                else None
            if base is None:
                return []  # no reference to be relative to: nothing to compare
            threshold = rule.threshold * float(base)
        n, labelled = total.get("n", 0.0), total.get("ln", 0.0)
        metric = rule.metric
        if metric in ("psi", "prediction_psi"):
            if not isinstance(ref, Reference):
                return []
            doc = report(ref, total, self.drift.thresholds)
            enough = n >= self.drift.thresholds.min_events
            if metric == "prediction_psi":
                return [Series(labels, doc["prediction"]["psi"] if enough else None,
                               threshold)]
            return [Series({**labels, "feature": f["name"]},
                           f["psi"] if enough else None, threshold)
                    for f in doc["features"] if rule.feature in (None, "*", f["name"])]
        value: float | None
        if metric == "events_per_s":
            value = n / covered(rule.window, now)
        elif metric == "estimated_mae":
            value = total["e"] / n if n and "e" in total else None
        elif metric == "mae":
            value = total.get("lerr", 0.0) / labelled if labelled else None
        elif metric == "rmse":
            value = math.sqrt(total.get("lsq", 0.0) / labelled) if labelled else None
        elif metric == "p95":
            width, bins = self.settings.hist_bin_width, self.settings.hist_bins
            value = quantile(_bins(total, "lh"), [width * (k + 1) for k in range(bins)],
                             0.95)
        else:
            raise ValueError(f"{metric} is not a per-version metric")
        return [Series(labels, value, threshold)]

    async def _rate(self, rule: Rule, now: float) -> float | None:
        last = int(now // 60) * 60
        minutes = [last - 60 * i for i in range(max(1, math.ceil(rule.window / 60)))]
        pipe = self.redis.pipeline(transaction=False)
        for m in minutes:
            pipe.hgetall(f"{RATES}{m}")
        sums: dict[str, float] = {}
        for raw in await pipe.execute():
            for k, v in raw.items():
                sums[k.decode()] = sums.get(k.decode(), 0.0) + float(v)
        if rule.metric == "unmatched_rate":
            den = sums.get("joined", 0.0) + sums.get("unmatched", 0.0)
            return sums.get("unmatched", 0.0) / den if den else None
        if rule.metric == "label_delay_p95":
            delays = {int(k[2:]): v for k, v in sums.items() if k[:2] == "ld" and k[2:].isdigit()}
            return quantile(delays, list(DELAYS), 0.95)
        den = await self._predictions(rule.window, now) + sums.get("rejected", 0.0)
        return sums.get("rejected", 0.0) / den if den else None

    async def _predictions(self, window: int, now: float) -> float:
        """Predictions scored in the window, over every version."""
        total = 0.0
        for version in await self.drift.versions(now - window):
            total += await self.drift.count(version, window, now)
        return total
