"""The worker's Celery app, configured from `MLPULSE_*` settings."""

from __future__ import annotations

from mlpulse.config import load_settings
from mlpulse.task_queue import make_celery

settings = load_settings()
app = make_celery(settings, include=["mlpulse.tasks.jobs", "mlpulse.tasks.telemetry",
                                     "mlpulse.tasks.retention", "mlpulse.tasks.alerts"])
