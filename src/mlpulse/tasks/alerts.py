"""Alert notifications: each webhook POST is a task of its own on the `mlpulse.alerts` queue.

The notification is the task's only argument, so a retry or a redelivery after a worker
died sends the same idempotency key and the same bytes (mlpulse.alerts.webhooks).
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
from celery.exceptions import SoftTimeLimitExceeded

from mlpulse import task_queue
from mlpulse.alerts import webhooks
from mlpulse.tasks.app import app

log = logging.getLogger(__name__)


@app.task(name=task_queue.DELIVER_TASK, acks_late=True, reject_on_worker_lost=True,
          autoretry_for=(webhooks.ReceiverUnavailable, httpx.TransportError,
                         SoftTimeLimitExceeded),
          retry_backoff=webhooks.RETRY_FIRST, retry_backoff_max=webhooks.RETRY_MAX,
          retry_jitter=False, max_retries=webhooks.MAX_RETRIES,
          # A refusal is the receiver's configuration, not a worker fault: logged once
          # below, and Celery records the failure without a traceback.
          throws=(webhooks.DeliveryRefused,),
          # Far above one attempt's timeouts (webhooks.TIMEOUT is per read, not per request):
          # only a receiver that trickles its answer byte by byte is cut off, then retried.
          soft_time_limit=60, time_limit=90)
def deliver(notification: dict[str, Any]) -> int:
    """POST one alert notification to its webhook; returns the receiver's 2xx status."""
    try:
        return webhooks.send(notification)
    except webhooks.DeliveryRefused as exc:
        log.error("%s", exc)
        raise
