"""A lean reference pipeline (issue 14): what the broker, Redis and the disk allow.

The same essential work as mlpulse's pipeline, and nothing more, in three processes::

    producer ──lean.features──▶ model ──lean.y_pred──┐
        └───────lean.y_true──────────────────────────▶ joiner ──▶ metric_log.csv + Redis

- **producer**: the diabetes set that mlpulse's producer streams (shuffled, cycling),
  framed ``--frame`` events per message as JSON arrays of ``{"id", "body", "ts"}`` (a bare
  object with ``--frame 1``), persistent, on durable queues, with publisher confirms
  (a window of unconfirmed publishes, so the confirms overlap).
- **model**: the estimator mlpulse trains by default (``mlpulse.ml.registry.train`` on the
  diabetes set, at start-up, before it says ready), one vectorised ``predict`` per frame,
  a persistent confirmed ``y_pred`` frame carrying ``model_version``; the features frame
  is acked once the broker confirmed its ``y_pred``.
- **joiner**: an in-process join by id. For each frame that completes pairs: one CSV write
  of the rows with mlpulse's columns (``id,y_true,y_pred,absolute_error,model_version,
  sent_at,joined_at,logged_at,pos``, numbers in ``repr`` precision), one fsync, one
  pipelined Redis write of the running aggregates per model version (count, sum of
  absolute errors, sum of squares), and only then the acks of the messages whose every
  event is written.

What it leaves out, against mlpulse: no validation of the wire (ids, shapes, finite
numbers) and so no dead-lettering; no join state outside the process (a crash loses the
pending halves, which RabbitMQ redelivers only because they are unacked); no done markers,
so no duplicate or conflict detection; no pending TTL or sweep; no outbox, so no crash
recovery of the CSV; no drift counting, error histogram, change detection, history,
rotation, telemetry, heartbeats, reconnects or model swaps.

Run alone, from the repository root::

    python bench/lean_reference.py --count 100000 --frame 500
    python bench/lean_reference.py --count 30000 --frame 1 --rate 1000  # paced

(With single-event frames, one fsync per frame caps the joiner at one event per fsync, so
such a run measures the disk more than the pipeline; ``bench/pipeline.py`` runs the
reference with frames of 500 only.)

It uses the RabbitMQ vhost ``mlpulse-bench`` (created if missing; the ``lean.*`` queues are
deleted first) and Redis DB 14 (flushed first), and prints events/s and p50/p99 latency,
measured as ``bench/pipeline.py`` does. ``bench/pipeline.py`` starts the same roles
(``--role model``, ``--role joiner``, ``--role producer``) through `role_commands`.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiormq
from pamqp import commands as spec

REPO_ROOT = Path(__file__).resolve().parent.parent

VHOST = "mlpulse-bench"
AMQP_URL = f"amqp://guest:guest@localhost:5672/{VHOST}"
REDIS_URL = "redis://localhost:6379/14"
FEATURES = "lean.features"
Y_TRUE = "lean.y_true"
Y_PRED = "lean.y_pred"
QUEUES = (FEATURES, Y_TRUE, Y_PRED)
COLUMNS = (
    "id",
    "y_true",
    "y_pred",
    "absolute_error",
    "model_version",
    "sent_at",
    "joined_at",
    "logged_at",
    "pos",
)
AGGREGATES = "lean:agg:"  # + model version: a hash of count, abs_sum, sq_sum
# Unconfirmed publishes a producer keeps in flight, and deliveries a consumer holds unacked
# (mlpulse's prefetch is 2,000 too).
CONFIRM_WINDOW = 256
PREFETCH = 2000
SEED = 0
READY_TIMEOUT_S = 180.0
STALL_TIMEOUT_S = 30.0

Handler = Callable[[Any], Awaitable[None]]


# --------------------------------------------------------------------------- roles


async def _connect(url: str) -> tuple[Any, Any]:
    connection = await aiormq.connect(url)
    channel = await connection.channel(publisher_confirms=True)
    for queue in QUEUES:
        await channel.queue_declare(queue, durable=True)
    return connection, channel


def _persistent() -> Any:
    return spec.Basic.Properties(delivery_mode=2, content_type="application/json")


async def _publish(channel: Any, queue: str, body: bytes, properties: Any) -> None:
    """Publish and wait for the broker's confirm; a nack is an error."""
    # `wait=False`, as mlpulse publishes: the confirm is what is awaited, not the drain of
    # each frame under the channel's lock.
    confirmation = await channel.basic_publish(body, routing_key=queue, properties=properties,
                                               wait=False)
    if not isinstance(confirmation, spec.Basic.Ack):
        raise RuntimeError(f"the broker refused a message to {queue}: {confirmation!r}")


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _serve(url: str, queues: Sequence[str], handler: Handler, channel_user: Any) -> None:
    """Consume ``queues`` with ``handler`` (a task per delivery) until SIGTERM."""
    stop = _stop_event()
    connection, channel = await _connect(url)
    channel_user(channel)
    await channel.basic_qos(prefetch_count=PREFETCH)
    for queue in queues:
        await channel.basic_consume(queue, handler, no_ack=False)
    print(f"ready: consuming {', '.join(queues)}", flush=True)
    await stop.wait()
    await connection.close()
    print(f"stopped after {time.process_time():.2f} CPU s", flush=True)


