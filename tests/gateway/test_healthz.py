"""/healthz and `mlpulse doctor` name a role that reports what it cannot do."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx

from mlpulse import health
from tests.conftest import Env
from tests.gateway.conftest import Gateway


def test_doctor_and_healthz_name_a_role_that_reports_a_problem(
        env: Env, gateway: Gateway) -> None:
    client = env.redis()
    assert httpx.get(f"{gateway.http}/healthz").status_code == 200
    client.set(health.heartbeat_key("metric", "box-1"),
               json.dumps({"pid": 1, "ts": 0, "problems": ["cannot write x: disk full"]}), ex=30)
    answer = httpx.get(f"{gateway.http}/healthz")
    assert answer.status_code == 503
    assert answer.json()["problems"] == {"metric:box-1": ["cannot write x: disk full"]}
    doctor = subprocess.run([sys.executable, "-m", "mlpulse", "doctor"], capture_output=True,
                            text=True, env={**os.environ, **env.vars}, cwd=env.root, timeout=60)
    assert "metric:box-1: cannot write x: disk full" in doctor.stdout
    client.delete(health.heartbeat_key("metric", "box-1"))
    assert httpx.get(f"{gateway.http}/healthz").status_code == 200
