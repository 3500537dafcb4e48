"""WebSocket fan-out benchmark: many clients, in separate processes, against one gateway.

Run from the repository root with the project virtualenv::

    python bench/fanout.py                        # 1k, 5k and 10k clients, 20 s each
    python bench/fanout.py --levels 1000 --seconds 5

Per level: one `mlpulse gateway` process; client processes that each hold a share of the
connections (one user per connection); a publisher that sends, every second, one broadcast
to everyone and one own message to every user through `mlpulse.events`. Each message
carries its publish time, so a client measures publish-to-receipt latency on the same
clock. Figures: clients held at the end, deliveries/s, p50 and p99 latency, and the
gateway's peak RSS and CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import psutil
import uvloop
from websockets.asyncio.client import ClientConnection
from websockets.protocol import State

REPO_ROOT = Path(__file__).resolve().parent.parent
VHOST = "mlpulse-bench"
AMQP_URL = f"amqp://guest:guest@localhost:5672/{VHOST}"
REDIS_URL = "redis://localhost:6379/14"
SECRET = "bench-secret-0123456789-abcdefghijklmnopqrstuvwxyz"
SAMPLES_PER_CLIENT_PROC = 50_000


# ---------------------------------------------------------------- client processes

@dataclass
class ClientStats:
    """What one client process saw over all its connections."""

    expected: int
    connected: int = 0
    received: int = 0
    timed: int = 0
    open: set[ClientConnection] = field(default_factory=set)
    lat: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    settled: asyncio.Event = field(default_factory=asyncio.Event)

    def settle_one(self) -> None:
        """A connection opened or failed; all of them have once the counts add up."""
        if self.connected + sum(self.errors.values()) >= self.expected:
            self.settled.set()

    def record(self, latency: float) -> None:
        """Reservoir sampling keeps memory flat at 10k clients."""
        self.timed += 1
        if len(self.lat) < SAMPLES_PER_CLIENT_PROC:
            self.lat.append(latency)
        else:
            j = random.randrange(self.timed)
            if j < SAMPLES_PER_CLIENT_PROC:
                self.lat[j] = latency


async def _hold(url: str, user: str, stats: ClientStats) -> None:
    import websockets

    from mlpulse.gateway.auth import issue_token

    tok = issue_token(SECRET.encode(), user, ttl=3600)
    try:
        async with websockets.connect(f"{url}?token={tok}", max_size=None, compression=None,
                                      open_timeout=60, ping_interval=None) as ws:
            stats.connected += 1
            stats.open.add(ws)
            stats.settle_one()
            async for raw in ws:
                now = time.time()
                msg = orjson.loads(raw)
                stats.received += 1
                if msg.get("type") in ("tick", "note"):
                    stats.record(now - msg["ts"])
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a benchmark counts failures, it does not stop
        key = type(exc).__name__
        stats.errors[key] = stats.errors.get(key, 0) + 1
        stats.settle_one()


async def _client_main(url: str, first: int, count: int, out: Path) -> None:
    stats = ClientStats(expected=count)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    tasks = []
    for start in range(first, first + count, 100):
        tasks.extend(asyncio.create_task(_hold(url, f"u{i}", stats))
                     for i in range(start, min(start + 100, first + count)))
        await asyncio.sleep(0.05)  # let the server's accept queue drain between batches
    await stats.settled.wait()
    print(f"connected {stats.connected}", flush=True)
    await stop.wait()
    held = sum(1 for ws in stats.open if ws.state is State.OPEN)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    doc = {"connected": stats.connected, "received": stats.received, "timed": stats.timed,
           "held": held, "lat": stats.lat, "errors": stats.errors}
    await asyncio.to_thread(out.write_text, json.dumps(doc))


# ---------------------------------------------------------------- harness

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prepare_broker() -> None:
    """A vhost of the benchmark's own and a flushed Redis DB."""
    import redis

    subprocess.run(["rabbitmqctl", "add_vhost", VHOST], capture_output=True, check=False)
    subprocess.run(["rabbitmqctl", "set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*"],
                   capture_output=True, check=False)
    r = redis.Redis.from_url(REDIS_URL)
    r.flushdb()
    r.close()