async def produce(url: str, count: int, frame: int, rate: float) -> None:
    """Send ``count`` events and their labels in frames of ``frame``, all confirmed."""
    import numpy as np
    import orjson

    from mlpulse.ml.data import diabetes

    data = diabetes()
    X, y = data.X.tolist(), data.y.tolist()
    rng = np.random.default_rng(SEED)
    connection, channel = await _connect(url)
    properties = _persistent()
    slots = asyncio.Semaphore(CONFIRM_WINDOW)
    failed: list[BaseException] = []

    async def publish(queue: str, body: bytes) -> None:
        try:
            await _publish(channel, queue, body, properties)
        except BaseException as exc:
            failed.append(exc)
            raise
        finally:
            slots.release()

    run = f"{int(time.time() * 1000):x}"
    pending: set[asyncio.Task[None]] = set()
    order: list[int] = []
    start = time.monotonic()
    sent = 0
    while sent < count and not failed:
        size = min(frame, count - sent)
        if rate:
            delay = start + sent / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        now = time.time()
        feats, labels = [], []
        for _ in range(size):
            if not order:
                order = rng.permutation(len(X)).tolist()
            row = order.pop()
            event_id = f"{run}-{sent}"
            feats.append({"id": event_id, "body": X[row], "ts": now})
            labels.append({"id": event_id, "body": y[row], "ts": now})
            sent += 1
        for queue, events in ((FEATURES, feats), (Y_TRUE, labels)):
            body = orjson.dumps(events if frame > 1 else events[0])
            await slots.acquire()
            task = asyncio.create_task(publish(queue, body))
            pending.add(task)
            task.add_done_callback(pending.discard)
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
    await connection.close()
    if failed:
        raise failed[0]
    print(
        f"sent {sent} events in {time.monotonic() - start:.2f} s ({time.process_time():.2f} CPU s)",
        flush=True,
    )


async def serve_model(url: str) -> None:
    """Predict every features frame with one vectorised call; ack once y_pred is confirmed."""
    import numpy as np
    import orjson
    import sklearn

    from mlpulse.ml.data import diabetes
    from mlpulse.ml.registry import train

    estimator, _ = train(diabetes())  # mlpulse's default model, before the role is ready
    version = "v1"
    properties = _persistent()
    channel: Any = None

    def use(found: Any) -> None:
        nonlocal channel
        channel = found

    async def handle(message: Any) -> None:
        doc = orjson.loads(message.body)
        events = doc if isinstance(doc, list) else [doc]
        X = np.array([e["body"] for e in events], dtype=np.float64)
        with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
            predicted = np.asarray(estimator.predict(X), dtype=np.float64).tolist()
        out = [
            {"id": e["id"], "body": p, "ts": e.get("ts"), "model_version": version}
            for e, p in zip(events, predicted, strict=True)
        ]
        await _publish(
            channel, Y_PRED, orjson.dumps(out if isinstance(doc, list) else out[0]), properties
        )
        await channel.basic_ack(message.delivery.delivery_tag)

    await _serve(url, [FEATURES], handle, use)


