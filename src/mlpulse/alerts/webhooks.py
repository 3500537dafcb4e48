"""Webhook notifications: Alertmanager's JSON (version 4), its signature, and one POST.

A notification is `{"key", "url", "secret_env", "payload"}`. The worker's task
`mlpulse.alerts.deliver` sends it at least once: a retry, or a redelivery after its worker
died, carries the same idempotency key and the same bytes, so a receiver that remembers
keys sees each transition once.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from mlpulse import __version__
from mlpulse.alerts.rules import Webhook
from mlpulse.errors import MlpulseError

log = logging.getLogger(__name__)

KEY_HEADER = "X-Mlpulse-Idempotency-Key"
SIGNATURE_HEADER = "X-Mlpulse-Signature"
# Go's zero time: what Alertmanager sends as `endsAt` while an alert is still firing.
ZERO_TIME = "0001-01-01T00:00:00Z"
# A receiver gets 5 s to accept the connection and 10 s for each read and write; a slow one
# costs a worker process at most that long before the attempt counts as failed.
TIMEOUT = httpx.Timeout(10.0, connect=5.0)
# Retries wait 1, 2, 4 ... s, at most 300 s apart: 300 of them ride out a receiver that is
# down for about a day (1+2+...+256 = 511 s, then 291 x 300 s), then the task fails.
RETRY_FIRST = 1
RETRY_MAX = 300
MAX_RETRIES = 300
# 408 and 429 mean "later"; any other 4xx means the receiver will never take this body.
RETRY_STATUSES = frozenset({408, 429})
# A failed receiver's answer, cut to this for the log.
ANSWER_CHARS = 200

# httpx logs every request's full URL at INFO; a webhook URL is often its own credential
# (Slack, Teams, Discord), so those lines are dropped while a notification is sent.
_sending: ContextVar[bool] = ContextVar("mlpulse_webhook_sending", default=False)
logging.getLogger("httpx").addFilter(lambda record: not _sending.get())


class ReceiverUnavailable(MlpulseError):
    """A webhook answered 5xx, 408 or 429: the same notification is sent again later."""


class DeliveryRefused(MlpulseError):
    """A webhook answered with a 4xx that no retry can change: the notification is dropped."""


def rfc3339(ts: float) -> str:
    """A Unix time as RFC 3339 in UTC with milliseconds, as `2024-05-01T12:00:00.000Z`."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def _common(maps: list[dict[str, str]]) -> dict[str, str]:
    first, *rest = maps
    return {k: v for k, v in first.items() if all(m.get(k) == v for m in rest)}


def _alert(alert: dict[str, Any], external_url: str) -> dict[str, Any]:
    labels = {str(k): str(v) for k, v in alert["labels"].items()}
    if "alertname" not in labels:
        raise ValueError(f"alert {alert.get('fingerprint')!r} has no alertname label")
    ends_at = alert.get("ends_at")
    firing = alert["status"] == "firing"
    return {
        "status": alert["status"],
        "labels": labels,
        "annotations": {str(k): str(v) for k, v in (alert.get("annotations") or {}).items()},
        "startsAt": rfc3339(alert["starts_at"]),
        "endsAt": ZERO_TIME if firing or ends_at is None else rfc3339(ends_at),
        "generatorURL": alert.get("generator_url") or external_url,
        "fingerprint": alert["fingerprint"],
    }


def alertmanager_payload(alerts: list[dict[str, Any]], status: str, receiver: str,
                         external_url: str) -> dict[str, Any]:
    """Alertmanager's webhook body (version 4) for one group of alerts of one rule."""
    if not alerts:
        raise ValueError("a notification needs at least one alert")
    if status not in ("firing", "resolved"):
        raise ValueError(f"status must be firing or resolved, not {status!r}")
    items = [_alert(a, external_url) for a in alerts]
    alertname = items[0]["labels"]["alertname"]
    escaped = alertname.replace("\\", "\\\\").replace('"', '\\"')
    return {
        "version": "4",
        # Alertmanager's own shape: the route's matchers, then the group's labels.
        "groupKey": f'{{}}:{{alertname="{escaped}"}}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": receiver,
        "groupLabels": {"alertname": alertname},
        "commonLabels": _common([a["labels"] for a in items]),
        "commonAnnotations": _common([a["annotations"] for a in items]),
        "externalURL": external_url,
        "alerts": items,
    }


def transition_key(payload: dict[str, Any]) -> str:
    """An idempotency key that names one transition: the same payload gives the same key,
    so an evaluator that restarts and sends a transition again does not make it new."""
    parts = [payload["groupKey"], payload["status"],
             *sorted(f"{a['fingerprint']}@{a['startsAt']}/{a['endsAt']}"
                     for a in payload["alerts"])]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def notification(key: str, webhook: Webhook, payload: dict[str, Any]) -> dict[str, Any]:
    """What `mlpulse.alerts.deliver` takes: the secret's name travels, never the secret."""
    return {"key": key, "url": str(webhook.url), "secret_env": webhook.secret_env,
            "payload": payload}


def encode(payload: dict[str, Any]) -> bytes:
    """The body, byte for byte the same on every attempt (keys sorted)."""
    return orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)


def sign(body: bytes, secret: str) -> str:
    """`sha256=` and the hex HMAC-SHA256 of `body` under `secret`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def where(url: str) -> str:
    """A receiver as it may appear in a log: scheme, host and port, never path or query."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


def send(note: dict[str, Any]) -> int:
    """POST one notification once; returns the 2xx status, or raises ReceiverUnavailable
    (try later), DeliveryRefused (never), or httpx.TransportError (timeouts, refusals)."""
    webhook = Webhook(url=note["url"], secret_env=note.get("secret_env"))
    body = encode(note["payload"])
    headers = {"Content-Type": "application/json", KEY_HEADER: note["key"],
               "User-Agent": f"mlpulse/{__version__}"}
    secret = webhook.secret()  # read now, in the worker, so a rotated secret applies
    if secret is not None:
        headers[SIGNATURE_HEADER] = sign(body, secret)
    receiver = where(note["url"])
    token = _sending.set(True)
    try:
        with httpx.Client(timeout=TIMEOUT) as http:
            response = http.post(note["url"], content=body, headers=headers)
    finally:
        _sending.reset(token)
    status = response.status_code
    if 200 <= status < 300:
        return status
    answer = response.text[:ANSWER_CHARS].replace("\n", " ")
    if status >= 500 or status in RETRY_STATUSES:
        raise ReceiverUnavailable(f"webhook {receiver} answered {status}: {answer}")
    if 400 <= status < 500:
        raise DeliveryRefused(f"webhook {receiver} refused notification {note['key']} with "
                              f"{status}, so it is dropped: {answer}")
    # 1xx and 3xx (redirects are not followed: a signed body goes only where it was meant).
    raise DeliveryRefused(f"webhook {receiver} answered {status}, which is not a delivery; "
                          f"notification {note['key']} is dropped")
