"""Webhook delivery: Alertmanager's JSON, signed, sent at least once with one key per transition.

The receiver is a real HTTP server in a thread that answers from a script; the notifications
go through RabbitMQ to a real `mlpulse worker`, as the evaluator's would.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from celery import Celery
from celery.result import AsyncResult

from mlpulse import task_queue
from mlpulse.alerts.rules import Webhook
from mlpulse.alerts.webhooks import (
    ZERO_TIME,
    alertmanager_payload,
    encode,
    notification,
    sign,
    transition_key,
)
from mlpulse.config import Settings
from tests.conftest import Env, Role, wait_until

SECRET_ENV = "MLPULSE_TEST_HOOK_SECRET"
SECRET = "hook-secret-1"
# The path stands for a Slack-style URL whose path is its credential.
HOOK_PATH = "/services/T0/B0/path-credential"
T0 = 1_714_564_800.25  # 2024-05-01T12:00:00.250Z


# ---------------------------------------------------------------- a scripted receiver

@dataclass
class Answer:
    """How the receiver answers one POST: a status, after a delay, or held until released."""

    status: int = 200
    delay: float = 0.0
    hold: bool = False


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """A webhook on 127.0.0.1 that records every POST and answers from `script`, then 200."""

    script: list[Answer]
    seen: list[Seen] = field(default_factory=list)
    released: threading.Event = field(default_factory=threading.Event)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{HOOK_PATH}"

    def answer(self, request: Seen) -> Answer:
        with _lock:
            self.seen.append(request)
            return self.script.pop(0) if self.script else Answer()

    def wait_for(self, count: int, timeout: float = 60) -> list[Seen]:
        wait_until(lambda: len(self.seen) >= count, timeout, what=f"{count} POST(s)")
        return list(self.seen)


_lock = threading.Lock()


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            answer = receiver.answer(Seen(self.path, dict(self.headers.items()), body,
                                          time.monotonic()))
            if answer.hold:
                receiver.released.wait(120)
            time.sleep(answer.delay)
            # The client may have given up (a timeout, a killed worker) before this.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.send_response(answer.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the test asserts on what was recorded, not on stderr

    return Handler


@pytest.fixture
def receiver() -> Iterator[Callable[..., Receiver]]:
    servers: list[tuple[Receiver, ThreadingHTTPServer, threading.Thread]] = []

    def start(*script: Answer) -> Receiver:
        hook = Receiver(list(script))
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hook))
        hook.port = server.server_address[1]
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        servers.append((hook, server, thread))
        return hook

    yield start
    for hook, server, thread in servers:
        hook.released.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def celery(env: Env) -> Iterator[Celery]:
    """The Celery client the evaluator uses: the project's app, no task code in it."""
    app = task_queue.make_celery(Settings(amqp_url=env.amqp_url, redis_url=env.redis_url))
    try:
        yield app
    finally:
        app.close()


@pytest.fixture
def worker(spawn: Callable[..., Role]) -> Callable[[], Role]:
    return lambda: spawn("worker", "--concurrency", "1", extra={SECRET_ENV: SECRET},
                         ready=r"ready\.")


def _note(url: str, secret_env: str | None = SECRET_ENV, status: str = "firing",
          name: str = "MaeHigh") -> dict[str, Any]:
    alert = {"labels": {"alertname": name, "severity": "critical", "metric": "mae"},
             "annotations": {"summary": "MAE 4.1 > 3"}, "starts_at": T0, "ends_at": None,
             "fingerprint": "5f3a9c0d1e2b4a67", "status": status}
    payload = alertmanager_payload([alert], status, "webhook", "http://mlpulse.example/")
    return notification(transition_key(payload), Webhook(url=url, secret_env=secret_env),
                        payload)


def _send(celery: Celery, note: dict[str, Any]) -> AsyncResult:
    return celery.send_task(task_queue.DELIVER_TASK, args=[note])


# ---------------------------------------------------------------- pure logic

