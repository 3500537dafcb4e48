"""Batch scoring benchmark: a million-row CSV through the gateway and two Celery workers.

Run from the repository root with the project virtualenv::

    python bench/batch_score.py                 # 1,000,000 rows, two workers
    python bench/batch_score.py --rows 200000 --workers 1

It starts a gateway and N workers (one process each) against a vhost and Redis DB of its
own, uploads the CSV over HTTP as a user would, and waits for the task to succeed. The
clock runs from the first byte of the upload to the result being ready. For reference it
also times one process doing the same work in a single pandas pass (read, predict,
write), which has no upload, no checks and no coordination.
"""

from __future__ import annotations

import argparse
import datetime
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import redis

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "src"))

from mlpulse.gateway.auth import issue_token  # noqa: E402
from mlpulse.ml import registry  # noqa: E402

VHOST = "mlpulse-bench"
AMQP_URL = f"amqp://guest:guest@localhost:5672/{VHOST}"
REDIS_URL = "redis://localhost:6379/14"
SECRET = "bench-secret-0123456789-abcdefghijklmnopqrstuvwxyz"


def make_csv(path: Path, rows: int, features: list[str]) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(0, 0.05, (rows, len(features))), columns=features)
    frame.insert(0, "id", [f"r{i}" for i in range(rows)])
    frame.to_csv(path, index=False)


def prepare() -> None:
    subprocess.run(["rabbitmqctl", "add_vhost", VHOST], capture_output=True, check=False)
    subprocess.run(["rabbitmqctl", "set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*"],
                   capture_output=True, check=False)
    subprocess.run(["rabbitmqctl", "purge_queue", "-p", VHOST, "mlpulse.tasks"],
                   capture_output=True, check=False)
    r = redis.Redis.from_url(REDIS_URL)
    r.flushdb()
    r.close()


def start(args: list[str], env: dict[str, str], log: Path, ready: str) -> subprocess.Popen[str]:
    out = log.open("w")
    proc = subprocess.Popen([sys.executable, "-m", "mlpulse", *args], env=env, stdout=out,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 90
    while ready not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{args} did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.1)
    return proc


def single_pass(path: Path, out: Path, model: registry.LoadedModel) -> float:
    """The same work in one process, one pandas pass: a floor for the distributed path."""
    t0 = time.perf_counter()
    frame = pd.read_csv(path, dtype={f: np.float64 for f in model.meta["feature_names"]})
    y = model.predict(frame[model.meta["feature_names"]].to_numpy(dtype=np.float64))
    pd.DataFrame({"row": np.arange(1, len(frame) + 1), "id": frame["id"], "y_pred": y,
                  "model_version": model.version}).to_csv(out, index=False)
    return time.perf_counter() - t0


def run(rows: int, workers: int) -> dict[str, float]:
    prepare()
    tmp = Path(tempfile.mkdtemp(prefix="mlpulse-batchbench-"))
    models = tmp / "models"
    model = registry.ensure_model(models)
    features = list(model.meta["feature_names"])
    upload = tmp / "rows.csv"
    make_csv(upload, rows, features)
    size = upload.stat().st_size
    port = 18000 + os.getpid() % 1000
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLPULSE_")}
    env.update({
        "MLPULSE_AMQP_URL": AMQP_URL, "MLPULSE_REDIS_URL": REDIS_URL, "MLPULSE_SECRET": SECRET,
        "MLPULSE_HTTP_PORT": str(port), "MLPULSE_DATA_DIR": str(tmp / "data"),
        "MLPULSE_LOG_DIR": str(tmp / "logs"), "MLPULSE_MODELS_DIR": str(models),
        "MLPULSE_LOG_LEVEL": "WARNING", "PYTHONPATH": str(REPO_ROOT / "src"),
        "MLPULSE_MAX_UPLOAD_BYTES": str(max(size * 2, 256 * 2**20)),
    })
    procs = [start(["gateway"], {**env, "MLPULSE_LOG_LEVEL": "INFO"}, tmp / "gateway.log",
                   "ready: http")]
    try:
        for i in range(workers):
            procs.append(start(["worker", "-c", "1"], {**env, "MLPULSE_LOG_LEVEL": "INFO"},
                               tmp / f"worker{i}.log", " ready."))
        headers = {"Authorization": f"Bearer {issue_token(SECRET.encode(), 'bench', ttl=3600)}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers,
                          timeout=300) as http:
            t0 = time.perf_counter()
            with upload.open("rb") as f:
                accepted = http.post("/api/tasks/batch-score",
                                     files={"file": ("rows.csv", f, "text/csv")})
            t_accepted = time.perf_counter()
            accepted.raise_for_status()
            task_id = accepted.json()["id"]
            while True:
                doc = http.get(f"/api/tasks/{task_id}").json()
                if doc["state"] in ("SUCCESS", "FAILURE"):
                    break
                time.sleep(0.1)
            t_done = time.perf_counter()
            if doc["state"] != "SUCCESS":
                raise RuntimeError(f"the task failed: {doc}")
            result = tmp / "data" / "results" / doc["result"]["file"]
            with result.open("rb") as f:
                lines = sum(1 for _ in f) - 1
            if lines != rows:
                raise RuntimeError(f"the result has {lines} rows, not {rows}")
    finally:
        for p in procs:
            with_group(p, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                with_group(p, signal.SIGKILL)
    floor = single_pass(upload, tmp / "single.csv", model)
    return {"rows": rows, "mib": size / 2**20, "upload_and_check_s": t_accepted - t0,
            "scoring_s": t_done - t_accepted, "total_s": t_done - t0,
            "rows_per_s": rows / (t_done - t0), "single_pass_s": floor}


def with_group(proc: subprocess.Popen[str], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def report(r: dict[str, float], workers: int, argv: list[str]) -> str:
    return "\n".join([
        "## Batch scoring benchmark", "",
        f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: nproc={os.cpu_count()}; gateway, {workers} worker process(es), RabbitMQ "
        "and Redis on the same cores",
        f"- command: `{' '.join(['python', 'bench/batch_score.py', *argv])}`",
        f"- input: {int(r['rows']):,} rows of 10 features plus an id, {r['mib']:.1f} MiB, "
        "uploaded over HTTP", "",
        "| rows | upload + checks | scoring + merge | total | rows/s | one process, one pandas "
        "pass |",
        "|--:|--:|--:|--:|--:|--:|",
        f"| {int(r['rows']):,} | {r['upload_and_check_s']:.1f} s | {r['scoring_s']:.1f} s "
        f"| {r['total_s']:.1f} s | {r['rows_per_s']:,.0f} | {r['single_pass_s']:.1f} s |",
        "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = run(args.rows, args.workers)
    text = report(result, args.workers, sys.argv[1:])
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