@dataclass
class Sampler:
    """Peak RSS and CPU time of one process, sampled in a thread."""

    pid: int
    peak_rss: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        proc = psutil.Process(self.pid)
        while not self.stop.is_set():
            with contextlib.suppress(psutil.Error):
                self.peak_rss = max(self.peak_rss, proc.memory_info().rss)
            time.sleep(0.2)


async def publish(users: int, seconds: float) -> tuple[int, float]:
    """Every second: one broadcast and one own message per user; returns (messages, secs)."""
    import aio_pika

    conn = await aio_pika.connect_robust(AMQP_URL)
    ch = await conn.channel(publisher_confirms=False)
    ex = await ch.declare_exchange("mlpulse.events", aio_pika.ExchangeType.TOPIC, durable=True)
    raw = await ch.get_underlay_channel()
    sent = 0
    start = time.monotonic()
    for tick in range(int(seconds)):
        now = time.time()
        snapshot = {"type": "tick", "ts": now, "data": {"count": tick, "mae": 43.2,
                                                       "hist": list(range(40))}}
        await raw.basic_publish(orjson.dumps(snapshot), exchange=ex.name,
                                routing_key="broadcast")
        sent += 1
        for u in range(users):
            body = orjson.dumps({"type": "note", "ts": time.time(), "data": {"n": tick}})
            await raw.basic_publish(body, exchange=ex.name, routing_key=f"user.u{u}")
            sent += 1
        delay = start + tick + 1 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
    elapsed = time.monotonic() - start
    await conn.close()
    return sent, elapsed


