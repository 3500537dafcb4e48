"""What the gateway shows of drift: reports per window, the hour's trend, and the changes.

Profiles are read from the models directory as JSON (no scikit-learn in the gateway) and
kept while their file is unchanged. A version without a usable profile gets a report in
which every status is `insufficient`, with `unavailable` saying why.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from prometheus_client import Gauge

from mlpulse.config import Settings
from mlpulse.drift import (
    FINE_SECONDS,
    DriftStore,
    Profiles,
    Reference,
    read_changes,
    report,
    trend,
    unavailable,
)
from mlpulse.ml.meta import read_meta, versions
from mlpulse.store import Redis

log = logging.getLogger(__name__)

FEATURE_PSI = Gauge("mlpulse_feature_psi", "PSI of a feature against its version's reference",
                    ["feature", "window", "model_version"])
PREDICTION_PSI = Gauge("mlpulse_prediction_psi",
                       "PSI of the predictions against the version's reference",
                       ["window", "model_version"])
ESTIMATED_MAE = Gauge("mlpulse_estimated_mae", "Estimated MAE of the predictions in a window",
                      ["window", "model_version"])
TREND_BLOCK_SECONDS = 300


class DriftView:
    """Builds drift reports from Redis and the versions' profiles."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.store = DriftStore(redis, settings)
        self.profiles = Profiles(settings.models_dir)
        self.exported = _Exported()

    @property
    def longest(self) -> int:
        return self.settings.drift_keep

    @property
    def shortest(self) -> int:
        return FINE_SECONDS

    def reference(self, version: str) -> Reference | str:
        """The version's reference, or why there is none."""
        return self.profiles.get(version)

    def registered(self, version: str) -> bool:
        """Whether the registry holds `version`."""
        digits = version[1:] if version.startswith("v") else ""
        return digits.isdigit() and int(digits) in versions(self.settings.models_dir)

    def features_of(self, version: str) -> list[str]:
        digits = version[1:]
        try:
            meta = read_meta(self.settings.models_dir, int(digits))
        except (OSError, ValueError):
            return []
        return [str(f) for f in meta.get("feature_names", [])]

    async def default_version(self, window: int, now: float) -> str | None:
        """The newest version with events in the window, else the newest registered."""
        seen = await self.store.versions(now - window)
        if seen:
            return seen[0]
        found = versions(self.settings.models_dir)
        return f"v{found[-1]}" if found else None

    async def window(self, version: str | None, window: int,
                     now: float | None = None) -> dict[str, Any]:
        """The API's document for one version and window."""
        now = time.time() if now is None else now
        if version is None:
            version = await self.default_version(window, now)
        head: dict[str, Any] = {"model_version": version, "window_s": window}
        if version is None:
            return {**head, **unavailable([], "no model version is registered yet"),
                    "changes": []}
        ref = self.reference(version)
        changes = await read_changes(self.redis, version)
        if isinstance(ref, str):
            return {**head, **unavailable(self.features_of(version), ref), "changes": changes}
        total = await self.store.window(version, window, now)
        return {**head, **report(ref, total, self.store.thresholds), "changes": changes}

    async def live(self, now: float | None = None) -> dict[str, Any]:
        """The dashboard's drift section: every shown window of the newest version, its
        hour's trend and changes; the Prometheus gauges are set for every version seen."""
        now = time.time() if now is None else now
        windows = self.settings.drift_windows
        version = await self.default_version(max(windows), now)
        out: dict[str, Any] = {"model_version": version, "windows": {}, "trend": None}
        if version is None:
            self.exported.refresh({})
            return out
        exported: dict[str, dict[str, dict[str, Any]]] = {}
        for v in {version, *await self.store.versions(now - max(windows))}:
            exported[v] = {str(w): await self.window(v, w, now) for w in windows}
        out["windows"] = exported[version]
        self.exported.refresh(exported)
        ref = self.reference(version)
        if not isinstance(ref, str):
            blocks = await self.store.blocks(version, now, TREND_BLOCK_SECONDS)
            totals = [b for _, b in blocks]
            out["trend"] = {"block_s": TREND_BLOCK_SECONDS, "t": [t for t, _ in blocks],
                            "psi": trend(ref, totals, self.store.thresholds),
                            "estimated_mae": [_mean(b, "e", "n") for b in totals],
                            "realized_mae": [_mean(b, "lerr", "ln") for b in totals]}
        return out


class _Exported:
    """The gauge series set by the last refresh, so a series with no value now (a version
    no longer scored, a window gone quiet) is removed rather than left at its last value."""

    def __init__(self) -> None:
        self.series: set[tuple[Gauge, tuple[str, ...]]] = set()

    def refresh(self, docs: dict[str, dict[str, dict[str, Any]]]) -> None:
        fresh: dict[tuple[Gauge, tuple[str, ...]], float] = {}
        for version, windows in docs.items():
            for window, doc in windows.items():
                for f in doc["features"]:
                    if f["psi"] is not None:
                        fresh[(FEATURE_PSI, (f["name"], window, version))] = f["psi"]
                if doc["prediction"]["psi"] is not None:
                    fresh[(PREDICTION_PSI, (window, version))] = doc["prediction"]["psi"]
                if doc["estimated_mae"] is not None:
                    fresh[(ESTIMATED_MAE, (window, version))] = doc["estimated_mae"]
        for gauge, labels in self.series - fresh.keys():
            gauge.remove(*labels)
        for (gauge, labels), value in fresh.items():
            gauge.labels(*labels).set(value)
        self.series = set(fresh)


def _mean(total: dict[str, float], num: str, den: str) -> float | None:
    n = total.get(den, 0.0)
    return total.get(num, 0.0) / n if n > 0 else None

