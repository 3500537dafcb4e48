"""The task service's shared edge: the Celery client, task names and task records.

The gateway submits tasks by name through this module and reads their records; the
worker (`mlpulse.tasks`) runs them and writes the records. Neither imports the other.

A task record is a Redis hash `mlpulse:task:<id>` holding the kind, the owner, Celery's
state name (PENDING, STARTED, PROGRESS, SUCCESS, FAILURE, RETRY), progress as rows done
of total, and a JSON result. It outlives Celery's own result, and a batch scoring job,
whose work is spread over many Celery tasks, has one record under the id its owner got.
"""

from __future__ import annotations

import re
import time
from typing import Any

import orjson
from celery import Celery
from kombu.entity import Exchange, Queue

from mlpulse import keys
from mlpulse.config import Settings

TASK_QUEUE = "mlpulse.tasks"
# Alert notifications have a queue of their own, so one is never queued behind a backlog of
# batch-scoring chunks (it waits at most for a pool process to finish its current task);
# every worker consumes both queues.
ALERTS_QUEUE = "mlpulse.alerts"
# Takes one notification (mlpulse.alerts.webhooks.notification) and POSTs it, at least once.
DELIVER_TASK = "mlpulse.alerts.deliver"
TASK_ID = re.compile(r"[0-9a-f]{32}")
RECORD_TTL = 7 * 86400

# Kinds a user can start, and the Celery task that runs each.
KINDS = {
    "batch-score": "mlpulse.batch_score",
    "retrain": "mlpulse.retrain",
    "report": "mlpulse.report",
    "collect-labels": "mlpulse.collect_labels",
}
# Run by Beat only: deletes uploads and results older than MLPULSE_RETENTION_DAYS.
SWEEP_TASK = "mlpulse.sweep_files"
# Fields stored as JSON inside the hash.
JSON_FIELDS = ("result", "params")
NUMBER_FIELDS = ("submitted", "started", "finished", "done", "total")


def make_celery(settings: Settings, include: list[str] | None = None) -> Celery:
    """A Celery app on RabbitMQ with Redis results, JSON only, acked after the work."""
    app = Celery("mlpulse", broker=str(settings.amqp_url), backend=str(settings.redis_url),
                 include=include or [])
    schedule: dict[str, Any] = {
        "sweep-files": {"task": SWEEP_TASK, "schedule": sweep_interval(settings)},
    }
    if settings.labels_url:
        schedule["collect-labels"] = {"task": KINDS["collect-labels"],
                                      "schedule": settings.labels_interval}
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        # A task is acked once it finished; if its worker dies it runs again elsewhere.
        # Every task is written to be idempotent for that reason.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.task_soft_limit,
        task_time_limit=settings.task_hard_limit,
        task_track_started=True,
        task_default_queue=TASK_QUEUE,
        task_queues=[_queue(TASK_QUEUE), _queue(ALERTS_QUEUE)],
        task_routes={DELIVER_TASK: {"queue": ALERTS_QUEUE}},
        broker_connection_retry_on_startup=True,
        broker_transport_options={"confirm_publish": True},
        # Celery's result keys share mlpulse's prefix, like every other key.
        result_backend_transport_options={"global_keyprefix": keys.PREFIX + "celery:"},
        result_expires=RECORD_TTL,
        timezone="UTC",
        beat_schedule=schedule,
    )
    return app


def _queue(name: str) -> Queue:
    # Declared as Celery declares a default queue (a direct exchange of the same name), so
    # a queue made before this declaration existed is the same queue.
    exchange = Exchange(name, type="direct")  # type: ignore[no-untyped-call]
    return Queue(name, exchange, routing_key=name)  # type: ignore[no-untyped-call]


def is_task_id(text: str) -> bool:
    """Whether `text` has the shape of a task id (a uuid4's 32 lower-case hex digits)."""
    return TASK_ID.fullmatch(text) is not None


def sweep_interval(settings: Settings) -> float:
    """How often Beat deletes old files: hourly, or 24 times per retention if that is
    shorter, so nothing outlives the retention by more than a twenty-fourth of it."""
    return min(3600.0, max(10.0, settings.retention_days * 86400 / 24))


def record_key(task_id: str) -> str:
    """The Redis hash of one task."""
    return keys.task(task_id)


def owner_key(user: str) -> str:
    """The ids of one user's tasks, scored by submission time."""
    return keys.tasks_of(user)


def new_record(task_id: str, kind: str, owner: str, params: dict[str, Any],
               total: int = 0) -> dict[str, str]:
    """The fields a task starts with."""
    return {
        "id": task_id, "kind": kind, "owner": owner, "state": "PENDING",
        "submitted": repr(time.time()), "done": "0", "total": str(total),
        "params": orjson.dumps(params).decode(),
    }


def parse_record(raw: dict[Any, Any]) -> dict[str, Any]:
    """A record hash as JSON-ready values."""
    doc: dict[str, Any] = {k.decode(): v.decode() for k, v in raw.items()}
    for name in JSON_FIELDS:
        if name in doc:
            doc[name] = orjson.loads(doc[name])
    for name in NUMBER_FIELDS:
        if name in doc:
            doc[name] = float(doc[name]) if "." in doc[name] else int(doc[name])
    return doc


def event(record: dict[str, Any]) -> bytes:
    """The message that tells a task's owner where their task stands."""
    data = {k: v for k, v in record.items() if k != "params"}
    return orjson.dumps({"type": "task", "ts": time.time(), "data": data})
