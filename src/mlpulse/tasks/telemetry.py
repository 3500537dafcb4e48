"""Prometheus metrics of the tasks, counted in whichever pool process runs them."""

from __future__ import annotations

import time
from typing import Any

from celery.signals import task_postrun, task_prerun, task_retry
from prometheus_client import Counter, Histogram

TASKS = Counter("mlpulse_tasks_total", "Tasks run to an end, by task and final state",
                ["task", "state"])
RETRIES = Counter("mlpulse_task_retries_total", "Task retries after a transient error",
                  ["task"])
TASK_SECONDS = Histogram("mlpulse_task_seconds", "How long a task ran", ["task"],
                         buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 600))
_started: dict[str, float] = {}


@task_prerun.connect
def _prerun(task_id: str | None = None, **_: Any) -> None:
    if task_id:
        _started[task_id] = time.perf_counter()


@task_postrun.connect
def _postrun(task_id: str | None = None, task: Any = None, state: str | None = None,
             **_: Any) -> None:
    name = getattr(task, "name", "unknown")
    TASKS.labels(name, state or "UNKNOWN").inc()
    began = _started.pop(task_id or "", None)
    if began is not None:
        TASK_SECONDS.labels(name).observe(time.perf_counter() - began)


@task_retry.connect
def _retry(sender: Any = None, **_: Any) -> None:
    RETRIES.labels(getattr(sender, "name", "unknown")).inc()
