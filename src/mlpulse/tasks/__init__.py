"""The task service: Celery workers and Beat (`celery -A mlpulse.tasks worker|beat`)."""

from mlpulse.tasks.app import app

celery = app

__all__ = ["app", "celery"]
