"""Alerts through real roles: a drift fires and resolves, once each, at a local receiver.

Model, metric, a Celery worker and `mlpulse alerts` run against real RabbitMQ and Redis;
a webhook receiver on loopback records every POST.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Env, Role, wait_until
from tests.gateway.test_drift import X_REF, Stream, resample

SECRET = "hook-secret-for-tests"


class Receiver:
    """Records each POST: headers and JSON body. It can hold the next POST unanswered
    until released (a process killed "during a POST"), or answer 500 to every one."""

    def __init__(self) -> None:
        self.posts: list[tuple[dict[str, str], bytes]] = []
        self.hold_next = False
        self.failing = False
        self.arrived = threading.Event()
        self.release = threading.Event()
        received, me = self.posts, self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                if me.hold_next:
                    me.hold_next = False
                    me.arrived.set()
                    me.release.wait(30)
                self.send_response(500 if me.failing else 200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def statuses(self) -> list[str]:
        return [json.loads(body)["status"] for _, body in self.posts]

    def by_key(self) -> dict[str, set[str]]:
        """Each idempotency key and the statuses POSTed under it."""
        out: dict[str, set[str]] = {}
        for headers, body in self.posts:
            out.setdefault(headers["x-mlpulse-idempotency-key"], set()).add(
                json.loads(body)["status"])
        return out

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def rules_file(root: Path, receiver: Receiver) -> Path:
    path = root / "rules.yaml"
    path.write_text(f"""
rules:
  - name: BmiDrift
    metric: psi
    feature: bmi
    window: 20
    op: ">"
    threshold: 0.25
    for: 2
    severity: critical
    notify: [dashboard, webhook]
receivers:
  webhook:
    - url: {receiver.url}
      secret_env: MLPULSE_TEST_HOOK_SECRET
