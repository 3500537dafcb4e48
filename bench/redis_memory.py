"""How much Redis memory one event holds at the default TTLs.

Run from the repository root with the project virtualenv::

    python bench/redis_memory.py                 # 100,000 events
    python bench/redis_memory.py --events 20000

It starts a redis-server of its own on a free port (empty, no persistence), runs the model
and metric roles against it and a RabbitMQ vhost of its own (``mlpulse-bench-memory`` on
the local broker; its queues are deleted first), and streams events with
``mlpulse produce``. ``MLPULSE_JOIN_TTL`` and ``MLPULSE_DONE_TTL`` keep their defaults
(3600 s), so nothing expires during the run. Two figures come out, each as the change of
``INFO memory`` ``used_memory`` divided by the number of events:

- joined: events with both halves, once every row is in the log and the outbox is trimmed
  (what stays is the done marker that catches late duplicates: an id in a small hash of
  its generation, see src/mlpulse/join.lua);
- waiting: events whose label has not arrived (``produce --no-labels``), each a pending
  y_pred half with its deadline.

A warm-up stream comes first, so that the scripts, aggregates and histogram exist before
the first measurement.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pika
import pika.exceptions
import redis

VHOST = "mlpulse-bench-memory"
AMQP_URL = f"amqp://guest:guest@localhost:5672/{VHOST}"
QUEUES = ("features", "y_true", "y_pred", "mlpulse.dead")
WARM_UP = 2000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll a condition nothing announces (a row count, a key count)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def prepare_vhost() -> None:
    """The benchmark's own vhost on the local broker, with its queues deleted."""
    if shutil.which("rabbitmqctl"):
        subprocess.run(["rabbitmqctl", "add_vhost", VHOST], capture_output=True, check=False)
        subprocess.run(["rabbitmqctl", "set_permissions", "-p", VHOST, "guest", ".*", ".*",
                        ".*"], capture_output=True, check=False)
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        for queue in QUEUES:
            conn.channel().queue_delete(queue)
    finally:
        conn.close()


def consumers(queue: str) -> int:
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        return int(conn.channel().queue_declare(queue, durable=True, passive=True)
                   .method.consumer_count)
    except pika.exceptions.ChannelClosedByBroker:
        return 0
    finally:
        if conn.is_open:
            conn.close()


def rows(log: Path) -> int:
    return max(0, log.read_bytes().count(b"\n") - 1) if log.exists() else 0


