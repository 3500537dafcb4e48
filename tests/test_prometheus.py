"""A real Prometheus (Debian's `prometheus` package) scrapes every role of `mlpulse up` and
the demo producer, and its queries give the pipeline's numbers: each shared series comes
from the metric role alone, so `avg(mlpulse_mae)` with no job filter is the log's MAE."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from mlpulse.gateway.auth import issue_token
from tests.conftest import Env, Role, free_port, wait_until

PROMETHEUS = shutil.which("prometheus")
SECRET = "prometheus-test-secret-0123456789-abcdefghijkl"
# The series every role once exported, as zeros where it did not own them.
SHARED = "mlpulse_(joined|mae|rmse|rejected|unmatched|duplicates|join_pending)"
EVENTS = 400


def free_run(n: int) -> int:
    """The first of `n` consecutive free ports (the supervisor numbers its children so)."""
    for _ in range(50):
        base = free_port()
        if base + n > 65535:
            continue
        socks = []
        try:
            for port in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError(f"no {n} consecutive free ports")


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], str]]:
    """Start a private Prometheus on a config; yields its base URL."""
    if PROMETHEUS is None:
        if os.environ.get("MLPULSE_REQUIRE_PROMETHEUS"):
            pytest.fail("prometheus is not installed (apt-get install prometheus)")
        pytest.skip("needs Debian's prometheus package")
    procs: list[subprocess.Popen[bytes]] = []

    def start(config: dict[str, Any]) -> str:
        path = tmp_path / "prometheus.yml"
        path.write_text(json.dumps(config))  # JSON is YAML
        port = free_port()
        with (tmp_path / "prometheus.log").open("wb") as log:
            procs.append(subprocess.Popen(
                [PROMETHEUS, f"--config.file={path}",
                 f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{port}"],
                stdout=log, stderr=subprocess.STDOUT))
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            if procs[-1].poll() is not None:
                raise AssertionError((tmp_path / "prometheus.log").read_text())
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200
            return False

        wait_until(ready, timeout=60, what="Prometheus to be ready")
        return url

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def query(url: str, promql: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=10).json()
    assert answer["status"] == "success", answer
    return list(answer["data"]["result"])


def by_job(url: str, promql: str) -> dict[str, float]:
    return {r["metric"].get("job", ""): float(r["value"][1]) for r in query(url, promql)}


def scalar(url: str, promql: str) -> float:
    (only,) = query(url, promql)
    return float(only["value"][1])


def series(url: str, match: str) -> dict[str, set[str]]:
    """Every series Prometheus has stored that matches: the names each job exported."""
    answer = httpx.get(f"{url}/api/v1/series", params={"match[]": match}, timeout=10).json()
    assert answer["status"] == "success", answer
    jobs: dict[str, set[str]] = {}
    for labels in answer["data"]:
        jobs.setdefault(labels["job"], set()).add(labels["__name__"])
    return jobs


def test_a_real_prometheus_scrapes_every_role(env: Env, spawn: Callable[..., Role],
                                              prometheus: Callable[[dict[str, Any]], str]
                                              ) -> None:
    http_port = free_port()
    base = free_run(8)
    up = spawn("up", "--no-producer", ready=None, extra={
        "MLPULSE_HTTP_PORT": str(http_port), "MLPULSE_SECRET": SECRET,
        "MLPULSE_METRICS_PORT": str(base), "MLPULSE_PLOT_INTERVAL": "1"})
    up.wait_for(r"gateway +\| .*ready: http", timeout=90)
    # Its children run in sessions of their own: whatever happens, none outlives the test.
    children = psutil.Process(up.proc.pid).children()
    try:
        ports = dict(re.findall(r"(\w+) serves metrics on :(\d+)", up.output()))
        assert set(ports) == {"model", "metric", "plot", "worker", "beat", "alerts"}, ports
        producer_port = free_port()
        token = issue_token(SECRET.encode(), "prometheus", ttl=3600)
        jobs = [{"job_name": name, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
                for name, port in ports.items()]
        jobs.append({"job_name": "producer",
                     "static_configs": [{"targets": [f"127.0.0.1:{producer_port}"]}]})
        jobs.append({"job_name": "gateway", "authorization": {"credentials": token},
                     "static_configs": [{"targets": [f"127.0.0.1:{http_port}"]}]})
        url = prometheus({"global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
                          "scrape_configs": jobs})
        roles = {*ports, "gateway"}
        wait_until(lambda: {j for j, v in by_job(url, "up").items() if v == 1} >= roles,
                   timeout=90, what=f"every role up in Prometheus ({by_job(url, 'up')})")

        # The demo producer, scraped while it sends a fixed number of events.
        producer = spawn("produce", "--count", str(EVENTS), "--rate", "50", ready=None,
                         extra={"MLPULSE_METRICS_PORT": str(producer_port)})
        wait_until(lambda: by_job(url, 'up{job="producer"}').get("producer") == 1, timeout=30,
                   what="Prometheus to scrape the producer")
        assert producer.proc.wait(60) == 0, producer.output()
        wait_until(lambda: env.row_count() == EVENTS, timeout=60, what=f"{EVENTS} rows logged")
        wait_until(lambda: by_job(url, "mlpulse_joined") == {"metric": EVENTS}, timeout=30,
                   what=f"Prometheus to see {EVENTS} joined ({by_job(url, 'mlpulse_joined')})")

        # A report runs on the worker, whose pool counts it.
        http = f"http://127.0.0.1:{http_port}"
        auth = {"Authorization": f"Bearer {token}"}
        task = httpx.post(f"{http}/api/tasks/report", json={"minutes": 10}, headers=auth,
                          timeout=10)
        assert task.status_code == 202, task.text
        task_id = task.json()["id"]

        def state() -> str:
            return str(httpx.get(f"{http}/api/tasks/{task_id}", headers=auth, timeout=10)
                       .json()["state"])

        wait_until(lambda: state() in ("SUCCESS", "FAILURE"), timeout=60, what="the report")
        assert state() == "SUCCESS"
        done = 'sum by (job) (mlpulse_tasks_total{state="SUCCESS"})'
        wait_until(lambda: by_job(url, done) == {"worker": 1}, timeout=30,
                   what=f"Prometheus to count the report ({by_job(url, done)})")

        # Every role, the producer and the gateway were scraped, each with series of its own.
        seen = series(url, '{__name__=~"process_cpu_seconds_total|mlpulse_.+"}')
        assert set(seen) >= roles | {"producer"}, seen
        assert by_job(url, 'max_over_time(up{job="producer"}[10m])') == {"producer": 1.0}
        assert "gateway" in by_job(url, "mlpulse_gateway_connections")
        # The shared series exist once, from the metric role, over the whole run.
        shared = series(url, f'{{__name__=~"{SHARED}"}}')
        assert set(shared) == {"metric"}, shared
        assert len(shared["metric"]) == 7, shared
        # So the plain aggregates are the pipeline's numbers: the MAE of the logged rows.
        errors = [float(row["absolute_error"]) for row in env.rows()]
        assert len(errors) == EVENTS
        mae = sum(errors) / len(errors)
        rmse = math.sqrt(sum(e * e for e in errors) / len(errors))
        assert scalar(url, "avg(mlpulse_mae)") == pytest.approx(mae, rel=1e-6)
        assert scalar(url, "max(mlpulse_rmse)") == pytest.approx(rmse, rel=1e-6)
        assert scalar(url, "sum(mlpulse_joined)") == EVENTS
        assert scalar(url, "sum(mlpulse_rejected)") == 0
        # The model role counts what it predicted, as the pipeline's own messages.
        predicted = by_job(url, 'sum by (job) (mlpulse_messages_in_total{queue="features"})')
        assert predicted == {"model": EVENTS}, predicted
        assert up.stop(timeout=60) == 0, up.output()
    finally:
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