""")
    return path


def alert_env(env: Env, receiver: Receiver, **more: str) -> dict[str, str]:
    return {"MLPULSE_ALERT_RULES": str(rules_file(env.root, receiver)),
            "MLPULSE_ALERT_INTERVAL": "0.5", "MLPULSE_DRIFT_MIN_EVENTS": "200",
            "MLPULSE_TEST_HOOK_SECRET": SECRET, **more}


def everything(spawn: Callable[..., Role], extra: dict[str, str]) -> None:
    """Model, metric, a worker and the evaluator: what an alert needs end to end."""
    spawn("model", extra=extra)
    spawn("metric", extra=extra)
    spawn("worker", "--concurrency", "1", extra=extra, ready=r"ready\.")
    spawn("alerts", extra=extra)


def send_for(stream: Stream, seconds: float, shift: float, until: Callable[[], bool]
             | None = None) -> None:
    """Clean (or bmi-shifted) events, 200 every 0.25 s, for `seconds` or until `until`."""
    deadline = time.monotonic() + seconds
    seed = int(time.time() * 1000) % 10_000
    while time.monotonic() < deadline:
        X, y = resample(200, seed)
        seed += 1
        X[:, 2] += shift * X_REF[:, 2].std()
        stream.send(X, y)
        if until is not None and until():
            return
        time.sleep(0.25)


def test_a_drift_fires_and_resolves_once_each_with_a_valid_signature(
        env: Env, spawn: Callable[..., Role], receiver: Receiver) -> None:
    extra = alert_env(env, receiver)
    everything(spawn, extra)
    stream = Stream(env)
    try:
        send_for(stream, 60, shift=3.0, until=lambda: "firing" in receiver.statuses())
        wait_until(lambda: "firing" in receiver.statuses(), 30, "the firing POST")
        send_for(stream, 90, shift=0.0, until=lambda: "resolved" in receiver.statuses())
        wait_until(lambda: "resolved" in receiver.statuses(), 30, "the resolved POST")
    finally:
        stream.close()
    # Two more evaluation rounds: nothing else may come.
    time.sleep(1.5)
    assert receiver.statuses() == ["firing", "resolved"]
    # It fired within `for` (2 s) and one evaluation interval (0.5 s) of going pending.
    client = env.redis()
    try:
        history = [json.loads(h) for h in client.lrange("mlpulse:alerts:history", 0, -1)]
    finally:
        client.close()
    at = {h["to"]: h["at"] for h in history}
    assert 2.0 <= at["firing"] - at["pending"] <= 2.0 + 0.5 + 0.25, at
    keys = set()
    for headers, body in receiver.posts:
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert headers["x-mlpulse-signature"] == expected
        keys.add(headers["x-mlpulse-idempotency-key"])
        doc = json.loads(body)
        assert doc["version"] == "4"
        (alert,) = doc["alerts"]
        assert alert["labels"]["alertname"] == "BmiDrift"
        assert alert["labels"]["severity"] == "critical"
        assert alert["labels"]["feature"] == "bmi"
        assert alert["labels"]["model_version"] == "v1"
        assert alert["status"] == doc["status"]
    assert len(keys) == 2  # one distinct key per transition


def test_one_evaluator_at_a_time_and_a_standby_takes_over(
        env: Env, spawn: Callable[..., Role], receiver: Receiver) -> None:
    extra = alert_env(env, receiver, MLPULSE_ALERT_LEASE="2")
    first = spawn("alerts", extra=extra)
    first.wait_for("evaluating the alert rules")
    second = spawn("alerts", extra=extra)
    second.wait_for("another evaluator holds the lease; standing by")
    assert "evaluating the alert rules" not in second.output()
    killed = time.monotonic()
    first.kill()
    second.wait_for("evaluating the alert rules", timeout=10)
    assert time.monotonic() - killed < 2 + 2  # the lease, plus an evaluation interval


def test_a_bad_rules_file_stops_the_role_with_one_line(env: Env, spawn: Callable[...,
                                                                                 Role]) -> None:
    path = env.root / "bad.yaml"
    path.write_text("rules:\n  - name: X\n    metric: psi\n    op: '=>'\n    threshold: 1\n")
    role = spawn("alerts", extra={"MLPULSE_ALERT_RULES": str(path)}, ready=None)
    assert role.proc.wait(30) == 2
    out = role.output().strip().splitlines()
    assert out[-1].endswith(f'{path}: rule "X" (rules[0]): op: must be one of >, >=, <, <= '
                            "(got '=>')")



def one_key_per_transition(receiver: Receiver) -> None:
    keys = receiver.by_key()
    assert sorted(s for statuses in keys.values() for s in statuses) == \
        ["firing", "resolved"], keys


def test_killing_the_evaluator_mid_episode_sends_each_transition_under_one_key(
        env: Env, spawn: Callable[..., Role], receiver: Receiver) -> None:
    extra = alert_env(env, receiver, MLPULSE_ALERT_LEASE="2")
    spawn("model", extra=extra)
    spawn("metric", extra=extra)
    spawn("worker", "--concurrency", "1", extra=extra, ready=r"ready\.")
    first = spawn("alerts", extra=extra)
    stream = Stream(env)
    try:
        # During a POST: the firing notification is held at the receiver.
        receiver.hold_next = True
        send_for(stream, 60, shift=3.0, until=receiver.arrived.is_set)
        assert receiver.arrived.wait(30), "no firing POST"
        first.kill()
        second = spawn("alerts", extra=extra, ready="evaluating the alert rules")
        receiver.release.set()
        send_for(stream, 90, shift=0.0, until=lambda: "resolved" in receiver.statuses())
        wait_until(lambda: "resolved" in receiver.statuses(), 30, "the resolved POST")
        # Right after the answer.
        second.kill()
        spawn("alerts", extra=extra, ready="evaluating the alert rules")
        send_for(stream, 3, shift=0.0)
    finally:
        stream.close()
    one_key_per_transition(receiver)


def test_killing_the_worker_mid_post_redelivers_under_the_same_key(
        env: Env, spawn: Callable[..., Role], receiver: Receiver) -> None:
    extra = alert_env(env, receiver)
    spawn("model", extra=extra)
    spawn("metric", extra=extra)
    spawn("alerts", extra=extra)
    worker = spawn("worker", "--concurrency", "1", extra=extra, ready=r"ready\.")
    stream = Stream(env)
    try:
        receiver.hold_next = True
        send_for(stream, 60, shift=3.0, until=receiver.arrived.is_set)
        assert receiver.arrived.wait(30), "no firing POST"
        worker.kill()  # during the POST
        receiver.release.set()
        worker = spawn("worker", "--concurrency", "1", extra=extra, ready=r"ready\.")
        wait_until(lambda: len(receiver.posts) >= 2, 60, "the firing POST sent again")
        send_for(stream, 90, shift=0.0, until=lambda: "resolved" in receiver.statuses())
        wait_until(lambda: "resolved" in receiver.statuses(), 30, "the resolved POST")
        worker.kill()  # right after the answer
        spawn("worker", "--concurrency", "1", extra=extra, ready=r"ready\.")
        send_for(stream, 3, shift=0.0)
    finally:
        stream.close()
    keys = receiver.by_key()
    one_key_per_transition(receiver)
    firing_key = next(k for k, v in keys.items() if "firing" in v)
    assert sum(1 for h, _ in receiver.posts
               if h["x-mlpulse-idempotency-key"] == firing_key) >= 2


def test_a_webhook_that_is_down_is_retried_and_holds_nothing_else_up(
        env: Env, spawn: Callable[..., Role], receiver: Receiver) -> None:
    receiver.failing = True
    extra = alert_env(env, receiver)
    everything(spawn, extra)
    stream = Stream(env)
    try:
        send_for(stream, 60, shift=3.0, until=lambda: len(receiver.posts) >= 3)
        wait_until(lambda: len(receiver.posts) >= 3, 30, "three tries of the firing POST")
        # Meanwhile the pipeline kept up, and the alert states kept moving.
        sent = stream.sent
        wait_until(lambda: env.row_count() >= sent, 30, "every row sent logged")
    finally:
        stream.close()
    times = [json.loads(b)["alerts"][0]["fingerprint"] for _, b in receiver.posts]
    assert len(set(times)) == 1
    assert len(receiver.by_key()) == 1  # the same key on every try