class Bench:
    """A private Redis, the model and metric roles, and the measurements."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.redis_proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(root)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.client = redis.Redis(port=self.port)
        wait_for(self._pings, 20, "redis to answer")
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("MLPULSE_")},
            "MLPULSE_AMQP_URL": AMQP_URL,
            "MLPULSE_REDIS_URL": f"redis://127.0.0.1:{self.port}/0",
            "MLPULSE_LOG_DIR": str(root / "logs"),
            "MLPULSE_DATA_DIR": str(root / "data"),
            "MLPULSE_MODELS_DIR": str(root / "models"),
        }
        self.roles: list[subprocess.Popen[bytes]] = []
        self.log = root / "logs" / "metric_log.csv"

    def _pings(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    def start_roles(self) -> None:
        for name, queue in (("model", "features"), ("metric", "y_true")):
            with (self.root / f"{name}.log").open("wb") as out:
                self.roles.append(subprocess.Popen(
                    [sys.executable, "-m", "mlpulse", name], env=self.env, cwd=self.root,
                    stdout=out, stderr=subprocess.STDOUT))
            wait_for(lambda q=queue: consumers(q) > 0, 180, f"{name} to consume")

    def produce(self, count: int, *extra: str) -> None:
        subprocess.run([sys.executable, "-m", "mlpulse", "produce", "--count", str(count),
                        "--batch", "100", "--rate", "0", *extra], env=self.env,
                       cwd=self.root, check=True, capture_output=True, timeout=600)

    def used_memory(self) -> int:
        return int(self.client.info("memory")["used_memory"])

    def settled(self, logged: int) -> None:
        """Every row is in the log and the sink has trimmed the outbox behind it."""
        try:
            wait_for(lambda: rows(self.log) >= logged, 600, f"{logged} rows")
            wait_for(lambda: int(self.client.xlen("mlpulse:joined")) <= 1, 60,
                     "the outbox trimmed")
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{self.state()}") from None

    def state(self) -> str:
        """Where the events are, and what each role said last."""
        c = self.client
        joined = int(c.hget("mlpulse:agg", "count") or 0)
        lines = [f"rows {rows(self.log)}, joined {joined}, outbox "
                 f"{c.xlen('mlpulse:joined')}, pending t/p {c.hlen('mlpulse:pending:t')}/"
                 f"{c.hlen('mlpulse:pending:p')}"]
        for name in ("model", "metric"):
            text = (self.root / f"{name}.log").read_text(errors="replace")
            lines.append(f"--- {name}:\n" + "\n".join(text.splitlines()[-15:]))
        return "\n".join(lines)

    def close(self) -> None:
        for proc in self.roles:
            proc.send_signal(signal.SIGTERM)
        for proc in self.roles:
            proc.wait(60)
        self.client.close()
        self.redis_proc.kill()
        self.redis_proc.wait()


def measure(events: int) -> list[str]:
    prepare_vhost()
    with tempfile.TemporaryDirectory(prefix="mlpulse-redis-memory-") as tmp:
        bench = Bench(Path(tmp))
        try:
            bench.start_roles()
            bench.produce(WARM_UP)
            bench.settled(WARM_UP)
            before = bench.used_memory()
            keys_before = int(bench.client.dbsize())
            bench.produce(events)
            bench.settled(WARM_UP + events)
            joined = bench.used_memory()
            keys_joined = int(bench.client.dbsize())
            hashes = [k for k in bench.client.scan_iter(match="mlpulse:done:*", count=1000)
                      if k != b"mlpulse:done:meta"]
            marker_ids = sum(int(bench.client.hlen(k)) for k in hashes)
            marker_bytes = sum(int(bench.client.memory_usage(k) or 0) for k in hashes)
            bench.produce(events, "--no-labels")
            wait_for(lambda: int(bench.client.hlen("mlpulse:pending:p")) >= events, 600,
                     f"{events} pending halves")
            waiting = bench.used_memory()
            steady = steady_markers(bench.port, events)
        finally:
            bench.close()
    return [
        f"- events per step: {events:,} (after a warm-up of {WARM_UP:,}); "
        "MLPULSE_JOIN_TTL and MLPULSE_DONE_TTL at their defaults (3600 s)",
        f"- used_memory: {before:,} B before, {joined:,} B after the joined events, "
        f"{waiting:,} B after the waiting ones",
        f"- keys: {keys_before:,} before, {keys_joined:,} after the joined events",
        f"- **joined: {(joined - before) / events:.0f} bytes per event** "
        f"(done markers: {marker_ids:,} ids in {len(hashes):,} hashes, MEMORY USAGE "
        f"{marker_bytes / max(marker_ids, 1):.0f} B an id)",
        f"- **waiting for its label: {(waiting - joined) / events:.0f} bytes per event**",
        *steady,
    ]


def steady_markers(port: int, events: int) -> list[str]:
    """What a generation of done markers sized from the one before it holds per id, through
    the join script alone (the roles' streams all fall into the first generation, which
    starts knowing nothing of the rate). Ids and values look like the producer's."""
    import asyncio
    import random

    import orjson
    import redis.asyncio

    from mlpulse import keys
    from mlpulse.config import Settings
    from mlpulse.store import JoinStore

    url = f"redis://127.0.0.1:{port}/1"
    sync = redis.Redis(port=port, db=1)
    rng = random.Random(7)

    async def run() -> tuple[int, int, int, set[bytes]]:
        client = redis.asyncio.Redis.from_url(url)
        store = JoinStore(client, Settings(redis_url=url))  # type: ignore[arg-type]
        gen_len = int(store.settings.done_ttl)  # one generation per done TTL (join.lua)
        first = (int(time.time()) // gen_len + 1) * gen_len

        async def stream(start: int, now: float) -> None:
            for low in range(start, start + events, 1000):
                halves = []
                for i in range(low, min(low + 1000, start + events)):
                    uid = f"1a20d6ed3fb-d7cf21-{i}"
                    halves.append(["t", uid, f"{rng.randint(25, 346)}.0", "", ""])
                    halves.append(["p", uid, repr(rng.uniform(25, 346)), "v1", ""])
                await store.join(orjson.dumps(halves), now)
                await client.xtrim(keys.JOINED, maxlen=0)

        await stream(0, first)  # the first generation learns the rate
        before = int(sync.info("memory")["used_memory"])
        await stream(events, first + gen_len)  # the next is sized from it
        after = int(sync.info("memory")["used_memory"])
        gen = (first + gen_len) // gen_len
        hashes = [k async for k in client.scan_iter(f"{keys.DONE}{gen}:*", count=1000)]
        encodings = {await client.object("encoding", k) for k in hashes[:200]}
        await client.aclose()
        return after - before, len(hashes), events, encodings

    grown, hashes, ids, encodings = asyncio.run(run())
    sync.close()
    return [f"- **done markers at steady state: {grown / ids:.0f} bytes per id** (a "
            f"generation sized from the one before, {ids:,} ids in {hashes:,} hashes, "
            f"{ids / max(hashes, 1):.0f} ids a hash, encoding "
            f"{', '.join(sorted(e.decode() for e in encodings))}; the join script alone)"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args()
    for line in measure(args.events):
        print(line)


if __name__ == "__main__":
    main()