def _alert(status: str = "firing", ends_at: float | None = None, **labels: str) -> dict[str, Any]:
    return {"labels": {"alertname": "Drift", "severity": "warning", **labels},
            "annotations": {"summary": "PSI high", "runbook": f"r-{sorted(labels.values())}"},
            "starts_at": T0, "ends_at": ends_at, "fingerprint": f"fp{sorted(labels.items())}",
            "status": status}


def test_the_payload_has_alertmanagers_version_4_shape() -> None:
    doc = alertmanager_payload([_alert(feature="bmi"), _alert(feature="age")], "firing",
                               "webhook", "http://mlpulse.example/")
    assert doc["version"] == "4"
    assert doc["status"] == "firing"
    assert doc["receiver"] == "webhook"
    assert doc["truncatedAlerts"] == 0
    assert doc["groupKey"] == '{}:{alertname="Drift"}'
    assert doc["groupLabels"] == {"alertname": "Drift"}
    # What every alert shares, and only that.
    assert doc["commonLabels"] == {"alertname": "Drift", "severity": "warning"}
    assert doc["commonAnnotations"] == {"summary": "PSI high"}
    assert doc["externalURL"] == "http://mlpulse.example/"
    first = doc["alerts"][0]
    assert set(first) == {"status", "labels", "annotations", "startsAt", "endsAt",
                          "generatorURL", "fingerprint"}
    assert first["status"] == "firing"
    assert first["labels"] == {"alertname": "Drift", "severity": "warning", "feature": "bmi"}
    assert first["startsAt"] == "2024-05-01T12:00:00.250Z"
    assert datetime.fromisoformat(first["startsAt"]).timestamp() == T0
    assert first["endsAt"] == ZERO_TIME == "0001-01-01T00:00:00Z"
    assert first["generatorURL"] == "http://mlpulse.example/"


def test_a_resolved_alert_carries_its_end() -> None:
    doc = alertmanager_payload([_alert("resolved", ends_at=T0 + 90)], "resolved", "webhook",
                               "http://x/")
    assert doc["status"] == doc["alerts"][0]["status"] == "resolved"
    assert doc["alerts"][0]["endsAt"] == "2024-05-01T12:01:30.250Z"