async def serve_joiner(url: str, redis_url: str, csv_path: Path) -> None:
    """Join y_true with y_pred in memory; per frame with pairs: write, fsync, Redis, ack."""
    import orjson
    import redis

    client = redis.Redis.from_url(redis_url)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(csv_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    if os.fstat(fd).st_size == 0:
        os.write(fd, (",".join(COLUMNS) + "\n").encode())
        os.fsync(fd)
    # id -> (value, send time, model version, delivery tag) of the half waiting for its pair
    waiting: dict[str, dict[str, tuple[float, float | None, str, int]]] = {"t": {}, "p": {}}
    unwritten: dict[int, int] = {}  # delivery tag -> events of the message not yet written
    frames = 0
    fsync_s = 0.0
    channel: Any = None

    def use(found: Any) -> None:
        nonlocal channel
        channel = found

    async def handle(message: Any) -> None:
        nonlocal frames, fsync_s
        side, other = ("t", "p") if message.delivery.routing_key == Y_TRUE else ("p", "t")
        tag = message.delivery.delivery_tag
        doc = orjson.loads(message.body)
        events = doc if isinstance(doc, list) else [doc]
        unwritten[tag] = len(events)
        mine, theirs = waiting[side], waiting[other]
        pairs = []
        for e in events:
            half = (float(e["body"]), e.get("ts"), str(e.get("model_version") or ""), tag)
            found = theirs.pop(e["id"], None)
            if found is None:
                mine[e["id"]] = half
            else:
                pairs.append((e["id"], *((half, found) if side == "t" else (found, half))))
        if not pairs:
            return
        joined_at = time.time()
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        sums: dict[str, list[float]] = {}
        done = []
        logged_at = f"{time.time():.6f}"
        for index, (event_id, t, p, *_) in enumerate(pairs):
            error = abs(t[0] - p[0])
            sent = [ts for ts in (t[1], p[1]) if ts is not None]
            writer.writerow(
                (
                    event_id,
                    repr(t[0]),
                    repr(p[0]),
                    repr(error),
                    p[2],
                    f"{min(sent):.6f}" if sent else "",
                    f"{joined_at:.6f}",
                    logged_at,
                    f"{frames}:{index}",
                )
            )
            agg = sums.setdefault(p[2], [0, 0.0, 0.0])
            agg[0] += 1
            agg[1] += error
            agg[2] += error * error
            for half_tag in (t[3], p[3]):
                unwritten[half_tag] -= 1
                if not unwritten[half_tag]:
                    del unwritten[half_tag]
                    done.append(half_tag)
        frames += 1
        os.write(fd, buf.getvalue().encode())
        synced = time.perf_counter()
        os.fsync(fd)
        fsync_s += time.perf_counter() - synced
        pipe = client.pipeline(transaction=False)
        for version, (n, abs_sum, sq_sum) in sums.items():
            key = AGGREGATES + version
            pipe.hincrby(key, "count", int(n))
            pipe.hincrbyfloat(key, "abs_sum", abs_sum)
            pipe.hincrbyfloat(key, "sq_sum", sq_sum)
        pipe.execute()
        for done_tag in done:
            await channel.basic_ack(done_tag)

    try:
        await _serve(url, [Y_TRUE, Y_PRED], handle, use)
    finally:
        os.close(fd)
        client.close()
        print(f"{frames} frames written, {fsync_s:.2f} s in fsync", flush=True)


# --------------------------------------------------------------------------- launching


def role_commands(
    python: str,
    csv_path: Path,
    count: int,
    frame: int,
    rate: float = 0.0,
    amqp_url: str = AMQP_URL,
    redis_url: str = REDIS_URL,
) -> tuple[list[tuple[str, list[str]]], list[str]]:
    """The consumers (name, argv) in start order, each to be waited on until it logs
    ``ready``, and the producer's argv. The joiner is named ``metric``, after its role."""
    script = str(Path(__file__).resolve())
    urls = ["--amqp-url", amqp_url, "--redis-url", redis_url]
    consumers = [
        ("model", [python, script, "--role", "model", *urls]),
        ("metric", [python, script, "--role", "joiner", *urls, "--csv", str(csv_path)]),
    ]
    producer = [
        python,
        script,
        "--role",
        "producer",
        *urls,
        "--count",
        str(count),
        "--frame",
        str(frame),
        "--rate",
        f"{rate:g}",
    ]
    return consumers, producer


def role_env() -> dict[str, str]:
    """Environment of the roles: unbuffered, with mlpulse's ``src`` importable."""
    env = dict(os.environ)
    src = str(REPO_ROOT / "src")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def ensure_vhost() -> None:
    """Create the benchmark vhost and let guest use it (idempotent), as pipeline.py does."""
    if shutil.which("rabbitmqctl") is None:
        print("rabbitmqctl not found; assuming the vhost exists", file=sys.stderr)
        return
    for command in (
        ["rabbitmqctl", "add_vhost", VHOST],
        ["rabbitmqctl", "set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*"],
    ):
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        output = done.stdout + done.stderr
        if done.returncode != 0 and not re.search(r"already.exists", output, re.IGNORECASE):
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {output}")


def reset(amqp_url: str = AMQP_URL, redis_url: str = REDIS_URL) -> None:
    """Delete the lean queues and flush the benchmark Redis DB."""
    import pika
    import redis

    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        for queue in QUEUES:
            channel.queue_delete(queue=queue)
    finally:
        connection.close()
    client = redis.Redis.from_url(redis_url)
    try:
        client.flushdb()
    finally:
        client.close()


def _rows(csv_path: Path) -> int:
    try:
        return max(csv_path.read_bytes().count(b"\n") - 1, 0)
    except FileNotFoundError:
        return 0


def _wait_ready(proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while b"ready" not in log_path.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{log_path.stem} did not get ready: {log_path.read_text()}")
        time.sleep(0.1)


def measure(csv_path: Path, started: float) -> dict[str, float]:
    """Rows, events/s (from the first send, as pipeline.py measures, and from the
    producer's start) and latency percentiles (``logged_at`` - ``sent_at``) of the CSV."""
    import numpy as np

    with csv_path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    sent = np.array([float(r["sent_at"]) for r in rows])
    logged = np.array([float(r["logged_at"]) for r in rows])
    latency_ms = (logged - sent) * 1000.0
    return {
        "rows": len(rows),
        "unique_ids": len({r["id"] for r in rows}),
        "events_per_s": len(rows) / (logged.max() - sent.min()),
        "events_per_s_from_start": len(rows) / (logged.max() - started),
        "p50_ms": float(np.quantile(latency_ms, 0.50)),
        "p99_ms": float(np.quantile(latency_ms, 0.99)),
    }


def run_alone(count: int, frame: int, rate: float, keep: bool) -> int:
    """Start the three roles on clean state, wait for every row, stop them, measure."""
    ensure_vhost()
    reset()
    workdir = Path(tempfile.mkdtemp(prefix="mlpulse-lean-"))
    csv_path = workdir / "logs" / "metric_log.csv"
    consumers, producer_argv = role_commands(sys.executable, csv_path, count, frame, rate)
    env = role_env()
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with (workdir / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(
                argv, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        procs.append(proc)
        return proc

    try:
        for name, argv in consumers:
            _wait_ready(start(name, argv), workdir / f"{name}.log")
        started = time.time()
        producer = start("producer", producer_argv)
        progress_at, last = time.monotonic(), -1
        while (rows := _rows(csv_path)) < count or producer.poll() is None:
            if rows > last:
                progress_at, last = time.monotonic(), rows
            if time.monotonic() - progress_at > STALL_TIMEOUT_S or (
                producer.poll() not in (None, 0)
            ):
                print(f"stalled at {rows}/{count} rows; logs in {workdir}", file=sys.stderr)
                return 1
            time.sleep(0.05)
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    try:
        found = measure(csv_path, started)
    finally:
        if keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"lean reference, {count:,} events in frames of {frame}"
        f"{f' at {rate:g}/s' if rate else ''}: {found['rows']:,.0f} rows "
        f"({found['unique_ids']:,.0f} unique ids), "
        f"{found['events_per_s']:,.1f} events/s from the first send "
        f"({found['events_per_s_from_start']:,.1f} from the producer's start), "
        f"p50 {found['p50_ms']:,.2f} ms, p99 {found['p99_ms']:,.2f} ms"
    )
    return 0 if found["unique_ids"] == count else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run one role, or (by default) all three and report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--role", choices=("all", "producer", "model", "joiner"), default="all")
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--frame", type=int, default=500, help="events per message")
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="events per second; 0: as fast as the broker confirms",
    )
    parser.add_argument("--amqp-url", default=AMQP_URL)
    parser.add_argument("--redis-url", default=REDIS_URL)
    parser.add_argument("--csv", type=Path, help="the joiner's metric log")
    parser.add_argument("--keep", action="store_true", help="keep the run's temp dir")
    args = parser.parse_args(argv)
    if args.count < 1 or args.frame < 1:
        parser.error("--count and --frame must be at least 1")
    if args.role == "all":
        return run_alone(args.count, args.frame, args.rate, args.keep)
    sys.path.insert(0, str(REPO_ROOT / "src"))
    if args.role == "producer":
        asyncio.run(produce(args.amqp_url, args.count, args.frame, args.rate))
    elif args.role == "model":
        asyncio.run(serve_model(args.amqp_url))
    else:
        if args.csv is None:
            parser.error("--role joiner needs --csv")
        asyncio.run(serve_joiner(args.amqp_url, args.redis_url, args.csv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
