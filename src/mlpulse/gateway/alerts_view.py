"""What the gateway shows of alerts: the dashboard's section and Prometheus's ALERTS gauge."""

from __future__ import annotations

from typing import Any

from prometheus_client import Gauge

from mlpulse.alerts.evaluator import read_alerts
from mlpulse.store import Redis

# Prometheus's own ALERTS series, for mlpulse's rules: 1 while an alert fires.
ALERT_FIRING = Gauge("mlpulse_alert_firing", "1 for each alert firing now",
                     ["alertname", "severity", "model_version", "feature"])
DASHBOARD_HISTORY = 20


class AlertsView:
    """Reads the evaluator's states; keeps the gauge to what fires now."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._series: set[tuple[str, ...]] = set()

    async def live(self) -> dict[str, Any]:
        """The section every dashboard gets: the alerts of rules that name no users."""
        everything = await read_alerts(self.redis, everyone=True)
        self._export(everything["firing"])
        shared = await read_alerts(self.redis, limit=DASHBOARD_HISTORY)
        return shared

    def _export(self, firing: list[dict[str, Any]]) -> None:
        fresh: set[tuple[str, ...]] = {
            (a["rule"], a["severity"], a["labels"].get("model_version", ""),
             a["labels"].get("feature", "")) for a in firing}
        for gone in self._series - fresh:
            ALERT_FIRING.remove(*gone)
        for labels in fresh:
            ALERT_FIRING.labels(*labels).set(1)
        self._series = fresh