@pytest.mark.parametrize(("alerts", "status", "message"), [
    ([], "firing", "at least one alert"),
    ([_alert()], "pending", "firing or resolved"),
    ([{**_alert(), "labels": {"severity": "info"}}], "firing", "no alertname"),
])
def test_a_payload_that_alertmanager_would_not_send_is_refused(
        alerts: list[dict[str, Any]], status: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        alertmanager_payload(alerts, status, "webhook", "http://x/")


def test_sign_is_hmac_sha256_in_hex() -> None:
    # RFC 4231, test case 2.
    assert sign(b"what do ya want for nothing?", "Jefe") == (
        "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")


def test_the_body_and_key_depend_on_the_transition_only() -> None:
    firing = alertmanager_payload([_alert()], "firing", "webhook", "http://x/")
    shuffled = dict(reversed(list(firing.items())))
    assert encode(shuffled) == encode(firing)
    assert transition_key(shuffled) == transition_key(firing)
    resolved = alertmanager_payload([_alert("resolved", ends_at=T0 + 60)], "resolved",
                                    "webhook", "http://x/")
    assert transition_key(resolved) != transition_key(firing)


def test_notifications_go_to_their_own_queue() -> None:
    app = task_queue.make_celery(Settings())
    try:
        route = app.amqp.router.route({}, task_queue.DELIVER_TASK)
        assert route["queue"].name == task_queue.ALERTS_QUEUE
        assert app.amqp.router.route({}, "mlpulse.report")["queue"].name == "mlpulse.tasks"
        # A worker started without -Q consumes every declared queue.
        assert set(app.amqp.queues) == {"mlpulse.tasks", task_queue.ALERTS_QUEUE}
    finally:
        app.close()


# ---------------------------------------------------------------- through a real worker

def test_one_signed_post_with_the_key_and_alertmanagers_json(
        receiver: Callable[..., Receiver], worker: Callable[[], Role], celery: Celery) -> None:
    hook = receiver()
    role = worker()
    note = _note(hook.url)
    assert _send(celery, note).get(timeout=60) == 200
    [seen] = hook.wait_for(1)
    assert seen.path == HOOK_PATH
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.headers["X-Mlpulse-Idempotency-Key"] == note["key"]
    expected = "sha256=" + hmac.new(SECRET.encode(), seen.body, hashlib.sha256).hexdigest()
    assert seen.headers["X-Mlpulse-Signature"] == expected
    doc = json.loads(seen.body)
    assert doc["version"] == "4"
    assert doc["status"] == doc["alerts"][0]["status"] == "firing"
    assert doc["alerts"][0]["labels"]["alertname"] == "MaeHigh"
    assert datetime.fromisoformat(doc["alerts"][0]["startsAt"]).timestamp() == T0

    # No secret, or a secret variable the worker does not have: sent unsigned.
    for secret_env in (None, "MLPULSE_TEST_HOOK_SECRET_UNSET"):
        assert _send(celery, _note(hook.url, secret_env)).get(timeout=60) == 200
    unsigned = hook.wait_for(3)[1:]
    assert [s.headers.get("X-Mlpulse-Signature") for s in unsigned] == [None, None]
    # The URL's path (often the credential) and the secret stay out of the worker's log.
    assert HOOK_PATH not in role.output()
    assert SECRET not in role.output()


def test_server_errors_are_retried_with_the_same_key_and_body(
        receiver: Callable[..., Receiver], worker: Callable[[], Role], celery: Celery) -> None:
    hook = receiver(Answer(500), Answer(503))
    worker()
    note = _note(hook.url)
    assert _send(celery, note).get(timeout=60) == 200
    seen = hook.wait_for(3)
    assert len(seen) == 3
    assert {s.headers["X-Mlpulse-Idempotency-Key"] for s in seen} == {note["key"]}
    assert len({s.body for s in seen}) == 1
    assert len({s.headers["X-Mlpulse-Signature"] for s in seen}) == 1
    # Exponential backoff: about 1 s, then about 2 s.
    gaps = [b.at - a.at for a, b in itertools.pairwise(seen)]
    assert 0.9 < gaps[0] < gaps[1]
    assert gaps[1] > 1.9


def test_a_receiver_that_times_out_gets_the_same_notification_again(
        receiver: Callable[..., Receiver], worker: Callable[[], Role], celery: Celery) -> None:
    hook = receiver(Answer(200, delay=12))  # longer than the worker's 10 s read timeout
    worker()
    note = _note(hook.url)
    assert _send(celery, note).get(timeout=60) == 200
    first, second = hook.wait_for(2)
    assert second.at - first.at > 10
    assert first.headers["X-Mlpulse-Idempotency-Key"] == note["key"]
    assert second.headers["X-Mlpulse-Idempotency-Key"] == note["key"]
    assert first.body == second.body


@pytest.mark.parametrize("status", [400, 404])
def test_a_client_error_is_not_retried(
        receiver: Callable[..., Receiver], worker: Callable[[], Role], celery: Celery,
        status: int) -> None:
    hook = receiver(Answer(status))
    role = worker()
    note = _note(hook.url)
    result = _send(celery, note)
    wait_until(lambda: result.state == "FAILURE", 60, what="the task to give up")
    time.sleep(3)  # longer than the first two retries' backoff together
    assert len(hook.seen) == 1
    role.wait_for(rf"refused notification {note['key']} with {status}")


def test_a_worker_killed_mid_post_sends_the_same_notification_again(
        receiver: Callable[..., Receiver], worker: Callable[[], Role], celery: Celery) -> None:
    hook = receiver(Answer(200, hold=True))
    first = worker()
    note = _note(hook.url)
    result = _send(celery, note)
    hook.wait_for(1)
    first.kill()
    worker()
    assert result.get(timeout=60) == 200
    held, again = hook.wait_for(2)
    assert held.headers["X-Mlpulse-Idempotency-Key"] == note["key"]
    assert again.headers["X-Mlpulse-Idempotency-Key"] == note["key"]
    assert held.body == again.body