def run_level(clients: int, seconds: float, procs: int) -> dict[str, object]:
    """One gateway, `clients` connections over `procs` processes, `seconds` of traffic."""
    prepare_broker()
    tmp = Path(tempfile.mkdtemp(prefix="mlpulse-wsbench-"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLPULSE_")}
    env.update({
        "MLPULSE_AMQP_URL": AMQP_URL, "MLPULSE_REDIS_URL": REDIS_URL, "MLPULSE_SECRET": SECRET,
        "MLPULSE_HTTP_PORT": str(port), "MLPULSE_DATA_DIR": str(tmp / "data"),
        "MLPULSE_LOG_DIR": str(tmp / "logs"), "MLPULSE_LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(REPO_ROOT / "src"),
    })
    gw_log = (tmp / "gateway.log").open("w")
    gateway = subprocess.Popen([sys.executable, "-m", "mlpulse", "gateway"], env=env,
                               stdout=gw_log, stderr=subprocess.STDOUT)
    sampler = Sampler(gateway.pid)
    threading.Thread(target=sampler.run, daemon=True).start()
    children: list[subprocess.Popen[str]] = []
    try:
        _wait_port(port)
        share = -(-clients // procs)
        for p in range(procs):
            first, count = p * share, min(share, clients - p * share)
            if count <= 0:
                break
            children.append(subprocess.Popen(
                [sys.executable, __file__, "--client", f"ws://127.0.0.1:{port}/ws",
                 str(first), str(count), str(tmp / f"client{p}.json")],
                env=env, stdout=subprocess.PIPE, text=True))
        connected = 0
        for c in children:
            assert c.stdout is not None
            connected += int(c.stdout.readline().split()[1])
        gw_proc = psutil.Process(gateway.pid)
        others = [psutil.Process(), *(psutil.Process(c.pid) for c in children), *_brokers()]
        cpu_before = _cpu([gw_proc]), _cpu(others)
        sent, elapsed = uvloop.run(publish(clients, seconds))
        time.sleep(3)  # let the last second's deliveries land before counting
        cpu = (_cpu([gw_proc]) - cpu_before[0]) / (elapsed + 3)
        rest_cpu = (_cpu(others) - cpu_before[1]) / (elapsed + 3)
        for c in children:
            c.send_signal(signal.SIGTERM)
        for c in children:
            c.wait(120)
        results = [json.loads((tmp / f"client{p}.json").read_text())
                   for p in range(len(children))]
    finally:
        sampler.stop.set()
        for c in children:
            if c.poll() is None:
                c.kill()
        gateway.send_signal(signal.SIGTERM)
        try:
            gateway.wait(30)
        except subprocess.TimeoutExpired:
            gateway.kill()
        gw_log.close()
    lat = sorted(x for r in results for x in r["lat"])
    errors: dict[str, int] = {}
    for r in results:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    expected = int(seconds) * 2  # one broadcast and one own message per second per client
    received = sum(r["timed"] for r in results)
    return {
        "clients": clients, "connected": connected, "held": sum(r["held"] for r in results),
        "published": sent, "deliveries_per_s": received / elapsed,
        "delivered_share": received / (expected * clients) if clients else 0,
        "p50_ms": 1000 * lat[len(lat) // 2] if lat else None,
        "p99_ms": 1000 * lat[int(len(lat) * 0.99)] if lat else None,
        "rss_mib": sampler.peak_rss / 2**20, "gateway_cpu": cpu, "rest_cpu": rest_cpu,
        "errors": errors,
    }


def _brokers() -> list[psutil.Process]:
    """RabbitMQ's and Redis's server processes, whose CPU the load shares."""
    return [p for p in psutil.process_iter(["name"])
            if p.info["name"] in ("beam.smp", "redis-server")]


def _cpu(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += sum(p.cpu_times()[:2])
    return total


def _wait_port(port: int, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"gateway did not listen on {port}")


def report(rows: list[dict[str, object]], argv: list[str], seconds: float) -> str:
    """A markdown table with the command that made it."""
    lines = [
        "## WebSocket fan-out benchmark", "",
        f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: nproc={os.cpu_count()} (so {100 * (os.cpu_count() or 1)}% CPU in all), one "
        "gateway process; clients, publisher and RabbitMQ share the same cores",
        f"- command: `{' '.join(['python', 'bench/fanout.py', *argv])}`",
        f"- traffic: per second, one broadcast to all and one own message per user, "
        f"for {seconds:g} s", "",
        "| clients | held | deliveries/s | delivered | p50 ms | p99 ms | gateway RSS MiB "
        "| gateway CPU | clients+publisher+broker CPU | client errors |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in rows:
        p50 = f"{r['p50_ms']:,.1f}" if r["p50_ms"] is not None else "n/a"
        p99 = f"{r['p99_ms']:,.1f}" if r["p99_ms"] is not None else "n/a"
        lines.append(
            f"| {r['clients']:,} | {r['held']:,} | {r['deliveries_per_s']:,.0f} "
            f"| {100 * float(r['delivered_share']):.1f}% | {p50} | {p99} "  # type: ignore[arg-type]
            f"| {r['rss_mib']:,.0f} | {100 * float(r['gateway_cpu']):.0f}% "  # type: ignore[arg-type]
            f"| {100 * float(r['rest_cpu']):.0f}% "  # type: ignore[arg-type]
            f"| {r['errors'] or 'none'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        url, first, count, out = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
        uvloop.run(_client_main(url, first, count, Path(out)))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="1000,5000,10000")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--procs", type=int, default=4, help="client processes")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = []
    for level in (int(x) for x in args.levels.split(",")):
        print(f"[ws] {level} clients ...", file=sys.stderr, flush=True)
        rows.append(run_level(level, args.seconds, args.procs))
        print(f"[ws] {rows[-1]}", file=sys.stderr, flush=True)
    text = report(rows, sys.argv[1:], args.seconds)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
